"""How long a stage is, and its learning rate as a pure function of the optimizer step.

Both stages' schedules are torch ``LambdaLR`` schedulers: each group's lr is its base lr times a factor
of the step. Their checkpoint state is the step alone, so a resumed run recomputes exactly the lr an
uninterrupted run has at that step (torch's chained schedulers update the lr recursively instead; their
saved state is read the same way: only its ``last_epoch``, the step, is used).
"""

from __future__ import annotations

import bisect
import math
from collections.abc import Callable
from typing import Any, NamedTuple

import torch
from torch.optim.lr_scheduler import LambdaLR


class StageLength(NamedTuple):
    epochs: float
    """The stage's epochs: ``epochs=`` when set, else the stage's own default."""
    steps_per_epoch: int
    """Optimizer steps in one pass over this rank's share of the list."""
    total_steps: int
    """Optimizer steps of the stage: ``steps=`` when set, else the epochs' worth rounded up (at least 1)."""


def stage_length(
    *,
    steps: int | None,
    epochs: float | None,
    default_epochs: float,
    batches_per_epoch: int,
    accumulation: int,
    short_epoch_is_one_step: bool = False,
) -> StageLength:
    """The length of a stage whose loader gives ``batches_per_epoch`` batches per rank per epoch, one
    optimizer step reading ``accumulation`` of them. An epoch shorter than one step raises ValueError,
    or counts as one step with ``short_epoch_is_one_step`` (linear evaluation on a small labelled subset,
    e.g. a 1% list, whose steps then read on into the next epoch)."""
    steps_per_epoch = batches_per_epoch // accumulation
    if short_epoch_is_one_step:
        steps_per_epoch = max(1, steps_per_epoch)
    if steps_per_epoch < 1:
        raise ValueError(
            f"the training list gives {batches_per_epoch} batches per rank, fewer than the "
            f"{accumulation} micro-batches of one optimizer step"
        )
    epochs = epochs if epochs is not None else default_epochs
    total_steps = int(steps) if steps else max(1, math.ceil(epochs * steps_per_epoch))
    return StageLength(epochs, steps_per_epoch, total_steps)


class StepFunctionLR(LambdaLR):
    """A ``LambdaLR`` whose checkpoint state is its step: loading one sets each group's lr to its base
    lr times the factor at that step, as ``step()`` would have."""

    def state_dict(self) -> dict[str, Any]:
        return {"last_epoch": self.last_epoch}

    def load_state_dict(self, state_dict: dict[str, Any]) -> None:
        step = int(state_dict["last_epoch"])  # also in a torch scheduler's state: checkpoints before LambdaLR
        lrs = [base_lr * factor(step) for factor, base_lr in zip(self.lr_lambdas, self.base_lrs)]  # as get_lr()
        for group, lr in zip(self.optimizer.param_groups, lrs):
            group["lr"] = lr
        self.last_epoch, self._last_lr = step, lrs
        self._step_count = step + 1  # as after `step` calls: no "step() before optimizer.step()" warning


def warmup_cosine_factor(warmup_steps: int, total_steps: int, start_factor: float) -> Callable[[int], float]:
    """Linear warmup from ``start_factor`` to 1 over ``warmup_steps``, then cosine to 0 at ``total_steps``."""
    cosine_steps = max(total_steps - warmup_steps, 1)

    def factor(step: int) -> float:
        if step < warmup_steps:
            return start_factor + (1.0 - start_factor) * step / warmup_steps
        return 0.5 * (1.0 + math.cos(math.pi * (step - warmup_steps) / cosine_steps))

    return factor


def target_speed_factor(
    base: Callable[[int], float], start_scale: float, end_scale: float | None, frozen_steps: int, total_steps: int
) -> Callable[[int], float]:
    """The teacher classifier group's factor (its base lr is the student's times ``start_scale``): 0 for the
    first ``frozen_steps`` (a frozen warm-up), then ``base`` times the multiple's change since the first
    step, which moves from ``start_scale`` to ``end_scale`` on a cosine in log space (None: constant)."""
    ratio = math.log(end_scale / start_scale) if end_scale is not None else 0.0

    def factor(step: int) -> float:
        if step < frozen_steps:
            return 0.0
        progress = min(step, total_steps) / max(total_steps, 1)
        return base(step) * math.exp(ratio * (1.0 - math.cos(math.pi * progress)) / 2)

    return factor


def step_decay_factor(milestones: list[int], gamma: float) -> Callable[[int], float]:
    """``gamma`` to the power of the number of ``milestones`` (optimizer steps) reached."""
    milestones = sorted(milestones)
    return lambda step: gamma ** bisect.bisect_right(milestones, step)


def build_step_decay(
    optimizer: torch.optim.Optimizer, milestone_epochs: list[int], epochs: float, total_steps: int, gamma: float = 0.1
) -> StepFunctionLR:
    """x gamma at the given epochs, expressed in optimizer steps (scaled when the stage is shortened)."""
    milestones = sorted({max(1, round(m / epochs * total_steps)) for m in milestone_epochs if m < epochs})
    return StepFunctionLR(optimizer, step_decay_factor(milestones, gamma))
