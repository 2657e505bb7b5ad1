"""What the batch shell of a stage job runs around srun, in both launch paths (Submitit's script from
launch/jobs.py, slurm/stage.sbatch): one place decides whether a job requeues itself.

    python -m launch.batch start  (--stage-dir DIR --max-requeues N | -- OVERRIDES...)
    python -m launch.batch end --status S  (--stage-dir DIR --max-requeues N | -- OVERRIDES...)

``start`` (before srun, on a requeued run only): a requeue SLURM made itself (NODE_FAIL, or its own
preemption under PreemptMode=REQUEUE) is recorded in requeues.jsonl with its cause and held to the same
limits; past them the job stops here, with one line.

``end`` (after srun, with srun's exit status): reads how each rank stopped (burn/runtime/faults.py's
ending files) and decides for the job. A user's or data fault on any rank: the job fails as the rank
said (no output here: the rank's one line stays the last of the log). A cancel or Ctrl-C: stays
stopped. A preemption signal, an infrastructure fault on any rank, or a rank that ended without a word
(killed by a signal: the OOM killer, ``kill -9``, a lost node): ``scontrol requeue`` under the same job
id, unless ``max_requeues`` is reached or it is a crash loop (:data:`CRASH_LOOP_LIMIT` faults in a row at
the same checkpoint step of one job), which end the job with one line naming the cause.

Every decision to requeue is one line of ``<stage>/slurm/requeues.jsonl`` (job id, restart count,
checkpoint step, cause, when the fault was noticed and how long the requeue took); launch/status.py
shows them. Torch is imported only to verify the newest checkpoint, when a requeue is being decided.
"""

from __future__ import annotations

import argparse
import contextlib
import subprocess
import sys
import time
from collections.abc import Sequence
from pathlib import Path

from burn.runtime import faults, rundir, slurm_cli
from burn.runtime.environment import Environment
from burn.runtime.errors import FAULT_EXIT_CODE, one_line
from burn.runtime.signal_flags import CANCEL_EXIT_CODE, INTERRUPT_EXIT_CODE

#: Requeues in a row at the same checkpoint step (of one job) that count as a crash loop.
CRASH_LOOP_LIMIT = 3
#: What SLURM's accounting calls a run that SLURM itself requeued -> the cause the ledger records.
SLURM_REQUEUE_CAUSES = {
    "NODE_FAIL": faults.NODE_FAILURE,
    "PREEMPTED": "preempted by SLURM",
    "REQUEUED": "requeued outside burn (scontrol requeue)",
}


class RequeueRefused(RuntimeError):
    """A job is not requeued (limit reached or no progress); its checkpoint is intact."""


def _latest_checkpoint_step(stage_dir: Path) -> int | None:
    from burn.resume.checkpoint import CheckpointManager  # torch: only when a requeue is decided

    return CheckpointManager(stage_dir / rundir.CHECKPOINTS).latest_step()


def decide_requeue(
    stage_dir: Path,
    max_requeues: int,
    job_id: str,
    restarts: int,
    cause: str = faults.PREEMPTED,
    **details: float,
) -> int | None:
    """Record this requeue in the stage's ledger; raise RequeueRefused when it must not happen.

    Returns the checkpoint step the requeued job resumes from (None: from the start)."""
    step = _latest_checkpoint_step(stage_dir)
    ledger = rundir.requeues_file(stage_dir)
    where = f"its checkpoint at step {step} is intact" if step is not None else "it holds no checkpoint yet"
    if step is None and cause == faults.PREEMPTED:
        raise RequeueRefused(
            f"job {job_id} was preempted but {stage_dir / rundir.CHECKPOINTS} holds no valid checkpoint; not requeuing"
        )
    if restarts >= max_requeues:
        raise RequeueRefused(
            f"job {job_id} stopped ({cause}) after {restarts} requeues (max_requeues={max_requeues}); not "
            f"requeuing. {where.capitalize()}: submit the same command again (or raise max_requeues) to continue."
        )
    records = [r for r in rundir.read_jsonl(ledger) if str(r.get("job_id")) == str(job_id)]
    previous = records[-(CRASH_LOOP_LIMIT - 1) :]
    record = {"job_id": job_id, "restarts": restarts, "step": step, "cause": cause, "time": time.time(), **details}
    if len(previous) == CRASH_LOOP_LIMIT - 1 and all(r.get("step") == step for r in previous):
        causes = "; ".join(dict.fromkeys(str(r.get("cause", faults.PREEMPTED)) for r in [*previous, record]))
        rundir.append_jsonl(ledger, {**record, "refused": "crash loop"})
        at = f"checkpoint step {step}" if step is not None else "the start (no checkpoint yet)"
        raise RequeueRefused(
            f"crash loop: job {job_id} stopped {CRASH_LOOP_LIMIT} times in a row at {at} without progress "
            f"({causes}); not requeuing (ledger: {ledger}). Check the log for why the stage cannot advance."
        )
    rundir.append_jsonl(ledger, record)
    return step


def _fault_step(stage_dir: Path, endings: list[faults.Ending]) -> int | None:
    steps = [e.step for e in endings if e.step is not None]
    if steps:
        return max(steps)
    return rundir.read_json(stage_dir / rundir.PROGRESS).get("step")


def _refuse(stage_dir: Path, message: str) -> int:
    """End the job with one line (the last of its log), recorded in progress.json for launch/status.py."""
    line = f"burn job: {message}"
    progress = rundir.read_json(stage_dir / rundir.PROGRESS)
    if progress or (stage_dir / rundir.CONFIG).exists():
        progress.update(state="failed", error=line, updated=time.time())
        with contextlib.suppress(OSError):
            rundir.write_json(stage_dir / rundir.PROGRESS, progress)
    sys.stdout.flush()
    print(line, file=sys.stderr, flush=True)
    return FAULT_EXIT_CODE


def infrastructure_cause(
    endings: list[faults.Ending], status: int, world_size: int | None, stage_dir: Path
) -> tuple[str, str] | None:
    """(cause for the ledger, detail for the log) when the job ended by an infrastructure fault, else None."""
    infra = sorted((e for e in endings if e.outcome == faults.INFRA), key=lambda e: e.time)
    silent = sorted(set(range(world_size)) - {e.rank for e in endings}) if world_size else []
    signal = faults.signal_name(status)
    step = _fault_step(stage_dir, endings)
    at = f" at step {step}" if step is not None else ""
    if infra:
        first = infra[0]
        error = first.error if len(first.error) <= 160 else first.error[:157] + "..."
        detail = f"rank {first.rank}: {error}"
        if silent:
            detail += f"; rank{'s' if len(silent) > 1 else ''} {', '.join(map(str, silent))} ended without a word"
        return f"{first.cause}{at}", detail
    if not endings and signal is not None:
        why = " (e.g. the out-of-memory killer)" if signal == "SIGKILL" else ""
        return f"killed by {signal}{at}", f"no rank said why; srun's exit status {status}: {signal}{why}"
    return None


def conclude_job(stage_dir: Path, max_requeues: int, status: int, environment: Environment) -> int:
    """The `end` hook: the exit status the batch shell ends with (0 after a requeue)."""
    started = time.time()
    job_id, restarts = environment.job_id, environment.restarts
    if (stage_dir / rundir.DONE).exists():
        return 0  # complete, whatever a late signal made of a task's exit status
    if status == 0 or job_id is None:
        return status
    endings = faults.read_endings(stage_dir, job_id, restarts)
    user = [e for e in endings if e.outcome == faults.USER]
    if user:
        return user[0].exit_code  # the rank's one line is the job's last: nothing more is printed
    for outcome, code in ((faults.INTERRUPTED, INTERRUPT_EXIT_CODE), (faults.CANCELLED, CANCEL_EXIT_CODE)):
        if any(e.outcome == outcome for e in endings):
            return code
    if any(e.outcome == faults.PREEMPTED for e in endings):
        cause, detail = faults.PREEMPTED, "a preemption or time-limit signal; checkpoint written"
    else:
        found = infrastructure_cause(endings, status, environment.ntasks, stage_dir)
        if found is None:
            return status  # e.g. a crash before the stage began: fail as before
        cause, detail = found
    state = slurm_cli.job_state(job_id)
    if state is not None and state.startswith("CANCELLED"):
        return status  # a user's scancel while the fault happened: stay cancelled
    noticed = min([e.time for e in endings if e.outcome in (faults.INFRA, faults.PREEMPTED)] or [started])
    if (slurm_cli.restart_count(job_id) or 0) > restarts:
        print(f"batch: job {job_id} was already requeued by SLURM ({cause})", flush=True)
        return 0
    try:
        step = decide_requeue(stage_dir, max_requeues, job_id, restarts, cause, noticed=noticed)
    except RequeueRefused as err:
        return _refuse(stage_dir, str(err))
    took = time.time() - noticed
    resume = f"step {step}" if step is not None else "the start (no checkpoint yet)"
    # Said before `scontrol requeue`: SLURM cancels this very batch shell as it requeues the job, so a
    # line printed after it is lost whenever the cancel wins the race (seen on a loaded machine).
    print(
        f"batch: job {job_id} requeued (restart {restarts + 1} of at most {max_requeues}) after {cause} "
        f"({detail}); resumes from {resume}; {took:.1f} s from the fault noticed "
        f"({time.strftime('%H:%M:%S', time.localtime(noticed))}) to the requeue",
        flush=True,
    )
    try:
        slurm_cli.requeue(job_id)
    except (OSError, subprocess.SubprocessError) as err:
        why = getattr(err, "stderr", None) or err  # scontrol's own words when it answered
        print(f"batch: scontrol requeue {job_id} failed ({str(why).strip()}); the job ends here", flush=True)
        return status
    return 0


def record_slurm_requeue(stage_dir: Path, max_requeues: int, environment: Environment) -> int:
    """The `start` hook: a requeue this job's ledger does not know of was SLURM's own; record it with
    the cause SLURM's accounting gives and hold it to the limits. Returns 0, or 1 to stop the job."""
    job_id, restarts = environment.job_id, environment.restarts
    if job_id is None or restarts == 0:
        return 0
    known = {
        r.get("restarts") for r in rundir.read_jsonl(rundir.requeues_file(stage_dir)) if str(r.get("job_id")) == job_id
    }
    if restarts - 1 in known:
        return 0
    states = slurm_cli.attempt_states(job_id)
    previous = states[restarts - 1] if len(states) >= restarts else "REQUEUED"
    cause = SLURM_REQUEUE_CAUSES.get(previous.split()[0], previous.lower())
    try:
        step = decide_requeue(stage_dir, max_requeues, job_id, restarts - 1, cause, by_slurm=1)
    except RequeueRefused as err:
        return _refuse(stage_dir, str(err))
    resume = f"step {step}" if step is not None else "the start"
    print(f"batch: job {job_id} was requeued by SLURM after {cause}; resumes from {resume}", flush=True)
    return 0


def _stage_and_limit(args: argparse.Namespace) -> tuple[Path, int] | None:
    """The stage directory and max_requeues: given (Submitit's script), or composed from the overrides
    the tasks get (slurm/stage.sbatch) as launch/run.py composes them. None when they do not compose:
    the tasks then report the bad input themselves."""
    if args.stage_dir:
        return Path(args.stage_dir), args.max_requeues
    from burn.config import compose_config

    try:
        cfg = compose_config(args.overrides)
        return rundir.stage_run_dir(cfg.run_dir, cfg.name, str(cfg.stage)), int(cfg.max_requeues)
    except Exception as err:
        print(f"batch: cannot read the stage's config from {' '.join(args.overrides)}: {one_line(err)}", flush=True)
        return None


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m launch.batch", description=__doc__.split("\n\n")[0])
    parser.add_argument("hook", choices=("start", "end"))
    parser.add_argument("--status", type=int, default=0, help="srun's exit status (end)")
    parser.add_argument("--stage-dir", help="the stage's run directory (else composed from the overrides)")
    parser.add_argument("--max-requeues", type=int, default=0)
    argv = list(sys.argv[1:] if argv is None else argv)
    split = argv.index("--") if "--" in argv else len(argv)
    args = parser.parse_args(argv[:split])
    args.overrides = argv[split + 1 :]  # the stage's overrides, as the tasks get them
    found = _stage_and_limit(args)
    if found is None:
        return args.status
    stage_dir, max_requeues = found
    environment = Environment.read()
    if args.hook == "start":
        return record_slurm_requeue(stage_dir, max_requeues, environment)
    return conclude_job(stage_dir, max_requeues, args.status, environment)


if __name__ == "__main__":
    sys.exit(main())
