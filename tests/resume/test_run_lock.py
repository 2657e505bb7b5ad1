"""One writer per run directory, atomic run-directory files, and start-up under load.

Real processes throughout: concurrent readers, a lock holder killed with SIGKILL, 2-rank gloo runs of
launch/run.py restarted many times while a CPU burner competes for the cores.
"""

from __future__ import annotations

import json
import os
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import pytest
from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

from burn.resume.run_lock import RunDirBusyError, RunDirLock, write_config_if_changed
from burn.runtime.rundir import atomic_write

REPO = Path(__file__).resolve().parents[2]

_READER = r"""
import sys, time
path, a, b, stop = sys.argv[1], open(sys.argv[2]).read(), open(sys.argv[3]).read(), sys.argv[4]
import os
reads = bad = 0
while not os.path.exists(stop):
    try:
        text = open(path).read()
    except FileNotFoundError:
        continue
    reads += 1
    bad += text not in (a, b)
print(reads, bad)
"""


@pytest.mark.process
def test_atomic_write_never_shows_a_partial_file(tmp_path):
    a, b = "a: 1\n" * 20000, "bb: 2\n" * 5000  # different lengths: a torn write would show
    (tmp_path / "a").write_text(a)
    (tmp_path / "b").write_text(b)
    target, stop = tmp_path / "config.yaml", tmp_path / "stop"
    atomic_write(target, a)
    reader = subprocess.Popen(
        [sys.executable, "-c", _READER, str(target), str(tmp_path / "a"), str(tmp_path / "b"), str(stop)],
        stdout=subprocess.PIPE,
        text=True,
    )
    try:
        for i in range(300):
            atomic_write(target, b if i % 2 else a)
    finally:
        stop.touch()
    reads, bad = map(int, reader.communicate(timeout=60)[0].split())
    assert reads > 0 and bad == 0, f"{bad} of {reads} reads saw a partial config.yaml"
    assert not [p for p in tmp_path.iterdir() if p.name.endswith(".tmp")]  # no temp files left


def test_config_is_rewritten_only_when_its_text_changes(tmp_path):
    assert write_config_if_changed(tmp_path, "seed: 0\n")
    inode = (tmp_path / "config.yaml").stat().st_ino
    assert not write_config_if_changed(tmp_path, "seed: 0\n")
    assert (tmp_path / "config.yaml").stat().st_ino == inode
    assert write_config_if_changed(tmp_path, "seed: 1\n")
    assert (tmp_path / "config.yaml").read_text() == "seed: 1\n"


def test_atomic_write_respects_the_umask(tmp_path):
    old = os.umask(0o022)
    try:
        atomic_write(tmp_path / "x", "1")
    finally:
        os.umask(old)
    assert (tmp_path / "x").stat().st_mode & 0o777 == 0o644


_HOLDER = r"""
import sys, time
from burn.resume.run_lock import RunDirLock
RunDirLock(sys.argv[1]).acquire()
print("locked", flush=True)
time.sleep(600)
"""


@pytest.mark.process
def test_second_locker_is_refused_naming_the_holder_and_a_killed_holder_frees_the_lock(tmp_path):
    env = {**os.environ, "PYTHONPATH": str(REPO), "SLURM_JOB_ID": "4242"}
    holder = subprocess.Popen(
        [sys.executable, "-c", _HOLDER, str(tmp_path)], stdout=subprocess.PIPE, text=True, env=env
    )
    try:
        assert holder.stdout.readline().strip() == "locked"
        with pytest.raises(RunDirBusyError) as refused:
            RunDirLock(tmp_path).acquire()
        message = str(refused.value)
        assert f"pid {holder.pid} on {socket.gethostname()}" in message and "SLURM job 4242" in message
        assert str(tmp_path) in message and "\n" not in message
    finally:
        holder.send_signal(signal.SIGKILL)
        holder.wait()
    with RunDirLock(tmp_path) as lock:  # the kernel released the dead holder's lock
        assert lock.held


def _tb_steps(run_dir: Path, tag: str) -> list[int]:
    acc = EventAccumulator(str(run_dir / "tb"))
    acc.Reload()
    return [e.step for e in acc.Scalars(tag)]


def _progress(run_dir: Path) -> dict:
    try:
        return json.loads((run_dir / "progress.json").read_text())
    except (OSError, ValueError):
        return {}


@pytest.mark.slow
def test_second_starter_is_refused_at_once_and_the_first_is_unharmed(cli, tmp_path):
    run_dir = tmp_path / "run"
    run = cli.overrides(run_dir, "steps=30", "log.every_steps=1", "checkpoint.every_steps=10")
    (first,) = cli.start(run, "first")
    deadline = time.monotonic() + 300
    while _progress(run_dir).get("step", 0) < 2:
        assert first.poll() is None and time.monotonic() < deadline, cli.log("first")
        time.sleep(0.1)
    config_before = (run_dir / "config.yaml").stat()
    # The second copy, as 2 ranks: rank 0 finds the lock taken and tells rank 1.
    assert cli.run(run, "second", world_size=2) == [2, 2], cli.log("second") + cli.log("second", 1)
    assert first.poll() is None, "the second starter ended the first run"
    for rank in (0, 1):
        lines = [line for line in cli.log("second", rank).splitlines() if "in use by" in line]
        assert len(lines) == 1 and f"pid {first.pid} on {socket.gethostname()}" in lines[0]
        assert "Traceback" not in cli.log("second", rank)
    assert (run_dir / "config.yaml").stat().st_mtime_ns == config_before.st_mtime_ns
    assert cli.wait([first]) == [0], cli.log("first")
    assert _tb_steps(run_dir, "pretrain/loss") == list(range(1, 31))  # each step exactly once


_BURNER = "import time\nwhile True: pass\n"


@pytest.mark.slow
def test_many_two_rank_restarts_under_cpu_load_never_see_a_config_mismatch(cli, tmp_path):
    """The start-up handshake, restarted again and again while config.yaml changes and a reader and a
    CPU burner compete: never a mismatch, never a partial config.yaml."""
    run_dir = tmp_path / "run"
    base = cli.overrides(run_dir, "steps=2", "checkpoint.every_steps=1")
    assert cli.run([*base, "log.every_steps=1"], "first", world_size=2) == [0, 0], cli.log("first")
    stop = tmp_path / "stop"
    reference = {n: tmp_path / f"cfg{n}" for n in (1, 2)}
    burner = subprocess.Popen(["nice", "-n", "5", sys.executable, "-c", _BURNER])
    try:
        for n in (1, 2):  # the two texts config.yaml will alternate between
            text = (
                (run_dir / "config.yaml")
                .read_text()
                .replace("every_steps: 1\n  progress_bar", f"every_steps: {n}\n  progress_bar")
            )
            reference[n].write_text(text)
        assert reference[1].read_text() != reference[2].read_text()
        reader = subprocess.Popen(
            [
                sys.executable,
                "-c",
                _READER,
                str(run_dir / "config.yaml"),
                str(reference[1]),
                str(reference[2]),
                str(stop),
            ],
            stdout=subprocess.PIPE,
            text=True,
        )
        for restart in range(3):
            # Unfinished again: each start resumes the last checkpoint, writes the products, ends.
            (run_dir / "DONE").unlink()
            every = 2 if restart % 2 == 0 else 1
            tag = f"restart{restart}"
            codes = cli.run([*base, f"log.every_steps={every}"], tag, world_size=2)
            logs = cli.log(tag) + cli.log(tag, 1)
            assert codes == [0, 0] and "different config" not in logs, logs
            assert (run_dir / "config.yaml").read_text() == reference[every].read_text()
        stop.touch()
        reads, bad = map(int, reader.communicate(timeout=60)[0].split())
        assert reads > 0 and bad == 0, f"{bad} of {reads} reads saw a partial config.yaml"
        # The last restart's config again: config.yaml is left alone (same inode, no rewrite).
        inode = (run_dir / "config.yaml").stat().st_ino
        (run_dir / "DONE").unlink()
        assert cli.run([*base, f"log.every_steps={every}"], "same", world_size=2) == [0, 0], cli.log("same")
        assert (run_dir / "config.yaml").stat().st_ino == inode
    finally:
        stop.touch()
        burner.kill()
        burner.wait()


_HANDSHAKE = r"""
import os, sys, time
from pathlib import Path
from omegaconf import OmegaConf
from burn.engine.distributed import init_distributed, shutdown_distributed
from burn.engine.stage import _start_up
from launch.task import stage_config
run_dir, rounds, data = Path(sys.argv[1]), int(sys.argv[2]), sys.argv[3]
info = init_distributed()
cfg = stage_config(f"run_dir: {run_dir}\ntrain:\n  global_batch: 2\n  per_gpu_batch: 1\ndata:\n  root: {data}\n")
for i in range(rounds):
    cfg.log.every_steps = 1 + i % 2  # a new config.yaml text on every start
    lock, action = _start_up(cfg, info, run_dir)
    assert action == "run", action
    if lock is not None:
        lock.release()
shutdown_distributed()
print("rounds ok", rounds, flush=True)
"""


@pytest.mark.process
def test_start_up_handshake_many_times_with_two_ranks_under_load(tmp_path, tiny_data):
    """The start-up of 2 gloo ranks, 25 times in a row while config.yaml changes each time and a CPU
    burner competes: rank 1 always gets rank 0's decision, never a mismatch."""
    from tests.conftest import free_port

    run_dir = tmp_path / "run"
    run_dir.mkdir()
    burner = subprocess.Popen(["nice", "-n", "5", sys.executable, "-c", _BURNER])
    port, procs = free_port(), []
    try:
        for rank in range(2):
            env = {
                **os.environ,
                "PYTHONPATH": str(REPO),
                "RANK": str(rank),
                "WORLD_SIZE": "2",
                "LOCAL_RANK": str(rank),
                "MASTER_ADDR": "127.0.0.1",
                "MASTER_PORT": str(port),
            }
            procs.append(
                subprocess.Popen(
                    [sys.executable, "-c", _HANDSHAKE, str(run_dir), "25", str(tiny_data)],
                    env=env,
                    stdout=subprocess.PIPE,
                    stderr=subprocess.STDOUT,
                    text=True,
                )
            )
        outputs = [p.communicate(timeout=300)[0] for p in procs]
    finally:
        burner.kill()
        burner.wait()
    assert [p.returncode for p in procs] == [0, 0], outputs
    assert all("rounds ok 25" in out and "different config" not in out for out in outputs), outputs
