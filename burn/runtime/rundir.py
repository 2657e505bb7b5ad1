"""The run directory's layout: every file and folder name a stage run uses, and how they are written.

This module is the only place that spells the layout out; the trainers, the launchers, the status
report and the benchmarks import the names from here (slurm/chain.sh keeps its own copies, which a
test holds equal to these). It imports neither torch nor the training code, so launch/status.py
answers fast.

A run of ``stage=all`` (launch/submit.py, slurm/chain.sh) is a parent folder with one folder per
stage::

    <run_dir>/stage1/   stage 1: stage1_extraction.pth when complete
    <run_dir>/stage2/   stage 2: backbone.pth when complete
    <run_dir>/linear/   linear evaluation: linear_eval.json when complete
    <run_dir>/baseline/ linear evaluation of a random student (compare_baseline=true)
    <run_dir>/finetune/ fine-tuning of stage 2's backbone (chain_finetune=true): finetune_eval.json

and each stage folder holds::

    DONE                the stage is complete (its product is written before it)
    progress.json       where the stage is (state, step, loss, ...), replaced atomically
    config.yaml         the resolved config of the run, for the identity check on resume
    .lock               flock'ed by the one process that writes here (burn/resume/run_lock.py)
    checkpoints/        ckpt-<step>.pt + .sha256 sidecars (burn/resume/checkpoint.py)
    tb/                 TensorBoard events
    compile-cache/      torch.compile's artefacts on CUDA, reused after a requeue (burn/engine/gpu.py)
    samples/            what every rank read, with log.sample_ids=true (burn/data/record.py)
    slurm/              Submitit's job folders (<job id>/) or slurm/chain.sh's logs (<job id>.out)
    slurm/jobs.jsonl    one JSON line per job submitted for the stage
    slurm/requeues.jsonl one JSON line per requeue (job id, restart count, checkpoint step, cause)
    slurm/endings/      how each rank of each run of a job stopped, when not by completing
                        (burn/runtime/faults.py; read by the batch shell's hook, launch/batch.py)
"""

from __future__ import annotations

import json
import os
import tempfile
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import IO, Any

from burn.runtime.files import raise_if_disk_full, umask_mode

# ---- names inside a stage's folder ---------------------------------------------------------------

#: Written last by a stage that completed; a complete stage is skipped.
DONE = "DONE"
#: The machine-readable "where is this stage" file (launch/status.py reads it).
PROGRESS = "progress.json"
#: The run's resolved config, compared with a resuming command's.
CONFIG = "config.yaml"
#: The run directory's lock file (never deleted: see burn/resume/run_lock.py).
LOCK = ".lock"
#: The stage's checkpoint folder.
CHECKPOINTS = "checkpoints"
#: The stage's TensorBoard folder.
TENSORBOARD = "tb"
#: Inductor's default cache folder (train.compile_cache_dir unset): on the run's shared storage, so a
#: requeued job (and every rank of a node) reuses the compiled artefacts.
COMPILE_CACHE = "compile-cache"
#: The record of what every rank read (log.sample_ids=true): <attempt>-rank<r>.jsonl files.
SAMPLES_DIR = "samples"
#: Stage 1's product: what stage 2 starts from.
STAGE1_EXTRACTION = "stage1_extraction.pth"
#: Stage 2's product: what linear evaluation evaluates.
BACKBONE = "backbone.pth"
#: Linear evaluation's product: top-1, top-5 and the evaluated file.
LINEAR_RESULTS = "linear_eval.json"
#: Fine-tuning's product: top-1, top-5, the backbone it started from, the labelled list, its size, the recipe.
FINETUNE_RESULTS = "finetune_eval.json"
#: Submitit's folder (one sub-folder per job id) and slurm/chain.sh's log folder.
SLURM_DIR = "slurm"
#: One JSON line per submitted job of a stage, in SLURM_DIR (launch/jobs.py, slurm/chain.sh).
JOBS_FILE = "jobs.jsonl"
#: One JSON line per requeue of a stage, in SLURM_DIR.
REQUEUES_FILE = "requeues.jsonl"
#: One file per rank and run of a job that stopped other than by completing, in SLURM_DIR.
ENDINGS_DIR = "endings"

#: The tag in every checkpoint (and stage product) this suite writes: ``state["format"]``.
CHECKPOINT_FORMAT = "burn-suite/checkpoint"
#: ``state["version"]``: raised by a change an older reader cannot follow; a checkpoint of another version
#: is refused (burn/resume/checkpoint.py, burn/weights.py; docs/checkpoint-contract.md).
CHECKPOINT_VERSION = 1

# ---- the stage folders of a stage=all run --------------------------------------------------------

#: Folder of each stage inside a stage=all run, in the order they run (finetune: with chain_finetune=true).
STAGE_DIRS = {"1": "stage1", "2": "stage2", "linear": "linear", "finetune": "finetune"}
#: Folder of the no-pretraining linear evaluation beside them (compare_baseline=true).
BASELINE_DIR = "baseline"
#: What a complete stage leaves in its folder.
STAGE_PRODUCTS = {"1": STAGE1_EXTRACTION, "2": BACKBONE, "linear": LINEAR_RESULTS, "finetune": FINETUNE_RESULTS}
#: The results file of each evaluation stage (top1, top5, ...): read by launch/status.py and the launchers.
RESULTS = {"linear": LINEAR_RESULTS, "finetune": FINETUNE_RESULTS}


def stage_dir_name(stage: str) -> str:
    """The folder of ``stage`` ("1", "2", "linear", "finetune") inside a stage=all run: stage1, stage2,
    linear, finetune."""
    stage = str(stage)
    return STAGE_DIRS.get(stage, f"stage{stage}")


def backbone_file(path: str | os.PathLike) -> Path | None:
    """What ``pretrained=`` names as a backbone: a file as it is; a stage-2 run directory its backbone.pth,
    a stage=all run directory its stage2/backbone.pth; None for a directory that holds neither (yet)."""
    path = Path(path)
    if not path.is_dir():
        return path
    for candidate in (path / BACKBONE, path / STAGE_DIRS["2"] / BACKBONE):
        if candidate.is_file():
            return candidate
    return None


def jobs_file(stage_dir: str | os.PathLike) -> Path:
    """``<stage_dir>/slurm/jobs.jsonl``."""
    return Path(stage_dir) / SLURM_DIR / JOBS_FILE


def requeues_file(stage_dir: str | os.PathLike) -> Path:
    """``<stage_dir>/slurm/requeues.jsonl``."""
    return Path(stage_dir) / SLURM_DIR / REQUEUES_FILE


def endings_dir(stage_dir: str | os.PathLike) -> Path:
    """``<stage_dir>/slurm/endings``."""
    return Path(stage_dir) / SLURM_DIR / ENDINGS_DIR


def stage_run_dir(run_dir: str | None, name: str, stage: str) -> Path:
    """A stage's directory: ``run_dir`` if given, else runs/<name>/stage<N> (runs/<name>/linear), absolute."""
    path = Path(run_dir) if run_dir else Path("runs") / name / stage_dir_name(str(stage))
    return path.absolute()


# ---- writing and reading its files ---------------------------------------------------------------

Writer = Callable[[IO[bytes]], None]


def write_temp_beside(path: str | os.PathLike, write: Writer, prefix: str | None = None, suffix: str = ".tmp") -> Path:
    """A hidden, fsynced temp file in ``path``'s folder holding what ``write`` wrote; the caller
    renames it (``os.replace`` is atomic only within one filesystem, hence the same folder).

    The name is ``<prefix><random><suffix>``, by default ``.<name>.<random>.tmp``. Permissions follow
    the umask, as a plain ``open()`` would create them (``mkstemp`` makes 0600). The temp file is
    removed when ``write`` fails."""
    path = Path(path)
    prefix = f".{path.name}." if prefix is None else prefix
    fd, temp_name = tempfile.mkstemp(prefix=prefix, suffix=suffix, dir=path.parent)
    temp = Path(temp_name)
    try:
        with os.fdopen(fd, "wb") as stream:
            write(stream)
            stream.flush()
            os.fsync(stream.fileno())
        os.chmod(temp, umask_mode())
    except BaseException:
        temp.unlink(missing_ok=True)
        raise
    return temp


def fsync_directory(directory: str | os.PathLike) -> None:
    """Make the renames in ``directory`` durable; without it a node crash can undo a replace."""
    fd = os.open(directory, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def atomic_write(
    path: str | os.PathLike,
    data: bytes | str | Writer,
    *,
    size: int = 0,
    intact: str | None = None,
    sync_dir: bool = False,
) -> None:
    """Replace ``path`` with ``data`` so that a reader sees the old file or the new one, never a part.

    ``data`` is bytes, text, or a function that writes into a binary stream (``torch.save``). The
    temp file is fsynced before the rename, so a crash cannot leave an empty file under the real
    name; ``sync_dir`` also makes the rename itself durable. A full disk raises
    :class:`burn.runtime.files.DiskFullError` naming the file, ``size`` (the bytes a writer function meant
    to write) and ``intact`` (default: "the previous <name> is intact")."""
    atomic_write_all({path: data}, size=size, intact=intact, sync_dir=sync_dir)


def atomic_write_all(
    files: Mapping[str | os.PathLike, bytes | str | Writer],
    *,
    size: int = 0,
    intact: str | None = None,
    sync_dir: bool = False,
) -> None:
    """:func:`atomic_write` for files that belong together (burn/data/prepare.py's lists): every one is
    written and fsynced beside its target before the first rename, so a failure while writing (a full
    disk) leaves all of them as they were; the renames follow, one per file."""
    staged: list[tuple[Path, Path]] = []
    path = None
    try:
        for path, data in ((Path(p), d) for p, d in files.items()):
            if isinstance(data, str):
                data = data.encode()
            if isinstance(data, bytes):
                size += len(data)
                data = (lambda payload: lambda stream: stream.write(payload))(data)
            staged.append((write_temp_beside(path, data), path))
        for temp, path in staged:
            os.replace(temp, path)
    except BaseException as err:
        for temp, _ in staged:
            temp.unlink(missing_ok=True)
        if path is not None:
            default = f"the previous {path.name} is intact" if len(files) == 1 else "the previous files are intact"
            raise_if_disk_full(err, f"writing {path.name}", path.parent, size, default if intact is None else intact)
        raise
    if sync_dir:
        for directory in {path.parent for _, path in staged}:
            fsync_directory(directory)


def write_json(path: str | os.PathLike, data: dict[str, Any]) -> None:
    """``data`` as indented, key-sorted JSON, replaced atomically (progress.json, linear_eval.json)."""
    atomic_write(path, json.dumps(data, indent=1, sort_keys=True))


def read_json(path: str | os.PathLike) -> dict[str, Any]:
    """A JSON file's object; {} when it is missing or unreadable (a stage that has not written it yet)."""
    try:
        return json.loads(Path(path).read_text())
    except (OSError, ValueError):
        return {}


def append_jsonl(path: str | os.PathLike, record: dict[str, Any]) -> None:
    """Add one JSON line to a ledger (jobs.jsonl, requeues.jsonl), creating its folder."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    with open(path, "a") as f:
        f.write(json.dumps(record, sort_keys=True) + "\n")


def read_jsonl(path: str | os.PathLike) -> list[dict[str, Any]]:
    """Every record of a ledger, oldest first; [] when it does not exist."""
    path = Path(path)
    if not path.exists():
        return []
    return [json.loads(line) for line in path.read_text().splitlines() if line.strip()]
