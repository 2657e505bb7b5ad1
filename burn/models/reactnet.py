"""ReActNet-A, the BURN student, with parameter names of the original release.

One block class serves all three precisions; the precision only chooses which convolution and
which input activation the block's convs use:

    fp      float conv, float input
    binact  float conv, input binarised (stage 1)
    binary  binary-weight conv, input binarised (stage 2)

Entry 0 (the stem) and the MLP head are real-valued in every precision.
"""

from __future__ import annotations

from collections.abc import Callable

import torch
from torch import nn

from burn.config import STUDENT_PRECISIONS
from burn.models.binary import BinaryActivation, BinaryConv2d, LearnableBias

_BLOCK_LAYERS: dict[str, tuple[type[nn.Conv2d], type[nn.Module]]] = {
    "fp": (nn.Conv2d, nn.Identity),
    "binact": (nn.Conv2d, BinaryActivation),
    "binary": (BinaryConv2d, BinaryActivation),
}
#: The block convs' convolution and input activation per precision. The set of precisions is the
#: schema's (burn/config.py: STUDENT_PRECISIONS); one without layers above fails here, at import.
PRECISIONS = {name: _BLOCK_LAYERS[name] for name in STUDENT_PRECISIONS}

#: Channels of the 14 feature entries as multiples of the stem width (32 at width 1.0):
#: 32, 64, 128, 128, 256, 256, 512 x6, 1024, 1024.
_CHANNEL_MULTIPLES = (1, 2, 4, 4, 8, 8, 16, 16, 16, 16, 16, 16, 32, 32)
_STEM_CHANNELS = 32


def student_channels(width: float) -> list[int]:
    """Output channels of the 14 entries for a width multiplier.

    Only the stem width is rounded (``max(1, round(32 * width))``); every later entry is an exact
    multiple of it, so the width-doubling blocks (two parallel 1x1 convs, concatenated) stay exact.
    """
    if not width > 0:
        raise ValueError(f"width must be > 0, got {width!r}")
    stem = max(1, int(round(_STEM_CHANNELS * width)))
    return [stem * m for m in _CHANNEL_MULTIPLES]


class ReActBlock(nn.Module):
    """ReActNet-A block: a 3x3 part and a 1x1 part, each with a shortcut and an RPReLU.

    ``conv_layer`` and ``act_layer`` are injected: they decide the precision of the block convs.
    With ``out_channels == 2 * in_channels`` the 1x1 part is two parallel C->C convs whose outputs
    (each plus the shortcut) are concatenated.
    """

    def __init__(
        self,
        in_channels: int,
        out_channels: int,
        stride: int,
        conv_layer: Callable[..., nn.Conv2d],
        act_layer: Callable[[], nn.Module],
    ):
        super().__init__()
        if out_channels not in (in_channels, 2 * in_channels):
            raise ValueError(f"block must keep or double the width, got {in_channels}->{out_channels}")
        c = in_channels
        self.doubles = out_channels == 2 * in_channels
        self.stride = stride
        # Registration order fixes the state-dict order; it follows the original release.
        self.move11 = LearnableBias(c)
        self.binary_3x3 = conv_layer(c, c, 3, stride=stride, padding=1, bias=False)
        self.bn1 = nn.BatchNorm2d(c)
        self.move12 = LearnableBias(c)
        self.prelu1 = nn.PReLU(c, init=0.25)
        self.move13 = LearnableBias(c)
        self.move21 = LearnableBias(c)
        if self.doubles:
            self.binary_pw_down1 = conv_layer(c, c, 1, bias=False)
            self.binary_pw_down2 = conv_layer(c, c, 1, bias=False)
            self.bn2_1 = nn.BatchNorm2d(c)
            self.bn2_2 = nn.BatchNorm2d(c)
        else:
            self.binary_pw = conv_layer(c, c, 1, bias=False)
            self.bn2 = nn.BatchNorm2d(c)
        self.move22 = LearnableBias(out_channels)
        self.prelu2 = nn.PReLU(out_channels, init=0.25)
        self.move23 = LearnableBias(out_channels)
        self.act = act_layer()
        self.pool = nn.AvgPool2d(2, 2) if stride == 2 else nn.Identity()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = self.bn1(self.binary_3x3(self.act(self.move11(x))))
        out = out + self.pool(x)
        out = self.move13(self.prelu1(self.move12(out)))

        shortcut = out
        inp = self.act(self.move21(out))
        if self.doubles:
            out = torch.cat(
                [self.bn2_1(self.binary_pw_down1(inp)) + shortcut, self.bn2_2(self.binary_pw_down2(inp)) + shortcut],
                dim=1,
            )
        else:
            out = self.bn2(self.binary_pw(inp)) + shortcut
        return self.move23(self.prelu2(self.move22(out)))


class StemConv(nn.Module):
    """Entry 0: real-valued 3x3 conv (stride 2, no bias) + BatchNorm, as ``conv1`` / ``bn1``."""

    def __init__(self, out_channels: int):
        super().__init__()
        self.conv1 = nn.Conv2d(3, out_channels, 3, stride=2, padding=1, bias=False)
        self.bn1 = nn.BatchNorm2d(out_channels)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.bn1(self.conv1(x))


class ReActNetA(nn.Module):
    """ReActNet-A student: 14 feature entries (``feature``) and an MLP head (``fc``).

    Args:
        precision: ``"fp"``, ``"binact"`` or ``"binary"`` (see module docstring). Parameter names
            and shapes do not depend on it.
        width: channel multiplier; 1.0 is the paper's network (state dict identical to the
            original release's).

    ``forward(x)`` returns the head output ``(B, out_dim)``; ``forward_features(x)`` the pooled
    features before the head ``(B, feat_dim)``.
    """

    def __init__(self, precision: str = "binact", width: float = 1.0):
        super().__init__()
        if precision not in PRECISIONS:
            raise ValueError(f"precision must be one of {', '.join(STUDENT_PRECISIONS)}, got {precision!r}")
        self.precision = precision
        self.width = width
        conv_layer, act_layer = PRECISIONS[precision]
        channels = student_channels(width)

        entries: list[nn.Module] = [StemConv(channels[0])]
        for c_in, c_out in zip(channels[:-1], channels[1:]):
            # Stride 2 where the width changes, except the first doubling (32 -> 64 at width 1).
            stride = 2 if c_out != c_in and c_out != channels[1] else 1
            entries.append(ReActBlock(c_in, c_out, stride, conv_layer, act_layer))
        self.feature = nn.ModuleList(entries)
        self.feat_dim = self.out_dim = channels[-1]
        self.pool = nn.AdaptiveAvgPool2d(1)
        self.fc = nn.Sequential(nn.Linear(self.feat_dim, self.out_dim), nn.ReLU(inplace=True))
        self._init_weights()

    def _init_weights(self) -> None:
        for m in self.modules():
            if isinstance(m, nn.Conv2d):
                nn.init.kaiming_normal_(m.weight, mode="fan_in")
            elif isinstance(m, nn.BatchNorm2d):
                nn.init.ones_(m.weight)
                nn.init.zeros_(m.bias)

    def forward_features(self, x: torch.Tensor) -> torch.Tensor:
        for entry in self.feature:
            x = entry(x)
        return torch.flatten(self.pool(x), 1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.fc(self.forward_features(x))
