"""Exact resume: an interrupted-and-resumed run ends with the same bits as an uninterrupted one.

Real processes, a real gloo group of 2 ranks, real SIGUSR2 signals, real TensorBoard files.
"""

from __future__ import annotations

import json
import math
import re
import signal
import time
from pathlib import Path

import pytest
import torch
from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

from burn.engine.distributed import init_distributed, seed_everything
from burn.engine.linear import LinearEvalTrainer
from burn.resume.signals import REQUEUE_EXIT_CODE, PreemptionHandler
from tests.configs import tiny_stage
from tests.engine.in_process_resume import straight_and_resumed

STEPS = 24
# 2 ranks x 2 images x 4 micro-batches = 16 per optimizer step: most of a step is mid-accumulation.
RUN = [
    f"steps={STEPS}",
    "train.global_batch=16",
    "train.per_gpu_batch=2",
    "checkpoint.every_steps=5",
    "log.every_steps=1",
]
# The interrupted run has both monitors on (k-NN at steps 8, 16, 24: between and after the two
# interruptions), the straight run neither: the bits must match, so the monitors change nothing.
MONITORS_ON = RUN + ["monitor.collapse=true", "monitor.knn=true", "monitor.knn_every=8"]
MONITORS_OFF = RUN + ["monitor.collapse=false", "monitor.knn=false"]


def _progress_step(run_dir: Path) -> int:
    try:
        return json.loads((run_dir / "progress.json").read_text())["step"]
    except (FileNotFoundError, json.JSONDecodeError, KeyError):
        return -1


def _interrupt(cli, run_dir: Path, tag: str, at_step: int, ranks: list[int]) -> None:
    """Start the 2-rank run, send SIGUSR2 to `ranks` once it passed `at_step`, expect a requeue exit."""
    procs = cli.start(cli.overrides(run_dir, *MONITORS_ON), tag, world_size=2)
    deadline = time.time() + 300
    while _progress_step(run_dir) < at_step:
        assert time.time() < deadline, cli.log(tag)
        assert all(p.poll() is None for p in procs), f"run ended before the signal:\n{cli.log(tag)}"
        time.sleep(0.01)
    for rank in ranks:
        procs[rank].send_signal(signal.SIGUSR2)
    codes = cli.wait(procs)
    assert codes == [REQUEUE_EXIT_CODE] * 2, (codes, cli.log(tag), cli.log(tag, 1))


def _scalars(run_dir: Path, tag: str) -> list[tuple[int, float]]:
    acc = EventAccumulator(str(run_dir / "tb"))
    acc.Reload()
    return [(e.step, e.value) for e in acc.Scalars(tag)]


def _weights(run_dir: Path) -> dict:
    return torch.load(run_dir / "stage1_extraction.pth", weights_only=True)


@pytest.mark.slow
def test_interrupted_run_is_bit_identical_to_uninterrupted(cli, tmp_path):
    straight, interrupted = tmp_path / "straight", tmp_path / "interrupted"
    assert cli.run(cli.overrides(straight, *MONITORS_OFF), "straight", world_size=2) == [0, 0], cli.log("straight")

    _interrupt(cli, interrupted, "first", at_step=4, ranks=[0, 1])
    state = json.loads((interrupted / "progress.json").read_text())
    assert state["state"] == "preempted"
    ckpts = sorted((interrupted / "checkpoints").glob("ckpt-*.pt"))
    assert int(ckpts[-1].stem.split("-")[1]) == state["step"], "no checkpoint at the preemption step"
    # Second interruption: only rank 0 gets the signal; the all-reduced flag must stop rank 1 too.
    _interrupt(cli, interrupted, "second", at_step=13, ranks=[0])
    assert cli.run(cli.overrides(interrupted, *MONITORS_ON), "final", world_size=2) == [0, 0], cli.log("final")

    logs = cli.log("first") + cli.log("first", 1) + cli.log("second") + cli.log("second", 1)
    assert logs.count("exiting with 75") == 4  # every rank of both interrupted runs
    # The signal is sent right after a step's progress write, so it lands inside the next step's
    # micro-batches: the step is completed before the checkpoint.
    assert re.search(r"noticed at micro-batch [123]/4", logs), logs
    assert "resuming from" in cli.log("second") and "resuming from" in cli.log("final")

    a, b = _weights(straight), _weights(interrupted)
    for part in ("backbone", "classifier", "teacher_classifier"):
        sa, sb = a[part]["state_dict"], b[part]["state_dict"]
        assert sa.keys() == sb.keys()
        for key in sa:
            assert torch.equal(sa[key], sb[key]), f"{part}.{key} differs after resume"

    # One continuous curve: every step exactly once, with the same values as the straight run.
    curve = _scalars(interrupted, "pretrain/loss")
    assert [s for s, _ in curve] == list(range(1, STEPS + 1))
    assert curve == _scalars(straight, "pretrain/loss")
    # The lr is a function of the step: after each resume it goes on exactly as the straight run's.
    lr = _scalars(interrupted, "pretrain/optim/lr")
    assert [s for s, _ in lr] == list(range(1, STEPS + 1)) and lr == _scalars(straight, "pretrain/optim/lr")
    # The monitors logged: every step's collapse statistics, the k-NN at its cadence, once each.
    for side in ("student", "teacher"):
        for stat in ("std", "batch_entropy", "image_entropy", "mi"):
            curve = _scalars(interrupted, f"collapse/{side}_{stat}")
            assert [s for s, _ in curve] == list(range(1, STEPS + 1)), (side, stat)
            assert all(math.isfinite(v) for _, v in curve), (side, stat)
    knn = _scalars(interrupted, "knn/top1")
    assert [s for s, _ in knn] == [8, 16, 24] and all(0.0 <= v <= 100.0 for _, v in knn)
    straight_tags = EventAccumulator(str(straight / "tb")).Reload().Tags()["scalars"]
    assert not [t for t in straight_tags if t.startswith(("knn/", "collapse/"))], straight_tags


@pytest.mark.slow
def test_linear_stage_resumes_to_the_same_bits(tiny_data, tmp_path):
    """The step-decay schedule resumes from the step alone, like pretraining's: a linear stage saved at
    step 8 (between its lr milestones, steps 7 and 10 of 12) and resumed by a new trainer uses the
    straight run's lr at every step and ends with its bits. In one process: the RNG comes from the
    checkpoint, as in a new one."""
    info = init_distributed()
    steps, stop_at = 12, 8

    def trainer(run_dir: Path, preemption: PreemptionHandler) -> LinearEvalTrainer:
        cfg = tiny_stage(
            tiny_data, run_dir, "stage=linear", "pretrained=random", f"steps={steps}", "linear.eval_every_epochs=0"
        )
        seed_everything(cfg.seed, info.rank)  # as the stage runner does
        loop = LinearEvalTrainer(cfg, info, run_dir, preemption)
        loop.prepare()
        return loop

    runs = straight_and_resumed(trainer, tmp_path, steps, stop_at)
    assert [runs.resumed.scheduler.lr_lambdas[0](s) for s in (6, 7, 9, 10)] == [1.0, 0.1, 0.1, 0.1**2]  # milestones
    runs.assert_same_bits()
