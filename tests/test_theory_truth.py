"""The truth oracle itself (tests/_truth.py) against closed forms and independent facts, so the soundness
tests that rely on it can fail for the right reason."""
from __future__ import annotations

import math

import mpmath as mp
import pytest
import torch
from hypothesis import given
from hypothesis import strategies as st

import _truth

F64 = torch.float64


def _f(xs):
    return [float(x) for x in xs]


def test_entmax_closed_forms():
    z = [_truth.mpf(0), _truth.mpf(-0.25), _truth.mpf(-0.28125)]
    # alpha = 3: (y - tau)^(1/2) with y = 2 z: the third key exactly on the boundary, weights (3/4, 1/4, 0)
    p = _truth.entmax(z, 3.0)
    assert abs(p[0] - _truth.mpf(3) / 4) < mp.mpf(10) ** -50 and abs(p[1] - _truth.mpf(1) / 4) < mp.mpf(10) ** -50
    assert p[2] == 0
    # sparsemax (alpha = 2) is the Euclidean projection on the simplex: z = (1, 0.5, -1) -> (0.75, 0.25, 0)
    p = _truth.entmax([_truth.mpf(1), _truth.mpf(0.5), _truth.mpf(-1)], 2.0)
    assert _f(p) == pytest.approx([0.75, 0.25, 0.0], abs=1e-50)
    # issue 21 item 8: alpha = 1.005 at z = (0, 1, 2)
    p = _truth.entmax([_truth.mpf(0), _truth.mpf(1), _truth.mpf(2)], 1.005)
    assert _f(p) == pytest.approx([0.08898, 0.24420, 0.66683], abs=5e-6)


@given(st.lists(st.floats(-20, 20), min_size=1, max_size=8), st.floats(1.01, 3.0))
def test_entmax_solves_its_optimality_conditions(zs, alpha):
    """sum p = 1, p >= 0, p_j^(alpha-1) - (alpha-1) z_j is the same constant on the support and above it off
    the support; alpha -> 1 approaches softmax."""
    z = [_truth.exact(x) for x in zs]
    p = _truth.entmax(z, alpha)
    assert abs(_truth.ctx.fsum(p) - 1) < mp.mpf(10) ** -50
    a = _truth.exact(alpha)
    consts = [pj ** (a - 1) - (a - 1) * zj for pj, zj in zip(p, z) if pj > 0]
    tau = -consts[0]
    assert max(abs(cj + tau) for cj in consts) < mp.mpf(10) ** -45
    for pj, zj in zip(p, z):
        if pj == 0:
            assert (a - 1) * zj - tau <= mp.mpf(10) ** -45


def test_softmax_and_scores_use_the_exact_float_values():
    q = torch.tensor([[3.0, 0.1]], dtype=torch.float32)  # 0.1 is not 0.1 in binary: the float32 value counts
    k = torch.tensor([[1.0, 1.0], [0.0, 0.0]], dtype=torch.float32)
    z = _truth.scores(q[0].double().tolist(), k.double().tolist(), 0.5)
    assert z[0] == _truth.mpf(0.5) * (3 + _truth.mpf(float(torch.tensor(0.1, dtype=torch.float32))))
    p = _truth.softmax(z)
    assert abs(p[0] - 1 / (1 + _truth.ctx.exp(-z[0]))) < mp.mpf(10) ** -55
    mask = torch.tensor([[True, False]])
    t = _truth.truth(q, k, k, 0.5, 1.5, mask)[0]
    assert t.p_dense[1] == 0 and t.p_sparse[1] == 0 and t.sparse == [1, 1]


def test_c_and_flip_margin_definitions():
    """c = <s - d, s>/||s||^2 and the flip margin on a hand case: values (1, 3) on one ray, scores (2, 0) (scale 2)."""
    q, k, v = torch.tensor([[1.0, 0.0]], dtype=F64), torch.tensor([[1.0, 0.0], [0.0, 1.0]], dtype=F64), \
        torch.tensor([[1.0], [3.0]], dtype=F64)
    t = _truth.truth(q, k, v, 2.0, 1.5)[0]
    e = 1 / (1 + _truth.ctx.exp(2))  # softmax weight of the second key (scores 2, 0)
    d = 1 - e + 3 * e
    s = t.sparse[0]
    assert abs(t.c - (s - d) * s / (s * s)) < mp.mpf(10) ** -55
    assert float(t.flip_margin(10.0, 15.0)) == pytest.approx(1 + 10 * float(t.c) * min(1.0, 15 / abs(float(t.c) * float(s))))
    assert math.isclose(float(t.c), -0.238, abs_tol=1e-3)


# ------------------------------------------------------------------------------------------------
# alpha-entmax near softmax (issue 21 item 8): every method against the 60-digit oracle, alpha in (1, 1.05]
# ------------------------------------------------------------------------------------------------
@given(st.lists(st.floats(-30, 30), min_size=2, max_size=12), st.floats(1.0001, 1.05),
       st.sampled_from([torch.float64, torch.float32]), st.sampled_from(["newton", "bisect"]))
def test_entmax_near_alpha_one_matches_the_oracle(zs, alpha, dtype, method):
    """p = alpha-entmax(z) for alpha just above 1, where p_j = (w_j)^r with r = 1/(alpha-1) up to 1e4: the
    default (C kernel / torch) and the bisection method agree with the exact weights to (r + n) ulps of the
    compute dtype (the power r amplifies the relative rounding of w_j r times)."""
    from hopfield_gag.ops.normalizers import entmax

    z = torch.tensor(zs, dtype=dtype)
    p = entmax(z, alpha, method=method).double()
    exact = _truth.entmax([_truth.exact(x) for x in z.double().tolist()], alpha)
    r = 1.0 / (alpha - 1.0)
    tol = 16 * (r + len(zs)) * torch.finfo(dtype).eps
    for pj, ej in zip(p.tolist(), exact):
        assert abs(pj - float(ej)) <= tol * max(float(ej), 1e-3), (pj, float(ej), alpha, method)


@pytest.mark.parametrize("alpha", [1.001, 1.005, 1.02])
def test_gag_attention_near_alpha_one_agrees_with_the_oracle_op(alpha):
    """gag_attention(alpha near 1) equals the float64 per-token reference (issue 21 item 8: it differed by up to
    2e-2 at alpha = 1.001 when the C kernel's threshold search overflowed y^r)."""
    from hopfield_gag import gag_attention
    from hopfield_gag.guidance.reference import reference_gag_attention

    g = torch.Generator().manual_seed(3)
    q = torch.randn(1, 2, 5, 8, generator=g, dtype=F64) * 2
    k = torch.randn(1, 2, 9, 8, generator=g, dtype=F64)
    v = torch.randn(1, 2, 9, 4, generator=g, dtype=F64)
    got = gag_attention(q, k, v, alpha=alpha, lam=4.0, eta=2.0)
    want = reference_gag_attention(q, k, v, alpha=alpha, lam=4.0, eta=2.0)
    # float64 both; the threshold's rounding is amplified r = 1/(alpha-1) times in p = w^r, then by (1 + lam)
    torch.testing.assert_close(got, want, rtol=0, atol=64 * (1 / (alpha - 1)) * 2.2e-16 * (1 + 4.0) * 10)
