"""Checks of a stage config that can fail before any work: the same code for launch/submit.py (before
queueing), launch/run.py and the SLURM job (rank 0, before the run directory is touched).

Each failure is a :class:`burn.runtime.errors.UsageError` naming the key and the value: one line, exit 2.
"""

from __future__ import annotations

import os
from collections.abc import Collection, Iterable
from pathlib import Path

from omegaconf import DictConfig, OmegaConf

from burn.config import AUTO_TEACHER, EVALUATIONS, RANDOM_BACKBONE, closed_choices
from burn.runtime.errors import UsageError
from burn.runtime.rundir import BACKBONE, STAGE_DIRS, backbone_file

RUNNABLE_STAGES = ("1", "2", "linear", "finetune")


def check_closed_choices(cfg: DictConfig, stages: Iterable[str] = RUNNABLE_STAGES) -> None:
    """Every key the schema gives a closed set of values (burn/config.py ``choices``) holds one of them;
    `stages` narrows ``stage`` (the stage runner runs one stage, launch/submit.py also ``all``). Run
    once, right after the config is composed (launch/entry.py), so a typo fails before anything is
    made or queued; the stage configs planned from it (and queued jobs) keep those values."""
    for key, allowed in closed_choices().items():
        if key == "stage":
            allowed = tuple(stages)
        value = OmegaConf.select(cfg, key, throw_on_missing=False)
        if value is not None and str(value) not in allowed:
            hint = " (stage=all is for launch/submit.py)" if (key, str(value)) == ("stage", "all") else ""
            raise UsageError(f"{key}={value!r}: choose one of {', '.join(allowed)}{hint}")


def check_values(cfg: DictConfig) -> None:
    """The values that must be set or positive (the closed choices: :func:`check_closed_choices`)."""
    for key in ("steps", "epochs"):  # None: the stage's own length (train.epochs / linear.epochs)
        if cfg[key] is not None and cfg[key] <= 0:
            raise UsageError(
                f"{key}={cfg[key]}: a stage's length must be positive (leave {key} unset for the preset's length)"
            )
    for section in ("linear", "finetune"):
        every = cfg[section].eval_every_epochs
        if every < 0:
            raise UsageError(f"{section}.eval_every_epochs={every}: must be >= 0 (0: at the end only)")
    if cfg.linear.num_classes < 1:
        raise UsageError(f"linear.num_classes={cfg.linear.num_classes}: must be >= 1 (the labelled lists' classes)")
    for key in ("lr", "head_lr_scale", "gamma"):
        if cfg.finetune[key] <= 0:
            raise UsageError(f"finetune.{key}={cfg.finetune[key]}: must be positive")
    check_target_movement(cfg)
    check_data_root_set(cfg)


def check_target_movement(cfg: DictConfig) -> None:
    """The teacher classifier's speed (docs/moving-target.md): positive lr multiples (the end one is on a
    log scale), a warm-up that is not negative, an EMA momentum in [0, 1)."""
    optim = cfg.optim
    for key in ("teacher_classifier_lr_scale", "teacher_classifier_lr_scale_end"):
        if optim[key] is not None and optim[key] <= 0:
            raise UsageError(f"optim.{key}={optim[key]}: must be positive (model.teacher_classifier=frozen stops it)")
    if optim.teacher_classifier_frozen_epochs < 0:
        raise UsageError(
            f"optim.teacher_classifier_frozen_epochs={optim.teacher_classifier_frozen_epochs}: must be >= 0"
        )
    if not 0 <= cfg.model.target_momentum < 1:
        raise UsageError(
            f"model.target_momentum={cfg.model.target_momentum}: must be in [0, 1) (0: the target is the classifier)"
        )


def check_data_root_set(cfg: DictConfig) -> None:
    """data.root is given (every dataset check, and the auto teacher's path, start from it)."""
    if OmegaConf.is_missing(cfg.data, "root") or not cfg.data.root:
        raise UsageError(
            "data.root is not set: point it at an ImageNet-style tree (or use preset=tiny for the generated one)"
        )


def check_batch(stage_cfg: DictConfig, world_size: int) -> None:
    """The global batch must split into per-GPU batches over all ranks (burn.batch: the per-GPU batch
    may shrink, the global batch never changes). The check and its message are burn.batch's."""
    from burn.batch import split_stage_batch

    split_stage_batch(stage_cfg, world_size)


def check_weights(path: str, key: str, stage: str) -> None:
    """The file exists, is a readable, non-empty file and has a layout that holds what this stage
    needs from it (a teacher trunk, a stage-1 extraction, a backbone)."""
    from burn.weights import WeightsError, load_backbone, load_stage1_init, read_teacher_trunk

    file = Path(path)
    if file.is_dir():
        raise UsageError(f"{key}={path}: is a directory, not a weights file")
    if not file.exists():
        raise UsageError(f"{key}={path}: no such file")
    if not file.is_file():
        raise UsageError(f"{key}={path}: not a regular file")
    if file.stat().st_size == 0:
        raise UsageError(f"{key}={path}: the file is empty (0 bytes): a copy or download that did not finish?")
    try:
        with open(file, "rb"):  # os.access says yes to root even where a read fails
            pass
    except OSError as err:
        raise UsageError(f"{key}={path}: cannot be opened for reading ({err.strerror})") from None
    loader = {"teacher": read_teacher_trunk, "2": load_stage1_init, "linear": load_backbone, "finetune": load_backbone}[
        "teacher" if key == "model.teacher_weights" else stage
    ]
    try:
        loader(path)
    except WeightsError as err:
        raise UsageError(f"{key}={path}: {err or type(err).__name__}") from None
    except Exception as err:  # an unreadable pickle, a torn file: still the user's file
        reason = str(err).strip().splitlines()[0] if str(err).strip() else "no further detail"
        raise UsageError(f"{key}={path}: cannot be read as weights ({type(err).__name__}: {reason})") from None


def check_writable(run_dir: Path) -> None:
    """The run directory, or its nearest existing parent, can be written by us."""
    probe: Path | None = Path(run_dir).absolute()
    while probe is not None and not probe.exists():
        probe = probe.parent if probe.parent != probe else None
    if probe is None or not probe.is_dir() or not os.access(probe, os.W_OK | os.X_OK):
        raise UsageError(f"run_dir={run_dir}: {probe} is not a writable directory")


def check_stage(cfg: DictConfig, world_size: int, run_dir: Path) -> None:
    """Everything about one stage that needs neither the dataset nor the run directory's contents,
    after :func:`check_values`."""
    check_batch(cfg, world_size)
    check_writable(run_dir)
    check_teacher(cfg)
    check_pretrained(cfg)


def check_teacher(cfg: DictConfig) -> None:
    """A pretraining stage's model.teacher_weights (None keeps a random teacher trunk). ``auto`` is
    replaced by the cached teacher's path at the entry points (burn.demo.inputs.prepare_demo_inputs),
    before any check: this checks the file it names, and refuses an ``auto`` nobody resolved."""
    if str(cfg.stage) not in EVALUATIONS and cfg.model.teacher_weights == AUTO_TEACHER:
        raise UsageError(
            "model.teacher_weights=auto is resolved by the entry points (launch/run.py, launch/submit.py: "
            "burn.demo.inputs.prepare_demo_inputs) before a stage starts; this config was not: run it "
            "through them, or give model.teacher_weights=FILE"
        )
    if str(cfg.stage) not in EVALUATIONS and cfg.model.teacher_weights:
        check_weights(cfg.model.teacher_weights, "model.teacher_weights", str(cfg.stage))


def check_pretrained(cfg: DictConfig, produced: Collection[str] = ()) -> None:
    """``pretrained``: a weights file this stage can start from, one that an earlier stage of the same
    submission will write (`produced`, not there yet), or ``random`` (nothing to load: stage 2 is then
    the original's single-stage pretraining from scratch, linear the no-pretraining baseline). Stage 1
    always starts from scratch; stages 2, linear and finetune must say what they start from (the last two
    also a stage-2 run directory: its backbone.pth, :func:`pretrained_backbone`)."""
    stage = str(cfg.stage)
    if stage == "1":
        if cfg.pretrained:
            raise UsageError(
                f"pretrained={cfg.pretrained}: stage 1 starts from scratch; pretrained= is for "
                "stage=2 (a stage-1 extraction), stage=linear and stage=finetune (a backbone)"
            )
        return
    if not cfg.pretrained:
        what = (
            (
                "a stage-1 extraction (e.g. runs/burn/stage1/stage1_extraction.pth), or pretrained="
                f"{RANDOM_BACKBONE} for single-stage pretraining from scratch (binary weights and "
                "activations from a random init)"
            )
            if stage == "2"
            else (
                f"a backbone (e.g. runs/burn/stage2/backbone.pth, or the stage-2 run dir runs/burn/stage2), or "
                f"pretrained={RANDOM_BACKBONE} for the no-pretraining baseline"
            )
        )
        raise UsageError(f"stage={stage} needs pretrained=: {what}")
    if cfg.pretrained == RANDOM_BACKBONE or cfg.pretrained in produced:
        return
    path = pretrained_backbone(cfg.pretrained) if stage in EVALUATIONS else cfg.pretrained
    check_weights(path, "pretrained", stage)


def pretrained_backbone(pretrained: str) -> str:
    """The backbone file ``pretrained=`` names for linear evaluation and fine-tuning: a file as it is, a
    stage-2 run directory's backbone.pth (a stage=all run directory's stage2/backbone.pth). The entry
    points write it into the config (launch/entry.py), so config.yaml and the identity check see the file."""
    found = backbone_file(pretrained)
    if found is None:
        raise UsageError(
            f"pretrained={pretrained}: a directory without {BACKBONE} (nor {STAGE_DIRS['2']}/{BACKBONE}): "
            "point it at a stage-2 run that completed, or at a backbone file"
        )
    return str(found)


def stage_splits(cfg: DictConfig) -> list[str]:
    """The dataset splits a stage reads: pretraining the unlabelled train list (and, with the k-NN
    monitor on, the labelled ones), the evaluations (linear, finetune) the labelled train and val lists."""
    if str(cfg.stage) in EVALUATIONS:
        return ["train_labeled", "val"]
    return ["train", "train_labeled", "val"] if cfg.monitor.knn else ["train"]


def check_data(cfg: DictConfig) -> None:
    """The lists a stage reads and every file in them (present, non-empty)."""
    from burn.data.loaders import validate_dataset

    check_data_root_set(cfg)
    try:
        lists = validate_dataset(cfg.data, stage_splits(cfg))
    except (OSError, ValueError) as err:  # DatasetError is a ValueError
        raise UsageError(f"data.root={cfg.data.root}: {err}") from None
    if str(cfg.stage) in EVALUATIONS:
        check_labels(lists, cfg.linear.num_classes)


def check_labels(lists: dict, num_classes: int) -> None:
    """Every label of the labelled lists an evaluation reads is one of the head's linear.num_classes
    outputs (a larger one would fail inside the loss, steps into the stage)."""
    for samples in lists.values():
        if samples.labels is None:
            continue
        bad = [(line, label) for line, label in zip(samples.lines, samples.labels) if label >= num_classes]
        if bad:
            line, label = bad[0]
            where = f"{samples.source} line {line}" if line else samples.source
            more = f" (and {len(bad) - 1} more)" if len(bad) > 1 else ""
            raise UsageError(
                f"linear.num_classes={num_classes}: {where} has label {label}{more}, outside 0..{num_classes - 1}; "
                f"set linear.num_classes={max(samples.labels) + 1} (the head's outputs, shared by linear and finetune)"
            )
