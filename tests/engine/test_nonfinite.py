"""Non-finite losses: skipped like GradScaler skips them; too many in a row stop the stage with a
clear error and leave the last good checkpoint untouched."""

from __future__ import annotations

import pytest
import torch

from burn.demo.inputs import prepare_demo_inputs
from burn.engine.distributed import init_distributed, seed_everything
from burn.engine.trainer import PretrainTrainer
from burn.resume.signals import PreemptionHandler
from tests.configs import tiny_stage

# Every test here uses tiny_data, whose set-up runs the dataset generator in a subprocess.
pytestmark = pytest.mark.process


def test_nan_steps_are_skipped_then_stop_the_stage(tiny_data, tmp_path):
    cfg = tiny_stage(tiny_data, tmp_path, "steps=20", "train.max_bad_steps=3")
    prepare_demo_inputs([cfg])  # the entry points' step: the tiny preset's auto teacher, cached
    info = init_distributed()
    seed_everything(cfg.seed, info.rank)
    with PreemptionHandler() as preemption:
        trainer = PretrainTrainer(cfg, info, tmp_path, preemption)
        trainer.prepare()
        trainer.train_until(2)
        trainer.save_checkpoint()
        good = (tmp_path / "checkpoints" / "ckpt-00000002.pt").read_bytes()
        weights_before = {k: v.clone() for k, v in trainer.model.student.state_dict().items()}

        with torch.no_grad():  # poison the teacher classifier: every loss from now on is NaN
            trainer.model.teacher_classifier.fc1.bias.fill_(float("nan"))
        with pytest.raises(FloatingPointError, match="4 optimizer steps in a row.*untouched"):
            trainer.train_until(20)
        trainer.metrics.close()

    assert trainer.step == 6  # 3 skipped steps tolerated, the 4th stops
    for key, value in trainer.model.student.state_dict().items():  # skipped steps changed nothing
        if not key.endswith("num_batches_tracked") and "running" not in key:
            assert torch.equal(value, weights_before[key]), key
    assert (tmp_path / "checkpoints" / "ckpt-00000002.pt").read_bytes() == good
    assert sorted(p.name for p in (tmp_path / "checkpoints").glob("ckpt-*.pt")) == ["ckpt-00000002.pt"]
