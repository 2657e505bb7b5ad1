"""Elastic resume on the real local cluster: a nodes=2 stage, preempted, continues as nodes=1."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

from tests.slurm.conftest import progress, wait_for

pytestmark = [pytest.mark.slurm, pytest.mark.slow]

REPO = Path(__file__).resolve().parents[2]
STEPS = 40


def submit(data: Path, run_dir: Path, nodes: int) -> str:
    out = subprocess.run(
        [
            sys.executable,
            str(REPO / "launch" / "submit.py"),
            "preset=tiny",
            f"data.root={data}",
            "stage=1",
            "data.synthetic.generate=false",
            "log.progress_bar=off",
            f"run_dir={run_dir}",
            f"nodes={nodes}",
            f"steps={STEPS}",
            "monitor.knn=false",
        ],
        cwd=REPO,
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert out.returncode == 0, out.stdout + out.stderr
    return json.loads((run_dir / "slurm" / "jobs.jsonl").read_text().splitlines()[-1])["job_id"]


def scontrol_job(job: str) -> str:
    out = subprocess.run(["scontrol", "show", "job", job], capture_output=True, text=True, timeout=30)
    return out.stdout


def cancelled(slurm_cluster, job: str) -> bool:
    """scancel until the controller says CANCELLED: a cancel that lands while the job is being
    requeued can be lost (seen on the local cluster). sacct keeps "REQUEUED" for a job cancelled while
    pending again, so the controller is asked."""
    if "JobState=CANCELLED" in scontrol_job(job) and not slurm_cluster.in_queue(job):
        return True
    subprocess.run(["scancel", job], capture_output=True, timeout=30)
    return False


def test_two_node_stage_preempted_is_resubmitted_on_one_node_and_completes(slurm_cluster, tiny_data, tmp_path):
    stage_dir = tmp_path / "elastic"
    job = submit(tiny_data, stage_dir, nodes=2)
    wait_for(
        "2-node stage training",
        lambda: (
            progress(stage_dir).get("state") == "running"
            and progress(stage_dir)["step"] >= 3
            and progress(stage_dir)["world_size"] == 2
        ),
    )
    subprocess.run(["scancel", "--signal=USR2", job], check=True)  # the preemption notice
    wait_for("preemption checkpoint", lambda: progress(stage_dir).get("state") == "preempted")
    # The job requeued itself and waits for 2 nodes again; its user takes the 1 node free instead.
    wait_for("the 2-node job cancelled", lambda: cancelled(slurm_cluster, job), timeout=120, poll=1)
    stopped = progress(stage_dir)["step"]  # the newest checkpoint (the requeued run may have gone on)
    assert 3 <= stopped < STEPS

    resumed = submit(tiny_data, stage_dir, nodes=1)
    assert resumed != job
    assert slurm_cluster.wait(resumed, timeout=400) == "COMPLETED"
    state = progress(stage_dir)
    assert (stage_dir / "DONE").exists() and state["step"] == STEPS and state["world_size"] == 1
    assert state["world_size_changes"] == [{"step": stopped, "from": 2, "to": 1}]
    logs = "".join(p.read_text() for p in (stage_dir / "slurm" / resumed).glob("*_log.*"))
    assert "Traceback" not in logs, logs
    assert "written by 2 ranks, this job has 1" in logs and "not bit-identical" in logs, logs
    assert "1 ranks x 16 images x 2 accumulation = 32 per step" in logs, logs
    status = subprocess.run(
        [sys.executable, str(REPO / "launch" / "status.py"), str(stage_dir)], capture_output=True, text=True
    )
    assert status.returncode == 0, status.stdout + status.stderr
    assert f"job {resumed} COMPLETED" in status.stdout and f"earlier: {job}" in status.stdout, status.stdout
    assert f"ranks 2->1 (resized at step {stopped})" in status.stdout and f"step {STEPS}/{STEPS}" in status.stdout
