"""Periodic checkpoints that do not hold training up: snapshot the state into (pinned) CPU memory,
then write it with :class:`~burn.resume.checkpoint.CheckpointManager` in a thread.

The write itself is unchanged (same atomic protocol, same pruning, same files), and there is only
ever one writer: a new save, synchronous or not, first waits for the previous one. The preemption
save and the final save stay synchronous, so a job never exits before its checkpoint is on disk.
"""

from __future__ import annotations

import logging
import threading
from collections.abc import Mapping
from typing import Any

import torch

from burn.resume.checkpoint import CheckpointError, CheckpointManager

log = logging.getLogger("burn")


def snapshot(state: Any, pin: bool = False) -> Any:
    """Copy of ``state`` (dicts, lists, tuples, tensors, plain values) whose tensors are CPU copies,
    in pinned memory when ``pin``: training may change the originals while the copy is written.
    Device tensors are copied asynchronously, with one synchronisation at the end."""
    copied_from_device = False

    def copy(value: Any) -> Any:
        nonlocal copied_from_device
        if isinstance(value, torch.Tensor):
            if value.device.type == "cpu":
                return value.detach().clone()
            copied_from_device = True
            out = torch.empty_like(value, device="cpu", pin_memory=pin)
            return out.copy_(value.detach(), non_blocking=pin)
        if isinstance(value, Mapping):
            return type(value)((k, copy(v)) for k, v in value.items())
        if isinstance(value, (list, tuple)):
            return type(value)(copy(v) for v in value)
        return value

    out = copy(state)
    if copied_from_device and torch.cuda.is_available():
        torch.cuda.synchronize()  # the non-blocking copies have landed before anyone reads them
    return out


class BackgroundCheckpointWriter:
    """One checkpoint write at a time, in a background thread; errors surface at the next `wait()`."""

    def __init__(self, manager: CheckpointManager):
        self.manager = manager
        self._thread: threading.Thread | None = None
        self._error: BaseException | None = None
        self._step: int | None = None

    @property
    def busy(self) -> bool:
        return self._thread is not None

    def submit(self, state: Mapping[str, Any], step: int) -> None:
        """Write ``state`` (already a snapshot) as the checkpoint of ``step`` in the background."""
        self.wait()
        self._step = step

        def write() -> None:
            try:
                self.manager.save(state, step)
            except BaseException as err:  # re-raised in the training thread by wait()
                self._error = err

        # Not a daemon: an exiting interpreter finishes the write rather than abandoning it.
        self._thread = threading.Thread(target=write, name=f"checkpoint-{step}")
        self._thread.start()

    def wait(self) -> None:
        """Block until the pending write (if any) is done; raise CheckpointError if it failed."""
        if self._thread is None:
            return
        self._thread.join()
        self._thread = None
        if self._error is not None:
            error, self._error = self._error, None
            raise CheckpointError(
                f"writing the checkpoint of step {self._step} in {self.manager.directory} "
                f"failed in the background: {type(error).__name__}: {error}"
            ) from error
