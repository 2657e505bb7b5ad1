"""Which samples each rank reads, in which order: one definition shared by both backends.

Training (pretraining and linear-eval training) reads one endless *global stream*: epoch e is a
permutation of the sample list drawn from (seed, e), identical on every rank, and the stream is these
permutations one after the other. Stream position p holds sample ``permutation(p // N)[p % N]``,
whatever the number of ranks. The ranks read it together, one micro-batch each at a time: micro-batch
k of rank r (counted from where this rank layout started reading, ``start``) holds positions
``start + k*W*B + r*B ... + B - 1``. So the ranks together always have read a prefix of the stream,
``position`` samples: a job with another number of ranks continues from that position and every
sample of every epoch is read exactly once, none twice, none skipped. A micro-batch may straddle two
epochs.

Validation: rank r takes the r-th contiguous slice of the list in its order (sizes differ by at most
one); every sample is visited exactly once over all ranks.
"""

from __future__ import annotations

from functools import lru_cache

import numpy as np

from burn.data.errors import DatasetError

_ORDER_STREAM = 0x0D0E  # separates the permutation's random stream from the augmentations'


def steps_per_epoch(num_samples: int, num_shards: int, batch_size: int) -> int:
    """Full micro-batches per rank in one epoch's worth of samples (for schedules)."""
    steps = num_samples // (num_shards * batch_size)
    if steps < 1:
        raise DatasetError(
            f"{num_samples} samples cannot fill one batch of {batch_size} on each of "
            f"{num_shards} ranks; use a smaller batch or more data"
        )
    return steps


@lru_cache(maxsize=4)
def epoch_order(num_samples: int, seed: int, epoch: int) -> np.ndarray:
    """The permutation of ``epoch`` (read-only; cached: consecutive batches share it)."""
    order = np.random.default_rng([seed, epoch, _ORDER_STREAM]).permutation(num_samples)
    order.flags.writeable = False
    return order


def stream_indices(num_samples: int, seed: int, positions: np.ndarray) -> np.ndarray:
    """Sample indices at the given global stream positions."""
    positions = np.asarray(positions, dtype=np.int64)
    epochs, offsets = np.divmod(positions, num_samples)
    out = np.empty_like(positions)
    for epoch in np.unique(epochs):
        where = epochs == epoch
        out[where] = epoch_order(num_samples, seed, int(epoch))[offsets[where]]
    return out


def batch_positions(
    start: int, batch: int, count: int, *, shard_id: int, num_shards: int, batch_size: int
) -> np.ndarray:
    """Stream positions of rank ``shard_id``'s micro-batches ``batch .. batch+count-1`` (counted from
    ``start``), concatenated in reading order."""
    if not 0 <= shard_id < num_shards:
        raise ValueError(f"shard_id {shard_id} is not in 0..{num_shards - 1}")
    firsts = start + (batch + np.arange(count, dtype=np.int64)) * num_shards * batch_size + shard_id * batch_size
    return (firsts[:, None] + np.arange(batch_size, dtype=np.int64)).reshape(-1)


def eval_shard(num_samples: int, *, shard_id: int, num_shards: int) -> np.ndarray:
    """Indices rank ``shard_id`` evaluates: its contiguous slice, in list order."""
    if not 0 <= shard_id < num_shards:
        raise ValueError(f"shard_id {shard_id} is not in 0..{num_shards - 1}")
    start = num_samples * shard_id // num_shards
    stop = num_samples * (shard_id + 1) // num_shards
    return np.arange(start, stop)


def derive_seed(*parts: int) -> int:
    """A 31-bit seed from integers (seed, rank, epoch, ...): distinct streams for distinct tuples."""
    return int(np.random.SeedSequence([int(p) for p in parts]).generate_state(1)[0] & 0x7FFFFFFF)
