"""Linear evaluation: frozen feature entries (eval mode), trainable MLP head + linear classifier.

`build_linear_evaluation` makes the stage's parts (burn.engine.parts) from small builders, in the
order they draw from the RNG; `LinearEvalTrainer` is the loop (burn.engine.loop) that runs them.
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from functools import partial
from pathlib import Path

import torch
import torch.distributed as dist
import torch.nn.functional as F
from omegaconf import DictConfig
from torch import nn

from burn.batch import BatchSplit, split_global_batch
from burn.config import RANDOM_BACKBONE
from burn.data.loaders import build_eval_loader
from burn.data.stream import ResumableLoader
from burn.engine.distributed import DistInfo, wrap_ddp
from burn.engine.loop import StageLoop
from burn.engine.parts import Finish, StageParts, StepContext, StepFn, StepHook, apply_update
from burn.engine.precision import AmpSettings, build_amp
from burn.engine.schedules import build_step_decay, stage_length
from burn.engine.state import ModuleParts
from burn.models.reactnet import ReActNetA
from burn.monitor.reporting import MetricLogger
from burn.resume.signals import PreemptionHandler
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
    """Linear evaluation of a pretrained (or random) student backbone."""

    def __init__(self, cfg: DictConfig, info: DistInfo, run_dir: Path, preemption: PreemptionHandler):
        super().__init__(cfg, info, run_dir, preemption, build_linear_evaluation)


def build_linear_evaluation(cfg: DictConfig, info: DistInfo, run_dir: Path, data_state: dict | None) -> StageParts:
    """The linear evaluation's parts, the loader opened at `data_state`."""
    lin = cfg.linear
    require_pretrained(cfg)
    amp = build_amp(cfg.train.precision, info.device)
    model = build_model(cfg, info)
    ddp = wrap_ddp(model, info)
    batch = split_global_batch(lin.global_batch, lin.per_gpu_batch, info.world_size, "linear")
    loader = build_loader(cfg, info, batch, amp, data_state)
    epochs, steps_per_epoch, total_steps = count_steps(cfg, loader, batch)
    trainable = [p for p in model.parameters() if p.requires_grad]
    optimizer = build_optimizer(cfg, info, trainable)
    scheduler = build_step_decay(optimizer, list(lin.milestones), epochs, total_steps)
    scaler = amp.scaler()
    evaluate = partial(evaluate_top_k, cfg, info, amp, model)
    return StageParts(
        stage="linear",
        model=model,
        ddp=ddp,
        # "student": the backbone under the name burn.weights reads from a stage checkpoint.
        trained=ModuleParts({"student": model.backbone, "fc_cls": model.fc_cls}),
        optimizer=optimizer,
        scheduler=scheduler,
        scaler=scaler,
        data=loader,
        batch=batch,
        total_steps=total_steps,
        step=linear_step(info, ddp, amp, optimizer, scheduler, scaler, trainable, batch.accumulation),
        finish=write_results(cfg, info, run_dir, evaluate),
        after_step=[periodic_evaluation(lin.eval_every_epochs * steps_per_epoch, total_steps, evaluate, ddp)],
    )


# ---- the builders ----------------------------------------------------------------------------------
def require_pretrained(cfg: DictConfig) -> None:
    """The evaluations (linear, finetune) start from a backbone: refuse a config that names none."""
    if not cfg.pretrained:
        raise ValueError(
            f"stage={cfg.stage} needs pretrained=<backbone file or stage-2 run dir>, "
            f"or pretrained={RANDOM_BACKBONE} for the no-pretraining baseline"
        )


def build_model(cfg: DictConfig, info: DistInfo) -> LinearEvalModel:
    """The backbone (pretrained=: a file's, or a random one: the baseline) with a new classifier."""
    backbone = ReActNetA(precision=cfg.linear.precision, width=cfg.model.width)  # seeded by the stage runner
    if cfg.pretrained == RANDOM_BACKBONE:
        log.info(
            "pretrained=%s: evaluating a randomly initialised student (the no-pretraining baseline)",
            RANDOM_BACKBONE,
        )
    else:
        backbone.load_state_dict(load_backbone(cfg.pretrained), strict=True)
    return LinearEvalModel(backbone, cfg.linear.num_classes).to(info.device)


def build_loader(
    cfg: DictConfig, info: DistInfo, batch: BatchSplit, amp: AmpSettings, data_state: dict | None
) -> ResumableLoader:
    """This rank's endless labelled stream (train_labeled), at `data_state`."""
    return build_eval_loader(
        cfg.data,
        split="train",
        batch_size=batch.per_gpu,
        shard_id=info.rank,
        num_shards=info.world_size,
        seed=cfg.seed,
        dtype=amp.input_dtype,
        state=data_state,
    )


def count_steps(cfg: DictConfig, loader: ResumableLoader, batch: BatchSplit) -> tuple[int, int, int]:
    """(epochs, optimizer steps per epoch, steps in the stage): steps=, else epochs= or linear.epochs."""
    return stage_length(
        steps=cfg.steps,
        epochs=cfg.epochs,
        default_epochs=cfg.linear.epochs,
        batches_per_epoch=loader.steps_per_epoch,
        accumulation=batch.accumulation,
        short_epoch_is_one_step=True,  # as before the shared function: small labelled lists stay usable
    )


def build_optimizer(cfg: DictConfig, info: DistInfo, trainable: list[nn.Parameter]) -> torch.optim.SGD:
    """SGD with momentum over the head and the classifier; fused on CUDA."""
    lin = cfg.linear
    return torch.optim.SGD(
        trainable,
        lr=lin.lr,
        momentum=lin.momentum,
        weight_decay=lin.weight_decay,
        fused=info.device.type == "cuda",
    )


# ---- one optimizer step ----------------------------------------------------------------------------
def linear_step(
    info: DistInfo,
    ddp: nn.Module,
    amp: AmpSettings,
    optimizer: torch.optim.Optimizer,
    scheduler: torch.optim.lr_scheduler.LRScheduler,
    scaler: torch.amp.GradScaler,
    trainable: list[nn.Parameter],
    accumulation: int,
) -> StepFn:
    """Cross-entropy over `accumulation` labelled micro-batches, then the update."""

    def step(ctx: StepContext) -> tuple[dict[str, torch.Tensor], bool]:
        optimizer.zero_grad(set_to_none=True)
        loss_sum = torch.zeros((), device=info.device)
        for _ in range(accumulation):
            images, labels = ctx.next_batch()
            labels = labels.to(info.device)
            with amp.autocast():
                loss = F.cross_entropy(ddp(images).float(), labels)
            scaler.scale(loss / accumulation).backward()
            loss_sum += loss.detach() / accumulation
        grad_norm, applied, lr = apply_update(optimizer, scheduler, scaler, trainable)
        return {"loss": loss_sum, "lr": lr, "grad_norm": grad_norm}, applied

    return step


# ---- evaluation: during training and at the end ----------------------------------------------------
@torch.no_grad()
def evaluate_top_k(
    cfg: DictConfig, info: DistInfo, amp: AmpSettings, model: nn.Module, batch_size: int | None = None
) -> dict[str, float]:
    """Top-1 / top-5 (percent) over the whole validation list; every rank scores its shard (a collective).
    `batch_size`: images per forward (default linear.per_gpu_batch)."""
    val = build_eval_loader(
        cfg.data,
        split="val",
        batch_size=batch_size or cfg.linear.per_gpu_batch,
        shard_id=info.rank,
        num_shards=info.world_size,
        seed=cfg.seed,
        dtype=amp.input_dtype,
    )
    model.eval()
    counts = torch.zeros(3, dtype=torch.float64, device=info.device)  # top1, top5, samples
    for images, labels in val:
        labels = labels.to(info.device)
        with amp.autocast():
            logits = model(images).float()
        counts += topk_hits(logits, labels)
    if info.distributed:
        dist.all_reduce(counts)
    top1, top5, n = counts.tolist()
    return {"top1": 100.0 * top1 / n, "top5": 100.0 * top5 / n, "num_samples": int(n)}


def periodic_evaluation(
    every: int,
    total_steps: int,
    evaluate: Callable[[], dict[str, float]],
    ddp: nn.Module,
    group: str = "linear/val",
) -> StepHook:
    """Every `every` steps (linear.eval_every_epochs epochs; 0: never), not at the last step (the finish
    evaluates): top-1/top-5 in TensorBoard under `group`. Eval mode and a separate loader leave the
    training state untouched."""

    def monitor(step: int, metrics: MetricLogger) -> None:
        if every and step % every == 0 and step < total_steps:
            results = evaluate()
            ddp.train()
            metrics.scalars(step, {"top1": results["top1"], "top5": results["top5"]}, group=group)

    return monitor


def write_results(cfg: DictConfig, info: DistInfo, run_dir: Path, evaluate: Callable[[], dict[str, float]]) -> Finish:
    """The final evaluation (every rank); rank 0 writes linear_results.json and logs it."""

    def finish(step: int, metrics: MetricLogger) -> dict[str, float]:
        results = evaluate()
        if info.is_main:
            results.update(step=step, pretrained=str(cfg.pretrained))
            write_json(Path(run_dir) / LINEAR_RESULTS, results)
            metrics.scalars(step, {"top1": results["top1"], "top5": results["top5"]}, group="linear/val")
            log.info(
                "linear evaluation complete: top-1 %.2f%%, top-5 %.2f%% on %d images; results in %s",
                results["top1"],
                results["top5"],
                results["num_samples"],
                Path(run_dir) / LINEAR_RESULTS,
            )
        return {"top1": results["top1"], "top5": results["top5"]}

    return finish
