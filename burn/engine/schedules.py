"""Learning-rate schedules built from torch's own schedulers (their state is checkpointed)."""

from __future__ import annotations

from typing import List

import torch
from torch.optim.lr_scheduler import CosineAnnealingLR, LinearLR, LRScheduler, MultiStepLR, SequentialLR


def build_warmup_cosine(optimizer: torch.optim.Optimizer, warmup_steps: int, total_steps: int,
                        start_factor: float) -> LRScheduler:
    """Per-iteration linear warmup from lr * start_factor, then cosine to 0 at total_steps."""
    cosine = CosineAnnealingLR(optimizer, T_max=max(total_steps - warmup_steps, 1), eta_min=0.0)
    if warmup_steps <= 0:
        return cosine
    warmup = LinearLR(optimizer, start_factor=start_factor, end_factor=1.0, total_iters=warmup_steps)
    return SequentialLR(optimizer, [warmup, cosine], milestones=[warmup_steps])


def build_step_decay(optimizer: torch.optim.Optimizer, milestone_epochs: List[int], epochs: float,
                     total_steps: int, gamma: float = 0.1) -> MultiStepLR:
    """x gamma at the given epochs, expressed in optimizer steps (scaled when the stage is shortened)."""
    milestones = sorted({max(1, round(m / epochs * total_steps)) for m in milestone_epochs if m < epochs})
    return MultiStepLR(optimizer, milestones=milestones, gamma=gamma)
