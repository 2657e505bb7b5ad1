"""Position keeping shared by both backends: an endless stream of training batches whose place can be
saved after any batch and restored exactly, in this process or a new one, or continued by a job with
another number of ranks (see :mod:`burn.data.sharding`: the position is global)."""

from __future__ import annotations

import base64
from typing import Any

import numpy as np
import torch

from burn.data.errors import DataError
from burn.data.lists import SampleList
from burn.data.sharding import batch_positions, steps_per_epoch, stream_indices

STATE_FORMAT = "burn-suite/data-loader"
STATE_VERSION = 2
"""2: one global stream position (version 1 kept a position per rank's own shard)."""


class ResumableLoader:
    """Yields batches forever, crossing epochs (each a fresh global shuffle). ``state_dict()`` captures
    the position after the last batch returned; a loader built with that state and the same rank
    layout yields exactly the batches that would have come next. A loader with another layout (rank
    count, rank, batch size) continues from the same global position with its own shard of the rest.

    Attributes: ``steps_per_epoch`` (full micro-batches per rank in an epoch's worth of samples, for
    schedules), ``position`` (samples all ranks together have read), ``epoch`` (completed epochs),
    ``resharded`` (this loader continues a position another layout wrote), ``samples``,
    ``last_indices`` and ``last_positions`` (sample indices and stream positions of the last batch).
    Backends implement ``_next_batch`` and ``_pipeline_checkpoint``; ``layout`` adds backend settings
    that a state must match to be continued exactly."""

    backend = "?"

    def __init__(
        self,
        samples: SampleList,
        *,
        kind: str,
        batch_size: int,
        shard_id: int,
        num_shards: int,
        seed: int,
        state: dict[str, Any] | None,
        layout: dict[str, int] | None = None,
    ):
        self.samples = samples
        self.batch_size, self.shard_id, self.num_shards, self.seed = batch_size, shard_id, num_shards, seed
        self.steps_per_epoch = steps_per_epoch(len(samples), num_shards, batch_size)
        self._identity = {"backend": self.backend, "kind": kind, "num_samples": len(samples), "seed": seed}
        self._layout = {"num_shards": num_shards, "shard_id": shard_id, "batch_size": batch_size, **(layout or {})}
        self.resharded = False
        self.position, self.start, self._restored_checkpoint = self._read_state(state)
        self.last_indices: np.ndarray | None = None
        self.last_positions: np.ndarray | None = None
        self._labels = None if samples.labels is None else np.asarray(samples.labels, dtype=np.int64)

    # ---- backend hooks -------------------------------------------------------------------------------
    def _next_batch(self) -> tuple[tuple[torch.Tensor, ...], np.ndarray]:
        raise NotImplementedError

    def _pipeline_checkpoint(self) -> bytes:
        """Backend state needed besides the position to continue exactly; b"" when none."""
        return b""

    # ---- the stream ----------------------------------------------------------------------------------
    @property
    def epoch(self) -> int:
        return self.position // len(self.samples)

    @property
    def batches_read(self) -> int:
        """Micro-batches this rank read since ``start`` (where this layout began reading)."""
        return (self.position - self.start) // (self.num_shards * self.batch_size)

    def positions(self, batch: int, count: int = 1) -> np.ndarray:
        """Stream positions of this rank's micro-batches ``batch .. batch+count-1`` (from ``start``)."""
        return batch_positions(
            self.start, batch, count, shard_id=self.shard_id, num_shards=self.num_shards, batch_size=self.batch_size
        )

    def indices(self, batch: int, count: int = 1) -> np.ndarray:
        """Sample indices of this rank's micro-batches ``batch .. batch+count-1``, in reading order."""
        return stream_indices(len(self.samples), self.seed, self.positions(batch, count))

    def __iter__(self) -> ResumableLoader:
        return self

    def __next__(self) -> tuple[torch.Tensor, ...]:
        outputs, indices = self._next_batch()
        self.last_positions = self.positions(self.batches_read)
        self.last_indices = indices
        self.position += self.num_shards * self.batch_size
        return outputs

    def labels_of(self, indices: np.ndarray) -> torch.Tensor:
        """Class labels (int64, shape (B,)) of the given sample indices."""
        if self._labels is None:
            raise DataError(f"{self.samples.source} has no labels")
        return torch.from_numpy(self._labels[indices])

    def state_dict(self) -> dict[str, Any]:
        """Position after the last returned batch: a dict of ints and strings (``torch.load`` with
        ``weights_only=True`` reads it)."""
        checkpoint = self._pipeline_checkpoint()
        # Text, not bytes: torch.save's pickle protocol 2 stores bytes as a global call that
        # torch.load(weights_only=True) refuses.
        return {
            "format": STATE_FORMAT,
            "version": STATE_VERSION,
            **self._identity,
            **self._layout,
            "position": self.position,
            "start": self.start,
            "epoch": self.epoch,
            "pipeline": base64.b64encode(checkpoint).decode("ascii"),
        }

    def _read_state(self, state: dict[str, Any] | None) -> tuple[int, int, bytes]:
        """(position, start, pipeline checkpoint) to continue from."""
        if state is None:
            return 0, 0, b""
        if not isinstance(state, dict) or state.get("format") != STATE_FORMAT:
            raise DataError(f"not a data loader state (expected a dict with format={STATE_FORMAT!r})")
        if state.get("version") != STATE_VERSION:
            raise DataError(
                f"data loader state version {state.get('version')!r} is not {STATE_VERSION} (an "
                f"older burn-suite kept per-rank positions); start the stage in a new run_dir"
            )
        for key, value in self._identity.items():
            if state.get(key) != value:
                raise DataError(
                    f"the saved data loader state has {key}={state.get(key)!r} but this loader has "
                    f"{key}={value!r}: its position cannot be continued. Keep the data, seed and "
                    f"backend of the run, or start the loader afresh (state=None)."
                )
        position, start = int(state["position"]), int(state["start"])
        if not 0 <= start <= position:
            raise DataError(f"data loader state position {position} (start {start}) is out of range")
        if any(state.get(key) != value for key, value in self._layout.items()):
            # Another rank layout: this rank's shard of the rest of the stream, from the same position.
            self.resharded = True
            return position, position, b""
        try:
            checkpoint = base64.b64decode(state.get("pipeline", ""), validate=True)
        except (TypeError, ValueError) as err:
            raise DataError(f"data loader state has an unreadable pipeline checkpoint ({err})") from err
        return position, start, checkpoint
