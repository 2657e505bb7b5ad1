"""Diagnostics of pretraining as pure functions: output collapse of the two classifiers, and weighted
k-NN classification of features. No process group, no state, no host syncs (results stay tensors).

The k-NN runner that extracts features during training is :mod:`burn.monitor.knn`.
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F

#: The classifier outputs the collapse monitor reads, as BurnModel.forward returns them.
COLLAPSE_SIDES = {"student": "student_out", "teacher": "teacher_out"}


def collapse_stats(outputs: torch.Tensor, temperature: float) -> dict[str, torch.Tensor]:
    """Collapse statistics of one classifier's outputs ``(B, K)`` for B images (0-dim float32 tensors).

    The softmaxes use ``temperature``, the temperature of the loss's KL term (``loss.temperature``),
    so the entropies describe the distributions the loss actually compares.

    - ``std``: per-dimension std across the batch of the L2-normalised outputs, averaged over the K
      dimensions and multiplied by sqrt(K). Scale-free: 0 when every image's output points the same
      way, about 1 for directions spread over the sphere (~sqrt(1 - mean pairwise cosine)).
    - ``batch_entropy``: entropy (nats) of the batch-mean softmax; at most log K. Low: the whole
      batch puts its probability on the same few dimensions.
    - ``image_entropy``: mean entropy (nats) of the per-image softmaxes. Low: confident predictions.
    - ``mi``: ``batch_entropy - image_entropy``, the mutual information between image and output
      dimension (nats), at most log(min(K, B)). 0 when every image gets the same softmax, whether
      peaked on one dimension or flat: the constant solution.
    """
    if outputs.dim() != 2 or outputs.shape[0] < 2:
        raise ValueError(f"collapse_stats expects (B, K) outputs with B >= 2, got {tuple(outputs.shape)}")
    with torch.autocast(device_type=outputs.device.type, enabled=False):
        x = outputs.detach().float()
        k = x.shape[1]
        std = F.normalize(x, dim=1).std(dim=0).mean() * math.sqrt(k)
        log_p = F.log_softmax(x / temperature, dim=1)
        image_entropy = -(log_p.exp() * log_p).sum(dim=1).mean()
        # log of the batch mean of the softmaxes, computed in log space (stable at low temperature).
        log_mean = torch.logsumexp(log_p, dim=0) - math.log(x.shape[0])
        batch_entropy = -(log_mean.exp() * log_mean).sum()
    return {
        "std": std,
        "batch_entropy": batch_entropy,
        "image_entropy": image_entropy,
        "mi": batch_entropy - image_entropy,
    }


def collapse_metrics(out: dict[str, torch.Tensor], temperature: float) -> dict[str, torch.Tensor]:
    """``collapse/<side>_<stat>`` for both classifiers, from a BurnModel.forward output."""
    metrics = {}
    for side, key in COLLAPSE_SIDES.items():
        for stat, value in collapse_stats(out[key], temperature).items():
            metrics[f"collapse/{side}_{stat}"] = value
    return metrics


def mi_floor(num_classes: int, batch: int, threshold: float) -> float:
    """Mutual information (nats) below which outputs count as collapsed: threshold x its maximum."""
    return threshold * math.log(max(2, min(num_classes, batch)))


def collapsed_sides(values: dict[str, float], num_classes: int, batch: int, threshold: float) -> list[str]:
    """The classifiers (``student`` / ``teacher``) whose logged ``mi`` is below :func:`mi_floor`."""
    floor = mi_floor(num_classes, batch, threshold)
    return [side for side in COLLAPSE_SIDES if values.get(f"collapse/{side}_mi", math.inf) < floor]


class CollapseAlarm:
    """Says once (per process) that outputs collapsed; :meth:`check` returns the warning text the first
    time a classifier's ``mi`` is below :func:`mi_floor`, None otherwise and ever after."""

    def __init__(self, threshold: float, temperature: float):
        self.threshold, self.temperature = threshold, temperature
        self.fired = False

    def check(self, values: dict[str, float], num_classes: int, batch: int, step: int) -> str | None:
        if self.fired:
            return None
        sides = collapsed_sides(values, num_classes, batch, self.threshold)
        if not sides:
            return None
        self.fired = True
        detail = "; ".join(
            f"{side}: {values[f'collapse/{side}_mi']:.3f} nats (batch entropy "
            f"{values[f'collapse/{side}_batch_entropy']:.3f}, std {values[f'collapse/{side}_std']:.3f})"
            for side in sides
        )
        return (
            f"collapse at step {step}: the {' and '.join(sides)} classifier outputs barely depend on the "
            f"image. Their mutual information with the image (entropy of the batch-mean softmax at "
            f"T={self.temperature:g} minus the mean per-image entropy) is below "
            f"{mi_floor(num_classes, batch, self.threshold):.3f} nats = monitor.collapse_threshold "
            f"{self.threshold:g} x log(min(K={num_classes}, batch={batch})): {detail}. Every image gets "
            f"nearly the same prediction (the constant solution): the loss can keep falling while the "
            f"features stop improving. Follow collapse/* and knn/top1 in TensorBoard (warned once)."
        )


def knn_predict(
    bank: torch.Tensor,
    bank_labels: torch.Tensor,
    queries: torch.Tensor,
    *,
    k: int = 20,
    temperature: float = 0.07,
    num_classes: int | None = None,
    chunk: int = 1024,
) -> torch.Tensor:
    """Weighted k-NN labels of ``queries`` (Q, D) against ``bank`` (N, D) with labels (N,), as in
    DINO and solo-learn: cosine similarity, the ``min(k, N)`` most similar bank entries vote for their
    label with weight exp(similarity / temperature); the class with the largest vote wins (ties go
    to the smallest class id). Returns int64 labels (Q,). Queries go in chunks to bound memory."""
    if bank.dim() != 2 or queries.dim() != 2 or bank.shape[1] != queries.shape[1]:
        raise ValueError(
            f"bank (N, D) and queries (Q, D) must share D, got {tuple(bank.shape)}, {tuple(queries.shape)}"
        )
    if bank.shape[0] != bank_labels.shape[0] or bank.shape[0] == 0:
        raise ValueError(f"{bank.shape[0]} bank features but {bank_labels.shape[0]} labels (need >= 1)")
    bank_labels = bank_labels.to(bank.device, torch.int64)
    classes = int(num_classes) if num_classes is not None else int(bank_labels.max()) + 1
    k = min(int(k), bank.shape[0])
    bank = F.normalize(bank.float(), dim=1)
    predictions = []
    for start in range(0, queries.shape[0], chunk):
        q = F.normalize(queries[start : start + chunk].float().to(bank.device), dim=1)
        sim, idx = (q @ bank.T).topk(k, dim=1)
        votes = torch.zeros(q.shape[0], classes, device=bank.device)
        votes.scatter_add_(1, bank_labels[idx], (sim / temperature).exp())
        predictions.append(votes.argmax(dim=1))
    if not predictions:
        return torch.empty(0, dtype=torch.int64, device=bank.device)
    return torch.cat(predictions)
