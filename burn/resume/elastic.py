"""Elastic resume: continuing a stage's checkpoint with another number of ranks.

What carries over exactly: model, optimizer, schedules, grad scaler, step, and the *global* data
position (burn.data.sharding: every sample of every epoch is read once, whatever the ranks). What
cannot: each rank's RNG and augmentation streams belong to its rank of the old layout, so they are
re-derived from (seed, rank, world size, step) for the new one. The run is then a deterministic
function of its history of world sizes, not bit-identical to an uninterrupted run; a resume on the
same number of ranks still is.
"""

from __future__ import annotations

import random
from typing import Any

import numpy as np
import torch

from burn.data.sharding import derive_seed
from burn.resume.checkpoint import CheckpointError

_RNG_STREAM = 0xE1A5  # separates the re-derived process RNG from every other derived seed


def data_state_for(states: list[dict[str, Any]], rank: int, world_size: int) -> dict[str, Any] | None:
    """This rank's data state: its own when the rank count is unchanged; otherwise the shared global
    position (any rank's state: the loader notices the other layout and re-shards the rest)."""
    if len(states) == world_size:
        return states[rank]
    positions = {state.get("position") for state in states}
    if len(positions) != 1:
        raise CheckpointError(
            f"the checkpoint's {len(states)} data states disagree on the global position "
            f"({sorted(map(str, positions))}); it cannot be continued on {world_size} ranks"
        )
    return states[0]


def reseed(seed: int, rank: int, world_size: int, step: int) -> None:
    """Deterministic process RNG streams (python, numpy, torch) for this rank of the new layout."""
    derived = derive_seed(seed, rank, world_size, step, _RNG_STREAM)
    random.seed(derived)
    np.random.seed(derived)
    torch.manual_seed(derived)


def change_note(step: int, old: int, new: int) -> dict[str, int]:
    """One entry of progress.json's ``world_size_changes`` (and the checkpoint's)."""
    return {"step": step, "from": old, "to": new}


def resume_message(
    path: str, step: int, old: int, new: int, loader, global_batch: int, per_gpu: int, accumulation: int
) -> str:
    samples = len(loader.samples)
    return (
        f"elastic resume: {path} was written by {old} ranks, this job has {new}. Model, optimizer, "
        f"schedules, grad scaler and step {step} carry over; the data continue at global sample "
        f"{loader.position % samples} of {samples} in epoch {loader.epoch}; global batch {global_batch} = "
        f"{new} ranks x {per_gpu} x {accumulation} accumulation; per-rank augmentation and RNG streams are "
        f"re-derived for {new} ranks, so from here the run is not bit-identical to an uninterrupted one."
    )
