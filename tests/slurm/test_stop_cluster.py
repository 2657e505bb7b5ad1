"""Stop signals on the real local cluster: a preemption notice during start-up ends in a requeue and a
completed stage; a plain scancel (SIGTERM) saves, stays cancelled and cancels the chain's dependants.
"""

from __future__ import annotations

import json
import signal
import subprocess
import sys
from pathlib import Path

import pytest

from tests.slurm.conftest import progress, wait_for

pytestmark = [pytest.mark.slurm, pytest.mark.slow]

REPO = Path(__file__).resolve().parents[2]


def submit(data: Path, run_dir: Path, *overrides: str) -> None:
    out = subprocess.run(
        [
            sys.executable,
            str(REPO / "launch" / "submit.py"),
            "preset=tiny",
            f"data.root={data}",
            "data.synthetic.generate=false",
            "log.progress_bar=off",
            f"run_dir={run_dir}",
            *overrides,
        ],
        cwd=REPO,
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert out.returncode == 0, out.stdout + out.stderr


def job_id(stage_dir: Path) -> str:
    return json.loads((stage_dir / "slurm" / "jobs.jsonl").read_text().splitlines()[-1])["job_id"]


def task_pids(job: str) -> list[int]:
    """Pids of the job's Python tasks (both nodes of the local cluster live on this host)."""
    pids = []
    for proc in Path("/proc").iterdir():
        try:
            cmdline = (proc / "cmdline").read_bytes()
            environ = (proc / "environ").read_bytes().split(b"\0")
        except (OSError, ValueError):
            continue
        argv = cmdline.split(b"\0")
        if (
            argv[:1]
            and not argv[0].endswith(b"srun")
            and b"submitit.core._submit" in argv
            and f"SLURM_JOB_ID={job}".encode() in environ
        ):  # the tasks, not srun itself
            pids.append(int(proc.name))
    return pids


def catches(pid: int, signum: int) -> bool:
    try:
        status = Path(f"/proc/{pid}/status").read_text()
    except OSError:
        return False
    mask = next(line.split()[1] for line in status.splitlines() if line.startswith("SigCgt:"))
    return bool(int(mask, 16) >> (signum - 1) & 1)


def submit_and_catch_start_up(tiny_data: Path, root: Path, tries: int = 3) -> tuple[Path, str]:
    """A 2-node stage-1 job whose tasks both have a handler for USR2 (burn's recorder, installed while
    unpickling) while the stage has not started: they are still importing torch and the training code.
    On a busy machine this process may look too late; then that job is cancelled and another tried."""
    for attempt in range(tries):
        stage_dir = root / f"early-{attempt}"
        submit(tiny_data, stage_dir, "stage=1", "nodes=2", "steps=6")
        job = job_id(stage_dir)
        wait_for(
            "both tasks catching USR2",
            lambda job=job: len(pids := task_pids(job)) == 2 and all(catches(p, signal.SIGUSR2) for p in pids),
            poll=0.01,
        )
        if not (stage_dir / "config.yaml").exists():
            return stage_dir, job
        subprocess.run(["scancel", job], check=True)  # the stage started before we looked: not this scenario
    pytest.fail(f"the stage started before both tasks were seen catching USR2, {tries} times (a loaded machine?)")


def test_usr2_during_start_up_requeues_and_the_stage_completes(slurm_cluster, tiny_data, tmp_path):
    stage_dir, job = submit_and_catch_start_up(tiny_data, tmp_path)
    subprocess.run(["scancel", "--signal=USR2", job], check=True)

    assert slurm_cluster.wait(job, timeout=400) == "COMPLETED"
    assert slurm_cluster.restarts(job) >= 1
    assert (stage_dir / "DONE").exists() and progress(stage_dir)["step"] == 6
    logs = "".join(p.read_text() for p in (stage_dir / "slurm" / job).glob("*_log.*"))
    assert "Traceback" not in logs, logs
    # Burn's recorder caught it (not Submitit's mid-import default): a step-0 checkpoint, then a requeue.
    assert "preemption signal (SIGUSR2" in logs and "checkpoint at step 0 written" in logs, logs


def test_plain_scancel_saves_stays_cancelled_and_cancels_dependants(slurm_cluster, tiny_data, tmp_path):
    root = tmp_path / "cancel"
    submit(tiny_data, root, "stage=all", "nodes=1", "steps=400", "log.every_steps=1")
    s1, s2, lin = (job_id(root / d) for d in ("stage1", "stage2", "linear"))
    wait_for("stage 1 training", lambda: progress(root / "stage1").get("step", 0) >= 2)
    subprocess.run(["scancel", s1], check=True)  # SIGTERM, as a user cancels

    assert slurm_cluster.wait(s1, timeout=120) == "CANCELLED"
    assert slurm_cluster.wait(s2, timeout=60) == "CANCELLED"
    assert slurm_cluster.wait(lin, timeout=60) == "CANCELLED"
    state = progress(root / "stage1")
    assert state["state"] == "cancelled", state
    checkpoints = sorted((root / "stage1" / "checkpoints").glob("ckpt-*.pt"))
    assert checkpoints and int(checkpoints[-1].stem.split("-")[1]) == state["step"]
    # Stays cancelled: never requeued (the dependants' cancellation took SLURM a scheduling cycle).
    assert not slurm_cluster.in_queue(s1) and slurm_cluster.restarts(s1) == 0
    assert not (root / "stage1" / "slurm" / "requeues.jsonl").exists()

    status = subprocess.run(
        [sys.executable, str(REPO / "launch" / "status.py"), str(root)], capture_output=True, text=True
    )
    assert status.returncode == 0, status.stdout + status.stderr
    assert f"CANCELLED stage1: job {s1} was stopped by its user (cancelled)" in status.stdout, status.stdout
    assert f"checkpoint at step {state['step']}" in status.stdout and "FAILED" not in status.stdout
