"""The label-free auto teacher's objective: SimCLR-style contrastive learning on in-memory images.

The paper's teacher is MoCo v2: it never saw a label. The embedded default does the same at small scale
(burn/demo/auto_teacher.py, ``auto_teacher.objective=ssl``): two views of every image, a projection head
on the ResNet trunk, and the NT-Xent loss (each view must pick its partner among the 2B-1 other views of
the batch). On one process the batch's own views are the negatives (SimCLR), so no queue or momentum
encoder is needed. Its quality is measured without labels in training: weighted k-NN top-1 of the
trunk's features (val queries against train features, burn/monitor/diagnostics.py:knn_predict).

The two views are the student's (RandomResizedCrop at data.aug.crop_scale + flip), no colour changes:
the teacher is then invariant to exactly what BURN's views differ by (docs/moving-target.md, "Views
the teacher is invariant to"). Measured on the learning benchmark's data (16 classes, 10 epochs, batch
32, lr 0.06; k-NN top-1 of a random ResNet-18 trunk: 33.0%): crop + flip 43.0%; + brightness, contrast,
saturation 0.4 41.5%; + hue 0.1 and grayscale 0.2 (SimCLR's) 32.5%; + hue 0.5 13.5%. The generated
classes share five hue bins, so the shape's colour is half a class name: a teacher made blind to it
loses it, and 400 steps do not teach it shapes instead.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn


class ProjectionHead(nn.Sequential):
    """SimCLR's MLP on the pooled trunk features (dropped once trained: the teacher file is the trunk)."""

    def __init__(self, in_dim: int, hidden: int = 512, out_dim: int = 128):
        layers = (nn.Linear(in_dim, hidden), nn.BatchNorm1d(hidden), nn.ReLU(inplace=True), nn.Linear(hidden, out_dim))
        super().__init__(*layers)


def nt_xent(z1: torch.Tensor, z2: torch.Tensor, temperature: float) -> torch.Tensor:
    """SimCLR's loss: row i of z1 and row i of z2 are a positive pair; every other row of both is a
    negative. Cross-entropy over the cosine similarities / temperature, averaged over the 2B views."""
    z = F.normalize(torch.cat([z1, z2]), dim=1)
    n = z1.shape[0]
    logits = z @ z.T / temperature
    logits.fill_diagonal_(float("-inf"))  # a view is not its own partner
    partner = torch.cat([torch.arange(n, 2 * n), torch.arange(0, n)])
    return F.cross_entropy(logits, partner)
