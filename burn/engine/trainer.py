"""BURN pretraining (stages 1 and 2): DDP, AMP, gradient accumulation, warmup + cosine, lambda schedule."""

from __future__ import annotations

import contextlib
import logging
import time
from pathlib import Path
from typing import Any

import torch

from burn.batch import split_global_batch
from burn.config import RANDOM_BACKBONE, STAGE_PRECISION
from burn.data.loaders import build_pretrain_loader
from burn.engine.distributed import all_gather_objects, wrap_ddp
from burn.engine.gpu import compile_enabled, compile_in_place, teacher_to_half, to_channels_last
from burn.engine.loop import StageLoop
from burn.engine.nonfinite import Applied
from burn.engine.precision import AmpSettings, LazyScale, build_amp
from burn.engine.schedules import build_warmup_cosine, stage_length
from burn.engine.state import ModuleParts, Record, Stateful
from burn.models.burn import build_burn_model
from burn.monitor.diagnostics import CollapseAlarm, collapse_metrics
from burn.monitor.knn import KnnMonitor
from burn.objective import lambda_at
from burn.resume.checkpoint import sha256_of_file
from burn.resume.identity import check_teacher_unchanged
from burn.resume.signals import warn_if_slow_checkpoint
from burn.runtime.rundir import BACKBONE, STAGE1_EXTRACTION
from burn.weights import load_stage1_init, write_backbone_extraction, write_stage1_extraction

log = logging.getLogger("burn")


class PretrainTrainer(StageLoop):
    """Student (binact in stage 1, binary in stage 2) learning from the frozen teacher through the
    jointly trained teacher classifier."""

    def __init__(self, cfg, info, run_dir: Path, preemption):
        super().__init__(cfg, info, run_dir, preemption)
        self.stage = str(cfg.stage)
        self.precision = STAGE_PRECISION[self.stage]
        self.per_gpu_batch, self.accum = split_global_batch(
            cfg.train.global_batch, cfg.train.per_gpu_batch, info.world_size
        )

    # ---- wiring ----------------------------------------------------------------------------------
    def build(self, data_state: Any) -> dict[str, Stateful]:
        cfg, info = self.cfg, self.info
        self.amp: AmpSettings = build_amp(cfg.train.precision, info.device)
        self.model = build_burn_model(cfg.model, self.precision).to(info.device)
        if cfg.pretrained and self.stage != "2":
            raise ValueError(
                "pretrained= initialises stage 2 (from a stage-1 extraction); stage 1 starts from scratch."
            )
        if cfg.pretrained and cfg.pretrained != RANDOM_BACKBONE:
            self.model.load_trainable_state_dicts(load_stage1_init(cfg.pretrained))
        elif self.stage == "2" and info.is_main:
            log.info(
                "stage 2 from a random init (pretrained=%s): single-stage pretraining from scratch, "
                "binary weights and activations from the first step",
                cfg.pretrained,
            )
        self.model.teacher.fold_batchnorm()  # frozen: BN becomes the convs' bias, no buffers to broadcast
        teacher_to_half(self.model.teacher, info.device, self.amp.autocast_dtype)
        if info.device.type == "cuda":
            self.model = to_channels_last(self.model) if cfg.train.channels_last else self.model
            if info.distributed:  # SyncBatchNorm needs CUDA tensors; on CPU each rank keeps its own BN.
                self.model.student_classifier = torch.nn.SyncBatchNorm.convert_sync_batchnorm(
                    self.model.student_classifier
                )
                self.model.teacher_classifier = torch.nn.SyncBatchNorm.convert_sync_batchnorm(
                    self.model.teacher_classifier
                )
        self.compiled = compile_enabled(cfg.train.compile, info.device)
        if self.compiled:
            cache = compile_in_place(self.model.student, self.run_dir, cfg.train.compile_cache_dir)
            log.info("student compiled in place (inductor cache %s); the first step compiles", cache)
        self.ddp = wrap_ddp(self.model, info)
        self.loader = build_pretrain_loader(
            cfg.data,
            batch_size=self.per_gpu_batch,
            shard_id=info.rank,
            num_shards=info.world_size,
            seed=cfg.seed,
            dtype=self.amp.input_dtype,
            state=data_state,
        )
        self.knn = (
            KnnMonitor(
                cfg.monitor,
                cfg.data,
                info,
                seed=cfg.seed,
                dtype=self.amp.input_dtype,
                autocast=self.amp.autocast,
                channels_last=cfg.train.channels_last,
            )
            if cfg.monitor.knn
            else None
        )
        self.collapse_alarm = (
            CollapseAlarm(cfg.monitor.collapse_threshold, cfg.loss.temperature) if cfg.monitor.collapse else None
        )
        _, self.steps_per_epoch, self.total_steps = stage_length(
            steps=cfg.steps,
            epochs=cfg.epochs,
            default_epochs=cfg.train.epochs,
            batches_per_epoch=self.loader.steps_per_epoch,
            accumulation=self.accum,
        )
        self.trainable = [p for p in self.model.parameters() if p.requires_grad]
        groups = self.model.param_groups(cfg.optim.lr, cfg.optim.teacher_classifier_lr_scale)
        self.optimizer = torch.optim.Adam(
            groups, lr=cfg.optim.lr, weight_decay=cfg.optim.weight_decay, fused=info.device.type == "cuda"
        )  # also skips bad steps on the device
        warmup = min(round(cfg.optim.warmup_epochs * self.steps_per_epoch), self.total_steps - 1)
        self.scheduler = build_warmup_cosine(self.optimizer, warmup, self.total_steps, cfg.optim.warmup_start_factor)
        self.scaler = self.amp.scaler()
        if info.is_main:
            log.info(
                "stage %s: %s student, %d ranks x %d images x %d accumulation = %d per step; %d steps (%d per epoch)",
                self.stage,
                self.precision,
                info.world_size,
                self.per_gpu_batch,
                self.accum,
                cfg.train.global_batch,
                self.total_steps,
                self.steps_per_epoch,
            )
        # The frozen teacher is referenced, not copied: its path and checksum identify it.
        return {
            "model": ModuleParts(self.model.trainable_modules()),
            "optimizer": self.optimizer,
            "scheduler": self.scheduler,
            "scaler": self.scaler,
            "data": self.loader,
            "teacher": Record(self._teacher_facts),
        }

    # ---- one optimizer step ------------------------------------------------------------------------
    def train_step(self) -> tuple[dict[str, Any], Applied]:
        cfg = self.cfg
        started = time.perf_counter()
        lam = lambda_at(self.step, self.total_steps, cfg.loss.lambda_start, cfg.loss.lambda_end)
        self.optimizer.zero_grad(set_to_none=True)
        sums = torch.zeros(3, device=self.info.device)  # loss, kl, fs over the micro-batches
        data_wait = 0.0
        for micro in range(self.accum):
            t0 = time.perf_counter()
            view1, view2 = self.next_batch()
            data_wait += time.perf_counter() - t0
            if self.info.device.type == "cuda" and cfg.train.channels_last:
                view1 = view1.contiguous(memory_format=torch.channels_last)
                view2 = view2.contiguous(memory_format=torch.channels_last)
            # Gradients are all-reduced on the last micro-batch only.
            last = micro == self.accum - 1
            sync = contextlib.nullcontext() if last or not self.info.distributed else self.ddp.no_sync()
            with sync:
                with self.amp.autocast():
                    out = self.ddp(view1, view2, lam, cfg.loss.temperature)
                self.scaler.scale(out["loss"] / self.accum).backward()
            sums += torch.stack([out["loss"], out["kl"], out["fs"]]).detach().float() / self.accum
            if self.preemption.requested and self.noticed_at is None:
                # The step still completes: checkpoints only happen at optimizer-step boundaries.
                self.noticed_at = f"micro-batch {micro + 1}/{self.accum} of step {self.step + 1}"
        grad_norm, applied, lr = self.apply_update()
        images = cfg.train.global_batch
        seconds = time.perf_counter() - started
        if self.compiled and not hasattr(self, "_first_step_s"):
            # Compilation happens in this process's first step: a signal arriving then waits for it.
            self._first_step_s = seconds
            if self.info.is_main:
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
            "images_per_s": images / seconds,
            "data_wait_s": data_wait,
        }
        if cfg.monitor.collapse:  # last micro-batch on this rank; device tensors, synced on logging steps only
            metrics.update(collapse_metrics(out, cfg.loss.temperature))
            self._collapse_shape = tuple(out["student_out"].shape)
        return metrics, applied

    # ---- monitors --------------------------------------------------------------------------------
    def _log(self, metrics: dict[str, torch.Tensor]) -> None:
        super()._log(metrics)
        if self.collapse_alarm is not None and not self.collapse_alarm.fired and self.info.is_main:
            values = {k: float(v) for k, v in metrics.items() if k.startswith("collapse/")}
            batch, classes = self._collapse_shape
            message = self.collapse_alarm.check(values, classes, batch, self.step)
            if message:
                log.warning(message)

    def after_step(self) -> None:
        if self.knn is None or not self.knn.due(self.step, self.total_steps):
            return
        result = self.knn(self.model.student)  # collective: every rank runs it at this step
        self.metrics.scalars(self.step, {"top1": result["top1"], "seconds": result["seconds"]}, group="knn")

    def _teacher_facts(self) -> dict[str, Any]:
        path = self.cfg.model.teacher_weights
        return {"path": path, "sha256": sha256_of_file(path) if path else None}

    def _restore(self, state: dict[str, Any], resized: bool) -> None:
        # The checkpoint's weights were trained against its teacher: refuse another file's content. Rank 0
        # hashes the file; every rank gets its digest, so every rank decides alike.
        current = all_gather_objects(self.info, self._teacher_facts() if self.info.is_main else None)[0]
        check_teacher_unchanged(state.get("teacher"), current, self.run_dir, state["step"], self.cfg.checkpoint.force)
        self.states["teacher"] = Record(lambda: current)
        super()._restore(state, resized)

    # ---- products --------------------------------------------------------------------------------
    def finish(self) -> None:
        if not self.info.is_main:
            return
        parts = self.model.trainable_state_dicts()
        if self.stage == "1":
            path = write_stage1_extraction(self.run_dir / STAGE1_EXTRACTION, parts, author="burn-suite")
            log.info("stage 1 complete: extraction in %s (next: launch/run.py stage=2 pretrained=%s)", path, path)
        else:
            path = write_backbone_extraction(self.run_dir / BACKBONE, parts["student"], author="burn-suite")
            log.info("stage 2 complete: backbone in %s (next: launch/run.py stage=linear pretrained=%s)", path, path)
