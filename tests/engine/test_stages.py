"""Stage 1 -> extraction -> stage 2 -> backbone extraction -> linear eval, end to end on the tiny preset,
plus the original-layout files users already have, and the guards around a run directory."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch

from burn.models.heads import Classifier
from burn.models.reactnet import ReActNetA

WIDTH = 0.25  # the tiny preset's student
SHORT = ["steps=3", "checkpoint.every_steps=2"]


def _random_original_stage1(path: Path) -> None:
    """An original-release stage-1 extraction: real key names, random values."""
    torch.manual_seed(123)
    student = ReActNetA(precision="binact", width=WIDTH)
    student_cls, teacher_cls = Classifier(student.out_dim, 256, 256), Classifier(512, 256, 256)
    torch.save(
        {
            "backbone": {"state_dict": student.state_dict()},
            "classifier": {"state_dict": student_cls.state_dict()},
            "teacher_classifier": {"state_dict": teacher_cls.state_dict()},
            "author": "original release",
        },
        path,
    )


@pytest.mark.slow
def test_stage1_stage2_linear_end_to_end(cli, tmp_path):
    s1, s2, lin = tmp_path / "stage1", tmp_path / "stage2", tmp_path / "linear"
    assert cli.run(cli.overrides(s1, "stage=1", *SHORT), "s1") == [0], cli.log("s1")
    extraction = torch.load(s1 / "stage1_extraction.pth", weights_only=True)
    assert set(extraction) == {"backbone", "classifier", "teacher_classifier", "author"}
    assert (s1 / "DONE").exists() and list((s1 / "tb").glob("events.out.tfevents.*"))
    assert f"stage 1 complete: extraction in {s1 / 'stage1_extraction.pth'} (next: launch/run.py stage=2" in cli.log(
        "s1"
    )

    # Rerunning a finished stage is a no-op; changing its model is refused.
    assert cli.run(cli.overrides(s1, "stage=1", *SHORT), "s1-again") == [0]
    assert "already complete" in cli.log("s1-again")
    assert cli.run(cli.overrides(s1, "stage=1", "model.width=0.5", *SHORT), "s1-changed") == [2]
    assert "model" in cli.log("s1-changed") and "different config" in cli.log("s1-changed")

    assert cli.run(cli.overrides(s2, "stage=2", f"pretrained={s1 / 'stage1_extraction.pth'}", *SHORT), "s2") == [0], (
        cli.log("s2")
    )
    backbone = torch.load(s2 / "backbone.pth", weights_only=True)
    assert set(backbone) == {"state_dict", "author"}
    assert all(k.startswith(("feature.", "fc.0.")) for k in backbone["state_dict"])

    assert cli.run(cli.overrides(lin, "stage=linear", f"pretrained={s2 / 'backbone.pth'}", "steps=20"), "lin") == [0], (
        cli.log("lin")
    )
    results = json.loads((lin / "linear_eval.json").read_text())
    assert 0.0 <= results["top1"] <= results["top5"] <= 100.0
    assert results["num_samples"] == 100  # 10 classes x 10 validation images, each scored once
    assert "top-1" in cli.log("lin")


@pytest.mark.slow
def test_original_layout_files_feed_stage2_and_linear(cli, tmp_path):
    original = tmp_path / "original_stage1.pth"
    _random_original_stage1(original)
    s2 = tmp_path / "stage2"
    assert cli.run(cli.overrides(s2, "stage=2", f"pretrained={original}", "steps=1"), "s2") == [0], cli.log("s2")

    torch.manual_seed(7)
    backbone = ReActNetA(precision="binary", width=WIDTH).state_dict()
    original_backbone = tmp_path / "original_backbone.pth"
    torch.save(
        {
            "state_dict": {k: v for k, v in backbone.items() if k.startswith(("feature.", "fc.0."))},
            "author": "original release",
        },
        original_backbone,
    )
    lin = tmp_path / "linear"
    assert cli.run(cli.overrides(lin, "stage=linear", f"pretrained={original_backbone}", "steps=2"), "lin") == [0], (
        cli.log("lin")
    )
    assert (lin / "linear_eval.json").exists()


@pytest.mark.slow
def test_truncated_newest_checkpoint_is_skipped_on_resume(cli, tmp_path):
    run_dir = tmp_path / "run"
    assert cli.run(
        cli.overrides(run_dir, "steps=4", "checkpoint.every_steps=2", "checkpoint.keep_last=3"), "first"
    ) == [0], cli.log("first")
    # Make the run look unfinished with a damaged newest checkpoint, as a kill -9 mid-write leaves it.
    (run_dir / "DONE").unlink()
    newest = run_dir / "checkpoints" / "ckpt-00000004.pt"
    newest.write_bytes(newest.read_bytes()[: newest.stat().st_size // 2])
    assert cli.run(
        cli.overrides(run_dir, "steps=4", "checkpoint.every_steps=2", "checkpoint.keep_last=3"), "resume"
    ) == [0], cli.log("resume")
    text = cli.log("resume")
    assert "ckpt-00000004.pt" in text and "resuming from" in text and "ckpt-00000002.pt" in text


@pytest.mark.process
def test_impossible_batch_is_refused_before_training(cli, tmp_path):
    code = cli.run(cli.overrides(tmp_path / "run", "train.global_batch=33"), "bad", world_size=2)
    assert code == [2, 2]
    assert "train.global_batch=33 cannot be split over 2 ranks" in cli.log("bad")


@pytest.mark.process
def test_config_typo_is_an_error(cli, tmp_path):
    assert cli.run(cli.overrides(tmp_path / "run", "trian.epochs=3"), "typo") == [1]
    assert "trian" in cli.log("typo")
