"""A hydra-submitit-launcher sweep: one SLURM job per value, each running its stage on its tasks."""

import pytest

from tests.slurm.conftest import submitit_sweep

pytestmark = [pytest.mark.slurm, pytest.mark.slow]


def test_sweep_runs_one_job_per_value_into_its_own_run_dir_and_blocks(slurm_cluster, tiny_data, tmp_path):
    out = submitit_sweep(tmp_path, tiny_data, "stage=1", "steps=3", "optim.lr=1e-4,3e-4")
    assert out.returncode == 0, out.stdout + out.stderr
    # The launcher blocks until the jobs are done: both stages are complete when it returns.
    runs = sorted(p.name for p in (tmp_path / "runs" / "tiny").iterdir())
    assert len(runs) == 2 and "optim.lr=0.0001" in runs[0] and "optim.lr=0.0003" in runs[1]
    for name in runs:
        assert (tmp_path / "runs" / "tiny" / name / "stage1" / "DONE").exists()
