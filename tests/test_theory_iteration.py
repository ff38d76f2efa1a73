"""The sharp criterion for the iterated GAG map (THEORY.md T8e): gag_iteration_verdict against brute-force
iteration of theory.gag_map, float64.

Tolerances. The brute force runs K steps; when the verdict's attractor has multiplier m (|h'(rho*)| for a
fixed point, h'(a)h'(b) for a 2-cycle) with |m| <= 0.5, the distance to it after warm-up is at most
C * 0.5^(K/2) (K = 120: ~1e-18 C), so the comparison is at the rounding level of one GAG step: states of
norm <= 1 + lam * eta / ||x_i|| times a few ulps; 1e-9 relative leaves a wide margin.
"""
from __future__ import annotations

import math

import pytest
import torch
from hypothesis import assume, example, given, settings
from hypothesis import strategies as st

from _theory_strategies import F64, basin_queries, hopfield_problems
from hopfield_gag.theory import (
    gag_contraction_bound,
    gag_iteration_verdict,
    gag_map,
    gag_ray_map,
    iterate_map,
)

ANTIPODAL = torch.tensor([[1.0, 0.0], [-1.0, 0.0]], dtype=F64)
K = 120


def _brute(x, xi, beta, lam, eta, alpha, steps=K):
    return iterate_map(lambda t: gag_map(t, x, beta, lam, eta, 0.0, alpha), xi, steps)


@settings(max_examples=25)  # each example iterates gag_map K times
@given(st.data(), hopfield_problems("separated"), st.floats(0.0, 30.0),
       st.one_of(st.none(), st.floats(0.05, 30.0)), st.booleans())
@example(None, None, 10.0, 15.0, True)  # paper defaults on the antipodal pair: the pinned 2-cycle
def test_verdict_matches_brute_force_iteration(data, prob, lam, eta, inside):
    if prob is None:
        x, beta, alpha, xi = ANTIPODAL, 1.0, 1.5, ANTIPODAL[0]
    else:
        x, beta, alpha = prob.x, prob.beta, prob.alpha
        q, _ = data.draw(basin_queries(prob, inside=inside))
        xi = q[0]
    v = gag_iteration_verdict(x, xi, beta, lam, eta, alpha)
    # separated problems: every pattern satisfies beta Delta_i >= 1/(alpha - 1); queries inside an exact
    # ball are on a ray after warm-up 0
    if inside:
        assert v.kind != "undecided" or "settle" in v.reason
    assume(v.kind in ("fixed_point", "two_cycle"))
    m = abs(v.multiplier) if v.kind == "fixed_point" else abs(v.cycle_multiplier)
    assume(m <= 0.5)
    traj = _brute(x, xi, beta, lam, eta, alpha)
    last, prev = traj[-1], traj[-2]
    size = 1.0 + float(last.norm())
    # the proposition: |h'(rho*)| > 1 forces a 2-cycle
    if abs(v.multiplier) > 1:
        assert v.kind == "two_cycle"
    if v.kind == "fixed_point":
        assert float((last - v.fixed_point).norm()) <= 1e-9 * size
        assert float((last - prev).norm()) <= 1e-9 * size
    else:
        a, b = v.cycle
        d1 = float((last - a).norm()) + float((prev - b).norm())
        d2 = float((last - b).norm()) + float((prev - a).norm())
        assert min(d1, d2) <= 1e-9 * size
        assert float((b - a).norm()) > 1e-6  # a genuine cycle, not a fixed point seen twice
        assert v.cycle_rhos[0] < v.rho_star < v.cycle_rhos[1]
    # h agrees with G on the ray (the 1-D reduction is exact)
    i = v.pattern
    rho = torch.tensor([1.0, v.rho_star, 2.0], dtype=F64)
    h, _ = gag_ray_map(x, i, rho, beta, lam, eta)
    g = gag_map(rho[:, None] * x[i], x, beta, lam, eta, 0.0, alpha)
    torch.testing.assert_close(g, h[:, None] * x[i], atol=1e-12 * (1 + lam), rtol=1e-12)


@given(hopfield_problems("separated"), st.floats(0.0, 30.0), st.one_of(st.none(), st.floats(0.05, 30.0)),
       st.integers(0, 9))
def test_ray_map_is_non_increasing_with_the_stated_derivative(prob, lam, eta, i):
    """h non-increasing on [1, inf) with h(1) >= 1 and h' as stated (finite differences), the facts the
    2-cycle proposition rests on."""
    x, beta = prob.x, prob.beta
    i = i % x.shape[0]
    rho = torch.linspace(1.0, 4.0, 301, dtype=F64)
    h, hp = gag_ray_map(x, i, rho, beta, lam, eta)
    assert float(h[0]) >= 1 - 1e-12
    assert bool((h[1:] <= h[:-1] + 1e-12 * (1 + lam)).all())
    assert bool((hp <= 0).all())
    eps = 1e-6
    hplus, _ = gag_ray_map(x, i, rho + eps, beta, lam, eta)
    hminus, _ = gag_ray_map(x, i, rho - eps, beta, lam, eta)
    fd = (hplus - hminus) / (2 * eps)
    # where the cap switches inside (rho - eps, rho + eps) the derivative jumps: compare away from it
    cap = math.inf if eta is None else eta / float(x[i].norm())
    c_of = lambda r: (gag_ray_map(x, i, r, beta, 1.0, None)[0] - 1.0)  # noqa: E731  c(rho) (lam = 1, no cap)
    smooth = ((c_of(rho + eps) - cap) * (c_of(rho - eps) - cap)) > 0
    # central differences: truncation ~ eps^2 |h'''|, rounding ~ (1 + lam) ulp / eps
    torch.testing.assert_close(fd[smooth], hp[smooth], atol=1e-6 * (1 + lam * beta * beta), rtol=1e-5)


def test_paper_default_two_cycle_values():
    """Antipodal pair, beta = 1, paper defaults: the orbit 1.0292 <-> 3.2642 (attracting, multiplier 0.234);
    rho* = 1.676 repels with h'(rho*) = -1.31 < -1."""
    v = gag_iteration_verdict(ANTIPODAL, ANTIPODAL[0], 1.0, 10.0, 15.0, 1.5)
    assert v.kind == "two_cycle"
    assert v.cycle_rhos == pytest.approx((1.0291849, 3.2641877), abs=1e-6)
    assert v.cycle_multiplier == pytest.approx(0.2340549, abs=1e-6)
    assert v.multiplier < -1
    assert v.rho_star == pytest.approx(1.6762577, abs=1e-6)


@pytest.mark.parametrize("beta", [1.55, 1.8, 2.0, 2.2])
def test_convergence_without_the_contraction_certificate(beta):
    """The certificate lam beta D^2 eps < 1 is sufficient, not necessary: antipodal patterns with beta in
    [1.55, 2.3) converge to rho* x_1 at the paper defaults while the certificate gives L > 1 (2.67 .. 1.1)."""
    v = gag_iteration_verdict(ANTIPODAL, ANTIPODAL[0], beta, 10.0, 15.0, 1.5)
    assert v.kind == "fixed_point" and abs(v.multiplier) < 1
    assert float(gag_contraction_bound(ANTIPODAL, beta, 10.0).lipschitz[0]) > 1.0
    G = lambda t: gag_map(t, ANTIPODAL, beta, 10.0, 15.0, 0.0, 1.5)  # noqa: E731
    torch.testing.assert_close(G(v.fixed_point), v.fixed_point, atol=1e-12, rtol=0)
    # brute force where the multiplier allows it in a few hundred steps (|h'| = 0.99 at beta = 1.55 would need
    # thousands): error ~ |h'|^steps
    steps = math.ceil(30 / -math.log(abs(v.multiplier)))
    if steps <= 400:
        traj = _brute(ANTIPODAL, ANTIPODAL[0], beta, 10.0, 15.0, 1.5, steps=steps)
        torch.testing.assert_close(traj[-1], v.fixed_point, atol=1e-9, rtol=0)


def test_multiple_attractors_rule_out_global_contraction():
    """One fixed point near each separated pattern: a contraction in any metric has exactly one fixed point,
    so no metric makes G a global contraction."""
    x = torch.eye(3, dtype=F64)
    fps = [gag_iteration_verdict(x, x[i], 8.0, 10.0, 15.0, 1.5) for i in range(3)]
    assert all(v.kind == "fixed_point" for v in fps)
    pts = torch.stack([v.fixed_point for v in fps])
    torch.testing.assert_close(torch.stack([gag_map(p, x, 8.0) for p in pts]), pts, atol=1e-12, rtol=0)
    assert float(torch.cdist(pts, pts).fill_diagonal_(math.inf).min()) > 1.0


def test_verdict_other_and_validation():
    # a state between the two basins with beta too small for exact retrieval of any pattern ray
    x = torch.tensor([[1.0, 0.0], [0.0, 1.0]], dtype=F64)
    v = gag_iteration_verdict(x, torch.tensor([1.0, 1.0], dtype=F64), 0.5, 10.0, 15.0, 1.5, max_warmup=3,
                              interval=False)
    assert v.kind == "undecided" and "max_warmup" in v.reason
    # the interval method decides it: the attractor is a fixed point of a mixture (both keys in the support)
    v = gag_iteration_verdict(x, torch.tensor([1.0, 1.0], dtype=F64), 0.5, 10.0, 15.0, 1.5, max_warmup=3)
    assert v.kind == "fixed_point" and v.method == "interval" and v.contraction < 1
    last = _brute(x, torch.tensor([1.0, 1.0], dtype=F64), 0.5, 10.0, 15.0, 1.5, steps=400)[-1]
    assert float((last - v.fixed_point).abs().max()) <= v.radius + 1e-12
    with pytest.raises(ValueError, match="xi must have shape"):
        gag_iteration_verdict(x, torch.zeros(3, dtype=F64), 1.0)
    with pytest.raises(ValueError, match="patterns must have shape"):
        gag_iteration_verdict(x[:1], torch.zeros(2, dtype=F64), 1.0)
    with pytest.raises(ValueError, match="lam"):
        gag_iteration_verdict(x, x[0], 1.0, lam=-1.0)
    with pytest.raises(ValueError, match="max_warmup"):
        gag_iteration_verdict(x, x[0], 1.0, max_warmup=-1)


def test_verdict_decides_the_audits_first_problem_and_agrees_with_brute_force():
    """A small slice of experiments/theory_verdict_coverage.py: problem 0 of the second audit's distribution
    (seed 11: d = 4, N = 3, beta = 4.49), 12 starts: every start decided (v2 left starts like these "other"),
    none contradicting the script's independent brute force."""
    import numpy as np

    from _experiments import load_experiment

    exp = load_experiment("theory_verdict_coverage")
    d, N, beta, X, starts = exp.regen(11, 1)[0]
    bf = exp.brute(X, beta, np.stack([s[1] for s in starts]))
    for (_, x0), (per, pts) in zip(starts, bf):
        v = gag_iteration_verdict(torch.tensor(X), torch.tensor(x0), beta, exp.LAM, exp.ETA, exp.ALPHA)
        assert v.kind != "undecided", v.reason
        assert exp.agrees(v, per, pts), (v.kind, v.period, per)
