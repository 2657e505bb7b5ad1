"""Which signal means what, and a flag-only handler an entry point installs on its first lines.

    SIGUSR2  preemption notice or time-limit warning (``--signal=USR2@<s>``, ``scancel --signal=USR2``):
             finish the step, checkpoint, exit 75 and requeue.
    SIGTERM  a user's ``scancel`` (or SLURM's own preemption under PreemptMode=REQUEUE, which requeues
             the job itself): finish the step, checkpoint, exit 143 and stay stopped.
    SIGINT   Ctrl-C: finish the step, checkpoint, exit 130 and stay stopped; a second Ctrl-C aborts at
             once (checkpoint files are atomic, so the last complete one stays valid).

Importing torch and the training code takes seconds (tens on a loaded node); a signal in that window
used to meet the default action and kill the task (a FAILED job). This module imports nothing heavy:
`install_early()` records signals from the first lines of launch/run.py and of the Submitit job, and
`burn.resume.signals.PreemptionHandler` adopts what it recorded.
"""

from __future__ import annotations

import os
import signal
import threading

REQUEUE_EXIT_CODE = 75
"""EX_TEMPFAIL: a preemption signal arrived and a checkpoint was written; requeue me."""
CANCEL_EXIT_CODE = 128 + signal.SIGTERM
"""143: cancelled (SIGTERM); checkpoint written; do not requeue."""
INTERRUPT_EXIT_CODE = 128 + signal.SIGINT
"""130: interrupted (Ctrl-C); checkpoint written; do not requeue."""

#: Local stop codes, ordered: the all-reduced MAX over ranks decides (a user's stop beats a requeue).
STOP_CODES = {signal.SIGUSR2: 1, signal.SIGTERM: 2, signal.SIGINT: 3}
STOP_SIGNALS = tuple(STOP_CODES)
EXIT_CODES = {0: 0, 1: REQUEUE_EXIT_CODE, 2: CANCEL_EXIT_CODE, 3: INTERRUPT_EXIT_CODE}
STATES = {1: "preempted", 2: "cancelled", 3: "interrupted"}

_FIRST_MESSAGE = b"\nCtrl-C: finishing this step and saving a checkpoint (Ctrl-C again aborts at once)\n"
_ABORT_MESSAGE = b"\nsecond Ctrl-C: aborting now without a checkpoint (the last complete one is intact)\n"


def abort_on_second_interrupt(signum: int, interrupts_before: int) -> None:
    """Say what the first SIGINT does; a second one ends the process at once, by SIGINT itself."""
    if signum != signal.SIGINT:
        return
    if interrupts_before == 0:
        os.write(2, _FIRST_MESSAGE)  # os.write: no locks taken, unlike print/logging
        return
    os.write(2, _ABORT_MESSAGE)
    signal.signal(signal.SIGINT, signal.SIG_DFL)
    os.kill(os.getpid(), signal.SIGINT)


class _EarlyFlags:
    """Process-wide record of stop signals that came before the stage's own handler existed."""

    def __init__(self) -> None:
        self.first: int | None = None
        self.code = 0
        self.interrupts = 0

    def on_signal(self, signum: int, frame: object) -> None:
        abort_on_second_interrupt(signum, self.interrupts)
        if self.first is None:
            self.first = signum
        self.code = max(self.code, STOP_CODES.get(signum, 0))
        self.interrupts += signum == signal.SIGINT


_early = _EarlyFlags()


def _on_signal(signum: int, frame: object) -> None:
    _early.on_signal(signum, frame)  # through the global: take_early() swaps the record


def install_early() -> None:
    """Route the stop signals to the flag-only recorder (main thread only; a no-op elsewhere)."""
    if threading.current_thread() is not threading.main_thread():
        return
    for signum in STOP_SIGNALS:
        signal.signal(signum, _on_signal)


def ignore_once_complete() -> None:
    """A finished stage must not die of a late time-limit or preemption notice: Python resets its
    own handlers to the default (terminate) while the interpreter shuts down, and SLURM would then
    mark the completed job FAILED. SIG_IGN survives shutdown. Ctrl-C keeps working."""
    if threading.current_thread() is not threading.main_thread():
        return
    for signum in STOP_SIGNALS:
        if signum != signal.SIGINT:
            signal.signal(signum, signal.SIG_IGN)


def take_early() -> tuple[int | None, int, int]:
    """(first signal, stop code, SIGINT count) recorded so far; clears the record."""
    global _early
    record = (_early.first, _early.code, _early.interrupts)
    _early = _EarlyFlags()
    return record
