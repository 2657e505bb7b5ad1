"""Mixed precision settings: which autocast, which input dtype, whether a GradScaler runs."""

from __future__ import annotations

import contextlib
import logging
from dataclasses import dataclass

import torch

from burn.config import TRAIN_PRECISIONS

log = logging.getLogger("burn")


@dataclass(frozen=True)
class AmpSettings:
    device: torch.device
    autocast_dtype: torch.dtype | None
    """None: plain fp32."""
    use_scaler: bool
    """fp16 on CUDA needs loss scaling; bf16 and fp32 do not."""

    @property
    def input_dtype(self) -> torch.dtype:
        """dtype the data pipeline should emit (fp16 images halve host->device traffic)."""
        return torch.float16 if self.autocast_dtype == torch.float16 else torch.float32

    def autocast(self):
        if self.autocast_dtype is None:
            return contextlib.nullcontext()
        return torch.autocast(self.device.type, dtype=self.autocast_dtype)

    def scaler(self) -> torch.amp.GradScaler:
        return torch.amp.GradScaler(self.device.type, enabled=self.use_scaler)


def build_amp(precision: str, device: torch.device) -> AmpSettings:
    if precision not in TRAIN_PRECISIONS:
        raise ValueError(f"train.precision={precision!r}; expected one of {', '.join(TRAIN_PRECISIONS)}")
    if precision == "fp16" and device.type != "cuda":
        log.warning("train.precision=fp16 needs CUDA; training in fp32 on %s", device)
        precision = "fp32"
    if precision == "fp32":
        return AmpSettings(device, None, False)
    if precision == "bf16":
        return AmpSettings(device, torch.bfloat16, False)
    return AmpSettings(device, torch.float16, True)


class LazyScale:
    """A GradScaler's current scale as a metric: read (a host sync) only when ``float()`` is called,
    which the loop does on logging steps; 1.0 when the scaler is off."""

    def __init__(self, scaler: torch.amp.GradScaler):
        self.scaler = scaler

    def __float__(self) -> float:
        return float(self.scaler.get_scale()) if self.scaler.is_enabled() else 1.0
