"""CUDA-only speed settings of a stage, kept out of the trainers: cuDNN autotuning (or opt-in
determinism), the frozen teacher in half precision, and torch.compile of the student in place.

On CPU every function here is a no-op or keeps today's behaviour, so CPU runs and their exact-resume
tests are unaffected.
"""

from __future__ import annotations

import logging
import os
from pathlib import Path

import torch
from torch import nn

from burn.runtime.rundir import COMPILE_CACHE

log = logging.getLogger("burn")


def configure_backends(device: torch.device, deterministic: bool) -> None:
    """cuDNN autotuning on CUDA (fastest convolution algorithms, picked per shape at the first step),
    or, with ``deterministic``, deterministic algorithms: a resumed run then repeats the float math of
    an uninterrupted one as well as its data, at some speed cost."""
    if device.type != "cuda":
        return
    torch.backends.cudnn.benchmark = not deterministic
    torch.backends.cudnn.deterministic = deterministic
    if deterministic:
        # cuBLAS reads this when it initialises, i.e. before the first matmul of this process.
        os.environ.setdefault("CUBLAS_WORKSPACE_CONFIG", ":4096:8")
        # warn_only: an op without a deterministic kernel warns instead of stopping a long run.
        torch.use_deterministic_algorithms(True, warn_only=True)


def to_channels_last(module: nn.Module) -> nn.Module:
    """channels_last for the convolutions, but per-channel ``[1, C, 1, 1]`` parameters (the binary
    blocks' learnable biases) keep their plain strides: autograd hands their gradients back
    contiguous, and DDP would otherwise copy every one into a differently strided bucket view."""
    module = module.to(memory_format=torch.channels_last)
    for param in module.parameters():
        if param.dim() == 4 and param.shape[0] == 1 and param.shape[2:] == (1, 1):
            param.data = param.data.clone(memory_format=torch.contiguous_format)  # .contiguous() keeps them
    return module


def teacher_to_half(teacher: nn.Module, device: torch.device, autocast_dtype: torch.dtype | None) -> None:
    """Keep the frozen teacher in the autocast dtype on CUDA: autocast then has no fp32 weights to cast
    on every forward. It never trains, so no master copy is needed."""
    if device.type == "cuda" and autocast_dtype is not None:
        teacher.to(autocast_dtype)


def compile_enabled(setting: bool | None, device: torch.device) -> bool:
    """``train.compile``: None (auto) compiles on CUDA only; on CPU inductor would compile C++ for
    minutes to save little."""
    return device.type == "cuda" if setting is None else bool(setting)


def compile_in_place(module: nn.Module, run_dir: Path, cache_dir: str | None) -> Path:
    """``module.compile()``: the module object, its state-dict keys and so the extraction layouts stay
    as they are. Inductor's artefacts go to ``cache_dir`` (train.compile_cache_dir), else to an
    inherited TORCHINDUCTOR_CACHE_DIR, else to ``<run_dir>/compile-cache``: on shared storage, so a
    requeued job (and every rank of a node) loads them instead of compiling again."""
    chosen = cache_dir or os.environ.get("TORCHINDUCTOR_CACHE_DIR") or str(Path(run_dir) / COMPILE_CACHE)
    os.environ["TORCHINDUCTOR_CACHE_DIR"] = str(chosen)
    Path(chosen).mkdir(parents=True, exist_ok=True)
    module.compile()
    return Path(chosen)
