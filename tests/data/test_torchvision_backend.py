"""torchvision fallback specifics: augmentation depends on (seed, epoch, sample) only."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from burn.data.loaders import build_pretrain_loader
from burn.data.torchvision_backend import random_resized_crop_box


@pytest.mark.process
def test_batches_do_not_depend_on_the_worker_count(tiny_data, make_cfg):
    batches = []
    for workers in (0, 2):
        loader = build_pretrain_loader(
            make_cfg(tiny_data, "torchvision", {"num_threads": workers}), batch_size=8, shard_id=0, num_shards=1, seed=4
        )
        batches.append([next(loader) for _ in range(3)])
    for (a1, a2), (b1, b2) in zip(*batches):
        assert torch.equal(a1, b1) and torch.equal(a2, b2)


def test_random_resized_crop_box_stays_inside_and_in_scale():
    rng = np.random.default_rng(0)
    for _ in range(200):
        top, left, h, w = random_resized_crop_box(rng, 64, 48, (0.08, 1.0))
        assert top >= 0 and top + h <= 48 and left >= 0 and left + w <= 64
        assert 0.07 * 64 * 48 <= h * w <= 64 * 48
        assert 3 / 4 - 0.1 <= w / h <= 4 / 3 + 0.1 or h * w == 48 * 48
