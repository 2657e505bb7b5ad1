"""CheckpointManager: round trip, fallback past damaged files, pruning, kill -9 mid-write."""

from __future__ import annotations

import collections
import hashlib
import logging
import os
import random
import signal
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import pytest
import torch

from burn.resume import checkpoint as checkpoint_module
from burn.resume.checkpoint import (
    CheckpointError,
    CheckpointIntegrityError,
    CheckpointManager,
    CheckpointVersionError,
    sidecar_path,
)
from burn.runtime.errors import UsageError
from burn.runtime.rundir import CHECKPOINT_FORMAT, CHECKPOINT_VERSION

REPO_ROOT = Path(__file__).resolve().parents[2]


def _small_state(step: int) -> dict:
    generator = torch.Generator().manual_seed(step)
    return {"step": step, "weights": torch.randn(64, generator=generator)}


def _save_steps(directory: Path, steps, keep_last: int = 10) -> CheckpointManager:
    manager = CheckpointManager(directory, keep_last=keep_last)
    for step in steps:
        manager.save(_small_state(step), step)
    return manager


def _temp_files(directory: Path) -> list[str]:
    return sorted(entry.name for entry in directory.iterdir() if entry.name.startswith(".tmp-"))


def test_round_trip_keeps_tensors_nested_dicts_bytes_and_scalars(tmp_path):
    generator = torch.Generator().manual_seed(0)
    state = {
        "format": CHECKPOINT_FORMAT,
        "version": CHECKPOINT_VERSION,
        "step": 1234,
        "epoch": 3,
        "lr": 0.0125,
        "config": "model:\n  arch: reactnet\n",
        "blob": b"\x00\x01binary\xff",
        "nothing": None,
        "model": {
            "student": collections.OrderedDict(
                w=torch.randn(3, 4, generator=generator), n=torch.tensor(7, dtype=torch.int64)
            ),
            "half": torch.randn(5, generator=generator).to(torch.bfloat16),
        },
        "rng": [torch.get_rng_state(), (1, 2, 3)],
        "data": [{"epoch": 1, "offsets": [0, 5, 9]}],
    }
    manager = CheckpointManager(tmp_path / "checkpoints")
    path = manager.save(state, 1234)

    assert path == tmp_path / "checkpoints" / "ckpt-00001234.pt"
    loaded = manager.load(path)
    assert loaded.keys() == state.keys()
    for key in ("format", "version", "step", "epoch", "lr", "config", "blob", "nothing", "data"):
        assert loaded[key] == state[key], key
    assert torch.equal(loaded["model"]["student"]["w"], state["model"]["student"]["w"])
    assert loaded["model"]["student"]["n"].dtype == torch.int64
    assert loaded["model"]["half"].dtype == torch.bfloat16
    assert torch.equal(loaded["model"]["half"], state["model"]["half"])
    assert torch.equal(loaded["rng"][0], state["rng"][0]) and tuple(loaded["rng"][1]) == (1, 2, 3)
    # The file is a plain torch.save loadable without burn-suite.
    assert torch.load(path, weights_only=True)["step"] == 1234
    assert manager.last_save_seconds is not None and manager.last_save_seconds > 0


def test_sidecar_is_sha256sum_format_of_the_file(tmp_path):
    path = CheckpointManager(tmp_path).save(_small_state(5), 5)
    expected = hashlib.sha256(path.read_bytes()).hexdigest()
    assert sidecar_path(path).read_text() == f"{expected}  ckpt-00000005.pt\n"


def _truncate(path: Path) -> None:
    data = path.read_bytes()
    path.write_bytes(data[: len(data) // 2])


def _flip_middle_byte(path: Path) -> None:
    data = bytearray(path.read_bytes())
    data[len(data) // 2] ^= 0xFF
    path.write_bytes(bytes(data))


def _drop_sidecar(path: Path) -> None:
    sidecar_path(path).unlink()


def _garble_sidecar(path: Path) -> None:
    sidecar_path(path).write_text("not a digest\n")


@pytest.mark.parametrize(
    "damage, reason",
    [
        (_truncate, "truncated or corrupt"),
        (_flip_middle_byte, "truncated or corrupt"),
        (_drop_sidecar, "sidecar ckpt-00000020.pt.sha256 is missing"),
        (_garble_sidecar, "malformed"),
    ],
    ids=["truncated", "corrupt-byte", "no-sidecar", "bad-sidecar"],
)
def test_damaged_newest_is_skipped_with_warning(tmp_path, caplog, damage, reason):
    manager = _save_steps(tmp_path, [10, 20])
    newest = manager.path_for(20)
    damage(newest)

    with pytest.raises(CheckpointIntegrityError, match=reason) as raised:
        manager.load(newest)
    assert str(newest) in str(raised.value)

    with caplog.at_level(logging.WARNING, logger="burn.resume.checkpoint"):
        state, path = CheckpointManager(tmp_path).load_latest()
    assert path == manager.path_for(10)
    assert state["step"] == 10 and torch.equal(state["weights"], _small_state(10)["weights"])
    warnings = [record.getMessage() for record in caplog.records if record.levelno == logging.WARNING]
    assert len(warnings) == 1 and "ckpt-00000020.pt" in warnings[0] and reason in warnings[0]
    assert manager.latest_step() == 10


def test_all_damaged_or_empty_directory_gives_none(tmp_path, caplog):
    assert CheckpointManager(tmp_path / "missing").load_latest() is None
    assert CheckpointManager(tmp_path / "missing").list_checkpoints() == []
    manager = _save_steps(tmp_path, [1, 2, 3])
    _truncate(manager.path_for(1))
    _flip_middle_byte(manager.path_for(2))
    _drop_sidecar(manager.path_for(3))
    with caplog.at_level(logging.WARNING, logger="burn.resume.checkpoint"):
        assert manager.load_latest() is None
    skipped = " ".join(record.getMessage() for record in caplog.records)
    for step in (1, 2, 3):
        assert f"ckpt-{step:08d}.pt" in skipped
    assert manager.latest_step() is None


class _Smuggled:
    """An object whose unpickling would run code: weights_only must refuse it."""

    def __init__(self, marker: Path) -> None:
        self.marker = marker

    def __reduce__(self):
        return (Path.touch, (self.marker,))


def test_pickled_object_with_matching_sidecar_is_refused(tmp_path):
    manager = _save_steps(tmp_path, [1])
    marker = tmp_path / "code-ran"
    smuggled = manager.path_for(2)
    torch.save({"step": 2, "payload": _Smuggled(marker)}, smuggled)
    digest = hashlib.sha256(smuggled.read_bytes()).hexdigest()
    sidecar_path(smuggled).write_text(f"{digest}  {smuggled.name}\n")

    with pytest.raises(CheckpointError, match="weights_only") as raised:
        manager.load(smuggled)
    assert not isinstance(raised.value, CheckpointIntegrityError)
    assert str(smuggled) in str(raised.value)
    # A verified-but-unsafe file is not a crash artefact: resume fails loudly, no silent fallback.
    with pytest.raises(CheckpointError, match="weights_only"):
        manager.load_latest()
    assert not marker.exists()


def test_a_checkpoint_of_another_version_is_refused_naming_file_and_version(tmp_path):
    manager = CheckpointManager(tmp_path)
    manager.save({"format": CHECKPOINT_FORMAT, "version": CHECKPOINT_VERSION, **_small_state(1)}, 1)
    assert manager.load(manager.path_for(1))["version"] == CHECKPOINT_VERSION
    manager.save({"format": CHECKPOINT_FORMAT, "version": 2, **_small_state(2)}, 2)
    # Not a crash artefact: no fallback to step 1, which this code could read but the run has moved past.
    with pytest.raises(CheckpointVersionError) as raised:
        manager.load_latest()
    message = str(raised.value)
    assert message.startswith(f"{manager.path_for(2)}: checkpoint version 2, but this burn-suite reads version 1")
    assert "\n" not in message and isinstance(raised.value, UsageError)  # one line, exit 2 at the entry points
    manager.save({"format": CHECKPOINT_FORMAT, **_small_state(3)}, 3)  # no version at all
    with pytest.raises(CheckpointVersionError, match="checkpoint version None"):
        manager.load(manager.path_for(3))


def test_keep_last_prunes_oldest_with_their_sidecars(tmp_path):
    manager = _save_steps(tmp_path, [10, 20, 30, 40, 50], keep_last=2)
    assert [path.name for path in manager.list_checkpoints()] == ["ckpt-00000040.pt", "ckpt-00000050.pt"]
    assert sorted(entry.name for entry in tmp_path.iterdir()) == [
        "ckpt-00000040.pt",
        "ckpt-00000040.pt.sha256",
        "ckpt-00000050.pt",
        "ckpt-00000050.pt.sha256",
    ]
    _save_steps(tmp_path, [60], keep_last=1)
    assert [path.name for path in manager.list_checkpoints()] == ["ckpt-00000060.pt"]


def test_prune_keeps_the_new_save_when_newer_steps_are_damaged(tmp_path):
    # A run resumed from step 10 because 20 and 30 were damaged, then saved step 15.
    _save_steps(tmp_path, [10, 20, 30])
    manager = CheckpointManager(tmp_path, keep_last=1)
    _truncate(manager.path_for(20))
    _drop_sidecar(manager.path_for(30))
    manager.save(_small_state(15), 15)

    assert [path.name for path in manager.list_checkpoints()] == [
        "ckpt-00000015.pt",
        "ckpt-00000020.pt",
        "ckpt-00000030.pt",
    ]
    state, path = manager.load_latest()
    assert path == manager.path_for(15) and state["step"] == 15


def test_failed_save_deletes_nothing(tmp_path):
    _save_steps(tmp_path, [1, 2, 3])
    manager = CheckpointManager(tmp_path, keep_last=1)
    unpicklable = {"step": 4, "callback": lambda: None}
    with pytest.raises(Exception):  # noqa: B017 (pickling a lambda: the type depends on the pickler)
        manager.save(unpicklable, 4)
    with pytest.raises(Exception):  # noqa: B017
        manager.save(unpicklable, 3)  # a failed overwrite keeps the old copy of the step

    assert [path.name for path in manager.list_checkpoints()] == [f"ckpt-{s:08d}.pt" for s in (1, 2, 3)]
    for step in (1, 2, 3):
        assert torch.equal(manager.load(manager.path_for(step))["weights"], _small_state(step)["weights"])
    assert _temp_files(tmp_path) == []


def test_overwriting_a_step_replaces_it_cleanly(tmp_path):
    manager = CheckpointManager(tmp_path, keep_last=1)
    manager.save({"version": 1}, 7)
    manager.save({"version": 2}, 7)
    assert manager.load(manager.path_for(7)) == {"version": 2}
    assert len(sidecar_path(manager.path_for(7)).read_text().splitlines()) == 1
    assert sorted(entry.name for entry in tmp_path.iterdir()) == ["ckpt-00000007.pt", "ckpt-00000007.pt.sha256"]


class _Interrupted(BaseException):
    """Stands for the writer dying at a precise point of the overwrite protocol."""


@pytest.mark.parametrize("interrupt_at_sidecar_write", [1, 2], ids=["before-replace", "after-replace"])
def test_overwrite_interrupted_at_any_point_leaves_a_valid_copy(tmp_path, monkeypatch, interrupt_at_sidecar_write):
    manager = CheckpointManager(tmp_path, keep_last=1)
    manager.save({"version": 1}, 7)
    real_write_sidecar = checkpoint_module._write_sidecar
    calls = []

    def write_sidecar_then_die(checkpoint, digests):
        calls.append(len(digests))
        if len(calls) == interrupt_at_sidecar_write:
            raise _Interrupted
        real_write_sidecar(checkpoint, digests)

    monkeypatch.setattr(checkpoint_module, "_write_sidecar", write_sidecar_then_die)
    with pytest.raises(_Interrupted):
        manager.save({"version": 2}, 7)
    monkeypatch.undo()

    # Call 1 is the transitional sidecar (old + new digest), call 2 the final one (new digest).
    assert calls == [2] if interrupt_at_sidecar_write == 1 else calls == [2, 1]
    state, path = CheckpointManager(tmp_path).load_latest()
    assert path == manager.path_for(7)
    assert state == {"version": 1 if interrupt_at_sidecar_write == 1 else 2}


def test_leftover_temp_files_are_ignored_then_cleaned(tmp_path):
    manager = _save_steps(tmp_path, [1])
    leftover = tmp_path / ".tmp-ckpt-00000002.pt.k1ll3d"
    leftover.write_bytes(b"half a checkpoint")
    (tmp_path / ".tmp-ckpt-00000002.pt.sha256.x").write_bytes(b"")
    state, path = CheckpointManager(tmp_path).load_latest()
    assert path == manager.path_for(1)
    assert [p.name for p in manager.list_checkpoints()] == ["ckpt-00000001.pt"]

    manager.save(_small_state(2), 2)
    assert _temp_files(tmp_path) == []


def test_rejects_bad_arguments(tmp_path):
    with pytest.raises(ValueError, match="keep_last"):
        CheckpointManager(tmp_path, keep_last=0)
    manager = CheckpointManager(tmp_path)
    with pytest.raises(ValueError, match="step"):
        manager.save({}, -1)
    with pytest.raises(TypeError, match="dict"):
        manager.save([1, 2], 1)
    with pytest.raises(CheckpointIntegrityError, match="ckpt-00000009.pt"):
        manager.load(manager.path_for(9))


# -- kill -9 while writing -------------------------------------------------------------------

_WRITER = textwrap.dedent(
    """
    import sys, torch
    from burn.resume.checkpoint import CheckpointManager

    directory, mode, numel = sys.argv[1], sys.argv[2], int(sys.argv[3])
    manager = CheckpointManager(directory, keep_last=1)
    version = 0
    while True:
        version += 1
        step = version if mode == "advance" else 7
        print("begin", version, flush=True)
        state = {"step": step, "version": version, "weights": torch.full((numel,), float(version))}
        manager.save(state, step)
        print("done", version, flush=True)
    """
)
_LARGE_NUMEL = 50_000_000  # 200 MB of float32: the write takes long enough to be hit


def _kill_writer_mid_write(directory: Path, script: Path, mode: str, rng: random.Random) -> int:
    """Start a writer, SIGKILL it at a random moment of a save; return the last completed version."""
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(REPO_ROOT), os.environ.get("PYTHONPATH", "")])}
    writer = subprocess.Popen(
        [sys.executable, str(script), str(directory), mode, str(_LARGE_NUMEL)],
        stdout=subprocess.PIPE,
        text=True,
        env=env,
    )
    try:
        assert writer.stdout.readline().split() == ["begin", "1"]
        started = time.monotonic()
        assert writer.stdout.readline().split() == ["done", "1"]
        first_save_seconds = time.monotonic() - started
        assert writer.stdout.readline().split() == ["begin", "2"]
        time.sleep(rng.uniform(0.0, 1.2 * first_save_seconds))
        writer.send_signal(signal.SIGKILL)
        writer.wait(timeout=30)
        remaining = writer.stdout.read().split("\n")
    finally:
        if writer.poll() is None:
            writer.kill()
            writer.wait()
        writer.stdout.close()
    assert writer.returncode == -signal.SIGKILL
    done = [int(line.split()[1]) for line in remaining if line.startswith("done")]
    return max([1, *done])


@pytest.mark.slow
@pytest.mark.parametrize("mode", ["advance", "overwrite"])
def test_kill_9_during_write_never_yields_a_half_written_checkpoint(tmp_path, mode):
    """advance: steps 1, 2, 3... with keep_last=1 (prune races); overwrite: always step 7."""
    script = tmp_path / "writer.py"
    script.write_text(_WRITER)
    rng = random.Random(f"kill-9-{mode}")
    kills_with_temp_file_left = 0
    for trial in range(3):
        directory = tmp_path / f"trial{trial}"
        last_done = _kill_writer_mid_write(directory, script, mode, rng)
        kills_with_temp_file_left += bool(_temp_files(directory))

        loaded = CheckpointManager(directory, keep_last=1).load_latest()
        assert loaded is not None, f"trial {trial}: no valid checkpoint left in {sorted(os.listdir(directory))}"
        state, path = loaded
        # Never older than the last save that reported success; at most the one in flight.
        assert state["version"] in (last_done, last_done + 1), (trial, state["version"], last_done)
        assert path == CheckpointManager(directory).path_for(state["step"])
        assert state["weights"].numel() == _LARGE_NUMEL
        assert bool((state["weights"] == float(state["version"])).all())
    # Evidence the kills landed inside the write, not only between saves.
    assert kills_with_temp_file_left >= 1


@pytest.mark.process
def test_a_stage_refuses_to_resume_from_a_checkpoint_of_another_version(cli, tmp_path):
    run_dir = tmp_path / "run"
    base = cli.overrides(run_dir, "stage=1", "model.teacher_weights=null", "monitor.knn=false")
    assert cli.run([*base, "steps=1"], "first") == [0], cli.log("first")
    manager = CheckpointManager(run_dir / "checkpoints")
    state = manager.load(manager.path_for(1))
    manager.save({**state, "version": 99}, 1)  # what a later burn-suite would write
    (run_dir / "DONE").unlink()  # so that a longer stage resumes from it
    assert cli.run([*base, "steps=2"], "resumed") == [2], cli.log("resumed")
    last = cli.log("resumed").strip().splitlines()[-1]
    assert last == (
        f"run.py: {manager.path_for(1)}: checkpoint version 99, but this burn-suite reads version 1 only; "
        "continue it with the burn-suite that wrote it, or start the stage in a new run_dir"
    )
