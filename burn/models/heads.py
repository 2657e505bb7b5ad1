"""The MLP classifier ("neck") used on both sides of BURN: Linear -> BN1d -> ReLU -> Linear."""

from __future__ import annotations

import torch
from torch import nn


class Classifier(nn.Module):
    """Linear(in, hidden) -> BatchNorm1d -> ReLU -> Linear(hidden, out), Kaiming-initialised.

    Parameter names ``fc0``, ``bn0``, ``fc1`` are those of the original release.
    ``nn.SyncBatchNorm.convert_sync_batchnorm`` replaces ``bn0`` in place, so the names (and
    checkpoints) stay the same under DDP.
    """

    def __init__(self, in_dim: int, hidden: int = 2000, out: int = 2000):
        super().__init__()
        self.in_dim, self.hidden, self.out_dim = in_dim, hidden, out
        self.fc0 = nn.Linear(in_dim, hidden)
        self.bn0 = nn.BatchNorm1d(hidden)
        self.relu = nn.ReLU(inplace=True)
        self.fc1 = nn.Linear(hidden, out)
        self._init_weights()

    def _init_weights(self) -> None:
        for fc in (self.fc0, self.fc1):
            nn.init.kaiming_normal_(fc.weight, mode="fan_in", nonlinearity="relu")
            nn.init.zeros_(fc.bias)
        nn.init.ones_(self.bn0.weight)
        nn.init.zeros_(self.bn0.bias)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.fc1(self.relu(self.bn0(self.fc0(x))))
