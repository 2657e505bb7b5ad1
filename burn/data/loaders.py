"""The data API the trainers call: loader factories and dataset validation (generated data: burn/demo).

Backends: ``data.backend=dali`` (default; GPU decoding when CUDA is available, CPU threads otherwise)
or ``torchvision`` (PIL + DataLoader workers; same contract). The backend modules are imported on
first use, so a machine without DALI can use the torchvision backend.
"""

from __future__ import annotations

from typing import Any

import torch

from burn.config import DATA_BACKENDS, DATA_DEVICES
from burn.data.errors import DataError, DatasetError
from burn.data.lists import balanced_subset, resolve_split, validate_dataset

__all__ = [
    "build_pretrain_loader",
    "build_eval_loader",
    "build_subset_eval_loader",
    "validate_dataset",
    "DataError",
    "DatasetError",
    "pipeline_on_gpu",
]


def pipeline_on_gpu(device: str) -> bool:
    """Resolve ``data.device``: "auto" -> GPU when torch sees CUDA; "gpu" insists; "cpu" never."""
    if device == "auto":
        return torch.cuda.is_available()
    if device == "gpu":
        if not torch.cuda.is_available():
            raise DataError("data.device=gpu but torch.cuda.is_available() is False; use data.device=auto or cpu")
        return True
    if device == "cpu":
        return False
    raise ValueError(f"data.device must be {', '.join(DATA_DEVICES[:-1])} or {DATA_DEVICES[-1]}, not {device!r}")


def _backend(data_cfg):
    name = str(data_cfg.backend)
    if name == "dali":
        try:
            from burn.data import dali
        except ImportError as err:
            raise DataError(
                f"data.backend=dali but DALI cannot be imported ({err}); install the build matching "
                f"the GPU driver (pip install -e '.[dali-cuda130]' or '.[dali-cuda120]') or use "
                f"data.backend=torchvision"
            ) from err
        return dali.DaliTrainLoader, dali.DaliValLoader
    if name == "torchvision":
        from burn.data import torchvision_backend

        return torchvision_backend.TorchvisionTrainLoader, torchvision_backend.TorchvisionValLoader
    raise ValueError(f"data.backend must be one of {', '.join(DATA_BACKENDS)}, not {name!r}")


def build_pretrain_loader(
    data_cfg,
    *,
    batch_size: int,
    shard_id: int,
    num_shards: int,
    seed: int,
    dtype: torch.dtype = torch.float32,
    state: dict[str, Any] | None = None,
):
    """Endless two-view stream of this rank's shard of the unlabelled training list.

    ``next(loader)`` -> (view1, view2), each (B, 3, S, S) normalised, of ``dtype``; on the GPU when the
    pipeline runs there. ``loader.steps_per_epoch`` is the same on every rank, ``loader.epoch`` counts
    completed epochs, ``loader.state_dict()`` is the position after the last batch (pass it as
    ``state`` to continue exactly, also in a new process)."""
    train_loader, _ = _backend(data_cfg)
    return train_loader(
        resolve_split(data_cfg, "train"),
        data_cfg,
        kind="pretrain",
        batch_size=batch_size,
        shard_id=shard_id,
        num_shards=num_shards,
        seed=seed,
        dtype=dtype,
        gpu=pipeline_on_gpu(str(data_cfg.device)),
        state=state,
    )


def build_eval_loader(
    data_cfg,
    *,
    split: str = "train",
    batch_size: int,
    shard_id: int,
    num_shards: int,
    seed: int,
    dtype: torch.dtype = torch.float32,
    state: dict[str, Any] | None = None,
):
    """Linear-evaluation data. ``split="train"``: endless, resumable (images, labels) stream with
    RandomResizedCrop + flip (same attributes as the pretraining loader). ``split="val"``: resize +
    center crop; ``loader.num_samples`` is this rank's share, and each ``iter(loader)`` is one pass
    over it, every sample exactly once. Labels are int64 of shape (B,)."""
    train_loader, val_loader = _backend(data_cfg)
    gpu = pipeline_on_gpu(str(data_cfg.device))
    if split == "train":
        return train_loader(
            resolve_split(data_cfg, "train_labeled"),
            data_cfg,
            kind="eval-train",
            batch_size=batch_size,
            shard_id=shard_id,
            num_shards=num_shards,
            seed=seed,
            dtype=dtype,
            gpu=gpu,
            state=state,
        )
    if split == "val":
        if state is not None:
            raise ValueError("the validation loader has no position to restore (state must be None)")
        return val_loader(
            resolve_split(data_cfg, "val"),
            data_cfg,
            batch_size=batch_size,
            shard_id=shard_id,
            num_shards=num_shards,
            seed=seed,
            dtype=dtype,
            gpu=gpu,
        )
    raise ValueError(f"split must be 'train' or 'val', not {split!r}")


def build_subset_eval_loader(
    data_cfg,
    *,
    split: str,
    max_samples: int,
    batch_size: int,
    shard_id: int,
    num_shards: int,
    seed: int,
    dtype: torch.dtype = torch.float32,
):
    """A deterministic pass (resize + center crop, as ``split="val"`` of :func:`build_eval_loader`) over a
    class-balanced subset of at most ``max_samples`` images of ``split`` ("train_labeled" or "val"), for
    monitors. Same iteration contract as the validation loader; it draws no augmentation."""
    if split not in ("train_labeled", "val"):
        raise ValueError(f"split must be 'train_labeled' or 'val', not {split!r}")
    _, val_loader = _backend(data_cfg)
    samples = balanced_subset(resolve_split(data_cfg, split), max_samples)
    return val_loader(
        samples,
        data_cfg,
        batch_size=batch_size,
        shard_id=shard_id,
        num_shards=num_shards,
        seed=seed,
        dtype=dtype,
        gpu=pipeline_on_gpu(str(data_cfg.device)),
    )
