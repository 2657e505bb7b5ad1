"""Stop signals: a flag-only handler, a cross-rank stop decision, and the exit codes.

SLURM announces preemption or the time limit with SIGUSR2 some seconds before the kill
(``--signal=USR2@<signal_delay_s>``); a user's ``scancel`` sends SIGTERM, Ctrl-C SIGINT (which signal means what:
burn/runtime/signal_flags.py). The handler here only records what came; the training loop polls
:func:`stop_code` at step boundaries, writes a checkpoint and exits with :data:`REQUEUE_EXIT_CODE`
(requeue me), :data:`CANCEL_EXIT_CODE` or :data:`INTERRUPT_EXIT_CODE` (stay stopped).

Why flag-only: a Python signal handler runs in the main thread between two bytecodes, i.e.
possibly in the middle of ``torch.save`` or a collective. Doing real work there (saving, logging
through handlers that take locks, collectives) could deadlock or corrupt the checkpoint being
written. Setting an attribute is safe at any point, also when a second signal arrives.
"""

from __future__ import annotations

import logging
import signal
import threading
from collections.abc import Iterable
from types import FrameType
from typing import Any

import torch
import torch.distributed as dist

from burn.runtime.signal_flags import (  # (which signal means what: see burn/runtime/signal_flags.py)
    CANCEL_EXIT_CODE,
    EXIT_CODES,
    INTERRUPT_EXIT_CODE,
    REQUEUE_EXIT_CODE,
    STATES,
    STOP_CODES,
    STOP_SIGNALS,
    abort_on_second_interrupt,
    take_early,
)

log = logging.getLogger(__name__)

__all__ = [
    "CANCEL_EXIT_CODE",
    "INTERRUPT_EXIT_CODE",
    "REQUEUE_EXIT_CODE",
    "EXIT_CODES",
    "STATES",
    "STOP_SIGNALS",
    "PREEMPTION_SIGNALS",
    "PreemptionHandler",
    "stop_code",
]

PREEMPTION_SIGNALS: tuple[signal.Signals, ...] = (signal.SIGUSR2, signal.SIGTERM)
"""SIGUSR2: SLURM's advance warning (``--signal=USR2@<lead>``) -> requeue; SIGTERM: a cancel -> stop.
The stage handler also takes SIGINT (Ctrl-C): :data:`STOP_SIGNALS`."""


class PreemptionHandler:
    """Records the first preemption signal; restores the previous handlers on :meth:`restore`.

    Use as a context manager (installs :data:`STOP_SIGNALS`), or call :meth:`install`. Signals that
    :func:`burn.runtime.signal_flags.install_early` recorded before it are adopted on install.
    Must be installed from the main thread (a CPython rule for ``signal.signal``).
    """

    def __init__(self) -> None:
        self._first: int | None = None
        """The first signal's number."""
        self._code = 0
        self._interrupts = 0
        self._previous: dict[int, Any] = {}

    def install(self, signals: Iterable[int] = STOP_SIGNALS) -> PreemptionHandler:
        """Route ``signals`` to this handler, remembering the handlers they replace."""
        if threading.current_thread() is not threading.main_thread():
            raise RuntimeError("PreemptionHandler.install must run in the main thread (CPython rule)")
        if self._previous:
            raise RuntimeError("PreemptionHandler is already installed; call restore() first")
        for signum in signals:
            self._previous[signum] = signal.signal(signum, self._on_signal)
        first, code, interrupts = take_early()  # what came while the process was still importing
        if first is not None and self._first is None:
            self._first, self._code, self._interrupts = first, max(self._code, code), interrupts
        return self

    def restore(self) -> None:
        """Put back the handlers that :meth:`install` replaced (no-op when not installed)."""
        for signum, previous in self._previous.items():
            # getsignal() returns None for handlers not set from Python; fall back to the default.
            signal.signal(signum, previous if previous is not None else signal.SIG_DFL)
        self._previous.clear()

    def _on_signal(self, signum: int, frame: FrameType | None) -> None:
        # Flag only: no logging, no I/O, no torch calls (see the module docstring).
        abort_on_second_interrupt(signum, self._interrupts)
        if self._first is None:
            self._first = signum
        self._code = max(self._code, STOP_CODES.get(signum, 1))
        self._interrupts += signum == signal.SIGINT

    @property
    def requested(self) -> bool:
        """True once any installed signal has arrived in this process."""
        return self._first is not None

    @property
    def code(self) -> int:
        """This rank's stop code: 0 none, 1 preempted (requeue), 2 cancelled, 3 interrupted."""
        return self._code

    @property
    def reason(self) -> str | None:
        """Name of the first signal received (e.g. ``"SIGUSR2"``), or None."""
        return None if self._first is None else signal.Signals(self._first).name

    def __enter__(self) -> PreemptionHandler:
        return self.install()

    def __exit__(self, *exc_info: object) -> None:
        self.restore()


def _collective_device(group: Any) -> torch.device:
    # A pure NCCL group only reduces CUDA tensors; gloo and mixed "cpu:gloo,cuda:nccl" take CPU ones.
    if dist.get_backend(group) == dist.Backend.NCCL:
        return torch.device("cuda", torch.cuda.current_device())
    return torch.device("cpu")


def stop_code(code_local: int, process_group_available: bool, *, group: Any = None) -> int:
    """The stop decision of all ranks: MAX of the local codes (see :data:`STOP_CODES`), so a user's
    cancel or Ctrl-C on any rank beats a preemption.

    A COLLECTIVE when ``process_group_available`` is true: every rank of ``group`` (default: the world)
    must call it at the same point of the loop (after each optimizer step), or the job hangs. It
    synchronises with the host: call it at step boundaries, not inside the step. False returns
    ``code_local`` unchanged."""
    if not process_group_available:
        return int(code_local)
    flag = torch.tensor([int(code_local)], dtype=torch.int32, device=_collective_device(group))
    dist.all_reduce(flag, op=dist.ReduceOp.MAX, group=group)
    return int(flag.item())


def warn_if_slow_checkpoint(
    save_seconds: float,
    lead_seconds: float,
    *,
    safety_factor: float = 2.0,
    step_seconds: float = 0.0,
) -> bool:
    """Log a warning when a checkpoint written after the signal may not beat the kill.

    After the signal the loop still finishes its current step (``step_seconds``) and then
    writes; the write can be slower at preemption time (every job on the filesystem saves at
    once), hence ``safety_factor``. Returns True when it warned.

    Args:
        save_seconds: duration of a recent save (``CheckpointManager.last_save_seconds``).
        lead_seconds: seconds between the signal and the kill (``signal_delay_s``).
        step_seconds: how long finishing the current step takes (the loop's mean step time).
    """
    needed = step_seconds + safety_factor * save_seconds
    if needed <= lead_seconds:
        return False
    log.warning(
        "A checkpoint write took %.1f s; with a x%.1f safety factor plus %.1f s to finish the "
        "current step that is %.1f s, more than the %.1f s between the preemption signal and the "
        "kill. Raise signal_delay_s (it sets SLURM's --signal=USR2@<seconds> too), or write to "
        "faster storage.",
        save_seconds,
        safety_factor,
        step_seconds,
        needed,
        lead_seconds,
    )
    return True
