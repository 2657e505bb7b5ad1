"""One key, signal_delay_s, sets the seconds between SLURM's USR2 and the kill everywhere: the sbatch line
Submitit generates, the line slurm/chain.sh builds, slurm/stage.sbatch's default, the stage's warning."""

from __future__ import annotations

import os
import re
import subprocess
import sys
from pathlib import Path

import pytest

from burn.config import BurnConfig, compose_config
from launch import jobs, submit

REPO = Path(__file__).resolve().parents[2]


def test_the_sbatch_template_default_is_the_config_default():
    lines = re.findall(r"^#SBATCH --signal=B:USR2@(\d+)$", (REPO / "slurm" / "stage.sbatch").read_text(), re.M)
    assert lines == [str(BurnConfig.signal_delay_s)]


@pytest.mark.parametrize("overrides", [[], ["signal_delay_s=75"]])
@pytest.mark.usefixtures("srun_on_path")
def test_submitit_sbatch_line_is_the_key(tmp_path, overrides):
    cfg = compose_config(["preset=tiny", "stage=1", f"run_dir={tmp_path}", *overrides])
    stage_cfg = submit.plan_stages(cfg)[0]
    script = jobs.sbatch_script(jobs.build_executor(stage_cfg, tmp_path, None, use_gpus=False))
    assert re.findall(r"^#SBATCH --signal=(.*)$", script, re.M) == [f"USR2@{cfg.signal_delay_s}"]
    assert cfg.signal_delay_s == (75 if overrides else 60)  # the tiny preset's


@pytest.fixture
def fake_sbatch(tmp_path):
    """An `sbatch` on PATH that records its arguments (one line per call) and answers a job id."""
    bin_dir, calls = tmp_path / "bin", tmp_path / "sbatch-calls"
    bin_dir.mkdir()
    (bin_dir / "sbatch").write_text(f'#!/bin/bash\necho "$*" >> {calls}\necho 4242\n')
    (bin_dir / "sbatch").chmod(0o755)
    env = {**os.environ, "PATH": f"{bin_dir}{os.pathsep}{os.environ['PATH']}", "BURN_PYTHON": sys.executable}
    return env, calls


def chain(env, run_dir: Path, *args: str) -> subprocess.CompletedProcess:
    return subprocess.run(
        [str(REPO / "slurm" / "chain.sh"), str(run_dir), *args], env=env, capture_output=True, text=True, timeout=120
    )


@pytest.mark.process
@pytest.mark.parametrize("overrides", [["preset=tiny"], ["preset=tiny", "signal_delay_s=90"], []])
def test_chain_sh_sbatch_line_is_the_key(tmp_path, fake_sbatch, overrides):
    env, calls = fake_sbatch
    out = chain(env, tmp_path / "run", "--nodes=1", "--", *overrides)
    assert out.returncode == 0, out.stderr
    expected = compose_config(overrides).signal_delay_s
    lines = calls.read_text().splitlines()
    assert len(lines) == 3  # stage 1, stage 2, linear
    assert all(re.findall(r"--signal=(\S+)", line) == [f"B:USR2@{expected}"] for line in lines), lines


@pytest.mark.process
def test_chain_sh_refuses_an_sbatch_signal_option(tmp_path, fake_sbatch):
    env, calls = fake_sbatch
    out = chain(env, tmp_path / "run", "--signal=B:USR2@30", "--", "preset=tiny")
    assert out.returncode == 2 and "set signal_delay_s=<seconds> after the --" in out.stderr
    assert not calls.exists()


@pytest.mark.process
def test_the_checkpoint_warning_gets_the_key_and_the_measured_step_time(tiny_data, tmp_path, monkeypatch):
    """After a save the loop's warning receives signal_delay_s and the mean step time it measured."""
    import time

    from burn.demo.inputs import prepare_demo_inputs
    from burn.engine import loop
    from burn.engine.distributed import init_distributed, seed_everything
    from burn.engine.trainer import PretrainTrainer
    from burn.resume.signals import PreemptionHandler

    cfg = compose_config(
        [
            "preset=tiny",
            f"data.root={tiny_data}",
            "data.synthetic.generate=false",
            f"run_dir={tmp_path}",
            "log.progress_bar=off",
            "steps=4",
            "monitor.knn=false",
            "checkpoint.background=false",
            "signal_delay_s=45",
        ]
    )
    prepare_demo_inputs([cfg])  # the entry points' step: the tiny preset's auto teacher, cached
    calls = []
    monkeypatch.setattr(
        loop, "warn_if_slow_checkpoint", lambda save, lead, step_seconds=0.0: calls.append((lead, step_seconds))
    )
    info = init_distributed()
    seed_everything(cfg.seed, info.rank)
    with PreemptionHandler() as preemption:
        trainer = PretrainTrainer(cfg, info, tmp_path, preemption)
        real_step = PretrainTrainer.train_step

        def slow_step(self):
            time.sleep(0.2)
            return real_step(self)

        trainer.train_step = slow_step.__get__(trainer)
        trainer.prepare()
        trainer.train_until(3)
        trainer.save_checkpoint()
        trainer.metrics.close()
    ((lead, step_seconds),) = calls
    assert lead == 45 and step_seconds >= 0.2
