"""Rank-to-device mapping: one GPU per rank or a clear refusal before NCCL starts, and the gloo group
that init_distributed builds from torchrun's variables."""

from __future__ import annotations

import json
import os
import socket
import subprocess
import sys
import threading
from pathlib import Path

import pytest
import torch
import torch.distributed as dist

from burn.engine.distributed import DeviceAssignmentError, check_one_rank_per_gpu, cuda_device_index

REPO = Path(__file__).resolve().parents[2]


def test_each_local_rank_gets_its_own_visible_gpu():
    assert [cuda_device_index(r, 8) for r in range(8)] == list(range(8))
    assert cuda_device_index(0, 1) == 0
    # One visible GPU per task (SLURM per-task binding): every task uses its cuda:0.
    assert cuda_device_index(3, 1) == 0


def test_more_local_ranks_than_gpus_is_refused_with_the_fix():
    with pytest.raises(DeviceAssignmentError, match=r"local rank 2 .* sees 2 GPUs.*--nproc_per_node 2"):
        cuda_device_index(2, 2)


def _check_in_threads(gpu_ids):
    store = dist.HashStore()
    errors = [None] * len(gpu_ids)

    def rank(r):
        try:
            check_one_rank_per_gpu(store, r, len(gpu_ids), gpu_ids[r], timeout_s=30)
        except DeviceAssignmentError as err:
            errors[r] = str(err)

    threads = [threading.Thread(target=rank, args=(r,)) for r in range(len(gpu_ids))]
    for t in threads:
        t.start()
    for t in threads:
        t.join(60)
    return errors


def test_two_ranks_on_one_gpu_are_refused_on_every_rank():
    errors = _check_in_threads(["node1 GPU-a", "node1 GPU-a", "node1 GPU-b"])
    assert all(e and "ranks [0, 1] on node1 GPU-a" in e and "CUDA_VISIBLE_DEVICES=" in e for e in errors), errors


def test_distinct_gpus_pass():
    assert _check_in_threads(["node1 GPU-a", "node1 GPU-b", "node2 GPU-a"]) == [None, None, None]


_RANK = """
import json, os, sys
import torch, torch.distributed as dist
from burn.engine.distributed import init_distributed
try:
    info = init_distributed(timeout_s=60)
except Exception as err:
    print(json.dumps({"error": f"{type(err).__name__}: {err}"}))
    sys.exit(3)
x = torch.tensor([info.rank + 1.0], device=info.device)
dist.all_reduce(x)
print(json.dumps({"backend": info.backend, "device": str(info.device), "sum": x.item()}))
dist.destroy_process_group()
"""


def _two_ranks(port: int, hide_cuda: bool) -> list:
    procs = []
    for rank in range(2):
        env = {
            **os.environ,
            "RANK": str(rank),
            "WORLD_SIZE": "2",
            "LOCAL_RANK": str(rank),
            "MASTER_ADDR": "127.0.0.1",
            "MASTER_PORT": str(port),
            "PYTHONPATH": str(REPO),
        }
        if hide_cuda:
            env["CUDA_VISIBLE_DEVICES"] = ""
        procs.append(
            subprocess.Popen(
                [sys.executable, "-c", _RANK],
                env=env,
                cwd=REPO,
                stdout=subprocess.PIPE,
                stderr=subprocess.PIPE,
                text=True,
            )
        )
    outs = [p.communicate(timeout=120) for p in procs]
    return [
        (p.returncode, json.loads(o.strip().splitlines()[-1]) if o.strip() else e) for p, (o, e) in zip(procs, outs)
    ]


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.mark.process
def test_two_rank_gloo_group_with_cuda_hidden():
    results = _two_ranks(_free_port(), hide_cuda=True)
    assert [r[0] for r in results] == [0, 0], results
    assert all(r[1] == {"backend": "gloo", "device": "cpu", "sum": 3.0} for r in results), results


@pytest.mark.process
@pytest.mark.gpu
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU")
def test_two_ranks_with_cuda_visible_get_two_gpus_or_a_clear_refusal():
    results = _two_ranks(_free_port(), hide_cuda=False)
    if torch.cuda.device_count() >= 2:
        assert all(code == 0 and out["backend"] == "nccl" and out["sum"] == 3.0 for code, out in results), results
    else:  # one GPU: both ranks refuse before NCCL, naming the shared GPU
        assert [code for code, _ in results] == [3, 3], results
        assert all("several ranks share one GPU" in out["error"] for _, out in results), results
