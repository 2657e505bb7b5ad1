"""slurm/stage.sbatch with a trivial stand-in for launch/run.py: signal forwarding and requeue logic.

The stand-in behaves like the stage runner's contract (after SIGUSR2: a checkpoint, exit 75; 0 when
left alone) so the batch script is tested on the real cluster in seconds; the real trainer runs through
the same template in test_launch_cluster.py and test_faults_cluster.py. max_requeues comes from the
overrides, as the stages' config composes it; BURN_MAX_REQUEUES is refused.
"""

import os
import subprocess
import textwrap
import time
from pathlib import Path

import pytest

pytestmark = pytest.mark.slurm

REPO = Path(__file__).resolve().parents[2]

FAKE_RUN = textwrap.dedent("""
    import os, pathlib, signal, sys, time
    got = []
    signal.signal(signal.SIGUSR2, lambda signum, frame: got.append(signum))
    signal.signal(signal.SIGTERM, lambda signum, frame: None)  # srun's end of the others: a flag, as burn's
    out = pathlib.Path(os.environ["FAKE_OUT"])
    rank, restarts = os.environ["SLURM_PROCID"], os.environ.get("SLURM_RESTART_COUNT", "0")
    tag = f"{restarts}-{rank}"
    (out / f"start-{tag}").write_text(" ".join(sys.argv[1:]))
    deadline = time.time() + float(os.environ["FAKE_RUN_S"])
    while time.time() < deadline and not got:
        time.sleep(0.05)
    if got:  # the stage's contract: a checkpoint (rank 0 writes, the others wait), each rank's ending, 75
        (out / f"signal-{tag}").touch()
        from burn.resume.checkpoint import CheckpointManager
        from burn.runtime import faults
        run_dir = pathlib.Path(next(a.split("=", 1)[1] for a in sys.argv if a.startswith("run_dir=")))
        manager = CheckpointManager(run_dir / "checkpoints")
        if rank == "0":
            manager.save({"step": int(restarts) + 1}, int(restarts) + 1)
        while manager.latest_step() != int(restarts) + 1:
            time.sleep(0.05)
        job = os.environ["SLURM_JOB_ID"]
        faults.record_ending(run_dir, job, int(restarts), int(rank), "preempted", "preempted", 1, 75)
        sys.exit(75)
""")


@pytest.fixture
def fake_repo(tmp_path):
    (tmp_path / "launch").mkdir()
    (tmp_path / "launch" / "run.py").write_text(FAKE_RUN)
    (tmp_path / "out").mkdir()
    return tmp_path


def submit(repo: Path, *extra: str, run_s: float = 60, max_requeues: int = 5, env: dict | None = None) -> str:
    env = {**os.environ, "BURN_REPO": str(repo), "FAKE_OUT": str(repo / "out"), "FAKE_RUN_S": str(run_s), **(env or {})}
    out = subprocess.run(
        [
            "sbatch",
            "--parsable",
            "--nodes=2",
            "--ntasks-per-node=1",
            "--time=5",
            f"--output={repo}/batch-%j.out",
            *extra,
            str(REPO / "slurm" / "stage.sbatch"),
            "stage=1",
            f"run_dir={repo / 'stage'}",
            f"max_requeues={max_requeues}",
        ],
        check=True,
        capture_output=True,
        text=True,
        env=env,
    )
    return out.stdout.strip().split(";")[0]


def wait_for_file(path: Path, timeout: float = 180) -> None:
    deadline = time.monotonic() + timeout
    while not path.exists():
        if time.monotonic() > deadline:
            pytest.fail(f"{path} did not appear within {timeout} s")
        time.sleep(0.2)


def test_usr2_to_batch_shell_or_tasks_requeues_same_job_then_completes(slurm_cluster, fake_repo):
    out = fake_repo / "out"
    job = submit(fake_repo, run_s=4)
    wait_for_file(out / "start-0-0")
    wait_for_file(out / "start-0-1")
    # Only the batch shell gets this one: its trap must forward it to both tasks.
    subprocess.run(["scancel", "--batch", "--signal=USR2", job], check=True)
    wait_for_file(out / "start-1-0")  # requeued: same id, SLURM_RESTART_COUNT=1
    wait_for_file(out / "start-1-1")
    # This one goes straight to the tasks (what a Submitit-style --signal=USR2@N does).
    subprocess.run(["scancel", "--signal=USR2", job], check=True)
    wait_for_file(out / "start-2-0")
    assert slurm_cluster.wait(job, timeout=180) == "COMPLETED"
    assert {p.name for p in out.glob("signal-*")} == {"signal-0-0", "signal-0-1", "signal-1-0", "signal-1-1"}
    assert (out / "start-2-1").read_text() == f"stage=1 run_dir={fake_repo / 'stage'} max_requeues=5"
    assert slurm_cluster.restarts(job) == 2
    log = (fake_repo / f"batch-{job}.out").read_text()
    assert "received USR2, forwarding" in log
    assert f"batch: job {job} requeued (restart 2 of at most 5) after preempted" in log


def test_requeue_limit_from_the_overrides_fails_the_job(slurm_cluster, fake_repo):
    job = submit(fake_repo, run_s=30, max_requeues=0)
    wait_for_file(fake_repo / "out" / "start-0-1")
    subprocess.run(["scancel", "--signal=USR2", job], check=True)
    assert slurm_cluster.wait(job, timeout=180) == "FAILED"
    last = (fake_repo / f"batch-{job}.out").read_text().strip().splitlines()[-1]
    assert last.startswith(f"burn job: job {job} stopped (preempted) after 0 requeues (max_requeues=0); not requeuing")


def test_burn_max_requeues_is_refused_with_the_keys_name(slurm_cluster, fake_repo):
    job = submit(fake_repo, env={"BURN_MAX_REQUEUES": "3"})
    assert slurm_cluster.wait(job, timeout=180) == "FAILED"
    assert (
        "BURN_MAX_REQUEUES is no longer read: set max_requeues=3 among the overrides"
        in (fake_repo / f"batch-{job}.out").read_text()
    )
    assert not (fake_repo / "out" / "start-0-0").exists()
    chain = subprocess.run(
        [str(REPO / "slurm" / "chain.sh"), str(fake_repo / "chain"), "--", "preset=tiny"],
        env={**os.environ, "BURN_MAX_REQUEUES": "3"},
        capture_output=True,
        text=True,
    )
    assert chain.returncode == 2 and "set max_requeues=3 after the --" in chain.stderr
    assert not (fake_repo / "chain").exists()
