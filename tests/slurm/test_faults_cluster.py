"""Self-healing on the real local cluster, both launch paths, 2 nodes (docs/fault-tolerance.md): a rank
killed with SIGKILL mid-stage requeues the job under its id within a minute and the resumed run ends with
the bits of an uninterrupted one; a rank that dies at the same step every time stops as a crash loop; an
undecodable image fails the job at once, with no requeue.

All jobs are queued at the start and overlap; each test then waits on its own.
"""

from __future__ import annotations

import json
import os
import re
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from burn.runtime.fault_injection import ENV as KILL_AT_STEP
from tests.slurm.conftest import progress, wait_for
from tests.slurm.test_launch_cluster import assert_bit_identical

pytestmark = [pytest.mark.slurm, pytest.mark.slow]

REPO = Path(__file__).resolve().parents[2]
STEPS = 16
BASE = ["preset=tiny", "data.synthetic.generate=false", "log.progress_bar=off", "log.every_steps=1", f"steps={STEPS}"]
#: The kill lands after this step (progress.json says so); checkpoints come before it.
KILL_AFTER = 6


def submit(data: Path, run_dir: Path, *overrides: str, env: dict | None = None) -> str:
    out = subprocess.run(
        [sys.executable, str(REPO / "launch" / "submit.py"), *BASE, f"data.root={data}", "stage=1", "nodes=2"]
        + [f"run_dir={run_dir}", *overrides],
        cwd=REPO,
        capture_output=True,
        text=True,
        timeout=300,
        env={**os.environ, **(env or {})},
    )
    assert out.returncode == 0, out.stdout + out.stderr
    return json.loads((run_dir / "slurm" / "jobs.jsonl").read_text().splitlines()[-1])["job_id"]


def sbatch(data: Path, run_dir: Path, *overrides: str) -> str:
    run_dir.mkdir(parents=True)
    env = {**os.environ, "BURN_REPO": str(REPO), "BURN_PYTHON": sys.executable}
    return subprocess.run(
        ["sbatch", "--parsable", "--nodes=2", "--ntasks-per-node=1", "--cpus-per-task=1", "--time=10"]
        + [f"--output={run_dir}/slurm-%j.out", str(REPO / "slurm" / "stage.sbatch"), "stage=1", *BASE]
        + [f"data.root={data}", f"run_dir={run_dir}", *overrides],
        env=env,
        check=True,
        capture_output=True,
        text=True,
    ).stdout.strip()


def rank_pid(job: str, rank: int) -> int | None:
    """The pid of one rank's Python process (both nodes of the local cluster are this host)."""
    for proc in Path("/proc").iterdir():
        try:
            argv = (proc / "cmdline").read_bytes().split(b"\0")
            environ = (proc / "environ").read_bytes().split(b"\0")
        except (OSError, ValueError):
            continue
        python = argv[:1] and b"python" in Path(argv[0].decode(errors="replace")).name.encode()
        if python and f"SLURM_JOB_ID={job}".encode() in environ and f"SLURM_PROCID={rank}".encode() in environ:
            return int(proc.name)
    return None


def requeues(run_dir: Path) -> list[dict]:
    return [json.loads(line) for line in (run_dir / "slurm" / "requeues.jsonl").read_text().splitlines()]


def status(run_dir: Path) -> subprocess.CompletedProcess:
    return subprocess.run(
        [sys.executable, str(REPO / "launch" / "status.py"), str(run_dir)], capture_output=True, text=True
    )


@pytest.fixture(scope="module")
def jobs(slurm_cluster, tiny_data, tmp_path_factory):
    root = tmp_path_factory.mktemp("fault-runs")
    bad = root / "bad-data"
    subprocess.run(["cp", "-r", str(tiny_data), str(bad)], check=True)
    first = (bad / "meta" / "train.txt").read_text().split()[0]
    (bad / "train" / first).write_bytes(b"not a JPEG, but not empty either" * 64)
    queued = {  # the runs nobody interacts with; the killed ones start in their tests
        "reference": submit(tiny_data, root / "reference"),
        "loop": submit(tiny_data, root / "loop", "checkpoint.every_steps=4", env={KILL_AT_STEP: f"1:{KILL_AFTER}"}),
        # The tiny teacher trained on the good copy (auto would train one on the bad data, in submit.py).
        "bad": submit(bad, root / "bad", f"model.teacher_weights={next(tiny_data.parent.glob('*-teacher-*.pth'))}"),
    }
    yield root, queued
    subprocess.run(["scancel", *queued.values()], capture_output=True)


def kill_rank_1_and_time_the_requeue(slurm_cluster, run_dir: Path, job: str) -> float:
    """SIGKILL rank 1 once the stage passed KILL_AFTER; seconds from the kill until SLURM counts a restart."""
    wait_for(f"{run_dir.name} at step {KILL_AFTER}", lambda: progress(run_dir).get("step", 0) >= KILL_AFTER, 300)
    pid = wait_for("rank 1's process", lambda: rank_pid(job, 1))
    killed = time.monotonic()
    os.kill(pid, signal.SIGKILL)
    wait_for(f"job {job} requeued", lambda: slurm_cluster.restarts(job) >= 1, timeout=120, poll=0.5)
    return time.monotonic() - killed


@pytest.fixture(scope="module")
def reference(jobs, slurm_cluster) -> Path:
    root, queued = jobs
    assert slurm_cluster.wait(queued["reference"], timeout=600) == "COMPLETED"
    return root / "reference"


def test_submitit_rank_killed_requeues_within_a_minute_resumes_from_a_timed_checkpoint_bit_identical(
    jobs, slurm_cluster, tiny_data, request
):
    root, queued = jobs
    run_dir = root / "submitit"
    # Timed checkpoints only (every ~0.3 s): the resume comes from one of them.
    job = queued["submitit"] = submit(
        tiny_data, run_dir, "checkpoint.every_steps=1000", "checkpoint.every_minutes=0.005"
    )
    assert kill_rank_1_and_time_the_requeue(slurm_cluster, run_dir, job) < 60
    assert slurm_cluster.wait(job, timeout=600) == "COMPLETED"
    assert slurm_cluster.restarts(job) == 1
    (record,) = requeues(run_dir)
    assert record["cause"].startswith("peer rank died at step") and record["restarts"] == 0
    log = "".join(p.read_text() for p in (run_dir / "slurm" / job).glob("*_log.*"))
    assert re.search(rf"batch: job {job} requeued \(restart 1 of at most 20\) after peer rank died", log), log
    resumed_from = int(re.search(r"resuming from \S+ \(step (\d+)", log).group(1))
    assert 0 < resumed_from <= STEPS and resumed_from % 1000, "not a timed checkpoint"
    reference = request.getfixturevalue("reference")  # only now: the killed run started without waiting for it
    assert_bit_identical(run_dir / "stage1_extraction.pth", reference / "stage1_extraction.pth")
    shown = status(run_dir)
    assert shown.returncode == 0 and f"requeued 1x: {record['cause']}" in shown.stdout, shown.stdout


def test_sbatch_rank_killed_requeues_within_a_minute_and_matches_the_uninterrupted_run(
    jobs, slurm_cluster, tiny_data, request
):
    root, queued = jobs
    run_dir = root / "sbatch"
    job = queued["sbatch"] = sbatch(tiny_data, run_dir, "checkpoint.every_steps=4")
    assert kill_rank_1_and_time_the_requeue(slurm_cluster, run_dir, job) < 60
    assert slurm_cluster.wait(job, timeout=600) == "COMPLETED"
    assert slurm_cluster.restarts(job) == 1
    (record,) = requeues(run_dir)
    assert record["cause"].startswith("peer rank died at step") and record["step"] % 4 == 0
    batch_log = (run_dir / f"slurm-{job}.out").read_text()
    assert f"requeued (restart 1 of at most 20) after {record['cause']}" in batch_log
    assert f"resumes from step {record['step']}" in batch_log
    reference = request.getfixturevalue("reference")  # only now: the killed run started without waiting for it
    assert_bit_identical(run_dir / "stage1_extraction.pth", reference / "stage1_extraction.pth")


def test_a_rank_dying_at_the_same_step_every_time_stops_as_a_crash_loop_in_one_line(jobs, slurm_cluster):
    root, queued = jobs
    run_dir, job = root / "loop", queued["loop"]
    assert slurm_cluster.wait(job, timeout=600) == "FAILED"
    assert slurm_cluster.restarts(job) == 2  # of max_requeues=20: the third death at step 4 is not requeued
    assert [r["step"] for r in requeues(run_dir)] == [4, 4, 4] and requeues(run_dir)[-1]["refused"] == "crash loop"
    err = (run_dir / "slurm" / job / f"{job}_0_log.err").read_text().splitlines()
    last = [line for line in err if not line.startswith(("srun: ", "slurmstepd"))][-1]
    assert last.startswith(f"burn job: crash loop: job {job} stopped 3 times in a row at checkpoint step 4"), last
    assert f"(peer rank died at step {KILL_AFTER})" in last
    shown = status(run_dir)
    assert shown.returncode == 1 and "error: burn job: crash loop" in shown.stdout, shown.stdout


def test_an_undecodable_image_fails_the_job_at_once_without_a_requeue(jobs, slurm_cluster):
    root, queued = jobs
    run_dir, job = root / "bad", queued["bad"]
    assert slurm_cluster.wait(job, timeout=600) == "FAILED"
    assert slurm_cluster.restarts(job) == 0 and not (run_dir / "slurm" / "requeues.jsonl").exists()
    outcomes = {json.loads(p.read_text())["outcome"] for p in (run_dir / "slurm" / "endings").glob("*.json")}
    assert "user" in outcomes, outcomes
    shown = status(run_dir)
    assert shown.returncode == 1 and "cannot decode image" in shown.stdout, shown.stdout
