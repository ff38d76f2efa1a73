"""Tests of hopfield_gag.anderson: AA(m) invariants, SciPy equivalence, Hopfield behaviour, and the
AA(1) readings of PLADIS / GAG / the AA-adaptive scale.

All theory tests run in float64. Tolerances: the AA coefficients come from (column-scaled) normal
equations, whose rounding error is ~ eps * cond(F)^2; the problems below keep cond(F) <~ 1e3 over the few
steps compared, so 1e-8 relative is ~1e3x above rounding and ~1e6x below any algebraic slip (which gives
O(1) errors).
"""
from __future__ import annotations

import math

import numpy as np
import pytest
import scipy.optimize
import sympy as sp
import torch
from hypothesis import assume, example, given
from hypothesis import strategies as st

from hopfield_gag import hopfield
from hopfield_gag.ops import normalizers
from hopfield_gag.theory import symbolic
from hopfield_gag import (
    AndersonResult,
    AndersonSolver,
    AndersonStatus,
    aa1_mixing,
    aa_adaptive_scale,
    anderson,
    extrapolation_as_aa,
    fixed_point,
)

F64 = torch.float64


# ------------------------------------------------------------------------------------------------
# Problem table (shared across tests)


def affine_map(n: int, seed: int, rho: float = 0.9, batch: tuple = ()):
    """g(x) = A x + b with ||A||_2 = rho (a contraction for rho < 1). Returns (g, A, b)."""
    gen = torch.Generator().manual_seed(seed)
    A = torch.randn(*batch, n, n, generator=gen, dtype=F64)
    A = rho * A / torch.linalg.matrix_norm(A, ord=2)[..., None, None]
    b = torch.randn(*batch, n, generator=gen, dtype=F64)
    return (lambda x: (A @ x.unsqueeze(-1)).squeeze(-1) + b), A, b


def tanh_map(n: int, seed: int, rho: float = 0.9):
    """g(x) = A tanh(x) + b, ||A||_2 = rho: a smooth nonlinear contraction. Returns (g_torch, g_numpy)."""
    gen = torch.Generator().manual_seed(seed)
    A = torch.randn(n, n, generator=gen, dtype=F64)
    A = rho * A / torch.linalg.matrix_norm(A, ord=2)
    b = torch.randn(n, generator=gen, dtype=F64)
    An, bn = A.numpy(), b.numpy()
    return (lambda x: torch.tanh(x) @ A.T + b), (lambda x: An @ np.tanh(x) + bn)


def hopfield_problem(d: int, N: int, seed: int, query_scale: float = 0.5):
    """Unit-norm random patterns (rows) and one query; M = max ||x_i|| = 1."""
    gen = torch.Generator().manual_seed(seed)
    X = torch.nn.functional.normalize(torch.randn(N, d, generator=gen, dtype=F64), dim=-1)
    x0 = query_scale * torch.randn(d, generator=gen, dtype=F64)
    return X, x0


# (d, N, beta, alpha, seed): plain (unsafeguarded) AA(3) raises the Hopfield energy on these (found by a
# seeded search; energy increases of 0.78, 10.7 and 74.7 respectively).
ENERGY_INCREASING_AA = [(4, 6, 4.0, 1.0, 0), (4, 6, 4.0, 1.0, 5), (4, 6, 4.0, 1.0, 3)]
# (d, N, beta, alpha, seed): AA(3) and plain iteration both converge, to different fixed points.
DIFFERENT_FIXED_POINTS = [(4, 6, 3.0, 1.5, 0), (4, 6, 3.0, 1.5, 9), (4, 6, 3.0, 1.5, 30)]


def run_states(solver: AndersonSolver, g, x0: torch.Tensor, steps: int):
    """All states x_0..x_steps of a solver (no early stop)."""
    s = solver.init(g, x0)
    states = [s]
    for _ in range(steps):
        s = solver.step(g, s)
        states.append(s)
    return states


def rel_err(a: torch.Tensor, b: torch.Tensor) -> float:
    return float(torch.linalg.vector_norm(a - b) / torch.linalg.vector_norm(b).clamp_min(1e-300))


# ------------------------------------------------------------------------------------------------
# Multisecant conditions


@given(
    m=st.integers(1, 4),
    extra=st.integers(2, 5),
    seed=st.integers(0, 2**31 - 1),
    damping=st.sampled_from([1.0, 0.7]),
    kind=st.sampled_from(["II", "I"]),
)
def test_multisecant_last_m_pairs_hold_and_older_do_not(m, extra, seed, damping, kind):
    # n > m + 1 so that H is not the exact inverse Jacobian of an affine map (then older pairs would
    # satisfy the secant equation too); tanh makes the map genuinely nonlinear.
    n = m + extra
    g, _ = tanh_map(n, seed, rho=0.8)
    x0 = torch.randn(n, generator=torch.Generator().manual_seed(seed + 1), dtype=F64)
    solver = AndersonSolver(m=m, kind=kind, damping=damping, reg=0.0, tol=0.0, max_iter=100)
    K = m + 3
    states = run_states(solver, g, x0, K)
    assume(all(int(s.restarts.sum()) == 0 for s in states))
    assume(float(states[-1].fnorm) > 1e-6)  # stay away from rounding-level differences
    xs = [s.x[0] for s in states]
    fs = [s.f[0] for s in states]
    st_k = states[K - 1]  # state at k = K-1 holds pairs j = k-m .. k-1
    k = K - 1
    H = solver.inverse_jacobian(st_k)
    Bj = solver.jacobian(st_k)
    for j in range(k - m, k):
        dx, df = xs[j + 1] - xs[j], fs[j + 1] - fs[j]
        assert rel_err(H @ df, dx) < 1e-8, f"H dF_{j} != dX_{j}"
        assert rel_err(Bj @ dx, df) < 1e-8, f"B dX_{j} != dF_{j}"
    # Older pairs: the secant condition is not enforced and fails generically.
    for j in range(0, k - m):
        dx, df = xs[j + 1] - xs[j], fs[j + 1] - fs[j]
        assert rel_err(H @ df, dx) > 1e-6
    # The step really is the quasi-Newton step x_{k+1} = x_k - H_k f_k.
    assert rel_err(xs[k + 1], xs[k] - H @ fs[k]) < 1e-9


def test_type_i_is_good_broyden_and_type_ii_bad_broyden():
    # Type I's B changes -I/beta only on span(X): B v = -v/beta for v orthogonal to all dX (Fang & Saad).
    n, m = 7, 3
    g, _ = tanh_map(n, 11, rho=0.8)
    solver = AndersonSolver(m=m, kind="I", reg=0.0, tol=0.0, damping=0.5)
    s = run_states(solver, g, torch.ones(n, dtype=F64), 5)[-1]
    B = solver.jacobian(s)
    Q, _ = torch.linalg.qr(s.dX[0], mode="complete")
    v = Q[:, m]  # orthogonal to the m columns of dX
    assert rel_err(B @ v, -v / 0.5) < 1e-10
    # ... while type II ("bad Broyden") changes the inverse estimate -beta I only on span(F):
    # H w = -beta w for w orthogonal to all dF; type I's H does not have this property.
    solver2 = AndersonSolver(m=m, kind="II", reg=0.0, tol=0.0, damping=0.5)
    s2 = run_states(solver2, g, torch.ones(n, dtype=F64), 5)[-1]
    Q2, _ = torch.linalg.qr(s2.dF[0], mode="complete")
    w = Q2[:, m]
    assert rel_err(solver2.inverse_jacobian(s2) @ w, -0.5 * w) < 1e-10
    Q1, _ = torch.linalg.qr(s.dF[0], mode="complete")
    assert rel_err(solver.inverse_jacobian(s) @ Q1[:, m], -0.5 * Q1[:, m]) > 1e-3


# ------------------------------------------------------------------------------------------------
# Finite termination on affine maps (AA(m >= n) ~ GMRES; Walker & Ni 2011)


@given(n=st.integers(1, 6), seed=st.integers(0, 2**31 - 1), kind=st.sampled_from(["II", "I"]),
       rho=st.floats(0.3, 0.95), m_extra=st.integers(0, 2))
def test_finite_termination_on_affine_maps(n, seed, kind, rho, m_extra):
    g, A, b = affine_map(n, seed, rho)
    x0 = torch.randn(n, generator=torch.Generator().manual_seed(seed + 7), dtype=F64)
    res = anderson(g, x0, m=n + m_extra, kind=kind, reg=0.0, tol=0.0, max_iter=n + 1)
    assume(int(res.restarts.sum()) == 0)
    f0 = float(res.residual_history[0])
    # exact arithmetic: f_{n+1} = 0; float64 Krylov with n <= 6 leaves ~1e-12 relative
    assert float(res.residual_history[n + 1]) <= 1e-8 * max(f0, 1.0)
    x_star = torch.linalg.solve(torch.eye(n, dtype=F64) - A, b)
    assert rel_err(res.image, x_star) < 1e-8


def test_finite_termination_is_not_generic_for_small_m():
    # Control: with m = 1 < n the same problem does not terminate at n + 1.
    n = 5
    g, _, _ = affine_map(n, 3, 0.9)
    res = anderson(g, torch.zeros(n, dtype=F64), m=1, reg=0.0, tol=0.0, max_iter=n + 1)
    assert float(res.residual_history[n + 1]) > 1e-6 * float(res.residual_history[0])


# ------------------------------------------------------------------------------------------------
# AA(1) in 1-D is Aitken's Delta^2; the AA(1) coefficient is the closed form


def _aitken(x0, g):
    x1 = g(x0)
    x2 = g(x1)
    return x2 - (x2 - x1) ** 2 / (x2 - 2 * x1 + x0), (x0, x1, x2)


@given(a=st.floats(-0.95, 0.95), b=st.floats(-3, 3), c=st.floats(-0.5, 0.5), x0=st.floats(-3, 3))
@example(a=0.0, b=0.0, c=1.0, x0=0.0)  # c*sin with a=b=0 ~ the classic 1-D test family
def test_aa1_first_step_is_aitken(a, b, c, x0):
    def g(x):
        return a * x + b + c * torch.sin(x)

    xt = torch.tensor([x0], dtype=F64)
    aitken, (y0, y1, y2) = _aitken(xt, g)
    den = float(y2 - 2 * y1 + y0)
    assume(abs(den) > 1e-6 * (abs(float(y1 - y0)) + 1e-12) and abs(float(y1 - y0)) > 1e-9)
    s = AndersonSolver(m=1, reg=0.0, tol=0.0)
    x_aa = run_states(s, g, xt, 2)[2].x
    # relative to the size of the Aitken correction, which is where rounding enters
    corr = float((y2 - y1) ** 2 / den)
    assert abs(float(x_aa - aitken)) <= 1e-10 * (1 + abs(float(aitken)) + abs(corr))


def test_aa1_aitken_on_cos_value():
    # theory.md §4.2: from x0 = 1, AA(1), Aitken and the secant step all give 0.72801036...
    xt = torch.tensor([1.0], dtype=F64)
    aitken, _ = _aitken(xt, torch.cos)
    x_aa = run_states(AndersonSolver(m=1, reg=0.0, tol=0.0), torch.cos, xt, 2)[2].x
    assert float(x_aa) == pytest.approx(float(aitken), abs=1e-14)
    assert float(x_aa) == pytest.approx(0.72801036, abs=5e-9)


@given(seed=st.integers(0, 2**31 - 1), n=st.integers(1, 5))
def test_aa1_mixing_matches_solver_and_least_squares(seed, n):
    g, _ = tanh_map(n, seed, rho=0.8)
    x0 = torch.randn(n, generator=torch.Generator().manual_seed(seed), dtype=F64)
    states = run_states(AndersonSolver(m=1, reg=0.0, tol=0.0), g, x0, 2)
    s0, s1, s2 = states
    gamma, degenerate = aa1_mixing(s0.f[0], s1.f[0])
    assume(not bool(degenerate))
    # the solver's second iterate is the AA(1) mixture of the two images
    assert rel_err(s2.x[0], (1 - gamma) * s1.gx[0] + gamma * s0.gx[0]) < 1e-10
    # and gamma is the least-squares coefficient
    fk, fkm1 = s1.f[0].numpy(), s0.f[0].numpy()
    g_ls = np.linalg.lstsq((fk - fkm1)[:, None], fk, rcond=None)[0][0]
    assert float(gamma) == pytest.approx(g_ls, rel=1e-9, abs=1e-12)


def test_aa1_mixing_degenerate_pair_is_zero_and_finite():
    f = torch.tensor([[1.0, 2.0], [0.0, 0.0]], dtype=F64)
    gamma, degenerate = aa1_mixing(f, f.clone())
    assert degenerate.all() and (gamma == 0).all()
    g32, deg32 = aa1_mixing(f.float(), (f + 1e-9).float())  # below fp32 rounding -> degenerate
    assert deg32[0] and torch.isfinite(g32).all()


# ------------------------------------------------------------------------------------------------
# SciPy equivalence (theory.md §4.5): anderson(F, alpha=beta, w0=0, line_search=None, M=m), F = g - x


@given(n=st.integers(2, 6), m=st.integers(1, 4), seed=st.integers(0, 2**31 - 1),
       damping=st.sampled_from([1.0, 0.5]), K=st.integers(1, 6))
def test_iterates_equal_scipy_anderson(n, m, seed, damping, K):
    # With more than n difference columns in R^n the Gram matrix is singular and both codes return
    # rounding noise (differently), so compare only while the history has at most n columns.
    assume(min(m, K - 1) <= n)
    g, g_np = tanh_map(n, seed, rho=0.85)
    x0 = np.random.default_rng(seed).standard_normal(n)
    ours = run_states(AndersonSolver(m=m, damping=damping, reg=0.0, tol=0.0, cond_max=1e300), g,
                      torch.from_numpy(x0), K)
    assume(all(float(s.fnorm) > 1e-7 for s in ours))  # scipy stops at F = 0 exactly
    iterates = []
    scipy.optimize.anderson(lambda x: g_np(x) - x, x0, iter=K, alpha=damping, w0=0.0, line_search=None,
                            M=m, callback=lambda x, f: iterates.append(x.copy()))
    assert len(iterates) == K
    for k in range(K):
        ref = torch.from_numpy(iterates[k])
        assert rel_err(ours[k + 1].x[0], ref) < 1e-9, f"iterate {k + 1} differs"


# ------------------------------------------------------------------------------------------------
# Hopfield maps


def _contraction_beta(frac: float, N: int, alpha: float) -> float:
    # ||J|| <= beta * (1^T s) * M^2 with M = 1: 1^T s = 1 (softmax), <= sqrt(N) (1.5-entmax, s = sqrt(p)).
    return frac / (1.0 if alpha == 1.0 else math.sqrt(N))


@given(d=st.integers(2, 12), N=st.integers(2, 24), seed=st.integers(0, 2**31 - 1),
       frac=st.floats(0.2, 0.9), alpha=st.sampled_from([1.0, 1.5]), m=st.integers(1, 5),
       kind=st.sampled_from(["II", "I"]))
def test_hopfield_aa_and_plain_reach_the_same_fixed_point_in_the_contraction_regime(
        d, N, seed, frac, alpha, m, kind):
    # Regime of the claim: L = sup ||J|| <= frac < 1, so the fixed point is unique (Banach) and
    # ||x - x*|| <= ||g(x) - x|| / (1 - L) for every x.
    X, x0 = hopfield_problem(d, N, seed)
    beta = _contraction_beta(frac, N, alpha)
    tol = 1e-11
    g = lambda x: hopfield.retrieval_map(x, X, beta=beta, alpha=alpha)  # noqa: E731
    aa = anderson(g, x0, m=m, kind=kind, tol=tol, max_iter=300)
    plain = fixed_point(x0, X, beta, alpha, tol=tol, max_iter=5000)
    assert aa.status is AndersonStatus.CONVERGED and plain.converged
    assert float(torch.linalg.vector_norm(aa.solution - plain.state)) <= 2 * tol / (1 - frac) + 1e-13


@pytest.mark.parametrize("d,N,beta,alpha,seed", DIFFERENT_FIXED_POINTS)
def test_hopfield_aa_may_reach_a_different_fixed_point_outside_the_contraction_regime(d, N, beta, alpha, seed):
    # The failure regime of the claim above: several attractors; AA's extrapolation can jump basins.
    X, x0 = hopfield_problem(d, N, seed)
    g = lambda x: hopfield.retrieval_map(x, X, beta=beta, alpha=alpha)  # noqa: E731
    aa = anderson(g, x0, m=3, tol=1e-10, max_iter=300)
    plain = fixed_point(x0, X, beta, alpha, tol=1e-10, max_iter=5000)
    assert aa.status is AndersonStatus.CONVERGED and plain.converged
    assert float(torch.linalg.vector_norm(aa.solution - plain.state)) > 0.1


_E_RTOL = 1e-12  # float64 energy (logsumexp / entmax conjugate over N <= 24 terms): ~N eps relative


@given(d=st.integers(2, 10), N=st.integers(2, 24), seed=st.integers(0, 2**31 - 1),
       beta=st.floats(0.5, 12.0), alpha=st.sampled_from([1.0, 1.5, 2.0]), m=st.integers(1, 5),
       kind=st.sampled_from(["II", "I"]))
@example(d=4, N=6, seed=3, beta=4.0, alpha=1.0, m=3, kind="II")  # plain AA raises E by 74.7 here
def test_safeguarded_aa_never_increases_the_energy(d, N, seed, beta, alpha, m, kind):
    X, x0 = hopfield_problem(d, N, seed)
    E = lambda x: hopfield.energy(x, X, beta, alpha)  # noqa: E731
    g = lambda x: hopfield.retrieval_map(x, X, beta=beta, alpha=alpha)  # noqa: E731
    res = anderson(g, x0, m=m, kind=kind, tol=1e-10, max_iter=200, safeguard="energy", energy=E)
    e = res.energy_history
    assert e is not None and e.shape[0] == res.iterations + 1
    assert (e[1:] <= e[:-1] + _E_RTOL * (1 + e[:-1].abs())).all()
    assert float(E(res.solution)) == pytest.approx(float(e[-1]), rel=1e-12, abs=1e-12)
    assert res.energy_evaluations == 1 + 2 * res.iterations


@pytest.mark.parametrize("d,N,beta,alpha,seed", ENERGY_INCREASING_AA)
def test_plain_aa_can_increase_the_energy_and_the_safeguard_prevents_it(d, N, beta, alpha, seed):
    X, x0 = hopfield_problem(d, N, seed)
    E = lambda x: hopfield.energy(x, X, beta, alpha)  # noqa: E731
    g = lambda x: hopfield.retrieval_map(x, X, beta=beta, alpha=alpha)  # noqa: E731
    solver = AndersonSolver(m=3, tol=1e-10, max_iter=100)
    s = solver.init(g, x0)
    energies = [float(E(s.x))]
    while not solver.terminate(s)[0]:
        s = solver.step(g, s)
        energies.append(float(E(s.x)))
    assert max(b - a for a, b in zip(energies, energies[1:])) > 1e-2
    safe = anderson(g, x0, m=3, tol=1e-10, max_iter=100, safeguard="energy", energy=E)
    e = safe.energy_history
    assert (e[1:] <= e[:-1] + _E_RTOL * (1 + e[:-1].abs())).all()
    assert int(safe.safeguard_rejections.sum()) >= 1


def test_m0_is_plain_hopfield_iteration():
    X, x0 = hopfield_problem(6, 10, 1)
    g = lambda x: hopfield.retrieval_map(x, X, beta=2.0, alpha=1.5)  # noqa: E731
    res = anderson(g, x0, m=0, tol=1e-10, max_iter=1000)
    plain = fixed_point(x0, X, 2.0, 1.5, tol=1e-10, max_iter=1000)
    assert res.iterations == plain.iterations
    torch.testing.assert_close(res.solution, plain.state, rtol=0, atol=1e-14)
    torch.testing.assert_close(res.residual_history, plain.residual_history, rtol=1e-12, atol=1e-15)


# ------------------------------------------------------------------------------------------------
# Batching, counting, statuses, dtypes


@given(seed=st.integers(0, 2**31 - 1), m=st.integers(0, 4), kind=st.sampled_from(["II", "I"]))
def test_batch_elements_are_independent(seed, m, kind):
    n, B = 4, 3
    gen = torch.Generator().manual_seed(seed)
    rho = torch.tensor([0.3, 0.7, 0.95], dtype=F64)
    A = torch.randn(B, n, n, generator=gen, dtype=F64)
    A = rho[:, None, None] * A / torch.linalg.matrix_norm(A, ord=2)[:, None, None]
    b = torch.randn(B, n, generator=gen, dtype=F64)
    x0 = torch.randn(B, n, generator=gen, dtype=F64)

    def g_batch(x):
        return torch.tanh((A @ x.unsqueeze(-1)).squeeze(-1)) + b

    res = anderson(g_batch, x0, m=m, kind=kind, tol=1e-10, max_iter=400)
    for i in range(B):
        one = anderson(lambda x: torch.tanh(A[i] @ x) + b[i], x0[i], m=m, kind=kind, tol=1e-10, max_iter=400)
        assert one.status is AndersonStatus(int(res.element_status[i]))
        torch.testing.assert_close(res.solution[i], one.solution, rtol=1e-12, atol=1e-13)
        assert int(res.element_map_evaluations[i]) == one.map_evaluations
    assert res.map_evaluations == int(res.element_map_evaluations.max())


def test_map_and_energy_evaluations_are_counted_honestly():
    X, x0 = hopfield_problem(5, 8, 2)
    calls = {"g": 0, "E": 0}

    def g(x):
        calls["g"] += 1
        return hopfield.retrieval_map(x, X, beta=3.0)

    def E(x):
        calls["E"] += 1
        return hopfield.energy(x, X, 3.0)

    res = anderson(g, torch.stack([x0, -x0]), m=3, tol=1e-10, safeguard="energy", energy=E)
    assert res.map_evaluations == calls["g"] == res.iterations + 1
    assert res.energy_evaluations == calls["E"]
    assert res.residual_history.shape == (res.iterations + 1, 2)
    assert isinstance(res, AndersonResult)


def test_statuses_max_iter_nonfinite_breakdown():
    g, _, _ = affine_map(3, 0, 0.99)
    r = anderson(g, torch.zeros(3, dtype=F64), m=0, tol=1e-12, max_iter=5)
    assert r.status is AndersonStatus.MAX_ITER and r.iterations == 5 and not r.converged

    def blows_up(x):  # finite until |x| > 10, then NaN
        return torch.where(x.abs() > 10, torch.full_like(x, math.nan), 2 * x + 1)

    r = anderson(blows_up, torch.tensor([[1.0], [-1.0]], dtype=F64), m=0, max_iter=50)
    assert r.status is AndersonStatus.NONFINITE
    assert AndersonStatus(int(r.element_status[0])) is AndersonStatus.NONFINITE
    assert AndersonStatus(int(r.element_status[1])) is AndersonStatus.CONVERGED  # -1 is the fixed point
    assert torch.isfinite(r.solution).all() and float(r.solution[0].abs()) <= 10

    # g(x) = next float after x: f = 1 ulp, and the damped step x + f/4 rounds back to x
    r = anderson(lambda x: torch.nextafter(x, torch.full_like(x, math.inf)), torch.tensor([1e20], dtype=F64),
                 m=2, damping=0.25, tol=0.0, max_iter=10)
    assert r.status is AndersonStatus.BREAKDOWN and r.iterations == 1


def test_already_converged_and_max_iter_zero():
    r = anderson(lambda x: x, torch.ones(2, dtype=F64), m=3, tol=0.0)
    assert r.status is AndersonStatus.CONVERGED and r.iterations == 0 and r.map_evaluations == 1
    r = anderson(torch.cos, torch.zeros(1, dtype=F64), max_iter=0)
    assert r.status is AndersonStatus.MAX_ITER and r.iterations == 0


def test_solver_protocol_init_step_terminate():
    solver = AndersonSolver(m=2, tol=1e-12, max_iter=100)
    state = solver.init(torch.cos, torch.zeros(1, dtype=F64))
    done, status = solver.terminate(state)
    assert not done and status is AndersonStatus.RUNNING
    steps = 0
    while not solver.terminate(state)[0]:
        state = solver.step(torch.cos, state)
        steps += 1
    assert solver.terminate(state) == (True, AndersonStatus.CONVERGED)
    assert solver.result(state).iterations == steps
    with pytest.raises(Exception):
        solver.m = 3  # frozen config


@pytest.mark.parametrize("dtype,tol", [(torch.float32, 1e-5), (torch.float16, 1e-2), (torch.bfloat16, 5e-2)])
def test_low_precision_inputs(dtype, tol):
    # half types are iterated in fp32 but g sees (and the result keeps) the input dtype; tol ~ the
    # dtype's resolution at O(1) values
    X, x0 = hopfield_problem(6, 10, 4)
    Xd = X.to(dtype)
    seen = set()

    def g(x):
        seen.add(x.dtype)
        return hopfield.retrieval_map(x, Xd, beta=1.0)

    res = anderson(g, x0.to(dtype), m=3, tol=tol, max_iter=200)
    assert seen == {dtype} and res.solution.dtype == dtype
    assert torch.isfinite(res.solution.float()).all()
    assert res.status is AndersonStatus.CONVERGED
    ref = fixed_point(x0, X, 1.0, tol=1e-12).state
    assert float((res.solution.double() - ref).norm()) < 20 * tol


@pytest.mark.parametrize(
    "kwargs,name",
    [
        (dict(m=-1), "m"), (dict(m=1.5), "m"), (dict(kind="III"), "kind"), (dict(damping=0.0), "damping"),
        (dict(damping=1.5), "damping"), (dict(reg=-1.0), "reg"), (dict(tol=-1.0), "tol"),
        (dict(max_iter=-1), "max_iter"), (dict(safeguard="norm"), "safeguard"),
        (dict(safeguard="energy"), "energy"), (dict(cond_max=0.5), "cond_max"), (dict(tol=math.nan), "tol"),
    ],
)
def test_bad_solver_arguments_raise_value_error_naming_them(kwargs, name):
    with pytest.raises(ValueError, match=name):
        anderson(torch.cos, torch.zeros(1, dtype=F64), **kwargs)


def test_bad_maps_and_starts_raise_value_error_naming_them():
    with pytest.raises(ValueError, match="x0"):
        anderson(torch.cos, torch.tensor([math.nan], dtype=F64))
    with pytest.raises(ValueError, match="x0"):
        anderson(torch.cos, torch.zeros(2, 0, dtype=F64))
    with pytest.raises(ValueError, match="x0"):
        anderson(torch.cos, torch.zeros(2, dtype=torch.int64))
    with pytest.raises(ValueError, match="g"):
        anderson(lambda x: x[..., :1], torch.zeros(3, dtype=F64))
    with pytest.raises(ValueError, match="g"):
        anderson("cos", torch.zeros(3, dtype=F64))
    with pytest.raises(ValueError, match="energy"):
        anderson(torch.cos, torch.zeros(2, 3, dtype=F64), safeguard="energy", energy=lambda x: x.sum())


# ------------------------------------------------------------------------------------------------
# Symbolic identities (hopfield_gag.symbolic, owned by the theory engineer) and their numeric twins


def test_sympy_aa1_closed_form_and_our_coefficient_agree():
    ident = symbolic.aa1_mixing_closed_form()
    assert ident.holds
    gamma_star = ident.expressions["gamma_star"]
    syms = sorted(gamma_star.free_symbols, key=lambda s: s.name)  # f1..f3 (f_k), g1..g3 (f_{k-1})
    f_sym = [s for s in syms if s.name.startswith("f")]
    g_sym = [s for s in syms if s.name.startswith("g")]
    fn = sp.lambdify(f_sym + g_sym, gamma_star, "numpy")
    rng = np.random.default_rng(0)
    for _ in range(20):
        fk, fkm1 = rng.standard_normal(3), rng.standard_normal(3)
        ours, _ = aa1_mixing(torch.from_numpy(fkm1), torch.from_numpy(fk))
        assert float(ours) == pytest.approx(float(fn(*fk, *fkm1)), rel=1e-10, abs=1e-12)


def test_sympy_pladis_identity_and_our_gamma_agree():
    ident = symbolic.pladis_as_aa1()
    assert ident.holds
    lam_sym = next(s for s in ident.expressions["gamma"].free_symbols if s.name == "lam")
    for lam in (0.0, 1.0, 1.5, 2.0, -0.3):
        ours = extrapolation_as_aa(torch.zeros(3, dtype=F64), torch.ones(3, dtype=F64), "pladis", lam=lam)
        assert float(ours.gamma) == pytest.approx(float(ident.expressions["gamma"].subs(lam_sym, lam)), abs=1e-15)


def test_sympy_gag_identity_and_our_gamma_agree():
    ident = symbolic.gag_as_aa1()
    assert ident.holds
    gc = ident.expressions["gamma_capped"]
    syms = {s.name: s for s in gc.free_symbols}
    rng = np.random.default_rng(1)
    for _ in range(20):
        s_v, d_v = rng.standard_normal(3), rng.standard_normal(3)
        lam, eta, zeta = rng.uniform(0, 12), rng.uniform(0.05, 3), rng.uniform(0, 1)
        subs = {syms[f"s{i + 1}"]: s_v[i] for i in range(3) if f"s{i + 1}" in syms}
        subs.update({syms[f"d{i + 1}"]: d_v[i] for i in range(3) if f"d{i + 1}" in syms})
        subs.update({syms[k]: v for k, v in (("lam", lam), ("eta", eta), ("zeta", zeta)) if k in syms})
        ours = extrapolation_as_aa(torch.from_numpy(d_v), torch.from_numpy(s_v), "gag", lam=lam, eta=eta, zeta=zeta)
        assert float(ours.gamma) == pytest.approx(float(gc.subs(subs)), rel=1e-10, abs=1e-12)


# ------------------------------------------------------------------------------------------------
# extrapolation_as_aa: reconstructions equal the methods' direct formulas


def _gag_direct(s, d, lam, eta, zeta, eps=1e-12):
    """GAG as written in the reference implementations (paper.md §3.4 pseudocode)."""
    D = s - d
    dpar = ((D * s).sum(-1, keepdim=True) / (s * s).sum(-1, keepdim=True).clamp_min(eps)) * s
    gg = dpar + zeta * (D - dpar)
    ghat = gg * torch.clamp(eta / torch.linalg.vector_norm(gg, dim=-1, keepdim=True).clamp_min(eps), max=1.0)
    return s + lam * ghat


vec_pairs = st.tuples(st.integers(1, 4), st.integers(1, 8), st.integers(0, 2**31 - 1))


@given(shape=vec_pairs, lam=st.floats(0.0, 20.0), eta=st.floats(0.01, 30.0), zeta=st.floats(0.0, 1.0),
       scale=st.floats(0.01, 10.0))
def test_extrapolation_reconstructions_equal_direct_formulas(shape, lam, eta, zeta, scale):
    L, dv, seed = shape
    gen = torch.Generator().manual_seed(seed)
    s = scale * torch.randn(L, dv, generator=gen, dtype=F64)
    d = scale * torch.randn(L, dv, generator=gen, dtype=F64)
    pl = extrapolation_as_aa(d, s, "pladis", lam=lam)
    torch.testing.assert_close(pl.output, d + lam * (s - d), rtol=1e-12, atol=1e-12 * scale * (1 + lam))
    torch.testing.assert_close(pl.gamma, torch.full((L,), 1 - lam, dtype=F64))
    gag = extrapolation_as_aa(d, s, "gag", lam=lam, eta=eta, zeta=zeta)
    atol = 1e-12 * scale * (1 + lam)
    torch.testing.assert_close(gag.output, _gag_direct(s, d, lam, eta, zeta), rtol=1e-12, atol=atol)
    torch.testing.assert_close(gag.output, s - gag.gamma[:, None] * gag.difference, rtol=1e-12, atol=atol)
    # matrix-valued AA(1) coefficient: o = s - Gamma (s - d)
    Gam = gag.mixing_operator()
    torch.testing.assert_close(gag.output, s - (Gam @ (s - d).unsqueeze(-1)).squeeze(-1), rtol=1e-10,
                               atol=1e-10 * scale * (1 + lam))
    Gp = pl.mixing_operator()
    torch.testing.assert_close(pl.output, s - (Gp @ (s - d).unsqueeze(-1)).squeeze(-1), rtol=1e-10,
                               atol=1e-10 * scale * (1 + lam))
    # the cap bound ||o - s|| <= lam * eta and |gamma| <= lam
    assert (torch.linalg.vector_norm(gag.output - s, dim=-1) <= lam * eta * (1 + 1e-12) + 1e-12).all()
    assert (gag.gamma.abs() <= lam + 1e-12).all()


@given(shape=vec_pairs, lam=st.floats(0.0, 10.0))
def test_gag_special_cases(shape, lam):
    L, dv, seed = shape
    gen = torch.Generator().manual_seed(seed)
    s = torch.randn(L, dv, generator=gen, dtype=F64)
    d = torch.randn(L, dv, generator=gen, dtype=F64)
    # zeta = 1 uncapped: PLADIS with lam_P = 1 + lam, gamma = -lam
    iso = extrapolation_as_aa(d, s, "gag", lam=lam, eta=1e9, zeta=1.0)
    pl = extrapolation_as_aa(d, s, "pladis", lam=1 + lam)
    torch.testing.assert_close(iso.output, pl.output, rtol=1e-12, atol=1e-12 * (1 + lam))
    torch.testing.assert_close(iso.gamma, pl.gamma, rtol=1e-12, atol=1e-12)
    # zeta = 0 uncapped: radial rescaling (1 + lam c) s
    rad = extrapolation_as_aa(d, s, "gag", lam=lam, eta=1e9, zeta=0.0)
    c = ((s - d) * s).sum(-1, keepdim=True) / (s * s).sum(-1, keepdim=True)
    torch.testing.assert_close(rad.output, (1 + lam * c) * s, rtol=1e-12, atol=1e-12 * (1 + lam))


def test_extrapolation_as_aa_errors_dtypes_and_tensor_lam():
    s, d = torch.randn(2, 5, 4), torch.randn(2, 5, 4)
    with pytest.raises(ValueError, match="method"):
        extrapolation_as_aa(d, s, "cfg")
    with pytest.raises(ValueError, match="sparse"):
        extrapolation_as_aa(d, s[..., :3], "gag")
    with pytest.raises(ValueError, match="dense"):
        extrapolation_as_aa(d * math.nan, s, "gag")
    with pytest.raises(ValueError, match="eta"):
        extrapolation_as_aa(d, s, "gag", eta=0.0)
    with pytest.raises(ValueError, match="zeta"):
        extrapolation_as_aa(d, s, "gag", zeta=1.5)
    with pytest.raises(ValueError, match="lam"):
        extrapolation_as_aa(d, s, "pladis", lam=torch.ones(3))
    lam = torch.rand(2, 5) * 3
    r = extrapolation_as_aa(d, s, "pladis", lam=lam)
    torch.testing.assert_close(r.output, d + lam[..., None] * (s - d))
    for dt in (torch.float16, torch.bfloat16):
        r = extrapolation_as_aa(d.to(dt), s.to(dt), "gag")
        assert r.output.dtype == dt and torch.isfinite(r.output.float()).all()
    zero = extrapolation_as_aa(torch.zeros(3), torch.zeros(3), "gag")  # s = 0, Delta = 0: finite, o = s
    assert torch.isfinite(zero.output).all() and (zero.output == 0).all()


# ------------------------------------------------------------------------------------------------
# aa_adaptive_scale


def _qkv(seed, B=2, Lq=5, Lk=7, d=8, dv=None, dtype=F64):
    gen = torch.Generator().manual_seed(seed)
    q = torch.randn(B, Lq, d, generator=gen, dtype=F64)
    k = torch.randn(B, Lk, d, generator=gen, dtype=F64)
    v = None if dv is None else torch.randn(B, Lk, dv, generator=gen, dtype=F64)
    cast = (lambda t: None if t is None else t.to(dtype))
    return cast(q), cast(k), cast(v)


@given(seed=st.integers(0, 2**31 - 1), Lq=st.integers(1, 6), Lk=st.integers(2, 10), d=st.integers(1, 8),
       qscale=st.floats(0.1, 10.0), alpha=st.sampled_from([1.5, 2.0]))
def test_adaptive_scale_hopfield_case_is_aa1_on_query_residuals(seed, Lq, Lk, d, qscale, alpha):
    q, k, _ = _qkv(seed, 1, Lq, Lk, d)
    q = q * qscale
    lo, hi = -50.0, 50.0
    r = aa_adaptive_scale(q, k, None, alpha=alpha, lo=lo, hi=hi)
    z = (q @ k.mT) / math.sqrt(d)
    dn = normalizers.softmax(z) @ k
    sp_ = normalizers.entmax(z, alpha=alpha) @ k
    torch.testing.assert_close(r.dense, dn)
    torch.testing.assert_close(r.sparse, sp_)
    # AA(1) on f_{k-1} = d - xi, f_k = s - xi (the closed form of aa1_mixing / symbolic)
    gamma_ref, degenerate = aa1_mixing(dn - q, sp_ - q)
    lam_ref = (1 - gamma_ref).clamp(lo, hi)
    torch.testing.assert_close(r.pladis_scale, lam_ref, rtol=1e-10, atol=1e-10)
    torch.testing.assert_close(r.gamma, 1 - r.pladis_scale)
    torch.testing.assert_close(r.output, dn + r.pladis_scale[..., None] * (sp_ - dn), rtol=1e-10, atol=1e-10)
    # least-squares property: no point of the dense->sparse line is closer to the state (unclamped tokens)
    free = ~r.clamped & ~r.degenerate
    for t in (-1.0, 0.0, 0.5, 1.0, 2.0):
        other = dn + t * (sp_ - dn)
        dist_ours = torch.linalg.vector_norm(r.output - q, dim=-1)
        dist_other = torch.linalg.vector_norm(other - q, dim=-1)
        assert (dist_ours[free] <= dist_other[free] + 1e-10 * (1 + dist_other[free])).all()


@given(seed=st.integers(0, 2**31 - 1), dv=st.integers(1, 6))
def test_adaptive_scale_with_values_uses_key_space_residuals(seed, dv):
    q, k, v = _qkv(seed, 2, 4, 6, 5, dv=dv)
    rk = aa_adaptive_scale(q, k, None)
    rv = aa_adaptive_scale(q, k, v)
    # the scale is a property of the Hopfield state (key space), read out linearly through v
    torch.testing.assert_close(rv.pladis_scale, rk.pladis_scale)
    z = (q @ k.mT) / math.sqrt(5)
    pd, ps = normalizers.softmax(z), normalizers.entmax(z, alpha=1.5)
    lam = rv.pladis_scale[..., None]
    torch.testing.assert_close(rv.output, ((1 - lam) * pd + lam * ps) @ v)
    assert rv.output.shape == (2, 4, dv) and rv.gamma.shape == (2, 4)


def test_adaptive_scale_guards_degenerate_and_clamp():
    # a single key: dense == sparse == that key: degenerate -> gamma 0, lambda 1, finite
    q = torch.randn(1, 3, 4, dtype=F64)
    k = torch.randn(1, 1, 4, dtype=F64)
    r = aa_adaptive_scale(q, k, None)
    assert r.degenerate.all() and (r.gamma == 0).all() and (r.pladis_scale == 1).all()
    assert torch.isfinite(r.output).all()
    # identical keys: p_d = p_s = uniform -> degenerate too
    k2 = torch.ones(1, 5, 4, dtype=F64)
    r2 = aa_adaptive_scale(q, k2, torch.randn(1, 5, 2, dtype=F64))
    assert r2.degenerate.all() and torch.isfinite(r2.output).all()
    # a degenerate token whose lambda = 1 is outside [lo, hi] is clamped into range
    r3 = aa_adaptive_scale(q, k, None, lo=1.5, hi=2.0)
    assert (r3.pladis_scale == 1.5).all()
    # clamping: wide range vs default range on random problems; hits are flagged
    q4, k4, _ = _qkv(0, 4, 16, 9, 6)
    wide = aa_adaptive_scale(q4 * 5, k4, None, lo=-1e6, hi=1e6)
    narrow = aa_adaptive_scale(q4 * 5, k4, None)
    lam_w = wide.pladis_scale
    torch.testing.assert_close(narrow.pladis_scale, lam_w.clamp(0.0, 3.0))
    assert torch.equal(narrow.clamped, (lam_w < 0) | (lam_w > 3))
    assert bool(narrow.clamped.any()) and bool((~narrow.clamped).any())  # both occur on this table


def test_adaptive_scale_shapes_broadcast_mask_and_dtypes():
    q, k, v = _qkv(3, 2, 5, 7, 8, dv=3)
    r = aa_adaptive_scale(q, k[0], v[0])  # shared keys/values broadcast over the batch
    assert r.gamma.shape == (2, 5) and r.output.shape == (2, 5, 3)
    # masking keys out == removing them
    mask = torch.tensor([True, True, False, True, False, True, True])
    rm = aa_adaptive_scale(q, k, v, mask=mask)
    rr = aa_adaptive_scale(q, k[:, mask], v[:, mask])
    torch.testing.assert_close(rm.output, rr.output)
    torch.testing.assert_close(rm.pladis_scale, rr.pladis_scale)
    ref = aa_adaptive_scale(q, k, v)
    for dt in (torch.float32, torch.float16, torch.bfloat16):
        rd = aa_adaptive_scale(q.to(dt), k.to(dt), v.to(dt))
        assert rd.output.dtype == dt and rd.gamma.dtype == dt and rd.pladis_scale.shape == (2, 5)
        assert torch.isfinite(rd.output.float()).all() and torch.isfinite(rd.gamma.float()).all()
        # fp32 agrees with fp64 to fp32 resolution (lambda can be sensitive where ||Delta|| is small)
        if dt == torch.float32:
            torch.testing.assert_close(rd.output.double(), ref.output, rtol=1e-3, atol=1e-3)


@pytest.mark.parametrize(
    "kwargs,name",
    [
        (dict(q=torch.full((1, 2, 3), math.nan, dtype=F64)), "q"),
        (dict(k=torch.randn(1, 4, 5, dtype=F64)), "k"),
        (dict(v=torch.randn(1, 5, 2, dtype=F64)), "v"),
        (dict(scale=0.0), "scale"),
        (dict(alpha=1.0), "alpha"),
        (dict(lo=2.0, hi=1.0), "lo"),
        (dict(k=torch.randn(1, 4, 3, dtype=torch.float32)), "k"),
    ],
)
def test_adaptive_scale_bad_inputs_raise_value_error_naming_them(kwargs, name):
    args = dict(q=torch.randn(1, 2, 3, dtype=F64), k=torch.randn(1, 4, 3, dtype=F64),
                v=torch.randn(1, 4, 2, dtype=F64))
    args.update(kwargs)
    with pytest.raises(ValueError, match=name):
        aa_adaptive_scale(**args)


def test_result_tensors_are_ordinary_tensors_usable_in_autograd():
    # the solve runs under inference_mode; the result must still re-attach to a graph (DEQ-style)
    X, x0 = hopfield_problem(4, 6, 0)
    res = anderson(lambda x: hopfield.retrieval_map(x, X, beta=1.0), x0, m=2, tol=1e-12)
    assert not res.solution.is_inference()
    x = res.solution.requires_grad_()
    hopfield.retrieval_map(x, X, beta=1.0).sum().backward()
    assert x.grad is not None and torch.isfinite(x.grad).all()


@given(seed=st.integers(0, 2**31 - 1), lam=st.floats(0.0, 12.0), eta=st.floats(0.05, 20.0),
       zeta=st.floats(0.0, 1.0))
def test_attention_op_agrees_with_the_aa_readings(seed, lam, eta, zeta):
    # cross-implementation check: gag_attention (chunked, fused blends) vs the AA(1) reconstructions here
    from hopfield_gag import gag_attention

    gen = torch.Generator().manual_seed(seed)
    q = torch.randn(2, 5, 8, generator=gen, dtype=F64)
    k = torch.randn(2, 7, 8, generator=gen, dtype=F64)
    v = torch.randn(2, 7, 4, generator=gen, dtype=F64)
    r = aa_adaptive_scale(q, k, v)
    tol = dict(rtol=1e-10, atol=1e-10 * (1 + lam))  # float64, different association orders
    torch.testing.assert_close(gag_attention(q, k, v, method="aa"), r.output, **tol)
    gag = extrapolation_as_aa(r.dense, r.sparse, "gag", lam=lam, eta=eta, zeta=zeta)
    torch.testing.assert_close(gag_attention(q, k, v, method="gag", lam=lam, eta=eta, zeta=zeta), gag.output, **tol)
    pl = extrapolation_as_aa(r.dense, r.sparse, "pladis", lam=lam)
    torch.testing.assert_close(gag_attention(q, k, v, method="pladis", lam=lam), pl.output, **tol)


# ------------------------------------------------------------------------------------------------
# One result type: fixed_point is anderson(m=0) with the energy trace


def test_fixed_point_is_the_depth0_solve_with_energy_trace():
    from hopfield_gag import FixedPointResult, SolverResult, SolverStatus, energy, retrieval_map

    assert FixedPointResult is SolverResult is AndersonResult and AndersonStatus is SolverStatus
    g = torch.Generator().manual_seed(0)
    X = torch.randn(6, 4, generator=g, dtype=F64)
    x0 = torch.randn(3, 4, generator=g, dtype=F64)
    fp = fixed_point(x0, X, 1.5, 1.5, tol=1e-11, max_iter=400)
    aa = anderson(lambda x: retrieval_map(x, X, beta=1.5, alpha=1.5), x0, m=0, tol=1e-11, max_iter=400,
                  energy=lambda x: energy(x, X, 1.5, 1.5), trace_energy=True)
    assert isinstance(fp, SolverResult) and fp.status is SolverStatus.CONVERGED and fp.reason == "converged"
    assert fp.converged is True and bool(fp.element_converged.all()) and fp.tol == 1e-11
    assert torch.equal(fp.state, aa.solution) and torch.equal(fp.energy_history, aa.energy_history)
    assert torch.equal(fp.residual_history, aa.residual_history)
    # one energy per iterate; CCCP: non-increasing up to float64 rounding of O(|E|) terms
    assert fp.energy_history.shape == fp.residual_history.shape == (fp.iterations + 1, 3)
    assert fp.energy_evaluations == fp.iterations + 1
    e = fp.energy_history
    assert bool((e[1:] <= e[:-1] + 1e-13 * (1 + e[:-1].abs())).all())


def test_trace_energy_with_depth_and_its_errors():
    g = torch.Generator().manual_seed(1)
    X = torch.randn(5, 3, generator=g, dtype=F64)
    from hopfield_gag import energy, retrieval_map

    r = anderson(lambda x: retrieval_map(x, X, beta=2.0), torch.zeros(2, 3, dtype=F64), m=3,
                 energy=lambda x: energy(x, X, 2.0), trace_energy=True, tol=1e-12)
    assert r.energy_history is not None and r.energy_history.shape == (r.iterations + 1, 2)
    torch.testing.assert_close(r.energy_history[-1], energy(r.solution, X, 2.0), rtol=0, atol=0)
    assert anderson(torch.cos, torch.zeros(1, dtype=F64)).energy_history is None
    with pytest.raises(ValueError, match="energy must be a callable x -> \\(...\\) when trace_energy=True"):
        anderson(torch.cos, torch.zeros(1, dtype=F64), trace_energy=True)
    with pytest.raises(ValueError, match=r"kind must be one of \('II', 'I'\)"):
        anderson(torch.cos, torch.zeros(1, dtype=F64), kind="III")


def test_max_iter_reason_and_bool_converged():
    X = torch.eye(3, dtype=F64)
    r = fixed_point(torch.tensor([1.0, 0.5, 0.0], dtype=F64), X, beta=1.0, tol=0.0, max_iter=2)
    assert r.reason == "max_iter" and r.status is AndersonStatus.MAX_ITER
    assert r.converged is False and r.element_converged.dtype == torch.bool and r.iterations == 2
