"""Counting skipped (non-finite) optimizer steps without a host sync on every step.

With fp16 on CUDA the update is skipped on the device (GradScaler + fused Adam), and whether it was
applied is a device tensor: reading it each step would stall the CPU until the GPU caught up. The
streak is therefore kept on the device and read only when the loop must know: on logging steps,
before a checkpoint, when stopping and at the last step. On CPU, ``applied`` is a plain bool and the
check runs every step, as before.
"""

from __future__ import annotations

import torch

Applied = bool | torch.Tensor


class BadStepStreak:
    """Consecutive skipped optimizer steps, and the longest such streak since the last check."""

    def __init__(self, limit: int):
        self.limit = limit
        self.current: int | torch.Tensor = 0
        self.worst: int | torch.Tensor = 0

    def update(self, applied: Applied) -> None:
        if isinstance(applied, torch.Tensor):
            current = torch.as_tensor(self.current, device=applied.device)
            self.current = torch.where(applied, torch.zeros_like(current), current + 1)
            self.worst = torch.maximum(torch.as_tensor(self.worst, device=applied.device), self.current)
        else:
            self.current = 0 if applied else int(self.current) + 1
            self.worst = max(int(self.worst), self.current)

    def check(self, step: int, checkpoint_dir) -> None:
        """Raise FloatingPointError when a streak exceeded the limit (a host sync on CUDA)."""
        worst, current = int(self.worst), int(self.current)
        if worst > self.limit:
            raise FloatingPointError(
                f"{worst} optimizer steps in a row had a non-finite loss or gradient (seen at step {step}); "
                f"stopping. The last good checkpoint in {checkpoint_dir} is untouched."
            )
        self.current = self.worst = current
