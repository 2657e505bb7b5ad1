"""The local SLURM test cluster (slurm/local-cluster/start.sh) as a pytest fixture.

Tests marked ``slurm`` skip, with the reason, when no cluster answers; ``make test`` starts one.
"""

from __future__ import annotations

import json
import shutil
import subprocess
import sys
import time
from dataclasses import dataclass
from pathlib import Path

import pytest

from burn.runtime.slurm_cli import ACTIVE_STATES

#: Job states after which SLURM will not run the job again (on its own).
FINAL_STATES = {
    "COMPLETED",
    "FAILED",
    "CANCELLED",
    "TIMEOUT",
    "OUT_OF_MEMORY",
    "NODE_FAIL",
    "BOOT_FAIL",
    "DEADLINE",
    "PREEMPTED",
}


def _run(*cmd: str, timeout: float = 20) -> str:
    return subprocess.run(cmd, check=True, capture_output=True, text=True, timeout=timeout).stdout


def cluster_problem() -> str | None:
    """Why the local cluster cannot be used, or None when both nodes answer."""
    if shutil.which("sinfo") is None:
        return "sinfo is not installed (run slurm/local-cluster/start.sh)"
    try:
        out = _run("sinfo", "-h", "-N", "-o", "%N %t")
    except (subprocess.SubprocessError, OSError) as err:
        detail = (getattr(err, "stderr", None) or str(err)).strip()
        return f"sinfo does not answer ({detail}); start the cluster: bash slurm/local-cluster/start.sh"
    states = dict(line.split() for line in out.splitlines() if line.strip())
    usable = [n for n, s in states.items() if s.rstrip("*") in {"idle", "mix", "alloc", "comp"}]
    if len(usable) < 2:
        return f"need 2 usable SLURM nodes, sinfo says {states}"
    return None


def progress(stage_dir: Path) -> dict:
    """A stage's progress.json ({} before the stage wrote one)."""
    try:
        return json.loads((stage_dir / "progress.json").read_text())
    except (OSError, ValueError):
        return {}


def wait_for(what: str, check, timeout: float = 240, poll: float = 0.2):
    """Poll ``check()`` until it returns something true; fails the test after ``timeout`` seconds."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        value = check()
        if value:
            return value
        time.sleep(poll)
    pytest.fail(f"{what}: not reached in {timeout} s")


@dataclass
class SlurmCluster:
    """Small helpers over the real SLURM commands."""

    def state(self, job_id: str) -> str:
        """State of the job's allocation from sacct ('' while accounting does not know it yet)."""
        out = _run("sacct", "-n", "-P", "-X", "-j", job_id, "-o", "State")
        lines = [line.split()[0] for line in out.splitlines() if line.strip()]
        return lines[-1] if lines else ""

    def wait(self, job_id: str, timeout: float = 120) -> str:
        """Wait until the job reaches a final state; returns it (fails the test on time-out)."""
        deadline = time.monotonic() + timeout
        state = ""
        while time.monotonic() < deadline:
            state = self.state(job_id)
            if state in FINAL_STATES and not self.in_queue(job_id):
                return state
            time.sleep(1)
        pytest.fail(f"SLURM job {job_id} not finished after {timeout} s (last state {state!r})")

    def in_queue(self, job_id: str) -> bool:
        try:
            out = _run("squeue", "-h", "-j", job_id, "-o", "%T")
        except subprocess.CalledProcessError:  # squeue forgets finished jobs: "Invalid job id"
            return False
        return out.strip() in ACTIVE_STATES

    def restarts(self, job_id: str) -> int:
        out = _run("scontrol", "show", "job", job_id)
        for word in out.split():
            if word.startswith("Restarts="):
                return int(word.split("=", 1)[1])
        raise AssertionError(f"no Restarts= in scontrol show job {job_id}:\n{out}")


@pytest.fixture(scope="session")
def slurm_cluster() -> SlurmCluster:
    """The running local cluster; skips the test when none answers."""
    problem = cluster_problem()
    if problem:
        pytest.skip(problem)
    return SlurmCluster()


def submitit_sweep(cwd: Path, data_root: Path, *overrides: str) -> subprocess.CompletedProcess:
    """`launch/submit.py -m` through the Submitit SLURM launcher, the tiny preset on `data_root`, run in
    `cwd`: one job per point; it returns when every job has ended."""
    return subprocess.run(
        [
            sys.executable,
            str(Path(__file__).resolve().parents[2] / "launch" / "submit.py"),
            "-m",
            "hydra/launcher=submitit_slurm",
            "hydra.launcher.timeout_min=10",
            "hydra.launcher.cpus_per_task=1",
            "preset=tiny",
            f"data.root={data_root}",
            "data.synthetic.generate=false",
            "log.progress_bar=off",
            *overrides,
        ],
        cwd=cwd,
        capture_output=True,
        text=True,
        timeout=600,
    )
