"""Pretraining step throughput on one GPU: the trainer's own step against a naive step, side by side.

Four rows in one run, each with its peak GPU memory:
  trainer / synthetic   PretrainTrainer.train_until as training runs it (same module: folded half teacher,
                        compiled student, channels_last; a 1-rank DDP wrapper, GradScaler, fused Adam,
                        the non-finite and preemption checks), views already on the GPU;
  trainer / loader      the same with its data loader (DALI GPU pipeline, or torchvision without DALI);
  naive / synthetic     fp32, eager, NCHW, plain Adam, no DDP, BN'd fp32 teacher: the original's step;
  naive / loader        the same fed by a plain torchvision DataLoader (PIL workers), as the original ran.
Images are two-view samples. Default: stage 1 (binact student), paper model, 224 px, batch 256, fp16.

    python benchmarks/gpu_step.py [--batch 256] [--steps 20] [--stage 1]     # needs a CUDA GPU
    python benchmarks/gpu_step.py --cpu                                      # seconds: exercises the code
Goal (stage 1, H100): trainer / loader >= 2,500 images/s and >= 2x naive / loader.
"""

from __future__ import annotations

import argparse
import os
import sys
import tempfile
import time
from pathlib import Path

import torch
import torch.distributed as dist

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from hydra import compose, initialize_config_dir  # noqa: E402

from burn.config import CONF_DIR, register_configs  # noqa: E402
from burn.data.loaders import build_pretrain_loader  # noqa: E402
from burn.demo.synthetic import ensure_synthetic  # noqa: E402
from burn.engine.distributed import DistInfo  # noqa: E402
from burn.engine.trainer import PretrainTrainer  # noqa: E402
from burn.models.burn import build_burn_model  # noqa: E402
from burn.resume.signals import PreemptionHandler  # noqa: E402


class SyntheticViews:
    """Stands in for the trainer's loader: the same two views every step (the model's ceiling)."""

    epoch = 0

    def __init__(self, batch: int, size: int, device: torch.device, dtype: torch.dtype, channels_last: bool):
        gen = torch.Generator(device=device).manual_seed(0)
        fmt = torch.channels_last if channels_last else torch.contiguous_format
        self.views = tuple(
            torch.randn(batch, 3, size, size, device=device, generator=gen).to(dtype).contiguous(memory_format=fmt)
            for _ in range(2)
        )

    def __next__(self):
        return self.views


def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def _reset_peak(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.empty_cache()
        torch.cuda.reset_peak_memory_stats(device)


def _peak_gib(device: torch.device) -> float:
    return torch.cuda.max_memory_allocated(device) / 2**30 if device.type == "cuda" else float("nan")


def compose_cfg(args, root: str, run_dir: Path):
    register_configs()
    # Throughput does not depend on what the teacher knows: a random trunk, no auto teacher to train.
    preset = (
        [
            "preset=tiny",
            "model.teacher_weights=null",
            f"train.per_gpu_batch={args.batch}",
            f"train.global_batch={args.batch}",
        ]
        if args.cpu
        else [
            "preset=paper",
            f"train.per_gpu_batch={args.batch}",
            f"train.global_batch={args.batch}",
            "train.precision=fp16",
            f"data.num_threads={args.workers}",
        ]
    )
    with initialize_config_dir(config_dir=str(CONF_DIR), version_base=None):
        return compose(
            "config",
            overrides=[
                *preset,
                f"stage={args.stage}",
                f"data.root={root}",
                f"data.backend={args.backend}",
                "data.synthetic.generate=false",
                f"run_dir={run_dir}",
                "log.progress_bar=off",
                "log.every_steps=10",
                "checkpoint.every_steps=100000",
                "steps=100000",
                f"train.compile={'false' if args.no_compile else 'null'}",
            ],
        )


def time_trainer(cfg, info, run_dir: Path, synthetic: bool, steps: int, warmup: int) -> tuple[float, float]:
    """(images/s, peak GiB) of PretrainTrainer.train_until over `steps` optimizer steps after `warmup`."""
    _reset_peak(info.device)
    with PreemptionHandler() as preemption:
        trainer = PretrainTrainer(cfg, info, run_dir, preemption)
        trainer.prepare()
        if synthetic:  # the step reads its micro-batches from the parts' loader
            trainer.parts.data = SyntheticViews(
                cfg.train.per_gpu_batch,
                cfg.data.aug.image_size,
                info.device,
                trainer.parts.step.amp.input_dtype,
                info.device.type == "cuda",
            )
        try:
            trainer.train_until(warmup)  # compiles, autotunes cuDNN, fills the loader's queues
            _sync(info.device)
            started = time.perf_counter()
            trainer.train_until(warmup + steps)
            _sync(info.device)
            seconds = time.perf_counter() - started
        finally:
            trainer.metrics.close()
    rate = steps * cfg.train.global_batch / seconds
    peak = _peak_gib(info.device)
    del trainer
    return rate, peak


def time_naive(cfg, device: torch.device, root: str, synthetic: bool, steps: int, warmup: int) -> tuple[float, float]:
    """fp32, eager, NCHW: the model as built, Adam, no scaler, no DDP; data from a torchvision DataLoader."""
    _reset_peak(device)
    precision = "binact" if str(cfg.stage) == "1" else "binary"
    model = build_burn_model(cfg.model, precision).to(device).train()
    optimizer = torch.optim.Adam([p for p in model.parameters() if p.requires_grad], lr=cfg.optim.lr)
    batch = cfg.train.per_gpu_batch
    if synthetic:
        batches = SyntheticViews(batch, cfg.data.aug.image_size, device, torch.float32, channels_last=False)
    else:
        data = cfg.data.copy()
        data.backend, data.device = "torchvision", "gpu" if device.type == "cuda" else "cpu"
        batches = build_pretrain_loader(data, batch_size=batch, shard_id=0, num_shards=1, seed=0)
    for i in range(warmup + steps):
        if i == warmup:
            _sync(device)
            started = time.perf_counter()
        view1, view2 = next(batches)
        optimizer.zero_grad(set_to_none=True)
        model(view1, view2, 0.2, cfg.loss.temperature)["loss"].backward()
        optimizer.step()
    _sync(device)
    rate = steps * batch / (time.perf_counter() - started)
    return rate, _peak_gib(device)


def single_rank_group(device: torch.device) -> DistInfo:
    """A 1-rank process group, so that the trainer wraps its model in DDP as on a cluster."""
    backend = "nccl" if device.type == "cuda" else "gloo"
    if not dist.is_initialized():
        dist.init_process_group(
            backend, store=dist.HashStore(), rank=0, world_size=1, device_id=device if device.type == "cuda" else None
        )
    return DistInfo(rank=0, world_size=1, local_rank=0, device=device, backend=backend)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--batch", type=int, default=None, help="per-GPU batch (default 256; 8 with --cpu)")
    parser.add_argument("--steps", type=int, default=None, help="timed steps (default 20; 2 with --cpu)")
    parser.add_argument("--warmup", type=int, default=None, help="untimed steps first (default 5; 1 with --cpu)")
    parser.add_argument("--stage", choices=("1", "2"), default="1")
    parser.add_argument("--images", type=int, default=3000, help="generated JPEGs for the loader rows")
    parser.add_argument("--data", default=None, help="existing dataset root (default: generate one)")
    parser.add_argument(
        "--backend",
        choices=("dali", "torchvision"),
        default=None,
        help="trainer's loader (default: dali when importable)",
    )
    parser.add_argument(
        "--workers",
        type=int,
        default=max(1, len(os.sched_getaffinity(0)) - 2),
        help="loader threads / DataLoader workers (default: this process's CPUs - 2)",
    )
    parser.add_argument("--no-compile", action="store_true", help="train.compile=false for the trainer rows")
    parser.add_argument("--cpu", action="store_true", help="tiny preset on the CPU: checks the script, no numbers")
    args = parser.parse_args()
    if args.backend is None:
        try:
            import nvidia.dali  # noqa: F401

            args.backend = "dali"
        except ImportError:
            args.backend = "torchvision"
    args.batch = args.batch or (8 if args.cpu else 256)
    args.steps = args.steps or (2 if args.cpu else 20)
    args.warmup = args.warmup if args.warmup is not None else (1 if args.cpu else 5)
    if not args.cpu and not torch.cuda.is_available():
        sys.exit("benchmarks/gpu_step.py needs a CUDA GPU (or --cpu to exercise the script)")
    device = torch.device("cpu") if args.cpu else torch.device("cuda", 0)
    if device.type == "cuda":
        torch.cuda.set_device(device)
    os.environ.setdefault("MASTER_ADDR", "127.0.0.1")

    work = Path(tempfile.mkdtemp(prefix="burn-gpu-step-"))
    root = args.data or str(work / "data")
    cfg = compose_cfg(args, root, work / "run")
    if not args.data:
        per_class = max(args.images // 10, 2 * args.batch // 10 + 1)
        data = cfg.data.copy()
        data.synthetic.generate, data.synthetic.classes, data.synthetic.per_class = True, 10, per_class
        data.synthetic.val_per_class, data.synthetic.size = 1, (48 if args.cpu else 320)
        ensure_synthetic(data)
    info = single_rank_group(device)
    rows = []
    torch.backends.cudnn.benchmark = False  # the original's setting; the trainer turns it on below
    for synthetic in (True, False):
        source = "synthetic" if synthetic else "torchvision DataLoader"
        try:
            rows.append(("naive", source, *time_naive(cfg, device, root, synthetic, args.steps, args.warmup)))
        except torch.OutOfMemoryError:  # fp32 at the trainer's batch may not fit: say so, keep going
            print(f"naive / {source}: out of GPU memory at batch {args.batch} in fp32")
            rows.append(("naive", source, float("nan"), float("nan")))
        _reset_peak(device)
    from burn.engine.gpu import configure_backends

    configure_backends(device, deterministic=False)
    for synthetic in (True, False):
        run_dir = work / f"run-{'synthetic' if synthetic else 'loader'}"
        rows.append(
            (
                "trainer",
                "synthetic" if synthetic else f"{args.backend} loader",
                *time_trainer(cfg, info, run_dir, synthetic, args.steps, args.warmup),
            )
        )
    dist.destroy_process_group()

    name = torch.cuda.get_device_name(device) if device.type == "cuda" else "CPU (script check only)"
    print(
        f"device: {name}  stage {args.stage}  batch {args.batch}  {cfg.data.aug.image_size} px  "
        f"{cfg.train.precision}  compile={'off' if args.no_compile else 'auto'}  steps {args.steps}  "
        f"loader threads {cfg.data.num_threads}"
    )
    print(f"{'step':<9}{'input':<26}{'images/s':>10}{'peak GiB':>10}")
    for kind, source, rate, peak in rows:
        print(f"{kind:<9}{source:<26}{rate:>10.0f}{peak:>10.2f}")
    naive = {r[1] != "synthetic": r[2] for r in rows if r[0] == "naive"}
    trainer = {r[1] != "synthetic": r[2] for r in rows if r[0] == "trainer"}
    print(
        f"trainer/naive: synthetic {trainer[False] / naive[False]:.2f}x, with loaders "
        f"{trainer[True] / naive[True]:.2f}x (goal >= 2x)"
    )
    print(f"stage {args.stage} with its loader: {trainer[True]:.0f} images/s per GPU (goal >= 2500 on an H100)")


if __name__ == "__main__":
    main()
