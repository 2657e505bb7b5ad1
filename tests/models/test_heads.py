"""Classifiers: original names and shapes, sizes, init, SyncBatchNorm conversion."""

import math

import pytest
import torch

from burn.models.heads import Classifier


@pytest.mark.parametrize(
    "side,in_dim,count", [("student_classifier", 1024, 6_056_000), ("teacher_classifier", 2048, 8_104_000)]
)
def test_paper_classifiers_match_original_layout_and_size(side, in_dim, count, official_layouts, as_layout):
    head = Classifier(in_dim)
    assert as_layout(head.state_dict()) == [tuple(e) for e in official_layouts[side]]
    assert sum(p.numel() for p in head.parameters()) == count


def test_sync_batchnorm_conversion_keeps_names():
    head = Classifier(16, hidden=8, out=4)
    names = list(head.state_dict())
    synced = torch.nn.SyncBatchNorm.convert_sync_batchnorm(head)
    assert isinstance(synced.bn0, torch.nn.SyncBatchNorm)
    assert list(synced.state_dict()) == names


def test_kaiming_init_and_forward_shape():
    torch.manual_seed(0)
    head = Classifier(512, hidden=256, out=64)
    assert head.fc0.weight.std().item() == pytest.approx(math.sqrt(2 / 512), rel=0.05)
    assert not head.fc0.bias.any() and not head.fc1.bias.any()
    assert head(torch.randn(4, 512)).shape == (4, 64)
