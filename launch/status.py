"""Where is my run? `burn-status RUN_DIR` (or `python launch/status.py RUN_DIR`)

RUN_DIR is the parent of a stage=all run (stage1/, stage2/, linear/, finetune/), one stage's run dir, or a
folder of runs (e.g. runs/: every run under it, a few levels deep, is reported). For each stage:
its SLURM jobs and their states (squeue while queued, sacct after), restarts and their causes
(requeues.jsonl: ``requeued 2x: peer rank died at step 9; preempted``), ranks (and their
changes by elastic resumes), step/total, last loss, lambda, images/s (progress.json) and top-1
(linear_eval.json, finetune_eval.json). A folder holding two or more fine-tuning runs (the points of an lr
grid: ``submit.py -m stage=finetune finetune.lr=... finetune.head_lr_scale=...``) ends with the grid's
table, the best point marked by validation top-1 (the protocol's choice, and optimistic:
docs/finetuning.md). A failed stage is reported with its error line (recorded in progress.json, else
the log's last line), its log file and the log's last lines.

Exit status: 0 when nothing failed (a stage its user cancelled, with scancel or Ctrl-C, says
"CANCELLED" and is not a failure), 1 when a stage or job failed, 2 when RUN_DIR holds no stage.
Reads files and asks SLURM; imports neither torch nor the training code (only burn/runtime/rundir.py and
burn/runtime/slurm_cli.py), so it answers fast.
"""

from __future__ import annotations

import argparse
import sys
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from burn.runtime import rundir, slurm_cli

FAILED_STATES = {"FAILED", "CANCELLED", "TIMEOUT", "OUT_OF_MEMORY", "NODE_FAIL", "BOOT_FAIL", "DEADLINE", "PREEMPTED"}
LOG_TAIL_LINES = 8
#: How deep below a folder of runs to look for run directories (runs/<name>/<sweep point>/stage1).
SEARCH_DEPTH = 3


@dataclass
class JobState:
    job_id: str
    state: str = "UNKNOWN"
    """SLURM state; UNKNOWN when neither squeue nor sacct know the job."""
    reason: str = ""
    exit_code: str = ""
    restarts: int | None = None

    @property
    def failed(self) -> bool:
        return self.state.split()[0] in FAILED_STATES


def job_state(job_id: str) -> JobState:
    """squeue while the job is listed, else sacct; scontrol adds the restart count while it knows it."""
    job = JobState(job_id)
    queued = slurm_cli.queued_state_and_reason(job_id)
    if queued:
        job.state, job.reason = queued
    else:
        accounted = slurm_cli.accounted_state(job_id)
        if accounted:
            job.state, job.exit_code, job.reason = accounted
    job.restarts = slurm_cli.restart_count(job_id)
    if job.reason in ("None", "(null)") or job.state in ("COMPLETED", "RUNNING"):
        job.reason = ""  # sacct keeps the last pending reason (e.g. Dependency) after the job ran
    return job


@dataclass
class StageStatus:
    name: str
    path: Path
    done: bool
    progress: dict[str, Any]
    results: dict[str, Any]
    jobs: list[dict[str, Any]] = field(default_factory=list)
    latest: JobState | None = None

    @property
    def active(self) -> bool:
        """The latest job is pending or running (again, after a requeue)."""
        return self.latest is not None and self.latest.state.split()[0] in slurm_cli.ACTIVE_STATES

    @property
    def cancelled(self) -> bool:
        """Stopped by its user (scancel = SIGTERM, Ctrl-C) with a checkpoint: not a failure."""
        if self.done or self.active:
            return False  # active: e.g. SLURM requeued it after a node failure, whose SIGTERM saved it
        if self.progress.get("state") in ("cancelled", "interrupted"):
            return True
        return (
            self.latest is not None
            and self.latest.state.startswith("CANCELLED")
            and not self.cancelled_waiting
            and self.progress.get("state") != "failed"
        )

    @property
    def cancelled_waiting(self) -> bool:
        """SLURM cancelled the job before it started because its afterok dependency failed. sacct
        does not always keep the DependencyNeverSatisfied reason, so a job that never wrote progress
        and was queued with a dependency counts too."""
        if self.latest is None or not self.latest.state.startswith("CANCELLED"):
            return False
        queued_after = bool(self.jobs and self.jobs[-1].get("dependency"))
        return "Dependency" in self.latest.reason or (queued_after and not self.progress)

    @property
    def failed(self) -> bool:
        if self.done or self.cancelled:
            return False
        if self.active:
            return False  # e.g. requeued after a fault: progress.json still holds the fault's line
        return (self.latest is not None and self.latest.failed) or self.progress.get("state") == "failed"

    @property
    def requeues(self) -> list[dict[str, Any]]:
        """The stage's requeues (requeues.jsonl), a refused one (crash loop) left out."""
        return [r for r in rundir.read_jsonl(rundir.requeues_file(self.path)) if not r.get("refused")]


def read_stage_files(path: Path) -> StageStatus:
    """A stage as its files say (progress, results, DONE, the jobs it recorded), without asking SLURM."""
    results = next((r for r in map(rundir.read_json, (path / n for n in rundir.RESULTS.values())) if r), {})
    done, progress = (path / rundir.DONE).exists(), rundir.read_json(path / rundir.PROGRESS)
    return StageStatus(path.name, path, done, progress, results, rundir.read_jsonl(rundir.jobs_file(path)))


def read_stage(path: Path) -> StageStatus:
    status = read_stage_files(path)
    if status.jobs:
        status.latest = job_state(str(status.jobs[-1]["job_id"]))
    return status


def find_stages(run_dir: Path) -> list[Path]:
    children = [run_dir / name for name in rundir.STAGE_DIRS.values() if (run_dir / name).is_dir()]
    if children:
        return children
    markers = (run_dir / rundir.PROGRESS, run_dir / rundir.CONFIG, run_dir / rundir.DONE, rundir.jobs_file(run_dir))
    return [run_dir] if any(m.exists() for m in markers) else []


def find_runs(folder: Path, depth: int = SEARCH_DEPTH) -> list[Path]:
    """Run directories below a folder that is none itself, outermost first, sorted by path."""
    if depth == 0 or not folder.is_dir():
        return []
    found = []
    for child in sorted(p for p in folder.iterdir() if p.is_dir() and not p.name.startswith(".")):
        found += [child] if find_stages(child) else find_runs(child, depth - 1)
    return found


def log_files(stage: StageStatus) -> list[Path]:
    """The latest job's log files, the one with a traceback (or the error log) first."""
    if not stage.jobs:
        return []
    record = stage.jobs[-1]
    if record.get("log"):
        candidates = [Path(record["log"])]
    else:
        log_dir = Path(record.get("log_dir", stage.path / rundir.SLURM_DIR / str(record["job_id"])))
        candidates = sorted(log_dir.glob("*_log.err")) + sorted(log_dir.glob("*_log.out"))
    existing = [p for p in candidates if p.is_file()]
    return sorted(existing, key=lambda p: "Traceback" not in p.read_text(errors="replace"))


def _fmt(value: Any, spec: str) -> str:
    return format(value, spec) if isinstance(value, (int, float)) else "-"


def ranks_note(progress: dict[str, Any]) -> str:
    """ "ranks 2", or with an elastic resume "ranks 2->1->2 (resized at steps 8, 30)": one run throughout."""
    changes = progress.get("world_size_changes") or []
    if not changes:
        return f"ranks {progress['world_size']}"
    sizes = [changes[0]["from"]] + [change["to"] for change in changes]
    steps = ", ".join(str(change["step"]) for change in changes)
    return f"ranks {'->'.join(map(str, sizes))} (resized at step{'s' if len(changes) > 1 else ''} {steps})"


def requeues_note(requeues: list[dict[str, Any]]) -> str:
    """ "requeued 2x: peer rank died at step 9; preempted" (repeats as "preempted (x3)"), oldest first."""
    causes: list[list] = []
    for record in requeues:
        cause = str(record.get("cause", "preempted"))  # records written before causes were: preemptions
        if causes and causes[-1][0] == cause:
            causes[-1][1] += 1
        else:
            causes.append([cause, 1])
    text = "; ".join(cause if n == 1 else f"{cause} (x{n})" for cause, n in causes)
    return f"requeued {len(requeues)}x: {text}"


def stage_line(stage: StageStatus) -> str:
    p, parts = stage.progress, [f"{stage.name:7s}"]
    parts.append("DONE   " if stage.done else f"{p.get('state', 'no progress yet'):7s}")
    if stage.latest:
        job = stage.latest
        parts.append(f"job {job.job_id} {job.state}" + (f" ({job.reason})" if job.reason else ""))
        if len(stage.jobs) > 1:
            parts.append("earlier: " + ",".join(str(r["job_id"]) for r in stage.jobs[:-1]))
    restarts = stage.latest.restarts if stage.latest and stage.latest.restarts is not None else p.get("restarts")
    if restarts is not None:
        parts.append(f"restarts {restarts}")
    if stage.requeues:
        parts.append(requeues_note(stage.requeues))
    if p.get("world_size"):
        parts.append(ranks_note(p))
    if p:
        parts.append(f"step {p.get('step', '-')}/{p.get('total_steps', '-')}")
        parts.append(f"loss {_fmt(p.get('loss'), '.4f')}")
        parts.append(f"lambda {_fmt(p.get('lambda'), '.3f')}")
        parts.append(f"img/s {_fmt(p.get('images_per_s'), '.1f')}")
    if "top1" in stage.results:
        parts.append(f"top-1 {stage.results['top1']:.2f}% top-5 {_fmt(stage.results.get('top5'), '.2f')}%")
    return "  ".join(parts)


def failure_report(stage: StageStatus) -> list[str]:
    job = stage.latest
    record = stage.jobs[-1] if stage.jobs else {}
    if stage.cancelled_waiting:
        return [
            f"CANCELLED {stage.name}: job {job.job_id} never ran: it waited for "
            f"{record.get('dependency') or 'an earlier job'}, which did not succeed"
        ]
    what = f"job {job.job_id} {job.state}" if job else "the stage"
    if job and job.exit_code:
        what += f" (exit code {job.exit_code})"
    if job and job.reason:
        what += f", reason {job.reason}"
    if not job and stage.progress.get("step") is not None:
        what += f" at step {stage.progress['step']}"
    lines = [f"FAILED {stage.name}: {what}"]
    logs = log_files(stage)
    tail = logs[0].read_text(errors="replace").splitlines()[-LOG_TAIL_LINES:] if logs else []
    # The job's last line ends it; srun appends its own "srun: error: ... Exited with exit code" after.
    error = stage.progress.get("error") or next(
        (line for line in reversed(tail) if line.strip() and not line.startswith("srun: ")), None
    )
    if error:
        lines.append(f"  error: {error}")
    if logs:
        lines.append(f"  log: {logs[0]}")
        lines += [f"    | {line}" for line in tail]
    elif not stage.jobs:
        lines.append("  log: none kept (started with launch/run.py: its output went to that terminal)")
    return lines


def cancel_report(stage: StageStatus) -> list[str]:
    job = f"job {stage.latest.job_id} " if stage.latest else ""
    step = stage.progress.get("step")
    saved = f"checkpoint at step {step} in {stage.path / rundir.CHECKPOINTS}" if step is not None else "no checkpoint"
    return [
        f"CANCELLED {stage.name}: {job}was stopped by its user ({stage.progress.get('state', 'scancel')}); "
        f"{saved}; submit the same command again to resume"
    ]


def report(run_dir: Path) -> tuple[list[str], bool]:
    """The status lines of a run dir and whether anything failed."""
    stages = [read_stage(path) for path in find_stages(run_dir)]
    lines = [f"run dir {run_dir}"] + [stage_line(s) for s in stages]
    for i, stage in enumerate(stages):
        if stage.cancelled:
            lines += cancel_report(stage)
            # Dependants SLURM cancelled because of this cancel did not fail either.
            for later in stages[i + 1 :]:
                if later.latest is not None and later.latest.state.startswith("CANCELLED") and not later.done:
                    lines.append(
                        f"CANCELLED {later.name}: job {later.latest.job_id} never ran (its "
                        f"dependency {stage.name} was cancelled)"
                    )
            stages = stages[: i + 1]
            break
    failed = [s for s in stages if s.failed]
    for stage in failed:
        lines += failure_report(stage)
    return lines, bool(failed)


def is_finetune(stage: StageStatus) -> bool:
    return stage.progress.get("stage") == "finetune" or "recipe" in stage.results or stage.name == "finetune"


def _point_labels(folder: Path, stages: list[StageStatus]) -> list[str]:
    """Each fine-tuning run's folder below `folder` (a sweep names it by its overrides), less the
    overrides every point shares: what differs between the points."""
    names = [str(s.path.parent.relative_to(folder)) if s.path.parent != folder else s.path.name for s in stages]
    tokens = [name.split(",") for name in names]
    shared = set.intersection(*map(set, tokens)) if len(tokens) > 1 else set()
    return [",".join(t for t in row if t not in shared) or name for row, name in zip(tokens, names)]


def grid_report(folder: Path, stages: list[StageStatus]) -> list[str]:
    """The table of the fine-tuning runs under `folder` (an lr grid), the best by validation top-1 marked."""
    runs = [s for s in stages if is_finetune(s)]
    if len(runs) < 2:
        return []
    scored = [s for s in runs if s.done and "top1" in s.results]
    best = max(scored, key=lambda s: s.results["top1"], default=None)
    lines = [
        "",
        f"finetune grid: {len(runs)} points under {folder}, {len(scored)} complete; best = highest validation "
        "top-1 (the protocol's choice, optimistic: the points are chosen on the set that scores them; "
        "docs/finetuning.md)",
        "| point | lr | head lr x | weight decay | pretrained | labelled images | top-1 | top-5 | |",
        "| --- | --- | --- | --- | --- | --- | --- | --- | --- |",
    ]
    for stage, label in zip(runs, _point_labels(folder, runs)):
        r, recipe = stage.results, stage.results.get("recipe", {})
        pretrained = str(r.get("pretrained", "-"))
        mark = "<- best" if stage is best else ("" if stage in scored else stage.progress.get("state", "pending"))
        lines.append(
            f"| {label} | {recipe.get('lr', '-')} | {recipe.get('head_lr_scale', '-')} | "
            f"{recipe.get('weight_decay', '-')} | {pretrained} | {r.get('labeled_images', '-')} | "
            f"{_fmt(r.get('top1'), '.2f')} | {_fmt(r.get('top5'), '.2f')} | {mark} |"
        )
    if best is not None:
        lines.append(f"best point: {best.path} (top-1 {best.results['top1']:.2f}%)")
    return lines


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("run_dir", type=Path, help="a stage=all run dir, one stage's run dir, or a folder of runs")
    run_dir = parser.parse_args(argv).run_dir.absolute()
    runs = [run_dir] if find_stages(run_dir) else find_runs(run_dir)
    if not runs:
        print(
            f"status.py: {run_dir} holds no stage run (no stage1/, stage2/, linear/, progress.json "
            f"or config.yaml, here or {SEARCH_DEPTH} levels below)",
            file=sys.stderr,
        )
        return 2
    failed = False
    for i, run in enumerate(runs):
        lines, run_failed = report(run)
        print(("\n" if i else "") + "\n".join(lines))
        failed |= run_failed
    grid = grid_report(run_dir, [read_stage_files(path) for run in runs for path in find_stages(run)])
    if grid:
        print("\n".join(grid))
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
