"""Background checkpoint writes: the snapshot is independent of the live state, writes keep the
manager's guarantees (verified files, pruning, one writer at a time) and failures surface."""

from __future__ import annotations

import time
from collections import OrderedDict

import pytest
import torch

from burn.demo.inputs import prepare_demo_inputs
from burn.engine.distributed import init_distributed, seed_everything
from burn.engine.trainer import PretrainTrainer
from burn.resume.background_save import BackgroundCheckpointWriter, snapshot
from burn.resume.checkpoint import CheckpointError, CheckpointManager
from burn.resume.signals import PreemptionHandler
from tests.configs import tiny_stage

DEVICES = [
    "cpu",
    pytest.param(
        "cuda", marks=[pytest.mark.gpu, pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU")]
    ),
]


def _state(device: str) -> dict:
    weight = torch.arange(12.0, device=device).reshape(1, 3, 2, 2).contiguous(memory_format=torch.channels_last)
    return {
        "model": OrderedDict(w=weight, steps=torch.tensor(3, device=device)),
        "optimizer": {"state": {0: {"exp_avg": torch.ones(4, device=device)}}, "param_groups": [{"lr": 0.1}]},
        "rng": [torch.zeros(5, dtype=torch.uint8)],
        "step": 7,
        "config": "a: 1",
        "pair": (1, "x"),
    }


@pytest.mark.parametrize("device", DEVICES)
def test_snapshot_is_a_cpu_copy_that_training_cannot_change(device):
    state = _state(device)
    copy = snapshot(state, pin=device == "cuda")
    with torch.no_grad():  # training goes on and changes everything in place
        state["model"]["w"].add_(100)
        state["optimizer"]["state"][0]["exp_avg"].zero_()
        state["rng"][0].fill_(9)
    assert isinstance(copy["model"], OrderedDict) and copy["pair"] == (1, "x") and copy["step"] == 7
    assert copy["model"]["w"].device.type == "cpu"
    assert torch.equal(copy["model"]["w"], torch.arange(12.0).reshape(1, 3, 2, 2))
    assert torch.equal(copy["optimizer"]["state"][0]["exp_avg"], torch.ones(4))
    assert torch.equal(copy["rng"][0], torch.zeros(5, dtype=torch.uint8))
    if device == "cuda":
        assert copy["model"]["w"].is_pinned()


def test_background_writes_verify_prune_and_load_back(tmp_path):
    manager = CheckpointManager(tmp_path / "ckpts", keep_last=2)
    writer = BackgroundCheckpointWriter(manager)
    for step in (5, 10, 15):  # each submit first waits for the previous write: one writer at a time
        writer.submit(snapshot({"step": step, "w": torch.full((1000,), float(step))}), step)
    writer.wait()
    assert not writer.busy
    assert [p.name for p in manager.list_checkpoints()] == ["ckpt-00000010.pt", "ckpt-00000015.pt"]
    state, path = manager.load_latest()
    assert state["step"] == 15 and torch.equal(state["w"], torch.full((1000,), 15.0))
    manager.verify(tmp_path / "ckpts" / "ckpt-00000010.pt")


def test_a_failed_background_write_surfaces_at_the_next_wait(tmp_path):
    blocker = tmp_path / "not-a-dir"
    blocker.write_text("a file where the checkpoint folder should be")
    writer = BackgroundCheckpointWriter(CheckpointManager(blocker, keep_last=1))
    writer.submit({"step": 1}, 1)
    with pytest.raises(CheckpointError, match=r"step 1 in .*not-a-dir failed in the background"):
        writer.wait()
    writer.wait()  # reported once


@pytest.mark.process
def test_a_failing_stage_finishes_its_background_write_first(tiny_data, tmp_path):
    """The stage gives up its run directory (lock released) once run() returns: a periodic checkpoint
    still being written in the background must be on disk by then, even when training failed."""
    cfg = tiny_stage(
        tiny_data, tmp_path, "steps=10", "checkpoint.every_steps=2", "checkpoint.background=true", "monitor.knn=false"
    )
    prepare_demo_inputs([cfg])  # the entry points' step: the tiny preset's auto teacher, cached
    info = init_distributed()
    seed_everything(cfg.seed, info.rank)
    with PreemptionHandler() as preemption:
        trainer = PretrainTrainer(cfg, info, tmp_path, preemption)
        real_save, real_step = trainer.ckpt.save, PretrainTrainer.train_step

        def slow_save(state, step):
            time.sleep(1.0)  # still writing when the next step fails
            return real_save(state, step)

        def failing_step(self):
            if self.step == 2:
                raise RuntimeError("boom")
            return real_step(self)

        trainer.ckpt.save = slow_save
        trainer.train_step = failing_step.__get__(trainer)
        with pytest.raises(RuntimeError, match="boom"):
            trainer.run()
    assert not trainer.ckpt_writer.busy
    assert [p.name for p in trainer.ckpt.list_checkpoints()] == ["ckpt-00000002.pt"]
