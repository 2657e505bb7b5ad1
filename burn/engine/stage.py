"""Run one stage in this process, as one rank of many: what every SLURM task (and torchrun worker) runs.

Exit codes (also the return value of `run_stage`):
  0   the stage is complete (rerunning a complete stage is a no-op);
  75  REQUEUE_EXIT_CODE: a preemption signal arrived, a checkpoint was written, requeue me;
  1   error (raised as an exception from `run_stage`).
"""

from __future__ import annotations

import logging
import os
from pathlib import Path
from typing import Any, Dict

import torch
from omegaconf import DictConfig, OmegaConf

from burn.data.loaders import ensure_synthetic
from burn.engine.distributed import barrier, init_distributed, seed_everything, shutdown_distributed
from burn.engine.gpu import configure_backends
from burn.engine.logging import configure_console_logging
from burn.engine.loop import DONE_MARKER
from burn.engine.signals import PreemptionHandler

log = logging.getLogger("burn")

RUNNABLE_STAGES = ("1", "2", "linear")

#: Config sections whose change makes a resumed run a different experiment.
_IDENTITY_KEYS = ("stage", "seed", "model", "data.root", "data.train_list", "data.train_labeled_list",
                  "data.val_list", "data.aug", "train.global_batch", "train.per_gpu_batch",
                  "linear.global_batch", "linear.per_gpu_batch", "linear.num_classes", "pretrained")


class ConfigMismatchError(RuntimeError):
    pass


def _identity(cfg: DictConfig) -> Dict[str, Any]:
    values = {}
    for key in _IDENTITY_KEYS:
        value = OmegaConf.select(cfg, key)
        values[key] = OmegaConf.to_container(value, resolve=True) if OmegaConf.is_config(value) else value
    return values


def check_resume_config(saved_yaml: str, cfg: DictConfig, run_dir: Path, force: bool) -> None:
    """Refuse to continue a run directory whose model or data the new command would change."""
    saved, now = _identity(OmegaConf.create(saved_yaml)), _identity(cfg)
    changed = [k for k in _IDENTITY_KEYS if saved[k] != now[k]]
    if not changed:
        return
    detail = "; ".join(f"{k}: {saved[k]!r} -> {now[k]!r}" for k in changed)
    if force:
        log.warning("continuing %s despite a changed config (checkpoint.force=true): %s", run_dir, detail)
        return
    raise ConfigMismatchError(
        f"{run_dir} belongs to a run with a different config ({detail}). Use a new run_dir, or "
        f"checkpoint.force=true to continue anyway.")


def stage_dir_name(stage: str) -> str:
    return "linear" if stage == "linear" else f"stage{stage}"


def resolve_run_dir(cfg: DictConfig) -> Path:
    """`run_dir` if given, else runs/<name>/stage<N> (runs/<name>/linear), absolute."""
    path = Path(cfg.run_dir) if cfg.run_dir else Path("runs") / cfg.name / stage_dir_name(str(cfg.stage))
    return path.absolute()


def _cpu_threads() -> None:
    """One rank per SLURM task: use the task's CPUs, not every core of the node."""
    cpus = os.environ.get("SLURM_CPUS_PER_TASK") or os.environ.get("OMP_NUM_THREADS")
    if cpus:
        torch.set_num_threads(int(cpus))


def run_stage(cfg: DictConfig) -> int:
    stage = str(cfg.stage)
    if stage not in RUNNABLE_STAGES:
        raise ValueError(f"stage={stage!r}: the stage runner runs one of {RUNNABLE_STAGES} "
                         "(stage=all is for launch/submit.py)")
    # Handlers first: a signal that arrives while we start up still produces a checkpoint + requeue.
    with PreemptionHandler() as preemption:
        configure_console_logging(int(os.environ.get("RANK", os.environ.get("SLURM_PROCID", 0))))
        info = init_distributed()
        try:
            _cpu_threads()
            configure_backends(info.device, deterministic=cfg.train.deterministic)
            run_dir = resolve_run_dir(cfg)
            if (run_dir / "config.yaml").exists():
                check_resume_config((run_dir / "config.yaml").read_text(), cfg, run_dir, cfg.checkpoint.force)
            if (run_dir / DONE_MARKER).exists():
                log.info("stage %s in %s is already complete; nothing to do", stage, run_dir)
                return 0
            if info.is_main:
                run_dir.mkdir(parents=True, exist_ok=True)
                ensure_synthetic(cfg.data)
                (run_dir / "config.yaml").write_text(OmegaConf.to_yaml(cfg, resolve=True))
            barrier(info)
            seed_everything(cfg.seed, info.rank)
            if stage == "linear":
                from burn.engine.linear import LinearEvalTrainer as Loop
            else:
                from burn.engine.trainer import PretrainTrainer as Loop
            return Loop(cfg, info, run_dir, preemption).run()
        finally:
            shutdown_distributed()
