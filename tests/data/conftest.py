"""Data-test helpers: the tiny preset's data settings pointed at a dataset root."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
from omegaconf import OmegaConf

from burn.config import AugmentConfig, DataConfig


def tiny_data_cfg(root: Path, backend: str = "dali", overrides: dict | None = None):
    """DataConfig of the tiny preset (32-px crops, eval 36/32, one thread), as Hydra passes it (a
    structured DictConfig); ``overrides`` maps dotted keys to values. The pipeline is pinned to the
    CPU, so the CPU tests hold where CUDA is visible; GPU tests override ``device`` to "gpu"."""
    cfg = OmegaConf.structured(
        DataConfig(
            root=str(root),
            backend=backend,
            device="cpu",
            num_threads=1,
            eval_resize=36,
            eval_crop=32,
            aug=AugmentConfig(image_size=32),
        )
    )
    for key, value in (overrides or {}).items():
        OmegaConf.update(cfg, key, value)
    return cfg


@pytest.fixture
def make_cfg():
    return tiny_data_cfg


def garble_middle(data: bytes, seed: int = 0) -> bytes:
    """Overwrite a quarter of the entropy-coded data, in the middle, with random bytes (a bad disk
    block). Without 0xFF bytes no false marker appears, so PIL and DALI decode it without complaint."""
    start_of_scan = data.index(b"\xff\xda")
    length = (len(data) - start_of_scan) // 4
    middle = start_of_scan + (len(data) - start_of_scan - length) // 2
    noise = np.random.default_rng(seed).integers(0, 255, length, dtype=np.uint8).tobytes()
    return data[:middle] + noise + data[middle + length :]


@pytest.fixture
def garble():
    return garble_middle
