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
    should_stop,
    warn_if_slow_checkpoint,
)

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
    before = time.time()
    with PreemptionHandler() as handler:
        assert not handler.requested and handler.reason is None and handler.received_at is None
        os.kill(os.getpid(), signal.SIGUSR2)
        assert _wait_for(lambda: handler.requested)
        assert handler.reason == "SIGUSR2"
        first_seen = handler.received_at
        assert before <= first_seen <= time.time()

        os.kill(os.getpid(), signal.SIGTERM)  # would end pytest if the handler were not in place
        assert _wait_for(lambda: handler.signal_count == 2)
        assert handler.requested and handler.reason == "SIGUSR2" and handler.received_at == first_seen


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
    with PreemptionHandler() as handler:
        sender.start()
        try:
            for step in range(1, 4):
                manager.save({"step": step, "weights": torch.full((10_000_000,), float(step))}, step)
        finally:
            stop_sending.set()
            sender.join()
    assert handler.requested and handler.signal_count >= 4
    for step in range(1, 4):
        state = manager.load(manager.path_for(step))
        assert state["step"] == step and bool((state["weights"] == float(step)).all())


def test_should_stop_without_process_group_returns_the_local_flag():
    assert should_stop(True, process_group_available=False) is True
    assert should_stop(False, process_group_available=False) is False
    assert not dist.is_initialized()
    with pytest.raises(RuntimeError, match="not initialized"):
        should_stop(False, process_group_available=True)


def _should_stop_rank(rank: int, world_size: int, store_file: str, out_dir: str) -> None:
    """One gloo rank: reduce a quiet flag, then one where only rank 0 got a real SIGUSR2."""
    dist.init_process_group(
        "gloo",
        init_method=f"file://{store_file}",
        rank=rank,
        world_size=world_size,
        timeout=datetime.timedelta(seconds=30),
    )
    try:
        with PreemptionHandler() as handler:
            before_signal = should_stop(handler.requested, process_group_available=True)
            if rank == 0:
                os.kill(os.getpid(), signal.SIGUSR2)
                assert _wait_for(lambda: handler.requested)
            after_signal = should_stop(handler.requested, process_group_available=True)
            result = {"local": handler.requested, "before": before_signal, "after": after_signal}
        Path(out_dir, f"rank{rank}.json").write_text(json.dumps(result))
    finally:
        dist.destroy_process_group()


@pytest.mark.process
@pytest.mark.timeout(120)
def test_should_stop_spreads_a_rank0_signal_to_every_rank(tmp_path, monkeypatch):
    # Spawned children import this module by name; make the repo root importable for them.
    monkeypatch.syspath_prepend(str(REPO_ROOT))
    world_size = 2
    mp.spawn(
        _should_stop_rank,
        args=(world_size, str(tmp_path / "pg_store"), str(tmp_path)),
        nprocs=world_size,
        join=True,
    )
    results = [json.loads((tmp_path / f"rank{rank}.json").read_text()) for rank in range(world_size)]
    assert [result["local"] for result in results] == [True, False]
    assert [result["before"] for result in results] == [False, False]
    assert [result["after"] for result in results] == [True, True]


def test_warn_if_slow_checkpoint(caplog):
    with caplog.at_level(logging.WARNING, logger="burn.resume.signals"):
        assert warn_if_slow_checkpoint(save_seconds=10.0, lead_seconds=120.0) is False
        assert caplog.records == []
        # 50 s fits alone but not with the x2 safety factor.
        assert warn_if_slow_checkpoint(save_seconds=50.0, lead_seconds=90.0) is True
        assert warn_if_slow_checkpoint(save_seconds=10.0, lead_seconds=30.0, step_seconds=15.0) is True
    assert len(caplog.records) == 2
    assert "50.0 s" in caplog.records[0].getMessage() and "90.0 s" in caplog.records[0].getMessage()
