"""The loader contract, on both backends (DALI on CPU threads here, and the torchvision fallback):
batches, sharding, exact resume in a new process, validation passes, decode failures."""

from __future__ import annotations

import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from burn.data.errors import DataError
from burn.data.loaders import build_eval_loader, build_pretrain_loader

REPO = Path(__file__).resolve().parents[2]
BACKENDS = ["dali", "torchvision"]
MEAN, STD = torch.tensor([0.485, 0.456, 0.406]), torch.tensor([0.229, 0.224, 0.225])
#: Normalised values of black and white pixels per channel.
LOW, HIGH = (-MEAN / STD).view(1, 3, 1, 1), ((1 - MEAN) / STD).view(1, 3, 1, 1)


def _pretrain(cfg, **kwargs):
    return build_pretrain_loader(cfg, **{"batch_size": 16, "shard_id": 0, "num_shards": 2, "seed": 0, **kwargs})


@pytest.mark.process
@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize("dtype", [torch.float32, torch.float16])
def test_pretrain_batches(tiny_data, make_cfg, backend, dtype):
    loader = _pretrain(make_cfg(tiny_data, backend), dtype=dtype)
    view1, view2 = next(loader)
    for view in (view1, view2):
        assert view.shape == (16, 3, 32, 32) and view.dtype == dtype and view.device.type == "cpu"
        values = view.float()
        assert torch.isfinite(values).all()
        assert (values >= LOW - 0.01).all() and (values <= HIGH + 0.01).all()
        assert values.std() > 0.3  # images, not constants
    assert (view1.float() - view2.float()).abs().mean() > 0.1  # independently augmented views
    assert len(loader.last_indices) == 16 and len(set(loader.last_indices.tolist())) == 16


@pytest.mark.process
@pytest.mark.parametrize("backend", BACKENDS)
def test_two_ranks_cover_an_epoch_exactly_once(tiny_data, make_cfg, backend):
    cfg = make_cfg(tiny_data, backend)
    ranks = [_pretrain(cfg, shard_id=r, batch_size=16) for r in range(2)]
    assert [r.steps_per_epoch for r in ranks] == [12, 12]  # 400 // (2 * 16)
    read = {}
    for _ in range(25):  # 2 x 25 x 16 = 800: two epochs, nothing left over
        for loader in ranks:
            next(loader)
            read.update(zip(loader.last_positions.tolist(), loader.last_indices.tolist()))
    assert sorted(read) == list(range(800)) and [r.epoch for r in ranks] == [2, 2]
    first, second = [[read[p] for p in range(e * 400, (e + 1) * 400)] for e in (0, 1)]
    assert sorted(first) == sorted(second) == list(range(400))  # every sample once per epoch
    assert first != second  # reshuffled


@pytest.mark.process
@pytest.mark.parametrize("backend", BACKENDS)
def test_another_rank_count_continues_the_global_position(tiny_data, make_cfg, backend):
    """2 ranks, then 1 rank with a larger batch, then 3 ranks: one stream, every sample of each epoch
    exactly once, none twice, none skipped."""
    cfg = make_cfg(tiny_data, backend)
    read = {}

    def take(loaders, batches):
        for _ in range(batches):
            for loader in loaders:
                next(loader)
                for position, index in zip(loader.last_positions.tolist(), loader.last_indices.tolist()):
                    assert position not in read, position
                    read[position] = index

    two = [_pretrain(cfg, shard_id=r, batch_size=8) for r in range(2)]
    take(two, 10)
    (one,) = ones = [_pretrain(cfg, shard_id=0, num_shards=1, batch_size=16, state=two[0].state_dict())]
    assert one.resharded and one.position == 160 and not two[0].resharded
    take(ones, 30)  # across the epoch boundary at 400
    three = [_pretrain(cfg, shard_id=r, num_shards=3, batch_size=8, state=one.state_dict()) for r in range(3)]
    take(three, 10)
    assert three[0].position == 880 == len(read) and sorted(read) == list(range(880))
    for epoch in (0, 1):
        assert sorted(read[p] for p in range(epoch * 400, (epoch + 1) * 400)) == list(range(400))


@pytest.mark.process
def test_both_backends_read_the_same_samples_in_the_same_order(tiny_data, make_cfg):
    orders = []
    for backend in BACKENDS:
        loader = _pretrain(make_cfg(tiny_data, backend), shard_id=1)
        batches = []
        for _ in range(14):  # across the epoch boundary
            next(loader)
            batches.append(loader.last_indices.tolist())
        orders.append(batches)
    assert orders[0] == orders[1]


_RESUME_SCRIPT = """
import sys, torch
sys.path.insert(0, {tests!r})
from conftest import tiny_data_cfg
from burn.data.loaders import build_pretrain_loader, build_eval_loader
states = torch.load(sys.argv[1], weights_only=True)
out = []
for kind, state in states:
    cfg = tiny_data_cfg({root!r}, {backend!r})
    args = dict(batch_size=16, shard_id=0, num_shards=2, seed=0, state=state)
    loader = build_pretrain_loader(cfg, **args) if kind == "pretrain" else build_eval_loader(cfg, split="train", **args)
    out.append([next(loader) for _ in range(4)])
torch.save(out, sys.argv[2])
"""


@pytest.mark.process
@pytest.mark.parametrize("backend", BACKENDS)
def test_resume_in_a_new_process_is_bit_exact(tiny_data, make_cfg, backend, tmp_path):
    cfg = make_cfg(tiny_data, backend)
    args = dict(batch_size=16, shard_id=0, num_shards=2, seed=0)
    pretrain = build_pretrain_loader(cfg, **args)
    reference, states = [], []
    for step in range(17):
        if step in (5, 12):  # mid-epoch, and right at the end of epoch 0
            states.append(("pretrain", pretrain.state_dict()))
        reference.append(next(pretrain))
    evaluation = build_eval_loader(cfg, split="train", **args)
    for _ in range(3):
        next(evaluation)
    states.append(("eval", evaluation.state_dict()))
    eval_reference = [next(evaluation) for _ in range(4)]
    torch.save(states, tmp_path / "states.pt")
    script = _RESUME_SCRIPT.format(tests=str(Path(__file__).parent), root=str(tiny_data), backend=backend)
    subprocess.run(
        [sys.executable, "-c", script, str(tmp_path / "states.pt"), str(tmp_path / "out.pt")],
        cwd=REPO,
        check=True,
        timeout=300,
    )
    resumed = torch.load(tmp_path / "out.pt", weights_only=True)
    for expected, got in zip([reference[5:9], reference[12:16], eval_reference], resumed):
        for (a1, a2), (b1, b2) in zip(expected, got):
            assert torch.equal(a1, b1) and torch.equal(a2, b2)


@pytest.mark.process
@pytest.mark.parametrize("backend", BACKENDS)
def test_state_of_another_run_is_refused(tiny_data, make_cfg, backend):
    cfg = make_cfg(tiny_data, backend)
    loader = _pretrain(cfg)
    next(loader)
    with pytest.raises(DataError, match="seed=0 but this loader has seed=1"):
        _pretrain(cfg, seed=1, state=loader.state_dict())
    old = {**loader.state_dict(), "version": 1}
    with pytest.raises(DataError, match="version 1 is not 2"):
        _pretrain(cfg, state=old)


@pytest.mark.process
@pytest.mark.parametrize("backend", BACKENDS)
def test_eval_train_yields_labels_of_the_samples(tiny_data, make_cfg, backend):
    loader = build_eval_loader(
        make_cfg(tiny_data, backend), split="train", batch_size=16, shard_id=1, num_shards=2, seed=3
    )
    images, labels = next(loader)
    assert images.shape == (16, 3, 32, 32) and images.dtype == torch.float32
    assert labels.dtype == torch.int64 and labels.shape == (16,)
    expected = [loader.samples.labels[i] for i in loader.last_indices]
    assert labels.tolist() == expected
    assert all(loader.samples.paths[i].startswith(f"c{label:03d}/") for i, label in zip(loader.last_indices, expected))


@pytest.mark.process
@pytest.mark.parametrize("backend", BACKENDS)
def test_validation_visits_every_sample_once(tiny_data, make_cfg, backend):
    cfg = make_cfg(tiny_data, backend)
    loaders = [build_eval_loader(cfg, split="val", batch_size=16, shard_id=r, num_shards=3, seed=0) for r in range(3)]
    assert sorted(v.num_samples for v in loaders) == [33, 33, 34]
    seen, first_pass = [], None
    for loader in loaders:
        count = 0
        for images, labels in loader:
            assert images.shape[1:] == (3, 32, 32) and labels.dtype == torch.int64 and labels.dim() == 1
            assert labels.tolist() == [loader.samples.labels[i] for i in loader.last_indices]
            seen.extend(loader.last_indices.tolist())
            count += len(labels)
            first_pass = images if first_pass is None else first_pass
        assert count == loader.num_samples
    assert sorted(seen) == list(range(100))
    again = next(iter(loaders[0]))[0]
    assert torch.equal(again, first_pass)  # another pass, same deterministic images


@pytest.mark.process
@pytest.mark.parametrize("backend", BACKENDS)
def test_decode_failure_names_the_file(tiny_data, make_cfg, backend, tmp_path):
    root = tmp_path / "ds"
    shutil.copytree(tiny_data, root)
    loader = _pretrain(make_cfg(root, backend))
    victim = loader.samples.paths[int(loader.indices(2)[8])]  # read in the third batch of epoch 0
    data = (root / "train" / victim).read_bytes()
    (root / "train" / victim).write_bytes(data[: len(data) // 2])
    loader = _pretrain(make_cfg(root, backend))
    with pytest.raises(DataError) as error:
        for _ in range(loader.steps_per_epoch):
            next(loader)
    message = str(error.value)
    assert str(root / "train" / victim) in message and "truncated" in message
    assert "python -m burn.data.check" in message and "train.txt" in message


def _unnormalized(view: torch.Tensor) -> torch.Tensor:
    """Back to 0..255 pixel values."""
    return (view.float() * STD.view(1, 3, 1, 1) + MEAN.view(1, 3, 1, 1)) * 255


def _roughness(view: torch.Tensor) -> float:
    pixels = _unnormalized(view)
    return (pixels[..., 1:] - pixels[..., :-1]).abs().mean().item()


@pytest.mark.process
@pytest.mark.parametrize("backend", BACKENDS)
def test_recipe_switches(tiny_data, make_cfg, backend):
    plain = {"aug.jitter_prob": 0.0, "aug.grayscale_prob": 0.0, "aug.blur_prob": 0.0, "aug.solarize_prob": 0.0}
    gray = next(_pretrain(make_cfg(tiny_data, backend, {**plain, "aug.grayscale_prob": 1.0})))[0]
    channels = _unnormalized(gray)
    assert (channels[:, 0] - channels[:, 1]).abs().max() < 1.5 and (channels[:, 1] - channels[:, 2]).abs().max() < 1.5
    solarized = next(_pretrain(make_cfg(tiny_data, backend, {**plain, "aug.solarize_prob": 1.0})))[0]
    assert _unnormalized(solarized).max() < 128.5  # every value >= 128 was inverted
    sharp = next(_pretrain(make_cfg(tiny_data, backend, plain)))[0]
    blurred = next(
        _pretrain(make_cfg(tiny_data, backend, {**plain, "aug.blur_prob": 1.0, "aug.blur_sigma": [2.0, 2.0]}))
    )[0]
    assert _roughness(blurred) < 0.6 * _roughness(sharp)
    assert _unnormalized(sharp).max() > 200  # the checks above are not trivially met


def test_pipeline_device_follows_configuration():
    from burn.data.loaders import pipeline_on_gpu

    assert pipeline_on_gpu("auto") == torch.cuda.is_available()
    assert pipeline_on_gpu("cpu") is False
    if not torch.cuda.is_available():
        with pytest.raises(DataError, match="data.device=gpu"):
            pipeline_on_gpu("gpu")
    with pytest.raises(ValueError, match="auto, gpu or cpu"):
        pipeline_on_gpu("tpu")
