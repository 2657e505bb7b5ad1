"""The lr schedules are pure functions of the step: a scheduler restored from its checkpoint state (or
from a torch scheduler's, as checkpoints before LambdaLR hold) gives bit-for-bit the lr of an
uninterrupted one at every later step; the stage length has one definition."""

from __future__ import annotations

import pytest
import torch
from torch.optim.lr_scheduler import CosineAnnealingLR, LinearLR, MultiStepLR, SequentialLR

from burn.engine.schedules import StepFunctionLR, build_step_decay, stage_length, warmup_cosine_factor

TOTAL = 40


def _optimizer() -> torch.optim.Optimizer:
    """Two groups at different lrs, as pretraining's student and teacher-classifier groups."""
    student, head = torch.nn.Parameter(torch.zeros(3)), torch.nn.Parameter(torch.zeros(2))
    return torch.optim.Adam([{"params": [student], "lr": 3e-4}, {"params": [head], "lr": 3e-6}], lr=3e-4)


def _lrs(optimizer: torch.optim.Optimizer) -> list[float]:
    return [group["lr"] for group in optimizer.param_groups]


def _run(optimizer, scheduler, steps: int) -> list[list[float]]:
    """The lrs each of `steps` optimizer steps uses, stepping as StageLoop.apply_update does."""
    used = []
    for _ in range(steps):
        optimizer.step()
        used.append(_lrs(optimizer))
        scheduler.step()
    return used


SCHEDULES = {
    "warmup_cosine": lambda opt: StepFunctionLR(opt, warmup_cosine_factor(6, TOTAL, start_factor=1e-4)),
    "step_decay": lambda opt: build_step_decay(opt, [12, 16], epochs=20, total_steps=TOTAL),
}


@pytest.mark.parametrize("name", SCHEDULES)
@pytest.mark.parametrize("k", [0, 3, 6, 7, 24, 25, TOTAL - 1])
def test_lr_after_resume_at_step_k_equals_the_uninterrupted_lr(name, k):
    build = SCHEDULES[name]
    straight_opt = _optimizer()
    straight = _run(straight_opt, build(straight_opt), TOTAL)

    first_opt = _optimizer()
    first = build(first_opt)
    before = _run(first_opt, first, k)
    saved = {"optimizer": first_opt.state_dict(), "scheduler": first.state_dict()}
    assert saved["scheduler"] == {"last_epoch": k}  # the step is the whole state

    resumed_opt = _optimizer()  # a new process: built from the config, then restored
    resumed = build(resumed_opt)
    resumed_opt.load_state_dict(saved["optimizer"])
    resumed.load_state_dict(saved["scheduler"])
    assert _lrs(resumed_opt) == resumed.get_last_lr() == straight[k]
    assert before + _run(resumed_opt, resumed, TOTAL - k) == straight  # ==: bit for bit


def test_a_torch_scheduler_state_from_an_older_checkpoint_resumes_at_its_step():
    """Checkpoints written with torch's chained schedulers hold their state under "scheduler": its
    last_epoch (the step) is all that is read; the lr is the pure function's at that step."""
    k = 17
    old_opt = _optimizer()
    warmup = LinearLR(old_opt, start_factor=1e-4, end_factor=1.0, total_iters=6)
    old = SequentialLR(old_opt, [warmup, CosineAnnealingLR(old_opt, T_max=TOTAL - 6)], milestones=[6])
    _run(old_opt, old, k)
    straight_opt = _optimizer()
    straight = _run(straight_opt, SCHEDULES["warmup_cosine"](straight_opt), TOTAL)

    resumed_opt = _optimizer()
    resumed = SCHEDULES["warmup_cosine"](resumed_opt)
    resumed_opt.load_state_dict(old_opt.state_dict())
    resumed.load_state_dict(old.state_dict())
    assert _lrs(resumed_opt) == straight[k]
    assert _run(resumed_opt, resumed, TOTAL - k) == straight[k:]
    # The same schedule as torch's recursive one, up to rounding.
    assert old.get_last_lr() == pytest.approx(straight[k], rel=1e-12)

    old_opt = _optimizer()
    old = MultiStepLR(old_opt, milestones=[24, 32], gamma=0.1)
    _run(old_opt, old, 30)
    resumed_opt = _optimizer()
    resumed = SCHEDULES["step_decay"](resumed_opt)
    resumed.load_state_dict(old.state_dict())
    assert resumed.last_epoch == 30 and _lrs(resumed_opt) == pytest.approx(old.get_last_lr(), rel=1e-12)


@pytest.mark.parametrize("name", SCHEDULES)
def test_the_schedules_match_torchs_recursive_ones_up_to_rounding(name):
    opt = _optimizer()
    ours = _run(opt, SCHEDULES[name](opt), TOTAL + 1)
    opt = _optimizer()
    if name == "warmup_cosine":
        warmup = LinearLR(opt, start_factor=1e-4, end_factor=1.0, total_iters=6)
        reference = SequentialLR(opt, [warmup, CosineAnnealingLR(opt, T_max=TOTAL - 6)], milestones=[6])
    else:
        reference = MultiStepLR(opt, milestones=[24, 32], gamma=0.1)
    theirs = _run(opt, reference, TOTAL + 1)
    for step, (a, b) in enumerate(zip(ours, theirs)):
        assert a == pytest.approx(b, rel=1e-12, abs=1e-20), step
    if name == "warmup_cosine":
        assert ours[TOTAL] == [0.0, 0.0]  # the cosine ends at exactly 0


def test_stage_length_has_one_definition():
    # steps= wins; else the epochs (given, or the stage's default) rounded up to whole steps.
    assert stage_length(steps=7, epochs=None, default_epochs=10, batches_per_epoch=12, accumulation=2) == (10, 6, 7)
    assert stage_length(steps=None, epochs=None, default_epochs=10, batches_per_epoch=12, accumulation=2) == (10, 6, 60)
    assert stage_length(steps=None, epochs=0.25, default_epochs=10, batches_per_epoch=13, accumulation=2) == (
        0.25,
        6,
        2,
    )
    assert stage_length(steps=None, epochs=0.0, default_epochs=10, batches_per_epoch=4, accumulation=4).total_steps == 1
    with pytest.raises(ValueError, match="3 batches per rank, fewer than the 4 micro-batches of one optimizer step"):
        stage_length(steps=5, epochs=None, default_epochs=1, batches_per_epoch=3, accumulation=4)
    # Linear evaluation on a labelled list shorter than one step (a small labelled fraction): one step per epoch.
    short = stage_length(
        steps=None, epochs=3, default_epochs=1, batches_per_epoch=1, accumulation=2, short_epoch_is_one_step=True
    )
    assert (short.steps_per_epoch, short.total_steps) == (1, 3)
