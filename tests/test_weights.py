"""Weight files: every layout detected and loaded, extractions written atomically, CLI."""

import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch
import torchvision

from burn import weights
from burn.models.heads import Classifier
from burn.models.reactnet import ReActNetA
from burn.weights import WeightsError

REPO = Path(__file__).resolve().parents[1]


@pytest.fixture(scope="module")
def parts():
    """Small real models' state dicts (real key names, random values)."""
    torch.manual_seed(0)
    student = ReActNetA("binact", width=0.125)
    trunk = torchvision.models.resnet18(weights=None)
    return {
        "student": student.state_dict(),
        "student_classifier": Classifier(student.out_dim, 16, 8).state_dict(),
        "teacher_trunk_with_fc": trunk.state_dict(),
        "teacher_trunk": {k: v for k, v in trunk.state_dict().items() if not k.startswith("fc.")},
        "teacher_classifier": Classifier(512, 16, 8).state_dict(),
    }


def _prefixed(prefix, sd):
    return {prefix + k: v for k, v in sd.items()}


def _files(tmp, parts):
    """One file per layout, shaped as the real ones are."""
    moco = {
        **_prefixed("module.encoder_q.", parts["teacher_trunk_with_fc"]),
        **_prefixed("module.encoder_k.", parts["teacher_trunk_with_fc"]),
        "module.queue": torch.randn(8, 32),
        "module.queue_ptr": torch.zeros(1, dtype=torch.long),
    }
    pretraining = {
        **_prefixed("online_net.0.", parts["student"]),
        **_prefixed("backbone.", parts["student"]),
        **_prefixed("online_net.1.", parts["student_classifier"]),
        **_prefixed("diff_branch_net.0.", parts["teacher_trunk"]),
        **_prefixed("diff_branch_net.1.", parts["teacher_classifier"]),
    }
    stage_parts = {k: parts[k] for k in weights.STAGE1_PARTS}
    objects = {
        weights.MOCO: {"state_dict": moco, "arch": "resnet18", "epoch": 800},
        weights.TEACHER: {"state_dict": parts["teacher_trunk"]},
        weights.TORCHVISION: parts["teacher_trunk_with_fc"],
        weights.PRETRAINING: {
            "meta": {"epoch": 200, "iter": 125200, "mmcv_version": "0.2"},
            "state_dict": pretraining,
            "optimizer": {"state": {}, "param_groups": [{"lr": 0.0}]},
        },
        weights.SUITE: {
            "format": "burn-suite/checkpoint",
            "version": 1,
            "stage": "1",
            "step": 7,
            "epoch": 0,
            "model": stage_parts,
            "optimizer": {"state": {}},
            "teacher": {"path": "/somewhere/teacher.pth", "sha256": "0" * 64},
        },
    }
    paths = {}
    for layout, obj in objects.items():
        paths[layout] = tmp / f"{layout}.pth"
        torch.save(obj, paths[layout])
    paths[weights.STAGE1] = weights.write_stage1_extraction(tmp / "stage1.pth", stage_parts)
    paths[weights.BACKBONE] = weights.write_backbone_extraction(tmp / "backbone.pth", parts["student"])
    return paths


def _same(a, b):
    return list(a) == list(b) and all(torch.equal(a[k], b[k]) for k in a)


def test_every_layout_is_detected_and_every_loader_takes_what_holds_its_parts(tmp_path, parts):
    paths = _files(tmp_path, parts)
    assert len(paths) == 7
    holds_trunk = {weights.MOCO, weights.TEACHER, weights.TORCHVISION, weights.PRETRAINING}
    holds_stage1 = {weights.STAGE1, weights.PRETRAINING, weights.SUITE}
    holds_backbone = holds_stage1 | {weights.BACKBONE}
    for layout, path in paths.items():
        assert weights.detect_layout(weights.load_weights_file(path)) == layout
        if layout in holds_trunk:
            found, trunk = weights.read_teacher_trunk(path)  # what Teacher.load_weights reads
            assert found == layout and _same(trunk, parts["teacher_trunk"]), layout
        else:
            with pytest.raises(WeightsError, match=rf"{path.name} \(layout {layout}\)"):
                weights.read_teacher_trunk(path)
        if layout in holds_stage1:
            got = weights.load_stage1_init(path)
            assert all(_same(got[p], parts[p]) for p in weights.STAGE1_PARTS), layout
        else:
            with pytest.raises(WeightsError, match=rf"{path.name} \(layout {layout}\) holds no"):
                weights.load_stage1_init(path)
        if layout in holds_backbone:
            assert _same(weights.load_backbone(path), parts["student"]), layout
        else:
            with pytest.raises(WeightsError, match=path.name):
                weights.load_backbone(path)


def test_extraction_files_have_the_original_top_level_layout(tmp_path, parts):
    paths = _files(tmp_path, parts)
    stage1 = torch.load(paths[weights.STAGE1], weights_only=True)
    assert list(stage1) == ["backbone", "classifier", "teacher_classifier", "author"]
    assert all(list(stage1[k]) == ["state_dict"] for k in ("backbone", "classifier", "teacher_classifier"))
    assert stage1["author"] == "burn-suite"
    backbone = torch.load(paths[weights.BACKBONE], weights_only=True)
    assert list(backbone) == ["state_dict", "author"]
    model = ReActNetA("binary", width=0.125)
    model.load_state_dict(backbone["state_dict"], strict=True)
    with pytest.raises(WeightsError, match="feature"):
        weights.write_backbone_extraction(tmp_path / "bad.pth", parts["student_classifier"])


class _Unpicklable:
    def __reduce__(self):
        raise RuntimeError("cannot pickle this")


def test_atomic_write_never_leaves_a_half_written_file(tmp_path, parts):
    target = weights.write_backbone_extraction(tmp_path / "backbone.pth", parts["student"])
    good = target.read_bytes()
    with pytest.raises(RuntimeError, match="cannot pickle"):
        weights.atomic_torch_save({"state_dict": parts["student"], "x": _Unpicklable()}, target)
    assert target.read_bytes() == good
    assert sorted(p.name for p in tmp_path.iterdir()) == ["backbone.pth"]


def test_unknown_and_unreadable_files_name_the_file(tmp_path):
    torch.save({"weights": {"a.b": torch.zeros(1)}}, tmp_path / "odd.pth")
    with pytest.raises(WeightsError, match=r"odd\.pth: unknown weights layout: top-level keys \['weights'\]"):
        weights.load_backbone(tmp_path / "odd.pth")
    (tmp_path / "broken.pth").write_bytes(b"not a torch file")
    with pytest.raises(WeightsError, match=r"broken\.pth: not a readable"):
        weights.load_weights_file(tmp_path / "broken.pth")
    with pytest.raises(WeightsError, match=r"missing\.pth: no such"):
        weights.load_weights_file(tmp_path / "missing.pth")


class _Payload:
    def __init__(self, marker):
        self.marker = str(marker)

    def __reduce__(self):
        return (exec, (f"open({self.marker!r}, 'w').write('pwned')",))


def test_malicious_pickle_is_refused_by_the_cli(tmp_path, parts, capsys):
    marker = tmp_path / "marker"
    torch.save({"state_dict": parts["student"], "author": _Payload(marker)}, tmp_path / "evil.pth")
    assert weights.main(["inspect", str(tmp_path / "evil.pth")]) == 1
    err = capsys.readouterr().err
    assert "evil.pth" in err and "refused" in err and "exec" in err
    assert not marker.exists()


def test_cli_inspect_names_layout_and_counts_parameters(tmp_path, parts, capsys):
    paths = _files(tmp_path, parts)
    assert weights.main(["inspect", str(paths[weights.PRETRAINING])]) == 0
    out = capsys.readouterr().out
    assert "original-pretraining-checkpoint" in out
    student_count = sum(p.numel() for p in ReActNetA("binact", width=0.125).parameters())
    assert f"student {student_count:>,}".replace(" ", "") in out.replace(" ", "")
    assert "teacher_trunk" in out and f"{11_176_512:,}" in out  # resnet18 without fc
    for layout, path in paths.items():
        assert weights.main(["inspect", str(path)]) == 0
        assert f"layout {layout} - {weights.LAYOUT_DESCRIPTIONS[layout]}" in capsys.readouterr().out
    assert "MoCo v2 release" in weights.LAYOUT_DESCRIPTIONS[weights.MOCO]


@pytest.mark.process
def test_cli_extract_from_a_suite_checkpoint(tmp_path, parts, capsys):
    paths = _files(tmp_path, parts)
    for fmt in ("stage1", "backbone"):
        out = tmp_path / f"{fmt}-out.pth"
        args = ["extract", str(paths[weights.SUITE]), str(out), "--format", fmt, "--author", "tester"]
        if fmt == "stage1":  # once through the real module entry point
            proc = subprocess.run(
                [sys.executable, "-m", "burn.weights", *args],
                capture_output=True,
                text=True,
                env={**os.environ, "PYTHONPATH": str(REPO)},
                timeout=120,
            )
            assert proc.returncode == 0, proc.stderr
        else:
            assert weights.main(args) == 0
        obj = torch.load(out, weights_only=True)
        assert weights.detect_layout(obj) == {"stage1": weights.STAGE1, "backbone": weights.BACKBONE}[fmt]
        assert obj["author"] == "tester"
        assert _same(weights.load_backbone(out), parts["student"])
    capsys.readouterr()
    assert weights.main(["extract", str(paths[weights.BACKBONE]), str(tmp_path / "x.pth"), "--format", "stage1"]) == 1
    assert "original-backbone-extraction" in capsys.readouterr().err
    assert not (tmp_path / "x.pth").exists()


def test_linear_suite_checkpoint_gives_its_backbone(tmp_path, parts):
    obj = {
        "format": "burn-suite/checkpoint",
        "version": 1,
        "stage": "linear",
        "model": {"student": parts["student"], "fc_cls": {"weight": torch.zeros(10, 128), "bias": torch.zeros(10)}},
    }
    torch.save(obj, tmp_path / "linear.pt")
    assert _same(weights.load_backbone(tmp_path / "linear.pt"), parts["student"])
    layout, got = weights.read_parts(tmp_path / "linear.pt")
    assert layout == weights.SUITE and set(got) == {"student", "linear_classifier"}


def test_a_suite_checkpoint_of_another_version_is_not_read():
    from burn.runtime.rundir import CHECKPOINT_FORMAT, CHECKPOINT_VERSION

    assert weights.detect_layout({"format": CHECKPOINT_FORMAT, "version": CHECKPOINT_VERSION}) == weights.SUITE
    with pytest.raises(WeightsError, match="a burn-suite checkpoint of version 2; this burn-suite reads version 1"):
        weights.detect_layout({"format": CHECKPOINT_FORMAT, "version": 2})
