"""How a configured global batch is split over the ranks of a job: per-GPU batch x ranks x accumulation.

The global batch is part of the experiment; the per-GPU batch is what one GPU holds. A job with
another number of ranks (an elastic resume on fewer or more nodes) keeps the global batch and
recomputes the accumulation; when the configured per-GPU batch does not divide the global batch
over that many ranks, the largest smaller one that does is used. Pure Python: launch/submit.py
checks this before torch is imported.
"""

from __future__ import annotations

from typing import Any, NamedTuple

from burn.runtime.errors import UsageError


class BatchSplitError(UsageError):
    """The global batch cannot be split over the job's ranks (the one check and message of it)."""


class BatchSplit(NamedTuple):
    per_gpu: int
    """Images per rank per forward pass (at most the configured per-GPU batch)."""
    accumulation: int
    """Micro-batches per optimizer step."""


def split_global_batch(global_batch: int, per_gpu_batch: int, world_size: int, section: str = "train") -> BatchSplit:
    """per_gpu x world_size x accumulation == global_batch with the largest per_gpu <= per_gpu_batch.

    Raises BatchSplitError (a UsageError, one line naming ``<section>.global_batch``) when none exists:
    the global batch is not a multiple of the ranks."""
    if global_batch < 1 or per_gpu_batch < 1 or world_size < 1 or global_batch % world_size:
        raise BatchSplitError(
            f"{section}.global_batch={global_batch} cannot be split over {world_size} ranks (nodes x gpus_per_node): "
            f"no per-GPU batch up to {section}.per_gpu_batch={per_gpu_batch} gives per-GPU batch x {world_size} x "
            f"accumulation = {global_batch}"
        )
    per_rank = global_batch // world_size
    per_gpu = next(b for b in range(min(per_gpu_batch, per_rank), 0, -1) if per_rank % b == 0)
    return BatchSplit(per_gpu, per_rank // per_gpu)


def split_stage_batch(stage_cfg: Any, world_size: int) -> BatchSplit:
    """The split of a stage config's batch: ``linear.*`` for stage=linear, ``finetune.*`` for stage=finetune,
    ``train.*`` otherwise."""
    section = str(stage_cfg.stage) if str(stage_cfg.stage) in ("linear", "finetune") else "train"
    return split_global_batch(stage_cfg[section].global_batch, stage_cfg[section].per_gpu_batch, world_size, section)
