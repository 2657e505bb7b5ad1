"""cluster=local: the same stage code runs in this process, one stage after the other."""

import json
import subprocess
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[2]


@pytest.mark.slow
def test_local_stage_all_runs_in_process_and_prints_top1(tiny_data, tmp_path):
    cmd = [
        sys.executable,
        str(REPO / "launch" / "submit.py"),
        "preset=tiny",
        "stage=all",
        "cluster=local",
        "steps=2",
        "linear.epochs=1",
        f"data.root={tiny_data}",
        "data.synthetic.generate=false",
        f"run_dir={tmp_path}/run",
    ]
    out = subprocess.run(cmd, cwd=REPO, capture_output=True, text=True, timeout=600)
    assert out.returncode == 0, out.stdout + out.stderr[-3000:]
    top1 = json.loads((tmp_path / "run" / "linear" / "linear_eval.json").read_text())["top1"]
    assert f"linear evaluation top-1: {top1:.2f}%" in out.stdout
    for stage in ("stage1", "stage2", "linear"):
        assert (tmp_path / "run" / stage / "DONE").exists()
    # steps=2 shortened pretraining only: linear evaluation ran its linear.epochs=1 (400 images / 64 = 6 steps).
    steps = {
        d: json.loads((tmp_path / "run" / d / "progress.json").read_text())["total_steps"]
        for d in ("stage1", "stage2", "linear")
    }
    assert steps == {"stage1": 2, "stage2": 2, "linear": 6}, steps
    assert "sbatch" not in out.stdout and not (tmp_path / "run" / "stage1" / "slurm").exists()

    again = subprocess.run(cmd, cwd=REPO, capture_output=True, text=True, timeout=600)
    assert again.returncode == 0 and f"linear evaluation top-1: {top1:.2f}%" in again.stdout
