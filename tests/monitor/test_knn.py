"""The online k-NN monitor on the real generated dataset, a real student and both data backends: it
reads the capped labelled splits and leaves training exactly as it found it."""

from __future__ import annotations

import os
import random
import socket

import numpy as np
import pytest
import torch
import torch.distributed as dist
import torch.multiprocessing as mp
from omegaconf import OmegaConf

from burn.config import AugmentConfig, DataConfig, MonitorConfig
from burn.data.errors import DatasetError
from burn.engine.distributed import DistInfo
from burn.models.reactnet import ReActNetA
from burn.monitor.knn import KnnMonitor

LONE = DistInfo(rank=0, world_size=1, local_rank=0, device=torch.device("cpu"), backend=None)


def _data_cfg(root, backend: str):
    return OmegaConf.structured(
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


def _monitor(root, backend="dali", **overrides) -> KnnMonitor:
    cfg = OmegaConf.structured(MonitorConfig(knn_every=5, knn_batch=64, **overrides))
    return KnnMonitor(cfg, _data_cfg(root, backend), LONE, seed=0, dtype=torch.float32)


def _draws() -> tuple:
    return random.random(), float(np.random.rand()), torch.rand(3)


@pytest.mark.process
@pytest.mark.parametrize("backend", ["dali", "torchvision"])
def test_monitor_leaves_rng_mode_and_statistics_untouched(tiny_data, backend):
    monitor = _monitor(tiny_data, backend, knn_bank_size=120, knn_query_size=50)
    student = ReActNetA("binact", width=0.25).train()
    buffers = {k: v.clone() for k, v in student.state_dict().items()}

    torch.manual_seed(3), np.random.seed(3), random.seed(3)
    expected = _draws()
    torch.manual_seed(3), np.random.seed(3), random.seed(3)
    result = monitor(student)
    after = _draws()
    # The next random numbers are those training would have drawn without the monitor.
    assert after[:2] == expected[:2] and torch.equal(after[2], expected[2])
    assert student.training, "the student must go back to train mode"
    for key, value in student.state_dict().items():
        assert torch.equal(value, buffers[key]), f"{key} changed (BatchNorm statistics must not move)"

    # Class-balanced caps: 12 bank images and 5 queries of each of the 10 classes.
    assert (result["bank"], result["queries"]) == (120, 50)
    assert 0.0 <= result["top1"] <= 100.0 and result["seconds"] > 0
    assert monitor(student)["top1"] == result["top1"]  # deterministic transform, same weights


def _rank_main(rank: int, world: int, port: int, root: str, weights: dict, out: dict) -> None:
    os.environ.update(MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port))
    torch.set_num_threads(1)
    dist.init_process_group("gloo", rank=rank, world_size=world)
    try:
        info = DistInfo(rank=rank, world_size=world, local_rank=rank, device=torch.device("cpu"), backend="gloo")
        cfg = OmegaConf.structured(MonitorConfig(knn_batch=64))
        student = ReActNetA("binact", width=0.25)
        student.load_state_dict(weights)
        out[rank] = KnnMonitor(cfg, _data_cfg(root, "dali"), info, seed=0, dtype=torch.float32)(student)
    finally:
        dist.destroy_process_group()


@pytest.mark.slow
def test_two_ranks_score_what_one_rank_scores(tiny_data):
    # Each rank extracts half of the bank and of the queries; the gathered bank and the summed hits must
    # give one process's answer (up to one query whose vote the batch split could tip).
    student = ReActNetA("binact", width=0.25)
    alone = _monitor(tiny_data)(student)
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    with mp.Manager() as manager:
        out = manager.dict()
        mp.spawn(_rank_main, args=(2, port, str(tiny_data), student.state_dict(), out), nprocs=2, join=True)
        results = [out[0], out[1]]
    for result in results:
        assert (result["bank"], result["queries"]) == (alone["bank"], alone["queries"]) == (400, 100)
        assert abs(result["top1"] - alone["top1"]) <= 1.0, (result, alone)
    assert results[0]["top1"] == results[1]["top1"]


def test_missing_labelled_split_is_an_error_before_training(tmp_path):
    (tmp_path / "meta").mkdir()
    with pytest.raises(DatasetError, match="monitor.knn=false"):
        _monitor(tmp_path)


@pytest.mark.process
def test_due_on_the_cadence_and_at_the_last_step(tiny_data):
    monitor = _monitor(tiny_data)
    assert [s for s in range(1, 13) if monitor.due(s, total_steps=12)] == [5, 10, 12]
