"""Elastic resume: a stage preempted on 2 ranks continues on 1, is preempted again and finishes on 2.

Real processes, a real gloo group, real SIGUSR2 signals, the loader's own record of what it read
(log.sample_ids) and real TensorBoard files.
"""

from __future__ import annotations

import json
import math
import signal
import subprocess
import sys
import time
from collections import defaultdict
from pathlib import Path

import pytest
from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

from burn.batch import split_global_batch
from burn.data.record import read_records, samples_by_position
from burn.resume.signals import REQUEUE_EXIT_CODE

REPO = Path(__file__).resolve().parents[2]
SAMPLES, GLOBAL_BATCH = 400, 16  # the tiny dataset's training list
STEPS = 2 * SAMPLES // GLOBAL_BATCH  # two whole epochs: 50 steps
# 2 ranks: 8 images x 1 micro-batch; 1 rank: 8 x 2 (accumulation recomputed, global batch kept).
RUN = [
    f"steps={STEPS}",
    f"train.global_batch={GLOBAL_BATCH}",
    "train.per_gpu_batch=8",
    "log.every_steps=1",
    "log.sample_ids=true",
    "monitor.knn=false",
]


def _progress(run_dir: Path) -> dict:
    try:
        return json.loads((run_dir / "progress.json").read_text())
    except (FileNotFoundError, json.JSONDecodeError):
        return {}


def _preempt(cli, run_dir: Path, tag: str, world_size: int, after_step: int) -> int:
    """Run on `world_size` ranks, SIGUSR2 to every rank once step `after_step` is logged; returns the
    step of the preemption checkpoint."""
    procs = cli.start(cli.overrides(run_dir, *RUN), tag, world_size=world_size)
    deadline = time.time() + 300
    while _progress(run_dir).get("step", -1) < after_step or _progress(run_dir).get("state") != "running":
        assert time.time() < deadline, cli.log(tag)
        assert all(p.poll() is None for p in procs), f"run ended before the signal:\n{cli.log(tag)}"
        time.sleep(0.01)
    for proc in procs:
        proc.send_signal(signal.SIGUSR2)
    codes = cli.wait(procs)
    assert codes == [REQUEUE_EXIT_CODE] * world_size, (codes, cli.log(tag))
    state = _progress(run_dir)
    assert state["state"] == "preempted" and state["world_size"] == world_size
    return state["step"]


def _scalars(run_dir: Path, tag: str) -> list[tuple[int, float]]:
    acc = EventAccumulator(str(run_dir / "tb"))
    acc.Reload()
    return [(e.step, e.value) for e in acc.Scalars(tag)]


@pytest.mark.slow
def test_two_ranks_then_one_then_two_read_every_sample_once_on_one_curve(cli, tmp_path):
    run_dir = tmp_path / "run"
    first = _preempt(cli, run_dir, "two", world_size=2, after_step=6)
    second = _preempt(cli, run_dir, "one", world_size=1, after_step=max(first + 1, 28))  # across epoch 1's start
    assert cli.run(cli.overrides(run_dir, *RUN), "again", world_size=2) == [0, 0], cli.log("again")

    # Every sample of each epoch exactly once: samples_by_position refuses a position read twice.
    read = samples_by_position(run_dir)
    assert sorted(read) == list(range(2 * SAMPLES))
    for epoch in (0, 1):
        assert sorted(read[p] for p in range(epoch * SAMPLES, (epoch + 1) * SAMPLES)) == list(range(SAMPLES))
    # Each optimizer step read one global batch, on the ranks of its run.
    per_step, ranks = defaultdict(int), {}
    for record in read_records(run_dir):
        per_step[record["step"]] += len(record["indices"])
        ranks[record["step"]] = record["world_size"]
    assert per_step == {step: GLOBAL_BATCH for step in range(1, STEPS + 1)}
    assert all(ranks[s] == (1 if first < s <= second else 2) for s in range(1, STEPS + 1))

    # One run: the loss curve has every step once, progress.json and TensorBoard note the changes.
    loss = _scalars(run_dir, "pretrain/loss")
    assert [s for s, _ in loss] == list(range(1, STEPS + 1)) and all(math.isfinite(v) for _, v in loss)
    assert _scalars(run_dir, "run/world_size") == [(0, 2.0), (first, 1.0), (second, 2.0)]
    state = _progress(run_dir)
    assert state["state"] == "done" and state["step"] == STEPS and state["world_size"] == 2
    assert state["world_size_changes"] == [{"step": first, "from": 2, "to": 1}, {"step": second, "from": 1, "to": 2}]
    for tag, old, new in (("one", 2, 1), ("again", 1, 2)):
        line = next(line for line in cli.log(tag).splitlines() if "elastic resume" in line)
        assert f"written by {old} ranks, this job has {new}" in line and "not bit-identical" in line, line
    assert "1 ranks x 8 images x 2 accumulation = 16 per step" in cli.log("one")
    status = subprocess.run(
        [sys.executable, str(REPO / "launch" / "status.py"), str(run_dir)], capture_output=True, text=True
    )
    assert f"ranks 2->1->2 (resized at steps {first}, {second})" in status.stdout, status.stdout


def test_the_global_batch_is_kept_and_only_an_impossible_split_is_refused():
    assert split_global_batch(16, 8, 2) == (8, 1) and split_global_batch(16, 8, 1) == (8, 2)
    assert split_global_batch(256, 128, 4) == (64, 1)  # per-GPU batch shrinks, the global batch stays
    assert split_global_batch(96, 64, 1) == (48, 2)
    with pytest.raises(ValueError, match="cannot be split over 3 ranks"):
        split_global_batch(16, 8, 3)
