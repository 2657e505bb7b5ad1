"""The skeleton every stage shares: resume, the optimizer-step loop, preemption, checkpoints, logging.

A stage (pretraining, linear evaluation) is this loop given the stage's build function, which hands
it one typed `StageParts` (burn.engine.parts): model, optimizer, schedule, scaler, loader, the step
function, monitors and the last act. The loop owns everything that must be identical between stages
for resume to be exact, saving and restoring the parts' `states` by name, and calls nothing of the
stage but what the parts hold. The control flow reads top to bottom in `run()`.
"""

from __future__ import annotations

import logging
import time
from pathlib import Path
from typing import Any

import torch
from omegaconf import DictConfig, OmegaConf

from burn.data.record import SampleRecord
from burn.engine.distributed import (
    STARTUP_TIMEOUT_S,
    STEADY_TIMEOUT_S,
    DistInfo,
    all_gather_objects,
    barrier,
    set_collective_timeout,
)
from burn.engine.nonfinite import Applied, BadStepStreak
from burn.engine.parts import Build, StageParts, StepContext
from burn.engine.state import ProcessRng, Stateful
from burn.engine.step_decision import CheckpointClock, step_decision
from burn.monitor.reporting import MetricLogger
from burn.resume import elastic
from burn.resume.background_save import BackgroundCheckpointWriter, snapshot
from burn.resume.checkpoint import CheckpointError, CheckpointManager
from burn.resume.signals import (
    EXIT_CODES,
    REQUEUE_EXIT_CODE,
    STATES,
    PreemptionHandler,
    stop_code,
    warn_if_slow_checkpoint,
)
from burn.runtime.fault_injection import kill_if_asked
from burn.runtime.rundir import CHECKPOINT_FORMAT, CHECKPOINT_VERSION, CHECKPOINTS, DONE

log = logging.getLogger("burn")

PER_RANK = ("data", "rng")
"""Entries of `states` that every rank holds its own of (data position, RNG streams): a checkpoint keeps
one per rank, in a list indexed by rank; another number of ranks maps them (burn.resume.elastic)."""


class StageLoop:
    """One stage in this process: `build` makes its parts (in `prepare`), the loop runs them."""

    def __init__(self, cfg: DictConfig, info: DistInfo, run_dir: Path, preemption: PreemptionHandler, build: Build):
        self.cfg, self.info, self.run_dir = cfg, info, Path(run_dir)
        self.build = build
        self.parts: StageParts
        """What `build` handed over (set by `prepare`)."""
        self.step = 0
        self.ckpt = CheckpointManager(self.run_dir / CHECKPOINTS, keep_last=cfg.checkpoint.keep_last)
        self.ckpt_writer = BackgroundCheckpointWriter(self.ckpt)
        self.preemption = preemption
        """Installed by the caller as early as possible: a signal before the loop starts still counts."""
        self.metrics: MetricLogger | None = None
        self._saved_step: int | None = None
        self._last_logged: dict[str, float] = {}
        self._stop_code = 0
        self.noticed_at: str | None = None
        """Where this rank first saw the preemption flag (for the log)."""
        self.world_size_changes: list = []
        """Every resume on another number of ranks: {"step", "from", "to"} (kept in checkpoints)."""
        self.sample_record: SampleRecord | None = None
        self.states: dict[str, Stateful] = {}
        """What a checkpoint holds besides the loop's progress: the parts' states plus the process RNG."""
        self.step_seconds = 0.0
        """Mean wall time of an optimizer step in this process (its first step, which may compile, left
        out): what a stop signal waits for before the checkpoint is written."""

    # ---- the parts' objects, by their usual names (tests and benchmarks read them) -----------------
    @property
    def model(self) -> torch.nn.Module:
        return self.parts.model

    @property
    def optimizer(self) -> torch.optim.Optimizer:
        return self.parts.optimizer

    @property
    def scheduler(self) -> torch.optim.lr_scheduler.LRScheduler:
        return self.parts.scheduler

    @property
    def total_steps(self) -> int:
        return self.parts.total_steps

    # ---- one optimizer step ------------------------------------------------------------------------
    def train_step(self) -> tuple[dict[str, torch.Tensor], Applied]:
        """One optimizer step: the parts' step function (metrics on the device, whether the update was
        applied: a bool, or a 0-dim bool tensor on the device when reading it would cost a host sync)."""
        return self.parts.step(StepContext(self.step, self.next_batch, self.notice_stop))

    def next_batch(self) -> Any:
        """The loader's next micro-batch (recorded with log.sample_ids)."""
        loader = self.parts.data
        batch = next(loader)
        if self.sample_record is not None:
            self.sample_record.write(self.step + 1, loader.last_positions, loader.last_indices)
        return batch

    def notice_stop(self, where: str) -> None:
        """Note where this rank first saw a stop signal (for the log), if one has arrived."""
        if self.preemption.requested and self.noticed_at is None:
            self.noticed_at = where

    def epoch(self) -> int:
        return int(self.parts.data.epoch)

    # ---- the loop --------------------------------------------------------------------------------
    def prepare(self) -> None:
        """Resume point, components, restored state, reporting: everything before the first step."""
        info = self.info
        resume = self._load_resume_point()
        saved_world = resume["world_size"] if resume else info.world_size
        data_state = elastic.data_state_for(resume["data"], info.rank, info.world_size) if resume else None
        self.parts = self.build(self.cfg, info, self.run_dir, data_state)
        # The process RNG goes last: restored after building (which draws from it) and every other entry.
        self.states = {**self.parts.states, "rng": ProcessRng()}
        if resume:
            self._restore(resume, resized=saved_world != info.world_size)
        if saved_world != info.world_size:
            self.world_size_changes.append(elastic.change_note(self.step, saved_world, info.world_size))
            if info.is_main:
                log.warning(
                    elastic.resume_message(
                        resume["path"],
                        self.step,
                        saved_world,
                        info.world_size,
                        self.parts.data,
                        self.parts.batch.per_gpu * info.world_size * self.parts.batch.accumulation,
                        self.parts.batch.per_gpu,
                        self.parts.batch.accumulation,
                    )
                )
        self.parts.ddp.train()  # once: nothing switches to eval mode before the last step
        if self.cfg.log.sample_ids:
            attempt = all_gather_objects(info, f"{time.time_ns():020d}")[0]  # rank 0's: one id per start
            self.sample_record = SampleRecord(self.run_dir, rank=info.rank, world_size=info.world_size, attempt=attempt)
        self.metrics = MetricLogger(
            self.run_dir,
            enabled=info.is_main,
            stage=self.parts.stage,
            start_step=self.step,
            total_steps=self.total_steps,
            progress_bar=self.cfg.log.progress_bar,
            restarts=info.environment.restarts,
            run_info={"world_size": info.world_size, "world_size_changes": self.world_size_changes},
        )
        if self.step == 0 or saved_world != info.world_size:  # TensorBoard marks where the rank count changed
            self.metrics.scalars(self.step, {"world_size": info.world_size}, group="run")

    def run(self) -> int:
        """Train to the end (exit 0) or until preempted (checkpoint written, exit REQUEUE_EXIT_CODE)."""
        self.prepare()
        try:
            return self._loop()
        except BaseException:
            # A periodic checkpoint may still be on its way to disk: finish it before the stage (and
            # so the run directory's lock) is given up.
            self._finish_background_write("the stage failed")
            self.metrics.progress("failed", self.step, self.epoch())
            raise
        finally:
            self.metrics.close()
            if self.sample_record is not None:
                self.sample_record.close()

    def _loop(self) -> int:
        # A signal during start-up stops before the first step (a checkpoint of the start state is exact).
        stopped = stop_code(self.preemption.code, self.info.distributed)
        if stopped or self.train_until(self.total_steps):
            return self._stop(stopped or self._stop_code)
        self.save_checkpoint()
        summary = self.parts.finish(self.step, self.metrics)
        barrier(self.info)
        if self.info.is_main:
            (self.run_dir / DONE).touch()
            self.metrics.progress("done", self.step, self.epoch(), **self._last_logged, **summary)
        return 0

    def _stop(self, code: int) -> int:
        """Checkpoint after a stop signal; exit 75 (requeue me), 143 (cancelled) or 130 (Ctrl-C)."""
        self.save_checkpoint()
        exit_code, state = EXIT_CODES[code], STATES[code]
        self.metrics.progress(state, self.step, self.epoch(), **self._last_logged)
        what = (
            "requeue me" if exit_code == REQUEUE_EXIT_CODE else "stopped; run the same command again to resume from it"
        )
        label = "preemption signal" if exit_code == REQUEUE_EXIT_CODE else state
        log.warning(
            "%s (%s, noticed at %s): checkpoint at step %d written in %s; exiting with %d (%s)",
            label,
            self.preemption.reason or "signal on another rank",
            self.noticed_at or "the step boundary",
            self.step,
            self.ckpt.directory,
            exit_code,
            what,
        )
        return exit_code

    def train_until(self, last_step: int) -> bool:
        """Optimizer steps up to `last_step`, with logging and periodic checkpoints. Returns True when a
        stop signal ended it early (every rank returns at the same step; the code is in _stop_code)."""
        cfg = self.cfg
        bad = BadStepStreak(cfg.train.max_bad_steps)
        timed_steps, timed_seconds = -1, 0.0  # the first step (it may compile) is left out of the mean
        clock = CheckpointClock(cfg.checkpoint.every_minutes, self.info.is_main)
        while self.step < last_step:
            started = time.perf_counter()
            metrics, applied = self.train_step()
            self.step += 1
            bad.update(applied)  # on the device with fp16 on CUDA: no host sync here
            # One collective per step: every rank learns of a signal that reached any of them, and of
            # rank 0's clock saying a timed checkpoint is due.
            stop, timed_checkpoint = step_decision(self.preemption.code, clock.due(), self.info.distributed)
            self._stop_code = stop
            timed_steps += 1
            if timed_steps:  # a mean over many steps: on CUDA the host runs ahead of one step's work
                timed_seconds += time.perf_counter() - started
                self.step_seconds = timed_seconds / timed_steps
            else:  # the first step (and its compilation) is done: a hung or lost peer now costs minutes
                set_collective_timeout(self.info, STEADY_TIMEOUT_S)
            logging_step = self.step % cfg.log.every_steps == 0 or self.step == self.total_steps
            checkpoint_step = (
                self.step % cfg.checkpoint.every_steps == 0 or timed_checkpoint
            ) and self.step < self.total_steps
            if logging_step or checkpoint_step or stop or self.step == last_step:
                bad.check(self.step, self.ckpt.directory)  # before anything is logged or saved
            if logging_step:
                self._log(metrics)
            self.metrics.advance()
            if stop and self.step < self.total_steps:  # at the last step, finishing beats a requeue
                set_collective_timeout(self.info, STARTUP_TIMEOUT_S)  # the stop's checkpoint is written synchronously
                return True
            for monitor in self.parts.after_step:
                monitor(self.step, self.metrics)
            if checkpoint_step:
                self.save_checkpoint(background=True)
                clock.reset()
            kill_if_asked(self.step, self.info.rank)  # test-only (burn/runtime/fault_injection.py)
        set_collective_timeout(self.info, STARTUP_TIMEOUT_S)  # the final checkpoint and products follow
        return False

    def _log(self, metrics: dict[str, torch.Tensor]) -> None:
        values = {k: float(v) for k, v in metrics.items()}  # host sync, on logging steps only
        self.metrics.scalars(self.step, values)
        self._last_logged = {k: values[k] for k in ("loss", "lambda", "lr", "images_per_s") if k in values}
        self.metrics.progress("running", self.step, self.epoch(), **self._last_logged)
        for alarm in self.parts.after_log:
            alarm(self.step, values)

    # ---- checkpoints -----------------------------------------------------------------------------
    def checkpoint_state(self, per_rank: dict[str, list]) -> dict[str, Any]:
        """The checkpoint (rank 0): the loop's progress, then every entry of `states` under its name;
        `per_rank` holds the PER_RANK entries gathered from every rank."""
        progress = {
            "format": CHECKPOINT_FORMAT,
            "version": CHECKPOINT_VERSION,
            "stage": self.parts.stage,
            "step": self.step,
            "epoch": self.epoch(),
            "world_size": self.info.world_size,
            "world_size_changes": self.world_size_changes,
            "config": OmegaConf.to_yaml(self.cfg, resolve=True),
        }
        return {
            **progress,
            **{name: per_rank[name] if name in PER_RANK else entry.state_dict() for name, entry in self.states.items()},
        }

    def save_checkpoint(self, background: bool = False) -> None:
        """Collective: gathers every rank's data and RNG state; rank 0 writes, the others wait.

        ``background`` (periodic saves, with checkpoint.background): rank 0 only snapshots the state
        to CPU memory before everyone continues; a thread writes it. Any other save returns once
        this step's checkpoint, and any write still in flight, is on disk."""
        per_rank = {name: all_gather_objects(self.info, self.states[name].state_dict()) for name in PER_RANK}
        if self.info.is_main:
            if not background and not self._finish_background_write("writing the checkpoint synchronously now"):
                self._saved_step = None  # a preemption save must not be lost to an earlier failure
            if self._saved_step != self.step:
                state = self.checkpoint_state(per_rank)
                if background and self.cfg.checkpoint.background:
                    self.ckpt_writer.submit(snapshot(state, pin=self.info.device.type == "cuda"), self.step)
                else:
                    self.ckpt.save(state, self.step)  # logs path and time
                if self.ckpt.last_save_seconds is not None:  # after a background submit: the previous write's
                    warn_if_slow_checkpoint(
                        self.ckpt.last_save_seconds, self.cfg.signal_delay_s, step_seconds=self.step_seconds
                    )
        self._saved_step = self.step
        barrier(self.info)

    def _finish_background_write(self, then: str) -> bool:
        """Wait for a background write; False (logged, with what happens ``then``) if it failed."""
        try:
            self.ckpt_writer.wait()
        except CheckpointError as err:
            log.error("%s; %s", err, then)
            return False
        return True

    def _load_resume_point(self) -> dict[str, Any] | None:
        """Every rank loads the checkpoint rank 0 chose (the newest valid one)."""
        found = self.ckpt.load_latest() if self.info.is_main else None
        path = all_gather_objects(self.info, str(found[1]) if found else None)[0]
        if path is None:
            return None
        state = found[0] if self.info.is_main else self.ckpt.load(Path(path))
        if self.info.is_main:
            log.info("resuming from %s (step %d, written by %d ranks)", path, state["step"], state["world_size"])
        return {**state, "path": path}

    def _restore(self, state: dict[str, Any], resized: bool) -> None:
        """Every entry of `states` from the checkpoint `state`, in the mapping's order, once the parts'
        resume checks accepted it."""
        for check in self.parts.resume_checks:
            check(state)
        self.step = self._saved_step = state["step"]
        self.world_size_changes = list(state.get("world_size_changes", []))
        for name, entry in self.states.items():
            if name == "data":
                continue  # build() opened the loader at its saved position
            if name not in state:
                raise CheckpointError(
                    f"{state['path']} has no {name!r} entry: it was not written by a {self.parts.stage!r} stage "
                    "of this code"
                )
            if name not in PER_RANK:
                entry.load_state_dict(state[name])
            elif not resized:
                entry.load_state_dict(state[name][self.info.rank])
        if resized:  # the saved RNG streams belong to the old ranks: derive this layout's own
            elastic.reseed(self.cfg.seed, self.info.rank, self.info.world_size, self.step)
