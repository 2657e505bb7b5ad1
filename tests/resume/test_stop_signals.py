"""Ctrl-C, cancel and start-up signals on real launch/run.py processes.

First Ctrl-C: the step finishes, a checkpoint is written, exit 130, and the run resumes bit-identically;
a second Ctrl-C aborts at once. SIGTERM (a user's scancel) saves and exits 143. A preemption notice
that arrives while Python is still importing ends in a checkpoint and exit 75, not a crash.
"""

from __future__ import annotations

import json
import signal
import time
from pathlib import Path

import pytest
import torch

from burn.runtime.signal_flags import CANCEL_EXIT_CODE, INTERRUPT_EXIT_CODE, REQUEUE_EXIT_CODE

STEPS = 12
RUN = [f"steps={STEPS}", "checkpoint.every_steps=100", "log.every_steps=1"]


def _progress(run_dir: Path) -> dict:
    try:
        return json.loads((run_dir / "progress.json").read_text())
    except (OSError, ValueError):
        return {}


def _wait_step(proc, run_dir: Path, step: int, log: str) -> None:
    deadline = time.monotonic() + 300
    while _progress(run_dir).get("step", -1) < step:
        assert proc.poll() is None and time.monotonic() < deadline, log
        time.sleep(0.05)


def _catches(pid: int, signum: int) -> bool:
    """Whether the process has a handler for `signum` (its SigCgt mask in /proc)."""
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("SigCgt:"):
            return bool(int(line.split()[1], 16) >> (signum - 1) & 1)
    return False


def _extraction(run_dir: Path) -> dict:
    return torch.load(run_dir / "stage1_extraction.pth", weights_only=True)


def _checkpoint_steps(run_dir: Path) -> list[int]:
    return sorted(int(p.stem.split("-")[1]) for p in (run_dir / "checkpoints").glob("ckpt-*.pt"))


@pytest.mark.slow
def test_ctrl_c_saves_exits_130_and_resumes_bit_identically(cli, tmp_path):
    straight, stopped = tmp_path / "straight", tmp_path / "stopped"
    assert cli.run(cli.overrides(straight, *RUN), "straight") == [0], cli.log("straight")

    (proc,) = cli.start(cli.overrides(stopped, *RUN), "ctrl-c")
    _wait_step(proc, stopped, 3, "never reached step 3")
    proc.send_signal(signal.SIGINT)
    assert cli.wait([proc]) == [INTERRUPT_EXIT_CODE], cli.log("ctrl-c")
    text = cli.log("ctrl-c")
    state = _progress(stopped)
    assert state["state"] == "interrupted" and 3 <= state["step"] < STEPS
    assert _checkpoint_steps(stopped)[-1] == state["step"]  # saved at the step it stopped
    assert "Traceback" not in text and "KeyboardInterrupt" not in text
    last = [line for line in text.splitlines() if line.strip()][-1]
    assert "interrupted" in last and "run the same command again to resume" in last, last

    assert cli.run(cli.overrides(stopped, *RUN), "resume") == [0], cli.log("resume")
    assert "resuming from" in cli.log("resume")
    a, b = _extraction(straight), _extraction(stopped)
    for part in ("backbone", "classifier", "teacher_classifier"):
        for key, value in a[part]["state_dict"].items():
            assert torch.equal(value, b[part]["state_dict"][key]), f"{part}.{key} differs after Ctrl-C + resume"


@pytest.mark.slow
def test_second_ctrl_c_aborts_at_once(cli, tmp_path):
    run_dir = tmp_path / "run"
    # 8 micro-batches per step: the step the first Ctrl-C lets finish takes a while.
    slow = ["steps=400", "log.every_steps=1", "train.global_batch=128", "train.per_gpu_batch=16"]
    (proc,) = cli.start(cli.overrides(run_dir, *slow), "twice")
    _wait_step(proc, run_dir, 1, "never reached step 1")
    proc.send_signal(signal.SIGINT)
    deadline = time.monotonic() + 30
    while "Ctrl-C: finishing this step" not in cli.log("twice"):  # the first one was handled
        assert proc.poll() is None and time.monotonic() < deadline, cli.log("twice")
        time.sleep(0.01)
    proc.send_signal(signal.SIGINT)
    assert proc.wait(timeout=30) == -signal.SIGINT  # killed by the signal itself, no 400-step wait
    assert "second Ctrl-C: aborting now" in cli.log("twice")
    assert _progress(run_dir)["step"] < 400


@pytest.mark.slow
def test_sigterm_is_a_cancel_checkpoint_and_exit_143(cli, tmp_path):
    run_dir = tmp_path / "run"
    (proc,) = cli.start(cli.overrides(run_dir, *RUN), "term")
    _wait_step(proc, run_dir, 2, "never reached step 2")
    proc.send_signal(signal.SIGTERM)
    assert cli.wait([proc]) == [CANCEL_EXIT_CODE], cli.log("term")
    state = _progress(run_dir)
    assert state["state"] == "cancelled" and _checkpoint_steps(run_dir)[-1] == state["step"]


@pytest.mark.slow
def test_preemption_notice_during_imports_ends_in_a_checkpoint_and_75(cli, tmp_path):
    run_dir = tmp_path / "run"
    (proc,) = cli.start(cli.overrides(run_dir, *RUN), "early")
    deadline = time.monotonic() + 60
    while not _catches(proc.pid, signal.SIGUSR2):  # the flag-only recorder is in place
        assert proc.poll() is None and time.monotonic() < deadline, cli.log("early")
        time.sleep(0.005)
    assert not (run_dir / "config.yaml").exists(), "the signal must land before the stage starts"
    proc.send_signal(signal.SIGUSR2)
    assert cli.wait([proc]) == [REQUEUE_EXIT_CODE], cli.log("early")
    assert _progress(run_dir)["state"] == "preempted" and _checkpoint_steps(run_dir) == [0]
    assert "preemption signal (SIGUSR2" in cli.log("early")
    # The requeued run starts from that step-0 checkpoint and completes.
    assert cli.run(cli.overrides(run_dir, *RUN), "again") == [0], cli.log("again")
    assert "resuming from" in cli.log("again") and (run_dir / "DONE").exists()
