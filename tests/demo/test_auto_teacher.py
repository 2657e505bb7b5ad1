"""model.teacher_weights=auto: a small supervised teacher trained on the generated set, cached beside it."""

from __future__ import annotations

import json

import pytest
import torch
from omegaconf import OmegaConf

from burn.config import BurnConfig
from burn.demo.auto_teacher import AUTO, ensure_teacher, resolve_auto_teacher, teacher_path, train_teacher
from burn.models.teacher import Teacher

# Every test here uses tiny_data, whose set-up runs the dataset generator in a subprocess.
pytestmark = pytest.mark.process


def _cfg(root):
    cfg = OmegaConf.structured(BurnConfig)
    cfg.data.root = str(root)
    cfg.data.aug.image_size, cfg.data.eval_resize, cfg.data.eval_crop = 32, 36, 32
    cfg.model.teacher_arch = "resnet18"
    return cfg


def test_trained_teacher_learns_and_loads_as_a_torchvision_teacher(tiny_data, tmp_path):
    out = tmp_path / "teacher.pth"
    report = train_teacher(_cfg(tiny_data).data, "resnet18", out, seed=0)  # the default 20 epochs
    # 10 classes: chance is 10%. The classes differ in shape and texture, which a ResNet-18 picks up.
    assert report["val_top1"] > 40, report
    assert json.loads(out.with_suffix(".json").read_text())["val_top1"] == report["val_top1"]
    teacher = Teacher("resnet18")
    teacher.load_weights(out)  # the same path a user's torchvision file takes
    state = torch.load(out, weights_only=True)
    assert torch.equal(teacher.trunk.conv1.weight, state["conv1.weight"])


def test_auto_resolves_to_one_cached_file(tiny_data, tmp_path, monkeypatch):
    cfg = _cfg(tiny_data)
    cfg.model.teacher_weights = AUTO
    resolve_auto_teacher(cfg, train=False)  # a pure function of data and architecture
    assert cfg.model.teacher_weights == str(teacher_path(cfg.data, "resnet18"))
    assert teacher_path(cfg.data, "resnet18").parent == tiny_data.parent  # beside the data, not in it

    calls = []

    def count_and_write(data_cfg, arch, out, **kwargs):  # the training itself is tested above
        calls.append(out)
        out.write_bytes(b"x")
        return {"val_top1": 0.0, "epochs": 0, "seconds": 0.0}

    monkeypatch.setattr("burn.demo.auto_teacher.train_teacher", count_and_write)
    fake_root = tmp_path / "other"
    fake_root.mkdir()
    other = _cfg(fake_root)
    assert ensure_teacher(other.data, "resnet18") == teacher_path(other.data, "resnet18")
    assert ensure_teacher(other.data, "resnet18") == teacher_path(other.data, "resnet18")
    assert len(calls) == 1  # cached: trained once


@pytest.mark.parametrize("value", [None, "/some/teacher.pth"])
def test_other_values_are_left_alone(tiny_data, value):
    cfg = _cfg(tiny_data)
    cfg.model.teacher_weights = value
    resolve_auto_teacher(cfg, train=True)
    assert cfg.model.teacher_weights == value
