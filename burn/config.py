"""Typed configuration schema, registered in Hydra's ConfigStore.

Every component receives explicit arguments taken from one of these dataclasses, never the whole
config. Hydra runs in struct mode against this schema, so an unknown key or a wrong type is an error
at composition time, before anything trains or is queued.
"""

from __future__ import annotations

import os
import sys
from collections.abc import Iterator, Sequence
from dataclasses import MISSING as NO_DEFAULT
from dataclasses import dataclass, field, fields, is_dataclass
from pathlib import Path
from typing import Any

from hydra.core.config_store import ConfigStore
from omegaconf import MISSING, DictConfig, OmegaConf

#: Field roles (``setting(role=...)`` below), declared once here and read by the code that needs them.
#: LAUNCH: chooses where and how a stage is queued, not what it computes (launch/submit.py keeps these keys
#: out of sweep run-directory names; the stage runner reads none of them but signal_delay_s).
LAUNCH = "launch"
#: IDENTITY: a run directory belongs to one value of it: a resume with another value is refused unless
#: checkpoint.force=true (burn/resume/identity.py). Either it changes the model or the data, or a restored
#: checkpoint would silently override the new value (the optimizer state holds the learning rates).
IDENTITY = "identity"

STAGES = ("1", "2", "linear", "finetune", "all")
#: container.runtime: how every task of a stage job enters the image (launch/container.py); none: no container.
CONTAINER_RUNTIMES = ("none", "pyxis", "apptainer", "podman")
#: ``pretrained=random`` with stage=linear: evaluate a freshly initialised (seeded) student, the
#: no-pretraining baseline that BURN must beat.
RANDOM_BACKBONE = "random"
#: model.teacher_classifier: trained with the student (the paper's moving target) or frozen at init.
TEACHER_CLASSIFIER_MODES = ("joint", "frozen", "ema")
#: The other closed sets of values, declared once here: the schema's ``choices`` below and the code that
#: acts on each value (burn/engine/precision.py, burn/data/loaders.py, burn/models/reactnet.py) read them.
#: train.precision: mixed-precision mode of a stage.
TRAIN_PRECISIONS = ("fp16", "bf16", "fp32")
#: data.backend: who decodes and augments.
DATA_BACKENDS = ("dali", "torchvision")
#: data.device: where DALI decodes and augments.
DATA_DEVICES = ("auto", "gpu", "cpu")
#: linear.precision: the student's precision (which convolution and input activation its blocks use).
STUDENT_PRECISIONS = ("binary", "binact", "fp")
#: model.teacher_weights=auto (burn/demo/auto_teacher.py): the symbolic values a path-valued key may hold.
AUTO_TEACHER = "auto"
#: Keys that name files or folders: made absolute at the entry points, compared resolved on resume.
PATH_KEYS = ("data.root", "model.teacher_weights", "pretrained")
#: Student precision per pretraining stage (docs/reference.md: stage 1 binarises activations only).
STAGE_PRECISION = {"1": "binact", "2": "binary"}
#: The stages a key is read by (``setting(stages=...)``): an IDENTITY key binds only the run directories of those.
PRETRAINING = ("1", "2")
LINEAR = ("linear",)
FINETUNE = ("finetune",)
#: The stages that start from a pretrained backbone (``pretrained=`` a backbone.pth, a stage-2 run dir or
#: ``random``), train on data.train_labeled_list, score on data.val_list and read no teacher.
EVALUATIONS = LINEAR + FINETUNE
#: Keys that moved or merged (old dotted key -> the key that now holds the setting). A command line that
#: names an old key is refused naming the new one (launch/entry.py); a saved config.yaml (or a queued job's
#: config) written before the move is read with the value moved, unless the new key is there already.
RENAMED_KEYS = {
    "optim.temperature": "loss.temperature",
    "optim.lambda_start": "loss.lambda_start",
    "optim.lambda_end": "loss.lambda_end",
    "checkpoint.signal_lead_s": "signal_delay_s",
}


def setting(
    default: Any = NO_DEFAULT,
    *,
    factory: Any = NO_DEFAULT,
    choices: Sequence[str] = (),
    role: str | None = None,
    stages: Sequence[str] = (),
) -> Any:
    """A schema field with its meaning attached: ``choices`` (a closed set, checked right after the
    config is composed: burn/validation.py), ``role`` (:data:`LAUNCH` or :data:`IDENTITY`) and the
    ``stages`` that read it (default: every stage), so that an IDENTITY key binds only those stages."""
    metadata: dict[str, Any] = {}
    if choices:
        metadata["choices"] = tuple(choices)
    if role:
        metadata["role"] = role
    if stages:
        metadata["stages"] = tuple(stages)
    if factory is not NO_DEFAULT:
        return field(default_factory=factory, metadata=metadata)
    return field(default=default, metadata=metadata)


@dataclass
class ModelConfig:
    """The networks: student, frozen teacher and the two classifiers (the whole section is IDENTITY)."""

    width: float = 1.0
    """Channel multiplier of the ReActNet-A student; 1.0 is the paper's network."""
    teacher_arch: str = "resnet50"
    """torchvision ResNet used as the frozen teacher trunk (resnet18/34 only for tiny presets)."""
    teacher_weights: str | None = None
    """Teacher weights file (MoCo v2 release, original BURN teacher or torchvision state dict).
    ``auto``: a small teacher trained once, label-free by default, on data.root's train split and cached
    beside the data (burn/demo/auto_teacher.py, settings in ``auto_teacher.*``; the tiny preset's
    choice). The entry points (launch/run.py, launch/submit.py) train it if missing and write its path
    into the stage config before it is validated, saved or queued; a folder of more than
    auto_teacher.max_images labelled images (or auto_teacher.max_memory_mb of them in memory) is refused.
    None keeps a random teacher trunk: a control for experiments and tests, not a way to learn anything.
    Its sha256 is kept in every checkpoint; a resume with another file's content is refused unless
    checkpoint.force=true."""
    center_target: bool = True
    """Subtract the batch mean (per view) from the teacher classifier's outputs before the loss, so that
    a student that outputs one constant vector (the mean target) scores nothing: docs/moving-target.md."""
    teacher_classifier: str = setting("joint", choices=TEACHER_CLASSIFIER_MODES)
    """joint: the teacher classifier trains with the student (the paper's moving target) at
    optim.teacher_classifier_lr_scale x the student's lr | frozen: it stays at its random init | ema:
    it trains as in joint, but the student's target is an exponential moving average of it
    (model.target_momentum), a mean-teacher target that moves smoothly (docs/moving-target.md)."""
    target_momentum: float = 0.99
    """model.teacher_classifier=ema: after every optimizer step the target moves this much less than all the
    way to the trained teacher classifier (target = m * target + (1 - m) * classifier)."""
    classifier_hidden: int = 2000
    """Hidden width of both classifiers (Linear-BN-ReLU-Linear)."""
    classifier_out: int = 2000
    """Output width of both classifiers."""


@dataclass
class AugmentConfig:
    """Two-view pretraining recipe (docs/reference.md); both views use the same recipe (IDENTITY)."""

    image_size: int = 224
    """Side of the random resized crop."""
    crop_scale: list[float] = field(default_factory=lambda: [0.08, 1.0])
    """Area range of RandomResizedCrop."""
    flip_prob: float = 0.5
    """Probability of a horizontal flip."""
    jitter: list[float] = field(default_factory=lambda: [0.4, 0.4, 0.4, 0.1])
    """Colour jitter strengths: brightness, contrast, saturation, hue."""
    jitter_prob: float = 0.6
    """Probability that colour jitter is applied."""
    grayscale_prob: float = 0.2
    """Probability of converting the view to grayscale (after the jitter)."""
    blur_prob: float = 0.2
    """Probability of a Gaussian blur."""
    blur_sigma: list[float] = field(default_factory=lambda: [0.1, 2.0])
    """Range the blur's sigma is drawn from, in pixels."""
    solarize_prob: float = 0.0
    """Probability of solarising the view (threshold 128)."""
    mean: list[float] = field(default_factory=lambda: [0.485, 0.456, 0.406])
    """Normalisation mean (fractions of 255)."""
    std: list[float] = field(default_factory=lambda: [0.229, 0.224, 0.225])
    """Normalisation standard deviation (fractions of 255)."""


@dataclass
class SyntheticConfig:
    """The generated dataset used by the embedded default and the tests."""

    generate: bool = False
    """Write the dataset into data.root first if it is not there yet."""
    classes: int = 10
    """Number of generated classes."""
    per_class: int = 40
    """Training images per class."""
    val_per_class: int = 10
    """Validation images per class."""
    size: int = 64
    """Side of the generated JPEGs in pixels."""
    seed: int = 0
    """Seed of the generator: the same seed writes the same images."""


@dataclass
class AutoTeacherConfig:
    """model.teacher_weights=auto (burn/demo/auto_teacher.py): a small teacher trained on data.root's
    train split (train_labeled; label-free by default; val for its reported quality), all its images held in
    memory at one size, with the pretraining views' crop scale (data.aug.crop_scale) and a flip. Trained
    once and cached beside the data: these settings apply when the file is made (a cached teacher made
    otherwise is used as it is, with a warning). Not IDENTITY: a checkpoint keeps the file's sha256.

    For small image folders only (``preset=tiny data.root=<your class folders>``): above max_images or
    max_memory_mb it is refused with one line, before any image is read; a real dataset wants a real
    teacher file (model.teacher_weights=FILE)."""

    objective: str = "ssl"
    """``ssl``: label-free, as the paper's MoCo v2 teacher (SimCLR-style contrastive learning on two
    views, the student's crop + flip, burn/demo/contrastive.py); its report gives the k-NN top-1 of
    its features. ``supervised``: a classifier trained on the train split's labels (an experiment: it
    hands label knowledge to the student); its report gives its val top-1. Part of the cached file's
    name: the two never mix."""
    epochs: int | None = None
    """Training epochs over the train split (None: the objective's, 20 for both)."""
    batch: int | None = None
    """Images per SGD step (None: the objective's, 32 ssl / 64 supervised)."""
    lr: float | None = None
    """Peak learning rate of the one-cycle schedule (SGD, Nesterov momentum 0.9; None: the
    objective's, 0.06 ssl / 0.1 supervised)."""
    temperature: float = 0.2
    """NT-Xent temperature of the ssl objective."""
    threads: int = 2
    """torch threads while the teacher trains: the bits of a CPU convolution depend on the thread
    count, so it is fixed for the same seed to give the same teacher on every machine."""
    load_side: int | None = None
    """Every image is held in memory resized (shorter side) and centre-cropped to this square side,
    so folders of mixed image sizes work; an image of that size already is kept as it is. None:
    data.eval_resize (the tiny preset: its generated images' side, data.synthetic.size)."""
    max_images: int = 10000
    """The most labelled images (train_labeled + val lists) it trains and evaluates on; more are
    refused, before any image is read."""
    max_memory_mb: int = 2048
    """The most memory (MiB) the images may take once loaded: images x 3 x load_side^2 bytes; more is
    refused, before any image is read."""


@dataclass
class DataConfig:
    """Where the images are, how they are read, and the pretraining views."""

    root: str = setting(MISSING, role=IDENTITY)
    """ImageNet-style root (train/, val/, meta/) or a bare class-folder tree."""
    train_list: str | None = setting("meta/train.txt", role=IDENTITY)
    """Unlabelled pretraining list, relative to root (None: derive from the class folders)."""
    train_labeled_list: str | None = setting("meta/train_labeled.txt", role=IDENTITY)
    """Labelled training list (linear evaluation, the k-NN monitor's memory bank), relative to root."""
    val_list: str | None = setting("meta/val_labeled.txt", role=IDENTITY)
    """Labelled validation list (linear evaluation's score, the k-NN monitor's queries), relative to root."""
    backend: str = setting("dali", choices=DATA_BACKENDS)
    """dali | torchvision (fallback with the same contract)."""
    device: str = setting("auto", choices=DATA_DEVICES)
    """Where DALI decodes and augments: auto | gpu | cpu."""
    num_threads: int = 4
    """DALI CPU threads (or DataLoader workers) per process."""
    eval_resize: int = 256
    """Evaluation images: the shorter side is resized to this, then centre-cropped to eval_crop."""
    eval_crop: int = 224
    """Side of the evaluation centre crop."""
    aug: AugmentConfig = setting(factory=AugmentConfig, role=IDENTITY)
    """The augmentation recipe (the pretraining views; linear evaluation's crop, flip and normalisation)."""
    synthetic: SyntheticConfig = field(default_factory=SyntheticConfig)
    """The generated dataset (preset=tiny, the tests)."""


@dataclass
class OptimConfig:
    """Pretraining optimiser (Adam) and its learning-rate schedule. IDENTITY: a restored checkpoint's
    optimizer and schedule state would silently keep the old values."""

    lr: float = 3e-4
    """Student learning rate at the end of the warmup (the peak of the schedule)."""
    weight_decay: float = 0.0
    """Adam weight decay."""
    warmup_epochs: float = 10.0
    """Linear warmup length; the rest of the stage follows a cosine to 0."""
    warmup_start_factor: float = 1e-4
    """Warmup starts at lr * this factor."""
    teacher_classifier_lr_scale: float = 0.01
    """The teacher classifier's lr as a multiple of optim.lr (model.teacher_classifier=joint). See
    docs/moving-target.md for why this is not 1: at the student's lr the two classifiers collapse onto
    one constant output within a few hundred steps."""
    teacher_classifier_lr_scale_end: float | None = None
    """When set, the teacher classifier's lr multiple moves from teacher_classifier_lr_scale at the stage's
    first step to this at its last, on a cosine in log space (e.g. 0.1 -> 0.001: fast early, slow late).
    None: a constant multiple."""
    teacher_classifier_frozen_epochs: float = 0.0
    """The teacher classifier stays where the stage starts it for this many epochs of each pretraining
    stage, then trains (a frozen warm-up: the student first learns the target as it is)."""


@dataclass
class LossConfig:
    """The BURN objective (burn/objective.py): lambda x KL(teacher || student) + (1 - lambda) x feature
    similarity, on softmaxes at one temperature."""

    temperature: float = 0.2
    """Softmax temperature of both classifiers' outputs in the KL term (and of the collapse monitor)."""
    lambda_start: float = 0.1
    """Weight of the KL term at the stage's first step; it moves linearly to lambda_end."""
    lambda_end: float = 0.3
    """Weight of the KL term at the stage's last step."""


@dataclass
class TrainConfig:
    """Pretraining loop settings (stages 1 and 2)."""

    epochs: float = 200.0
    """Length of a pretraining stage in epochs of data.train_list (the top-level epochs/steps win)."""
    global_batch: int = setting(4096, role=IDENTITY, stages=PRETRAINING)
    """Images per optimizer step over all ranks (gradient accumulation is derived from it)."""
    per_gpu_batch: int = setting(256, role=IDENTITY, stages=PRETRAINING)
    """Most images per forward on one rank; a smaller one is used when it does not divide the global
    batch over the job's ranks (burn/batch.py)."""
    precision: str = setting("fp16", choices=TRAIN_PRECISIONS)
    """fp16 (AMP + GradScaler, CUDA) | bf16 | fp32. On CPU fp16 falls back to fp32."""
    channels_last: bool = True
    """Use channels_last memory format on CUDA."""
    max_bad_steps: int = 20
    """Consecutive non-finite losses tolerated before the job stops (checked on logging and
    checkpoint steps on CUDA, where checking every step would cost a host sync)."""
    deterministic: bool = False
    """CUDA: deterministic cuDNN/cuBLAS algorithms instead of autotuned ones, so a resumed run
    repeats the float math too (data order and augmentation repeat either way). Slower."""
    compile: bool | None = None
    """torch.compile the student in place; None: on CUDA only."""
    compile_cache_dir: str | None = None
    """Inductor cache (shared storage, reused after a requeue); None: $TORCHINDUCTOR_CACHE_DIR if
    set, else <run_dir>/compile-cache."""


@dataclass
class LinearConfig:
    """Linear evaluation recipe (frozen feature entries, trainable MLP head + linear classifier)."""

    epochs: float = 100.0
    """Length of linear evaluation in epochs of data.train_labeled_list."""
    global_batch: int = setting(256, role=IDENTITY, stages=LINEAR)
    """Images per optimizer step over all ranks."""
    per_gpu_batch: int = setting(256, role=IDENTITY, stages=LINEAR)
    """Most images per forward on one rank (burn/batch.py, as train.per_gpu_batch)."""
    lr: float = setting(0.01, role=IDENTITY, stages=LINEAR)
    """SGD learning rate (the optimizer state of a checkpoint holds it: IDENTITY)."""
    momentum: float = setting(0.9, role=IDENTITY, stages=LINEAR)
    """SGD momentum."""
    weight_decay: float = setting(0.0, role=IDENTITY, stages=LINEAR)
    """SGD weight decay."""
    milestones: list[int] = setting(factory=lambda: [60, 80], role=IDENTITY, stages=LINEAR)
    """Epochs at which the learning rate is multiplied by 0.1."""
    num_classes: int = setting(1000, role=IDENTITY, stages=EVALUATIONS)
    """Classes of the labelled lists: the outputs of linear evaluation's classifier and of fine-tuning's
    head (stage=finetune reads this key too). A label of data.train_labeled_list or data.val_list outside
    0..num_classes-1 is refused with one line before the stage starts."""
    eval_every_epochs: int = 10
    """Evaluate on data.val_list every N epochs (TensorBoard linear/val/top1, top5) as well as at the
    end; 0: at the end only."""
    precision: str = setting("binary", choices=STUDENT_PRECISIONS, role=IDENTITY, stages=LINEAR)
    """Student precision of the evaluated backbone: binary (stage-2 weights) | binact | fp."""


@dataclass
class FinetuneConfig:
    """Fine-tuning (stage=finetune): every layer of the fully binary student (latent real weights with
    the straight-through sign, as in stage 2; BatchNorm trainable) plus a new linear head on the pooled
    backbone features, trained on data.train_labeled_list and scored on data.val_list. The defaults are
    the semi-supervised protocol of OpenSelfSup's configs/benchmarks/semi_classification/ for 1% of the
    labels (docs/reference.md); 10%: finetune.weight_decay=1e-4 (docs/finetuning.md). The head has
    linear.num_classes outputs."""

    epochs: float = 20.0
    """Length in epochs of data.train_labeled_list (the top-level steps=/epochs= win)."""
    global_batch: int = setting(256, role=IDENTITY, stages=FINETUNE)
    """Images per optimizer step over all ranks."""
    per_gpu_batch: int = setting(64, role=IDENTITY, stages=FINETUNE)
    """Most images per forward on one rank (burn/batch.py, as train.per_gpu_batch)."""
    lr: float = setting(0.01, role=IDENTITY, stages=FINETUNE)
    """SGD learning rate of the backbone (the protocol's grid: 0.001, 0.01, 0.1)."""
    head_lr_scale: float = setting(1.0, role=IDENTITY, stages=FINETUNE)
    """The head's lr as a multiple of finetune.lr (the protocol's grid: 1, 10, 100)."""
    momentum: float = setting(0.9, role=IDENTITY, stages=FINETUNE)
    """SGD momentum."""
    weight_decay: float = setting(5e-4, role=IDENTITY, stages=FINETUNE)
    """SGD weight decay on every parameter: the protocol's 5e-4 for 1% of the labels, 1e-4 for 10%."""
    milestones: list[int] = setting(factory=lambda: [12, 16], role=IDENTITY, stages=FINETUNE)
    """Epochs at which both learning rates are multiplied by finetune.gamma."""
    gamma: float = setting(0.2, role=IDENTITY, stages=FINETUNE)
    """The lr factor at each milestone."""
    eval_every_epochs: int = 5
    """Evaluate on data.val_list every N epochs (TensorBoard finetune/val/top1, top5) as well as at the
    end; 0: at the end only."""


@dataclass
class CheckpointConfig:
    """Periodic checkpoints and the resume guard."""

    every_steps: int = 500
    """Write a checkpoint every N optimizer steps (and on preemption, and at the end)."""
    every_minutes: float | None = 20.0
    """Also write one when this many minutes passed since the last (rank 0's clock decides for all
    ranks), whichever of the two comes first: a fault then loses at most about this much work, plus
    the restart. None or 0: by steps only. The default's derivation: docs/fault-tolerance.md."""
    keep_last: int = 3
    """Checkpoints kept in <run_dir>/checkpoints (the newest ones)."""
    force: bool = False
    """Resume even if the new command changes an IDENTITY key (the model, the data, the optimizer
    settings: burn/config.py) or the teacher file's content; the change is logged as a warning."""
    background: bool = True
    """Write periodic checkpoints in a background thread from a CPU snapshot (training goes on);
    preemption and final saves are always written before the job goes on or exits."""


@dataclass
class LogConfig:
    """Console, TensorBoard and debugging output."""

    every_steps: int = 20
    """TensorBoard / console logging period in optimizer steps."""
    progress_bar: str = setting("auto", choices=("auto", "on", "off"))
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
class ContainerConfig:
    """Run every task of a stage job inside a container image (launch keys, launch/container.py and
    docs/containers.md); both launch paths, launch/submit.py and slurm/chain.sh, read them."""

    runtime: str = setting("none", choices=CONTAINER_RUNTIMES)
    """none | pyxis (srun --container-image, NVIDIA enroot) | apptainer (apptainer exec --nv) | podman
    (podman run --rm --network host)."""
    image: str | None = None
    """The image: pyxis ``nvcr.io#nvidia/pytorch:25.01-py3`` (``nvcr.io/nvidia/...`` is converted), podman a
    name such as ``localhost/burn-suite:latest``, apptainer a .sif file (or ``docker://...``)."""
    mounts: list[str] | None = None
    """``SRC[:DST[:OPTIONS]]`` bind mounts; None: data.root, the run directory, the checkout and the weight
    files read from elsewhere (teacher, pretrained), each at its own path, so every path in the config stays
    valid inside."""
    args: list[str] = field(default_factory=list)
    """Extra arguments of the runtime (podman run / apptainer exec; pyxis: extra srun arguments)."""


@dataclass
class SlurmSiteConfig:
    """What a site needs that the suite does not model, on both launch paths (launch/site.py)."""

    setup: list[str] = field(default_factory=list)
    """Shell lines the job script runs before srun, e.g. ``module load cuda/12.4``."""
    sbatch: dict[str, Any] = field(default_factory=dict)
    """Any other sbatch option: ``{exclusive: true, reservation: gpu-week, gres: "gpu:a100:8"}`` (true: a
    bare flag). An option the suite sets itself (signal, requeue, dependency, output, nodes, ...) is
    refused naming the key that sets it."""
    srun: list[str] = field(default_factory=list)
    """Extra srun arguments, e.g. ``--mpi=none``."""


@dataclass
class BurnConfig:
    """The whole configuration of a stage (and of launch/submit.py)."""

    stage: str = setting("1", choices=STAGES, role=IDENTITY)
    """1 | 2 | linear | finetune (| all with launch/submit.py)."""
    preset: str = "paper"
    """Name of the preset group the values came from (paper | tiny)."""
    name: str = "burn"
    """Run name; the default run directory is runs/<name>/stage<stage>."""
    run_dir: str | None = setting(None, role=LAUNCH)
    """Run directory of this stage (with stage=all: the parent of the three stage directories)."""
    seed: int = setting(0, role=IDENTITY)
    """Seed of the initialisation, the data order and the augmentations (each rank derives its own)."""
    epochs: float | None = None
    """Length of this stage in epochs (overrides the stage's preset). With launch/submit.py stage=all:
    the pretraining stages' length; linear evaluation keeps linear.epochs."""
    steps: int | None = None
    """Length of this stage in optimizer steps (at least 1); wins over epochs when given (stage=all: as
    epochs)."""
    pretrained: str | None = setting(None, role=IDENTITY)
    """Stage 2: a stage-1 extraction (or checkpoint); linear and finetune: a backbone extraction (or
    checkpoint), a stage-2 run directory (its backbone.pth; a stage=all run directory: its
    stage2/backbone.pth), or ``random`` for the no-pretraining baseline (a seeded random student)."""
    model: ModelConfig = setting(factory=ModelConfig, role=IDENTITY)
    """The networks."""
    auto_teacher: AutoTeacherConfig = field(default_factory=AutoTeacherConfig)
    """How model.teacher_weights=auto makes its teacher (the demo; small image folders only)."""
    data: DataConfig = field(default_factory=DataConfig)
    """The dataset and the views."""
    optim: OptimConfig = setting(factory=OptimConfig, role=IDENTITY, stages=PRETRAINING)
    """Pretraining optimiser and lr schedule."""
    loss: LossConfig = field(default_factory=LossConfig)
    """Pretraining objective."""
    train: TrainConfig = field(default_factory=TrainConfig)
    """Pretraining loop."""
    linear: LinearConfig = field(default_factory=LinearConfig)
    """Linear evaluation."""
    finetune: FinetuneConfig = field(default_factory=FinetuneConfig)
    """Fine-tuning (stage=finetune: the semi-supervised evaluation, transfer to your own dataset)."""
    checkpoint: CheckpointConfig = field(default_factory=CheckpointConfig)
    """Checkpoints and the resume guard."""
    log: LogConfig = field(default_factory=LogConfig)
    """Logging."""
    monitor: MonitorConfig = field(default_factory=MonitorConfig)
    """Pretraining diagnostics."""
    # --- launch keys (launch/submit.py); the stage runner ignores them but signal_delay_s ---
    cluster: str = setting("auto", choices=("auto", "slurm", "local"), role=LAUNCH)
    """auto | slurm | local. auto: SLURM when sbatch answers."""
    nodes: int = setting(1, role=LAUNCH)
    """Nodes per job."""
    gpus_per_node: int = setting(1, role=LAUNCH)
    """GPUs (and tasks) per node; on CPU-only clusters the number of processes per node."""
    partition: str | None = setting(None, role=LAUNCH)
    """SLURM partition (None: the cluster's default)."""
    time: int = setting(4320, role=LAUNCH)
    """Time limit per job, minutes."""
    account: str | None = setting(None, role=LAUNCH)
    """SLURM account to charge."""
    qos: str | None = setting(None, role=LAUNCH)
    """SLURM quality of service."""
    constraint: str | None = setting(None, role=LAUNCH)
    """SLURM node feature constraint, e.g. a GPU model."""
    mem: str | None = setting(None, role=LAUNCH)
    """Memory per node, e.g. 64G."""
    cpus_per_task: int = setting(8, role=LAUNCH)
    """CPUs per task (one task per GPU): DALI's threads and the loader's workers run on them."""
    signal_delay_s: int = setting(120, role=LAUNCH)
    """Seconds between SLURM's warning signal (USR2) and the kill at the time limit: the time a
    stage has to finish its step and write a checkpoint. The one source of this number: Submitit's
    --signal=USR2@<s>, slurm/chain.sh's --signal=B:USR2@<s> (slurm/stage.sbatch's own line is this
    default) and the stage's warning when a checkpoint write (plus a step) would take longer."""
    max_requeues: int = setting(20, role=LAUNCH)
    """Requeues (preemptions, time-outs, infrastructure faults: docs/fault-tolerance.md) after which a job
    stops requeuing itself (its checkpoint stays). Both launch paths read it (slurm/stage.sbatch from its
    overrides); three in a row at the same checkpoint step stop the job sooner (a crash loop)."""
    dry_run: bool = setting(False, role=LAUNCH)
    """launch/submit.py: validate, then print the planned stages, their run directories and the sbatch
    script(s) Submitit would submit; queue, run and write nothing."""
    container: ContainerConfig = setting(factory=ContainerConfig, role=LAUNCH)
    """Run the stage jobs inside a container image (docs/containers.md)."""
    slurm: SlurmSiteConfig = setting(factory=SlurmSiteConfig, role=LAUNCH)
    """Site set-up lines, sbatch options and srun arguments the suite does not model."""
    compare_baseline: bool = setting(False, role=LAUNCH)
    """stage=all with cluster=local: also run linear evaluation of a randomly initialised student
    (pretrained=random, same recipe and seed) in <run_dir>/baseline and print both top-1s (with
    chain_finetune=true also fine-tuning's, in <run_dir>/finetune-baseline). On SLURM, queue
    `stage=linear pretrained=random` yourself."""
    chain_finetune: bool = setting(False, role=LAUNCH)
    """stage=all: also fine-tune stage 2's backbone (stage=finetune, after linear evaluation, afterok)
    in <run_dir>/finetune, in the same submission."""


def schema_fields(cls: type = BurnConfig, prefix: str = "") -> Iterator[tuple[str, Any]]:
    """Every field of the schema as (dotted key, dataclasses.Field), sections before their fields."""
    for f in fields(cls):
        key = f"{prefix}{f.name}"
        yield key, f
        section = f.default_factory() if f.default_factory is not NO_DEFAULT else None  # type: ignore[misc]
        if is_dataclass(section):
            yield from schema_fields(type(section), key + ".")


def keys_with_role(role: str, stage: str | None = None) -> tuple[str, ...]:
    """The dotted keys (or whole sections) the schema gives ``role``, in schema order; with `stage`, only
    those that stage reads."""
    return tuple(
        key
        for key, f in schema_fields()
        if f.metadata.get("role") == role and (stage is None or stage in f.metadata.get("stages", (stage,)))
    )


def closed_choices() -> dict[str, tuple[str, ...]]:
    """Dotted key -> its allowed values, for every key with a closed set of values."""
    return {key: f.metadata["choices"] for key, f in schema_fields() if "choices" in f.metadata}


def upgrade_saved_config(container: dict[str, Any]) -> dict[str, Any]:
    """A saved config (config.yaml, a queued job's config) written before keys moved, as today's schema
    names them (:data:`RENAMED_KEYS`): a value moves unless its new key is there already. In place."""
    for old, new in RENAMED_KEYS.items():
        *old_path, old_leaf = old.split(".")
        parent = container
        for part in old_path:
            parent = parent.get(part) if isinstance(parent, dict) else None
        if not isinstance(parent, dict) or old_leaf not in parent:
            continue
        value = parent.pop(old_leaf)
        *new_path, new_leaf = new.split(".")
        target = container
        for part in new_path:
            target = target.setdefault(part, {})
        target.setdefault(new_leaf, value)
    return container


def load_saved_config(text: str) -> DictConfig:
    """A saved config's YAML (untyped), with :func:`upgrade_saved_config` applied."""
    container = OmegaConf.to_container(OmegaConf.create(text), resolve=False)
    return OmegaConf.create(upgrade_saved_config(container))


def absolute_path(path: str | None) -> str | None:
    """``path`` absolute (``~`` expanded; symlinks kept); None and the symbolic values (``auto``,
    ``random``) stay as they are. A job started in another directory then reads the same files."""
    if not path or path in (AUTO_TEACHER, RANDOM_BACKBONE):
        return path
    return os.path.abspath(os.path.expanduser(str(path)))


def register_configs() -> None:
    schema = OmegaConf.structured(BurnConfig)
    # Hydra composes in struct mode (a new key is a typo) but slurm.sbatch is an open mapping: without this,
    # `slurm.sbatch={exclusive:true}` is refused ("use +slurm.sbatch=...").
    OmegaConf.set_struct(schema.slurm.sbatch, False)
    ConfigStore.instance().store(name="burn_schema", node=schema)


#: The Hydra config tree (config.yaml, preset/) of launch/run.py and launch/submit.py: inside the package,
#: so that an installed copy (pip install ., not only an editable one) finds it (setup.cfg package_data).
CONF_DIR = Path(__file__).resolve().parent / "conf"


def quote_image_override(argv: Sequence[str]) -> list[str]:
    """``container.image=nvcr.io#nvidia/pytorch:25.01-py3`` unquoted is a lexer error in Hydra's override
    grammar (it knows no '#'): the same override with the value quoted. The entry points and
    ``python -m burn.config`` (slurm/chain.sh) apply it before Hydra reads the command line."""
    out = []
    for arg in argv:
        key, sep, value = arg.partition("=")
        if sep and key.lstrip("+~") == "container.image" and "#" in value and not value.startswith(("'", '"')):
            arg = f"{key}='{value}'" if "'" not in value else arg
        out.append(arg)
    return out


def compose_config(overrides: Sequence[str] = ()) -> DictConfig:
    """The config the entry points compose from these command-line overrides."""
    from hydra import compose, initialize_config_dir

    register_configs()
    with initialize_config_dir(config_dir=str(CONF_DIR), version_base=None):
        return compose("config", overrides=list(overrides))


def main(argv: Sequence[str]) -> int:
    """``python -m burn.config KEY [overrides...]``: KEY's value as a stage composed from the overrides
    sees it (slurm/chain.sh reads signal_delay_s so). Exit 2 with one line when it cannot be composed."""
    if not argv or argv[0].startswith("-"):
        print("usage: python -m burn.config KEY [key=value ...]", file=sys.stderr)
        return 2
    try:
        value = OmegaConf.select(compose_config(quote_image_override(argv[1:])), argv[0], throw_on_missing=True)
    except Exception as err:  # Hydra's composition errors: the user's overrides
        print(f"burn.config: {' '.join(str(err).split())}", file=sys.stderr)
        return 2
    print(value)
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
