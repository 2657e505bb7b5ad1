"""Collapse statistics and weighted k-NN as pure functions, on constructed inputs with known answers."""

from __future__ import annotations

import math

import pytest
import torch

from burn.monitor.diagnostics import (
    CollapseAlarm,
    collapse_metrics,
    collapse_stats,
    collapsed_sides,
    knn_predict,
    mi_floor,
)

T = 0.2  # the loss temperature of the paper's recipe


def _healthy(batch: int = 64, k: int = 256, seed: int = 0) -> torch.Tensor:
    """Outputs of distinct images: independent directions, as an untrained classifier gives."""
    return torch.randn(batch, k, generator=torch.Generator().manual_seed(seed))


def _collapsed(batch: int = 64, k: int = 256, seed: int = 1) -> torch.Tensor:
    """Issue 8's collapse: every image's output is the same vector (argmax on one dimension) up to
    noise 1000x smaller than the vector."""
    g = torch.Generator().manual_seed(seed)
    constant = torch.randn(k, generator=g)
    constant[7] = 10.0
    return constant + 1e-3 * torch.randn(batch, k, generator=g)


def _floats(metrics: dict) -> dict:
    return {key: float(value) for key, value in metrics.items()}


def test_hand_computed_stats():
    # Two images, two dimensions, orthogonal one-hot outputs at T=1.
    stats = collapse_stats(torch.tensor([[4.0, 0.0], [0.0, 4.0]]), temperature=1.0)
    p = 1 / (1 + math.exp(-4))  # softmax([4, 0])[0]
    image_entropy = -(p * math.log(p) + (1 - p) * math.log(1 - p))
    assert stats["image_entropy"].item() == pytest.approx(image_entropy, rel=1e-5)
    assert stats["batch_entropy"].item() == pytest.approx(math.log(2), rel=1e-5)  # the batch mean is uniform
    assert stats["mi"].item() == pytest.approx(math.log(2) - image_entropy, rel=1e-5)
    # Normalised rows (1, 0) and (0, 1): per-dimension std sqrt(1/2), times sqrt(K) = 1.
    assert stats["std"].item() == pytest.approx(1.0, rel=1e-5)

    # Identical rows: nothing depends on the image.
    same = collapse_stats(torch.tensor([[3.0, 1.0], [3.0, 1.0]]), temperature=1.0)
    assert same["std"].item() == 0.0
    assert same["mi"].item() == pytest.approx(0.0, abs=1e-6)


def test_temperature_is_the_softmax_temperature():
    x = _healthy(8, 16)
    hot, cold = collapse_stats(x, temperature=1.0), collapse_stats(x, temperature=0.1)
    assert cold["image_entropy"] < hot["image_entropy"]  # lower T: sharper softmaxes
    assert cold["std"] == hot["std"]  # the spread does not use the softmax


def test_collapsed_pair_is_flagged_and_healthy_pair_is_not():
    batch, k = 64, 256
    healthy = collapse_metrics({"student_out": _healthy(seed=0), "teacher_out": _healthy(seed=1)}, T)
    collapsed = collapse_metrics({"student_out": _collapsed(seed=2), "teacher_out": _collapsed(seed=3)}, T)
    healthy, collapsed = _floats(healthy), _floats(collapsed)

    assert collapsed_sides(healthy, k, batch, threshold=0.1) == []
    assert collapsed_sides(collapsed, k, batch, threshold=0.1) == ["student", "teacher"]
    # The logged values tell the same story with margin, not at the threshold's edge.
    floor = mi_floor(k, batch, 0.1)
    for side in ("student", "teacher"):
        assert healthy[f"collapse/{side}_mi"] > 5 * floor
        assert collapsed[f"collapse/{side}_mi"] < 0.1 * floor
        assert collapsed[f"collapse/{side}_batch_entropy"] < 0.1 * math.log(k)
        assert collapsed[f"collapse/{side}_std"] < 0.01 < 0.5 < healthy[f"collapse/{side}_std"]
    # Only one side collapsed: only that side is named.
    mixed = _floats(collapse_metrics({"student_out": _healthy(), "teacher_out": _collapsed()}, T))
    assert collapsed_sides(mixed, k, batch, threshold=0.1) == ["teacher"]


def test_flat_collapse_is_flagged_too():
    # Every image gets the same near-uniform softmax: high entropies, but no information about the image.
    flat = {"student_out": 1e-4 * _healthy(), "teacher_out": 1e-4 * _healthy(seed=5)}
    values = _floats(collapse_metrics(flat, T))
    assert values["collapse/student_batch_entropy"] > 0.99 * math.log(256)
    assert collapsed_sides(values, 256, 64, threshold=0.1) == ["student", "teacher"]


def test_alarm_warns_once_and_explains():
    alarm = CollapseAlarm(threshold=0.1, temperature=T)
    healthy = _floats(collapse_metrics({"student_out": _healthy(), "teacher_out": _healthy(seed=1)}, T))
    collapsed = _floats(collapse_metrics({"student_out": _collapsed(), "teacher_out": _healthy()}, T))
    assert alarm.check(healthy, 256, 64, step=1) is None
    message = alarm.check(collapsed, 256, 64, step=2)
    assert message is not None and "step 2" in message and "student classifier" in message
    assert "teacher" not in message  # only the collapsed side is named
    assert "monitor.collapse_threshold 0.1" in message and "log(min(K=256, batch=64))" in message
    assert alarm.check(collapsed, 256, 64, step=3) is None  # once per run


def test_knn_clusters_are_classified_perfectly():
    g = torch.Generator().manual_seed(0)
    centres = 10 * torch.randn(5, 32, generator=g)
    bank_labels = torch.arange(5).repeat_interleave(30)
    query_labels = torch.arange(5).repeat(8)
    bank = centres[bank_labels] + torch.randn(150, 32, generator=g)
    queries = centres[query_labels] + torch.randn(40, 32, generator=g)
    assert torch.equal(knn_predict(bank, bank_labels, queries, k=20, temperature=0.07), query_labels)
    # Shuffled labels: the clusters no longer carry the class, and chance is what is left.
    shuffled = bank_labels[torch.randperm(150, generator=g)]
    assert knn_predict(bank, shuffled, queries).eq(query_labels).float().mean() < 0.6


def test_knn_weights_by_similarity_over_temperature():
    # One very similar neighbour of class 0 against two less similar ones of class 1 (k=3):
    # votes are exp(1/T) for class 0 and 2 exp(0.6/T) for class 1.
    bank = torch.tensor([[1.0, 0.0], [0.6, 0.8], [0.6, -0.8], [-1.0, 0.0]])
    labels = torch.tensor([0, 1, 1, 0])
    query = torch.tensor([[2.0, 0.0]])  # cosine ignores the norm
    assert knn_predict(bank, labels, query, k=3, temperature=0.07).tolist() == [0]  # e^14.3 > 2 e^8.6
    assert knn_predict(bank, labels, query, k=3, temperature=1.0).tolist() == [1]  # e^1 < 2 e^0.6
    # k=1: the nearest neighbour only; k larger than the bank: every entry votes.
    assert knn_predict(bank, labels, torch.tensor([[0.6, 0.7]]), k=1).tolist() == [1]
    assert knn_predict(bank, labels, query, k=100, temperature=1.0).tolist() == [1]  # e^1 + e^-1 < 2 e^0.6


def test_knn_rejects_mismatched_shapes():
    with pytest.raises(ValueError, match="share D"):
        knn_predict(torch.zeros(3, 4), torch.zeros(3), torch.zeros(2, 5))
    with pytest.raises(ValueError, match="labels"):
        knn_predict(torch.zeros(3, 4), torch.zeros(2), torch.zeros(2, 4))
