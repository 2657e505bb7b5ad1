"""Run one stage in this process, as one rank of many: what every SLURM task (and torchrun worker) runs.

Exit codes (also the return value of `run_stage`):
  0   the stage is complete (rerunning a complete stage is a no-op);
  75  REQUEUE_EXIT_CODE: a preemption signal arrived, a checkpoint was written, requeue me;
  1   error (raised as an exception from `run_stage`).
"""

from __future__ import annotations

import logging
from pathlib import Path

import torch
from omegaconf import DictConfig, OmegaConf

from burn.engine.distributed import (
    DistInfo,
    all_gather_objects,
    init_distributed,
    seed_everything,
    shutdown_distributed,
)
from burn.engine.gpu import configure_backends
from burn.monitor.reporting import configure_console_logging, record_failure
from burn.resume.identity import check_resume_config
from burn.resume.run_lock import ConfigMismatchError, RunDirBusyError, RunDirLock, write_config_if_changed
from burn.resume.signals import PreemptionHandler
from burn.runtime import faults
from burn.runtime.environment import Environment
from burn.runtime.errors import UsageError, one_line
from burn.runtime.rundir import CONFIG, DONE, SLURM_DIR, stage_run_dir
from burn.runtime.signal_flags import CANCEL_EXIT_CODE, INTERRUPT_EXIT_CODE, REQUEUE_EXIT_CODE
from burn.validation import RUNNABLE_STAGES, check_data, check_stage, check_values

log = logging.getLogger("burn")


def resolve_run_dir(cfg: DictConfig) -> Path:
    """`run_dir` if given, else runs/<name>/stage<N> (runs/<name>/linear), absolute."""
    return stage_run_dir(cfg.run_dir, cfg.name, str(cfg.stage))


#: run_stage's return code -> the ending a rank records for the batch shell (burn/runtime/faults.py).
_STOP_OUTCOMES = {
    REQUEUE_EXIT_CODE: faults.PREEMPTED,
    CANCEL_EXIT_CODE: faults.CANCELLED,
    INTERRUPT_EXIT_CODE: faults.INTERRUPTED,
}


def _record_ending(
    run_dir: Path | None, environment: Environment, code: int, step: int | None, err: BaseException | None
) -> None:
    """Inside a SLURM job: tell the batch shell how this rank stopped (launch/batch.py decides). A
    UsageError before the stage's folder exists writes nothing (bad input leaves no trace)."""
    if environment.job_id is None or run_dir is None:
        return
    if err is not None:
        if isinstance(err, UsageError) and not (run_dir / SLURM_DIR).is_dir():
            return
        kind = faults.classify(err)
        outcome, cause, code, error = kind.outcome, kind.cause, kind.exit_code, one_line(err)
    elif code in _STOP_OUTCOMES:
        outcome, cause, error = _STOP_OUTCOMES[code], _STOP_OUTCOMES[code], ""
    else:
        return
    faults.record_ending(
        run_dir, environment.job_id, environment.restarts, environment.rank, outcome, cause, step, code, error
    )


def _cpu_threads(environment: Environment) -> None:
    """One rank per SLURM task: use the task's CPUs, not every core of the node."""
    if environment.cpus:
        torch.set_num_threads(environment.cpus)


def _claim_run_dir(
    cfg: DictConfig, run_dir: Path, world_size: int, environment: Environment | None = None
) -> tuple[RunDirLock | None, str]:
    """Rank 0's start-up in the run directory: checks, lock, identity check, config.yaml. Returns the
    lock (held until the stage ends) and "run" or "done". Bad input fails before anything is written.
    `cfg` is complete and is not changed here: every input file it names exists already (the entry
    points made them), and config.yaml is written as it is."""
    check_values(cfg)  # the closed choices were checked when the config was composed
    if not (run_dir / DONE).exists():
        check_data(cfg)
    check_stage(cfg, world_size, run_dir)  # the same checks as launch/submit.py
    run_dir.mkdir(parents=True, exist_ok=True)
    lock = RunDirLock(run_dir, environment).acquire()
    try:
        saved = run_dir / CONFIG
        if saved.exists():
            check_resume_config(saved.read_text(), cfg, run_dir, cfg.checkpoint.force)
        if (run_dir / DONE).exists():
            return lock, "done"
        write_config_if_changed(run_dir, OmegaConf.to_yaml(cfg, resolve=True))
        return lock, "run"
    except BaseException:
        lock.release()
        raise


#: Errors rank 0 relays to the other ranks by name, so every rank fails the same way (subclasses first).
_RELAYED = {cls.__name__: cls for cls in (ConfigMismatchError, RunDirBusyError, UsageError)}


def _start_up(cfg: DictConfig, info: DistInfo, run_dir: Path) -> tuple[RunDirLock | None, str]:
    """Rank 0 claims the run directory and tells the others the outcome: only one process reads or
    writes its files, so no rank can read a config.yaml that is being rewritten."""
    lock, error, decision = None, None, None
    if info.is_main:
        try:
            lock, action = _claim_run_dir(cfg, run_dir, info.world_size, info.environment)
            decision = ("ok", action, "")
        except Exception as err:
            if not info.distributed:
                raise
            relayed = next((name for name, cls in _RELAYED.items() if isinstance(err, cls)), type(err).__name__)
            error, decision = err, ("error", relayed, str(err))  # a UsageError subclass relays as its base
    kind, what, message = all_gather_objects(info, decision)[0]
    if kind == "ok":
        return lock, what
    if error is not None:
        raise error
    if what in _RELAYED:
        raise _RELAYED[what](message)
    raise RuntimeError(f"rank 0 failed to start the stage: {what}: {message}")


def run_stage(cfg: DictConfig, environment: Environment | None = None) -> int:
    """Run stage `cfg.stage` as the rank `environment` names (default: read from this process's)."""
    stage = str(cfg.stage)
    if stage not in RUNNABLE_STAGES:
        raise UsageError(
            f"stage={stage!r}: the stage runner runs one of {', '.join(RUNNABLE_STAGES)} "
            "(stage=all is for launch/submit.py)"
        )
    # Handlers first: a signal that arrives while we start up still produces a checkpoint + requeue.
    with PreemptionHandler() as preemption:
        environment = Environment.read() if environment is None else environment
        configure_console_logging(environment.rank)
        info = init_distributed(environment=environment)
        lock, loop, run_dir = None, None, None
        try:
            _cpu_threads(environment)
            configure_backends(info.device, deterministic=cfg.train.deterministic)
            run_dir = resolve_run_dir(cfg)
            lock, action = _start_up(cfg, info, run_dir)
            if action == "done":
                log.info("stage %s in %s is already complete; nothing to do", stage, run_dir)
                return 0
            seed_everything(cfg.seed, info.rank)
            if stage == "linear":
                from burn.engine.linear import LinearEvalTrainer as Loop
            elif stage == "finetune":
                from burn.engine.finetune import FinetuneTrainer as Loop
            else:
                from burn.engine.trainer import PretrainTrainer as Loop
            loop = Loop(cfg, info, run_dir, preemption)
            code = loop.run()
            _record_ending(run_dir, environment, code, loop.step, None)
            return code
        except Exception as err:
            # First, before the process group is shut down: a dead peer can make that hang.
            _record_ending(run_dir, environment, 1, loop.step if loop is not None else None, err)
            if lock is not None:  # rank 0, in its run directory: launch/status.py shows the error
                infra = faults.classify(err).outcome == faults.INFRA
                record_failure(run_dir, err, state="fault" if infra else "failed")
            raise
        finally:
            if lock is not None:
                lock.release()
            shutdown_distributed()
