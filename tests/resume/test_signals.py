"""Preemption handler, cross-rank stop decision over a real gloo group, requeue exit code."""

from __future__ import annotations

import datetime
import json
import logging
import os
import signal
import threading
import time
from pathlib import Path

import pytest
import torch
import torch.distributed as dist
import torch.multiprocessing as mp

from burn.resume.checkpoint import CheckpointManager
from burn.resume.signals import (
    PREEMPTION_SIGNALS,
    REQUEUE_EXIT_CODE,
    PreemptionHandler,
    stop_code,
    warn_if_slow_checkpoint,
)
from burn.runtime.signal_flags import STOP_CODES

REPO_ROOT = Path(__file__).resolve().parents[2]


def _wait_for(predicate, timeout: float = 5.0) -> bool:
    deadline = time.monotonic() + timeout
    while not predicate():
        if time.monotonic() > deadline:
            return False
        time.sleep(0.001)
    return True


def test_requeue_exit_code_is_ex_tempfail():
    assert REQUEUE_EXIT_CODE == 75 == os.EX_TEMPFAIL
    assert PREEMPTION_SIGNALS == (signal.SIGUSR2, signal.SIGTERM)


def test_sigusr2_sets_flag_and_a_second_signal_is_harmless():
    """What the loop reads (requested, code, reason): the first signal stays the reason; a later one
    only raises the code (a cancel beats a preemption)."""
    with PreemptionHandler() as handler:
        assert not handler.requested and handler.reason is None and handler.code == 0
        os.kill(os.getpid(), signal.SIGUSR2)
        assert _wait_for(lambda: handler.requested)
        assert handler.reason == "SIGUSR2" and handler.code == STOP_CODES[signal.SIGUSR2] == 1

        os.kill(os.getpid(), signal.SIGTERM)  # would end pytest if the handler were not in place
        assert _wait_for(lambda: handler.code == STOP_CODES[signal.SIGTERM] == 2)
        assert handler.requested and handler.reason == "SIGUSR2"


def test_restore_puts_back_the_previous_handlers():
    received = []

    def previous_handler(signum, frame):
        received.append(signum)

    original = signal.signal(signal.SIGUSR2, previous_handler)
    try:
        with PreemptionHandler() as handler:
            assert signal.getsignal(signal.SIGUSR2) != previous_handler
            os.kill(os.getpid(), signal.SIGUSR2)
            assert _wait_for(lambda: handler.requested)
        assert received == []
        assert signal.getsignal(signal.SIGUSR2) == previous_handler
        assert signal.getsignal(signal.SIGTERM) == signal.SIG_DFL
        os.kill(os.getpid(), signal.SIGUSR2)
        assert _wait_for(lambda: received == [signal.SIGUSR2])
        handler.restore()  # a second restore is a no-op
        assert signal.getsignal(signal.SIGUSR2) == previous_handler
    finally:
        signal.signal(signal.SIGUSR2, original)


def test_install_twice_or_off_main_thread_is_refused():
    handler = PreemptionHandler().install([signal.SIGUSR2])
    try:
        with pytest.raises(RuntimeError, match="already installed"):
            handler.install([signal.SIGUSR2])
    finally:
        handler.restore()
    errors = []
    worker = threading.Thread(target=lambda: _capture(errors, PreemptionHandler().install))
    worker.start()
    worker.join()
    assert len(errors) == 1 and "main thread" in str(errors[0])


def _capture(errors: list, call) -> None:
    try:
        call()
    except RuntimeError as err:
        errors.append(err)


def test_signals_during_checkpoint_writes_corrupt_nothing(tmp_path):
    """Signals land while torch.save/fsync run; every save must still complete and verify."""
    manager = CheckpointManager(tmp_path, keep_last=5)
    stop_sending = threading.Event()

    def send_signals():
        while not stop_sending.is_set():
            os.kill(os.getpid(), signal.SIGUSR2)
            os.kill(os.getpid(), signal.SIGTERM)
            time.sleep(0.002)

    sender = threading.Thread(target=send_signals)
    handled = []
    with PreemptionHandler() as handler:
        # Count the handler's runs: each one is a signal that landed while the saves ran.
        installed = signal.getsignal(signal.SIGUSR2)

        def counted(signum, frame):
            handled.append(signum)
            installed(signum, frame)

        for signum in PREEMPTION_SIGNALS:
            signal.signal(signum, counted)
        sender.start()
        try:
            for step in range(1, 4):
                manager.save({"step": step, "weights": torch.full((10_000_000,), float(step))}, step)
        finally:
            stop_sending.set()
            sender.join()
    assert len(handled) >= 4 and set(handled) == set(PREEMPTION_SIGNALS)
    assert handler.requested and handler.code == STOP_CODES[signal.SIGTERM]
    for step in range(1, 4):
        state = manager.load(manager.path_for(step))
        assert state["step"] == step and bool((state["weights"] == float(step)).all())


def test_stop_code_without_process_group_is_the_local_code():
    assert not dist.is_initialized()
    assert [stop_code(code, process_group_available=False) for code in (0, 1, 2, 3)] == [0, 1, 2, 3]
    assert stop_code(True, process_group_available=False) == 1 and type(stop_code(True, False)) is int
    with pytest.raises(ValueError, match="not been initialized"):  # a collective needs its group
        stop_code(0, process_group_available=True)


def test_stop_code_over_a_one_rank_group_is_the_local_code():
    """A real gloo group (of one rank, in this process): the collective path returns this rank's code."""
    dist.init_process_group("gloo", store=dist.HashStore(), rank=0, world_size=1)
    try:
        assert [stop_code(code, process_group_available=True) for code in (0, 1, 2, 3)] == [0, 1, 2, 3]
    finally:
        dist.destroy_process_group()


def _stop_code_rank(rank: int, world_size: int, store_file: str, out_dir: str) -> None:
    """One gloo rank, as the loop calls stop_code after each step: nothing yet; then a real SIGUSR2 on
    rank 0 only; then a real SIGTERM (a cancel) on rank 1 only."""
    dist.init_process_group(
        "gloo",
        init_method=f"file://{store_file}",
        rank=rank,
        world_size=world_size,
        timeout=datetime.timedelta(seconds=30),
    )
    try:
        with PreemptionHandler() as handler:
            codes = {"quiet": stop_code(handler.code, process_group_available=True)}
            if rank == 0:
                os.kill(os.getpid(), signal.SIGUSR2)
                assert _wait_for(lambda: handler.requested)
            codes["preempted"] = stop_code(handler.code, process_group_available=True)
            if rank == 1:
                os.kill(os.getpid(), signal.SIGTERM)
                assert _wait_for(lambda: handler.requested)
            codes["cancelled"] = stop_code(handler.code, process_group_available=True)
            codes["local"] = handler.code
        Path(out_dir, f"rank{rank}.json").write_text(json.dumps(codes))
    finally:
        dist.destroy_process_group()


@pytest.mark.process
@pytest.mark.timeout(120)
def test_stop_code_spreads_the_highest_code_to_every_rank(tmp_path, monkeypatch):
    """A signal on one rank stops every rank at the same step, and a cancel on any rank beats a
    preemption on another (MAX of the codes)."""
    # Spawned children import this module by name; make the repo root importable for them.
    monkeypatch.syspath_prepend(str(REPO_ROOT))
    world_size = 2
    mp.spawn(
        _stop_code_rank,
        args=(world_size, str(tmp_path / "pg_store"), str(tmp_path)),
        nprocs=world_size,
        join=True,
    )
    results = [json.loads((tmp_path / f"rank{rank}.json").read_text()) for rank in range(world_size)]
    assert [result["local"] for result in results] == [1, 2]
    assert [result["quiet"] for result in results] == [0, 0]
    assert [result["preempted"] for result in results] == [1, 1]
    assert [result["cancelled"] for result in results] == [2, 2]


def test_warn_if_slow_checkpoint(caplog):
    with caplog.at_level(logging.WARNING, logger="burn.resume.signals"):
        assert warn_if_slow_checkpoint(save_seconds=10.0, lead_seconds=120.0) is False
        assert caplog.records == []
        # 50 s fits alone but not with the x2 safety factor.
        assert warn_if_slow_checkpoint(save_seconds=50.0, lead_seconds=90.0) is True
        assert warn_if_slow_checkpoint(save_seconds=10.0, lead_seconds=30.0, step_seconds=15.0) is True
    assert len(caplog.records) == 2
    assert "50.0 s" in caplog.records[0].getMessage() and "90.0 s" in caplog.records[0].getMessage()
