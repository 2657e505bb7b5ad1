"""How a stage ended: the classifier on the messages gloo, NCCL, CUDA and the loaders really print, and
the ending files the batch shell reads (burn/runtime/faults.py). In process, no torch."""

from __future__ import annotations

import errno

import pytest

from burn.data.errors import DataError
from burn.runtime import faults
from burn.runtime.errors import UsageError
from burn.runtime.files import DiskFullError

# Verbatim (or nearly) from torch 2.x logs: what a surviving rank raises when its peer is gone.
INFRASTRUCTURE = [
    (
        "[/__w/pytorch/pytorch/third_party/gloo/gloo/transport/tcp/pair.cc:561] Connection closed by peer "
        "[127.0.0.1]:4264. This is typically caused by a remote worker crashing.",
        faults.PEER_DIED,
    ),
    (
        "[../third_party/gloo/gloo/transport/tcp/pair.cc:545] Read error [127.0.0.1]:2795: Connection reset by peer",
        faults.PEER_DIED,
    ),
    ("[../third_party/gloo/gloo/transport/tcp/pair.cc:598] Write error: Broken pipe", faults.PEER_DIED),
    (
        "NCCL error in: ../torch/csrc/distributed/c10d/ProcessGroupNCCL.cpp:1970, remote process exited or there "
        "was a network error, NCCL version 2.21.5\nncclRemoteError: A call failed possibly due to a network error "
        "or a remote process exiting prematurely.",
        faults.PEER_DIED,
    ),
    ("NCCL communicator was aborted on rank 1.", faults.PEER_DIED),
    (
        "[Rank 0] Watchdog caught collective operation timeout: WorkNCCL(SeqNum=1042, OpType=ALLREDUCE, "
        "NumelIn=2, NumelOut=2, Timeout(ms)=300000) ran for 300008 milliseconds before timing out.",
        faults.COLLECTIVE_TIMEOUT,
    ),
    (
        "[../third_party/gloo/gloo/transport/tcp/unbound_buffer.cc:81] Timed out waiting 300000ms for recv",
        faults.COLLECTIVE_TIMEOUT,
    ),
    (
        "DataLoader worker (pid 4242) is killed by signal: Killed. ",
        faults.WORKER_KILLED,
    ),
    ("DataLoader worker (pid(s) 4242, 4243) exited unexpectedly", faults.WORKER_KILLED),
    (
        "CUDA error: uncorrectable ECC error encountered\nCUDA kernel errors might be asynchronously reported",
        faults.CUDA_TRANSIENT,
    ),
    ("CUDA error: unspecified launch failure", faults.CUDA_TRANSIENT),
    ("CUDA error: CUDA-capable device(s) is/are busy or unavailable", faults.CUDA_TRANSIENT),
    (
        "NCCL error: unhandled system error (run with NCCL_DEBUG=INFO for details), NCCL version 2.21.5",
        faults.CUDA_TRANSIENT,
    ),
]

# The user's or the data's fault, or a bug: fail as today.
USER = [
    UsageError("train.precision='fp8': choose one of fp16, bf16, fp32"),
    DataError("data.root=/d: train/n01/x.JPEG cannot be decoded"),
    DiskFullError(errno.ENOSPC, "no space left on device in /ckpt"),
    FloatingPointError("21 optimizer steps in a row had a non-finite loss"),
    RuntimeError("CUDA out of memory. Tried to allocate 2.00 GiB"),
    RuntimeError("CUDA error: device-side assert triggered"),
    TypeError("unsupported operand type(s) for +: 'int' and 'str'"),
    KeyError("backbone"),
]


@pytest.mark.parametrize(("message", "cause"), INFRASTRUCTURE)
def test_a_dead_peer_a_killed_worker_or_a_transient_cuda_error_is_the_infrastructures(message, cause):
    found = faults.classify(RuntimeError(message))
    assert (found.outcome, found.cause, found.exit_code) == (faults.INFRA, cause, 1)


@pytest.mark.parametrize("err", USER, ids=lambda e: type(e).__name__)
def test_bad_input_bad_data_a_full_disk_a_nonfinite_loss_or_a_bug_is_the_users(err):
    found = faults.classify(err)
    assert found.outcome == faults.USER
    assert found.exit_code == (2 if isinstance(err, UsageError) else 1)


def test_the_cause_is_found_along_the_exception_chain_and_by_torch_error_class_names():
    class DistNetworkError(RuntimeError):  # torch.distributed's, recognised by name (no torch import)
        pass

    try:
        try:
            raise RuntimeError("[pair.cc:561] Connection closed by peer [10.0.0.2]:3232")
        except RuntimeError as inner:
            raise ValueError("all_gather_object failed") from inner
    except ValueError as outer:
        assert faults.classify(outer).cause == faults.PEER_DIED
    assert faults.classify(DistNetworkError("failed to recv")).cause == faults.PEER_DIED
    # A data fault that mentions a timeout is still the data's.
    assert faults.classify(DataError("reading x.JPEG timed out waiting for NFS")).outcome == faults.USER


def test_endings_are_written_per_rank_and_read_back_for_one_run_of_a_job(tmp_path):
    faults.record_ending(tmp_path, "77", 0, 1, faults.INFRA, faults.PEER_DIED, 9, 1, "Connection closed by peer")
    faults.record_ending(tmp_path, "77", 0, 0, faults.PREEMPTED, faults.PREEMPTED, 9, 75)
    faults.record_ending(tmp_path, "77", 1, 0, faults.USER, "bad image", 12, 1)
    first = faults.read_endings(tmp_path, "77", 0)
    assert [(e.rank, e.outcome, e.step) for e in first] == [(0, faults.PREEMPTED, 9), (1, faults.INFRA, 9)]
    assert [e.outcome for e in faults.read_endings(tmp_path, "77", 1)] == [faults.USER]
    assert faults.read_endings(tmp_path, "78", 0) == []
    assert sorted(p.name for p in (tmp_path / "slurm" / "endings").iterdir()) == [
        "77.0.rank0.json",
        "77.0.rank1.json",
        "77.1.rank0.json",
    ]


def test_shell_statuses_name_their_signal():
    assert faults.signal_name(137) == "SIGKILL"
    assert faults.signal_name(134) == "SIGABRT"
    assert faults.signal_name(1) is None and faults.signal_name(128) is None
