"""Every call of SLURM's command-line tools (sbatch, sinfo, squeue, sacct, scontrol) from Python.

Torch-free: launch/status.py asks SLURM through it and answers fast. slurm/stage.sbatch and
slurm/chain.sh call the tools themselves (they are shell).
"""

from __future__ import annotations

import subprocess

#: Queue states in which a job will still run (or is running): launch/jobs.py does not submit such a job twice.
ACTIVE_STATES = {
    "PENDING",
    "RUNNING",
    "REQUEUED",
    "REQUEUE_HOLD",
    "REQUEUE_FED",
    "CONFIGURING",
    "COMPLETING",
    "SUSPENDED",
    "RESIZING",
    "SIGNALING",
    "STAGE_OUT",
}


def _stdout(cmd: list[str]) -> str | None:
    """stdout of a SLURM command, or None when SLURM is not reachable or the command failed."""
    try:
        out = subprocess.run(cmd, capture_output=True, text=True, timeout=30)
    except (OSError, subprocess.SubprocessError):
        return None
    return out.stdout if out.returncode == 0 else None


def answers() -> bool:
    """True when sbatch exists and the controller answers sinfo."""
    try:
        for cmd in (["sbatch", "--version"], ["sinfo", "-h", "-o", "%P"]):
            subprocess.run(cmd, check=True, capture_output=True, timeout=20)
    except (OSError, subprocess.SubprocessError):
        return False
    return True


def partition_has_gpus(partition: str | None) -> bool:
    """Whether the (given) partition's nodes advertise GPUs as generic resources."""
    cmd = ["sinfo", "-h", "-o", "%G"] + (["-p", partition] if partition else [])
    out = subprocess.run(cmd, capture_output=True, text=True, timeout=30)
    return "gpu" in out.stdout


def queue_state(job_id: str) -> str | None:
    """The job's state while SLURM still lists it (squeue), else None."""
    out = subprocess.run(["squeue", "-h", "-j", job_id, "-o", "%T"], capture_output=True, text=True, timeout=30)
    state = out.stdout.strip().split("\n")[0] if out.returncode == 0 else ""
    return state or None


def queued_state_and_reason(job_id: str) -> tuple[str, str] | None:
    """(state, pending reason) while squeue lists the job; None otherwise or when SLURM does not answer."""
    queued = _stdout(["squeue", "-h", "-j", job_id, "-o", "%T|%r"])
    if not queued or not queued.strip():
        return None
    state, reason = queued.strip().split("\n")[0].split("|", 1)
    return state, reason


def accounted_state(job_id: str) -> tuple[str, str, str] | None:
    """(state, exit code, reason) of the job's allocation as sacct records it; None when unknown."""
    acct = _stdout(["sacct", "-n", "-P", "-X", "-j", job_id, "-o", "State,ExitCode,Reason"])
    lines = [line for line in (acct or "").splitlines() if line.strip()]
    if not lines:
        return None
    state, exit_code, reason = lines[-1].split("|", 2)
    return state, exit_code, reason


def restart_count(job_id: str) -> int | None:
    """How often SLURM requeued the job (scontrol, while the controller still knows it), else None."""
    for word in (_stdout(["scontrol", "-o", "show", "job", job_id]) or "").split():
        if word.startswith("Restarts="):
            return int(word.split("=", 1)[1])
    return None


def job_state(job_id: str) -> str | None:
    """The controller's JobState of the job (e.g. RUNNING, CANCELLED), None when it does not know it."""
    for word in (_stdout(["scontrol", "-o", "show", "job", job_id]) or "").split():
        if word.startswith("JobState="):
            return word.split("=", 1)[1]
    return None


def attempt_states(job_id: str) -> list[str]:
    """The accounted state of each run of a requeued job, oldest first (sacct --duplicates): e.g.
    ["NODE_FAIL", "RUNNING"]; [] when accounting does not answer."""
    out = _stdout(["sacct", "-n", "-P", "-X", "--duplicates", "-j", job_id, "-o", "State"])
    return [line.strip() for line in (out or "").splitlines() if line.strip()]


def requeue(job_id: str) -> None:
    """``scontrol requeue``: the job goes back to the queue under the same id."""
    subprocess.run(["scontrol", "requeue", job_id], check=True, timeout=60, capture_output=True, text=True)


def first_host(nodelist: str) -> str | None:
    """The first hostname of a node list such as ``node[1-2],gpu7`` (scontrol), None without scontrol."""
    try:
        out = subprocess.run(
            ["scontrol", "show", "hostnames", nodelist], capture_output=True, text=True, timeout=30, check=True
        ).stdout.split()
    except (OSError, subprocess.SubprocessError):
        return None
    return out[0] if out else None
