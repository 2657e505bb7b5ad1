"""The fine-tuning lr grid: one Hydra multirun, one SLURM job per point through the Submitit launcher, and
launch/status.py's table marking the best point by validation top-1."""

import json

import pytest

from launch import status
from tests.slurm.conftest import submitit_sweep

pytestmark = [pytest.mark.slurm, pytest.mark.slow]


def test_a_two_point_finetune_grid_runs_one_job_per_point_and_the_report_picks_the_better(
    slurm_cluster, tiny_data, tmp_path, capsys
):
    out = submitit_sweep(
        tmp_path,
        tiny_data,
        "name=grid",
        "stage=finetune",
        "pretrained=random",
        "steps=4",
        "finetune.eval_every_epochs=0",
        "finetune.lr=0.0001,0.1",
        "data.train_labeled_list=meta/train_labeled_10pct.txt",
    )
    assert out.returncode == 0, out.stdout + out.stderr
    # One SLURM array task per point, each finished with a result (the launcher blocks until then).
    results = sorted((tmp_path / "multirun").rglob(".submitit/*/*_result.pkl"))
    assert len(results) == 2, sorted(p.name for p in (tmp_path / "multirun").rglob("*"))
    points = {  # runs/grid/<the job's overrides>, by its point
        next(t for t in p.name.split(",") if t.startswith("finetune.lr=")): p
        for p in (tmp_path / "runs" / "grid").iterdir()
    }
    assert sorted(points) == ["finetune.lr=0.0001", "finetune.lr=0.1"]
    top1 = {k: json.loads((p / "finetune" / "finetune_eval.json").read_text())["top1"] for k, p in points.items()}

    assert status.main([str(tmp_path / "runs" / "grid")]) == 0
    report = capsys.readouterr().out
    assert "finetune grid: 2 points" in report and "2 complete" in report
    best = [line for line in report.splitlines() if line.endswith("<- best |")]
    assert len(best) == 1, report
    marked = best[0].split(" | ")[0].lstrip("| ")
    assert top1[marked] == max(top1.values()), (top1, report)
    assert f"best point: {points[marked] / 'finetune'} (top-1 {top1[marked]:.2f}%)" in report
