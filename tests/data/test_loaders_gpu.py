"""The loader contract on the GPU, on both backends: CUDA batches of the right dtype and layout that
resume exactly. Skipped without a GPU (the CPU variants are in test_loaders.py)."""

from __future__ import annotations

import pytest
import torch

from burn.data.loaders import build_eval_loader, build_pretrain_loader

# process: tiny_data runs the dataset generator in a subprocess, and the torchvision loader starts workers.
pytestmark = [
    pytest.mark.gpu,
    pytest.mark.process,
    pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU"),
]


@pytest.mark.parametrize("backend", ["dali", "torchvision"])
def test_gpu_batches_are_cuda_and_resume_exactly(tiny_data, make_cfg, backend):
    if backend == "dali":
        pytest.importorskip("nvidia.dali")
    cfg = make_cfg(tiny_data, backend, {"device": "gpu"})
    args = dict(batch_size=16, shard_id=0, num_shards=2, seed=0, dtype=torch.float16)
    loader = build_pretrain_loader(cfg, **args)
    view1, view2 = next(loader)
    for view in (view1, view2):
        assert view.is_cuda and view.dtype == torch.float16 and view.shape == (16, 3, 32, 32)
        assert torch.isfinite(view.float()).all() and view.float().std() > 0.3
    state = loader.state_dict()
    expected = [next(loader) for _ in range(3)]
    resumed = build_pretrain_loader(cfg, **args, state=state)
    for (a1, a2), (b1, b2) in zip(expected, [next(resumed) for _ in range(3)]):
        assert torch.equal(a1, b1) and torch.equal(a2, b2)
    images, labels = next(iter(build_eval_loader(cfg, split="val", batch_size=16, shard_id=0, num_shards=1, seed=0)))
    assert images.is_cuda and labels.dtype == torch.int64 and labels.shape == (16,)


def test_dali_gpu_views_are_channels_last(tiny_data, make_cfg):
    """NHWC out of DALI, seen by torch as NCHW with channels_last strides: the model needs no copy."""
    pytest.importorskip("nvidia.dali")
    loader = build_pretrain_loader(
        make_cfg(tiny_data, "dali", {"device": "gpu"}),
        batch_size=16,
        shard_id=0,
        num_shards=1,
        seed=0,
        dtype=torch.float16,
    )
    view1, _ = next(loader)
    assert view1.shape == (16, 3, 32, 32) and view1.is_contiguous(memory_format=torch.channels_last)
