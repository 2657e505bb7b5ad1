"""How a stage ended, on one rank: the user's or the data's fault (fail, one line, no requeue) or the
infrastructure's (requeue and resume from the last valid checkpoint). docs/fault-tolerance.md has the table.

Every rank of a SLURM job writes one small *ending* file when its stage stops other than by completing
(an exception, or a stop signal after its checkpoint): ``<stage>/slurm/endings/<job>.<restart>.rank<r>.json``.
A rank that the kernel killed (SIGKILL: the out-of-memory killer, ``kill -9``, a lost node) writes
none. The batch shell reads them once srun has returned (launch/batch.py) and decides for the whole job:
any user or data fault fails it; a stop signal ends it as that signal says; otherwise an
infrastructure fault, or a rank that ended without a word, requeues it.

Torch-free: the batch shell's hook imports it. Exceptions are recognised by their class names and
messages (also along ``__cause__``/``__context__``), so torch's error types need not be imported.
"""

from __future__ import annotations

import os
import signal
import socket
import time
from dataclasses import asdict, dataclass
from pathlib import Path

from burn.runtime import rundir
from burn.runtime.errors import FAULT_EXIT_CODE, USAGE_EXIT_CODE, FaultError, UsageError, one_line

#: Outcomes of an ending file. USER: fail the job as today; INFRA: requeue it; the rest: stop signals.
USER, INFRA, PREEMPTED, CANCELLED, INTERRUPTED = "user", "infra", "preempted", "cancelled", "interrupted"

#: Causes of an infrastructure fault, as the ledger (requeues.jsonl) and launch/status.py name them.
PEER_DIED = "peer rank died"
COLLECTIVE_TIMEOUT = "collective timed out"
WORKER_KILLED = "loader worker killed"
CUDA_TRANSIENT = "transient CUDA error"
NODE_FAILURE = "node failure"

#: (cause, lower-case message fragments). Matched in order; the first hit names the cause. Gloo and
#: NCCL say the peer is gone in these words (gloo's pair.cc, ProcessGroupNCCL, the TCPStore client).
INFRA_MESSAGES: tuple[tuple[str, tuple[str, ...]], ...] = (
    (
        PEER_DIED,
        (
            "connection closed by peer",
            "connection reset by peer",
            "broken pipe",
            "connection refused",
            "remote process exited",
            "ncclremoteerror",
            "nccl communicator was aborted",
            "failed to recv, got 0 bytes",
        ),
    ),
    (
        COLLECTIVE_TIMEOUT,
        (
            "watchdog caught collective operation timeout",
            "timed out waiting",
            "socket timeout",
            "wait timeout after",
        ),
    ),
    (WORKER_KILLED, ("dataloader worker", "is killed by signal")),
    (
        CUDA_TRANSIENT,
        (
            "uncorrectable ecc error",
            "ecc error encountered",
            "gpu is lost",
            "fallen off the bus",
            "busy or unavailable",
            "unspecified launch failure",
            "ncclsystemerror",
            "unhandled system error",
            "nvlink error",
        ),
    ),
)
#: torch.distributed's error classes that only the network or a peer raises (by name: no torch import).
INFRA_TYPES = {"DistNetworkError": PEER_DIED, "DistStoreError": COLLECTIVE_TIMEOUT}


@dataclass(frozen=True)
class Classified:
    outcome: str
    """USER or INFRA."""
    cause: str
    """INFRA: one of the causes above; USER: the error's one line."""
    exit_code: int


def _chain(err: BaseException) -> list[BaseException]:
    seen: list[BaseException] = []
    while err is not None and err not in seen:
        seen.append(err)
        err = err.__cause__ or err.__context__
    return seen


def classify(err: BaseException) -> Classified:
    """USER for the user's or the data's fault (bad config, a bad image, a full disk, a non-finite loss,
    a bug); INFRA for a dead or hung peer, a killed loader worker or a transient CUDA error."""
    chain = _chain(err)
    if isinstance(err, UsageError):
        return Classified(USER, one_line(err), USAGE_EXIT_CODE)
    if any(isinstance(e, (FaultError, FloatingPointError)) for e in chain):
        return Classified(USER, one_line(err), FAULT_EXIT_CODE)
    for e in chain:
        for klass in type(e).__mro__:
            if klass.__name__ in INFRA_TYPES:
                return Classified(INFRA, INFRA_TYPES[klass.__name__], FAULT_EXIT_CODE)
        text = str(e).lower()
        for cause, fragments in INFRA_MESSAGES:
            if any(fragment in text for fragment in fragments):
                return Classified(INFRA, cause, FAULT_EXIT_CODE)
    return Classified(USER, f"{type(err).__name__}: {one_line(err)}", FAULT_EXIT_CODE)


def signal_name(status: int) -> str | None:
    """SIGKILL for a shell exit status of 137, None below 129."""
    if status <= 128:
        return None
    try:
        return signal.Signals(status - 128).name
    except ValueError:
        return f"signal {status - 128}"


@dataclass
class Ending:
    """How one rank's stage stopped (not written for a stage that completed)."""

    rank: int
    outcome: str
    cause: str
    step: int | None
    exit_code: int
    time: float
    host: str = ""
    pid: int = 0
    error: str = ""
    """The exception's one line (empty for a stop signal)."""


def ending_file(stage_dir: str | os.PathLike, job_id: str, restarts: int, rank: int) -> Path:
    return rundir.endings_dir(stage_dir) / f"{job_id}.{restarts}.rank{rank}.json"


def record_ending(
    stage_dir: str | os.PathLike,
    job_id: str,
    restarts: int,
    rank: int,
    outcome: str,
    cause: str,
    step: int | None,
    exit_code: int,
    error: str = "",
) -> None:
    """Write this rank's ending file (atomically). Never raises: the batch shell copes without it."""
    ending = Ending(rank, outcome, cause, step, exit_code, time.time(), socket.gethostname(), os.getpid(), error)
    path = ending_file(stage_dir, job_id, restarts, rank)
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        rundir.write_json(path, asdict(ending))
    except Exception as err:  # e.g. a full disk: the batch shell then sees a rank that said nothing
        print(f"burn: could not record how this rank ended in {path}: {err}", flush=True)


def read_endings(stage_dir: str | os.PathLike, job_id: str, restarts: int) -> list[Ending]:
    """The ending files of one run of a job (one per rank that wrote one), by rank."""
    folder = rundir.endings_dir(stage_dir)
    endings = []
    for path in sorted(folder.glob(f"{job_id}.{restarts}.rank*.json")) if folder.is_dir() else []:
        data = rundir.read_json(path)
        if data:
            endings.append(Ending(**{k: data[k] for k in Ending.__dataclass_fields__ if k in data}))
    return sorted(endings, key=lambda e: e.rank)
