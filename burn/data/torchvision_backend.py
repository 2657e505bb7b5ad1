"""torchvision fallback backend: PIL decoding and augmentation in DataLoader worker processes.

Same contract as :mod:`burn.data.dali`: same stream order (:mod:`burn.data.sharding`), same recipe,
same state. Augmentations are drawn from a generator seeded by (seed, epoch, sample index), so a
sample's views depend on nothing else (worker count, prefetching, resume, number of ranks) and the
stream position is the whole state. Batches are moved to the current CUDA device when the pipeline
"runs on the GPU" (``data.device`` auto with CUDA, or gpu), to be a drop-in for DALI's mixed mode.
"""

from __future__ import annotations

import math

import numpy as np
import torch
from PIL import Image, ImageFilter, ImageOps
from torch.utils.data import DataLoader, Dataset, Sampler
from torchvision.transforms import InterpolationMode
from torchvision.transforms.v2 import functional as F

from burn.data.check import decode_failure
from burn.data.lists import SampleList
from burn.data.sharding import batch_positions, eval_shard, stream_indices
from burn.data.stream import ResumableLoader

EVAL_CROP_SCALE = (0.08, 1.0)
_ASPECT_RATIO = (3 / 4, 4 / 3)
_SEED_STREAMS = {"pretrain": 1, "eval-train": 2}


# ---- the recipe on PIL images ---------------------------------------------------------------------------
def random_resized_crop_box(rng: np.random.Generator, width: int, height: int, scale, ratio=_ASPECT_RATIO):
    """(top, left, h, w) of a crop with area in ``scale`` and aspect ratio in ``ratio`` (torchvision's
    algorithm: ten tries, then the largest centred crop within the ratio range)."""
    area = width * height
    log_ratio = (math.log(ratio[0]), math.log(ratio[1]))
    for _ in range(10):
        target = area * rng.uniform(scale[0], scale[1])
        aspect = math.exp(rng.uniform(*log_ratio))
        w, h = int(round(math.sqrt(target * aspect))), int(round(math.sqrt(target / aspect)))
        if 0 < w <= width and 0 < h <= height:
            return int(rng.integers(0, height - h + 1)), int(rng.integers(0, width - w + 1)), h, w
    aspect = width / height
    if aspect < ratio[0]:
        w, h = width, int(round(width / ratio[0]))
    elif aspect > ratio[1]:
        h, w = height, int(round(height * ratio[1]))
    else:
        w, h = width, height
    return (height - h) // 2, (width - w) // 2, h, w


def _color_jitter(image: Image.Image, aug, rng: np.random.Generator) -> Image.Image:
    b, c, s, h = (float(v) for v in aug.jitter)
    adjust = [
        (b, F.adjust_brightness, 1.0),
        (c, F.adjust_contrast, 1.0),
        (s, F.adjust_saturation, 1.0),
        (h, F.adjust_hue, 0.0),
    ]
    for which in rng.permutation(4):  # ColorJitter applies its four changes in random order
        strength, function, identity = adjust[which]
        if strength > 0:
            low = -strength if identity == 0.0 else max(0.0, 1 - strength)
            image = function(image, float(rng.uniform(low, identity + strength)))
    return image


def _to_normalized(image: Image.Image, aug) -> torch.Tensor:
    pixels = torch.from_numpy(np.asarray(image, dtype=np.float32)).permute(2, 0, 1)
    mean = torch.tensor([255.0 * float(m) for m in aug.mean]).view(3, 1, 1)
    std = torch.tensor([255.0 * float(s) for s in aug.std]).view(3, 1, 1)
    return (pixels - mean) / std


def pretrain_view(image: Image.Image, aug, rng: np.random.Generator) -> torch.Tensor:
    """RandomResizedCrop (bicubic) -> flip -> jitter -> grayscale -> blur -> solarize -> normalise."""
    top, left, h, w = random_resized_crop_box(rng, image.width, image.height, [float(v) for v in aug.crop_scale])
    size = int(aug.image_size)
    image = F.resized_crop(
        image, top, left, h, w, [size, size], interpolation=InterpolationMode.BICUBIC, antialias=True
    )
    if rng.random() < aug.flip_prob:
        image = F.horizontal_flip(image)
    if rng.random() < aug.jitter_prob:
        image = _color_jitter(image, aug, rng)
    if rng.random() < aug.grayscale_prob:
        image = F.rgb_to_grayscale(image, num_output_channels=3)
    if rng.random() < aug.blur_prob:
        image = image.filter(ImageFilter.GaussianBlur(radius=float(rng.uniform(*aug.blur_sigma))))
    if rng.random() < aug.solarize_prob:
        image = ImageOps.solarize(image, threshold=128)
    return _to_normalized(image, aug)


def eval_train_view(image: Image.Image, aug, rng: np.random.Generator) -> torch.Tensor:
    top, left, h, w = random_resized_crop_box(rng, image.width, image.height, EVAL_CROP_SCALE)
    size = int(aug.image_size)
    image = F.resized_crop(
        image, top, left, h, w, [size, size], interpolation=InterpolationMode.BILINEAR, antialias=True
    )
    if rng.random() < 0.5:
        image = F.horizontal_flip(image)
    return _to_normalized(image, aug)


def val_view(image: Image.Image, aug, resize: int, crop: int) -> torch.Tensor:
    image = F.resize(image, [int(resize)], interpolation=InterpolationMode.BILINEAR, antialias=True)
    return _to_normalized(F.center_crop(image, [int(crop), int(crop)]), aug)


# ---- dataset, batch plan, loaders ---------------------------------------------------------------------
class _Samples(Dataset):
    """Item (epoch, index) -> (view1, view2 | image, label, index): a pure function of the key."""

    def __init__(self, samples: SampleList, data_cfg, kind: str, seed: int):
        self.samples, self.kind, self.seed = samples, kind, seed
        self.aug, self.resize, self.crop = data_cfg.aug, int(data_cfg.eval_resize), int(data_cfg.eval_crop)
        self.base = str(samples.base_dir)

    def _load(self, index: int) -> Image.Image:
        try:
            with Image.open(f"{self.base}/{self.samples.paths[index]}") as image:
                return image.convert("RGB")
        except Exception as err:
            raise decode_failure(err, self.samples, [index]) from err

    def __getitem__(self, key: tuple[int, int]):
        epoch, index = key
        image = self._load(index)
        if self.kind == "val":
            return val_view(image, self.aug, self.resize, self.crop), self.samples.labels[index], index
        rng = np.random.default_rng([self.seed, epoch, index, _SEED_STREAMS[self.kind]])
        if self.kind == "pretrain":
            return pretrain_view(image, self.aug, rng), pretrain_view(image, self.aug, rng), index
        return eval_train_view(image, self.aug, rng), self.samples.labels[index], index

    def __len__(self) -> int:
        return len(self.samples)


class _EndlessPlan(Sampler):
    """Batches of (epoch, index) keys of this rank's micro-batches, from ``batch`` (counted from the
    layout's ``start``) onwards. It holds plain values only: a reference back to the loader would put
    the DataLoader iterator into a reference cycle, and a cycle collected by the GC loses the workers'
    shutdown message (each then waits out DataLoader's 5 s join timeout)."""

    def __init__(self, loader: TorchvisionTrainLoader):
        self.num_samples, self.seed = len(loader.samples), loader.seed
        self.layout = dict(shard_id=loader.shard_id, num_shards=loader.num_shards, batch_size=loader.batch_size)
        self.start, self.batch = loader.start, loader.batches_read

    def __iter__(self):
        batch = self.batch
        while True:
            positions = batch_positions(self.start, batch, 1, **self.layout)
            indices = stream_indices(self.num_samples, self.seed, positions)
            yield [(int(p) // self.num_samples, int(i)) for p, i in zip(positions, indices)]
            batch += 1


def _data_loader(dataset: Dataset, plan, workers: int, gpu: bool) -> DataLoader:
    return DataLoader(
        dataset, batch_sampler=plan, num_workers=workers, pin_memory=gpu, prefetch_factor=4 if workers else None
    )


def _placed(tensor: torch.Tensor, dtype: torch.dtype | None, gpu: bool) -> torch.Tensor:
    if gpu:
        tensor = tensor.to(torch.device("cuda", torch.cuda.current_device()), non_blocking=True)
    return tensor if dtype is None or tensor.dtype == dtype else tensor.to(dtype)


class TorchvisionTrainLoader(ResumableLoader):
    """Endless, resumable training stream ("pretrain": two views; "eval-train": image, label)."""

    backend = "torchvision"

    def __init__(
        self,
        samples: SampleList,
        data_cfg,
        *,
        kind: str,
        batch_size: int,
        shard_id: int,
        num_shards: int,
        seed: int,
        dtype: torch.dtype,
        gpu: bool,
        state=None,
    ):
        super().__init__(
            samples, kind=kind, batch_size=batch_size, shard_id=shard_id, num_shards=num_shards, seed=seed, state=state
        )
        self.kind, self.dtype, self.gpu = kind, dtype, gpu
        plan = _EndlessPlan(self)
        self._batches = iter(
            _data_loader(_Samples(samples, data_cfg, kind, seed), plan, int(data_cfg.num_threads), gpu)
        )

    def _next_batch(self):
        first, second, indices = next(self._batches)
        if self.kind == "pretrain":
            second = _placed(second, self.dtype, self.gpu)
        return (_placed(first, self.dtype, self.gpu), second), indices.numpy()


class TorchvisionValLoader:
    """One pass over this rank's validation shard per iteration, each sample exactly once."""

    def __init__(
        self,
        samples: SampleList,
        data_cfg,
        *,
        batch_size: int,
        shard_id: int,
        num_shards: int,
        seed: int,
        dtype: torch.dtype,
        gpu: bool,
    ):
        self.samples, self.batch_size, self.dtype, self.gpu = samples, batch_size, dtype, gpu
        self._dataset = _Samples(samples, data_cfg, "val", seed)
        self._workers = int(data_cfg.num_threads)
        self.indices = eval_shard(len(samples), shard_id=shard_id, num_shards=num_shards)
        self.num_samples = len(self.indices)
        self.last_indices: np.ndarray | None = None

    def __len__(self) -> int:
        return -(-self.num_samples // self.batch_size)

    def __iter__(self):
        plan = [
            [(0, int(i)) for i in self.indices[k : k + self.batch_size]]
            for k in range(0, self.num_samples, self.batch_size)
        ]
        for images, labels, indices in _data_loader(self._dataset, plan, self._workers, self.gpu):
            self.last_indices = indices.numpy()
            yield _placed(images, self.dtype, self.gpu), labels
