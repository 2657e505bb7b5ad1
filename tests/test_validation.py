"""burn/validation.py and the stage start-up with the symbolic values: ``pretrained=random`` (nothing to
load) and ``model.teacher_weights=auto`` (the cached teacher's path, trained when missing by the entry
points before the start-up checks it and saves it)."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch
import torchvision
from omegaconf import OmegaConf

import burn.demo.auto_teacher
import burn.validation
from burn.demo.auto_teacher import teacher_path
from burn.demo.inputs import prepare_demo_inputs
from burn.engine.stage import _claim_run_dir
from burn.runtime.errors import UsageError
from burn.validation import check_closed_choices, check_pretrained, check_stage, check_values, stage_splits
from tests.configs import compose_tiny

REPO = Path(__file__).resolve().parents[1]


@pytest.fixture
def own_data(tmp_path, tiny_data) -> Path:
    """The tiny dataset under a root of this test's own (the auto teacher is cached beside the data)."""
    root = tmp_path / "data"
    root.mkdir()
    for name in ("meta", "train", "val"):
        (root / name).symlink_to(tiny_data / name)
    return root


def test_pretrained_random_is_a_named_choice_not_a_file(tmp_path):
    linear = compose_tiny("stage=linear", "pretrained=random", f"data.root={tmp_path}")
    check_stage(linear, 1, tmp_path / "run")  # no file named "random" is looked for
    check_pretrained(compose_tiny("stage=2", "pretrained=random"))  # single-stage pretraining from scratch
    with pytest.raises(
        UsageError,
        match="stage=2 needs pretrained=: a stage-1 extraction .* pretrained=random "
        "for single-stage pretraining from scratch",
    ):
        check_pretrained(compose_tiny("stage=2"))
    with pytest.raises(UsageError, match="stage=linear needs pretrained=: a backbone"):
        check_pretrained(compose_tiny("stage=linear"))
    with pytest.raises(UsageError, match="stage 1 starts from scratch"):
        check_pretrained(compose_tiny("stage=1", "pretrained=random"))
    with pytest.raises(UsageError, match="pretrained=.*nope.pth: no such file"):
        check_pretrained(compose_tiny("stage=linear", f"pretrained={tmp_path}/nope.pth"))
    check_pretrained(compose_tiny("stage=2", f"pretrained={tmp_path}/later.pth"), {f"{tmp_path}/later.pth"})


def test_a_teacher_classifier_mode_typo_is_refused_before_queueing(tmp_path):
    check_closed_choices(compose_tiny("model.teacher_classifier=frozen", f"data.root={tmp_path}"))
    with pytest.raises(UsageError, match="model.teacher_classifier='frozn': choose one of joint, frozen"):
        check_closed_choices(compose_tiny("model.teacher_classifier=frozn", f"data.root={tmp_path}"))


def test_pretraining_reads_the_labelled_lists_only_with_the_knn_monitor():
    assert stage_splits(compose_tiny("stage=1")) == ["train", "train_labeled", "val"]
    assert stage_splits(compose_tiny("stage=2", "monitor.knn=false")) == ["train"]
    assert stage_splits(compose_tiny("stage=linear", "monitor.knn=true")) == ["train_labeled", "val"]


@pytest.mark.process
def test_the_entry_trains_the_missing_auto_teacher_and_the_start_up_checks_and_saves_its_path(
    tmp_path, own_data, monkeypatch
):
    trained = []

    def fake_train(data_cfg, arch, out, **_):  # a real state dict, without minutes of training
        trained.append(arch)
        torch.save(torchvision.models.resnet18(num_classes=10).state_dict(), out)
        return {"val_top1": 0.0, "epochs": 0, "seconds": 0.0}

    monkeypatch.setattr(burn.demo.auto_teacher, "train_teacher", fake_train)
    # The closed choices were checked when the config was composed: the start-up does not check them again.
    monkeypatch.setattr(burn.validation, "check_closed_choices", lambda *a: pytest.fail("checked twice"))
    overrides = ["stage=1", f"data.root={own_data}", "data.synthetic.generate=false", "model.teacher_weights=auto"]
    cfg = compose_tiny(*overrides)
    expected = str(teacher_path(cfg.data, cfg.model.teacher_arch))
    run_dir = tmp_path / "run"
    prepare_demo_inputs([cfg])  # what launch/run.py and launch/submit.py do before anything else
    assert (trained, cfg.model.teacher_weights) == (["resnet18"], expected)
    before = OmegaConf.to_yaml(cfg)
    lock, action = _claim_run_dir(cfg, run_dir, 1)
    lock.release()
    assert action == "run" and OmegaConf.to_yaml(cfg) == before  # the start-up changes nothing
    assert OmegaConf.load(run_dir / "config.yaml").model.teacher_weights == expected
    # The same command again: the cached teacher is reused and the identity check sees the same path.
    again = compose_tiny(*overrides)
    prepare_demo_inputs([again])
    lock, action = _claim_run_dir(again, run_dir, 1)
    lock.release()
    assert (action, trained) == ("run", ["resnet18"])


@pytest.mark.process
def test_the_start_up_refuses_an_auto_teacher_nobody_resolved(tmp_path, own_data):
    cfg = compose_tiny(
        "stage=1", f"data.root={own_data}", "data.synthetic.generate=false", "model.teacher_weights=auto"
    )
    with pytest.raises(UsageError, match=r"^model.teacher_weights=auto is resolved by the entry points"):
        _claim_run_dir(cfg, tmp_path / "run", 1)
    assert not (tmp_path / "run").exists()


@pytest.mark.process
def test_start_up_of_a_linear_stage_neither_trains_an_auto_teacher_nor_loads_random(tmp_path, own_data, monkeypatch):
    monkeypatch.setattr(burn.demo.auto_teacher, "train_teacher", lambda *a, **k: pytest.fail("trained a teacher"))
    cfg = compose_tiny(
        "stage=linear",
        "pretrained=random",
        f"data.root={own_data}",
        "data.synthetic.generate=false",
        "model.teacher_weights=auto",
    )
    prepare_demo_inputs([cfg])
    lock, action = _claim_run_dir(cfg, tmp_path / "run", 1)
    lock.release()
    assert action == "run"
    assert cfg.model.teacher_weights == str(teacher_path(cfg.data, cfg.model.teacher_arch))


@pytest.mark.parametrize("override", ["steps=0", "steps=-3", "epochs=0.0"])
def test_a_stage_length_that_is_not_positive_is_refused(tmp_path, override):
    key, value = override.split("=")
    with pytest.raises(UsageError, match=rf"^{key}={value}: a stage's length must be positive"):
        check_values(compose_tiny(override, f"data.root={tmp_path}"))
    check_values(compose_tiny("steps=1", f"data.root={tmp_path}"))
