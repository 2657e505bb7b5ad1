"""What a run tells its user: TensorBoard tags grouped per stage with the loss first, linear evaluation
scored every few epochs, each stage's product named at its end, stage 2 from scratch as a named choice."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from tensorboard.backend.event_processing.event_accumulator import EventAccumulator


def scalars(run_dir: Path) -> dict[str, list[int]]:
    """tag -> logged steps, in TensorBoard's (sorted) tag order."""
    acc = EventAccumulator(str(run_dir / "tb"))
    acc.Reload()
    return {tag: [e.step for e in acc.Scalars(tag)] for tag in sorted(acc.Tags()["scalars"])}


@pytest.mark.slow
def test_stage2_from_scratch_then_linear_with_grouped_tags_and_periodic_evaluation(cli, tmp_path):
    s2, lin = tmp_path / "stage2", tmp_path / "linear"
    # Stage 2 without pretrained= is refused (test_bad_input); pretrained=random is the original's
    # single-stage pretraining, said in the log.
    assert cli.run(cli.overrides(s2, "stage=2", "pretrained=random", "steps=2", "monitor.knn=false"), "s2") == [0], (
        cli.log("s2")
    )
    log = cli.log("s2")
    assert "stage 2 from a random init (pretrained=random): single-stage pretraining from scratch" in log
    assert (
        f"stage 2 complete: backbone in {s2 / 'backbone.pth'} (next: launch/run.py stage=linear "
        f"pretrained={s2 / 'backbone.pth'})" in log
    )
    tags = scalars(s2)
    pretrain = [t for t in tags if t.startswith("pretrain/")]
    assert pretrain[:3] == ["pretrain/loss", "pretrain/loss/fs", "pretrain/loss/kl"], pretrain
    assert {"pretrain/optim/lr", "pretrain/optim/lambda", "pretrain/speed/images_per_s"} <= set(pretrain)
    assert not [t for t in tags if t.startswith(("train/", "linear/"))], tags

    # 400 labelled images / 64 per step = 6 steps per epoch; scored after epochs 1 and 2, then at the end.
    overrides = cli.overrides(
        lin, "stage=linear", f"pretrained={s2 / 'backbone.pth'}", "linear.epochs=3", "linear.eval_every_epochs=1"
    )
    assert cli.run(overrides, "lin") == [0], cli.log("lin")
    tags = scalars(lin)
    assert list(tags)[0] == "linear/loss" and "linear/optim/lr" in tags, list(tags)
    assert tags["linear/val/top1"] == tags["linear/val/top5"] == [6, 12, 18]
    assert not [t for t in tags if t.startswith(("train/", "pretrain/"))], tags
    results = json.loads((lin / "linear_eval.json").read_text())
    assert f"linear evaluation complete: top-1 {results['top1']:.2f}%" in cli.log("lin")
    assert f"results in {lin / 'linear_eval.json'}" in cli.log("lin")
