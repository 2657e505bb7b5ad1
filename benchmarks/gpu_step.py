"""Pretraining throughput on one GPU: stage 1 (binact) and stage 2 (binary) images/s at 224 px, fp16.

Each stage is measured twice in one run, side by side: with synthetic tensors already on the GPU (the
model's ceiling) and with the DALI GPU pipeline on generated JPEGs (what training sees). Paper model:
ReActNet-A width 1.0, ResNet-50 teacher, 2000-d classifiers, batch 256, AMP fp16 + GradScaler,
channels_last, Adam.

    python benchmarks/gpu_step.py [--batch 256] [--steps 20]      # needs a CUDA GPU
Goal: >= 2,500 images/s per H100 (images = one two-view sample).
"""

from __future__ import annotations

import argparse
import sys
import tempfile
import time
from pathlib import Path

import torch

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from burn.config import DataConfig, ModelConfig, SyntheticConfig  # noqa: E402
from burn.data.loaders import build_pretrain_loader, ensure_synthetic  # noqa: E402
from burn.models.burn import build_burn_model  # noqa: E402


def time_steps(model, batches, steps: int, warmup: int) -> float:
    """Images per second over `steps` optimizer steps after `warmup` steps."""
    optimizer = torch.optim.Adam([p for p in model.parameters() if p.requires_grad], lr=3e-4)
    scaler = torch.amp.GradScaler("cuda")
    model.train()
    n = 0
    for i in range(warmup + steps):
        if i == warmup:
            torch.cuda.synchronize()
            t0 = time.perf_counter()
        view1, view2 = next(batches)
        view1 = view1.contiguous(memory_format=torch.channels_last)
        view2 = view2.contiguous(memory_format=torch.channels_last)
        optimizer.zero_grad(set_to_none=True)
        with torch.autocast("cuda", dtype=torch.float16):
            out = model(view1, view2, 0.2, 0.2)
        scaler.scale(out["loss"]).backward()
        scaler.step(optimizer)
        scaler.update()
        if i >= warmup:
            n += view1.shape[0]
    torch.cuda.synchronize()
    return n / (time.perf_counter() - t0)


def synthetic_batches(batch: int):
    gen = torch.Generator(device="cuda").manual_seed(0)
    v1 = torch.randn(batch, 3, 224, 224, device="cuda", dtype=torch.float16, generator=gen)
    v2 = torch.randn(batch, 3, 224, 224, device="cuda", dtype=torch.float16, generator=gen)
    while True:
        yield v1, v2


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--batch", type=int, default=256)
    parser.add_argument("--steps", type=int, default=20)
    parser.add_argument("--warmup", type=int, default=5)
    parser.add_argument("--images", type=int, default=3000, help="generated JPEGs for the DALI run")
    parser.add_argument("--data", default=None, help="existing dataset root (default: generate one)")
    args = parser.parse_args()
    if not torch.cuda.is_available():
        sys.exit("benchmarks/gpu_step.py needs a CUDA GPU")
    torch.backends.cudnn.benchmark = True

    root = args.data or str(Path(tempfile.mkdtemp(prefix="burn-gpu-")) / "data")
    data = DataConfig(root=root, device="gpu", num_threads=8, synthetic=SyntheticConfig(
        generate=True, classes=10, per_class=args.images // 10, val_per_class=1, size=256))
    ensure_synthetic(data)
    rows = []
    for stage, precision in (("1", "binact"), ("2", "binary")):
        model = build_burn_model(ModelConfig(), precision).cuda().to(memory_format=torch.channels_last)
        tensors = time_steps(model, synthetic_batches(args.batch), args.steps, args.warmup)
        loader = build_pretrain_loader(data, batch_size=args.batch, shard_id=0, num_shards=1, seed=0,
                                       dtype=torch.float16)
        dali = time_steps(model, iter(loader), args.steps, args.warmup)
        rows.append((stage, precision, tensors, dali))
        del model, loader
        torch.cuda.empty_cache()
    print(f"device: {torch.cuda.get_device_name()}  batch {args.batch}  fp16  224 px")
    print(f"{'stage':<7}{'student':<9}{'synthetic img/s':>17}{'DALI GPU img/s':>16}{'DALI/synthetic':>16}")
    for stage, precision, tensors, dali in rows:
        print(f"{stage:<7}{precision:<9}{tensors:>17.0f}{dali:>16.0f}{dali / tensors:>16.2f}")
    print(f"slowest stage with DALI data: {min(r[3] for r in rows):.0f} images/s per GPU (goal >= 2500)")


if __name__ == "__main__":
    main()
