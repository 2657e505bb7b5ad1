"""Linear evaluation: frozen feature entries (eval mode), trainable MLP head + linear classifier."""

from __future__ import annotations

import logging
from pathlib import Path
from typing import Any

import torch
import torch.distributed as dist
import torch.nn.functional as F
from torch import nn

from burn.batch import split_global_batch
from burn.config import RANDOM_BACKBONE
from burn.data.loaders import build_eval_loader
from burn.engine.distributed import wrap_ddp
from burn.engine.loop import StageLoop
from burn.engine.precision import build_amp
from burn.engine.schedules import build_step_decay, stage_length
from burn.engine.state import ModuleParts, Stateful
from burn.models.reactnet import ReActNetA
from burn.runtime.rundir import LINEAR_RESULTS, write_json
from burn.weights import load_backbone

log = logging.getLogger("burn")


def topk_hits(logits: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
    """(top-1 hits, top-5 hits, samples) of one batch as float64, on the logits' device (no host sync)."""
    hits = logits.topk(min(5, logits.shape[1]), dim=1).indices.eq(labels[:, None])
    samples = torch.full((), len(labels), dtype=torch.int64, device=logits.device)
    return torch.stack([hits[:, 0].sum(), hits.any(dim=1).sum(), samples]).double()


class LinearEvalModel(nn.Module):
    """The original recipe: the 14 feature entries are frozen and stay in eval mode; the 1024-d MLP head
    (`fc.0`) and the classifier (`fc_cls`, `head.fc_cls` in the original) train."""

    def __init__(self, backbone: ReActNetA, num_classes: int):
        super().__init__()
        self.backbone = backbone
        for p in backbone.feature.parameters():
            p.requires_grad_(False)
        self.fc_cls = nn.Linear(backbone.out_dim, num_classes)

    def train(self, mode: bool = True) -> LinearEvalModel:
        super().train(mode)
        self.backbone.feature.eval()  # frozen BN statistics
        return self

    def forward(self, images: torch.Tensor) -> torch.Tensor:
        with torch.no_grad():
            features = self.backbone.forward_features(images)
        return self.fc_cls(self.backbone.fc(features))


class LinearEvalTrainer(StageLoop):
    stage = "linear"

    def build(self, data_state: Any) -> dict[str, Stateful]:
        cfg, info, lin = self.cfg, self.info, self.cfg.linear
        if not cfg.pretrained:
            raise ValueError(
                "stage=linear needs pretrained=<backbone file> (e.g. a stage-2 run's backbone.pth), "
                f"or pretrained={RANDOM_BACKBONE} for the no-pretraining baseline"
            )
        self.amp = build_amp(cfg.train.precision, info.device)
        backbone = ReActNetA(precision=lin.precision, width=cfg.model.width)  # seeded by the stage runner
        if cfg.pretrained == RANDOM_BACKBONE:
            log.info(
                "pretrained=%s: evaluating a randomly initialised student (the no-pretraining baseline)",
                RANDOM_BACKBONE,
            )
        else:
            backbone.load_state_dict(load_backbone(cfg.pretrained), strict=True)
        self.model = LinearEvalModel(backbone, lin.num_classes).to(info.device)
        self.ddp = wrap_ddp(self.model, info)
        self.per_gpu_batch, self.accum = split_global_batch(
            lin.global_batch, lin.per_gpu_batch, info.world_size, "linear"
        )
        self.loader = build_eval_loader(
            cfg.data,
            split="train",
            batch_size=self.per_gpu_batch,
            shard_id=info.rank,
            num_shards=info.world_size,
            seed=cfg.seed,
            dtype=self.amp.input_dtype,
            state=data_state,
        )
        epochs, self.steps_per_epoch, self.total_steps = stage_length(
            steps=cfg.steps,
            epochs=cfg.epochs,
            default_epochs=lin.epochs,
            batches_per_epoch=self.loader.steps_per_epoch,
            accumulation=self.accum,
            short_epoch_is_one_step=True,  # as before the shared function: small labelled lists stay usable
        )
        self.trainable = [p for p in self.model.parameters() if p.requires_grad]
        self.optimizer = torch.optim.SGD(
            self.trainable,
            lr=lin.lr,
            momentum=lin.momentum,
            weight_decay=lin.weight_decay,
            fused=info.device.type == "cuda",
        )
        self.scheduler = build_step_decay(self.optimizer, list(lin.milestones), epochs, self.total_steps)
        self.scaler = self.amp.scaler()
        # "student": the backbone under the name burn.weights reads from a stage checkpoint.
        return {
            "model": ModuleParts({"student": self.model.backbone, "fc_cls": self.model.fc_cls}),
            "optimizer": self.optimizer,
            "scheduler": self.scheduler,
            "scaler": self.scaler,
            "data": self.loader,
        }

    def train_step(self) -> tuple[dict[str, torch.Tensor], bool]:
        self.optimizer.zero_grad(set_to_none=True)
        loss_sum = torch.zeros((), device=self.info.device)
        for _ in range(self.accum):
            images, labels = self.next_batch()
            labels = labels.to(self.info.device)
            with self.amp.autocast():
                loss = F.cross_entropy(self.ddp(images).float(), labels)
            self.scaler.scale(loss / self.accum).backward()
            loss_sum += loss.detach() / self.accum
        grad_norm, applied, lr = self.apply_update()
        return {"loss": loss_sum, "lr": lr, "grad_norm": grad_norm}, applied

    @torch.no_grad()
    def evaluate(self) -> dict[str, float]:
        """Top-1 / top-5 (percent) over the whole validation list; every rank scores its shard."""
        cfg = self.cfg
        val = build_eval_loader(
            cfg.data,
            split="val",
            batch_size=cfg.linear.per_gpu_batch,
            shard_id=self.info.rank,
            num_shards=self.info.world_size,
            seed=cfg.seed,
            dtype=self.amp.input_dtype,
        )
        self.model.eval()
        counts = torch.zeros(3, dtype=torch.float64, device=self.info.device)  # top1, top5, samples
        for images, labels in val:
            labels = labels.to(self.info.device)
            with self.amp.autocast():
                logits = self.model(images).float()
            counts += topk_hits(logits, labels)
        if self.info.distributed:
            dist.all_reduce(counts)
        top1, top5, n = counts.tolist()
        return {"top1": 100.0 * top1 / n, "top5": 100.0 * top5 / n, "num_samples": int(n)}

    def after_step(self) -> None:
        """Every linear.eval_every_epochs epochs (not at the last step: finish() evaluates): top-1/top-5
        in TensorBoard. Eval mode and a separate loader leave the training state untouched."""
        every = self.cfg.linear.eval_every_epochs * self.steps_per_epoch
        if every and self.step % every == 0 and self.step < self.total_steps:
            results = self.evaluate()
            self.ddp.train()
            self.metrics.scalars(self.step, {"top1": results["top1"], "top5": results["top5"]}, group="linear/val")

    def finish(self) -> None:
        self.results = self.evaluate()
        if self.info.is_main:
            self.results.update(step=self.step, pretrained=str(self.cfg.pretrained))
            write_json(Path(self.run_dir) / LINEAR_RESULTS, self.results)
            self.metrics.scalars(
                self.step, {"top1": self.results["top1"], "top5": self.results["top5"]}, group="linear/val"
            )
            log.info(
                "linear evaluation complete: top-1 %.2f%%, top-5 %.2f%% on %d images; results in %s",
                self.results["top1"],
                self.results["top5"],
                self.results["num_samples"],
                Path(self.run_dir) / LINEAR_RESULTS,
            )

    def final_summary(self) -> dict[str, Any]:
        return {"top1": self.results["top1"], "top5": self.results["top5"]}
