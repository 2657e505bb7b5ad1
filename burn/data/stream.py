"""Position keeping shared by both backends: an endless stream of training batches whose place can be
saved after any batch and restored exactly, in this process or a new one."""

from __future__ import annotations

import base64
from typing import Any, Dict, Optional, Tuple

import numpy as np
import torch

from burn.data.errors import DataError
from burn.data.lists import SampleList
from burn.data.sharding import steps_per_epoch, train_shard

STATE_FORMAT = "burn-suite/data-loader"
STATE_VERSION = 1


class ResumableLoader:
    """Yields batches forever, crossing epochs (each with a fresh global shuffle, see
    :mod:`burn.data.sharding`). ``state_dict()`` captures the position after the last batch returned;
    a loader built with that state yields exactly the batches that would have come next.

    Attributes: ``steps_per_epoch`` (same on every rank), ``epoch`` (completed epochs),
    ``samples`` (the SampleList read), ``last_indices`` (indices into ``samples`` of the last batch).
    Backends implement ``_next_batch``, ``_pipeline_checkpoint`` and ``_end_epoch``; ``layout`` adds
    backend settings that a state must match to be continued exactly."""

    backend = "?"

    def __init__(self, samples: SampleList, *, kind: str, batch_size: int, shard_id: int, num_shards: int,
                 seed: int, state: Optional[Dict[str, Any]], layout: Optional[Dict[str, int]] = None):
        self.samples = samples
        self.batch_size, self.shard_id, self.num_shards, self.seed = batch_size, shard_id, num_shards, seed
        self.steps_per_epoch = steps_per_epoch(len(samples), num_shards, batch_size)
        self._identity = {"backend": self.backend, "kind": kind, "num_samples": len(samples),
                          "num_shards": num_shards, "shard_id": shard_id, "batch_size": batch_size, "seed": seed,
                          **(layout or {})}
        self.epoch, self._step, self._restored_checkpoint = self._read_state(state)
        self.last_indices: Optional[np.ndarray] = None
        self._labels = None if samples.labels is None else np.asarray(samples.labels, dtype=np.int64)

    # ---- backend hooks -------------------------------------------------------------------------------
    def _next_batch(self) -> Tuple[Tuple[torch.Tensor, ...], np.ndarray]:
        raise NotImplementedError

    def _pipeline_checkpoint(self) -> bytes:
        """Backend state needed besides (epoch, step) to continue exactly; b"" when none."""
        return b""

    def _end_epoch(self) -> None:
        """Called after the last batch of an epoch was returned."""

    # ---- the stream ----------------------------------------------------------------------------------
    def shard_order(self, epoch: int) -> np.ndarray:
        """Indices this rank reads in ``epoch``, in order (batch j is ``[j*B:(j+1)*B]``)."""
        return train_shard(len(self.samples), shard_id=self.shard_id, num_shards=self.num_shards,
                           batch_size=self.batch_size, seed=self.seed, epoch=epoch)

    def __iter__(self) -> "ResumableLoader":
        return self

    def __next__(self) -> Tuple[torch.Tensor, ...]:
        outputs, indices = self._next_batch()
        self.last_indices = indices
        self._step += 1
        if self._step == self.steps_per_epoch:
            self.epoch, self._step = self.epoch + 1, 0
            self._end_epoch()
        return outputs

    def labels_of(self, indices: np.ndarray) -> torch.Tensor:
        """Class labels (int64, shape (B,)) of the given sample indices."""
        if self._labels is None:
            raise DataError(f"{self.samples.source} has no labels")
        return torch.from_numpy(self._labels[indices])

    def state_dict(self) -> Dict[str, Any]:
        """Position after the last returned batch: a dict of ints and strings (``torch.load`` with
        ``weights_only=True`` reads it)."""
        checkpoint = self._pipeline_checkpoint()
        # Text, not bytes: torch.save's pickle protocol 2 stores bytes as a global call that
        # torch.load(weights_only=True) refuses.
        return {"format": STATE_FORMAT, "version": STATE_VERSION, **self._identity, "epoch": self.epoch,
                "step": self._step, "pipeline": base64.b64encode(checkpoint).decode("ascii")}

    def _read_state(self, state: Optional[Dict[str, Any]]) -> Tuple[int, int, bytes]:
        if state is None:
            return 0, 0, b""
        if not isinstance(state, dict) or state.get("format") != STATE_FORMAT:
            raise DataError(f"not a data loader state (expected a dict with format={STATE_FORMAT!r})")
        if state.get("version") != STATE_VERSION:
            raise DataError(f"data loader state version {state.get('version')!r} is not {STATE_VERSION}")
        for key, value in self._identity.items():
            if state.get(key) != value:
                raise DataError(f"the saved data loader state has {key}={state.get(key)!r} but this loader has "
                                f"{key}={value!r}: its position cannot be continued exactly. Keep the "
                                f"data, batch size, rank count, seed and backend of the run, or start the "
                                f"loader afresh (state=None).")
        epoch, step = int(state["epoch"]), int(state["step"])
        if epoch < 0 or not 0 <= step < self.steps_per_epoch:
            raise DataError(f"data loader state position epoch={epoch} step={step} is out of range "
                            f"(0..{self.steps_per_epoch - 1} steps per epoch)")
        try:
            checkpoint = base64.b64decode(state.get("pipeline", ""), validate=True)
        except (TypeError, ValueError) as err:
            raise DataError(f"data loader state has an unreadable pipeline checkpoint ({err})") from err
        return epoch, step, checkpoint

