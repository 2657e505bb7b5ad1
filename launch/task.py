"""What runs on every SLURM task of a stage job (and in this process for cluster=local): run the
stage, then turn its exit code into a summary, a requeue or an error. Submitting: launch/jobs.py.

Every task calls `burn.engine.stage.run_stage`, which returns 0 (stage complete) or 75 (a
preemption/time-limit signal came, a checkpoint was written). On 75 the job is requeued under the same
id (``scontrol requeue``, as Submitit itself does; who does it: below) and every task exits *without* a
Submitit result, so whoever waits on the job keeps waiting for the requeued run.

Signals (which means what: burn/runtime/signal_flags.py). The job unpickles launch/job_entry.py's StageJob,
which imports nothing heavy and installs burn's flag-only recorder before the stage code is imported,
so a signal during start-up is recorded, never fatal. Submitit installs its own handlers after
unpickling (SIGUSR2 -> checkpoint() on global rank 0 and requeue mid-step; SIGTERM -> ignore);
StageJob re-installs burn's recorder first thing, and `run_stage` its stage handler: on every rank
burn's handler wins, all ranks finish the step, agree to stop, write one checkpoint and return 75
(USR2: requeue), 143 (SIGTERM: a user's scancel, stay cancelled) or 130 (Ctrl-C). If Submitit's
handler fires in the few statements between, `checkpoint()` (inherited) resubmits this same job,
which resumes from the newest checkpoint: nothing is lost.

Who requeues. In a job launch/jobs.py submitted (and under slurm/stage.sbatch) the batch shell decides
after srun, for every way a stage can end (launch/batch.py: preemption, a dead peer, a killed rank, a
user's fault); the tasks only exit with their code and record how they ended. Elsewhere (a
hydra-submitit-launcher sweep job, whose script has no such hook) global rank 0 requeues a preempted
job itself, under the same limits (``max_requeues``, the crash-loop rule: launch/batch.py).
"""

from __future__ import annotations

import json
import logging
import signal
import sys
from pathlib import Path
from typing import Any

from omegaconf import DictConfig, OmegaConf

from burn.config import BurnConfig, load_saved_config
from burn.engine.stage import run_stage
from burn.resume.signals import CANCEL_EXIT_CODE, INTERRUPT_EXIT_CODE, REQUEUE_EXIT_CODE, STOP_SIGNALS
from burn.runtime import rundir, slurm_cli
from burn.runtime.environment import Environment, image_stamp
from burn.validation import check_closed_choices
from launch.batch import RequeueRefused, decide_requeue

log = logging.getLogger("burn.launch")


def stage_config(stage_yaml: str) -> DictConfig:
    """The typed stage config from its resolved YAML (what the job pickle carries; a job queued before a
    key moved reads with the value where it is now)."""
    return OmegaConf.merge(OmegaConf.structured(BurnConfig), load_saved_config(stage_yaml))


def _ignore_preemption_signals() -> None:
    # run_stage restored Submitit's handlers on return; a late USR2 must not make Submitit
    # requeue a second time (or record a result) while we hand over to the requeued run.
    for signum in STOP_SIGNALS:
        signal.signal(signum, signal.SIG_IGN)


def stage_summary(stage_dir: Path) -> dict[str, Any]:
    """What a finished stage reports back: its dir, step, and top-1/top-5 for an evaluation (linear,
    finetune)."""
    summary: dict[str, Any] = {"run_dir": str(stage_dir)}
    for name in (rundir.PROGRESS, *rundir.RESULTS.values()):
        path = stage_dir / name
        if path.exists():
            data = json.loads(path.read_text())
            summary.update({k: data[k] for k in ("stage", "step", "top1", "top5") if k in data})
    return summary


def conclude_task(cfg: DictConfig, code: int, max_requeues: int, environment: Environment) -> dict[str, Any]:
    """Turn run_stage's exit code into the task's outcome: a summary, a requeue, or an error."""
    stage_dir = Path(cfg.run_dir)
    if code == 0:
        return stage_summary(stage_dir)
    if code in (CANCEL_EXIT_CODE, INTERRUPT_EXIT_CODE):
        # A user's stop (scancel = SIGTERM, Ctrl-C): checkpoint written, no requeue. SLURM marks the job
        # CANCELLED and, with afterok, cancels its dependants; under PreemptMode=REQUEUE it requeues
        # a preempted job itself. SystemExit: Submitit records no result.
        _ignore_preemption_signals()
        log.warning(
            "stage in %s stopped by %s; not requeuing. Submit the same command again to resume",
            stage_dir,
            "a cancel (SIGTERM)" if code == CANCEL_EXIT_CODE else "Ctrl-C",
        )
        sys.exit(code)
    if code != REQUEUE_EXIT_CODE:
        raise RuntimeError(f"run_stage returned unexpected exit code {code} for {stage_dir}")
    _ignore_preemption_signals()
    if environment.batch_decides:
        sys.exit(REQUEUE_EXIT_CODE)  # the batch shell requeues (launch/batch.py), after every task ended
    job_id = environment.job_id
    if job_id is None:
        raise RequeueRefused(
            f"stage in {stage_dir} was interrupted outside SLURM; run the same "
            "command again to resume from its checkpoint"
        )
    if environment.rank == 0:
        restarts = environment.restarts
        step = decide_requeue(stage_dir, max_requeues, job_id, restarts)
        # Logged first: SLURM may kill this task as it requeues the job (launch/batch.py says the same).
        log.warning(
            "job %s requeued (restart %d of at most %d), resumes from step %d", job_id, restarts + 1, max_requeues, step
        )
        slurm_cli.requeue(job_id)
    # SystemExit is not an Exception: Submitit writes no result and the waiters keep waiting.
    sys.exit(REQUEUE_EXIT_CODE)


def run_task(stage_yaml: str, max_requeues: int) -> dict[str, Any]:
    """The body of a Submitit stage job on one task (launch/job_entry.py's StageJob calls it)."""
    cfg = stage_config(stage_yaml)
    # The job is its own entry: a config queued without submit.py's checks (or edited since) fails here,
    # once, with the same line (the stage's start-up checks the rest).
    check_closed_choices(cfg)
    environment = Environment.read()
    print(
        f"burn: stage {cfg.stage} job {environment.job_id} global rank {environment.rank}/"
        f"{environment.ntasks or 1} on {environment.node or '?'}, restart {environment.restarts}, "
        f"run dir {cfg.run_dir}" + (f", image {image}" if (image := image_stamp()) else ""),
        flush=True,
    )
    code = run_stage(cfg, environment)  # installs burn's stop-signal handlers over Submitit's
    return conclude_task(cfg, code, max_requeues, environment)


def run_stages_here(stage_cfgs: list[DictConfig], max_requeues: int) -> list[dict[str, Any]]:
    """Run the stages one after another in this process (cluster=local, or every task of a
    hydra-submitit-launcher sweep job). Complete stages are skipped; a preemption requeues the
    SLURM job (when there is one) or stops with exit code 75 for a later resume."""
    environment = Environment.read()
    summaries = []
    for cfg in stage_cfgs:
        stage_dir = Path(cfg.run_dir)
        if (stage_dir / rundir.DONE).exists():
            log.info("stage %s in %s is complete; skipping", cfg.stage, stage_dir)
            summaries.append(stage_summary(stage_dir))
            continue
        code = run_stage(cfg, environment)
        outside_slurm = code == REQUEUE_EXIT_CODE and environment.job_id is None
        if code in (CANCEL_EXIT_CODE, INTERRUPT_EXIT_CODE) or outside_slurm:
            print(
                f"stage {cfg.stage} interrupted; its checkpoint is in {stage_dir / rundir.CHECKPOINTS}. "
                "Run the same command again to resume.",
                file=sys.stderr,
            )
            sys.exit(code)
        summaries.append(conclude_task(cfg, code, max_requeues, environment))
    return summaries
