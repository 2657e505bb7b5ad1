"""Fine-tuning (stage=finetune): the whole fully binary student and a new linear head, on labelled images.

The paper's semi-supervised evaluation (1% / 10% of the ImageNet labels) and transfer to a user's own
labelled dataset are this one stage pointed at another ``data.train_labeled_list`` (docs/finetuning.md).
Unlike linear evaluation nothing is frozen: the binary convolutions train through their latent real
weights and the straight-through sign, as in stage 2, and BatchNorm trains too. The head is a new
``Linear`` on the pooled backbone features (OpenSelfSup's ``ClsHead(with_avg_pool=True)``); the backbone's
own MLP head (``fc.0``, the linear evaluation's) is kept in the checkpoint but not used or trained.

`build_finetuning` makes the stage's parts (burn.engine.parts) from small builders, in the order they draw
from the RNG; `FinetuneTrainer` is the loop (burn.engine.loop) that runs them. The labelled stream, the
step and the top-k evaluation are linear evaluation's (burn.engine.linear).
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from functools import partial
from pathlib import Path
from typing import Any

import torch
from omegaconf import DictConfig, OmegaConf
from torch import nn

from burn.batch import split_global_batch
from burn.config import RANDOM_BACKBONE
from burn.data.lists import resolve_split
from burn.engine.distributed import DistInfo, wrap_ddp
from burn.engine.linear import build_loader, evaluate_top_k, linear_step, periodic_evaluation, require_pretrained
from burn.engine.loop import StageLoop
from burn.engine.parts import Finish, StageParts
from burn.engine.precision import build_amp
from burn.engine.schedules import build_step_decay, stage_length
from burn.engine.state import ModuleParts
from burn.models.reactnet import ReActNetA
from burn.monitor.reporting import MetricLogger
from burn.resume.signals import PreemptionHandler
from burn.runtime.rundir import FINETUNE_RESULTS, backbone_file, write_json
from burn.weights import load_backbone

log = logging.getLogger("burn")

#: TensorBoard group of the validation scores (finetune/val/top1, top5).
VAL_GROUP = "finetune/val"


class FinetuneModel(nn.Module):
    """The binary student's feature entries, average-pooled, then a new linear head; all of it trains.

    ``backbone.fc`` (the pretrained MLP head linear evaluation uses) is frozen and unused: it stays in the
    checkpoint so the "student" part keeps the backbone layout burn.weights reads."""

    def __init__(self, backbone: ReActNetA, num_classes: int):
        super().__init__()
        self.backbone = backbone
        for p in backbone.fc.parameters():
            p.requires_grad_(False)  # unused: DDP must not wait for its gradients
        self.head = nn.Linear(backbone.feat_dim, num_classes)
        nn.init.normal_(self.head.weight, std=0.01)  # OpenSelfSup's ClsHead initialisation
        nn.init.zeros_(self.head.bias)

    def forward(self, images: torch.Tensor) -> torch.Tensor:
        return self.head(self.backbone.forward_features(images))


class FinetuneTrainer(StageLoop):
    """Fine-tuning of a pretrained (or random) binary student with a new head."""

    def __init__(self, cfg: DictConfig, info: DistInfo, run_dir: Path, preemption: PreemptionHandler):
        super().__init__(cfg, info, run_dir, preemption, build_finetuning)


def build_finetuning(cfg: DictConfig, info: DistInfo, run_dir: Path, data_state: dict | None) -> StageParts:
    """The fine-tuning stage's parts, the loader opened at `data_state`."""
    ft = cfg.finetune
    amp = build_amp(cfg.train.precision, info.device)
    model = build_model(cfg, info)
    ddp = wrap_ddp(model, info)
    batch = split_global_batch(ft.global_batch, ft.per_gpu_batch, info.world_size, "finetune")
    loader = build_loader(cfg, info, batch, amp, data_state)  # train_labeled: RandomResizedCrop + flip
    epochs, steps_per_epoch, total_steps = stage_length(
        steps=cfg.steps,
        epochs=cfg.epochs,
        default_epochs=ft.epochs,
        batches_per_epoch=loader.steps_per_epoch,
        accumulation=batch.accumulation,
        short_epoch_is_one_step=True,  # a 1% list of a small dataset may hold less than one global batch
    )
    trainable = [p for p in model.parameters() if p.requires_grad]
    optimizer = build_optimizer(cfg, info, model)
    scheduler = build_step_decay(optimizer, list(ft.milestones), epochs, total_steps, gamma=ft.gamma)
    scaler = amp.scaler()
    evaluate = partial(evaluate_top_k, cfg, info, amp, model, ft.per_gpu_batch)
    if info.is_main:
        log.info(
            "fine-tuning %s: every layer of the binary student + a %d-class head; %d ranks x %d images x %d "
            "accumulation = %d per step; %d steps (%d per epoch)",
            cfg.pretrained,
            cfg.linear.num_classes,
            info.world_size,
            batch.per_gpu,
            batch.accumulation,
            ft.global_batch,
            total_steps,
            steps_per_epoch,
        )
    return StageParts(
        stage="finetune",
        model=model,
        ddp=ddp,
        # "student": the (fine-tuned) backbone under the name burn.weights reads from a stage checkpoint.
        trained=ModuleParts({"student": model.backbone, "head": model.head}),
        optimizer=optimizer,
        scheduler=scheduler,
        scaler=scaler,
        data=loader,
        batch=batch,
        total_steps=total_steps,
        step=linear_step(info, ddp, amp, optimizer, scheduler, scaler, trainable, batch.accumulation),
        finish=write_results(cfg, info, run_dir, evaluate, total_steps),
        after_step=[periodic_evaluation(ft.eval_every_epochs * steps_per_epoch, total_steps, evaluate, ddp, VAL_GROUP)],
    )


# ---- the builders ----------------------------------------------------------------------------------
def build_model(cfg: DictConfig, info: DistInfo) -> FinetuneModel:
    """The fully binary student (pretrained=: a backbone file or a stage-2 run dir's; random: the
    no-pretraining baseline, seeded by the stage runner) with a new head."""
    require_pretrained(cfg)
    backbone = ReActNetA(precision="binary", width=cfg.model.width)
    if cfg.pretrained == RANDOM_BACKBONE:
        log.info("pretrained=%s: fine-tuning a randomly initialised student (no pretraining)", cfg.pretrained)
    else:
        backbone.load_state_dict(load_backbone(backbone_file(cfg.pretrained)), strict=True)
    return FinetuneModel(backbone, cfg.linear.num_classes).to(info.device)


def build_optimizer(cfg: DictConfig, info: DistInfo, model: FinetuneModel) -> torch.optim.SGD:
    """SGD with momentum: the backbone at finetune.lr, the head at finetune.lr x finetune.head_lr_scale
    (OpenSelfSup's ``paramwise_options={'\\Ahead.': lr_mult}``), weight decay on every parameter."""
    ft = cfg.finetune
    backbone = [p for p in model.backbone.parameters() if p.requires_grad]
    groups = [
        {"params": backbone, "lr": ft.lr},
        {"params": list(model.head.parameters()), "lr": ft.lr * ft.head_lr_scale},
    ]
    return torch.optim.SGD(
        groups, lr=ft.lr, momentum=ft.momentum, weight_decay=ft.weight_decay, fused=info.device.type == "cuda"
    )


# ---- the product -----------------------------------------------------------------------------------
def recipe(cfg: DictConfig, total_steps: int) -> dict[str, Any]:
    """What finetune_eval.json records of how the numbers were made."""
    return {
        **OmegaConf.to_container(cfg.finetune, resolve=True),
        "num_classes": int(cfg.linear.num_classes),
        "steps": int(total_steps),
        "epochs_override": cfg.epochs,
        "precision": str(cfg.train.precision),
        "seed": int(cfg.seed),
        "image_size": int(cfg.data.aug.image_size),
        "eval_resize": int(cfg.data.eval_resize),
        "eval_crop": int(cfg.data.eval_crop),
    }


def write_results(
    cfg: DictConfig, info: DistInfo, run_dir: Path, evaluate: Callable[[], dict[str, float]], total_steps: int
) -> Finish:
    """The final evaluation (every rank); rank 0 writes finetune_eval.json and logs where it went."""

    def finish(step: int, metrics: MetricLogger) -> dict[str, float]:
        results = evaluate()
        if info.is_main:
            labelled = resolve_split(cfg.data, "train_labeled")
            results.update(
                step=step,
                pretrained=str(cfg.pretrained),
                labeled_list=labelled.source,
                labeled_images=len(labelled),
                val_list=resolve_split(cfg.data, "val").source,
                recipe=recipe(cfg, total_steps),
            )
            path = Path(run_dir) / FINETUNE_RESULTS
            write_json(path, results)
            metrics.scalars(step, {"top1": results["top1"], "top5": results["top5"]}, group=VAL_GROUP)
            log.info(
                "fine-tuning complete: top-1 %.2f%%, top-5 %.2f%% on %d images, trained on %d labelled images "
                "of %s; results in %s",
                results["top1"],
                results["top5"],
                results["num_samples"],
                results["labeled_images"],
                results["labeled_list"],
                path,
            )
        return {"top1": results["top1"], "top5": results["top5"]}

    return finish
