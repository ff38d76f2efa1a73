"""Property tests for hopfield_gag.hopfield (float64 for theory; fp16/bf16/fp32 on the ops).

Strategies
----------
``problems``            arbitrary small problems (hypothesis floats): the regime of the universal claims
                        (E >= 0, monotone CCCP descent, gradient identity, convex hull, Jacobian).
``separated_problems``  near-orthogonal patterns, a state close to one of them and a beta large enough for
                        the Theorem 5 / Lemma A5-A7 premises: the regime of the retrieval claims.
``gap_problems``        Gaussian patterns in general position with beta placed just above / below the
                        entmax margin 1/(alpha - 1): exact versus non-exact one-step retrieval.
``cluster_problems``    groups of near-duplicate patterns: the metastable regime.

Tolerances: float64 unit roundoff is 1.1e-16; quantities of size S accumulated over O(N d) operations
are compared with an absolute slack of about 1e-12 * S (a few thousand ulps), stated at each use.
"""
from __future__ import annotations

import math

import hypothesis.extra.numpy as hnp
import numpy as np
import pytest
import torch
from hypothesis import assume, example, given
from hypothesis import strategies as st

from hopfield_gag import hopfield as H
from hopfield_gag import fixed_point, normalize

F64 = torch.float64
ALPHAS = [1.0, 1.25, 1.5, 2.0, 3.0]
SPARSE_ALPHAS = [1.25, 1.5, 2.0, 3.0]
EPS64 = torch.finfo(F64).eps


# ----------------------------------------------------------------------------------------------------------
# Strategies


@st.composite
def problems(draw, min_n=1, max_n=6, max_d=5, scale=3.0):
    """(X (N, d), xi (d,), beta): arbitrary entries in [-scale, scale], beta in [0.05, 10]."""
    n = draw(st.integers(min_n, max_n))
    d = draw(st.integers(1, max_d))
    elements = st.floats(-scale, scale, allow_nan=False, allow_infinity=False, width=64)
    x = draw(hnp.arrays(np.float64, (n, d), elements=elements))
    xi = draw(hnp.arrays(np.float64, (d,), elements=elements))
    beta = draw(st.floats(0.05, 10.0))
    return torch.from_numpy(x), torch.from_numpy(xi), beta


def _orthonormal_rows(n, d, gen):
    q, _ = torch.linalg.qr(torch.randn(d, n, generator=gen, dtype=F64))
    return q.T.contiguous()  # (n, d), orthonormal rows


@st.composite
def separated_problems(draw, kappa=(1.0, 12.0), vacuous=False):
    """Near-orthogonal patterns of radius R, a pattern index i, a state within r <= 0.1 R of x_i and
    beta with beta (Delta_i - 2 r M) = ln(N - 1) + kappa, so the Theorem 5 bound is below the trivial 2M.
    ``vacuous=True``: N >= 3 and beta (Delta_i - 2 r M) = f ln(N - 1), f in [0.01, 1] (bound >= 2M)."""
    n = draw(st.integers(3 if vacuous else 2, 6))
    d = draw(st.integers(n, 8))
    gen = torch.Generator().manual_seed(draw(st.integers(0, 2**31 - 1)))
    radius = draw(st.floats(0.5, 3.0))
    x = radius * _orthonormal_rows(n, d, gen)
    x = x + draw(st.floats(0.0, 0.05)) * radius * torch.randn(n, d, generator=gen, dtype=F64) / math.sqrt(d)
    i = draw(st.integers(0, n - 1))
    direction = torch.randn(d, generator=gen, dtype=F64)
    r = draw(st.floats(0.0, 0.1)) * radius
    xi = x[i] + r * direction / direction.norm()
    delta_i = float(H.separation(x)[i])
    big_m = float(x.norm(dim=-1).max())
    eff = delta_i - 2 * float((xi - x[i]).norm()) * big_m
    assert eff > 0.3 * radius**2  # the construction keeps the state well inside the basin
    if vacuous:
        beta = draw(st.floats(0.01, 1.0)) * math.log(n - 1) / eff
    else:
        beta = (math.log(n - 1) + draw(st.floats(*kappa))) / eff
    return x, i, xi, beta


@st.composite
def gap_problems(draw):
    """Gaussian patterns and state (general position) with a positive top-two score gap."""
    n = draw(st.integers(2, 7))
    d = draw(st.integers(1, 6))
    gen = torch.Generator().manual_seed(draw(st.integers(0, 2**31 - 1)))
    x = torch.randn(n, d, generator=gen, dtype=F64)
    xi = torch.randn(d, generator=gen, dtype=F64)
    top2 = (x @ xi).topk(2).values
    gap = float(top2[0] - top2[1])
    assume(gap > 1e-6)
    return x, xi, gap


@st.composite
def cluster_problems(draw):
    """C clusters of l near-duplicates around orthogonal centres of radius R (spread 0.02 R), beta = 5/R^2:
    within-cluster score differences are ~0.1/R^2 * beta R^2 = tiny, between clusters beta R^2 = 5."""
    clusters = draw(st.integers(2, 3))
    size = draw(st.integers(2, 3))
    d = draw(st.integers(clusters, 6))
    gen = torch.Generator().manual_seed(draw(st.integers(0, 2**31 - 1)))
    radius = draw(st.floats(1.0, 3.0))
    centres = radius * _orthonormal_rows(clusters, d, gen)
    x = centres.repeat_interleave(size, 0)
    x = x + 0.02 * radius * torch.randn(x.shape, generator=gen, dtype=F64) / math.sqrt(d)
    return x, size, 5.0 / radius**2


def _scale(x, xi):
    """Typical magnitude of the energy terms: 1 + M^2 + |xi|^2."""
    big_m = float(x.norm(dim=-1).max()) if x.numel() else 0.0
    return 1.0 + big_m**2 + float(xi.norm()) ** 2


# ----------------------------------------------------------------------------------------------------------
# Energy


@pytest.mark.parametrize("alpha", ALPHAS)
@given(problems())
def test_energy_nonnegative_and_lemma_a1_upper_bound(alpha, problem):
    x, xi, beta = problem
    assert H.energy(xi, x, beta, alpha) >= 0.0
    # After one update xi lies in the convex hull, where E <= beta^-1 H_alpha(u) + M^2/2 (Lemma A1 for
    # alpha = 1; the same argument with Omega* >= max holds for alpha > 1). Slack: 1e-12 * scale (fp64).
    t = H.retrieval_map(xi, x, beta=beta, alpha=alpha)
    n = x.shape[0]
    h_u = math.log(n) if alpha == 1.0 else (1 - n ** (1 - alpha)) / (alpha * (alpha - 1))
    big_m = float(x.norm(dim=-1).max())
    e_t = float(H.energy(t, x, beta, alpha))
    assert 0.0 <= e_t <= h_u / beta + 0.5 * big_m**2 + 1e-12 * _scale(x, xi)
    if alpha == 1.0:
        assert e_t <= 2 * big_m**2 + 1e-12 * _scale(x, xi)


@pytest.mark.parametrize("alpha", ALPHAS)
@given(problems())
def test_energy_decreases_along_updates(alpha, problem):
    x, xi, beta = problem
    slack = 1e-12 * _scale(x, xi)  # fp64 rounding of O(scale) terms; the decrease is exact in theory
    e_prev = float(H.energy(xi, x, beta, alpha))
    for _ in range(8):
        xi = H.retrieval_map(xi, x, beta=beta, alpha=alpha)
        e = float(H.energy(xi, x, beta, alpha))
        assert e <= e_prev + slack
        e_prev = e


def _support_edge_slack(x, xi, beta, alpha):
    """Extra slack for two fp64 evaluations of X^T alpha-entmax(beta X xi) when alpha > 2 (0 otherwise).

    The threshold tau is a float of the scores' size, so z_j - tau carries an error dtau of a few ulps of
    beta * scale in any fp64 evaluation (here 8). A support weight p_j = (a (z_j - tau))^(1/a), a = alpha - 1,
    moves by at most min(p_j^(2 - alpha) dtau, (a dtau)^(1/a)) (first order; and the Hölder bound of
    t -> t_+^(1/a)). For alpha <= 2, p_j^(2 - alpha) <= 1: no amplification, which the base slack covers. For
    alpha > 2 an entry just inside the support amplifies dtau by 1 / p_j^(alpha - 2): the forward error of every
    fp64 evaluation, not of one of them (e.g. alpha = 3, p_j = 9.1e-5: the weights of the exact fp64 scores
    differ from ours by 1.2e-8 relative, both exact for scores one ulp apart). Each evaluation's X^T p then
    errs by <= M sum_j |dp_j|: the slack is twice that."""
    if alpha <= 2.0:
        return 0.0
    p = H.retrieval_weights(xi, x, beta=beta, alpha=alpha)
    support = p[p > 0]
    a = alpha - 1.0
    dtau = 8 * EPS64 * beta * _scale(x, xi)
    per_entry = torch.clamp(support.pow(2.0 - alpha) * dtau, max=(a * dtau) ** (1.0 / a))
    return 2.0 * float(x.norm(dim=-1).max()) * float(per_entry.sum())


@pytest.mark.parametrize("alpha", ALPHAS)
@given(problems())
# a random run's counterexample to the plain 1e-12 * scale slack: alpha = 3, four tied patterns just inside the
# support (p = 9.1e-5 each); autograd and the closed form differ by 2.4e-12, both 1e-12 from the exact gradient
@example((torch.tensor([[-0.581329887217942, -0.251953125, -0.251953125]] + [[-0.251953125] * 3] * 4, dtype=F64),
          torch.tensor([-0.581329887217942, 0.375, 0.375], dtype=F64), 2.609375))
def test_energy_gradient_autograd_equals_closed_form(alpha, problem):
    x, xi, beta = problem
    q = xi.clone().requires_grad_(True)
    (grad,) = torch.autograd.grad(H.energy(q, x, beta, alpha), q)
    closed = H.energy_grad(xi, x, beta, alpha)
    expected = xi - H.retrieval_map(xi, x, beta=beta, alpha=alpha)
    assert torch.equal(closed, expected)
    # fp64: gradient entries of size <= |xi| + M, accumulated over O(N d) terms; plus, for alpha > 2, the
    # conditioning of the weights at the support's edge (_support_edge_slack)
    tol = 1e-12 * _scale(x, xi) + _support_edge_slack(x, xi, beta, alpha)
    torch.testing.assert_close(grad, closed, rtol=0, atol=tol)


@pytest.mark.parametrize("alpha", ALPHAS)
@given(problems(), hnp.arrays(np.float64, (5,), elements=st.floats(-1, 1)))
def test_energy_gradient_finite_differences(alpha, problem, direction):
    x, xi, beta = problem
    u = torch.from_numpy(direction[: xi.shape[0]].copy())
    assume(float(u.norm()) > 1e-3)
    u = u / u.norm()
    h = 1e-6
    fd = (H.energy(xi + h * u, x, beta, alpha) - H.energy(xi - h * u, x, beta, alpha)) / (2 * h)
    exact = H.energy_grad(xi, x, beta, alpha) @ u
    # Exact error bound of the central difference: fd = mean over |t| <= h of grad E(xi + t u).u and
    # grad E = xi - T with T the gradient of a convex function, so g(t) = T(xi + t u).u is non-decreasing
    # and |fd - exact| <= (g(h) - g(-h)) / 2 (covers entmax kinks and alpha > 2, where grad E is only
    # Hoelder). Plus fp64 rounding of E: 64 eps * scale / h.
    g = lambda t: float(H.retrieval_map(xi + t * u, x, beta=beta, alpha=alpha) @ u)  # noqa: E731
    tol = 0.5 * (g(h) - g(-h)) + 64 * EPS64 * _scale(x, xi) / h
    assert abs(float(fd) - float(exact)) <= tol


@pytest.mark.parametrize("alpha", ALPHAS)
@given(problems())
def test_energy_matches_literal_formulas(alpha, problem):
    """energy (shifted, stable form) = the HFY formula literally; at alpha = 1 both equal Ramsauer's
    -lse(beta, X xi) + xi'xi/2 + log(N)/beta + M^2/2 (dense and HFY energies coincide)."""
    x, xi, beta = problem
    n = x.shape[0]
    big_m2 = float(x.norm(dim=-1).max()) ** 2
    theta = beta * (x @ xi)
    h_u = math.log(n) if alpha == 1.0 else (1 - n ** (1 - alpha)) / (alpha * (alpha - 1))
    quad = 0.5 * float(xi @ xi) + 0.5 * big_m2
    hfy = -float(H.tsallis_conjugate(theta, alpha)) / beta + h_u / beta + quad
    e = float(H.energy(xi, x, beta, alpha))
    # The literal forms cancel terms of size |theta|/beta + scale: slack 1e-12 times that (fp64).
    slack = 1e-12 * (_scale(x, xi) + float(theta.abs().max()) / beta)
    assert abs(e - hfy) <= slack
    if alpha == 1.0:
        ramsauer = -float(torch.logsumexp(theta, -1)) / beta + quad + math.log(n) / beta
        assert abs(e - ramsauer) <= slack
        assert abs(hfy - ramsauer) <= slack


@given(st.integers(0, 2**31 - 1), st.integers(1, 8), st.floats(0.1, 20.0),
       st.sampled_from([2.0**-52, 1e-12, 1e-9, 1e-6, 1e-3]))
def test_tsallis_entropy_tends_to_shannon_near_alpha_one(seed, n, spread, a):
    # with L_j = -log p_j: -expm1(-a L)/a lies in [L - a L^2/2, L], so H^T_(1+a) = sum_j p_j (that)/(1 + a) is
    # within a (H + sum_j p_j L_j^2 / 2) of Shannon's H, exactly; slack 64 eps (1 + H) for the two roundings.
    # The formula 1 - sum p^alpha cancels to eps/a here (2e-4 off at a = 1e-12).
    p = torch.softmax(torch.randn(n, generator=torch.Generator().manual_seed(seed), dtype=F64) * spread, -1)
    shannon = float(H.tsallis_entropy(p, 1.0))
    log_sq = float((p * torch.log(p.clamp_min(1e-300)) ** 2).sum())
    bound = a * (shannon + 0.5 * log_sq) + 64 * EPS64 * (1 + shannon)
    assert abs(float(H.tsallis_entropy(p, 1.0 + a)) - shannon) <= bound


@given(problems())
def test_energy_just_above_alpha_one_is_the_dense_energy(problem):
    # alpha = 1 + 2^-52: the entmax energy differs from Ramsauer's by O(2^-52) times terms of size <= scale
    # (measured -0.40 (alpha - 1) on a random problem), far below the slack; its entropy gap used to cancel to
    # eps/(alpha - 1) (0.21 off)
    x, xi, beta = problem
    e_dense = float(H.energy(xi, x, beta, 1.0))
    assert abs(float(H.energy(xi, x, beta, 1.0 + 2.0**-52)) - e_dense) <= 1e-12 * _scale(x, xi)


def test_tsallis_conjugate_is_logsumexp_at_alpha_one():
    theta = torch.tensor([[0.3, -1.2, 2.5, 0.0], [10.0, 10.0, -5.0, 1.0]], dtype=F64)
    torch.testing.assert_close(H.tsallis_conjugate(theta, 1.0), torch.logsumexp(theta, -1), rtol=0, atol=1e-14)
    # alpha > 1 at a one-hot maximizer: Omega*(theta) = max(theta) (entropy of a one-hot is 0).
    peaked = torch.tensor([5.0, 0.0, -1.0], dtype=F64)
    assert float(H.tsallis_conjugate(peaked, 2.0)) == 5.0


# ----------------------------------------------------------------------------------------------------------
# Retrieval map and Jacobian


@pytest.mark.parametrize("alpha", ALPHAS)
@given(problems())
def test_retrieval_in_convex_hull(alpha, problem):
    x, xi, beta = problem
    p = H.retrieval_weights(xi, x, beta=beta, alpha=alpha)
    t = H.retrieval_map(xi, x, beta=beta, alpha=alpha)
    assert bool((p >= 0).all())
    assert abs(float(p.sum()) - 1.0) <= 8 * x.shape[0] * EPS64  # fp64 sum of N terms
    big_m = float(x.norm(dim=-1).max())
    torch.testing.assert_close(t, p @ x, rtol=0, atol=1e-13 * (1 + big_m))  # reconstruction from weights
    assert float(t.norm()) <= big_m * (1 + 1e-13) + 1e-300  # |T(xi)| <= max |x_i|


@pytest.mark.parametrize("alpha", ALPHAS)
@given(problems(max_n=5, max_d=4), st.integers(1, 4), st.booleans())
def test_retrieval_jacobian_matches_autograd(alpha, problem, dv, attention):
    x, xi, beta = problem
    values = None
    if attention:  # values != keys: an attention layer
        values = torch.linspace(-2, 2, x.shape[0] * dv, dtype=F64).reshape(x.shape[0], dv).sin()
    jac = H.retrieval_jacobian(xi, x, values, beta=beta, alpha=alpha)
    auto = torch.autograd.functional.jacobian(lambda q: H.retrieval_map(q, x, values, beta=beta, alpha=alpha), xi)
    assert jac.shape == auto.shape
    v = x if values is None else values
    size = 1 + beta * float(x.abs().max()) * float(v.abs().max()) * x.shape[0]
    torch.testing.assert_close(jac, auto, rtol=0, atol=1e-12 * size)  # fp64, entries O(size)
    if values is None:  # Hopfield case: symmetric positive semi-definite
        torch.testing.assert_close(jac, jac.T, rtol=0, atol=1e-12 * size)
        assert float(torch.linalg.eigvalsh(0.5 * (jac + jac.T)).min()) >= -1e-12 * size


def test_batched_shapes_broadcast():
    gen = torch.Generator().manual_seed(0)
    keys = torch.randn(3, 5, 4, generator=gen, dtype=F64)
    values = torch.randn(5, 2, generator=gen, dtype=F64)
    xi = torch.randn(4, generator=gen, dtype=F64)
    assert H.retrieval_map(xi, keys, beta=2.0, alpha=1.5).shape == (3, 4)
    assert H.retrieval_map(xi, keys, values, beta=2.0).shape == (3, 2)
    assert H.retrieval_weights(xi, keys, beta=2.0).shape == (3, 5)
    assert H.retrieval_jacobian(xi, keys, values, beta=2.0).shape == (3, 2, 4)
    assert H.energy(torch.randn(2, 1, 4, generator=gen, dtype=F64), keys, 1.0).shape == (2, 3)
    # Batched result equals the per-element results, to float64 rounding: one GEMM and separate GEMVs
    # may sum the d = 4 products in different orders (a few ulps of O(1) scores).
    out = H.retrieval_map(xi, keys, values, beta=2.0, alpha=2.0)
    for b in range(3):
        torch.testing.assert_close(out[b], H.retrieval_map(xi, keys[b], values, beta=2.0, alpha=2.0),
                                   rtol=0, atol=16 * torch.finfo(F64).eps)


@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16, torch.float32])
@pytest.mark.parametrize("alpha", [1.0, 1.5, 2.0])
def test_low_precision_is_finite_and_close(dtype, alpha):
    gen = torch.Generator().manual_seed(1)
    x = torch.randn(2, 6, 8, generator=gen).to(dtype)
    xi = torch.randn(2, 8, generator=gen).to(dtype)
    eps = torch.finfo(dtype).eps
    for fn in (
        lambda q, k: H.retrieval_map(q, k, beta=0.5, alpha=alpha),
        lambda q, k: H.retrieval_weights(q, k, beta=0.5, alpha=alpha),
        lambda q, k: H.retrieval_jacobian(q, k, beta=0.5, alpha=alpha),
        lambda q, k: H.energy(q, k, 0.5, alpha),
        lambda q, k: H.energy_grad(q, k, 0.5, alpha),
    ):
        out = fn(xi, x)
        assert out.dtype == dtype and bool(torch.isfinite(out).all())
        ref = fn(xi.double(), x.double())  # the same (rounded) problem in fp64
        # computed in fp32 and rounded once to dtype: error ~ eps(dtype) relative; 8 eps * magnitude.
        err = (out.double() - ref).abs().max()
        assert float(err) <= 8 * eps * (1 + float(ref.abs().max()))


# ----------------------------------------------------------------------------------------------------------
# Exact retrieval (alpha > 1)


@pytest.mark.parametrize("alpha", SPARSE_ALPHAS)
@given(gap_problems(), st.floats(1e-6, 3.0))
def test_exact_one_step_retrieval_above_margin(alpha, problem, excess):
    x, xi, gap = problem
    beta = (1 + excess) / ((alpha - 1) * gap)  # beta * gap >= 1/(alpha - 1)
    top = int((x @ xi).argmax())
    assert float(H.exact_retrieval_margin(xi, x, beta=beta, alpha=alpha)) >= 0
    p = H.retrieval_weights(xi, x, beta=beta, alpha=alpha)
    assert torch.equal(p, torch.nn.functional.one_hot(torch.tensor(top), x.shape[0]).to(F64))
    assert torch.equal(H.retrieval_map(xi, x, beta=beta, alpha=alpha), x[top])  # exact, not approximate
    # super-attracting: the Jacobian vanishes where the weights are one-hot
    assert torch.equal(H.retrieval_jacobian(xi, x, beta=beta, alpha=alpha), torch.zeros(x.shape[1], x.shape[1], dtype=F64))


@pytest.mark.parametrize("alpha", SPARSE_ALPHAS)
@given(gap_problems(), st.floats(1e-3, 0.999))
def test_no_exact_retrieval_below_margin(alpha, problem, shortfall):
    x, xi, gap = problem
    beta = (1 - shortfall) / ((alpha - 1) * gap)  # beta * gap < 1/(alpha - 1)
    top = int((x @ xi).argmax())
    assert float(H.exact_retrieval_margin(xi, x, beta=beta, alpha=alpha)) < 0
    p = H.retrieval_weights(xi, x, beta=beta, alpha=alpha)
    assert int((p > 0).sum()) >= 2 and float(p.max()) < 1.0
    # Gaussian patterns are in general position, so a mixture of >= 2 of them is not x_top.
    assert float((H.retrieval_map(xi, x, beta=beta, alpha=alpha) - x[top]).norm()) > 0


@given(gap_problems(), st.floats(0.1, 20.0))
def test_dense_retrieval_is_never_exact(problem, beta):
    x, xi, _ = problem
    assert float(H.exact_retrieval_margin(xi, x, beta=beta, alpha=1.0)) == -math.inf
    # scores are O(5), beta <= 20: no weight underflows in fp64, so every weight is positive
    assert bool((H.retrieval_weights(xi, x, beta=beta, alpha=1.0) > 0).all())


# ----------------------------------------------------------------------------------------------------------
# Capacity (Theorem 3)


@pytest.mark.parametrize(
    "beta, K, d, p, expected, exponent_sign",
    [(1.0, 3.0, 20, 0.001, 3.1546, +1), (1.0, 1.0, 75, 0.001, 1.3718, -1)],
)
def test_capacity_constants_worked_cases(beta, K, d, p, expected, exponent_sign):
    c = H.capacity_constant(beta, K, d, p)
    assert expected <= c < expected + 1e-4  # the paper prints the lower bound truncated to 4 decimals
    bound = H.storage_capacity(beta, K, d, p)
    assert bound.c == c and bound.condition_holds
    assert bound.n_patterns == pytest.approx(math.sqrt(p) * c ** ((d - 1) / 4), rel=1e-14)
    assert math.exp(bound.log_n_patterns) == pytest.approx(bound.n_patterns, rel=1e-14)
    # the paper's remarks on the Lambert-W argument: a + ln b > 1.27, resp. < -0.94
    y = bound.a + math.log(bound.b)
    assert (y > 1.27) if exponent_sign > 0 else (y < -0.94)


@given(
    st.floats(1e-3, 1e3), st.floats(1e-2, 1e2), st.integers(2, 500), st.floats(1e-6, 1.0),
)
@example(1.0, 1e150, 2, 0.5)  # a + ln b > 700: exp overflows, the Wright-omega branch is used
def test_capacity_constant_solves_lambert_equation(beta, K, d, p):
    """c = b / W0(b e^a)  <=>  b/c - ln c = a (W e^W = b e^a with W = b/c)."""
    bound = H.storage_capacity(beta, K, d, p)
    assert math.isfinite(bound.c) and bound.c > 0 and math.isfinite(bound.log_n_patterns)
    assert bound.b / bound.c - math.log(bound.c) == pytest.approx(bound.a, rel=1e-10, abs=1e-10)


# ----------------------------------------------------------------------------------------------------------
# Retrieval error (Theorem 5)


@pytest.mark.parametrize("alpha", [1.0, 1.5, 2.0])
@given(separated_problems())
def test_theorem5_bound_holds_on_separated_problems(alpha, problem):
    x, i, xi, beta = problem
    err = float((H.retrieval_map(xi, x, beta=beta, alpha=alpha) - x[i]).norm())
    bound = float(H.retrieval_error_bound(xi, x, i, beta))
    big_m = float(x.norm(dim=-1).max())
    assert bound < 2 * big_m  # the strategy produces the informative regime
    assert err <= bound * (1 + 1e-10) + 1e-14 * big_m  # fp64 rounding of err
    # With the fixed point x_i* the stated (larger) radius max{|xi - x_i|, |x_i* - x_i|} applies.
    star = fixed_point(x[i], x, beta=beta, alpha=alpha, tol=1e-13, max_iter=200).state
    stated = float(H.retrieval_error_bound(xi, x, i, beta, x_star=star))
    assert stated >= bound and err <= stated * (1 + 1e-10) + 1e-14 * big_m


@given(separated_problems(vacuous=True))
def test_theorem5_bound_is_vacuous_without_separation(problem):
    """Where beta (Delta_i - 2 r M) <= ln(N - 1) the bound is >= 2M, the diameter of the ball that holds
    both T(xi) and x_i: it is still true but says nothing. Near beta ~ 0 retrieval indeed fails."""
    x, i, xi, beta = problem
    big_m = float(x.norm(dim=-1).max())
    bound = float(H.retrieval_error_bound(xi, x, i, beta))
    assert bound >= 2 * big_m * (1 - 1e-12)
    err = float((H.retrieval_map(xi, x, beta=beta, alpha=1.0) - x[i]).norm())
    assert err <= 2 * big_m * (1 + 1e-12)  # the trivial bound the theorem cannot beat here
    tiny = float((H.retrieval_map(xi, x, beta=1e-6, alpha=1.0) - x.mean(0)).norm())
    assert tiny <= 1e-5 * big_m  # beta -> 0: the update returns the mean, not x_i


@given(separated_problems(kappa=(7.0, 20.0)))
def test_fixed_point_converges_to_stored_pattern(problem):
    x, i, xi, beta = problem
    res = fixed_point(xi, x, beta=beta, alpha=1.0, tol=1e-12, max_iter=500)
    assert res.converged and res.reason == "converged" and bool(res.element_converged)
    assert res.residual_history.shape == (res.iterations + 1,) == res.energy_history.shape
    assert float(res.residual_history[-1]) <= 1e-12
    assert bool((res.energy_history.diff() <= 1e-12 * _scale(x, xi)).all())
    big_m = float(x.norm(dim=-1).max())
    dist = float((res.state - x[i]).norm())
    # Theorem 5 (second part): premises |x_i - x_i*| <= 1/(2 beta M) and |x_i - xi| <= 1/(2 beta M)
    # hold for kappa >= 7 (2e e^-kappa < 1/(2 (ln(N-1) + kappa)) * Delta/M^2).
    if float((xi - x[i]).norm()) <= 1 / (2 * beta * big_m):
        assert dist <= 1 / (2 * beta * big_m)
        assert dist <= float(H.stored_pattern_error_bound(x, beta)[i]) * (1 + 1e-8) + 1e-12
    # Lemma A6: the fixed point lies in S_i = {|xi - x_i| <= 1/(beta N M)} when the condition holds.
    regime = H.beta_regime(x, beta)
    if bool(regime.single_condition[i]):
        assert dist <= float(regime.sphere_radius) * (1 + 1e-10)


@given(separated_problems(kappa=(7.0, 20.0)))
def test_fixed_point_batched_each_row_to_its_pattern(problem):
    x, _, _, beta = problem
    start = x + 0.01 * x.norm(dim=-1, keepdim=True) * torch.cos(torch.arange(x.numel(), dtype=F64)).reshape(x.shape)
    res = fixed_point(start, x, beta=beta, alpha=1.5, tol=1e-12, max_iter=500)
    assert res.converged and res.state.shape == x.shape
    assert res.residual_history.shape == (res.iterations + 1, x.shape[0])
    nearest = torch.cdist(res.state, x).argmin(-1)
    assert torch.equal(nearest, torch.arange(x.shape[0]))
    assert bool((res.residual <= 1e-12).all())
    # documented freezing: once an element reaches tol it stops moving (its history rows repeat)
    hist = res.residual_history
    for j in range(x.shape[0]):
        first = int(torch.nonzero(hist[:, j] <= 1e-12)[0])
        assert bool((hist[first:, j] == hist[first, j]).all())
        assert bool((res.energy_history[first:, j] == res.energy_history[first, j]).all())


def test_fixed_point_freezes_converged_elements():
    """A batch with one start already at a (numerical) fixed point and one far away: the first element
    is returned unchanged although the batch keeps iterating."""
    x = torch.tensor([[1.0, 0.0], [0.0, 1.0], [-1.0, 0.0]], dtype=F64)
    settled = fixed_point(x[0], x, beta=20.0, tol=1e-15, max_iter=200).state
    start = torch.stack([settled, torch.tensor([0.1, 0.4], dtype=F64)])
    res = fixed_point(start, x, beta=20.0, tol=1e-15, max_iter=200)
    assert res.iterations > 0 and torch.equal(res.state[0], settled)


def test_fixed_point_stops_at_max_iter():
    x = torch.tensor([[1.0, 0.0], [0.0, 1.0], [-1.0, 0.2]], dtype=F64)
    xi = torch.tensor([0.3, 0.3], dtype=F64)
    res = fixed_point(xi, x, beta=1.0, tol=0.0, max_iter=3)
    assert res.reason == "max_iter" and not res.converged and res.iterations == 3
    assert res.residual_history.shape == (4,) and res.energy_history.shape == (4,)
    res0 = fixed_point(xi, x, beta=1.0, max_iter=0)
    assert res0.iterations == 0 and torch.equal(res0.state, xi) and res0.reason == "max_iter"


# ----------------------------------------------------------------------------------------------------------
# Beta regimes (Ramsauer A.1.5)


@given(problems(min_n=2))
@example((torch.zeros(3, 2, dtype=F64), torch.zeros(2, dtype=F64), 1.0))  # M = 0: log term is -inf
def test_beta_regime_agrees_with_its_stated_conditions(problem):
    x, _, beta = problem
    res = H.beta_regime(x, beta)
    xn = x.numpy()
    n = xn.shape[0]
    m_max = np.linalg.norm(xn - xn.mean(0), axis=1).max()
    big_m = np.linalg.norm(xn, axis=1).max()
    assert bool(res.global_condition) == (beta * m_max**2 < 1)
    with np.errstate(divide="ignore"):
        thr = 2 / (beta * n) + np.log(2 * (n - 1) * n * beta * big_m**2) / beta
    radius = 1 / (beta * n * big_m) if big_m > 0 else np.inf
    for i in range(n):
        delta = xn[i] @ xn[i] - max(xn[i] @ xn[j] for j in range(n) if j != i)
        nearest = min(np.linalg.norm(xn[i] - xn[j]) for j in range(n) if j != i)
        # Delta and the threshold are compared as computed; tie cases within rounding are skipped.
        if abs(delta - thr) > 1e-9 * (1 + abs(thr)):
            assert bool(res.single_condition[i]) == (delta >= thr)
        if abs(nearest - 2 * radius) > 1e-9 * (1 + nearest):
            assert bool(res.isolated[i]) == (nearest > 2 * radius)
        expected = (
            "global" if res.global_condition else
            "single" if (res.single_condition[i] and res.isolated[i]) else "metastable"
        )
        assert res.names()[i] == expected


def test_single_pattern_condition_switches_at_its_threshold():
    """Two orthonormal patterns: Delta = 1, M = 1, N = 2, threshold(beta) = (1 + ln(4 beta)) / beta, which
    decreases through 1 at a unique beta* > 1/4. The label must flip exactly there."""
    from scipy.optimize import brentq

    x = torch.eye(2, dtype=F64)
    beta_star = brentq(lambda b: (1 + math.log(4 * b)) / b - 1.0, 0.25, 100.0, xtol=1e-14)
    above, below = H.beta_regime(x, beta_star * (1 + 1e-6)), H.beta_regime(x, beta_star * (1 - 1e-6))
    assert bool(above.single_condition.all()) and not bool(below.single_condition.any())
    assert bool(above.isolated.all()) and not bool(above.global_condition)
    assert above.names() == ["single", "single"] and below.names() == ["metastable", "metastable"]


@given(problems(min_n=2), st.floats(0.01, 0.99))
def test_small_beta_global_averaging(problem, fraction):
    x, xi, _ = problem
    x = x - x.mean(0)  # centred data: the mean (0) is a fixed point with uniform weights
    m_max = float(x.norm(dim=-1).max())
    assume(m_max > 1e-3)
    beta = fraction / m_max**2
    res = H.beta_regime(x, beta)
    assert bool(res.global_condition) and res.names() == ["global"] * x.shape[0]
    mean = x.mean(0)
    assert float((H.retrieval_map(mean, x, beta=beta) - mean).norm()) <= 1e-12 * (1 + m_max)
    # contraction with constant L = beta m_max^2 < 1: |xi_t - xi*| <= residual_t / (1 - L)
    fp = fixed_point(xi, x, beta=beta, tol=1e-12, max_iter=5000)
    assert fp.converged
    assert float((fp.state - mean).norm()) <= 1e-12 / (1 - fraction) + 1e-12 * (1 + m_max)


def test_tiny_beta_makes_the_stated_single_pattern_condition_vacuous():
    """As beta -> 0, 2/(beta N) + ln(2(N-1)N beta M^2)/beta -> -inf, so Delta_i >= threshold holds even
    for a duplicated pattern; the sphere S_i (radius 1/(beta N M)) then covers the other patterns, which
    is why beta_regime also requires disjoint spheres (Definition 1)."""
    x = torch.tensor([[1.0, 0.0], [1.0, 0.0], [0.0, 1.0]], dtype=F64)  # x_0 == x_1: Delta_0 = 0
    res = H.beta_regime(x, 1e-3)
    assert bool(res.single_condition.all())
    assert not bool(res.isolated.any())
    assert res.names() == ["global"] * 3
    res = H.beta_regime(x, 50.0)  # not global; duplicates are never isolated: metastable
    assert res.names()[:2] == ["metastable", "metastable"] and res.names()[2] == "single"


@given(separated_problems(kappa=(7.0, 20.0)))
def test_large_beta_single_pattern_regime(problem):
    x, i, _, beta = problem
    beta = 20 * beta  # deep in the single-pattern regime
    res = H.beta_regime(x, beta)
    assert res.names() == ["single"] * x.shape[0]
    star = fixed_point(x[i], x, beta=beta, tol=1e-13, max_iter=100).state
    assert float((star - x[i]).norm()) <= float(res.sphere_radius)  # Lemma A6: fixed point in S_i


@given(cluster_problems())
def test_near_duplicates_are_metastable(problem):
    x, size, beta = problem
    res = H.beta_regime(x, beta)
    assert not bool(res.global_condition)
    assert res.names() == ["metastable"] * x.shape[0]
    # and the dynamics agree: from a stored pattern the iteration settles on an average of its cluster
    fp = fixed_point(x, x, beta=beta, tol=1e-12, max_iter=2000)
    k = H.metastability_count(H.retrieval_weights(fp.state, x, beta=beta))
    assert bool((k >= 2).all()) and bool((k <= size).all())


# ----------------------------------------------------------------------------------------------------------
# Separation, metastability statistic


@given(problems(min_n=2))
def test_separation_matches_definition(problem):
    x, _, _ = problem
    delta = H.separation(x)
    g = x @ x.T
    for i in range(x.shape[0]):
        expected = g[i, i] - max(g[i, j] for j in range(x.shape[0]) if j != i)
        assert float(delta[i]) == pytest.approx(float(expected), abs=1e-12 * (1 + float(g.abs().max())))


@given(separated_problems())
def test_separation_equal_norms_parallelogram(problem):
    x, _, _, _ = problem
    x = x / x.norm(dim=-1, keepdim=True)
    d2 = torch.cdist(x, x) ** 2
    d2.fill_diagonal_(math.inf)
    torch.testing.assert_close(H.separation(x), 0.5 * d2.min(-1).values, rtol=0, atol=1e-12)


@given(hnp.arrays(np.float64, st.integers(1, 12), elements=st.floats(0, 10)), st.floats(0.05, 1.0))
def test_metastability_count_is_minimal(weights, mass):
    w = torch.from_numpy(weights)
    assume(float(w.sum()) > 0)
    k = int(H.metastability_count(w, mass))
    top = w.sort(descending=True).values.cumsum(0)
    target = mass * float(w.sum())
    slack = len(w) * EPS64 * float(w.sum())
    assert 1 <= k <= len(w)
    assert float(top[k - 1]) >= target - slack or k == len(w)
    if k > 1:
        assert float(top[k - 2]) < target - slack


def test_metastability_count_and_class_examples():
    assert int(H.metastability_count(torch.tensor([0.0, 1.0, 0.0]))) == 1
    assert int(H.metastability_count(torch.full((10,), 0.1, dtype=F64))) == 9  # 0.1 * 9 rounds below 0.9
    assert int(H.metastability_count(torch.full((7,), 1 / 7))) == 7
    assert H.metastability_count(torch.softmax(torch.randn(4, 3, 16), -1)).shape == (4, 3)
    n = 64
    assert [H.metastability_class(k, n) for k in (64, 33, 32, 9, 8, 3, 2, 1)] == [
        "I", "I", "II", "II", "III", "III", "IV", "IV"]
    assert H.metastability_class(torch.tensor([1, 2, 40, 50, 60]), n) == "I"
    # BERT (N = 512): thresholds 256 / 64 / 16; at N = 128 they are 4 times smaller (paper A.5.1.3)
    assert [H.metastability_class(k, 512) for k in (257, 256, 65, 64, 17, 16)] == [
        "I", "II", "II", "III", "III", "IV"]
    assert [H.metastability_class(k, 128) for k in (65, 64, 17, 16, 5, 4)] == [
        "I", "II", "II", "III", "III", "IV"]


# ----------------------------------------------------------------------------------------------------------
# Bad input


X3 = torch.randn(5, 3, dtype=F64)
XI3 = torch.randn(3, dtype=F64)


@pytest.mark.parametrize(
    "call, match",
    [
        (lambda: H.energy(torch.randn(4, dtype=F64), X3, 1.0), r"patterns must have shape \(\.\.\., N, d\) with d = xi"),
        (lambda: H.retrieval_map(torch.randn(4, dtype=F64), X3), r"keys must have shape .* d = xi\.shape\[-1\] = 4"),
        (lambda: H.retrieval_map(XI3, X3, beta=0.0), r"beta must be > 0"),
        (lambda: H.retrieval_map(XI3, X3, beta=-1.0), r"beta must be > 0"),
        (lambda: H.energy(XI3, X3, 1.0, alpha=0.5), r"alpha must be >= 1"),
        (lambda: H.retrieval_map(XI3, X3, beta=float("nan")), r"beta must be finite"),
        (lambda: H.retrieval_map(torch.tensor([0.0, math.nan, 1.0], dtype=F64), X3), r"xi must be finite"),
        (lambda: H.retrieval_map(XI3, X3.clone().fill_(math.inf)), r"keys must be finite"),
        (lambda: H.retrieval_map(XI3, X3, torch.randn(4, 2, dtype=F64)), r"values must have shape \(\.\.\., N, dv\) with N = keys"),
        (lambda: H.retrieval_map(XI3, X3.float()), r"same dtype"),
        (lambda: H.retrieval_map(XI3.int(), X3), r"xi must have a floating dtype"),
        (lambda: H.retrieval_map(torch.randn(2, 3, dtype=F64), torch.randn(4, 5, 3, dtype=F64)), r"must broadcast"),
        (lambda: H.retrieval_map(XI3, torch.zeros(0, 3, dtype=F64)), r"at least one pattern"),
        (lambda: fixed_point(XI3, X3, tol=-1.0), r"tol must be >= 0"),
        (lambda: fixed_point(XI3, X3, max_iter=-1), r"max_iter must be an int >= 0"),
        (lambda: H.separation(X3[:1]), r"patterns must have shape \(\.\.\., N, d\) with N >= 2"),
        (lambda: H.metastability_count(torch.tensor([0.5, -0.1])), r"weights must be non-negative"),
        (lambda: H.metastability_count(torch.tensor([0.5, 0.5]), mass=0.0), r"mass must be > 0"),
        (lambda: H.metastability_class(3, 0), r"n must be an int >= 1"),
        (lambda: H.beta_regime(X3, 0.0), r"beta must be > 0"),
        (lambda: H.capacity_constant(1.0, 3.0, 1, 0.001), r"d must be an int >= 2"),
        (lambda: H.capacity_constant(1.0, 3.0, 20, 0.0), r"p must be > 0"),
        (lambda: H.capacity_constant(1.0, -3.0, 20, 0.1), r"K must be > 0"),
        (lambda: H.retrieval_error_bound(XI3, X3, 5, 1.0), r"index must be an int in \[0, N\)"),
        (lambda: H.retrieval_error_bound(XI3, X3, torch.tensor(7), 1.0), r"index must be in \[0, N\)"),
        (lambda: H.tsallis_conjugate(torch.tensor([1.0, math.inf]), 1.5), r"theta must be finite"),
    ],
)
def test_bad_input_raises_value_error_naming_argument(call, match):
    with pytest.raises(ValueError, match=match):
        call()


def test_non_tensor_input_raises_type_error():
    with pytest.raises(TypeError, match="xi must be a torch.Tensor"):
        H.retrieval_map([1.0, 2.0, 3.0], X3)


def test_normalize_is_the_single_normalizer():
    """retrieval_weights is exactly normalize(beta K xi) (no re-implementation)."""
    for alpha in ALPHAS:
        torch.testing.assert_close(
            H.retrieval_weights(XI3, X3, beta=1.7, alpha=alpha), normalize(1.7 * (X3 @ XI3), alpha=alpha), rtol=0, atol=0
        )


def test_retrieval_error_bound_tensor_index_matches_int_index():
    gen = torch.Generator().manual_seed(3)
    x = torch.randn(4, 5, 3, generator=gen, dtype=F64)
    xi = torch.randn(4, 3, generator=gen, dtype=F64)
    index = torch.tensor([0, 4, 2, 2])
    batched = H.retrieval_error_bound(xi, x, index, 2.0)
    single = torch.stack([H.retrieval_error_bound(xi[b], x[b], int(index[b]), 2.0) for b in range(4)])
    torch.testing.assert_close(batched, single, rtol=0, atol=0)
    # a single key retrieves itself: infinite margin; dense: no margin
    assert float(H.exact_retrieval_margin(xi[0], x[0, :1], beta=1.0, alpha=1.5)) == math.inf
    assert H.exact_retrieval_margin(xi, x, beta=1.0, alpha=1.0).shape == (4,)
