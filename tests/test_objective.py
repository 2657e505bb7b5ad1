"""BURN objective against a float64 reference written from the formula with plain loops."""

import math

import pytest
import torch

from burn.objective import burn_loss, lambda_at


def _reference_h(p, t, lam, temperature):
    """H(p, t) = [(1 - lam) * FS + lam * KL] / N with naive loops in float64 (returns FS, KL too)."""
    n, k = len(p), len(p[0])
    kl_sum = fs_sum = 0.0
    for i in range(n):
        pt = [p[i][j] / temperature for j in range(k)]
        tt = [t[i][j] / temperature for j in range(k)]
        zp = sum(math.exp(v) for v in pt)
        zt = sum(math.exp(v) for v in tt)
        for j in range(k):
            q_t, q_p = math.exp(tt[j]) / zt, math.exp(pt[j]) / zp
            kl_sum += q_t * (math.log(q_t) - math.log(q_p))
        norm_p = math.sqrt(sum(v * v for v in p[i]))
        norm_t = math.sqrt(sum(v * v for v in t[i]))
        fs_sum += sum((p[i][j] / norm_p - t[i][j] / norm_t) ** 2 for j in range(k))
    return ((1 - lam) * fs_sum + lam * kl_sum) / n, fs_sum / n, kl_sum / n


def _views(seed, n=6, k=9, dtype=torch.float32):
    g = torch.Generator().manual_seed(seed)
    return [torch.randn(n, k, generator=g, dtype=dtype) * 2 for _ in range(4)]


@pytest.mark.parametrize("lam,temperature", [(0.1, 0.2), (0.3, 0.2), (0.25, 0.5)])
def test_matches_float64_reference(lam, temperature):
    p1, p2, t1, t2 = _views(0)
    total, kl, fs = burn_loss(p1, p2, t1, t2, lam, temperature)
    as_lists = [x.double().tolist() for x in (p1, p2, t1, t2)]
    h12, fs12, kl12 = _reference_h(as_lists[0], as_lists[3], lam, temperature)
    h21, fs21, kl21 = _reference_h(as_lists[1], as_lists[2], lam, temperature)
    assert total.item() == pytest.approx(h12 + h21, rel=1e-6)
    assert kl.item() == pytest.approx(kl12 + kl21, rel=1e-6)
    assert fs.item() == pytest.approx(fs12 + fs21, rel=1e-6)
    assert total.dtype == kl.dtype == fs.dtype == torch.float32 and total.dim() == 0


def test_pairs_view1_with_view2_not_with_itself():
    p1, p2, t1, t2 = _views(1)
    crossed, _, _ = burn_loss(p1, p2, t1, t2, 0.2)
    same_view, _, _ = burn_loss(p1, p2, t2, t1, 0.2)
    assert crossed.item() != pytest.approx(same_view.item(), rel=1e-3)


def test_gradient_reaches_student_and_teacher_outputs():
    p1, p2, t1, t2 = (x.requires_grad_(True) for x in _views(2))
    burn_loss(p1, p2, t1, t2, torch.tensor(0.2))[0].backward()
    for x in (p1, p2, t1, t2):
        assert x.grad is not None and x.grad.abs().sum() > 0


@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float16])
def test_computed_in_float32_under_autocast(dtype):
    views = _views(3)
    expected = burn_loss(*[v.to(dtype) for v in views], 0.2)
    with torch.autocast("cpu", dtype=dtype):
        got = burn_loss(*[v.to(dtype) for v in views], 0.2)
    for g, e in zip(got, expected):
        assert g.dtype == torch.float32
        torch.testing.assert_close(g, e)
    # Same numbers as float32 inputs rounded to `dtype`: nothing was computed in low precision.
    rounded = burn_loss(*[v.to(dtype).float() for v in views], 0.2)
    torch.testing.assert_close(got[0], rounded[0])


def test_shape_mismatch_is_an_error():
    p1, p2, t1, t2 = _views(4)
    with pytest.raises(ValueError, match="one shape"):
        burn_loss(p1, p2[:, :3], t1, t2, 0.2)


def test_lambda_schedule():
    assert lambda_at(0, 1000) == pytest.approx(0.1)
    assert lambda_at(500, 1000) == pytest.approx(0.2)
    assert lambda_at(1000, 1000) == pytest.approx(0.3)
    assert lambda_at(1500, 1000) == pytest.approx(0.3)  # clamped, no turning back
    values = [lambda_at(s, 100) for s in range(101)]
    assert values == sorted(values)
    assert lambda_at(1, 4, start=0.0, end=1.0) == pytest.approx((1 - math.cos(math.pi / 4)) / 2)
    with pytest.raises(ValueError):
        lambda_at(0, 0)
