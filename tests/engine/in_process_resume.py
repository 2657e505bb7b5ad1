"""One stage trained straight, and the same stage saved part way and resumed by a new trainer, in this
process: the exact-resume tests' harness (the RNG comes from the checkpoint, as in a new process)."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import torch

from burn.engine.loop import StageLoop
from burn.resume.signals import PreemptionHandler

MakeTrainer = Callable[[Path, PreemptionHandler], StageLoop]
"""``make(run_dir, preemption)``: a prepared trainer of the stage (seeded as the stage runner seeds it)."""


@dataclass
class StraightAndResumed:
    straight: StageLoop
    resumed: StageLoop
    straight_lrs: list[list[float]]
    """Every parameter group's lr before each step of the straight run."""
    interrupted_lrs: list[list[float]]
    """The same, over the run saved at the stop and the run resumed from it."""

    def assert_same_bits(self) -> None:
        assert self.interrupted_lrs == self.straight_lrs  # ==: bit for bit
        a, b = self.straight.model.state_dict(), self.resumed.model.state_dict()
        assert a.keys() == b.keys()
        assert not [key for key in a if not torch.equal(a[key], b[key])], "differ after the resume"


def _train(loop: StageLoop, until: int) -> list[list[float]]:
    lrs = []
    while loop.step < until:
        lrs.append([group["lr"] for group in loop.optimizer.param_groups])  # the lr of the next step
        loop.train_until(loop.step + 1)
    return lrs


def straight_and_resumed(make: MakeTrainer, root: Path, steps: int, stop_at: int) -> StraightAndResumed:
    """``steps`` straight in root/straight; in root/interrupted, ``stop_at`` steps, a checkpoint, and a new
    trainer that resumes there and goes on to ``steps``."""
    with PreemptionHandler() as preemption:
        straight = make(root / "straight", preemption)
        straight_lrs = _train(straight, steps)
        straight.metrics.close()
        first = make(root / "interrupted", preemption)
        first_lrs = _train(first, stop_at)
        first.save_checkpoint()
        first.metrics.close()
        resumed = make(root / "interrupted", preemption)
        assert resumed.step == stop_at
        resumed_lrs = _train(resumed, steps)
        resumed.metrics.close()
    return StraightAndResumed(straight, resumed, straight_lrs, first_lrs + resumed_lrs)
