"""BurnModel: what trains, what stays frozen, how the views are batched, state dicts."""

import pytest
import torch

from burn.config import ModelConfig
from burn.models.burn import BurnModel, build_burn_model
from burn.objective import burn_loss

TINY = ModelConfig(width=0.125, teacher_arch="resnet18", classifier_hidden=32, classifier_out=16)


def _tiny_model(precision="binact", seed=0):
    torch.manual_seed(seed)
    return build_burn_model(TINY, precision)


def _trained(model):
    """The parameters of the parts a checkpoint saves and the extractions write (trainable_modules)."""
    return [p for module in model.trainable_modules().values() for p in module.parameters()]


def _views(seed=1, n=4, size=32):
    g = torch.Generator().manual_seed(seed)
    return torch.randn(n, 3, size, size, generator=g), torch.randn(n, 3, size, size, generator=g)


@pytest.mark.parametrize("precision", ["binact", "binary"])
def test_one_training_step_trains_exactly_the_trainable_parts(precision):
    model = _tiny_model(precision)
    model.train()
    teacher_before = {k: v.clone() for k, v in model.teacher.state_dict().items()}
    trainable = _trained(model)
    # As the trainer builds it: its groups, and the gradient norm's requires_grad parameters.
    optimizer = torch.optim.Adam(model.param_groups(1e-2, 1.0), lr=1e-2)
    assert [p for p in model.parameters() if p.requires_grad] == trainable
    params_before = [p.detach().clone() for p in trainable]

    out = model(*_views(), lam=0.2)
    out["loss"].backward()
    optimizer.step()

    trainable_ids = {id(p) for p in trainable}
    for name, p in model.named_parameters():
        if id(p) in trainable_ids:
            assert p.grad is not None, f"{name} got no gradient"
        else:
            assert name.startswith("teacher.") and p.grad is None and not p.requires_grad, name
    assert len(trainable) == sum(1 for n, _ in model.named_parameters() if not n.startswith("teacher."))
    assert any(p.grad.abs().sum() > 0 for p in model.teacher_classifier.parameters())
    # One Adam step moves every trainable tensor (a zero gradient everywhere would not).
    moved = sum(not torch.equal(a, b.detach()) for a, b in zip(params_before, trainable))
    assert moved == len(trainable)
    # Frozen trunk: weights and BatchNorm running statistics untouched, still in eval mode.
    assert not model.teacher.training
    for k, v in model.teacher.state_dict().items():
        assert torch.equal(v, teacher_before[k]), k


def test_views_pass_the_student_and_classifiers_as_separate_batches():
    model = _tiny_model("binact").train()
    v1, v2 = _views()
    out = model(v1, v2, lam=torch.tensor(0.25))
    p1, p2 = (model.student_classifier(model.student(v)) for v in (v1, v2))
    t1, t2 = (model.teacher_classifier(model.teacher(v)) for v in (v1, v2))
    t1, t2 = (t - t.mean(dim=0) for t in (t1, t2))  # model.center_target, the default
    loss, kl, fs = burn_loss(p1, p2, t1, t2, 0.25)
    torch.testing.assert_close(out["loss"], loss)
    torch.testing.assert_close(out["kl"], kl)
    torch.testing.assert_close(out["fs"], fs)
    # The collapse monitor's inputs: both views' classifier outputs, stacked and detached.
    torch.testing.assert_close(out["student_out"], torch.cat([p1, p2]))
    torch.testing.assert_close(out["teacher_out"], torch.cat([t1, t2]))
    assert not out["student_out"].requires_grad and not out["teacher_out"].requires_grad
    # A concatenated student batch normalises with both views' statistics: a different loss.
    p12 = model.student_classifier(model.student(torch.cat([v1, v2]))).chunk(2)
    concatenated = burn_loss(*p12, t1, t2, 0.25)[0]
    assert not torch.allclose(concatenated, loss)


def test_forward_under_bf16_autocast_gives_float32_loss_and_gradients():
    model = _tiny_model("binary").train()
    with torch.autocast("cpu", dtype=torch.bfloat16):
        out = model(*_views(), lam=0.1)
    assert all(out[k].dtype == torch.float32 and out[k].dim() == 0 for k in ("loss", "kl", "fs"))
    out["loss"].backward()
    assert all(p.grad is not None and torch.isfinite(p.grad).all() for p in _trained(model))


def test_trainable_state_dicts_round_trip_strictly():
    a, b = _tiny_model(seed=0), _tiny_model(seed=1)
    state = a.trainable_state_dicts()
    assert set(state) == {"student", "student_classifier", "teacher_classifier"}
    b.load_trainable_state_dicts(state)
    for part, sd in b.trainable_state_dicts().items():
        assert all(torch.equal(v, state[part][k]) for k, v in sd.items()), part
    with pytest.raises(KeyError, match="teacher_classifier"):
        b.load_trainable_state_dicts({k: state[k] for k in ("student", "student_classifier")})
    state["student"].pop("fc.0.bias")
    with pytest.raises(RuntimeError, match="fc.0.bias"):
        b.load_trainable_state_dicts(state)


def test_paper_model_parts_have_original_layouts(official_layouts, as_layout):
    model = build_burn_model(ModelConfig(), "binact")
    state = model.trainable_state_dicts()
    assert as_layout(state["student"]) == [tuple(e) for e in official_layouts["stage1_backbone_binact"]]
    for part in ("student_classifier", "teacher_classifier"):
        assert as_layout(state[part]) == [tuple(e) for e in official_layouts[part]]
    assert model.teacher.arch == "resnet50"


def test_build_loads_teacher_weights(tmp_path):
    torch.manual_seed(5)
    reference = _tiny_model(seed=5).teacher
    torch.save({"state_dict": reference.trunk.state_dict()}, tmp_path / "teacher.pth")
    cfg = ModelConfig(**{**TINY.__dict__, "teacher_weights": str(tmp_path / "teacher.pth")})
    torch.manual_seed(6)
    model = build_burn_model(cfg, "binact")
    assert isinstance(model, BurnModel)
    assert torch.equal(model.teacher.trunk.conv1.weight, reference.trunk.conv1.weight)
    assert model.student_classifier.in_dim == model.student.out_dim == 128
    assert model.teacher_classifier.in_dim == 512 and model.teacher_classifier.out_dim == 16


def test_frozen_teacher_classifier_gets_no_gradient_and_no_optimizer_group():
    torch.manual_seed(0)
    model = build_burn_model(ModelConfig(**{**TINY.__dict__, "teacher_classifier": "frozen"}), "binact")
    groups = model.param_groups(1e-3, 0.5)
    assert [g["name"] for g in groups] == ["student"]
    out = model(*_views(), lam=0.2)
    out["loss"].backward()
    assert all(p.grad is None and not p.requires_grad for p in model.teacher_classifier.parameters())
    assert all(p.grad is not None for p in model.student_classifier.parameters())


def test_param_groups_put_the_teacher_classifier_at_its_own_lr():
    model = _tiny_model()
    groups = {g["name"]: g for g in model.param_groups(1e-3, 0.01)}
    assert groups["student"]["lr"] == 1e-3 and groups["teacher_classifier"]["lr"] == pytest.approx(1e-5)
    grouped = [id(p) for g in groups.values() for p in g["params"]]
    assert sorted(grouped) == sorted(id(p) for p in _trained(model))  # each exactly once
    assert {id(p) for p in groups["teacher_classifier"]["params"]} == {
        id(p) for p in model.teacher_classifier.parameters()
    }


def test_unknown_teacher_classifier_mode_is_refused():
    with pytest.raises(ValueError, match="model.teacher_classifier='moving'"):
        build_burn_model(ModelConfig(**{**TINY.__dict__, "teacher_classifier": "moving"}), "binact")


def test_center_target_removes_the_batch_mean_of_each_view_before_the_loss():
    torch.manual_seed(0)
    model = build_burn_model(ModelConfig(**{**TINY.__dict__, "center_target": True}), "binact").train()
    v1, v2 = _views(n=6)
    with torch.no_grad():
        f1, f2 = model.teacher(torch.cat([v1, v2])).chunk(2)
        t1, t2 = model.teacher_classifier(f1), model.teacher_classifier(f2)
        p1, p2 = model.student_classifier(model.student(v1)), model.student_classifier(model.student(v2))
        out = model(v1, v2, lam=0.2)
    centred = burn_loss(p1, p2, t1 - t1.mean(0), t2 - t2.mean(0), 0.2)[0]
    plain = burn_loss(p1, p2, t1, t2, 0.2)[0]
    assert torch.allclose(out["loss"], centred, atol=1e-5) and not torch.allclose(centred, plain, atol=1e-3)
