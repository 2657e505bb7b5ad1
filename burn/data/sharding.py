"""Which samples each rank reads, in which order: one definition shared by both backends.

Training (pretraining and linear-eval training): every epoch draws one global permutation from
(seed, epoch), identical on every rank; rank r takes the r-th contiguous block of
``steps_per_epoch * batch_size`` samples. Shards are disjoint, every rank runs the same number of
batches (DDP needs it), and the fewer than ``num_shards * batch_size`` samples left over are skipped
for that epoch only (a different few each epoch), like ``drop_last=True``.

Validation: rank r takes the r-th contiguous slice of the list in its order (sizes differ by at most
one); every sample is visited exactly once over all ranks.
"""

from __future__ import annotations

import numpy as np

from burn.data.errors import DatasetError

_ORDER_STREAM = 0x0D0E  # separates the permutation's random stream from the augmentations'


def steps_per_epoch(num_samples: int, num_shards: int, batch_size: int) -> int:
    """Full batches per rank per epoch, the same on every rank."""
    steps = num_samples // (num_shards * batch_size)
    if steps < 1:
        raise DatasetError(f"{num_samples} samples cannot fill one batch of {batch_size} on each of "
                           f"{num_shards} ranks; use a smaller batch or more data")
    return steps


def train_shard(num_samples: int, *, shard_id: int, num_shards: int, batch_size: int, seed: int,
                epoch: int) -> np.ndarray:
    """Indices (into the sample list) rank ``shard_id`` reads in ``epoch``, in reading order."""
    if not 0 <= shard_id < num_shards:
        raise ValueError(f"shard_id {shard_id} is not in 0..{num_shards - 1}")
    per_rank = steps_per_epoch(num_samples, num_shards, batch_size) * batch_size
    order = np.random.default_rng([seed, epoch, _ORDER_STREAM]).permutation(num_samples)
    return order[shard_id * per_rank:(shard_id + 1) * per_rank]


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
