"""launch/batch.py and launch/task.py without a cluster: the requeue decision (limit, crash loop) and task
outcomes."""

import json

import pytest
from omegaconf import OmegaConf

from burn.resume.checkpoint import CheckpointManager
from burn.runtime.environment import Environment
from launch import batch, task


def checkpoint_at(stage_dir, step):
    CheckpointManager(stage_dir / "checkpoints", keep_last=2).save({"step": step}, step)


def ledger(stage_dir):
    return [json.loads(line) for line in (stage_dir / "slurm" / "requeues.jsonl").read_text().splitlines()]


def test_requeue_is_refused_without_a_checkpoint(tmp_path):
    with pytest.raises(batch.RequeueRefused, match="holds no valid checkpoint"):
        batch.decide_requeue(tmp_path, max_requeues=5, job_id="7", restarts=0)


def test_requeue_limit_names_the_key_and_the_intact_step(tmp_path):
    checkpoint_at(tmp_path, 12)
    with pytest.raises(batch.RequeueRefused, match=r"after 3 requeues \(max_requeues=3\).*step 12"):
        batch.decide_requeue(tmp_path, max_requeues=3, job_id="7", restarts=3)


def test_requeues_with_progress_are_recorded_and_allowed(tmp_path):
    for restarts, step in enumerate((5, 10, 15, 20)):
        checkpoint_at(tmp_path, step)
        assert batch.decide_requeue(tmp_path, max_requeues=10, job_id="7", restarts=restarts) == step
    assert [r["step"] for r in ledger(tmp_path)] == [5, 10, 15, 20]
    assert [r["restarts"] for r in ledger(tmp_path)] == [0, 1, 2, 3]


def test_three_requeues_at_the_same_step_are_a_crash_loop(tmp_path):
    checkpoint_at(tmp_path, 10)
    batch.decide_requeue(tmp_path, max_requeues=10, job_id="7", restarts=0)
    checkpoint_at(tmp_path, 20)
    batch.decide_requeue(tmp_path, max_requeues=10, job_id="7", restarts=1)
    batch.decide_requeue(tmp_path, max_requeues=10, job_id="7", restarts=2)
    with pytest.raises(batch.RequeueRefused, match="crash loop.*3 times in a row at checkpoint step 20"):
        batch.decide_requeue(tmp_path, max_requeues=10, job_id="7", restarts=3)


def test_task_outcomes_outside_slurm(tmp_path, monkeypatch):
    for key in ("SLURM_JOB_ID", "SLURM_ARRAY_JOB_ID", "SLURM_PROCID"):
        monkeypatch.delenv(key, raising=False)
    here = Environment.read()
    (tmp_path / "linear_eval.json").write_text(json.dumps({"top1": 12.5, "top5": 50.0}))
    cfg = OmegaConf.create({"run_dir": str(tmp_path)})
    summary = task.conclude_task(cfg, 0, max_requeues=3, environment=here)
    assert summary == {"run_dir": str(tmp_path), "top1": 12.5, "top5": 50.0}
    with pytest.raises(batch.RequeueRefused, match="interrupted outside SLURM"):
        task.conclude_task(cfg, task.REQUEUE_EXIT_CODE, max_requeues=3, environment=here)
    with pytest.raises(RuntimeError, match="unexpected exit code 3"):
        task.conclude_task(cfg, 3, max_requeues=3, environment=here)


def test_array_jobs_are_requeued_by_their_array_task_id(monkeypatch):
    monkeypatch.setenv("SLURM_JOB_ID", "105")
    monkeypatch.setenv("SLURM_ARRAY_JOB_ID", "100")
    monkeypatch.setenv("SLURM_ARRAY_TASK_ID", "5")
    assert Environment.read().job_id == "100_5"
    monkeypatch.delenv("SLURM_ARRAY_JOB_ID")
    assert Environment.read().job_id == "105"
