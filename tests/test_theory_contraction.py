"""The GAG map: cap bound, special cases, Banach contraction near a stored pattern, and its failures
(THEORY.md T8). float64; tolerances relative to the quantities compared (a few ulps each)."""
from __future__ import annotations

import math

import pytest
import torch
from hypothesis import assume, example, given
from hypothesis import strategies as st

from _theory_strategies import F64, Hopfield, attention_inputs, hopfield_problems
from hopfield_gag.hopfield import retrieval_map
from hopfield_gag.theory import (
    gag_contraction_bound,
    gag_map,
    gag_output,
    gag_update,
    iterate_map,
    lipschitz_estimate,
    norm_cap,
    sparse_dense_discrepancy,
)

lams = st.floats(0.0, 30.0)
etas = st.one_of(st.none(), st.floats(-3, 2).map(lambda e: 10.0**e))
zetas = st.floats(0.0, 1.0)


def _norm(x):
    return x.norm(dim=-1)


# ------------------------------------------------------------------------------------------------
# cap and the reference formula
# ------------------------------------------------------------------------------------------------
@given(st.integers(0, 2**31 - 1), st.floats(-3, 3).map(lambda e: 10.0**e), st.floats(1e-3, 100.0))
def test_norm_cap_is_the_ball_projection(seed, scale, eta):
    g = torch.Generator().manual_seed(seed)
    a = torch.randn(16, 5, generator=g, dtype=F64) * scale
    b = torch.randn(16, 5, generator=g, dtype=F64) * scale
    ca, cb = norm_cap(a, eta), norm_cap(b, eta)
    torch.testing.assert_close(_norm(ca), torch.clamp(_norm(a), max=eta))
    inside = _norm(a) <= eta
    torch.testing.assert_close(ca[inside], a[inside])
    # projection onto a convex set: 1-Lipschitz
    assert bool((_norm(ca - cb) <= _norm(a - b) * (1 + 1e-12)).all())
    assert bool((norm_cap(torch.zeros(3, dtype=F64), eta) == 0).all())


@given(attention_inputs(), lams, etas, zetas)
@example(None, 10.0, 15.0, 0.0)  # paper defaults on a pinned input (filled in below)
def test_gag_deviation_is_bounded(a, lam, eta, zeta):
    """||o - s|| <= lam * min(eta, ||Delta||) for every input (THEORY.md T8a)."""
    if a is None:
        from _theory_strategies import Attention

        g = torch.Generator().manual_seed(0)
        a = Attention(torch.randn(1, 1, 3, 4, generator=g, dtype=F64) * 5, torch.randn(1, 1, 6, 4, generator=g,
                      dtype=F64), torch.randn(1, 1, 6, 2, generator=g, dtype=F64) * 100, 1.0, None)
    r = sparse_dense_discrepancy(a.q, a.k, a.v, a.scale, 1.5, a.mask)
    o = gag_output(r.dense, r.sparse, lam, eta, zeta)
    dev = _norm(o - r.sparse)
    bound = lam * _norm(r.delta)
    if eta is not None:
        bound = torch.clamp(bound, max=lam * eta)
    # o - s = (s + lam g) - s carries rounding ~ eps (||s|| + lam ||g||) whatever lam is
    scale = 1 + _norm(r.sparse) + _norm(r.delta)
    assert bool((dev <= bound + 1e-12 * (1 + lam) * scale).all())


@given(attention_inputs(), st.floats(0.0, 30.0))
def test_gag_special_cases(a, lam):
    """Numerical side of hopfield_gag.symbolic: zeta = 1 uncapped is PLADIS(lam + 1); zeta = 0 uncapped is
    (1 + lam c) s; lam = 0 is s; zeta = 0 capped keeps the direction of s."""
    r = sparse_dense_discrepancy(a.q, a.k, a.v, a.scale, 1.5, a.mask)
    s, d = r.sparse, r.dense
    size = 1 + lam * (1 + _norm(s) + _norm(d)).unsqueeze(-1)
    tol = dict(atol=1e-12, rtol=1e-12)
    torch.testing.assert_close(gag_output(d, s, lam, None, 1.0) / size, (d + (lam + 1) * (s - d)) / size, **tol)
    torch.testing.assert_close(gag_output(d, s, lam, None, 0.0) / size,
                               (1 + lam * r.parallel_coef).unsqueeze(-1) * s / size, **tol)
    torch.testing.assert_close(gag_output(d, s, 0.0, 0.5, 0.7), s)
    o = gag_output(d, s, lam, 0.05, 0.0)
    perp = o - ((o * s).sum(-1, keepdim=True) / (s * s).sum(-1, keepdim=True).clamp_min(1e-300)) * s
    assert bool((_norm(perp) <= 1e-12 * size.squeeze(-1)).all())
    torch.testing.assert_close(gag_update(a.q, a.k, a.v, lam, 0.05, 0.0, a.scale, 1.5, a.mask), o)


@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16, torch.float32])
def test_gag_output_low_precision(dtype):
    g = torch.Generator().manual_seed(2)
    d, s = torch.randn(64, 8, generator=g) * 30, torch.randn(64, 8, generator=g) * 30
    ref = gag_output(d.double(), s.double(), 10.0, 15.0, 0.3)
    out = gag_output(d.to(dtype), s.to(dtype), 10.0, 15.0, 0.3)
    assert out.dtype == dtype and bool(torch.isfinite(out).all())
    # inputs are rounded to dtype first: error ~ eps_dtype * |o| (x a small factor for the projection)
    eps = torch.finfo(dtype).eps
    assert float(((out.double() - ref).norm(dim=-1) / (1 + ref.norm(dim=-1))).max()) < 50 * eps


def test_gag_output_validation():
    d, s = torch.zeros(3, dtype=F64), torch.ones(3, dtype=F64)
    with pytest.raises(ValueError, match="lam"):
        gag_output(d, s, -1.0, 1.0)
    with pytest.raises(ValueError, match="eta"):
        gag_output(d, s, 1.0, 0.0)
    with pytest.raises(ValueError, match="zeta"):
        gag_output(d, s, 1.0, 1.0, 1.5)
    with pytest.raises(ValueError, match="same last dim"):
        gag_output(d, torch.ones(4, dtype=F64), 1.0, 1.0)
    # s = 0: c := 0, no NaN
    assert bool(torch.isfinite(gag_output(s, torch.zeros(3, dtype=F64), 10.0, 15.0, 0.5)).all())


# ------------------------------------------------------------------------------------------------
# Banach contraction near a separated pattern (T8b-d)
# ------------------------------------------------------------------------------------------------
def _region_gap(x, i, beta, xi):
    """min_{j != i} beta (x_i - x_j)^T xi for states xi (..., d)."""
    diffs = x[i] - x  # (N, d)
    keep = torch.arange(x.shape[0]) != i
    return (beta * xi @ diffs[keep].T).amin(-1)


def _points_in_region(x, i, beta, gamma, seed, n=24):
    """Random states rho x_i + r u with gap >= gamma (x_i itself qualifies when beta Delta_i >= gamma)."""
    g = torch.Generator().manual_seed(seed)
    rho = 1 + 2 * torch.rand(n, 1, generator=g, dtype=F64)
    u = torch.randn(n, x.shape[1], generator=g, dtype=F64)
    r = 0.5 * torch.rand(n, 1, generator=g, dtype=F64) * x[i].norm()
    pts = rho * x[i] + r * u / u.norm(dim=-1, keepdim=True)
    return pts[_region_gap(x, i, beta, pts) >= gamma]


@given(hopfield_problems("separated"), st.data(), st.floats(0.05, 0.95), etas)
def test_gag_is_a_contraction_on_the_certified_region(prob, data, frac, eta):
    x, beta, alpha = prob.x, prob.beta, prob.alpha
    i = data.draw(st.integers(0, x.shape[0] - 1))
    unit = gag_contraction_bound(x, beta, 1.0, eta, 0.0, alpha)
    assert bool(unit.exact[i])  # the strategy guarantees beta Delta_i (alpha - 1) >= 1.01
    lam = min(frac / float(unit.lipschitz[i]), 50.0)  # L = lam * L(1) < 1 (zeta = 0: gamma_1 does not depend on lam)
    bound = gag_contraction_bound(x, beta, lam, eta, 0.0, alpha)
    assert bool(bound.exact[i]) and bool(bound.contraction[i])
    gamma1 = float(bound.gap[i])
    pts = _points_in_region(x, i, beta, gamma1, data.draw(st.integers(0, 2**31 - 1)))
    assume(pts.shape[0] >= 2)
    G = lambda xi: gag_map(xi, x, beta, lam, eta, 0.0, alpha)  # noqa: E731
    # invariance and Lipschitz constant on sampled pairs
    assert bool((_region_gap(x, i, beta, G(pts)) >= gamma1 * (1 - 1e-12)).all())
    est = lipschitz_estimate(G, pts[:-1], pts[1:])
    assert est.max_ratio <= float(bound.lipschitz[i]) * (1 + 1e-9) + 1e-12
    # iterates converge (Banach) to rho* x_i: the stored pattern's direction, within lam * min(eta, eps D_i)
    traj = iterate_map(G, pts[:1], 80)
    last = traj[-1, 0]
    L = float(bound.lipschitz[i])
    step = float((traj[-1] - traj[-2]).norm())
    assert step <= L**79 * float((traj[1] - traj[0]).norm()) * (1 + 1e-9) + 1e-12
    err_bound = lam * float(bound.dense_error[i]) if eta is None else lam * min(eta, float(bound.dense_error[i]))
    assert float((last - x[i]).norm()) <= err_bound * (1 + 1e-9) + step / max(1 - L, 1e-3) + 1e-12
    cos = float(last @ x[i] / (last.norm() * x[i].norm()))
    assert cos >= 1 - 1e-12


# three well separated unit patterns (a random run's, rounded to 4 digits)
SEPARATED_3 = torch.tensor([[0.5559, -0.8313], [0.7959, -0.6054], [-0.3831, 0.9237]], dtype=F64)


# a random run's counterexample: beta Delta_2 = 824, so L at lam = 1 is exactly 0 in fp64 (e^-824 underflows)
@example(Hopfield(SEPARATED_3, 441.80514579124286, 1.25), 2, 0, 0.0, 0.5)
@given(hopfield_problems("separated"), st.integers(0, 63), st.integers(0, 2**31 - 1), st.floats(0.0, 1.0),
       st.floats(0.05, 0.95))
def test_gag_contraction_with_orthogonal_part(prob, pattern, seed, zeta, frac):
    x, beta, alpha = prob.x, prob.beta, prob.alpha
    i = pattern % x.shape[0]
    # for zeta > 0 the invariant set shrinks with lam: start from a fraction of the zeta = 0 lam and halve
    # until the certificate holds (it does for lam -> 0, where gamma_1 -> beta Delta_i and L -> 0). L is
    # linear in lam at zeta = 0; where it is 0 (the dense tail below fp64's range) any lam: the cap, 50.
    l1 = float(gag_contraction_bound(x, beta, 1.0, 15.0, 0.0, alpha).lipschitz[i])
    lam = 50.0 if l1 == 0.0 else min(frac / l1, 50.0)
    bound = gag_contraction_bound(x, beta, lam, 15.0, zeta, alpha)
    for _ in range(200):
        if bool(bound.contraction[i]):
            break
        lam /= 2
        bound = gag_contraction_bound(x, beta, lam, 15.0, zeta, alpha)
    assert bool(bound.contraction[i])
    gamma1 = float(bound.gap[i])
    pts = _points_in_region(x, i, beta, gamma1, seed)
    assume(pts.shape[0] >= 2)
    G = lambda xi: gag_map(xi, x, beta, lam, 15.0, zeta, alpha)  # noqa: E731
    assert bool((_region_gap(x, i, beta, G(pts)) >= gamma1 * (1 - 1e-12)).all())
    assert lipschitz_estimate(G, pts[:-1], pts[1:]).max_ratio <= float(bound.lipschitz[i]) * (1 + 1e-9) + 1e-12


def test_contraction_bound_is_finite_far_outside_its_regime():
    # lam = 50, zeta = 0.7 on well separated patterns: gamma_1 = beta Delta_i - lam beta D_i move is about
    # -3000, where eps(gamma_1) = 1 exactly in fp64; as t / (1 + t) with t = (N - 1) e^-gamma_1 = inf it was NaN
    x = SEPARATED_3
    b = gag_contraction_bound(x, 441.8, 50.0, 15.0, 0.7, 1.25)
    assert bool((b.gap < -700).all()) and not bool(b.exact.any()) and not bool(b.contraction.any())
    d_i = torch.cdist(x, x).amax(-1)
    assert torch.equal(b.dense_error, d_i)  # eps = 1
    torch.testing.assert_close(b.lipschitz, 50.0 * 441.8 * d_i**2, rtol=4 * torch.finfo(F64).eps, atol=0)  # fp64 products


def test_contraction_bound_fields():
    x = torch.eye(3, dtype=F64)
    b = gag_contraction_bound(x, 8.0, 10.0)
    # Delta_i = 1, D_i = sqrt 2, gamma_1 = 8, eps = 2 e^-8 / (1 + 2 e^-8)
    eps = 2 * math.exp(-8) / (1 + 2 * math.exp(-8))
    torch.testing.assert_close(b.gap, torch.full((3,), 8.0, dtype=F64))
    torch.testing.assert_close(b.lipschitz, torch.full((3,), 10 * 8 * 2 * eps, dtype=F64))
    assert bool(b.contraction.all())
    assert not bool(gag_contraction_bound(x, 1.0, 10.0).exact.any())  # beta Delta = 1 < 1/(alpha - 1) = 2
    with pytest.raises(ValueError, match="zeta"):
        gag_contraction_bound(x, 1.0, 1.0, zeta=2.0)


# ------------------------------------------------------------------------------------------------
# where it fails
# ------------------------------------------------------------------------------------------------
ANTIPODAL = torch.tensor([[1.0, 0.0], [-1.0, 0.0]], dtype=F64)


def test_gag_two_cycle_at_paper_defaults():
    """Antipodal patterns, beta = 1 (beta Delta = 2: the stored pattern is exactly retrieved), paper
    defaults lam = 10, eta = 15, zeta = 0: the iterates never converge; they alternate between two radii
    on the ray of x_1, inside the exact-retrieval region (T_s = x_1 all along)."""
    G = lambda xi: gag_map(xi, ANTIPODAL, 1.0, 10.0, 15.0, 0.0)  # noqa: E731
    traj = iterate_map(G, ANTIPODAL[0], 200)
    tail = traj[-20:]
    assert float((tail[1:] - tail[:-1]).norm(dim=-1).min()) > 1.0  # keeps jumping
    torch.testing.assert_close(tail[2:], tail[:-2], atol=1e-9, rtol=0)  # period 2
    sp = retrieval_map(tail, ANTIPODAL, beta=1.0, alpha=1.5)
    torch.testing.assert_close(sp, ANTIPODAL[0].expand_as(sp), atol=0, rtol=0)  # exact region throughout
    # expansive on the ray, even though T_s is constant there
    a = torch.linspace(1.0, 3.0, 40, dtype=F64)[:, None] * ANTIPODAL[0]
    assert lipschitz_estimate(G, a, a + 1e-4 * ANTIPODAL[0]).max_ratio > 1.5
    # ...and the certificate correctly refuses it
    assert not bool(gag_contraction_bound(ANTIPODAL, 1.0, 10.0).contraction[0])
    # the cap bound still holds along the orbit: ||G - T_s|| <= lam * eta
    assert float((G(tail) - sp).norm(dim=-1).max()) <= 150.0


def test_gag_expands_across_a_basin_boundary():
    """Across the boundary between two basins the sparse map itself switches pattern within a slab of
    width 2 / (beta (alpha - 1) ||x_1 - x_2||): no weak contraction of any kind holds globally."""
    G = lambda xi: gag_map(xi, ANTIPODAL, 8.0, 10.0, 15.0, 0.0)  # noqa: E731
    a = torch.tensor([[0.01, 0.0]], dtype=F64)
    assert lipschitz_estimate(G, a, -a).max_ratio > 10.0


def test_lipschitz_estimate_linear_map():
    g = torch.Generator().manual_seed(4)
    A = torch.randn(4, 4, generator=g, dtype=F64)
    x, y = torch.randn(100, 4, generator=g, dtype=F64), torch.randn(100, 4, generator=g, dtype=F64)
    est = lipschitz_estimate(lambda t: t @ A.T, x, y)
    top = float(torch.linalg.matrix_norm(A, 2))
    assert est.max_ratio <= top * (1 + 1e-12)
    u = torch.linalg.svd(A).Vh[0]
    assert lipschitz_estimate(lambda t: t @ A.T, u[None], 0 * u[None]).max_ratio == pytest.approx(top, rel=1e-12)
    with pytest.raises(ValueError, match="differ"):
        lipschitz_estimate(lambda t: t, x, x)


def test_gag_map_matches_reference_formula():
    g = torch.Generator().manual_seed(5)
    x = torch.randn(6, 4, generator=g, dtype=F64)
    xi = torch.randn(3, 4, generator=g, dtype=F64)
    s = retrieval_map(xi, x, beta=2.0, alpha=1.5)
    d = retrieval_map(xi, x, beta=2.0, alpha=1.0)
    torch.testing.assert_close(gag_map(xi, x, 2.0, 3.0, 0.7, 0.2), gag_output(d, s, 3.0, 0.7, 0.2))
    assert iterate_map(lambda t: gag_map(t, x, 2.0), xi, 3).shape == (4, 3, 4)


# ------------------------------------------------------------------------------------------------
# the module's name and the parallel rule on every entry (issue 18)
# ------------------------------------------------------------------------------------------------
def test_old_import_path_is_the_renamed_module():
    from hopfield_gag.theory import contraction, gag

    assert contraction is gag
    assert contraction.gag_map is gag_map


@given(attention_inputs(), lams, etas, zetas)
def test_gag_update_and_gag_map_take_the_parallel_rule(a, lam, eta, zeta):
    """gag_update / gag_map with parallel="positive" equal gag_output's one-sided rule on the same retrievals,
    and differ from the paper's rule exactly where some token has c < 0 and lam > 0."""
    r = sparse_dense_discrepancy(a.q, a.k, a.v, a.scale, 1.5, a.mask)
    for rule in ("paper", "positive"):
        want = gag_output(r.dense, r.sparse, lam, eta, zeta, rule)
        got = gag_update(a.q, a.k, a.v, lam, eta, zeta, a.scale, 1.5, a.mask, parallel=rule)
        torch.testing.assert_close(got, want, rtol=0, atol=0)
    xi, x = a.q[0, 0], a.k[0, 0]
    s, d = retrieval_map(xi, x, beta=a.scale, alpha=1.5), retrieval_map(xi, x, beta=a.scale, alpha=1.0)
    for rule in ("paper", "positive"):
        torch.testing.assert_close(gag_map(xi, x, a.scale, lam, eta, zeta, 1.5, parallel=rule),
                                   gag_output(d, s, lam, eta, zeta, rule), rtol=0, atol=0)
    with pytest.raises(ValueError, match="parallel"):
        gag_map(xi, x, a.scale, lam, eta, zeta, 1.5, parallel="negative")


def test_gag_map_rejects_alpha_one():
    x = torch.eye(3, dtype=F64)
    with pytest.raises(ValueError, match="alpha"):
        gag_map(x[0], x, 1.0, alpha=1.0)
