"""Tests of hopfield_gag.anderson (hopfield_gag.solvers): AA(m) invariants, SciPy equivalence, Hopfield
behaviour. The AA(1) readings of PLADIS / GAG / the AA-adaptive scale (hopfield_gag.guidance.aa1) are tested in
tests/test_aa1.py.

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
import torch
from hypothesis import assume, example, given
from hypothesis import strategies as st

from hopfield_gag import hopfield
from hopfield_gag import (
    AndersonResult,
    AndersonSolver,
    AndersonStatus,
    aa1_mixing,
    anderson,
    fixed_point,
)

F64 = torch.float64
EPS64 = torch.finfo(F64).eps


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


# ------------------------------------------------------------------------------------------------
# SciPy equivalence (theory.md §4.5): anderson(F, alpha=beta, w0=0, line_search=None, M=m), F = g - x


def _normal_equations_sensitivity(states, k: int, m: int, damping: float) -> float:
    """How far two correct fp64 codes may put x_{k+1} apart, in units of eps, relative to |x_{k+1}|.

    Step k mixes the last min(m, k) difference pairs: x_{k+1} = x_k + b f_k - (dX + b dF) gamma, gamma the
    least-squares solution of dF gamma = f_k. Both codes (ours and SciPy's) solve it by the normal equations,
    whose matrix has condition kappa(dF)^2, so gamma carries a relative error of order kappa(dF)^2 eps, which
    the step multiplies by |dX + b dF| |gamma| / |x_{k+1}|."""
    xs, fs = [s.x[0].numpy() for s in states], [s.f[0].numpy() for s in states]
    cols = range(max(0, k - m), k)
    dF = np.stack([fs[j + 1] - fs[j] for j in cols], 1)
    dX = np.stack([xs[j + 1] - xs[j] for j in cols], 1)
    gamma = np.linalg.lstsq(dF, fs[k], rcond=None)[0]
    return (np.linalg.cond(dF) ** 2 * np.linalg.norm(dX + damping * dF, 2) * np.linalg.norm(gamma)
            / max(float(np.linalg.norm(xs[k + 1])), 1e-300))


@given(n=st.integers(2, 6), m=st.integers(1, 4), seed=st.integers(0, 2**31 - 1),
       damping=st.sampled_from([1.0, 0.5]), K=st.integers(1, 6))
# a random run's counterexample to a fixed 1e-9: at iterate 5 the 4 x 4 difference matrix has condition 5150
# (2.7e7 in the normal equations) and the two codes differ by 2.3e-9 relative (the bound below: 3.5e-7)
@example(n=4, m=4, seed=142, damping=0.5, K=5)
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
    # Tolerance: 1e-12 (fp64 rounding of a well-conditioned step) + 8 eps times the largest sensitivity so far
    # (an earlier step's difference carries forward). Measured over 3000 random cases: at most 0.14 eps times
    # the sensitivity, while a fixed 1e-9 failed (1.6e-8). Past a bound of 1e-6 the codes may legitimately
    # disagree in every digit that would tell a wrong mixing from a right one: the comparison stops there.
    sensitivity = 0.0
    for k in range(K):
        if k >= 1:
            sensitivity = max(sensitivity, _normal_equations_sensitivity(ours, k, m, damping))
        tol = 1e-12 + 8 * EPS64 * sensitivity
        if tol > 1e-6:
            break
        ref = torch.from_numpy(iterates[k])
        assert rel_err(ours[k + 1].x[0], ref) <= tol, f"iterate {k + 1} differs"


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


def test_result_tensors_are_ordinary_tensors_usable_in_autograd():
    # the solve runs under inference_mode; the result must still re-attach to a graph (DEQ-style)
    X, x0 = hopfield_problem(4, 6, 0)
    res = anderson(lambda x: hopfield.retrieval_map(x, X, beta=1.0), x0, m=2, tol=1e-12)
    assert not res.solution.is_inference()
    x = res.solution.requires_grad_()
    hopfield.retrieval_map(x, X, beta=1.0).sum().backward()
    assert x.grad is not None and torch.isfinite(x.grad).all()


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
