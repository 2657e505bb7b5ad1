"""model.teacher_weights=auto: a small teacher trained on the train split, label-free by default (supervised
by name), cached beside it, one file per objective; the same seed gives the same file; images of any size
held at one side; an over-size or single-class folder refused before any image is read."""

from __future__ import annotations

import json
import logging
import threading
import time
from pathlib import Path

import numpy as np
import pytest
import torch
from omegaconf import OmegaConf
from PIL import Image

import burn.demo.auto_teacher as auto_teacher
from burn.config import BurnConfig
from burn.demo.auto_teacher import AUTO, _load_split, check_fits, ensure_teacher, teacher_path, train_teacher
from burn.demo.inputs import prepare_demo_inputs
from burn.models.teacher import Teacher
from burn.runtime.errors import UsageError


def _cfg(root, **auto):
    cfg = OmegaConf.structured(BurnConfig)
    cfg.data.root = str(root)
    cfg.data.aug.image_size, cfg.data.eval_resize, cfg.data.eval_crop = 32, 36, 32
    cfg.data.aug.crop_scale = [0.25, 1.0]
    cfg.model.teacher_arch = "resnet18"
    cfg.auto_teacher.load_side = 48  # the tiny preset's: its generated images' side
    for key, value in auto.items():
        cfg.auto_teacher[key] = value
    return cfg


def _fake_train(calls: list, pause: float = 0.0):
    def fake(data_cfg, arch, out, **kwargs):  # a real state dict, without minutes of training
        calls.append(out)
        time.sleep(pause)
        torch.save(torch.nn.Linear(1, 1).state_dict(), out)
        return {"val_top1": 0.0, "epochs": 0, "seconds": 0.0}

    return fake


@pytest.mark.process  # tiny_data's set-up runs the dataset generator in a subprocess
def test_the_default_teacher_never_saw_a_label_and_reports_its_knn_quality(tiny_data):
    """The session's teacher (tests/conftest.py: the tiny preset's auto) is the label-free one; its
    report gives the k-NN top-1 of its features, and no classifier top-1 (it has no classifier)."""
    cfg = _cfg(tiny_data)
    path = teacher_path(cfg.data, "resnet18")
    assert path.name == "synthetic-tiny-teacher-resnet18-32px-ssl.pth"
    report = json.loads(path.with_suffix(".json").read_text())
    assert report["objective"] == "ssl" and "val_top1" not in report
    # 10 classes: chance is 10%. Features learnt from two views of each image, never from a label.
    assert report["val_knn_top1"] > 30, report
    assert (report["epochs"], report["batch"], report["lr"]) == tuple(auto_teacher.RECIPES["ssl"].values())
    assert not [k for k in torch.load(path, weights_only=True) if k.startswith("fc.")]  # the head is dropped
    Teacher("resnet18").load_weights(path)  # a torchvision trunk, strictly


@pytest.mark.process  # tiny_data
def test_the_supervised_teacher_stays_available_by_name(tiny_data, tmp_path):
    out = tmp_path / "teacher.pth"
    cfg = _cfg(tiny_data, objective="supervised")
    report = train_teacher(cfg.data, "resnet18", out, cfg.auto_teacher, seed=0)  # its recipe: 20 epochs
    # 10 classes: chance is 10%. The classes differ in shape and texture, which a ResNet-18 picks up.
    assert report["objective"] == "supervised" and report["val_top1"] > 40, report
    assert 0 <= report["val_knn_top1"] <= 100  # comparable with a label-free teacher's
    saved = json.loads(out.with_suffix(".json").read_text())
    assert saved["val_top1"] == report["val_top1"]
    assert (saved["load_side"], saved["crop_scale"], saved["epochs"]) == (48, [0.25, 1.0], 20)
    teacher = Teacher("resnet18")
    teacher.load_weights(out)  # the same path a user's torchvision file takes
    state = torch.load(out, weights_only=True)
    assert torch.equal(teacher.trunk.conv1.weight, state["conv1.weight"])


@pytest.mark.process  # tiny_data
def test_auto_resolves_to_one_cached_file_trained_once(tiny_data, tmp_path, monkeypatch):
    cfg = _cfg(tiny_data)
    cfg.model.teacher_weights = AUTO
    assert prepare_demo_inputs([cfg]) == []  # the session's teacher is cached: nothing to train
    assert cfg.model.teacher_weights == str(teacher_path(cfg.data, "resnet18"))
    assert teacher_path(cfg.data, "resnet18").parent == tiny_data.parent  # beside the data, not in it

    calls = []
    monkeypatch.setattr(auto_teacher, "train_teacher", _fake_train(calls))
    other = tmp_path / "other"
    for name in ("meta", "train", "val"):
        (other / name).parent.mkdir(exist_ok=True)
        (other / name).symlink_to(tiny_data / name)
    first, again = _cfg(other), _cfg(other)
    first.model.teacher_weights = again.model.teacher_weights = AUTO
    prepare_demo_inputs([first])
    prepare_demo_inputs([again])
    assert first.model.teacher_weights == again.model.teacher_weights == str(teacher_path(first.data, "resnet18"))
    assert calls == [teacher_path(first.data, "resnet18")]  # cached: trained once


@pytest.mark.parametrize("value", [None, "/some/teacher.pth"])
def test_other_values_are_left_alone(tmp_path, value, monkeypatch):
    monkeypatch.setattr(auto_teacher, "train_teacher", lambda *a, **k: pytest.fail("trained a teacher"))
    cfg = _cfg(tmp_path)
    cfg.model.teacher_weights = value
    assert prepare_demo_inputs([cfg]) == []
    assert cfg.model.teacher_weights == value


def test_a_linear_stage_or_a_complete_one_resolves_the_path_and_trains_nothing(mixed_folder, monkeypatch):
    monkeypatch.setattr(auto_teacher, "train_teacher", lambda *a, **k: pytest.fail("trained a teacher"))
    linear, complete = _cfg(mixed_folder), _cfg(mixed_folder)
    linear.stage = "linear"
    linear.model.teacher_weights = complete.model.teacher_weights = AUTO
    assert prepare_demo_inputs([linear, complete], complete=[complete]) == []
    assert linear.model.teacher_weights == complete.model.teacher_weights == str(teacher_path(linear.data, "resnet18"))


def test_a_dry_run_makes_nothing_and_says_which_teacher_is_pending(mixed_folder, tmp_path):
    absent = tmp_path / "to-generate"
    generated = _cfg(absent)
    generated.data.synthetic.generate = True
    mine = _cfg(mixed_folder)
    generated.model.teacher_weights = mine.model.teacher_weights = AUTO
    assert prepare_demo_inputs([generated, mine], write=False) == [generated, mine]
    assert not absent.exists() and not teacher_path(mine.data, "resnet18").exists()
    assert mine.model.teacher_weights == str(teacher_path(mine.data, "resnet18"))


def _bits(path: Path) -> dict:
    return torch.load(path, weights_only=True)


def test_the_same_seed_gives_the_same_teacher_whatever_the_callers_thread_count(mixed_folder, tmp_path):
    """The bits of a CPU convolution depend on the thread count: the teacher trains with
    auto_teacher.threads whatever the process runs with (the benchmark: every core; a run: OMP_NUM_THREADS),
    so the same seed gives the same file and report, and the caller's count is put back."""
    cfg = _cfg(mixed_folder, epochs=2, batch=8)
    before = torch.get_num_threads()
    reports = []
    for name, caller_threads in (("a", 1), ("b", 2)):
        torch.set_num_threads(caller_threads)
        try:
            reports.append(train_teacher(cfg.data, "resnet18", tmp_path / f"{name}.pth", cfg.auto_teacher, seed=3))
            assert torch.get_num_threads() == caller_threads
        finally:
            torch.set_num_threads(before)
    a, b = _bits(tmp_path / "a.pth"), _bits(tmp_path / "b.pth")
    assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)
    assert [{k: v for k, v in r.items() if k != "seconds"} for r in reports][0] == {
        k: v for k, v in reports[1].items() if k != "seconds"
    }
    other = train_teacher(cfg.data, "resnet18", tmp_path / "c.pth", cfg.auto_teacher, seed=4)
    assert not torch.equal(_bits(tmp_path / "c.pth")["conv1.weight"], a["conv1.weight"]), other  # the seed counts


def test_the_objective_picks_the_cached_file_and_an_unknown_one_is_refused(mixed_folder):
    ssl, supervised = _cfg(mixed_folder, epochs=1, batch=8), _cfg(mixed_folder, epochs=1, batch=8)
    supervised.auto_teacher.objective = "supervised"
    paths = {ensure_teacher(c.data, "resnet18", c.auto_teacher) for c in (ssl, supervised)}
    assert {p.name for p in paths} == {f"mine-teacher-resnet18-32px-{o}.pth" for o in ("ssl", "supervised")}
    for path in paths:
        report = json.loads(path.with_suffix(".json").read_text())
        assert path.name.endswith(f"-{report['objective']}.pth")
        assert ("val_top1" in report) == (report["objective"] == "supervised") and "val_knn_top1" in report
    for cfg in (ssl, supervised):  # auto resolves to its objective's file
        cfg.model.teacher_weights = AUTO
        prepare_demo_inputs([cfg])
    assert ssl.model.teacher_weights.endswith("-ssl.pth")
    assert supervised.model.teacher_weights.endswith("-supervised.pth")
    wrong = _cfg(mixed_folder, objective="labels")
    refusal = r"^auto_teacher.objective must be one of \['ssl', 'supervised'\], got 'labels'$"
    with pytest.raises(UsageError, match=refusal):
        ensure_teacher(wrong.data, "resnet18", wrong.auto_teacher)


def test_images_of_mixed_sizes_are_held_at_the_load_side(mixed_folder):
    cfg = _cfg(mixed_folder)
    lists = check_fits(cfg.data, cfg.auto_teacher)
    images, labels = _load_split(lists["train_labeled"], 48)
    assert images.shape == (20, 3, 48, 48) and images.dtype == torch.uint8
    assert labels.tolist() == [0] * 10 + [1] * 10
    paths = lists["train_labeled"].absolute_paths()
    sizes = {Image.open(p).size for p in paths}
    assert len(sizes) == 5, sizes  # mixed: larger, smaller, wide, tall, and the load side itself
    kept = next(i for i, p in enumerate(paths) if Image.open(p).size == (48, 48) and Image.open(p).mode == "RGB")
    expected = torch.from_numpy(np.array(Image.open(paths[kept]).convert("RGB"))).permute(2, 0, 1)
    assert torch.equal(images[kept], expected)  # an image of the load side is taken as it is
    wide = next(i for i, p in enumerate(paths) if Image.open(p).size == (72, 50))
    assert images[wide].float().std() > 5  # resized and centre-cropped, not blank
    held_at_eval_resize, _ = _load_split(lists["val"], 36)  # load_side=None would mean data.eval_resize
    assert held_at_eval_resize.shape == (6, 3, 36, 36)


def test_the_teacher_trains_on_a_mixed_folder_with_the_views_crop_scale(mixed_folder, monkeypatch):
    """One home for the crop scale: the teacher's crops are data.aug.crop_scale's, not a constant."""
    cfg = _cfg(mixed_folder, epochs=1, batch=8)
    cfg.data.aug.crop_scale = [0.5, 0.9]
    seen = []
    real_augment = auto_teacher._augment

    def recording(batch, size, scale, gen):
        seen.append((tuple(batch.shape[1:]), size, tuple(scale)))
        return real_augment(batch, size, scale, gen)

    monkeypatch.setattr(auto_teacher, "_augment", recording)
    out = ensure_teacher(cfg.data, "resnet18", cfg.auto_teacher)
    assert out == teacher_path(cfg.data, "resnet18") and out.is_file()
    assert seen and set(seen) == {((3, 48, 48), 32, (0.5, 0.9))}, seen[:3]
    report = json.loads(out.with_suffix(".json").read_text())
    assert (report["train_images"], report["num_classes"], report["crop_scale"]) == (20, 2, [0.5, 0.9])


def _count_opens(monkeypatch) -> list:
    opened = []
    real_open = Image.open

    def counting(path, *args, **kwargs):
        opened.append(path)
        return real_open(path, *args, **kwargs)

    monkeypatch.setattr(Image, "open", counting)
    return opened


@pytest.mark.parametrize(
    "limits, message",
    [
        (
            {"max_images": 15},
            r"^model.teacher_weights=auto: data.root=.*garbage holds 16 labelled images \(train_labeled 12 \+ "
            r"val 4\), more than auto_teacher.max_images=15: .*pass a teacher file",
        ),
        (
            {"load_side": 512, "max_memory_mb": 10},
            r"^model.teacher_weights=auto: data.root=.*garbage: 16 labelled images .* at 512x512 px take 12 MiB "
            r"in memory, more than auto_teacher.max_memory_mb=10",
        ),
    ],
)
def test_an_over_size_folder_is_refused_before_any_image_is_read(garbage_folder, monkeypatch, limits, message):
    """Every file is garbage: a read would fail with a decoding error, not the refusal; and no open is
    counted. Nothing is written beside the data either."""
    opened = _count_opens(monkeypatch)
    monkeypatch.setattr(auto_teacher, "train_teacher", lambda *a, **k: pytest.fail("went on to train"))
    cfg = _cfg(garbage_folder, **limits)
    cfg.model.teacher_weights = AUTO
    with pytest.raises(UsageError, match=message):
        prepare_demo_inputs([cfg])
    dry = _cfg(garbage_folder, **limits)
    dry.model.teacher_weights = AUTO
    with pytest.raises(UsageError, match=message):  # a dry run refuses it too
        prepare_demo_inputs([dry], write=False)
    assert opened == []
    assert sorted(p.name for p in garbage_folder.parent.iterdir()) == ["garbage"]


def test_the_default_limit_refuses_a_real_size_tree_from_its_lists(tmp_path, monkeypatch):
    """An ImageNet-size list (more lines than auto_teacher.max_images) is refused from the list alone:
    not one listed file is looked at."""
    opened = _count_opens(monkeypatch)
    root = tmp_path / "imagenet"
    (root / "meta").mkdir(parents=True)
    (root / "meta" / "train_labeled.txt").write_text(
        "".join(f"n{i % 1000:08d}/x{i}.JPEG {i % 1000}\n" for i in range(12000))
    )
    (root / "meta" / "val_labeled.txt").write_text("".join(f"v{i}.JPEG {i % 1000}\n" for i in range(500)))
    cfg = _cfg(root)
    with pytest.raises(UsageError, match=r"12500 labelled images .* more than auto_teacher.max_images=10000"):
        check_fits(cfg.data, cfg.auto_teacher)
    assert opened == []


def test_a_single_class_folder_is_refused(mixed_folder, monkeypatch):
    opened = _count_opens(monkeypatch)
    for path in (mixed_folder / "train" / "class1").iterdir():
        path.unlink()
    (mixed_folder / "train" / "class1").rmdir()
    cfg = _cfg(mixed_folder)
    with pytest.raises(UsageError, match=r"has 1 class: a supervised teacher needs at least 2"):
        ensure_teacher(cfg.data, "resnet18", cfg.auto_teacher)
    assert opened == []


def test_a_missing_listed_file_is_refused_naming_the_key(mixed_folder):
    (mixed_folder / "val" / "class0" / "001.png").unlink()
    (mixed_folder / "meta").mkdir()
    (mixed_folder / "meta" / "train_labeled.txt").write_text("class0/000.jpg 0\nclass1/000.jpg 1\n")
    (mixed_folder / "meta" / "val_labeled.txt").write_text("class0/001.png 0\n")
    cfg = _cfg(mixed_folder)
    with pytest.raises(
        UsageError, match=r"^model.teacher_weights=auto: data.root=.*: .*val_labeled.txt line 1: missing"
    ):
        check_fits(cfg.data, cfg.auto_teacher)


def test_ranks_that_race_train_one_teacher(mixed_folder, monkeypatch):
    """Every rank of a job started without submit.py runs the entry: one trains, the others wait for its file."""
    calls = []
    monkeypatch.setattr(auto_teacher, "train_teacher", _fake_train(calls, pause=0.5))
    cfg = _cfg(mixed_folder)
    paths = []
    ranks = [threading.Thread(target=lambda: paths.append(ensure_teacher(cfg.data, "resnet18"))) for _ in range(3)]
    for rank in ranks:
        rank.start()
    for rank in ranks:
        rank.join()
    assert len(calls) == 1 and paths == [teacher_path(cfg.data, "resnet18")] * 3


def test_a_cached_teacher_made_otherwise_is_used_with_a_warning(mixed_folder, monkeypatch, caplog):
    cfg = _cfg(mixed_folder)
    path = teacher_path(cfg.data, "resnet18")
    path.write_bytes(b"weights")
    path.with_suffix(".json").write_text(json.dumps({"epochs": 1, "load_side": 48, "val_top1": 50.0}))
    monkeypatch.setattr(auto_teacher, "train_teacher", lambda *a, **k: pytest.fail("retrained"))
    with caplog.at_level(logging.WARNING, logger="burn"):
        assert ensure_teacher(cfg.data, "resnet18", cfg.auto_teacher) == path
    assert "made with other settings (epochs: 1 there, 20 asked)" in caplog.text
    assert "load_side" not in caplog.text  # the same


def test_an_auto_nobody_resolved_is_refused_by_the_stage_checks(tmp_path):
    from burn.validation import check_teacher

    cfg = _cfg(tmp_path)
    cfg.model.teacher_weights = AUTO
    with pytest.raises(UsageError, match=r"^model.teacher_weights=auto is resolved by the entry points"):
        check_teacher(cfg)
    cfg.stage = "linear"
    check_teacher(cfg)  # a linear evaluation reads no teacher


def test_cached_teacher_path_is_beside_the_data(tmp_path):
    cfg = _cfg(tmp_path / "mine")
    assert teacher_path(cfg.data, "resnet18") == Path(tmp_path / "mine-teacher-resnet18-32px-ssl.pth")
