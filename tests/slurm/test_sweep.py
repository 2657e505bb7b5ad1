"""A hydra-submitit-launcher sweep: one SLURM job per value, each running its stage on its tasks."""

import subprocess
import sys
from pathlib import Path

import pytest

pytestmark = [pytest.mark.slurm, pytest.mark.slow]

REPO = Path(__file__).resolve().parents[2]


def test_sweep_runs_one_job_per_value_into_its_own_run_dir_and_blocks(slurm_cluster, tiny_data, tmp_path):
    out = subprocess.run(
        [
            sys.executable,
            str(REPO / "launch" / "submit.py"),
            "-m",
            "hydra/launcher=submitit_slurm",
            "hydra.launcher.timeout_min=10",
            "hydra.launcher.cpus_per_task=1",
            "preset=tiny",
            "stage=1",
            "steps=3",
            "optim.lr=1e-4,3e-4",
            f"data.root={tiny_data}",
            "data.synthetic.generate=false",
            "log.progress_bar=off",
        ],
        cwd=tmp_path,
        capture_output=True,
        text=True,
        timeout=600,
    )
    assert out.returncode == 0, out.stdout + out.stderr
    # The launcher blocks until the jobs are done: both stages are complete when it returns.
    runs = sorted(p.name for p in (tmp_path / "runs" / "tiny").iterdir())
    assert len(runs) == 2 and "optim.lr=0.0001" in runs[0] and "optim.lr=0.0003" in runs[1]
    for name in runs:
        assert (tmp_path / "runs" / "tiny" / name / "stage1" / "DONE").exists()
