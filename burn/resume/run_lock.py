"""One writer per run directory: an OS lock held for a stage's life, and config.yaml written once.

Only rank 0 touches the run directory at start-up. It takes the lock, compares the saved
`config.yaml` with the new command (burn/resume/identity.py), writes `config.yaml` (atomically, and only when its text
changes), and tells the other ranks what it decided; they never read the directory's files
themselves, so none of them can see a file another process is rewriting.

The lock is ``flock`` on ``<run_dir>/.lock``: the kernel drops it when the holding process ends,
however it ends (``kill -9`` included), so there is no stale lock to clean up. The file's text
names the holder (host, pid, SLURM job id) for the refusal message. The file itself is never
deleted: unlinking a lock file lets a third process lock a fresh inode while the second still
holds the old one.
"""

from __future__ import annotations

import fcntl
import json
import os
import socket
import time
from pathlib import Path
from typing import Any

from burn.runtime.environment import Environment
from burn.runtime.errors import UsageError
from burn.runtime.rundir import CONFIG, LOCK, atomic_write


class RunDirBusyError(UsageError):
    """Another live process holds this run directory's lock."""


class ConfigMismatchError(UsageError):
    """The run directory belongs to a run with another model or data."""


def holder_record(environment: Environment) -> dict[str, Any]:
    """Who holds a lock: enough for a user to find and stop the other copy."""
    job = environment.job_id if environment.slurm_job_id else None
    return {
        "host": socket.gethostname(),
        "node": environment.node,
        "pid": os.getpid(),
        "slurm_job_id": job,
        "since": time.time(),
    }


def describe_holder(text: str) -> str:
    try:
        h = json.loads(text)
    except ValueError:
        return "another process (it has not recorded itself yet)"
    where = h.get("host") or "?"
    if h.get("node") and h["node"] != where:
        where += f" (SLURM node {h['node']})"
    job = f", SLURM job {h['slurm_job_id']}" if h.get("slurm_job_id") else ""
    since = time.strftime("%Y-%m-%d %H:%M:%S", time.localtime(h["since"])) if h.get("since") else "?"
    return f"pid {h.get('pid', '?')} on {where}{job}, since {since}"


class RunDirLock:
    """Exclusive, non-blocking lock of one run directory for the life of this process (or `release`)."""

    def __init__(self, run_dir: Path, environment: Environment | None = None):
        self.run_dir = Path(run_dir)
        self.environment = Environment.read() if environment is None else environment
        """Recorded in the lock file for a refused second writer's message."""
        self.path = self.run_dir / LOCK
        self._fd: int | None = None

    def acquire(self) -> RunDirLock:
        fd = os.open(self.path, os.O_RDWR | os.O_CREAT, 0o666)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            text = os.pread(fd, 4096, 0).decode(errors="replace")
            os.close(fd)
            raise RunDirBusyError(
                f"{self.run_dir} is in use by {describe_holder(text)}: one stage run per run "
                "directory. Wait for it or stop it (scancel / kill), or pick another run_dir."
            ) from None
        except BaseException:
            os.close(fd)
            raise
        record = json.dumps(holder_record(self.environment)).encode()
        os.ftruncate(fd, 0)
        os.pwrite(fd, record, 0)
        self._fd = fd
        return self

    @property
    def held(self) -> bool:
        return self._fd is not None

    def release(self) -> None:
        if self._fd is not None:
            os.close(self._fd)  # closing the last descriptor drops the flock
            self._fd = None

    def __enter__(self) -> RunDirLock:
        return self.acquire()

    def __exit__(self, *exc: object) -> None:
        self.release()


def write_config_if_changed(run_dir: Path, text: str) -> bool:
    """Write config.yaml when it is missing or its text differs; returns whether it wrote."""
    path = Path(run_dir) / CONFIG
    try:
        if path.read_text() == text:
            return False
    except FileNotFoundError:
        pass
    atomic_write(path, text)
    return True
