"""Faults met while a stage works, on the real components: an image that does not decode, a full disk
(a real, size-limited tmpfs), and file permissions under the user's umask."""

from __future__ import annotations

import json
import os
import shutil
import stat
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from burn.data.sharding import batch_positions, stream_indices
from burn.resume.checkpoint import CheckpointManager
from burn.runtime.files import DiskFullError

REPO = Path(__file__).resolve().parents[2]
BASE = ["preset=tiny", "data.synthetic.generate=false", "log.progress_bar=off", "monitor.knn=false"]


def run_py(*overrides: str, umask: int | None = None) -> subprocess.CompletedProcess:
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    return subprocess.run(
        [sys.executable, str(REPO / "launch" / "run.py"), *BASE, *overrides],
        cwd=REPO,
        env=env,
        capture_output=True,
        text=True,
        timeout=300,
        preexec_fn=(lambda: os.umask(umask)) if umask is not None else None,
    )


def last_line(out: subprocess.CompletedProcess) -> str:
    return out.stderr.strip().splitlines()[-1]


@pytest.fixture
def tmpfs(tmp_path):
    """A size-limited tmpfs (root only): ``mount(size_bytes)`` -> its path, unmounted afterwards."""
    if os.geteuid() != 0:
        pytest.skip("mounting a size-limited tmpfs needs root")
    point = tmp_path / "small-disk"
    point.mkdir()
    mounted = []

    def mount(size: int, remount: bool = False) -> Path:
        options = f"{'remount,' if remount else ''}size={size}"
        subprocess.run(["mount", "-t", "tmpfs", "-o", options, "tmpfs", str(point)], check=True)
        mounted.append(point)
        return point

    yield mount
    if mounted:
        subprocess.run(["umount", str(point)], check=False)


@pytest.mark.process
def test_a_full_disk_names_directory_and_size_and_keeps_the_previous_checkpoint(tmpfs):
    disk = tmpfs(1 << 20)
    manager = CheckpointManager(disk / "checkpoints", keep_last=2)
    manager.save({"w": torch.zeros(64 << 10)}, 1)  # 256 KiB
    with pytest.raises(DiskFullError) as error:
        manager.save({"w": torch.ones(256 << 10)}, 2)  # 1 MiB: does not fit
    message = str(error.value)
    assert message.startswith(f"no space left on device in {disk / 'checkpoints'}: the checkpoint of step 2 (1.0 MB)")
    assert "the previous checkpoint ckpt-00000001.pt is intact" in message and "\n" not in message
    manager.verify(manager.path_for(1))
    assert sorted(p.name for p in (disk / "checkpoints").iterdir()) == ["ckpt-00000001.pt", "ckpt-00000001.pt.sha256"]


@pytest.mark.slow
def test_a_stage_on_a_full_disk_ends_with_one_line_and_resumes_when_there_is_room(tiny_data, tmp_path, tmpfs):
    # The size of one checkpoint of this stage, from a short run elsewhere.
    probe = tmp_path / "probe"
    assert run_py(f"data.root={tiny_data}", f"run_dir={probe}", "stage=1", "steps=1").returncode == 0
    size = (probe / "checkpoints" / "ckpt-00000001.pt").stat().st_size
    disk = tmpfs(int(1.5 * size) + (256 << 10))  # one checkpoint fits, two do not
    run_dir = disk / "run"
    args = [f"data.root={tiny_data}", f"run_dir={run_dir}", "stage=1", "steps=4", "checkpoint.every_steps=2"]

    out = run_py(*args)
    assert out.returncode == 1, out.stdout + out.stderr
    line = last_line(out)
    assert line.startswith(
        f"run.py: no space left on device in {run_dir / 'checkpoints'}: the checkpoint of step 4 ("
    ), line
    assert "the previous checkpoint ckpt-00000002.pt is intact" in line and "Traceback" not in out.stderr
    CheckpointManager(run_dir / "checkpoints").verify(run_dir / "checkpoints" / "ckpt-00000002.pt")
    assert json.loads((run_dir / "progress.json").read_text())["error"].startswith("no space left on device")

    tmpfs(8 * size, remount=True)  # room again: the same command resumes from step 2
    again = run_py(*args)
    assert again.returncode == 0, again.stdout + again.stderr
    assert "resuming from" in again.stdout and "ckpt-00000002.pt (step 2, written by 1 ranks)" in again.stdout
    assert (run_dir / "DONE").exists()


@pytest.mark.slow
def test_a_decode_failure_mid_training_is_the_last_line_and_status_shows_it(tiny_data, tmp_path):
    data = tmp_path / "data"
    shutil.copytree(tiny_data, data)
    lines = (data / "meta" / "train.txt").read_text().splitlines()
    # The first sample of the one rank's 6th micro-batch of 16 (step 3: the tiny preset accumulates two).
    sixth = batch_positions(0, 5, 1, shard_id=0, num_shards=1, batch_size=16)
    victim = int(stream_indices(len(lines), 0, sixth)[0])
    path = data / "train" / lines[victim].split()[0]
    path.write_bytes(path.read_bytes()[: path.stat().st_size // 2])  # truncated: not empty, passes the start checks
    run_dir = tmp_path / "stage1"

    teacher = tiny_data.parent / "synthetic-tiny-teacher-resnet18-32px-ssl.pth"  # trained on the intact data
    out = run_py(
        f"data.root={data}",
        f"run_dir={run_dir}",
        "stage=1",
        "steps=10",
        "checkpoint.every_steps=2",
        f"model.teacher_weights={teacher}",
    )
    assert out.returncode == 1, out.stdout + out.stderr
    line = last_line(out)
    assert line.startswith(f"run.py: cannot decode image {path} (line {victim + 1} of {data / 'meta' / 'train.txt'})")
    assert "python -m burn.data.check" in line and "Traceback" not in out.stderr
    assert "(pipeline error: " in line and "pipeline definition with the following traceback" not in line
    assert (run_dir / "checkpoints" / "ckpt-00000002.pt").exists(), "it failed mid-training"

    status = subprocess.run(
        [sys.executable, str(REPO / "launch" / "status.py"), str(run_dir)], capture_output=True, text=True
    )
    assert status.returncode == 1
    assert "FAILED stage1: the stage at step" in status.stdout, status.stdout
    assert f"  error: cannot decode image {path}" in status.stdout
    assert "  log: none kept (started with launch/run.py" in status.stdout


@pytest.mark.slow
def test_run_files_follow_the_umask(tiny_data, tmp_path):
    run_dir = tmp_path / "run"
    out = run_py(
        f"data.root={tiny_data}", f"run_dir={run_dir}", "stage=1", "steps=2", "checkpoint.every_steps=1", umask=0o027
    )
    assert out.returncode == 0, out.stdout + out.stderr
    files = [run_dir / n for n in ("config.yaml", "progress.json", "DONE", "stage1_extraction.pth")]
    files += sorted((run_dir / "checkpoints").iterdir()) + sorted((run_dir / "tb").iterdir())
    modes = {p.name: oct(stat.S_IMODE(p.stat().st_mode)) for p in files}
    assert set(modes.values()) == {"0o640"}, modes  # what a plain open() gives under umask 027, not 0600
    assert oct(stat.S_IMODE((run_dir / "checkpoints").stat().st_mode)) == "0o750"
