"""Rank-0 reporting: TensorBoard scalars, a progress bar or log lines, and progress.json.

progress.json is the machine-readable "where is this stage" file that launch/status.py reads; it is
replaced atomically so a reader never sees half of it.
"""

from __future__ import annotations

import logging
import sys
import time
from pathlib import Path

from torch.utils.tensorboard import SummaryWriter
from tqdm import tqdm

from burn.runtime.errors import FaultError, UsageError, one_line
from burn.runtime.files import DiskFullError
from burn.runtime.rundir import PROGRESS, TENSORBOARD, read_json, write_json

log = logging.getLogger("burn")


def configure_console_logging(rank: int) -> None:
    """Plain log lines prefixed with the rank; non-zero ranks only report warnings."""
    logging.basicConfig(
        level=logging.INFO if rank == 0 else logging.WARNING,
        force=True,
        format=f"%(asctime)s [rank {rank}] %(levelname)s %(name)s: %(message)s",
        stream=sys.stdout,
    )


def record_failure(run_dir: Path, err: BaseException, state: str = "failed") -> None:
    """Mark the stage failed in progress.json with the error on one line (launch/status.py shows it).
    ``state="fault"``: an infrastructure fault, which the batch shell requeues (burn/runtime/faults.py)."""
    path = Path(run_dir) / PROGRESS
    data = read_json(path)
    message = one_line(err)
    if not isinstance(err, (FaultError, UsageError)):  # a bug: its type says more than the message
        message = f"{type(err).__name__}: {message}"
    data.update(state=state, error=message, updated=time.time())
    try:
        write_json(path, data)
    except (OSError, DiskFullError) as write_err:  # e.g. the disk is full: the error still reaches the output
        log.warning("could not record the failure in %s: %s", path, write_err)


#: TensorBoard groups tags by their first part: one group per stage kind, so pretraining's and linear
#: evaluation's curves never share a card (their lrs differ 30-fold). Within a group the loss sorts
#: first, then its terms, the optimizer's values and the speed.
STAGE_GROUPS = {"1": "pretrain", "2": "pretrain", "linear": "linear", "finetune": "finetune"}
TAGS = {
    "loss": "loss",
    "kl": "loss/kl",
    "fs": "loss/fs",
    "lambda": "optim/lambda",
    "lr": "optim/lr",
    "grad_norm": "optim/grad_norm",
    "grad_scale": "optim/grad_scale",
    "images_per_s": "speed/images_per_s",
    "data_wait_s": "speed/data_wait_s",
}


def tag_of(group: str, key: str) -> str:
    """The TensorBoard tag of a metric: ``pretrain/loss``, ``pretrain/optim/lr``, ``linear/val/top1``;
    a key with a "/" is a whole tag already (``collapse/student_std``)."""
    return key if "/" in key else f"{group}/{TAGS.get(key, key)}"


class MetricLogger:
    """Everything a stage reports. Only rank 0 builds one that writes; others get `enabled=False`."""

    def __init__(
        self,
        run_dir: Path,
        *,
        enabled: bool,
        stage: str,
        start_step: int,
        total_steps: int,
        progress_bar: str = "auto",
        restarts: int = 0,
        run_info: dict | None = None,
    ):
        self.enabled = enabled
        self.run_info = run_info or {}
        """Written into every progress.json (the rank count and its changes)."""
        self.run_dir = Path(run_dir)
        self.stage = stage
        self.group = STAGE_GROUPS.get(str(stage), "train")
        self.total_steps = total_steps
        self.restarts = restarts
        self.writer: SummaryWriter | None = None
        self.bar: tqdm | None = None
        if not enabled:
            return
        # purge_step drops events a killed run logged after its last checkpoint (steps > start_step),
        # so the curve holds every step exactly once across resumes.
        self.writer = SummaryWriter(str(self.run_dir / TENSORBOARD), purge_step=start_step + 1 if start_step else None)
        show_bar = progress_bar == "on" or (progress_bar == "auto" and sys.stderr.isatty())
        if show_bar:
            self.bar = tqdm(total=total_steps, initial=start_step, desc=f"stage {stage}", dynamic_ncols=True)

    def scalars(self, step: int, values: dict[str, float], group: str | None = None) -> None:
        """Log ``values`` under ``group`` (default: the stage's, e.g. ``pretrain``; ``knn``,
        ``linear/val`` for the monitors and the evaluation)."""
        if not self.enabled:
            return
        for key, value in values.items():
            self.writer.add_scalar(tag_of(group or self.group, key), value, step)
        if self.bar is not None:
            self.bar.set_postfix({k: f"{v:.4g}" for k, v in values.items() if k in ("loss", "lr", "top1")})
        else:  # whole tags stay in TensorBoard only: the console line keeps the group's own values
            text = " ".join(f"{k}={v:.4g}" for k, v in values.items() if "/" not in k)
            text = f"{group.split('/')[-1]} {text}" if group else text  # e.g. "knn top1=...", "val top1=..."
            log.info("stage %s step %d/%d %s", self.stage, step, self.total_steps, text)

    def advance(self, n: int = 1) -> None:
        if self.bar is not None:
            self.bar.update(n)

    def progress(self, state: str, step: int, epoch: int = 0, **extra) -> None:
        if not self.enabled:
            return
        data = {
            "stage": self.stage,
            "state": state,
            "step": step,
            "total_steps": self.total_steps,
            "epoch": epoch,
            "restarts": self.restarts,
            "updated": time.time(),
            **self.run_info,
            **extra,
        }
        try:
            write_json(self.run_dir / PROGRESS, data)
        except (OSError, DiskFullError) as err:  # a full disk: the checkpoint that follows reports it, in one line
            log.warning("could not update %s: %s", self.run_dir / PROGRESS, err)

    def close(self) -> None:
        if self.bar is not None:
            self.bar.close()
        if self.writer is not None:
            self.writer.flush()
            self.writer.close()
