"""Typed configuration schema, registered in Hydra's ConfigStore.

Every component receives explicit arguments taken from one of these dataclasses, never the whole
config. Hydra runs in struct mode against this schema, so an unknown key or a wrong type is an error
at composition time, before anything trains or is queued.
"""

from __future__ import annotations

import os
from dataclasses import dataclass, field
from typing import List, Optional

from hydra.core.config_store import ConfigStore
from omegaconf import MISSING

STAGES = ("1", "2", "linear", "all")
#: ``pretrained=random`` with stage=linear: evaluate a freshly initialised (seeded) student, the
#: no-pretraining baseline that BURN must beat.
RANDOM_BACKBONE = "random"
#: model.teacher_classifier: trained with the student (the paper's moving target) or frozen at init.
TEACHER_CLASSIFIER_MODES = ("joint", "frozen")
#: model.teacher_weights=auto (burn/tiny_teacher.py): the symbolic values a path-valued key may hold.
AUTO_TEACHER = "auto"
#: Keys that name files or folders: made absolute at the entry points, compared resolved on resume.
PATH_KEYS = ("data.root", "model.teacher_weights", "pretrained")
#: Student precision per pretraining stage (docs/reference.md: stage 1 binarises activations only).
STAGE_PRECISION = {"1": "binact", "2": "binary"}


@dataclass
class ModelConfig:
    width: float = 1.0
    """Channel multiplier of the ReActNet-A student; 1.0 is the paper's network."""
    teacher_arch: str = "resnet50"
    """torchvision ResNet used as the frozen teacher trunk (resnet18/34 only for tiny presets)."""
    teacher_weights: Optional[str] = None
    """Teacher weights file (MoCo v2 release, original BURN teacher or torchvision state dict).
    ``auto``: a small supervised teacher trained once on data.root's labelled train split and cached
    beside the data (burn/tiny_teacher.py; the tiny preset's choice). None keeps a random teacher
    trunk: a control for experiments and tests, not a way to learn anything."""
    center_target: bool = True
    """Subtract the batch mean (per view) from the teacher classifier's outputs before the loss, so that
    a student that outputs one constant vector (the mean target) scores nothing: docs/moving-target.md."""
    teacher_classifier: str = "joint"
    """joint: the teacher classifier trains with the student (the paper's moving target) at
    optim.teacher_classifier_lr_scale x the student's lr | frozen: it stays at its random init."""
    classifier_hidden: int = 2000
    """Hidden width of both classifiers (Linear-BN-ReLU-Linear)."""
    classifier_out: int = 2000
    """Output width of both classifiers."""


@dataclass
class AugmentConfig:
    """Two-view pretraining recipe (docs/reference.md); both views use the same recipe."""

    image_size: int = 224
    """Side of the random resized crop."""
    crop_scale: List[float] = field(default_factory=lambda: [0.08, 1.0])
    """Area range of RandomResizedCrop."""
    flip_prob: float = 0.5
    jitter: List[float] = field(default_factory=lambda: [0.4, 0.4, 0.4, 0.1])
    """Colour jitter strengths: brightness, contrast, saturation, hue."""
    jitter_prob: float = 0.6
    grayscale_prob: float = 0.2
    blur_prob: float = 0.2
    blur_sigma: List[float] = field(default_factory=lambda: [0.1, 2.0])
    solarize_prob: float = 0.0
    mean: List[float] = field(default_factory=lambda: [0.485, 0.456, 0.406])
    """Normalisation mean (fractions of 255)."""
    std: List[float] = field(default_factory=lambda: [0.229, 0.224, 0.225])


@dataclass
class SyntheticConfig:
    """The generated dataset used by the embedded default and the tests."""

    generate: bool = False
    """Write the dataset into data.root first if it is not there yet."""
    classes: int = 10
    per_class: int = 40
    """Training images per class."""
    val_per_class: int = 10
    size: int = 64
    """Side of the generated JPEGs in pixels."""
    seed: int = 0


@dataclass
class DataConfig:
    root: str = MISSING
    """ImageNet-style root (train/, val/, meta/) or a bare class-folder tree."""
    train_list: Optional[str] = "meta/train.txt"
    """Unlabelled pretraining list, relative to root (None: derive from the class folders)."""
    train_labeled_list: Optional[str] = "meta/train_labeled.txt"
    val_list: Optional[str] = "meta/val_labeled.txt"
    backend: str = "dali"
    """dali | torchvision (fallback with the same contract)."""
    device: str = "auto"
    """Where DALI decodes and augments: auto | gpu | cpu."""
    num_threads: int = 4
    """DALI CPU threads (or DataLoader workers) per process."""
    eval_resize: int = 256
    eval_crop: int = 224
    aug: AugmentConfig = field(default_factory=AugmentConfig)
    synthetic: SyntheticConfig = field(default_factory=SyntheticConfig)


@dataclass
class OptimConfig:
    """Pretraining optimiser (Adam) and its learning-rate schedule."""

    lr: float = 3e-4
    weight_decay: float = 0.0
    warmup_epochs: float = 10.0
    """Linear warmup length; the rest of the stage follows a cosine to 0."""
    warmup_start_factor: float = 1e-4
    """Warmup starts at lr * this factor."""
    teacher_classifier_lr_scale: float = 0.01
    """The teacher classifier's lr as a multiple of optim.lr (model.teacher_classifier=joint). See
    docs/moving-target.md for why this is not 1: at the student's lr the two classifiers collapse onto
    one constant output within a few hundred steps."""
    temperature: float = 0.2
    lambda_start: float = 0.1
    lambda_end: float = 0.3


@dataclass
class TrainConfig:
    """Pretraining loop settings (stages 1 and 2)."""

    epochs: float = 200.0
    global_batch: int = 4096
    """Images per optimizer step over all ranks (gradient accumulation is derived from it)."""
    per_gpu_batch: int = 256
    """Most images per forward on one rank; a smaller one is used when it does not divide the global
    batch over the job's ranks (burn/batch.py)."""
    precision: str = "fp16"
    """fp16 (AMP + GradScaler, CUDA) | bf16 | fp32. On CPU fp16 falls back to fp32."""
    channels_last: bool = True
    """Use channels_last memory format on CUDA."""
    max_bad_steps: int = 20
    """Consecutive non-finite losses tolerated before the job stops (checked on logging and
    checkpoint steps on CUDA, where checking every step would cost a host sync)."""
    deterministic: bool = False
    """CUDA: deterministic cuDNN/cuBLAS algorithms instead of autotuned ones, so a resumed run
    repeats the float math too (data order and augmentation repeat either way). Slower."""
    compile: Optional[bool] = None
    """torch.compile the student in place; None: on CUDA only."""
    compile_cache_dir: Optional[str] = None
    """Inductor cache (shared storage, reused after a requeue); None: $TORCHINDUCTOR_CACHE_DIR if
    set, else <run_dir>/compile-cache."""


@dataclass
class LinearConfig:
    """Linear evaluation recipe (frozen feature entries, trainable MLP head + linear classifier)."""

    epochs: float = 100.0
    global_batch: int = 256
    per_gpu_batch: int = 256
    lr: float = 0.01
    momentum: float = 0.9
    weight_decay: float = 0.0
    milestones: List[int] = field(default_factory=lambda: [60, 80])
    """Epochs at which the learning rate is multiplied by 0.1."""
    num_classes: int = 1000
    eval_every_epochs: int = 10
    """Evaluate on data.val_list every N epochs (TensorBoard linear/val/top1, top5) as well as at the
    end; 0: at the end only."""
    precision: str = "binary"
    """Student precision of the evaluated backbone: binary (stage-2 weights) | binact | fp."""


@dataclass
class CheckpointConfig:
    every_steps: int = 500
    """Write a checkpoint every N optimizer steps (and on preemption, and at the end)."""
    keep_last: int = 3
    signal_lead_s: float = 120.0
    """Seconds between the preemption signal and the kill; a slower checkpoint write warns."""
    force: bool = False
    """Resume even if the saved config changes the model or the data."""
    background: bool = True
    """Write periodic checkpoints in a background thread from a CPU snapshot (training goes on);
    preemption and final saves are always written before the job goes on or exits."""


@dataclass
class LogConfig:
    every_steps: int = 20
    """TensorBoard / console logging period in optimizer steps."""
    progress_bar: str = "auto"
    """auto (when interactive) | on | off."""
    sample_ids: bool = False
    """Debug: every rank appends the global stream position and the sample indices of each training
    micro-batch it reads to <run_dir>/samples/ (burn/data/record.py reads them back)."""


@dataclass
class MonitorConfig:
    """Diagnostics of pretraining (stages 1 and 2); neither changes training or its exact resume.

    The collapse monitor runs on every logging step (``log.every_steps``); the k-NN monitor every
    ``knn_every`` optimizer steps and at the last step."""

    collapse: bool = True
    """Log collapse/* (spread and entropies of both classifiers' outputs) on logging steps."""
    collapse_threshold: float = 0.1
    """Warn (once per process) when a classifier's outputs carry less than this fraction of the
    information they could about the image: H(batch-mean softmax) - mean per-image entropy <
    threshold * log(min(K, batch)). 0 is complete collapse (every image gets the same softmax)."""
    knn: bool = True
    """Log knn/top1: weighted k-NN top-1 (percent) of the student's pooled backbone features."""
    knn_every: int = 500
    """Run the k-NN monitor every N optimizer steps (and at the last step)."""
    knn_k: int = 20
    """Neighbours per query (DINO / solo-learn's 20)."""
    knn_temperature: float = 0.07
    """Neighbour weights are exp(cosine / knn_temperature)."""
    knn_bank_size: int = 20000
    """At most this many images of data.train_labeled_list form the memory bank (class-balanced)."""
    knn_query_size: int = 10000
    """At most this many images of data.val_list are classified (class-balanced)."""
    knn_batch: int = 256
    """Images per forward on one rank while extracting features."""


@dataclass
class BurnConfig:
    stage: str = "1"
    """1 | 2 | linear (| all with launch/submit.py)."""
    preset: str = "paper"
    """Name of the preset group the values came from (paper | tiny)."""
    name: str = "burn"
    """Run name; the default run directory is runs/<name>/stage<stage>."""
    run_dir: Optional[str] = None
    """Run directory of this stage (with stage=all: the parent of the three stage directories)."""
    seed: int = 0
    epochs: Optional[float] = None
    """Length of this stage in epochs (overrides the stage's preset). With launch/submit.py stage=all:
    the pretraining stages' length; linear evaluation keeps linear.epochs."""
    steps: Optional[int] = None
    """Length of this stage in optimizer steps; wins over epochs when given (stage=all: as epochs)."""
    pretrained: Optional[str] = None
    """Stage 2: a stage-1 extraction (or checkpoint); linear: a backbone extraction (or checkpoint), or
    ``random`` for the no-pretraining baseline (a seeded random student)."""
    model: ModelConfig = field(default_factory=ModelConfig)
    data: DataConfig = field(default_factory=DataConfig)
    optim: OptimConfig = field(default_factory=OptimConfig)
    train: TrainConfig = field(default_factory=TrainConfig)
    linear: LinearConfig = field(default_factory=LinearConfig)
    checkpoint: CheckpointConfig = field(default_factory=CheckpointConfig)
    log: LogConfig = field(default_factory=LogConfig)
    monitor: MonitorConfig = field(default_factory=MonitorConfig)
    # --- launch keys (launch/submit.py); the stage runner ignores them ---
    cluster: str = "auto"
    """auto | slurm | local. auto: SLURM when sbatch answers."""
    nodes: int = 1
    gpus_per_node: int = 1
    """GPUs (and tasks) per node; on CPU-only clusters the number of processes per node."""
    partition: Optional[str] = None
    time: int = 4320
    """Time limit per job, minutes."""
    account: Optional[str] = None
    qos: Optional[str] = None
    constraint: Optional[str] = None
    mem: Optional[str] = None
    """Memory per node, e.g. 64G."""
    cpus_per_task: int = 8
    signal_delay_s: int = 120
    """Seconds before the time limit at which SLURM sends USR2."""
    max_requeues: int = 20
    dry_run: bool = False
    """launch/submit.py: validate, then print the planned stages, their run directories and the sbatch
    script(s) Submitit would submit; queue, run and write nothing."""
    compare_baseline: bool = False
    """stage=all with cluster=local: also run linear evaluation of a randomly initialised student
    (pretrained=random, same recipe and seed) in <run_dir>/baseline and print both top-1s. On SLURM,
    queue `stage=linear pretrained=random` yourself."""


def absolute_path(path: Optional[str]) -> Optional[str]:
    """``path`` absolute (``~`` expanded; symlinks kept); None and the symbolic values (``auto``,
    ``random``) stay as they are. A job started in another directory then reads the same files."""
    if not path or path in (AUTO_TEACHER, RANDOM_BACKBONE):
        return path
    return os.path.abspath(os.path.expanduser(str(path)))


def register_configs() -> None:
    ConfigStore.instance().store(name="burn_schema", node=BurnConfig)

