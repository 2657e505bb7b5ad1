"""BURN pretraining (stages 1 and 2): DDP, AMP, gradient accumulation, warmup + cosine, lambda schedule.

`build_pretraining` makes the stage's parts (burn.engine.parts) from small builders, in the order
they draw from the RNG; `PretrainTrainer` is the loop (burn.engine.loop) that runs them.
"""

from __future__ import annotations

import contextlib
import logging
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from omegaconf import DictConfig

from burn.batch import BatchSplit, split_global_batch
from burn.config import RANDOM_BACKBONE, STAGE_PRECISION
from burn.data.loaders import build_pretrain_loader
from burn.data.stream import ResumableLoader
from burn.engine.distributed import DistInfo, all_gather_objects, wrap_ddp
from burn.engine.gpu import compile_enabled, compile_in_place, teacher_to_half, to_channels_last
from burn.engine.loop import StageLoop
from burn.engine.nonfinite import Applied
from burn.engine.parts import LogHook, StageParts, StepContext, apply_update
from burn.engine.precision import AmpSettings, LazyScale, build_amp
from burn.engine.schedules import StepFunctionLR, stage_length, target_speed_factor, warmup_cosine_factor
from burn.engine.state import ModuleParts
from burn.models.burn import BurnModel, build_burn_model
from burn.monitor.diagnostics import CollapseAlarm, collapse_metrics
from burn.monitor.knn import KnnMonitor
from burn.monitor.reporting import MetricLogger
from burn.objective import lambda_at
from burn.resume.checkpoint import sha256_of_file
from burn.resume.identity import check_teacher_unchanged
from burn.resume.signals import PreemptionHandler, warn_if_slow_checkpoint
from burn.runtime.rundir import BACKBONE, STAGE1_EXTRACTION
from burn.weights import load_stage1_init, write_backbone_extraction, write_stage1_extraction

log = logging.getLogger("burn")


class PretrainTrainer(StageLoop):
    """Student (binact in stage 1, binary in stage 2) learning from the frozen teacher through the
    jointly trained teacher classifier."""

    def __init__(self, cfg: DictConfig, info: DistInfo, run_dir: Path, preemption: PreemptionHandler):
        super().__init__(cfg, info, run_dir, preemption, build_pretraining)


def build_pretraining(cfg: DictConfig, info: DistInfo, run_dir: Path, data_state: dict | None) -> StageParts:
    """The pretraining stage's parts, the loader opened at `data_state`."""
    stage = str(cfg.stage)
    batch = split_global_batch(cfg.train.global_batch, cfg.train.per_gpu_batch, info.world_size)
    amp = build_amp(cfg.train.precision, info.device)
    model = build_model(cfg, info, amp)
    compiled = compile_student(cfg, info, model, run_dir)
    ddp = wrap_ddp(model, info)
    loader = build_loader(cfg, info, batch, amp, data_state)
    knn = build_knn(cfg, info, amp)
    alarm = build_collapse_alarm(cfg)
    steps_per_epoch, total_steps = count_steps(cfg, loader, batch)
    trainable = [p for p in model.parameters() if p.requires_grad]
    optimizer = build_optimizer(cfg, info, model)
    scheduler = build_scheduler(cfg, optimizer, steps_per_epoch, total_steps)
    scaler = amp.scaler()
    log_plan(stage, info, batch, cfg.train.global_batch, total_steps, steps_per_epoch)
    step = PretrainStep(
        cfg=cfg,
        info=info,
        ddp=ddp,
        amp=amp,
        optimizer=optimizer,
        scheduler=scheduler,
        scaler=scaler,
        trainable=trainable,
        accumulation=batch.accumulation,
        total_steps=total_steps,
        compiled=compiled,
        after_update=model.update_target,
    )
    teacher = TeacherRecord(cfg, info, run_dir)
    return StageParts(
        stage=stage,
        model=model,
        ddp=ddp,
        trained=ModuleParts(model.trainable_modules()),
        optimizer=optimizer,
        scheduler=scheduler,
        scaler=scaler,
        data=loader,
        batch=batch,
        total_steps=total_steps,
        step=step,
        finish=lambda at, metrics: write_products(cfg, info, run_dir, model),
        after_log=[collapse_warning(alarm, step, info)] if alarm else [],
        after_step=[KnnEvaluation(knn, model.student, total_steps)] if knn else [],
        resume_checks=[teacher.check],
        # The frozen teacher is referenced, not copied; an EMA target (model.teacher_classifier=ema) is state.
        more_states={"teacher": teacher, **target_state(model)},
    )


def target_state(model: BurnModel) -> dict[str, torch.nn.Module]:
    """The checkpoint entry of an EMA target, none for the other modes (their checkpoints are unchanged)."""
    return {} if model.target_classifier is None else {"target_classifier": model.target_classifier}


# ---- the builders ----------------------------------------------------------------------------------
def build_model(cfg: DictConfig, info: DistInfo, amp: AmpSettings) -> BurnModel:
    """The model on the device: student initialised, frozen teacher folded into half precision, CUDA's
    memory layout and synchronised BatchNorm."""
    model = build_burn_model(cfg.model, STAGE_PRECISION[str(cfg.stage)]).to(info.device)
    initialise_student(cfg, info, model)
    model.teacher.fold_batchnorm()  # frozen: BN becomes the convs' bias, no buffers to broadcast
    teacher_to_half(model.teacher, info.device, amp.autocast_dtype)
    return cuda_layout(cfg, info, model)


def initialise_student(cfg: DictConfig, info: DistInfo, model: BurnModel) -> None:
    """Stage 2 from a stage-1 extraction (pretrained=), or from the random init; stage 1 from scratch."""
    stage = str(cfg.stage)
    if cfg.pretrained and stage != "2":
        raise ValueError("pretrained= initialises stage 2 (from a stage-1 extraction); stage 1 starts from scratch.")
    if cfg.pretrained and cfg.pretrained != RANDOM_BACKBONE:
        model.load_trainable_state_dicts(load_stage1_init(cfg.pretrained))
        model.reset_target()  # ema: the average starts at the teacher classifier stage 1 ended with
    elif stage == "2" and info.is_main:
        log.info(
            "stage 2 from a random init (pretrained=%s): single-stage pretraining from scratch, "
            "binary weights and activations from the first step",
            cfg.pretrained,
        )


def cuda_layout(cfg: DictConfig, info: DistInfo, model: BurnModel) -> BurnModel:
    """On CUDA: channels-last memory (train.channels_last) and, across ranks, synchronised BatchNorm in
    the classifiers (SyncBatchNorm needs CUDA tensors; on CPU each rank keeps its own BN)."""
    if info.device.type != "cuda":
        return model
    model = to_channels_last(model) if cfg.train.channels_last else model
    if info.distributed:
        model.student_classifier = torch.nn.SyncBatchNorm.convert_sync_batchnorm(model.student_classifier)
        model.teacher_classifier = torch.nn.SyncBatchNorm.convert_sync_batchnorm(model.teacher_classifier)
        if model.target_classifier is not None:
            model.target_classifier = torch.nn.SyncBatchNorm.convert_sync_batchnorm(model.target_classifier)
    return model


def compile_student(cfg: DictConfig, info: DistInfo, model: BurnModel, run_dir: Path) -> bool:
    """Compile the student in place when train.compile asks for it (and the device allows)."""
    compiled = compile_enabled(cfg.train.compile, info.device)
    if compiled:
        cache = compile_in_place(model.student, run_dir, cfg.train.compile_cache_dir)
        log.info("student compiled in place (inductor cache %s); the first step compiles", cache)
    return compiled


def build_loader(
    cfg: DictConfig, info: DistInfo, batch: BatchSplit, amp: AmpSettings, data_state: dict | None
) -> ResumableLoader:
    """This rank's endless two-view stream (the train split), at `data_state`."""
    return build_pretrain_loader(
        cfg.data,
        batch_size=batch.per_gpu,
        shard_id=info.rank,
        num_shards=info.world_size,
        seed=cfg.seed,
        dtype=amp.input_dtype,
        state=data_state,
    )


def build_knn(cfg: DictConfig, info: DistInfo, amp: AmpSettings) -> KnnMonitor | None:
    """The k-NN monitor (monitor.knn), seeing the images as training does."""
    if not cfg.monitor.knn:
        return None
    return KnnMonitor(
        cfg.monitor,
        cfg.data,
        info,
        seed=cfg.seed,
        dtype=amp.input_dtype,
        autocast=amp.autocast,
        channels_last=cfg.train.channels_last,
    )


def build_collapse_alarm(cfg: DictConfig) -> CollapseAlarm | None:
    """The collapse alarm (monitor.collapse)."""
    return CollapseAlarm(cfg.monitor.collapse_threshold, cfg.loss.temperature) if cfg.monitor.collapse else None


def count_steps(cfg: DictConfig, loader: ResumableLoader, batch: BatchSplit) -> tuple[int, int]:
    """(optimizer steps per epoch, steps in the stage): steps=, else epochs= or train.epochs."""
    _, steps_per_epoch, total_steps = stage_length(
        steps=cfg.steps,
        epochs=cfg.epochs,
        default_epochs=cfg.train.epochs,
        batches_per_epoch=loader.steps_per_epoch,
        accumulation=batch.accumulation,
    )
    return steps_per_epoch, total_steps


def build_optimizer(cfg: DictConfig, info: DistInfo, model: BurnModel) -> torch.optim.Adam:
    """Adam over the model's parameter groups; fused on CUDA, which also skips bad steps on the device."""
    groups = model.param_groups(cfg.optim.lr, cfg.optim.teacher_classifier_lr_scale)
    return torch.optim.Adam(
        groups, lr=cfg.optim.lr, weight_decay=cfg.optim.weight_decay, fused=info.device.type == "cuda"
    )


def build_scheduler(
    cfg: DictConfig, optimizer: torch.optim.Optimizer, steps_per_epoch: int, total_steps: int
) -> StepFunctionLR:
    """Linear warmup over optim.warmup_epochs, then cosine to the last step; the teacher classifier's lr
    also follows its own speed (a frozen warm-up, a multiple that changes: docs/moving-target.md)."""
    optim = cfg.optim
    warmup = min(round(optim.warmup_epochs * steps_per_epoch), total_steps - 1)
    shared = warmup_cosine_factor(max(warmup, 0), total_steps, optim.warmup_start_factor)
    frozen = round(optim.teacher_classifier_frozen_epochs * steps_per_epoch)
    scale, scale_end = optim.teacher_classifier_lr_scale, optim.teacher_classifier_lr_scale_end
    teacher = target_speed_factor(shared, scale, scale_end, frozen, total_steps)
    groups = optimizer.param_groups
    return StepFunctionLR(optimizer, [teacher if g.get("name") == "teacher_classifier" else shared for g in groups])


def log_plan(
    stage: str, info: DistInfo, batch: BatchSplit, global_batch: int, total_steps: int, steps_per_epoch: int
) -> None:
    if info.is_main:
        log.info(
            "stage %s: %s student, %d ranks x %d images x %d accumulation = %d per step; %d steps (%d per epoch)",
            stage,
            STAGE_PRECISION[stage],
            info.world_size,
            batch.per_gpu,
            batch.accumulation,
            global_batch,
            total_steps,
            steps_per_epoch,
        )


# ---- one optimizer step ----------------------------------------------------------------------------
@dataclass
class PretrainStep:
    """One optimizer step: `accumulation` micro-batches of two views through the (DDP) model, then the
    update. Keeps what the collapse alarm and the compile note need from earlier steps."""

    cfg: DictConfig
    info: DistInfo
    ddp: torch.nn.Module
    amp: AmpSettings
    optimizer: torch.optim.Optimizer
    scheduler: torch.optim.lr_scheduler.LRScheduler
    scaler: torch.amp.GradScaler
    trainable: list[torch.nn.Parameter]
    """What the gradient norm covers."""
    accumulation: int
    total_steps: int
    compiled: bool
    after_update: Callable[[Applied], None]
    """Runs after every optimizer step with whether it was applied (the EMA target's update)."""
    first_step_seconds: float | None = None
    """Wall time of this process's first step, measured when it compiles."""
    output_shape: tuple[int, ...] = ()
    """(rows, classes) of the last micro-batch's student output: the collapse alarm's sizes."""

    def __call__(self, ctx: StepContext) -> tuple[dict[str, Any], Applied]:
        cfg, info, accum = self.cfg, self.info, self.accumulation
        started = time.perf_counter()
        lam = lambda_at(ctx.step, self.total_steps, cfg.loss.lambda_start, cfg.loss.lambda_end)
        self.optimizer.zero_grad(set_to_none=True)
        sums = torch.zeros(3, device=info.device)  # loss, kl, fs over the micro-batches
        data_wait = 0.0
        for micro in range(accum):
            t0 = time.perf_counter()
            view1, view2 = ctx.next_batch()
            data_wait += time.perf_counter() - t0
            if info.device.type == "cuda" and cfg.train.channels_last:
                view1 = view1.contiguous(memory_format=torch.channels_last)
                view2 = view2.contiguous(memory_format=torch.channels_last)
            # Gradients are all-reduced on the last micro-batch only.
            last = micro == accum - 1
            sync = contextlib.nullcontext() if last or not info.distributed else self.ddp.no_sync()
            with sync:
                with self.amp.autocast():
                    out = self.ddp(view1, view2, lam, cfg.loss.temperature)
                self.scaler.scale(out["loss"] / accum).backward()
            sums += torch.stack([out["loss"], out["kl"], out["fs"]]).detach().float() / accum
            ctx.notice_stop(f"micro-batch {micro + 1}/{accum} of step {ctx.step + 1}")
        grad_norm, applied, lr = apply_update(self.optimizer, self.scheduler, self.scaler, self.trainable)
        self.after_update(applied)
        seconds = time.perf_counter() - started
        if self.compiled and self.first_step_seconds is None:
            # Compilation happens in this process's first step: a signal arriving then waits for it.
            self.first_step_seconds = seconds
            if info.is_main:
                log.info("first step (with compilation) took %.1f s", seconds)
            warn_if_slow_checkpoint(0.0, cfg.signal_delay_s, step_seconds=seconds)
        metrics = {
            "loss": sums[0],
            "kl": sums[1],
            "fs": sums[2],
            "grad_norm": grad_norm,
            "lambda": lam,
            "lr": lr,
            "grad_scale": LazyScale(self.scaler),  # read on logging steps only
            "images_per_s": cfg.train.global_batch / seconds,
            "data_wait_s": data_wait,
        }
        if cfg.monitor.collapse:  # last micro-batch on this rank; device tensors, synced on logging steps only
            metrics.update(collapse_metrics(out, cfg.loss.temperature))
            self.output_shape = tuple(out["student_out"].shape)
        return metrics, applied


# ---- monitors ----------------------------------------------------------------------------------------
def collapse_warning(alarm: CollapseAlarm, step: PretrainStep, info: DistInfo) -> LogHook:
    """On logging steps, rank 0: warn (once) when the classifier outputs stop depending on the image."""

    def check(at: int, values: dict[str, float]) -> None:
        if alarm.fired or not info.is_main:
            return
        batch, classes = step.output_shape
        message = alarm.check({k: v for k, v in values.items() if k.startswith("collapse/")}, classes, batch, at)
        if message:
            log.warning(message)

    return check


class KnnEvaluation:
    """k-NN top-1 of the student every monitor.knn_every steps and at the last, into TensorBoard's knn/*.
    Collective: every rank runs it at these steps."""

    def __init__(self, monitor: KnnMonitor, student: torch.nn.Module, total_steps: int):
        self.monitor, self.student, self.total_steps = monitor, student, total_steps

    def __call__(self, step: int, metrics: MetricLogger) -> None:
        if not self.monitor.due(step, self.total_steps):
            return
        result = self.monitor(self.student)
        metrics.scalars(step, {"top1": result["top1"], "seconds": result["seconds"]}, group="knn")


# ---- the teacher's identity ------------------------------------------------------------------------
class TeacherRecord:
    """The checkpoint's "teacher" entry, ``{"path", "sha256"}`` of model.teacher_weights: the frozen
    teacher is referenced, not copied. Hashed once, at the first save (or by the resume check)."""

    def __init__(self, cfg: DictConfig, info: DistInfo, run_dir: Path):
        self.cfg, self.info, self.run_dir = cfg, info, run_dir
        self.facts: dict[str, Any] | None = None

    def read(self) -> dict[str, Any]:
        path = self.cfg.model.teacher_weights
        return {"path": path, "sha256": sha256_of_file(path) if path else None}

    def state_dict(self) -> dict[str, Any]:
        if self.facts is None:
            self.facts = self.read()
        return self.facts

    def load_state_dict(self, state_dict: Any) -> None:
        """Nothing to restore: the facts describe this run's own teacher (checked by :meth:`check`)."""

    def check(self, checkpoint: Mapping[str, Any]) -> None:
        """The checkpoint's weights were trained against its teacher: refuse another file's content. Rank
        0 hashes the file; every rank gets its digest, so every rank decides alike (a collective)."""
        current = all_gather_objects(self.info, self.read() if self.info.is_main else None)[0]
        check_teacher_unchanged(
            checkpoint.get("teacher"), current, self.run_dir, checkpoint["step"], self.cfg.checkpoint.force
        )
        self.facts = current


# ---- products ----------------------------------------------------------------------------------------
def write_products(cfg: DictConfig, info: DistInfo, run_dir: Path, model: BurnModel) -> dict[str, float]:
    """Rank 0: stage 1's extraction (what stage 2 starts from) or stage 2's backbone (what linear
    evaluation reads)."""
    if not info.is_main:
        return {}
    parts = model.trainable_state_dicts()
    if str(cfg.stage) == "1":
        path = write_stage1_extraction(run_dir / STAGE1_EXTRACTION, parts, author="burn-suite")
        log.info("stage 1 complete: extraction in %s (next: launch/run.py stage=2 pretrained=%s)", path, path)
    else:
        path = write_backbone_extraction(run_dir / BACKBONE, parts["student"], author="burn-suite")
        log.info("stage 2 complete: backbone in %s (next: launch/run.py stage=linear pretrained=%s)", path, path)
    return {}
