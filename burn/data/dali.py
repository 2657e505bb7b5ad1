"""NVIDIA DALI pipelines: two-view pretraining, linear-eval training and validation.

Each image is read and decoded once; the two pretraining views are augmented independently from the
decoded image with the recipe of :class:`burn.config.AugmentConfig`. Decoding and augmentation run on
the GPU ("mixed" decoder) or, with ``device="cpu"``, on CPU threads only (``device_id=None``).

A training pipeline reads exactly this rank's micro-batches of a span of the global stream that
:mod:`burn.data.sharding` defines: the loader always knows which files a batch holds (so a decode
failure can name the file), and DALI's checkpoint of the current pipeline plus the stream position
is the whole state.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
import torch
from nvidia.dali import fn, pipeline_def, types
from nvidia.dali.plugin.pytorch import DALIGenericIterator, LastBatchPolicy

from burn.data.check import decode_failure
from burn.data.lists import SampleList
from burn.data.sharding import derive_seed, eval_shard, steps_per_epoch
from burn.data.stream import ResumableLoader

#: Area range of the linear-evaluation RandomResizedCrop (torchvision's default, as in the original).
EVAL_CROP_SCALE = (0.08, 1.0)
_ASPECT_RATIO = (3 / 4, 4 / 3)
_SOLARIZE_TABLE = [v if v < 128 else 255 - v for v in range(256)]
_DALI_DTYPES = {torch.float16: types.FLOAT16, torch.float32: types.FLOAT}
_PREFETCH = 2
_SEED_STREAMS = {"pretrain": 1, "eval-train": 2}  # distinct augmentation streams per loader kind
#: nvJPEG ("mixed") buffer paddings from NVIDIA's ResNet-50 DALI example, sized for ImageNet's largest
#: images: the decoder's per-thread buffers are allocated once instead of growing during the first
#: epoch. The example's preallocate_width/height_hint (5980 x 6430) are left out: they preallocate
#: the hardware decoder's whole sub-batch at that size (several GB at batch 256) next to the model.
_MIXED_DECODER_HINTS = dict(device_memory_padding=211025920, host_memory_padding=140544512)


# ---- graph pieces (called inside pipeline definitions) --------------------------------------------------
def _coin(probability: float):
    return fn.random.coin_flip(probability=float(probability), dtype=types.BOOL)


def _uniform(low: float, high: float):
    """U(low, high) per sample; the constant ``low`` when the range is empty (DALI rejects it)."""
    return fn.random.uniform(range=[float(low), float(high)]) if high > low else float(low)


def _jitter_factor(strength: float, on, identity: float, low: float, high: float):
    """Uniform factor in [low, high] where ``on`` (0/1 float) is set, ``identity`` elsewhere."""
    if strength <= 0:
        return identity
    return identity + on * (_uniform(low, high) - identity)


def _color_jitter_and_gray(image, aug):
    """ColorJitter(b, c, s, h) with probability ``jitter_prob``, then grayscale with ``grayscale_prob``,
    as one colour-matrix operation (grayscale = saturation 0 after the jitter). It only runs on the
    images that draw one of the two: on CPU it costs about as much as the resized crop."""
    if aug.jitter_prob <= 0 and aug.grayscale_prob <= 0:
        return image
    jitter, gray = _coin(aug.jitter_prob), _coin(aug.grayscale_prob)
    if jitter | gray:
        b, c, s, h = (float(v) for v in aug.jitter)
        on = fn.cast(jitter, dtype=types.FLOAT)
        keep_color = 1.0 - fn.cast(gray, dtype=types.FLOAT)
        image = fn.color_twist(
            image,
            brightness=_jitter_factor(b, on, 1.0, max(0.0, 1 - b), 1 + b),
            contrast=_jitter_factor(c, on, 1.0, max(0.0, 1 - c), 1 + c),
            saturation=_jitter_factor(s, on, 1.0, max(0.0, 1 - s), 1 + s) * keep_color,
            hue=_jitter_factor(h, on, 0.0, -360.0 * h, 360.0 * h),
        )  # turns -> degrees
    return image


def _layout(decoder_device: str) -> str:
    """GPU pipelines emit NHWC, which torch sees as channels_last NCHW after a free permute (the model's
    layout on CUDA); CPU pipelines keep NCHW, the CPU model's layout."""
    return "HWC" if decoder_device == "mixed" else "CHW"


def _normalize(image, aug, dtype, layout, **crop_or_mirror):
    return fn.crop_mirror_normalize(
        image,
        dtype=dtype,
        output_layout=layout,
        mean=[255.0 * float(m) for m in aug.mean],
        std=[255.0 * float(s) for s in aug.std],
        **crop_or_mirror,
    )


def _pretrain_view(image, aug, dtype, layout):
    """One view: RandomResizedCrop (bicubic) -> flip -> jitter -> grayscale -> blur -> solarize -> normalise."""
    size = int(aug.image_size)
    image = fn.random_resized_crop(
        image,
        size=[size, size],
        random_area=[float(v) for v in aug.crop_scale],
        random_aspect_ratio=list(_ASPECT_RATIO),
        interp_type=types.INTERP_CUBIC,
        antialias=True,
    )
    image = _color_jitter_and_gray(image, aug)
    if aug.blur_prob > 0:
        if _coin(aug.blur_prob):
            # No window_size: DALI sizes the window from sigma (as PIL's GaussianBlur(radius=sigma) does).
            image = fn.gaussian_blur(image, sigma=_uniform(*aug.blur_sigma))
    if aug.solarize_prob > 0:
        if _coin(aug.solarize_prob):
            image = fn.lookup_table(image, keys=list(range(256)), values=_SOLARIZE_TABLE, dtype=types.UINT8)
    # Flipping commutes with the colour operations and the symmetric blur, so it is fused in here.
    return _normalize(image, aug, dtype, layout, mirror=fn.random.coin_flip(probability=float(aug.flip_prob)))


def _read_and_decode(files, decoder_device):
    """Reader over exactly ``files`` in order; the label it emits is the position in ``files``."""
    encoded, position = fn.readers.file(
        files=list(files), labels=list(range(len(files))), name="Reader", random_shuffle=False, pad_last_batch=True
    )
    hints = _MIXED_DECODER_HINTS if decoder_device == "mixed" else {}
    return fn.decoders.image(encoded, device=decoder_device, output_type=types.RGB, **hints), position


@pipeline_def(enable_conditionals=True)
def _pretrain_graph(files, aug, dtype, decoder_device):
    image, position = _read_and_decode(files, decoder_device)
    layout = _layout(decoder_device)
    return _pretrain_view(image, aug, dtype, layout), _pretrain_view(image, aug, dtype, layout), position


@pipeline_def
def _eval_train_graph(files, aug, dtype, decoder_device):
    image, position = _read_and_decode(files, decoder_device)
    size = int(aug.image_size)
    image = fn.random_resized_crop(
        image,
        size=[size, size],
        random_area=list(EVAL_CROP_SCALE),
        random_aspect_ratio=list(_ASPECT_RATIO),
        interp_type=types.INTERP_LINEAR,
        antialias=True,
    )
    return _normalize(image, aug, dtype, _layout(decoder_device), mirror=fn.random.coin_flip(probability=0.5)), position


@pipeline_def
def _val_graph(files, aug, dtype, decoder_device, resize, crop):
    image, position = _read_and_decode(files, decoder_device)
    image = fn.resize(image, resize_shorter=float(resize), interp_type=types.INTERP_LINEAR, antialias=True)
    return _normalize(image, aug, dtype, _layout(decoder_device), crop=[int(crop), int(crop)]), position  # centred


# ---- running pipelines ------------------------------------------------------------------------------
class _PipelineRun:
    """One built pipeline over a fixed file list, wrapped in DALI's torch iterator."""

    def __init__(
        self,
        graph,
        files: Sequence[str],
        names: Sequence[str],
        *,
        batch_size: int,
        num_threads: int,
        gpu: bool,
        seed: int,
        checkpoint: bytes | None,
        policy: LastBatchPolicy,
        **graph_args,
    ):
        device_id = torch.cuda.current_device() if gpu else None
        decoder_device = "mixed" if gpu else "cpu"
        pipe = graph(
            files=files,
            decoder_device=decoder_device,
            batch_size=batch_size,
            num_threads=num_threads,
            device_id=device_id,
            seed=seed,
            prefetch_queue_depth=_PREFETCH,
            enable_checkpointing=True,
            checkpoint=checkpoint or None,
            **graph_args,
        )
        self.names, self.nhwc = list(names), _layout(decoder_device) == "HWC"
        self.iterator = DALIGenericIterator(
            [pipe], self.names + ["position"], reader_name="Reader", last_batch_policy=policy, auto_reset=False
        )

    def next(self) -> tuple[list, np.ndarray]:
        batch = next(self.iterator)[0]
        positions = batch["position"].reshape(-1).numpy().astype(np.int64)
        images = [batch[name] for name in self.names]
        if self.nhwc:  # NCHW shape, channels_last strides: no copy
            images = [x.permute(0, 3, 1, 2) for x in images]
        return images, positions

    def checkpoint(self) -> bytes:
        return bytes(self.iterator.checkpoints()[0])


def _cast(tensor: torch.Tensor, dtype: torch.dtype) -> torch.Tensor:
    return tensor if tensor.dtype == dtype else tensor.to(dtype)


class DaliTrainLoader(ResumableLoader):
    """Endless, resumable training stream (``kind`` "pretrain": two views; "eval-train": image, label).

    One pipeline reads a *span* of ``batches_per_pipeline`` consecutive micro-batches of this rank
    (an epoch's worth for ImageNet-sized lists, more when epochs are short), so that building a
    pipeline and discarding what it prefetched past the span's end stay negligible. A loader that
    continues another rank layout's position cannot use that layout's pipeline state: it starts a
    span of its own there, with augmentation seeds derived from its rank, rank count and position."""

    backend = "dali"
    #: A pipeline covers at least this many batches (when the epochs are shorter).
    min_batches_per_pipeline = 256

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
        steps = steps_per_epoch(len(samples), num_shards, batch_size)
        self.batches_per_pipeline = max(self.min_batches_per_pipeline, steps)
        super().__init__(
            samples,
            kind=kind,
            batch_size=batch_size,
            shard_id=shard_id,
            num_shards=num_shards,
            seed=seed,
            state=state,
            layout={"batches_per_pipeline": self.batches_per_pipeline},
        )
        self.kind, self.dtype, self.gpu = kind, dtype, gpu
        self._data_cfg = data_cfg
        self._paths = samples.absolute_paths()
        self._run: _PipelineRun | None = None
        self._span = -1
        self._order = np.empty(0, dtype=np.int64)
        if self._restored_checkpoint:
            self._open_span(self._restored_checkpoint)

    def _open_span(self, checkpoint: bytes = b"") -> None:
        self._span = self.batches_read // self.batches_per_pipeline
        span_size = self.batches_per_pipeline
        self._order = self.indices(self._span * span_size, span_size)
        graph, names = (
            (_pretrain_graph, ("view1", "view2")) if self.kind == "pretrain" else (_eval_train_graph, ("images",))
        )
        # A layout that started mid-stream (another rank count) gets streams of its own.
        elastic = (self.num_shards, self.start) if self.start else ()
        seed = derive_seed(self.seed, self.shard_id, self._span, _SEED_STREAMS[self.kind], *elastic)
        self._run = _PipelineRun(
            graph,
            [self._paths[i] for i in self._order],
            names,
            batch_size=self.batch_size,
            num_threads=int(self._data_cfg.num_threads),
            gpu=self.gpu,
            seed=seed,
            checkpoint=checkpoint,
            policy=LastBatchPolicy.DROP,
            aug=self._data_cfg.aug,
            dtype=_DALI_DTYPES.get(self.dtype, types.FLOAT),
        )

    def _next_batch(self):
        if self._run is None or self._span != self.batches_read // self.batches_per_pipeline:
            self._open_span()  # the previous span is read: its successor is built on demand
        try:
            outputs, positions = self._run.next()
        except RuntimeError as err:
            window = self.indices(self.batches_read, 1 + _PREFETCH)
            raise decode_failure(err, self.samples, window) from err
        indices = self._order[positions]
        if self.kind == "pretrain":
            return (_cast(outputs[0], self.dtype), _cast(outputs[1], self.dtype)), indices
        return (_cast(outputs[0], self.dtype), self.labels_of(indices)), indices

    def _pipeline_checkpoint(self) -> bytes:
        into_span = self.batches_read % self.batches_per_pipeline
        return self._run.checkpoint() if into_span and self._run is not None else b""


class DaliValLoader:
    """One pass over this rank's validation shard per iteration, each sample exactly once; yields
    (images, labels int64 of shape (B,)); the last batch may be smaller."""

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
        self.samples, self.batch_size, self.dtype, self.gpu, self.seed = samples, batch_size, dtype, gpu, seed
        self._data_cfg = data_cfg
        self.indices = eval_shard(len(samples), shard_id=shard_id, num_shards=num_shards)
        self.num_samples = len(self.indices)
        self._labels = np.asarray(samples.labels, dtype=np.int64)
        self.last_indices: np.ndarray | None = None

    def __len__(self) -> int:
        return -(-self.num_samples // self.batch_size)

    def __iter__(self):
        if self.num_samples == 0:
            return
        paths = self.samples.absolute_paths()
        cfg = self._data_cfg
        run = _PipelineRun(
            _val_graph,
            [paths[i] for i in self.indices],
            ["images"],
            batch_size=self.batch_size,
            num_threads=int(cfg.num_threads),
            gpu=self.gpu,
            seed=self.seed,
            checkpoint=None,
            policy=LastBatchPolicy.PARTIAL,
            aug=cfg.aug,
            dtype=_DALI_DTYPES.get(self.dtype, types.FLOAT),
            resize=cfg.eval_resize,
            crop=cfg.eval_crop,
        )
        for step in range(len(self)):
            try:
                (images,), positions = run.next()
            except RuntimeError as err:
                window = self.indices[step * self.batch_size : (step + 1 + _PREFETCH) * self.batch_size]
                raise decode_failure(err, self.samples, window) from err
            self.last_indices = self.indices[positions]
            yield _cast(images, self.dtype), torch.from_numpy(self._labels[self.last_indices])
