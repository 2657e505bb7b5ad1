"""Submitting stage jobs: one Submitit job per stage, chained with afterok, recorded in the stage's
slurm/jobs.jsonl. What each job then runs on its tasks: launch/task.py (StageJob in
launch/job_entry.py is the callable a job unpickles).

Re-submitting is safe: a complete stage (DONE) is skipped and a stage whose earlier job is still
pending or running keeps that job instead of getting a second writer.
"""

from __future__ import annotations

import shlex
import sys
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import submitit
from omegaconf import DictConfig, OmegaConf

from burn.runtime import rundir, slurm_cli
from burn.runtime.environment import BATCH_DECIDES
from launch.job_entry import StageJob


@dataclass
class SubmittedStage:
    stage: str
    stage_dir: Path
    job_id: str | None
    """None when the stage was already complete (DONE) and nothing was queued."""
    action: str
    """submitted | queued (an earlier job of this dir is still active) | done."""
    log_dir: Path | None = None


def active_job(stage_dir: Path) -> str | None:
    """The newest recorded job of this stage dir that is still pending or running, if any."""
    for record in reversed(rundir.read_jsonl(rundir.jobs_file(stage_dir))):
        if slurm_cli.queue_state(record["job_id"]) in slurm_cli.ACTIVE_STATES:
            return record["job_id"]
    return None


def batch_hooks(stage_dir: Path, max_requeues: int) -> dict[str, Any]:
    """The lines around srun in Submitit's batch script (as in slurm/stage.sbatch): launch/batch.py
    decides whether the job requeues itself; srun ends every task as soon as one fails (a dead rank
    must not leave the others waiting in a collective)."""
    hook = f"{shlex.quote(sys.executable)} -m launch.batch"
    where = f"--stage-dir {shlex.quote(str(stage_dir))} --max-requeues {int(max_requeues)}"
    return {
        "slurm_srun_args": ["--kill-on-bad-exit=1"],
        "slurm_setup": [f"export {BATCH_DECIDES}=1", f"{hook} start {where} || exit $?"],
        "slurm_teardown": [f"{hook} end --status $? {where}"],
    }


def build_executor(
    cfg: DictConfig, stage_dir: Path, dependency: str | None, use_gpus: bool, max_requeues: int | None = None
) -> submitit.AutoExecutor:
    """A SLURM executor for one stage job from the launch keys of `BurnConfig`."""
    executor = submitit.AutoExecutor(folder=stage_dir / rundir.SLURM_DIR / "%j", cluster="slurm")
    additional: dict[str, Any] = {"requeue": True}
    if dependency:
        additional["dependency"] = dependency
    params: dict[str, Any] = dict(
        name=f"burn-{cfg.name}-{cfg.stage}",
        nodes=cfg.nodes,
        tasks_per_node=cfg.gpus_per_node,
        cpus_per_task=cfg.cpus_per_task,
        timeout_min=cfg.time,
        slurm_signal_delay_s=cfg.signal_delay_s,
        slurm_additional_parameters=additional,
        **batch_hooks(stage_dir, cfg.max_requeues if max_requeues is None else max_requeues),
    )
    if use_gpus:
        params["gpus_per_node"] = cfg.gpus_per_node
    optional = {
        "slurm_partition": cfg.partition,
        "slurm_account": cfg.account,
        "slurm_qos": cfg.qos,
        "slurm_constraint": cfg.constraint,
        "slurm_mem": cfg.mem,
    }
    params.update({k: v for k, v in optional.items() if v is not None})
    executor.update_parameters(**params)
    return executor


def submit_stages(stage_cfgs: list[DictConfig], max_requeues: int) -> list[SubmittedStage]:
    """Queue the stages in order, each after the previous one (afterok); skip complete stages and
    reuse a still-active job of the same run dir instead of starting a second writer."""
    results: list[SubmittedStage] = []
    previous_job: str | None = None
    use_gpus = slurm_cli.partition_has_gpus(stage_cfgs[0].partition)
    for cfg in stage_cfgs:
        stage_dir = Path(cfg.run_dir)
        if (stage_dir / rundir.DONE).exists():
            results.append(SubmittedStage(str(cfg.stage), stage_dir, None, "done"))
            previous_job = None
            continue
        running = active_job(stage_dir)
        if running:
            results.append(
                SubmittedStage(str(cfg.stage), stage_dir, running, "queued", stage_dir / rundir.SLURM_DIR / running)
            )
            previous_job = running
            continue
        dependency = f"afterok:{previous_job}" if previous_job else None
        executor = build_executor(cfg, stage_dir, dependency, use_gpus, max_requeues)
        job = executor.submit(StageJob(OmegaConf.to_yaml(cfg, resolve=True), max_requeues))
        log_dir = stage_dir / rundir.SLURM_DIR / job.job_id
        rundir.append_jsonl(
            rundir.jobs_file(stage_dir),
            {
                "job_id": job.job_id,
                "stage": str(cfg.stage),
                "via": "submitit",
                "dependency": dependency,
                "submitted": time.time(),
                "log_dir": str(log_dir),
            },
        )
        results.append(SubmittedStage(str(cfg.stage), stage_dir, job.job_id, "submitted", log_dir))
        previous_job = job.job_id
    return results
