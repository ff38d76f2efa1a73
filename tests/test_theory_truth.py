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
