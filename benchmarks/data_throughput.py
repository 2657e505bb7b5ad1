"""Pretraining input throughput: DALI on CPU threads vs the torchvision fallback, same JPEGs, same cores.

    python benchmarks/data_throughput.py [--images 640] [--cores 2] [--batch 64] [--reps 3]

Generates ~27 KB, 240-px JPEGs (burn.demo.synthetic), pins this process (and so DALI's threads and
the DataLoader workers) to ``--cores`` cores, and times the full two-view recipe (224-px crops, the
paper's augmentations) of each backend, interleaving the repetitions so that drifting machine load
hits both alike. With a GPU it also times DALI's mixed (GPU) pipeline; ``--stock`` adds a plain
torchvision.transforms.v2 pipeline for reference. Prints images per second (each image giving two
views) and per CPU-second (robust to other jobs on the machine) and, last, the DALI CPU /
torchvision fallback ratio.
"""

from __future__ import annotations

import argparse
import gc
import multiprocessing
import os
import statistics
import sys
import tempfile
import time
from pathlib import Path

import torch
from omegaconf import OmegaConf

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
from burn.config import DataConfig  # noqa: E402
from burn.data.loaders import build_pretrain_loader  # noqa: E402
from burn.demo.synthetic import generate_dataset  # noqa: E402

IMAGE_SIDE, JPEG_QUALITY = 240, 96  # about 27 KB per image, like ImageNet's smaller files


def make_images(root: Path, count: int) -> Path:
    classes = 8
    if not (root / "meta" / "train.txt").is_file():
        generate_dataset(
            root,
            classes=classes,
            per_class=-(-count // classes),
            val_per_class=0,
            size=IMAGE_SIDE,
            seed=0,
            quality=JPEG_QUALITY,
        )
    return root


def cpu_seconds() -> float:
    """CPU time of this process (all its threads: DALI's) and of its live children (DataLoader workers)."""
    total = time.process_time()
    ticks = os.sysconf("SC_CLK_TCK")
    for child in multiprocessing.active_children():
        try:
            fields = Path(f"/proc/{child.pid}/stat").read_text().rsplit(")", 1)[1].split()
            total += (int(fields[11]) + int(fields[12])) / ticks  # utime + stime
        except (OSError, IndexError):
            pass
    return total


class StockTwoViews(torch.utils.data.Dataset):
    """Reference only: the recipe written the usual way with torchvision.transforms.v2 (what DALI's
    documentation and docs/reference.md compare against), to put the fallback's speed in context."""

    def __init__(self, root: Path):
        from torchvision.transforms import v2

        self.files = sorted((root / "train").rglob("*.JPEG"))
        self.transform = v2.Compose(
            [
                v2.PILToTensor(),
                v2.RandomResizedCrop(224, interpolation=v2.InterpolationMode.BICUBIC, antialias=True),
                v2.RandomHorizontalFlip(),
                v2.RandomApply([v2.ColorJitter(0.4, 0.4, 0.4, 0.1)], p=0.6),
                v2.RandomGrayscale(p=0.2),
                v2.RandomApply([v2.GaussianBlur(23, sigma=(0.1, 2.0))], p=0.2),
                v2.ToDtype(torch.float32, scale=True),
                v2.Normalize([0.485, 0.456, 0.406], [0.229, 0.224, 0.225]),
            ]
        )

    def __len__(self) -> int:
        return len(self.files)

    def __getitem__(self, index: int):
        from PIL import Image

        with Image.open(self.files[index]) as image:
            image = image.convert("RGB")
        return self.transform(image), self.transform(image)


def stock_loader(root: Path, cores: int, batch: int):
    loader = torch.utils.data.DataLoader(
        StockTwoViews(root),
        batch_size=batch,
        shuffle=True,
        num_workers=cores,
        drop_last=True,
        prefetch_factor=4,
        persistent_workers=True,
        generator=torch.Generator().manual_seed(0),
    )
    while True:
        yield from loader


def measure(root: Path, setup: str, cores: int, batch: int, warmup: int, batches: int) -> tuple:
    """(images per second, images per CPU-second) of one freshly built loader after ``warmup`` batches;
    each image gives two views. The second figure does not suffer when other jobs share the cores."""
    if setup == "stock-v2":
        loader = stock_loader(root, cores, batch)
    else:
        backend, device = {
            "dali-cpu": ("dali", "cpu"),
            "torchvision": ("torchvision", "cpu"),
            "dali-gpu": ("dali", "gpu"),
        }[setup]
        cfg = OmegaConf.structured(DataConfig(root=str(root), backend=backend, device=device, num_threads=cores))
        loader = build_pretrain_loader(cfg, batch_size=batch, shard_id=0, num_shards=1, seed=0)
    for _ in range(warmup):
        next(loader)
    started, cpu_started = time.perf_counter(), cpu_seconds()
    for _ in range(batches):
        view1, view2 = next(loader)
    if view1.is_cuda:
        torch.cuda.synchronize()
    elapsed, cpu = time.perf_counter() - started, cpu_seconds() - cpu_started
    if setup == "stock-v2":
        loader.close()
    del loader, view1, view2
    gc.collect()  # stop DataLoader workers / DALI threads before the next measurement
    return batches * batch / elapsed, batches * batch / cpu


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--images", type=int, default=640)
    parser.add_argument("--cores", type=int, default=2)
    parser.add_argument("--batch", type=int, default=64)
    parser.add_argument("--reps", type=int, default=3)
    parser.add_argument("--warmup", type=int, default=4, help="batches before timing starts")
    parser.add_argument("--batches", type=int, default=24, help="timed batches per measurement")
    parser.add_argument(
        "--stock",
        action="store_true",
        help="also time a plain torchvision.transforms.v2 pipeline (reference, not a backend)",
    )
    parser.add_argument("--data", type=Path, help="dataset folder to create or reuse (default: a temporary one)")
    args = parser.parse_args()

    available = sorted(os.sched_getaffinity(0))
    os.sched_setaffinity(0, available[: args.cores])  # inherited by DALI threads and DataLoader workers
    torch.set_num_threads(args.cores)
    setups = (
        ["dali-cpu", "torchvision"]
        + (["stock-v2"] if args.stock else [])
        + (["dali-gpu"] if torch.cuda.is_available() else [])
    )
    with tempfile.TemporaryDirectory() as scratch:
        root = make_images(args.data or Path(scratch) / "jpegs", args.images)
        files = sorted((root / "train").rglob("*.JPEG"))
        size_kb = sum(f.stat().st_size for f in files) / len(files) / 1024
        print(
            f"{len(files)} JPEGs of {IMAGE_SIDE} px, {size_kb:.1f} KB on average; {args.cores} cores "
            f"({available[: args.cores]}); batch {args.batch}, two 224-px views per image"
        )
        results = {setup: [] for setup in setups}
        per_cpu_second = {setup: [] for setup in setups}
        for rep in range(args.reps):
            order = setups if rep % 2 == 0 else setups[::-1]  # interleaved, alternating order
            for setup in order:
                rate, per_cpu = measure(root, setup, args.cores, args.batch, args.warmup, args.batches)
                results[setup].append(rate)
                per_cpu_second[setup].append(per_cpu)
                print(f"  rep {rep + 1}  {setup:<12} {rate:8.1f} img/s   {per_cpu:7.1f} img per CPU-second", flush=True)
    median = {setup: statistics.median(rates) for setup, rates in results.items()}
    print("median img/s: " + ", ".join(f"{setup} {rate:.1f}" for setup, rate in median.items()))
    cpu_ratio = statistics.median(per_cpu_second["dali-cpu"]) / statistics.median(per_cpu_second["torchvision"])
    print(f"DALI CPU / torchvision per CPU-second: {cpu_ratio:.2f}x")
    if "stock-v2" in median:
        print(f"DALI CPU / plain torchvision.transforms.v2: {median['dali-cpu'] / median['stock-v2']:.2f}x")
    if "dali-gpu" in median:
        print(f"DALI mixed (GPU) / DALI CPU: {median['dali-gpu'] / median['dali-cpu']:.2f}x")
    print(f"DALI CPU / torchvision ({args.cores} cores, img/s): {median['dali-cpu'] / median['torchvision']:.2f}x")


if __name__ == "__main__":
    main()
