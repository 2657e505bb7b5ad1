"""Binarisation pieces of the ReActNet-A student: sign functions with straight-through
gradients, a binary-weight convolution, and the learnable per-channel bias.

Both sign functions emit exactly two values, +1 and -1 (zero maps to +1), in the dtype and memory
format of their input, so they work unchanged under fp16/bf16 autocast and with channels_last.
The released BURN code uses ``torch.sign`` (which maps 0 to 0); the two agree except on inputs that
are exactly zero, and a binary network should not have a third value.
"""

from __future__ import annotations

import torch
from torch import nn


def _plus_minus_one(x: torch.Tensor) -> torch.Tensor:
    """+1 where x >= 0, -1 elsewhere; keeps dtype, device and memory format."""
    return torch.ones_like(x).masked_fill_(x < 0, -1)


class _SignClippedSTE(torch.autograd.Function):
    """sign forward; gradient passed where |x| <= 1, zero elsewhere (BURN's released choice)."""

    @staticmethod
    def forward(ctx, x: torch.Tensor) -> torch.Tensor:
        ctx.save_for_backward(x)
        return _plus_minus_one(x)

    @staticmethod
    def backward(ctx, grad_out: torch.Tensor) -> torch.Tensor:
        (x,) = ctx.saved_tensors
        # The mask is built in the gradient's dtype: no float32 temporaries inside autocast.
        return grad_out * (x.abs() <= 1).to(grad_out.dtype)


class _SignIdentitySTE(torch.autograd.Function):
    """sign forward; identity gradient (used for weights)."""

    @staticmethod
    def forward(ctx, w: torch.Tensor) -> torch.Tensor:
        return _plus_minus_one(w)

    @staticmethod
    def backward(ctx, grad_out: torch.Tensor) -> torch.Tensor:
        return grad_out


def binarize_activation(x: torch.Tensor) -> torch.Tensor:
    """Return ``sign(x)`` in {-1, +1}; the gradient flows where ``|x| <= 1``."""
    return _SignClippedSTE.apply(x)


def weight_scale(weight: torch.Tensor) -> torch.Tensor:
    """Per-output-channel ``mean(|W|)`` shaped to broadcast against ``weight`` (detached)."""
    reduce_dims = tuple(range(1, weight.dim()))
    return weight.detach().abs().mean(dim=reduce_dims, keepdim=True)


def binarize_weight(weight: torch.Tensor) -> torch.Tensor:
    """Return ``mean(|W|) * sign(W)`` per output channel.

    The sign has an identity gradient and the scale is a constant (detached), so
    ``dL/dW = scale * dL/dW_binary``.
    """
    return weight_scale(weight) * _SignIdentitySTE.apply(weight)


class BinaryActivation(nn.Module):
    """Module form of :func:`binarize_activation` (no parameters, no state-dict entries)."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return binarize_activation(x)


class BinaryConv2d(nn.Conv2d):
    """``nn.Conv2d`` whose forward uses :func:`binarize_weight` of its real-valued ``weight``.

    The latent real weight is the parameter (same name and shape as a float conv), so checkpoints
    of the binact and binary students are interchangeable.
    """

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self._conv_forward(x, binarize_weight(self.weight), self.bias)


class LearnableBias(nn.Module):
    """Adds a learnable per-channel bias of shape (1, C, 1, 1), zero-initialised ("move" layers)."""

    def __init__(self, channels: int):
        super().__init__()
        self.bias = nn.Parameter(torch.zeros(1, channels, 1, 1))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x + self.bias.to(x.dtype)
