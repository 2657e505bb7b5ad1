"""A small supervised teacher for the embedded default and the learning benchmark.

BURN distils a *good* teacher. No weights can be downloaded here, so ``model.teacher_weights=auto``
trains a torchvision ResNet (resnet18 in the tiny preset) on the labelled training split of the
dataset, once, and caches it next to the data as a plain torchvision state dict
(``<data.root>-teacher-<arch>-<crop>px.pth`` beside the dataset folder, plus a ``.json`` with its
validation top-1). It is the
same kind of file a user would pass, read by the same code path (``burn.weights``).

Pure PyTorch on in-memory tensors: the generated datasets are a few thousand 48-px JPEGs.
"""

from __future__ import annotations

import io
import json
import logging
import math
import time
from collections.abc import Sequence
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
import torchvision
from PIL import Image
from torchvision.transforms.v2 import functional as TF

from burn.config import AUTO_TEACHER
from burn.data.errors import DataError
from burn.data.lists import dataset_root, resolve_split
from burn.runtime.rundir import atomic_write

log = logging.getLogger("burn")

AUTO = AUTO_TEACHER


def teacher_path(data_cfg, arch: str) -> Path:
    """Where the cached teacher of this dataset, architecture and crop size lives: beside the dataset
    folder, not in it (the dataset stays exactly what its generator or owner wrote)."""
    root = dataset_root(data_cfg)
    return root.parent / f"{root.name}-teacher-{arch}-{int(data_cfg.aug.image_size)}px.pth"


def _load_split(data_cfg, split: str) -> tuple[torch.Tensor, torch.Tensor]:
    """All images of a labelled split as uint8 (N, 3, H, W) (same size) and int64 labels."""
    from burn.data.check import check_command

    listing = resolve_split(data_cfg, split)
    images, labels = [], []
    for path, label, line in zip(listing.absolute_paths(), listing.labels, listing.lines):
        try:
            with Image.open(path) as img:
                images.append(torch.from_numpy(np.array(img.convert("RGB"))).permute(2, 0, 1))
        except OSError as err:  # a truncated or garbled image: one line, as the training loaders say it
            raise DataError(
                f"cannot decode image {path} (line {line} of {listing.source}) while training the "
                f"auto teacher: {err}. Find every bad file at once: {check_command(listing)}"
            ) from None
        labels.append(int(label))
    sizes = {tuple(i.shape) for i in images}
    if len(sizes) != 1:
        raise ValueError(f"{split}: the teacher trainer needs images of one size, found {sorted(sizes)[:3]}")
    return torch.stack(images), torch.tensor(labels, dtype=torch.int64)


def _normalise(x: torch.Tensor, mean: Sequence[float], std: Sequence[float]) -> torch.Tensor:
    m = torch.tensor(mean).view(1, 3, 1, 1) * 255
    s = torch.tensor(std).view(1, 3, 1, 1) * 255
    return (x.float() - m) / s


def _augment(batch: torch.Tensor, size: int, gen: torch.Generator) -> torch.Tensor:
    """RandomResizedCrop(scale 0.25-1, ratio 3/4-4/3) + horizontal flip, per image."""
    out = []
    h, w = batch.shape[-2:]
    for img in batch:
        u = torch.rand(4, generator=gen).tolist()
        area = h * w * (0.25 + 0.75 * u[0])
        ratio = math.exp(math.log(3 / 4) + (math.log(4 / 3) - math.log(3 / 4)) * u[1])
        ch = min(h, max(1, round(math.sqrt(area / ratio))))
        cw = min(w, max(1, round(math.sqrt(area * ratio))))
        top, left = int(u[2] * (h - ch + 1)), int(u[3] * (w - cw + 1))
        crop = TF.resized_crop(img, top, left, ch, cw, [size, size], antialias=True)
        if torch.rand(1, generator=gen).item() < 0.5:
            crop = TF.horizontal_flip(crop)
        out.append(crop)
    return torch.stack(out)


def _eval_view(batch: torch.Tensor, resize: int, crop: int) -> torch.Tensor:
    return TF.center_crop(TF.resize(batch, [resize], antialias=True), [crop, crop])


def train_teacher(
    data_cfg, arch: str, out: Path, *, epochs: int = 20, batch: int = 64, lr: float = 0.1, seed: int = 0
) -> dict[str, float]:
    """Train ``arch`` supervised on the labelled train split, write its state dict to ``out`` atomically
    and return ``{"val_top1", "seconds", ...}`` (also written to ``out`` with suffix .json)."""
    started = time.perf_counter()
    gen = torch.Generator().manual_seed(seed)
    torch.manual_seed(seed)  # the model's initialisation
    train_x, train_y = _load_split(data_cfg, "train_labeled")
    val_x, val_y = _load_split(data_cfg, "val")
    num_classes = int(train_y.max()) + 1
    size, mean, std = int(data_cfg.aug.image_size), list(data_cfg.aug.mean), list(data_cfg.aug.std)
    model = getattr(torchvision.models, arch)(weights=None, num_classes=num_classes)
    steps_per_epoch = math.ceil(len(train_x) / batch)
    optimizer = torch.optim.SGD(model.parameters(), lr=lr, momentum=0.9, weight_decay=5e-4, nesterov=True)
    scheduler = torch.optim.lr_scheduler.OneCycleLR(optimizer, max_lr=lr, total_steps=epochs * steps_per_epoch)
    model.train()
    for _ in range(epochs):
        order = torch.randperm(len(train_x), generator=gen)
        for i in range(steps_per_epoch):
            idx = order[i * batch : (i + 1) * batch]
            x = _normalise(_augment(train_x[idx], size, gen), mean, std)
            loss = F.cross_entropy(model(x), train_y[idx], label_smoothing=0.1)
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
            optimizer.step()
            scheduler.step()
    model.eval()
    with torch.no_grad():
        view = _normalise(_eval_view(val_x, int(data_cfg.eval_resize), int(data_cfg.eval_crop)), mean, std)
        correct = sum(int((model(v).argmax(1) == y).sum()) for v, y in zip(view.split(256), val_y.split(256)))
    report = {
        "arch": arch,
        "val_top1": 100.0 * correct / len(val_y),
        "num_classes": num_classes,
        "train_images": len(train_x),
        "epochs": epochs,
        "seed": seed,
        "seconds": round(time.perf_counter() - started, 1),
    }
    _atomic_save(model.state_dict(), report, Path(out))
    return report


def _atomic_save(state: dict, report: dict, out: Path) -> None:
    out.parent.mkdir(parents=True, exist_ok=True)
    atomic_write(out.with_suffix(".json"), json.dumps(report, indent=1))
    buffer = io.BytesIO()
    torch.save(state, buffer)
    atomic_write(out, buffer.getvalue())  # the .pth last: its presence means both are complete


def ensure_teacher(data_cfg, arch: str) -> Path:
    """The cached teacher for this dataset (trained now if absent). Returns its path."""
    path = teacher_path(data_cfg, arch)
    if path.is_file():
        return path
    from burn.demo.synthetic import ensure_synthetic  # the tiny preset's data may not exist yet

    ensure_synthetic(data_cfg)
    log.info(
        "model.teacher_weights=auto: training a supervised %s teacher on %s (once; cached as %s)",
        arch,
        dataset_root(data_cfg),
        path,
    )
    report = train_teacher(data_cfg, arch, path)
    log.info(
        "teacher %s: val top-1 %.1f%% after %d epochs (%.0f s)",
        arch,
        report["val_top1"],
        report["epochs"],
        report["seconds"],
    )
    return path


def resolve_auto_teacher(cfg, train: bool) -> None:
    """Replace ``model.teacher_weights=auto`` in a stage config by the cached teacher's path (a pure
    function of the data and the architecture, so resumed runs keep the same config); with ``train``,
    make sure the file exists (training it now if needed). Other values stay as they are."""
    if cfg.model.teacher_weights != AUTO:
        return
    if train:
        cfg.model.teacher_weights = str(ensure_teacher(cfg.data, cfg.model.teacher_arch))
    else:
        cfg.model.teacher_weights = str(teacher_path(cfg.data, cfg.model.teacher_arch))
