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
from launch.site import site_settings


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
    """A SLURM executor for one stage job from the launch keys of `BurnConfig` (slurm.* and container.*:
    launch/site.py, which refuses an sbatch option the suite sets itself)."""
    site = site_settings(cfg)
    container: dict[str, Any] = {}
    if site.container.prefix:  # srun runs the runtime, the runtime python inside the image
        container["slurm_python"] = site.container.prefix_text()
    executor = submitit.AutoExecutor(folder=stage_dir / rundir.SLURM_DIR / "%j", cluster="slurm", **container)
    additional: dict[str, Any] = {**site.sbatch, "requeue": True}
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
    )
    # The site's set-up lines first, then the batch hooks; the hooks run outside any container, so the
    # requeue decision (and scontrol) never needs the image.
    hooks = batch_hooks(stage_dir, cfg.max_requeues if max_requeues is None else max_requeues)
    params["slurm_setup"] = [*site.setup_lines, *hooks["slurm_setup"]]
    params["slurm_teardown"] = hooks["slurm_teardown"]
    params["slurm_srun_args"] = [*hooks["slurm_srun_args"], *site.srun, *site.container.srun_args]
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


def sbatch_script(executor: submitit.AutoExecutor) -> str:
    """The script `executor.submit` hands to sbatch, made without submitting (the dry run prints it).

    Submitit has no public call for it: this is the suite's one use of its private API (the SLURM
    executor's ``_make_submission_file_text(command, uid)`` and ``_submitit_command_str``, the command a
    submit runs). tests/launch/test_submit.py compares it with what a real submit hands sbatch, so a
    Submitit version that changes either fails there."""
    slurm = executor._executor
    return slurm._make_submission_file_text(slurm._submitit_command_str, "dry-run")


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
