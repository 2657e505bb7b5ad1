"""The SLURM job itself on bad input (a config submit.py would have refused, a dataset that changed
after queueing): one line naming the culprit as the last line of the job's log, exit code 2, nothing
written in the stage directory but Submitit's logs, the chain's dependants cancelled, and
launch/status.py showing the error line and the log."""

from __future__ import annotations

import shutil
import subprocess
import sys
from pathlib import Path

import pytest
from hydra import compose, initialize_config_dir

from burn.config import CONF_DIR
from launch import jobs, submit

pytestmark = [pytest.mark.slurm, pytest.mark.slow]

REPO = Path(__file__).resolve().parents[2]


def planned(*overrides: str):
    with initialize_config_dir(config_dir=str(CONF_DIR), version_base=None):
        cfg = compose(
            "config",
            overrides=[
                "preset=tiny",
                "data.synthetic.generate=false",
                "model.teacher_weights=null",  # queued as is: no entry resolved an auto teacher
                "log.progress_bar=off",
                "steps=2",
                *overrides,
            ],
        )
    return submit.plan_stages(cfg)


def last_log_line(stage_dir: Path, job: str) -> str:
    """The job's last line (srun's own "srun: error: ... Exited with exit code 2" trailer follows it)."""
    err = (stage_dir / "slurm" / job / f"{job}_0_log.err").read_text().strip().splitlines()
    ours = [line for line in err if not line.startswith("srun: ")]
    return ours[-1] if ours else ""


def test_the_job_reports_bad_input_in_one_line_and_exits_2(slurm_cluster, tiny_data, tmp_path):
    # Submitted without submit.py's checks: what the job finds is the job's to report.
    chain = planned("stage=all", f"data.root={tiny_data}", "train.precision=fp8", f"run_dir={tmp_path}/fp8")
    s1, s2, lin = (item.job_id for item in jobs.submit_stages(chain, max_requeues=0))
    # As if the data changed after queueing: a listed image is empty.
    data = tmp_path / "data"
    shutil.copytree(tiny_data, data)
    first = (data / "meta" / "train.txt").read_text().split()[0]
    (data / "train" / first).write_bytes(b"")
    stage_dir = tmp_path / "zero" / "stage1"
    (zero_job,) = (
        item.job_id
        for item in jobs.submit_stages(planned("stage=1", f"data.root={data}", f"run_dir={stage_dir}"), max_requeues=0)
    )

    assert slurm_cluster.wait(s1, timeout=180) == "FAILED"
    assert slurm_cluster.wait(s2, timeout=60) == "CANCELLED" and slurm_cluster.wait(lin, timeout=60) == "CANCELLED"
    assert slurm_cluster.wait(zero_job, timeout=180) == "FAILED"
    exit_codes = subprocess.run(
        ["sacct", "-n", "-P", "-X", "-j", f"{s1},{zero_job}", "-o", "ExitCode"],
        capture_output=True,
        text=True,
        check=True,
    ).stdout.split()
    assert exit_codes == ["2:0", "2:0"], exit_codes

    fp8_dir = tmp_path / "fp8" / "stage1"
    assert last_log_line(fp8_dir, s1).startswith("burn job: train.precision='fp8': choose one of")
    assert last_log_line(stage_dir, zero_job).startswith(f"burn job: data.root={data}: ")
    assert "line 1: empty (0-byte) file" in last_log_line(stage_dir, zero_job)
    for folder in (fp8_dir, stage_dir):
        assert sorted(p.name for p in folder.iterdir()) == ["slurm"], "nothing but Submitit's logs"
        assert "Traceback" not in "".join(p.read_text() for p in folder.glob("slurm/*/*_log.*"))

    status = subprocess.run(
        [sys.executable, str(REPO / "launch" / "status.py"), str(tmp_path / "fp8")], capture_output=True, text=True
    )
    assert status.returncode == 1, status.stdout
    assert f"FAILED stage1: job {s1} FAILED (exit code 2:0)" in status.stdout, status.stdout
    assert "  error: burn job: train.precision='fp8'" in status.stdout
    assert f"  log: {fp8_dir / 'slurm' / s1 / f'{s1}_0_log.err'}" in status.stdout
    assert f"CANCELLED stage2: job {s2} never ran" in status.stdout
