"""Stage jobs: what runs on every SLURM task, how it requeues itself, and how stages are chained.

One Submitit job per stage. Every task of the job calls `burn.engine.stage.run_stage`, which returns
0 (stage complete) or 75 (a preemption/time-limit signal came, a checkpoint was written). On 75,
global rank 0 requeues the job under the same id (``scontrol requeue``, as Submitit itself does) and
every task exits *without* a Submitit result, so whoever waits on the job keeps waiting for the
requeued run.

Signals (which means what: burn/signal_flags.py). The job unpickles launch/job_entry.py's StageJob,
which imports nothing heavy and installs burn's flag-only recorder before the stage code is imported,
so a signal during start-up is recorded, never fatal. Submitit installs its own handlers after
unpickling (SIGUSR2 -> checkpoint() on global rank 0 and requeue mid-step; SIGTERM -> ignore);
StageJob re-installs burn's recorder first thing, and `run_stage` its stage handler: on every rank
burn's handler wins, all ranks finish the step, agree to stop, write one checkpoint and return 75
(USR2: requeue), 143 (SIGTERM: a user's scancel, stay cancelled) or 130 (Ctrl-C). If Submitit's
handler fires in the few statements between, `checkpoint()` (inherited) resubmits this same job,
which resumes from the newest checkpoint: nothing is lost.

Stopping. Requeues are limited by ``max_requeues`` (SLURM_RESTART_COUNT, time-outs included), and
a job that is requeued ``CRASH_LOOP_LIMIT`` times in a row at the same checkpoint step (no
progress) is stopped with an error naming the step and the ledger file. Exceptions are not
requeued: the job fails with the traceback in its log and its dependants are cancelled.
"""

from __future__ import annotations

import json
import logging
import os
import signal
import subprocess
import sys
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Dict, List, Optional

import submitit
from omegaconf import DictConfig, OmegaConf

from burn.config import BurnConfig, load_saved_config
from burn.engine.checkpoint import CheckpointManager
from burn.engine.loop import DONE_MARKER
from burn.engine.signals import CANCEL_EXIT_CODE, INTERRUPT_EXIT_CODE, REQUEUE_EXIT_CODE, STOP_SIGNALS
from burn.engine.stage import run_stage
from launch.job_entry import StageJob

log = logging.getLogger("burn.launch")

REPO = Path(__file__).resolve().parents[1]
#: Submitit's folder inside a stage run dir; one sub-folder per job id.
SUBMITIT_DIR = "slurm"
#: One JSON line per submitted job of a stage, read by launch/status.py.
JOBS_FILE = "jobs.jsonl"
#: One JSON line per requeue of a stage (job id, restart count, checkpoint step).
REQUEUE_LEDGER = "requeues.jsonl"
#: Requeues in a row at the same checkpoint step that count as a crash loop.
CRASH_LOOP_LIMIT = 3
#: Queue states in which a job will still run (or is running): do not submit it twice.
ACTIVE_STATES = {"PENDING", "RUNNING", "REQUEUED", "REQUEUE_HOLD", "REQUEUE_FED", "CONFIGURING",
                 "COMPLETING", "SUSPENDED", "RESIZING", "SIGNALING", "STAGE_OUT"}


class RequeueRefused(RuntimeError):
    """A preempted job is not requeued (limit reached or no progress); its checkpoint is intact."""


def stage_config(stage_yaml: str) -> DictConfig:
    """The typed stage config from its resolved YAML (what the job pickle carries; a job queued before a
    key moved reads with the value where it is now)."""
    return OmegaConf.merge(OmegaConf.structured(BurnConfig), load_saved_config(stage_yaml))


# ---- on the task -----------------------------------------------------------------------------------

def _task_rank() -> int:
    return int(os.environ.get("SLURM_PROCID", os.environ.get("RANK", 0)))


def slurm_job_id() -> Optional[str]:
    """The id `scontrol requeue` takes: ``<array>_<task>`` inside an array job, else SLURM_JOB_ID."""
    env = os.environ
    if env.get("SLURM_ARRAY_JOB_ID") and env.get("SLURM_ARRAY_TASK_ID"):
        return f"{env['SLURM_ARRAY_JOB_ID']}_{env['SLURM_ARRAY_TASK_ID']}"
    return env.get("SLURM_JOB_ID")


def _read_jsonl(path: Path) -> List[Dict[str, Any]]:
    if not path.exists():
        return []
    return [json.loads(line) for line in path.read_text().splitlines() if line.strip()]


def _append_jsonl(path: Path, record: Dict[str, Any]) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    with open(path, "a") as f:
        f.write(json.dumps(record, sort_keys=True) + "\n")


def decide_requeue(stage_dir: Path, max_requeues: int, job_id: str, restarts: int) -> int:
    """Record this requeue in the stage's ledger; raise RequeueRefused when it must not happen.

    Returns the checkpoint step the requeued job will resume from."""
    step = CheckpointManager(stage_dir / "checkpoints").latest_step()
    ledger = stage_dir / SUBMITIT_DIR / REQUEUE_LEDGER
    if step is None:
        raise RequeueRefused(f"job {job_id} was preempted but {stage_dir}/checkpoints holds no valid "
                             "checkpoint; not requeuing")
    if restarts >= max_requeues:
        raise RequeueRefused(
            f"job {job_id} was preempted or timed out after {restarts} requeues (max_requeues="
            f"{max_requeues}); not requeuing. Its checkpoint at step {step} is intact: submit the same "
            "command again (or raise max_requeues) to continue.")
    previous = [r["step"] for r in _read_jsonl(ledger)][-(CRASH_LOOP_LIMIT - 1):]
    _append_jsonl(ledger, {"job_id": job_id, "restarts": restarts, "step": step, "time": time.time()})
    if len(previous) == CRASH_LOOP_LIMIT - 1 and all(s == step for s in previous):
        raise RequeueRefused(
            f"crash loop: job {job_id} was preempted {CRASH_LOOP_LIMIT} times in a row at checkpoint "
            f"step {step} without progress (ledger: {ledger}); not requeuing. Check the log for why "
            "the stage cannot advance (e.g. a signal lead shorter than start-up + one step).")
    return step


def requeue_job(job_id: str) -> None:
    """``scontrol requeue``: the job goes back to the queue under the same id."""
    subprocess.run(["scontrol", "requeue", job_id], check=True, timeout=60, capture_output=True, text=True)


def _ignore_preemption_signals() -> None:
    # run_stage restored Submitit's handlers on return; a late USR2 must not make Submitit
    # requeue a second time (or record a result) while we hand over to the requeued run.
    for signum in STOP_SIGNALS:
        signal.signal(signum, signal.SIG_IGN)


def stage_summary(stage_dir: Path) -> Dict[str, Any]:
    """What a finished stage reports back: its dir, step, and top-1/top-5 for linear evaluation."""
    summary: Dict[str, Any] = {"run_dir": str(stage_dir)}
    for name in ("progress.json", "linear_eval.json"):
        path = stage_dir / name
        if path.exists():
            data = json.loads(path.read_text())
            summary.update({k: data[k] for k in ("stage", "step", "top1", "top5") if k in data})
    return summary


def conclude_task(cfg: DictConfig, code: int, max_requeues: int) -> Dict[str, Any]:
    """Turn run_stage's exit code into the task's outcome: a summary, a requeue, or an error."""
    stage_dir = Path(cfg.run_dir)
    if code == 0:
        return stage_summary(stage_dir)
    if code in (CANCEL_EXIT_CODE, INTERRUPT_EXIT_CODE):
        # A user's stop (scancel = SIGTERM, Ctrl-C): checkpoint written, no requeue. SLURM marks the job
        # CANCELLED and, with afterok, cancels its dependants; under PreemptMode=REQUEUE it requeues
        # a preempted job itself. SystemExit: Submitit records no result.
        _ignore_preemption_signals()
        log.warning("stage in %s stopped by %s; not requeuing. Submit the same command again to resume",
                    stage_dir, "a cancel (SIGTERM)" if code == CANCEL_EXIT_CODE else "Ctrl-C")
        sys.exit(code)
    if code != REQUEUE_EXIT_CODE:
        raise RuntimeError(f"run_stage returned unexpected exit code {code} for {stage_dir}")
    _ignore_preemption_signals()
    job_id = slurm_job_id()
    if job_id is None:
        raise RequeueRefused(f"stage in {stage_dir} was interrupted outside SLURM; run the same "
                             "command again to resume from its checkpoint")
    if _task_rank() == 0:
        restarts = int(os.environ.get("SLURM_RESTART_COUNT", 0))
        step = decide_requeue(stage_dir, max_requeues, job_id, restarts)
        requeue_job(job_id)
        log.warning("job %s requeued (restart %d of at most %d), resumes from step %d", job_id,
                    restarts + 1, max_requeues, step)
    # SystemExit is not an Exception: Submitit writes no result and the waiters keep waiting.
    sys.exit(REQUEUE_EXIT_CODE)


def run_task(stage_yaml: str, max_requeues: int) -> Dict[str, Any]:
    """The body of a Submitit stage job on one task (launch/job_entry.py's StageJob calls it)."""
    cfg = stage_config(stage_yaml)
    env = os.environ
    print(f"burn: stage {cfg.stage} job {slurm_job_id()} global rank {_task_rank()}/"
          f"{env.get('SLURM_NTASKS', 1)} on {env.get('SLURMD_NODENAME', '?')}, restart "
          f"{env.get('SLURM_RESTART_COUNT', 0)}, run dir {cfg.run_dir}", flush=True)
    code = run_stage(cfg)  # installs burn's stop-signal handlers over Submitit's
    return conclude_task(cfg, code, max_requeues)


# ---- submission ------------------------------------------------------------------------------------

@dataclass
class SubmittedStage:
    stage: str
    stage_dir: Path
    job_id: Optional[str]
    """None when the stage was already complete (DONE) and nothing was queued."""
    action: str
    """submitted | queued (an earlier job of this dir is still active) | done."""
    log_dir: Optional[Path] = None


def queue_state(job_id: str) -> Optional[str]:
    """The job's state while SLURM still lists it (squeue), else None."""
    out = subprocess.run(["squeue", "-h", "-j", job_id, "-o", "%T"], capture_output=True, text=True,
                         timeout=30)
    state = out.stdout.strip().split("\n")[0] if out.returncode == 0 else ""
    return state or None


def active_job(stage_dir: Path) -> Optional[str]:
    """The newest recorded job of this stage dir that is still pending or running, if any."""
    for record in reversed(_read_jsonl(stage_dir / SUBMITIT_DIR / JOBS_FILE)):
        if queue_state(record["job_id"]) in ACTIVE_STATES:
            return record["job_id"]
    return None


def gpus_in_cluster(partition: Optional[str]) -> bool:
    """Whether the (given) partition's nodes advertise GPUs as generic resources."""
    cmd = ["sinfo", "-h", "-o", "%G"] + (["-p", partition] if partition else [])
    out = subprocess.run(cmd, capture_output=True, text=True, timeout=30)
    return "gpu" in out.stdout


def build_executor(cfg: DictConfig, stage_dir: Path, dependency: Optional[str],
                   use_gpus: bool) -> submitit.AutoExecutor:
    """A SLURM executor for one stage job from the launch keys of `BurnConfig`."""
    executor = submitit.AutoExecutor(folder=stage_dir / SUBMITIT_DIR / "%j", cluster="slurm")
    additional: Dict[str, Any] = {"requeue": True}
    if dependency:
        additional["dependency"] = dependency
    params: Dict[str, Any] = dict(
        name=f"burn-{cfg.name}-{cfg.stage}", nodes=cfg.nodes, tasks_per_node=cfg.gpus_per_node,
        cpus_per_task=cfg.cpus_per_task, timeout_min=cfg.time, slurm_signal_delay_s=cfg.signal_delay_s,
        slurm_additional_parameters=additional,
        # The job imports launch.jobs: make the checkout importable wherever sbatch starts it.
        slurm_setup=[f"export PYTHONPATH={REPO}${{PYTHONPATH:+:$PYTHONPATH}}"],
    )
    if use_gpus:
        params["gpus_per_node"] = cfg.gpus_per_node
    optional = {"slurm_partition": cfg.partition, "slurm_account": cfg.account, "slurm_qos": cfg.qos,
                "slurm_constraint": cfg.constraint, "slurm_mem": cfg.mem}
    params.update({k: v for k, v in optional.items() if v is not None})
    executor.update_parameters(**params)
    return executor


def submit_stages(stage_cfgs: List[DictConfig], max_requeues: int) -> List[SubmittedStage]:
    """Queue the stages in order, each after the previous one (afterok); skip complete stages and
    reuse a still-active job of the same run dir instead of starting a second writer."""
    results: List[SubmittedStage] = []
    previous_job: Optional[str] = None
    use_gpus = gpus_in_cluster(stage_cfgs[0].partition)
    for cfg in stage_cfgs:
        stage_dir = Path(cfg.run_dir)
        if (stage_dir / DONE_MARKER).exists():
            results.append(SubmittedStage(str(cfg.stage), stage_dir, None, "done"))
            previous_job = None
            continue
        running = active_job(stage_dir)
        if running:
            results.append(SubmittedStage(str(cfg.stage), stage_dir, running, "queued",
                                          stage_dir / SUBMITIT_DIR / running))
            previous_job = running
            continue
        dependency = f"afterok:{previous_job}" if previous_job else None
        executor = build_executor(cfg, stage_dir, dependency, use_gpus)
        job = executor.submit(StageJob(OmegaConf.to_yaml(cfg, resolve=True), max_requeues))
        log_dir = stage_dir / SUBMITIT_DIR / job.job_id
        _append_jsonl(stage_dir / SUBMITIT_DIR / JOBS_FILE, {
            "job_id": job.job_id, "stage": str(cfg.stage), "via": "submitit", "dependency": dependency,
            "submitted": time.time(), "log_dir": str(log_dir)})
        results.append(SubmittedStage(str(cfg.stage), stage_dir, job.job_id, "submitted", log_dir))
        previous_job = job.job_id
    return results


def run_stages_here(stage_cfgs: List[DictConfig], max_requeues: int) -> List[Dict[str, Any]]:
    """Run the stages one after another in this process (cluster=local, or every task of a
    hydra-submitit-launcher sweep job). Complete stages are skipped; a preemption requeues the
    SLURM job (when there is one) or stops with exit code 75 for a later resume."""
    summaries = []
    for cfg in stage_cfgs:
        stage_dir = Path(cfg.run_dir)
        if (stage_dir / DONE_MARKER).exists():
            log.info("stage %s in %s is complete; skipping", cfg.stage, stage_dir)
            summaries.append(stage_summary(stage_dir))
            continue
        code = run_stage(cfg)
        if code in (CANCEL_EXIT_CODE, INTERRUPT_EXIT_CODE) or (code == REQUEUE_EXIT_CODE and slurm_job_id() is None):
            print(f"stage {cfg.stage} interrupted; its checkpoint is in {stage_dir}/checkpoints. "
                  "Run the same command again to resume.", file=sys.stderr)
            sys.exit(code)
        summaries.append(conclude_task(cfg, code, max_requeues))
    return summaries
