"""What a stage hands the loop: one `StageParts`, built by the stage's build function.

A stage (pretraining: burn.engine.trainer; linear evaluation: burn.engine.linear; fine-tuning:
burn.engine.finetune) builds its model,
optimizer, schedule, scaler and loader, the function that runs one optimizer step, its monitors and
its last act, and hands them to the loop (burn.engine.loop) in this one typed object. The loop owns
what must be identical between stages for resume to be exact: progress, checkpoints (it saves and
restores `StageParts.states` by name), stop signals, logging. It calls nothing else of the stage.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass, field
from typing import Any

import torch
from torch import nn

from burn.batch import BatchSplit
from burn.data.stream import ResumableLoader
from burn.engine.distributed import DistInfo
from burn.engine.nonfinite import Applied
from burn.engine.state import ModuleParts, Stateful
from burn.monitor.reporting import MetricLogger


@dataclass(frozen=True)
class StepContext:
    """What the loop gives a stage's step function for one optimizer step."""

    step: int
    """Optimizer steps done before this one."""
    next_batch: Callable[[], Any]
    """The loader's next micro-batch (recorded with log.sample_ids)."""
    notice_stop: Callable[[str], None]
    """``notice_stop(where)``: if a stop signal has reached this rank, note ``where`` (the first place
    noticed goes into the stop's log line). The step still completes: checkpoints happen between steps."""


StepFn = Callable[[StepContext], tuple[dict[str, Any], Applied]]
"""One optimizer step: (metrics, device tensors where reading them would cost a host sync; whether
the update was applied, a bool or a 0-dim bool tensor on the device)."""

LogHook = Callable[[int, dict[str, float]], None]
"""``hook(step, values)`` on every rank on logging steps, after the loop logged ``values`` (the step's
metrics as floats): alarms that read them."""

StepHook = Callable[[int, MetricLogger], None]
"""``hook(step, metrics)`` on every rank after each optimizer step and its logging, unless a stop
signal ends the run at this step (the checkpoint goes first): monitors, which may be collectives and
log to ``metrics``. Must leave the training state untouched."""

ResumeCheck = Callable[[Mapping[str, Any]], None]
"""``check(checkpoint)`` on every rank before anything is restored from ``checkpoint`` (the loaded
dict, with its ``path``); raises to refuse it."""

Finish = Callable[[int, MetricLogger], dict[str, float]]
"""``finish(step, metrics)`` on every rank after the last step and its checkpoint: writes the stage's
products (rank 0) and returns the values the final progress record shows."""


@dataclass
class StageParts:
    """Everything a stage hands the loop, built once per process (after the resume point is known)."""

    stage: str
    """"1", "2", "linear" or "finetune": in checkpoints, progress.json and TensorBoard."""
    model: nn.Module
    """The stage's model."""
    ddp: nn.Module
    """``model`` as the step runs it (DDP-wrapped when distributed); the loop sets train mode once."""
    trained: ModuleParts
    """The checkpoint's "model" entry: the trained modules under the names burn.weights reads."""
    optimizer: torch.optim.Optimizer
    scheduler: torch.optim.lr_scheduler.LRScheduler
    """A function of the step count (burn.engine.schedules), stepped once per optimizer step."""
    scaler: torch.amp.GradScaler
    data: ResumableLoader
    """The training loader, opened at the checkpoint's position (or the start)."""
    batch: BatchSplit
    """Per-GPU batch and accumulation: per_gpu x ranks x accumulation is the global batch."""
    total_steps: int
    step: StepFn
    finish: Finish
    after_log: list[LogHook] = field(default_factory=list)
    after_step: list[StepHook] = field(default_factory=list)
    resume_checks: list[ResumeCheck] = field(default_factory=list)
    more_states: dict[str, Stateful] = field(default_factory=dict)
    """Checkpoint entries besides the five every stage has (e.g. pretraining's "teacher")."""

    @property
    def states(self) -> dict[str, Stateful]:
        """What a checkpoint saves and restores, by name, in restore order (burn.engine.loop adds the
        process RNG last)."""
        return {
            "model": self.trained,
            "optimizer": self.optimizer,
            "scheduler": self.scheduler,
            "scaler": self.scaler,
            "data": self.data,
            **self.more_states,
        }


Build = Callable[[Any, DistInfo, Any, Any], StageParts]
"""``build(cfg, info, run_dir, data_state)``: a stage's parts, the loader opened at ``data_state`` (the
checkpoint's position for this rank, or None)."""


def apply_update(
    optimizer: torch.optim.Optimizer,
    scheduler: torch.optim.lr_scheduler.LRScheduler,
    scaler: torch.amp.GradScaler,
    params: Iterable[nn.Parameter],
) -> tuple[torch.Tensor, Applied, float]:
    """The end of every optimizer step: unscale, check, step the optimizer and the schedule. Returns
    (grad norm of ``params``, applied, lr used).

    A non-finite gradient skips the update, as GradScaler does; the schedule still advances so it
    stays a function of the step count."""
    scaler.unscale_(optimizer)
    grad_norm = torch.nn.utils.clip_grad_norm_(params, float("inf"))
    if scaler.is_enabled():
        # Skips the update on inf/nan gradients; a fused optimizer does so on the device, so
        # `applied` stays a device tensor and nothing here waits for the GPU.
        scaler.step(optimizer)
        scaler.update()
        applied = torch.isfinite(grad_norm)
    else:
        applied = bool(torch.isfinite(grad_norm))  # a host sync (free on CPU)
        if applied:
            optimizer.step()
    lr = optimizer.param_groups[0]["lr"]
    scheduler.step()
    return grad_norm, applied, lr
