"""DALI specifics: why the pre-flight scan exists, and the GPU ("mixed") pipeline when a GPU is there."""

from __future__ import annotations

import shutil

import pytest
import torch

pytest.importorskip("nvidia.dali")  # a GPU node may lack DALI: gpu_check.sh then uses torchvision

from burn.data.check import inspect_image
from burn.data.loaders import build_eval_loader, build_pretrain_loader

# Every test here uses tiny_data, whose set-up runs the dataset generator in a subprocess.
pytestmark = pytest.mark.process


def test_dali_decodes_a_garbled_jpeg_silently(tiny_data, make_cfg, tmp_path, garble):
    """The failure mode only the scan catches: no error, just a damaged image in the batch."""
    root = tmp_path / "ds"
    shutil.copytree(tiny_data, root)
    victim = root / "val" / "c000" / "c000_val_00000.JPEG"
    victim.write_bytes(garble(victim.read_bytes()))
    loader = build_eval_loader(make_cfg(root), split="val", batch_size=16, shard_id=0, num_shards=1, seed=0)
    assert sum(len(labels) for _, labels in loader) == 100
    assert inspect_image(str(victim)).kind == "corrupt"


@pytest.mark.gpu
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU")
@pytest.mark.parametrize("dtype", [torch.float16, torch.float32])
def test_gpu_pipeline_returns_cuda_tensors_and_resumes_exactly(tiny_data, make_cfg, dtype):
    cfg = make_cfg(tiny_data, overrides={"device": "gpu"})
    loader = build_pretrain_loader(cfg, batch_size=16, shard_id=0, num_shards=1, seed=0, dtype=dtype)
    view1, view2 = next(loader)
    assert view1.is_cuda and view1.dtype == dtype and view1.shape == (16, 3, 32, 32)
    assert (view1.float() - view2.float()).abs().mean() > 0.1
    state = loader.state_dict()
    expected = [next(loader) for _ in range(3)]
    resumed = build_pretrain_loader(cfg, batch_size=16, shard_id=0, num_shards=1, seed=0, dtype=dtype, state=state)
    for (a1, a2), (b1, b2) in zip(expected, [next(resumed) for _ in range(3)]):
        assert torch.equal(a1, b1) and torch.equal(a2, b2)
    images, labels = next(iter(build_eval_loader(cfg, split="val", batch_size=16, shard_id=0, num_shards=1, seed=0)))
    assert images.is_cuda and labels.dtype == torch.int64


def test_resume_across_pipeline_boundaries(tiny_data, make_cfg, monkeypatch):
    """With 12 batches per pipeline, positions at, just before and just after a pipeline change."""
    from burn.data.dali import DaliTrainLoader

    monkeypatch.setattr(DaliTrainLoader, "min_batches_per_pipeline", 12)
    cfg = make_cfg(tiny_data)
    args = dict(batch_size=16, shard_id=1, num_shards=2, seed=7)
    loader = build_pretrain_loader(cfg, **args)
    assert loader.batches_per_pipeline == 12 and loader.steps_per_epoch == 12
    reference, states = [], {}
    for step in range(28):
        states[step] = loader.state_dict()
        reference.append(next(loader))
    assert states[12]["pipeline"] == "" and states[13]["pipeline"] != ""  # a fresh pipeline needs no checkpoint
    for step in (0, 11, 12, 13, 24):
        resumed = build_pretrain_loader(cfg, **args, state=states[step])
        assert not resumed.resharded
        for a, b in zip(reference[step : step + 3], [next(resumed) for _ in range(3)]):
            assert torch.equal(a[0], b[0]) and torch.equal(a[1], b[1])
    # Another pipeline length is another layout: the same position, a pipeline (and streams) of its own.
    monkeypatch.setattr(DaliTrainLoader, "min_batches_per_pipeline", 256)
    other = build_pretrain_loader(cfg, **args, state=states[13])
    assert other.resharded and other.position == states[13]["position"]
    next(other)
    assert other.last_indices.tolist() == next_indices(loader, states[13])


def next_indices(loader, state) -> list:
    """Sample indices of the micro-batch that follows ``state`` on ``loader``'s rank."""
    from burn.data.sharding import batch_positions, stream_indices

    positions = batch_positions(
        state["position"], 0, 1, shard_id=loader.shard_id, num_shards=loader.num_shards, batch_size=loader.batch_size
    )
    return stream_indices(len(loader.samples), loader.seed, positions).tolist()
