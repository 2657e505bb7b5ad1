"""The BURN objective: a KL term and a feature-similarity term between the student's and the
teacher's classifier outputs, symmetric over two views, with a dynamically balanced weight.

Pure functions: no process group, no state. Cross-rank averaging of logged values lives outside.
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F

Number = float | torch.Tensor


def _kl_sum(p: torch.Tensor, t: torch.Tensor, temperature: float) -> torch.Tensor:
    """sum over batch and classes of KL(softmax(t/T) || softmax(p/T)); no T^2 factor."""
    log_p = F.log_softmax(p / temperature, dim=1)
    log_t = F.log_softmax(t / temperature, dim=1)
    return F.kl_div(log_p, log_t, reduction="sum", log_target=True)


def _feature_similarity_sum(p: torch.Tensor, t: torch.Tensor) -> torch.Tensor:
    """sum over the batch of ||p/|p| - t/|t|||^2 (= 2 - 2 cos)."""
    return (F.normalize(p, dim=1) - F.normalize(t, dim=1)).square().sum()


def burn_loss(
    p1: torch.Tensor,
    p2: torch.Tensor,
    t1: torch.Tensor,
    t2: torch.Tensor,
    lam: Number,
    temperature: float = 0.2,
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Symmetric BURN loss of two views.

    Args:
        p1, p2: student classifier outputs of view 1 and view 2, shape (N, K).
        t1, t2: teacher classifier outputs of view 1 and view 2, shape (N, K). Not detached: the
            teacher classifier trains jointly with the student (the paper's moving target).
        lam: weight of the KL term (see :func:`lambda_at`), a float or a 0-dim tensor.
        temperature: softmax temperature T of the KL term.

    Returns:
        ``(total, kl, fs)``, 0-dim float32 tensors, with N the per-process batch:

        - ``kl = [KL(p1, t2) + KL(p2, t1)] / N``, KL summed over batch and classes;
        - ``fs = [FS(p1, t2) + FS(p2, t1)] / N``, FS summed over the batch;
        - ``total = H(p1, t2) + H(p2, t1) = (1 - lam) * fs + lam * kl``,
          with ``H(p, t) = [(1 - lam) * FS(p, t) + lam * KL(p, t)] / N``.

    Computed in float32 whatever the input dtype or an enclosing autocast.
    """
    if not (p1.shape == p2.shape == t1.shape == t2.shape) or p1.dim() != 2:
        raise ValueError(
            f"burn_loss expects four (N, K) tensors of one shape, got {tuple(p1.shape)}, "
            f"{tuple(p2.shape)}, {tuple(t1.shape)}, {tuple(t2.shape)}"
        )
    n = p1.shape[0]
    with torch.autocast(device_type=p1.device.type, enabled=False):
        p1, p2, t1, t2 = (x.float() for x in (p1, p2, t1, t2))
        kl = (_kl_sum(p1, t2, temperature) + _kl_sum(p2, t1, temperature)) / n
        fs = (_feature_similarity_sum(p1, t2) + _feature_similarity_sum(p2, t1)) / n
        total = (1 - lam) * fs + lam * kl
    return total, kl, fs


def lambda_at(step: int, total_steps: int, start: float = 0.1, end: float = 0.3) -> float:
    """Dynamic balancing weight: cosine from ``start`` (step 0) to ``end`` (step ``total_steps``).

    ``end - (end - start) * (cos(pi * step / total_steps) + 1) / 2``; steps outside
    ``[0, total_steps]`` are clamped, so the weight never turns back.
    """
    if total_steps <= 0:
        raise ValueError(f"total_steps must be > 0, got {total_steps}")
    progress = min(max(step, 0), total_steps) / total_steps
    return end - (end - start) * (math.cos(math.pi * progress) + 1) / 2
