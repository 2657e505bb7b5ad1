"""The frozen teacher: a torchvision ResNet trunk without ``fc``, always in eval mode."""

from __future__ import annotations

import os

import torch
import torchvision
from torch import nn
from torch.nn.utils.fusion import fuse_conv_bn_eval

from burn import weights

TEACHER_ARCHS = ("resnet18", "resnet34", "resnet50")


class Teacher(nn.Module):
    """Frozen torchvision ResNet trunk returning pooled features ``(B, out_dim)``.

    ``trunk`` is the torchvision ResNet with ``fc`` replaced by an identity, so
    ``trunk.state_dict()`` has torchvision's names minus ``fc``. No parameter requires a gradient,
    the forward runs under ``inference_mode``, and ``train()`` is a no-op: BatchNorm always uses (and
    never updates) its running statistics, whatever a parent module's mode.

    Args:
        arch: ``resnet50`` (paper; 2048-d), or ``resnet18`` / ``resnet34`` (512-d, tiny presets).
    """

    def __init__(self, arch: str = "resnet50"):
        super().__init__()
        if arch not in TEACHER_ARCHS:
            raise ValueError(f"teacher arch must be one of {TEACHER_ARCHS}, got {arch!r}")
        self.arch = arch
        self.trunk = getattr(torchvision.models, arch)(weights=None)
        self.out_dim = self.trunk.fc.in_features
        self.trunk.fc = nn.Identity()
        self.requires_grad_(False)
        super().train(False)

    def train(self, mode: bool = True) -> Teacher:
        """Ignore ``mode``: the teacher stays in eval mode."""
        return super().train(False)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        with torch.inference_mode():
            features = self.trunk(x)
        # A normal tensor again (a cheap B x out_dim copy): the trainable teacher classifier saves
        # its input for backward, which an inference tensor refuses.
        return features.clone()

    def fold_batchnorm(self) -> Teacher:
        """Fold every BatchNorm into the convolution before it (eval-mode BN is an affine map), leaving
        identities: one kernel instead of two per layer, and no BN buffers for DDP to broadcast.
        Call after :meth:`load_weights`; the trunk's state-dict keys change (convs gain a bias)."""
        trunk = self.trunk
        pairs = [(trunk, "conv1", "bn1")]
        for layer in (trunk.layer1, trunk.layer2, trunk.layer3, trunk.layer4):
            for block in layer:
                pairs += [(block, f"conv{i}", f"bn{i}") for i in (1, 2, 3) if hasattr(block, f"bn{i}")]
                if block.downsample is not None:
                    pairs.append((block.downsample, "0", "1"))
        for parent, conv, bn in pairs:
            if isinstance(getattr(parent, bn), nn.Identity):
                continue  # already folded
            fused = fuse_conv_bn_eval(getattr(parent, conv), getattr(parent, bn))
            setattr(parent, conv, fused.requires_grad_(False))
            setattr(parent, bn, nn.Identity())
        return self

    def load_weights(self, path: str | os.PathLike) -> None:
        """Load the trunk from a MoCo v2 release, an original BURN teacher file, an original
        pretraining checkpoint or a torchvision state dict (``fc`` ignored), strictly."""
        layout, state = weights.read_teacher_trunk(path)
        expected = self.trunk.state_dict()
        missing = [k for k in expected if k not in state]
        unexpected = [k for k in state if k not in expected]
        wrong_shape = [
            f"{k} {tuple(state[k].shape)} != {tuple(v.shape)}"
            for k, v in expected.items()
            if k in state and state[k].shape != v.shape
        ]
        if missing or unexpected or wrong_shape:
            raise weights.WeightsError(
                f"{path} (layout {layout}) does not fit the {self.arch} teacher trunk: "
                f"{len(missing)} missing {missing[:4]}, {len(unexpected)} unexpected "
                f"{unexpected[:4]}, {len(wrong_shape)} of another shape {wrong_shape[:3]}"
            )
        self.trunk.load_state_dict(state, strict=True)
