"""How fast the target moves (docs/moving-target.md): the teacher classifier's frozen warm-up, its lr multiple
on a schedule, and the EMA target (model.teacher_classifier=ema): what each does, and that a run with all
three resumes to the same bits."""

from __future__ import annotations

import math
from pathlib import Path

import pytest
import torch

from burn.config import ModelConfig
from burn.engine.distributed import init_distributed, seed_everything
from burn.engine.schedules import target_speed_factor
from burn.engine.trainer import PretrainTrainer
from burn.models.burn import build_burn_model
from burn.resume.signals import PreemptionHandler
from burn.runtime.errors import UsageError
from burn.validation import check_values
from tests.configs import compose_tiny, tiny_stage
from tests.engine.in_process_resume import straight_and_resumed

TINY = ModelConfig(width=0.125, teacher_arch="resnet18", classifier_hidden=32, classifier_out=16)


def test_the_speed_factor_is_zero_while_frozen_then_the_multiple_moves_on_a_log_cosine():
    constant = target_speed_factor(lambda step: 1.0, 0.1, None, frozen_steps=3, total_steps=10)
    assert [constant(s) for s in range(5)] == [0.0, 0.0, 0.0, 1.0, 1.0]
    moving = target_speed_factor(lambda step: 0.5, 0.1, 0.001, frozen_steps=0, total_steps=10)
    assert moving(0) == pytest.approx(0.5)  # the group's base lr (lr x 0.1) times the shared factor
    assert moving(5) == pytest.approx(0.5 * 0.1)  # half way in log space: 0.01 / 0.1
    assert moving(10) == pytest.approx(0.5 * 0.01)  # 0.001 / 0.1
    assert moving(10) < moving(7) < moving(3)


def _views(seed=1, n=4, size=32):
    g = torch.Generator().manual_seed(seed)
    return torch.randn(n, 3, size, size, generator=g), torch.randn(n, 3, size, size, generator=g)


def test_the_ema_target_gets_no_gradient_and_follows_the_trained_classifier_at_its_momentum():
    torch.manual_seed(0)
    model = build_burn_model(
        ModelConfig(**{**TINY.__dict__, "teacher_classifier": "ema", "target_momentum": 0.9}), "binact"
    )
    model.train()
    target, classifier = model.target_classifier, model.teacher_classifier
    assert all(torch.equal(a, b) for a, b in zip(target.parameters(), classifier.parameters()))  # starts equal
    optimizer = torch.optim.Adam(model.param_groups(1e-2, 1.0), lr=1e-2)
    assert {id(p) for g in optimizer.param_groups for p in g["params"]}.isdisjoint(id(p) for p in target.parameters())
    before = [p.detach().clone() for p in target.parameters()]

    out = model(*_views(), lam=0.2)
    out["loss"].backward()
    assert all(p.grad is None and not p.requires_grad for p in target.parameters())
    assert all(p.grad is not None and p.grad.abs().sum() > 0 for p in classifier.parameters())
    assert all(p.grad is not None for p in model.student_classifier.parameters())
    optimizer.step()
    model.update_target(applied=False)  # a skipped step moves nothing
    assert all(torch.equal(a, b) for a, b in zip(target.parameters(), before))
    model.update_target(applied=torch.tensor(True))
    for old, new, now in zip(before, target.parameters(), classifier.parameters()):
        assert torch.allclose(new, 0.9 * old + 0.1 * now)
    # The student's target is the average, not the classifier it follows.
    with torch.no_grad():
        features = model.teacher(torch.cat(_views())).chunk(2)
        assert torch.equal(model(*_views(), lam=0.2)["teacher_out"], torch.cat(model._targets(target, features)))
        assert not torch.equal(
            model(*_views(), lam=0.2)["teacher_out"], torch.cat(model._targets(classifier, features))
        )


@pytest.mark.parametrize(
    "override, key",
    [
        ("optim.teacher_classifier_lr_scale=0", "optim.teacher_classifier_lr_scale=0"),
        ("optim.teacher_classifier_lr_scale_end=-1", "optim.teacher_classifier_lr_scale_end=-1"),
        ("optim.teacher_classifier_frozen_epochs=-2", "optim.teacher_classifier_frozen_epochs=-2"),
        ("model.target_momentum=1", "model.target_momentum=1"),
    ],
)
def test_bad_speeds_are_refused_naming_the_key(override, key):
    with pytest.raises(UsageError, match=key):
        check_values(compose_tiny("data.root=/data/tiny", override))


SPEEDS = [
    "model.teacher_classifier=ema",
    "model.target_momentum=0.8",
    "optim.teacher_classifier_lr_scale=1",
    "optim.teacher_classifier_lr_scale_end=0.1",
    "optim.teacher_classifier_frozen_epochs=0.06",  # 2 steps: 400 images, 33 steps of 12 per epoch
    "train.global_batch=12",
    "train.per_gpu_batch=6",
    "monitor.knn=false",
]


@pytest.mark.slow
def test_a_stage_with_an_ema_target_a_frozen_warmup_and_a_moving_multiple_resumes_to_the_same_bits(tiny_data, tmp_path):
    info = init_distributed()
    steps, stop_at = 8, 5
    initial = {}  # the teacher classifier as the first (straight) trainer starts it

    def trainer(run_dir: Path, preemption: PreemptionHandler) -> PretrainTrainer:
        cfg = tiny_stage(tiny_data, run_dir, "stage=1", "model.teacher_weights=null", f"steps={steps}", *SPEEDS)
        seed_everything(cfg.seed, info.rank)  # as the stage runner does
        loop = PretrainTrainer(cfg, info, run_dir, preemption)
        loop.prepare()
        if not initial:
            initial.update({k: v.clone() for k, v in loop.model.teacher_classifier.state_dict().items()})
        return loop

    runs = straight_and_resumed(trainer, tmp_path, steps, stop_at)
    straight = runs.straight
    assert [g["name"] for g in straight.optimizer.param_groups] == ["student", "teacher_classifier"]
    teacher_lrs = [lrs[1] for lrs in runs.straight_lrs]
    assert teacher_lrs[:2] == [0.0, 0.0] and all(lr > 0 for lr in teacher_lrs[2:])  # the frozen warm-up
    runs.assert_same_bits()
    assert any(k.startswith("target_classifier.") for k in straight.model.state_dict())
    # The classifier trained after the warm-up, and the target followed it part of the way.
    model = straight.model
    moved = [not torch.equal(v, initial[k]) for k, v in model.teacher_classifier.state_dict().items()]
    assert any(moved)
    gap = [
        (t - c).abs().max().item()
        for t, c in zip(model.target_classifier.parameters(), model.teacher_classifier.parameters())
    ]
    assert max(gap) > 0 and all(math.isfinite(g) for g in gap)
