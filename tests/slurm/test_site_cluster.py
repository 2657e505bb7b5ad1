"""slurm/stage.sbatch on the real cluster with a site's set-up: the lines chain.sh hands it (BURN_SITE_SETUP)
run in the batch shell before srun and their exports reach every task; BURN_SITE_SRUN reaches srun.
A stand-in for launch/run.py records what each task sees (the real stages run in tests/container/)."""

from __future__ import annotations

import os
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest

from tests.slurm.test_stage_sbatch import wait_for_file

pytestmark = pytest.mark.slurm

REPO = Path(__file__).resolve().parents[2]

RECORD_ENV = textwrap.dedent("""
    import os, pathlib
    out = pathlib.Path(os.environ["FAKE_OUT"]) / f"env-{os.environ['SLURM_PROCID']}"
    out.write_text(f"{os.environ.get('SITE_MARK')} {os.environ.get('SRUN_MARK')}")
""")


def test_setup_lines_and_srun_arguments_reach_every_task(slurm_cluster, tmp_path):
    (tmp_path / "launch").mkdir()
    (tmp_path / "launch" / "run.py").write_text(RECORD_ENV)
    env = {
        **os.environ,
        "BURN_REPO": str(tmp_path),
        "FAKE_OUT": str(tmp_path),
        "BURN_SITE_SETUP": 'echo "set-up ran"\nexport SITE_MARK="from setup"',
        "BURN_SITE_SRUN": "--export=ALL,SRUN_MARK=from-srun",
    }
    job = subprocess.run(
        [
            "sbatch",
            "--parsable",
            "--nodes=2",
            "--ntasks-per-node=1",
            "--time=5",
            f"--output={tmp_path}/batch-%j.out",
            str(REPO / "slurm" / "stage.sbatch"),
            "stage=1",
        ],
        env=env,
        check=True,
        capture_output=True,
        text=True,
    ).stdout.strip()
    assert slurm_cluster.wait(job, timeout=120) == "COMPLETED"
    for rank in (0, 1):
        wait_for_file(tmp_path / f"env-{rank}")
        assert (tmp_path / f"env-{rank}").read_text() == "from setup from-srun"
    log = (tmp_path / f"batch-{job}.out").read_text()
    assert log.index("set-up ran") < log.index("batch: srun --kill-on-bad-exit=1 --export=ALL,SRUN_MARK=from-srun ")


def test_submit_dry_run_prints_the_container_command_line_and_queues_nothing(slurm_cluster, tiny_data, tmp_path):
    out = subprocess.run(
        [
            sys.executable,
            str(REPO / "launch" / "submit.py"),
            "preset=tiny",
            "stage=all",
            "nodes=2",
            f"data.root={tiny_data}",
            "data.synthetic.generate=false",
            f"run_dir={tmp_path}/run",
            "container.runtime=pyxis",
            "container.image=nvcr.io#nvidia/pytorch:25.01-py3",  # unquoted, as the documentation writes it
            'slurm.setup=["module load cuda/12.4"]',
            "slurm.sbatch={exclusive:true}",
            "dry_run=true",
        ],
        cwd=tmp_path,
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert out.returncode == 0, out.stdout + out.stderr
    srun = [line for line in out.stdout.splitlines() if line.startswith("srun ")]
    assert len(srun) == 3 and all("'--container-image=nvcr.io#nvidia/pytorch:25.01-py3'" in line for line in srun)
    assert all(f"--container-workdir={REPO} python3 -u -m submitit.core._submit" in line for line in srun)
    assert out.stdout.count("#SBATCH --exclusive\n") == 3 and out.stdout.count("\nmodule load cuda/12.4\n") == 3
    assert not (tmp_path / "run").exists()  # every submission is recorded there: nothing was queued
