"""What every rank decides alike at an optimizer-step boundary, in the loop's one collective per step:
whether to stop (a stop signal reached some rank: burn/resume/signals.py) and whether
``checkpoint.every_minutes`` have passed since the last checkpoint.

Time is not the same on every rank, so only global rank 0's clock counts: each rank contributes its
stop code and rank 0 its "checkpoint due" flag to one all-reduce (MAX) of two integers, and every rank
reads the same answer. The step counts (``checkpoint.every_steps``) need no collective.
"""

from __future__ import annotations

import time

import torch
import torch.distributed as dist

from burn.resume.signals import _collective_device


class CheckpointClock:
    """Rank 0's wall clock since the last checkpoint (the others' never says "due")."""

    def __init__(self, every_minutes: float | None, is_main: bool):
        self.period_s = every_minutes * 60.0 if every_minutes and every_minutes > 0 else None
        self.is_main = is_main
        self.reset()

    def reset(self) -> None:
        self.since = time.monotonic()

    def due(self) -> bool:
        return self.is_main and self.period_s is not None and time.monotonic() - self.since >= self.period_s


def step_decision(stop_code_local: int, checkpoint_due: bool, distributed: bool) -> tuple[int, bool]:
    """(the stop code of all ranks: the MAX, as burn.resume.signals.stop_code; whether a timed checkpoint
    is due: rank 0's clock). A COLLECTIVE when ``distributed``: every rank calls it at each step boundary."""
    if not distributed:
        return int(stop_code_local), bool(checkpoint_due)
    flags = torch.tensor(
        [int(stop_code_local), int(checkpoint_due)], dtype=torch.int32, device=_collective_device(None)
    )
    dist.all_reduce(flags, op=dist.ReduceOp.MAX)
    stop, due = flags.tolist()
    return int(stop), bool(due)
