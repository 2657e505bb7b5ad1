"""A small teacher for the embedded default, the learning benchmark and small image folders.

BURN distils a *good* teacher. No weights can be downloaded here, so ``model.teacher_weights=auto``
trains a torchvision ResNet (resnet18 in the tiny preset) on the training split of the dataset, once,
and caches it next to the data as a plain torchvision state dict
(``<data.root>-teacher-<arch>-<crop>px-<objective>.pth`` beside the dataset folder, plus a ``.json``
with its settings and quality). It is the same kind of file a user would pass, read by the same code
path (``burn.weights``). The entry points make it (burn/demo/inputs.py), never the stage runner.

``auto_teacher.objective``: ``ssl`` (the default) learns *without labels*, as the paper's MoCo v2
teacher did (SimCLR-style, burn/demo/contrastive.py; its quality is the k-NN top-1 of its features);
``supervised`` trains a classifier on the labels, for experiments (its quality is its val top-1). The
labels of the train split are read by ``ssl`` only for the k-NN score in the report.

Pure PyTorch on in-memory tensors: every labelled image is held at one size (``auto_teacher.load_side``,
its shorter side resized and centre-cropped), so a folder of mixed image sizes works, and the views are
RandomResizedCrop at the pretraining views' ``data.aug.crop_scale`` + flip (two of them per image for
``ssl``). Trained with ``auto_teacher.threads`` threads: the same seed gives the same file (the bits
of a CPU convolution depend on how many threads split it). For small folders only:
above ``auto_teacher.max_images`` images or ``auto_teacher.max_memory_mb`` of them in memory it is
refused with one line (:func:`check_fits`), from the lists alone, before any image is read.
"""

from __future__ import annotations

import fcntl
import io
import json
import logging
import math
import time
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
import torchvision
from omegaconf import OmegaConf
from PIL import Image, ImageOps
from torchvision.transforms.v2 import functional as TF

from burn.config import AUTO_TEACHER, AutoTeacherConfig
from burn.data.errors import DataError
from burn.data.lists import SampleList, dataset_root, resolve_split, validate_dataset
from burn.demo.teacher_report import quality
from burn.runtime.errors import UsageError
from burn.runtime.rundir import atomic_write

log = logging.getLogger("burn")

AUTO = AUTO_TEACHER


def teacher_path(data_cfg, arch: str, settings=None) -> Path:
    """Where the cached teacher of this dataset, architecture, crop size and objective
    (auto_teacher.objective: a label-free and a supervised teacher never share a file) lives: beside
    the dataset folder, not in it (the dataset stays exactly what its generator or owner wrote)."""
    root = dataset_root(data_cfg)
    objective = _settings(settings).objective
    return root.parent / f"{root.name}-teacher-{arch}-{int(data_cfg.aug.image_size)}px-{objective}.pth"


def load_side(data_cfg, settings) -> int:
    """The side of the square every image is held at (auto_teacher.load_side; None: data.eval_resize)."""
    return int(settings.load_side or data_cfg.eval_resize)


def _settings(settings) -> AutoTeacherConfig:
    return settings if settings is not None else OmegaConf.structured(AutoTeacherConfig)


#: epochs, batch and peak lr of each objective where auto_teacher.epochs/batch/lr are None.
RECIPES = {
    "ssl": {"epochs": 20, "batch": 32, "lr": 0.06},
    "supervised": {"epochs": 20, "batch": 64, "lr": 0.1},
}


def recipe(settings) -> dict:
    """The objective's epochs, batch and lr, each overridden by its auto_teacher key when set."""
    settings = _settings(settings)
    if settings.objective not in RECIPES:
        raise UsageError(f"auto_teacher.objective must be one of {sorted(RECIPES)}, got {settings.objective!r}")
    defaults = RECIPES[settings.objective]
    return {k: type(v)(settings[k]) if settings[k] is not None else v for k, v in defaults.items()}


def check_fits(data_cfg, settings=None) -> dict[str, SampleList]:
    """The labelled lists the teacher trains and is evaluated on (``train_labeled``, ``val``), or a
    one-line refusal (UsageError naming the key and the limit) when the auto teacher makes no sense
    here: more images than ``auto_teacher.max_images``, more memory than ``auto_teacher.max_memory_mb``,
    fewer than two classes. Reads the list files (or walks the class folders), then checks that every
    listed file exists: no image is opened."""
    settings = _settings(settings)
    where = f"model.teacher_weights=auto: data.root={data_cfg.root}"
    try:
        counted = {split: resolve_split(data_cfg, split) for split in ("train_labeled", "val")}
    except (OSError, ValueError) as err:  # DatasetError is a ValueError
        raise UsageError(f"{where}: {err}") from None
    total = sum(len(listing) for listing in counted.values())
    side = load_side(data_cfg, settings)
    detail = f"{total} labelled images (train_labeled {len(counted['train_labeled'])} + val {len(counted['val'])})"
    instead = "pass a teacher file (model.teacher_weights=FILE)"
    if total > settings.max_images:
        raise UsageError(
            f"{where} holds {detail}, more than auto_teacher.max_images={settings.max_images}: the auto "
            f"teacher is for small image folders and holds every image in memory; {instead}, or raise "
            "auto_teacher.max_images"
        )
    mib = total * 3 * side * side / 2**20
    if mib > settings.max_memory_mb:
        raise UsageError(
            f"{where}: {detail} at {side}x{side} px take {mib:.0f} MiB in memory, more than "
            f"auto_teacher.max_memory_mb={settings.max_memory_mb}; {instead}, lower auto_teacher.load_side "
            "or raise auto_teacher.max_memory_mb"
        )
    classes = len(set(counted["train_labeled"].labels or ()))
    if classes < 2:
        raise UsageError(
            f"{where}: {counted['train_labeled'].source} has {classes} class: a supervised teacher needs at "
            f"least 2 (class folders, or labels 0..K-1); {instead}"
        )
    try:  # every listed file exists, val labels are classes of train_labeled (stats only)
        return validate_dataset(data_cfg, tuple(counted))
    except (OSError, ValueError) as err:
        raise UsageError(f"{where}: {err}") from None


def _square(img: Image.Image, side: int) -> np.ndarray:
    """An image as HxWx3 uint8 at side x side: its shorter side resized to `side`, centre-cropped; an
    RGB image of that size is taken as it is."""
    if img.size != (side, side):
        if min(img.size) >= 2 * side:
            img.draft("RGB", (side, side))  # a JPEG decodes at a reduced scale, still >= side
        img = ImageOps.fit(img.convert("RGB"), (side, side), method=Image.BILINEAR)
    return np.array(img.convert("RGB"))


def _load_split(listing: SampleList, side: int) -> tuple[torch.Tensor, torch.Tensor]:
    """All images of a labelled list as uint8 (N, 3, side, side) (:func:`_square`) and int64 labels."""
    from burn.data.check import check_command

    images = torch.empty((len(listing), 3, side, side), dtype=torch.uint8)
    for i, (path, line) in enumerate(zip(listing.absolute_paths(), listing.lines)):
        try:
            with Image.open(path) as img:
                images[i] = torch.from_numpy(_square(img, side)).permute(2, 0, 1)
        except OSError as err:  # a truncated or garbled image: one line, as the training loaders say it
            raise DataError(
                f"cannot decode image {path} (line {line} of {listing.source}) while training the "
                f"auto teacher: {err}. Find every bad file at once: {check_command(listing)}"
            ) from None
    return images, torch.tensor(listing.labels, dtype=torch.int64)


def _normalise(x: torch.Tensor, mean: Sequence[float], std: Sequence[float]) -> torch.Tensor:
    m = torch.tensor(mean).view(1, 3, 1, 1) * 255
    s = torch.tensor(std).view(1, 3, 1, 1) * 255
    return (x.float() - m) / s


def _augment(batch: torch.Tensor, size: int, scale: Sequence[float], gen: torch.Generator) -> torch.Tensor:
    """RandomResizedCrop(scale, ratio 3/4-4/3) + horizontal flip, per image."""
    out = []
    h, w = batch.shape[-2:]
    low, high = float(scale[0]), float(scale[1])
    for img in batch:
        u = torch.rand(4, generator=gen).tolist()
        area = h * w * (low + (high - low) * u[0])
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


@contextmanager
def _threads(count: int) -> Iterator[None]:
    """torch's intra-op thread count fixed at `count` while the teacher trains, then restored. Why: a
    CPU convolution's reduction is split by thread, so its float sums, and after a few hundred SGD
    steps the teacher's weights and top-1, differ with the thread count (measured: 2 epochs on the
    benchmark's data, 1 thread 22.5%, 2 threads 34.5%; two runs with the same count are bit-identical).
    The benchmark trains the teacher in-process with every core; the demo's entry with whatever
    OMP_NUM_THREADS says: both now get the same file for the same seed."""
    before = torch.get_num_threads()
    torch.set_num_threads(count)
    try:
        yield
    finally:
        torch.set_num_threads(before)


def _features(net: torch.nn.Module, images: torch.Tensor, data_cfg, mean, std) -> torch.Tensor:
    """`net`'s outputs on uint8 images at the eval view (resize + centre crop), 256 at a time (the
    float views of all of them could outgrow the images)."""
    resize, crop = int(data_cfg.eval_resize), int(data_cfg.eval_crop)
    with torch.no_grad():
        return torch.cat([net(_normalise(_eval_view(chunk, resize, crop), mean, std)) for chunk in images.split(256)])


def train_teacher(
    data_cfg, arch: str, out: Path, settings=None, *, seed: int = 0, lists: dict[str, SampleList] | None = None
) -> dict[str, float]:
    """Train ``arch`` as ``settings`` (auto_teacher.*; None: the schema's defaults) say, label-free
    (objective ssl) or on the labels (supervised), on the train split; write its state dict to ``out``
    atomically and return its report (also written to ``out`` with suffix .json): ``val_knn_top1``
    (weighted k-NN top-1 of its features, val against train, both objectives), ``val_top1`` (its
    classifier's, supervised only), ``seconds`` and the settings. `lists`: :func:`check_fits`'s, when
    the caller checked already."""
    settings = _settings(settings)
    lists = check_fits(data_cfg, settings) if lists is None else lists
    started = time.perf_counter()
    with _threads(int(settings.threads)):
        state, report = _train(data_cfg, arch, settings, seed, lists)
    report["seconds"] = round(time.perf_counter() - started, 1)
    _atomic_save(state, report, Path(out))
    return report


def _train(data_cfg, arch: str, settings, seed: int, lists: dict[str, SampleList]) -> tuple[dict, dict]:
    """The trained teacher's state dict (torchvision names) and its report (without its time)."""
    from burn.demo import contrastive
    from burn.monitor.diagnostics import knn_predict

    objective = settings.objective
    made = recipe(settings)
    epochs, batch, lr = made["epochs"], made["batch"], made["lr"]
    side, scale = load_side(data_cfg, settings), [float(v) for v in data_cfg.aug.crop_scale]
    gen = torch.Generator().manual_seed(seed)
    torch.manual_seed(seed)  # the model's initialisation
    train_x, train_y = _load_split(lists["train_labeled"], side)
    val_x, val_y = _load_split(lists["val"], side)
    num_classes = int(train_y.max()) + 1
    size, mean, std = int(data_cfg.aug.image_size), list(data_cfg.aug.mean), list(data_cfg.aug.std)
    supervised = objective == "supervised"
    model = getattr(torchvision.models, arch)(weights=None, num_classes=num_classes)
    if not supervised:  # the projection head in place of the classifier; dropped from the saved file
        model.fc = contrastive.ProjectionHead(model.fc.in_features)
    # Whole batches only for ssl: a last batch of a few images gives a loss with almost no negatives.
    steps_per_epoch = math.ceil(len(train_x) / batch) if supervised else max(1, len(train_x) // batch)
    optimizer = torch.optim.SGD(model.parameters(), lr=lr, momentum=0.9, weight_decay=5e-4, nesterov=True)
    scheduler = torch.optim.lr_scheduler.OneCycleLR(optimizer, max_lr=lr, total_steps=epochs * steps_per_epoch)
    model.train()
    for _ in range(epochs):
        order = torch.randperm(len(train_x), generator=gen)
        for i in range(steps_per_epoch):
            idx = order[i * batch : (i + 1) * batch]
            if supervised:
                x = _normalise(_augment(train_x[idx], size, scale, gen), mean, std)
                loss = F.cross_entropy(model(x), train_y[idx], label_smoothing=0.1)
            else:  # two views of each image, both through the trunk in one batch (its BatchNorm sees both)
                views = [_augment(train_x[idx], size, scale, gen) for _ in range(2)]
                z = model(_normalise(torch.cat(views), mean, std))
                loss = contrastive.nt_xent(*z.chunk(2), float(settings.temperature))
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
            optimizer.step()
            scheduler.step()
    model.eval()
    report = {"arch": arch, "objective": objective}
    if supervised:
        logits = _features(model, val_x, data_cfg, mean, std)  # with its classifier: the class scores
        report["val_top1"] = 100.0 * float((logits.argmax(1) == val_y).float().mean())
    head, model.fc = model.fc, torch.nn.Identity()
    with torch.no_grad():
        bank, queries = _features(model, train_x, data_cfg, mean, std), _features(model, val_x, data_cfg, mean, std)
    knn = knn_predict(bank, train_y, queries, num_classes=num_classes)
    report["val_knn_top1"] = 100.0 * float((knn == val_y).float().mean())
    state = model.state_dict()  # the trunk: no fc (ssl) ...
    if supervised:
        state.update({f"fc.{k}": v for k, v in head.state_dict().items()})  # ... or torchvision's classifier
    report.update(
        {
            "num_classes": num_classes,
            "train_images": len(train_x),
            "epochs": epochs,
            "batch": batch,
            "lr": lr,
            **({} if supervised else {"temperature": float(settings.temperature)}),
            "load_side": side,
            "crop_scale": scale,
            "threads": int(settings.threads),
            "seed": seed,
        }
    )
    return state, report


def _atomic_save(state: dict, report: dict, out: Path) -> None:
    out.parent.mkdir(parents=True, exist_ok=True)
    atomic_write(out.with_suffix(".json"), json.dumps(report, indent=1))
    buffer = io.BytesIO()
    torch.save(state, buffer)
    atomic_write(out, buffer.getvalue())  # the .pth last: its presence means both are complete


#: The report keys that record how a cached teacher was made (compared with the settings asked now).
_MADE_WITH = ("epochs", "batch", "lr", "temperature", "load_side", "crop_scale", "threads")


def _warn_if_made_otherwise(path: Path, data_cfg, settings) -> None:
    report = path.with_suffix(".json")
    if not report.is_file():
        return
    saved = json.loads(report.read_text())
    asked = {
        **recipe(settings),
        "temperature": float(settings.temperature),
        "threads": int(settings.threads),
        "load_side": load_side(data_cfg, settings),
        "crop_scale": [float(v) for v in data_cfg.aug.crop_scale],
    }
    changed = {k: (saved[k], asked[k]) for k in _MADE_WITH if k in saved and saved[k] != asked[k]}
    if changed:
        log.warning(
            "model.teacher_weights=auto: the cached teacher %s was made with other settings (%s); using it as "
            "it is. Delete it to train a new one.",
            path,
            ", ".join(f"{k}: {a} there, {b} asked" for k, (a, b) in changed.items()),
        )


@contextmanager
def _one_trainer(path: Path) -> Iterator[None]:
    """Held while this process trains the teacher at `path`: the ranks of one job (each runs the entry)
    wait here for the first, then find its file. ``flock`` on ``<teacher>.pth.lock``, dropped by the
    kernel however the holder ends; the empty file stays (deleting a lock file is unsafe, as in
    burn/resume/run_lock.py). Where the file system has no flock, every rank trains and the atomic
    rename keeps one file."""
    lock = path.with_name(path.name + ".lock")
    with open(lock, "a") as handle:
        try:
            fcntl.flock(handle, fcntl.LOCK_EX)
        except OSError as err:
            log.debug("no lock on %s (%s): training without it", lock, err)
        yield


def ensure_teacher(data_cfg, arch: str, settings=None) -> Path:
    """The cached teacher for this dataset (trained now if absent, as ``settings`` say: the
    auto_teacher section; None: the schema's defaults). Returns its path. An over-size or
    single-class dataset is refused (:func:`check_fits`) before any image is read."""
    settings = _settings(settings)
    path = teacher_path(data_cfg, arch, settings)
    recipe(settings)  # an unknown objective: one line, before anything is read
    if path.is_file():
        _warn_if_made_otherwise(path, data_cfg, settings)
        return path
    lists = check_fits(data_cfg, settings)
    path.parent.mkdir(parents=True, exist_ok=True)
    with _one_trainer(path):
        if path.is_file():  # another rank of this job trained it meanwhile
            return path
        log.info(
            "model.teacher_weights=auto: training a %s %s teacher on %s (once; cached as %s)",
            "label-free (self-supervised)" if settings.objective == "ssl" else "supervised",
            arch,
            dataset_root(data_cfg),
            path,
        )
        report = train_teacher(data_cfg, arch, path, settings=settings, lists=lists)
        log.info("teacher %s: %s after %d epochs (%.0f s)", arch, quality(report), report["epochs"], report["seconds"])
    return path
