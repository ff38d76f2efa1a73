"""Self-check battery: the normalizers and the Hopfield core (registered on import)."""
from __future__ import annotations

import math

import torch

from .. import hopfield as H
from ..ops.normalizers import entmax, jacobian_vector_product, normalize
from ..solvers import fixed_point
from . import register_check

# ----------------------------------------------------------------------------------------------------------
# Random problems (float64, batched so each check makes few library calls)

F64 = torch.float64
ALPHAS = (1.0, 1.25, 1.5, 2.0, 3.0)
EPS = torch.finfo(F64).eps


def _randn(gen, *shape):
    return torch.randn(*shape, generator=gen, dtype=F64)


def _uniform(gen, lo, hi, *shape):
    return lo + (hi - lo) * torch.rand(*shape, generator=gen, dtype=F64)


def _general_problem(gen, batch=32, n=6, d=4):
    """Patterns (B, N, d) with per-problem scales in [0.3, 3], states (B, d), and a beta in [0.1, 5]."""
    scale = _uniform(gen, 0.3, 3.0, batch, 1, 1)
    x = scale * _randn(gen, batch, n, d)
    xi = scale[:, 0] * _randn(gen, batch, d)
    beta = float(_uniform(gen, 0.1, 5.0, 1))
    return x, xi, beta


def _scale(x, xi):
    """Per problem 1 + M^2 + |xi|^2: the magnitude of the energy terms. Shape (B,)."""
    return 1.0 + x.norm(dim=-1).amax(-1) ** 2 + xi.norm(dim=-1) ** 2


def _separated_problem(gen, batch=24, n=5, d=8, kappa=(7.0, 15.0)):
    """Near-orthonormal patterns of radius R in [0.5, 3] (noise 0.02 R), pattern 0 as target, a state
    within 0.05 R of it, and one beta per problem with beta (Delta_0 - 2 r M) = ln(N - 1) + kappa.

    Returns x (B, N, d), xi (B, d), beta (B,)."""
    q, _ = torch.linalg.qr(_randn(gen, batch, d, n))
    radius = _uniform(gen, 0.5, 3.0, batch, 1, 1)
    x = radius * q.transpose(-1, -2) + 0.02 * radius * _randn(gen, batch, n, d) / math.sqrt(d)
    step = _randn(gen, batch, d)
    xi = x[:, 0] + 0.05 * radius[:, 0] * step / step.norm(dim=-1, keepdim=True)
    delta = H.separation(x)[:, 0]
    big_m = x.norm(dim=-1).amax(-1)
    eff = delta - 2 * (xi - x[:, 0]).norm(dim=-1) * big_m
    beta = (math.log(n - 1) + _uniform(gen, *kappa, batch)) / eff
    return x, xi, beta


def _min(t) -> float:
    return float(torch.as_tensor(t).min())


# ----------------------------------------------------------------------------------------------------------
# Normalizer checks


@register_check("normalizer_simplex")
def _normalizer_simplex(gen):
    """normalize(z, alpha) lies on the simplex (alpha = 1, 1.25, 1.5, 2, 3; scores scaled 0.1..100)."""
    cases, worst = 0, math.inf
    z = _randn(gen, 64, 19) * torch.logspace(-1, 2, 64, dtype=F64)[:, None]
    for alpha in ALPHAS:
        p = normalize(z, alpha=alpha)
        err = torch.maximum((p.sum(-1) - 1).abs(), (-p).amax(-1).clamp_min(0))
        worst = min(worst, _min(19 * 4 * EPS - err))  # fp64 sum of 19 terms
        cases += z.shape[0]
    return cases, worst


@register_check("entmax_newton_vs_sort")
def _entmax_newton_vs_sort(gen):
    """entmax method='newton' equals the sort-based (alpha 1.5, 2) and bisection (1.25, 3) references."""
    cases, worst = 0, math.inf
    z = _randn(gen, 64, 23) * torch.logspace(-1, 2, 64, dtype=F64)[:, None]
    for alpha in (1.5, 2.0):
        diff = (entmax(z, alpha, method="newton") - entmax(z, alpha, method="sort")).abs().amax(-1)
        # both exact, p is Lipschitz in the scores here (alpha <= 2): each result is within 64 eps of
        # the O(1 + (alpha-1) max|z|) threshold-space magnitude (|z| reaches ~400), so the difference of
        # the two independent estimates is within twice that
        tol = 2 * 64 * EPS * (1 + (alpha - 1) * z.abs().amax(-1))
        worst = min(worst, _min(tol - diff))
        cases += z.shape[0]
    for alpha in (1.25, 3.0):
        # compare in threshold space, p^(alpha-1) = [(alpha-1) z - tau]_+, where an error in tau shows
        # unamplified (p itself is ill-conditioned near the support boundary for alpha > 2); tau is
        # resolved to fp64 rounding of the O(1 + (alpha-1) max|z|) scores: 64 eps times that for each of
        # the two independent estimates, so twice that for their difference.
        # The renormalization couples entries, so a threshold error delta moves p_i^(alpha-1) by up to
        # delta * kappa, kappa = 1 + sum_{j in S} p_j^(2-alpha) (d p_i/d tau = r(-y_i^(r-1) + p_i sum_j
        # y_j^(r-1)), y = p^(alpha-1), r = 1/(alpha-1)): large when alpha > 2 and an entry sits at the
        # support boundary, bounded by 1 + |S| for alpha <= 2.
        a = alpha - 1
        ref = entmax(z, alpha, method="bisect")
        diff = (entmax(z, alpha, method="newton") ** a - ref**a).abs().amax(-1)
        kappa = 1 + torch.where(ref > 0, ref, torch.ones_like(ref)).pow(1 - a).mul(ref > 0).sum(-1)
        tol = 2 * 64 * EPS * (1 + a * z.abs().amax(-1)) * kappa
        worst = min(worst, _min(tol - diff))
        cases += z.shape[0]
    return cases, worst


@register_check("normalizer_jacobian_fd")
def _normalizer_jacobian_fd(gen):
    """jacobian_vector_product matches finite differences of normalize (all alphas)."""
    cases, worst = 0, math.inf
    z = 2.0 * _randn(gen, 32, 9)
    v = _randn(gen, 32, 9)
    h = 1e-5
    for alpha in ALPHAS:
        p = normalize(z, alpha=alpha)
        jvp = jacobian_vector_product(p, v, alpha)
        stencil = [normalize(z + t * v, alpha=alpha) for t in (h, -h, h / 2, -h / 2)]
        fd_h = (stencil[0] - stencil[1]) / (2 * h)
        fd_h2 = (stencil[2] - stencil[3]) / h
        richardson = (4 * fd_h2 - fd_h) / 3
        # Only rows whose support is the same at every stencil point (one smooth piece; a support change
        # is a kink where no derivative exists).
        smooth = torch.stack([(q > 0) == (p > 0) for q in stencil]).all(0).all(-1)
        if alpha > 2:
            # p = y^(1/(alpha-1)) with y = (alpha-1) z - tau has unbounded derivatives as y -> 0; its Taylor
            # series converges only for steps below y, so require the stencil (threshold moves up to
            # 2 (alpha-1) h max|v|) to stay 100x inside the smallest y on the support.
            y = torch.where(p > 0, p ** (alpha - 1), torch.full_like(p, math.inf)).amin(-1)
            smooth &= y >= 100 * 2 * (alpha - 1) * h * v.abs().amax(-1)
        # Richardson: the O(h^2) truncation of fd_h2 is ~ |fd_h - fd_h2| / 3, large only where p has
        # large derivatives (alpha > 2 near the support boundary). Rounding: weights exact to ~8 ulps,
        # divided by h/2 and combined with weights (4, 1)/3: 256 eps / h.
        tol = 256 * EPS / h + (fd_h - fd_h2).abs().amax(-1)
        margin = tol - (jvp - richardson).abs().amax(-1)
        if bool(smooth.any()):
            worst = min(worst, _min(margin[smooth]))
        cases += int(smooth.sum())
    return cases, worst


# ----------------------------------------------------------------------------------------------------------
# Hopfield checks


@register_check("energy_nonnegative")
def _energy_nonnegative(gen):
    """Hopfield energy E(xi) >= 0 for all alphas (Ramsauer Lemma A1; HFY energy)."""
    x, xi, beta = _general_problem(gen, batch=64)
    worst = math.inf
    for alpha in ALPHAS:
        worst = min(worst, _min(H.energy(xi, x, beta, alpha)))
    return 64 * len(ALPHAS), worst


@register_check("energy_descent")
def _energy_descent(gen):
    """E(T xi) <= E(xi) along 10 updates for all alphas (CCCP)."""
    x, xi0, beta = _general_problem(gen, batch=32)
    slack = 1e-12 * _scale(x, xi0)  # fp64 rounding of the O(scale) energy terms
    worst, cases = math.inf, 0
    for alpha in ALPHAS:
        xi = xi0
        e = H.energy(xi, x, beta, alpha)
        for _ in range(10):
            xi = H.retrieval_map(xi, x, beta=beta, alpha=alpha)
            e_new = H.energy(xi, x, beta, alpha)
            worst = min(worst, _min(e - e_new + slack))
            e = e_new
            cases += x.shape[0]
    return cases, worst


@register_check("energy_gradient_fd")
def _energy_gradient_fd(gen):
    """grad E = xi - T(xi) agrees with central finite differences of the energy (all alphas)."""
    x, xi, beta = _general_problem(gen, batch=32)
    u = _randn(gen, *xi.shape)
    u = u / u.norm(dim=-1, keepdim=True)
    h = 1e-6
    worst = math.inf
    for alpha in ALPHAS:
        fd = (H.energy(xi + h * u, x, beta, alpha) - H.energy(xi - h * u, x, beta, alpha)) / (2 * h)
        exact = (H.energy_grad(xi, x, beta, alpha) * u).sum(-1)
        # exact central-difference error bound (T is the gradient of a convex function, so
        # g(t) = T(xi + t u).u is non-decreasing): |fd - exact| <= (g(h) - g(-h))/2, plus rounding.
        g_plus = (H.retrieval_map(xi + h * u, x, beta=beta, alpha=alpha) * u).sum(-1)
        g_minus = (H.retrieval_map(xi - h * u, x, beta=beta, alpha=alpha) * u).sum(-1)
        tol = 0.5 * (g_plus - g_minus) + 64 * EPS * _scale(x, xi) / h
        worst = min(worst, _min(tol - (fd - exact).abs()))
    return x.shape[0] * len(ALPHAS), worst


@register_check("convex_hull")
def _convex_hull(gen):
    """T(xi) = p^T X with p on the simplex, and |T(xi)| <= max_i |x_i| (all alphas)."""
    x, xi, beta = _general_problem(gen, batch=64)
    big_m = x.norm(dim=-1).amax(-1)
    worst = math.inf
    for alpha in ALPHAS:
        t = H.retrieval_map(xi, x, beta=beta, alpha=alpha)
        p = H.retrieval_weights(xi, x, beta=beta, alpha=alpha)
        recon = (t - (p.unsqueeze(-2) @ x).squeeze(-2)).norm(dim=-1)
        margin = torch.minimum(big_m * (1 + 1e-13) - t.norm(dim=-1), 1e-13 * (1 + big_m) - recon)
        worst = min(worst, _min(margin), _min(p))
    return 64 * len(ALPHAS), worst


@register_check("retrieval_jacobian_fd")
def _retrieval_jacobian_fd(gen):
    """retrieval_jacobian matches finite differences, and is symmetric PSD for values = keys."""
    x, xi, beta = _general_problem(gen, batch=16, n=5, d=3)
    values = _randn(gen, 16, 5, 2)
    h = 1e-6
    worst, cases = math.inf, 0
    eye = torch.eye(3, dtype=F64)
    for alpha in ALPHAS:
        for v in (None, values):
            jac = H.retrieval_jacobian(xi, x, v, beta=beta, alpha=alpha)
            cols = [
                (H.retrieval_map(xi + h * eye[k], x, v, beta=beta, alpha=alpha)
                 - H.retrieval_map(xi - h * eye[k], x, v, beta=beta, alpha=alpha)) / (2 * h)
                for k in range(3)
            ]
            fd = torch.stack(cols, -1)
            size = 1 + beta * x.abs().amax((-1, -2)) * (x if v is None else v).abs().amax((-1, -2)) * 5
            # smooth pieces: truncation O(h^2) + rounding eps/h, relative to the Jacobian's size
            worst = min(worst, _min(1e-6 * size - (jac - fd).abs().amax((-1, -2))))
            if v is None:
                sym = (jac - jac.transpose(-1, -2)).abs().amax((-1, -2))
                lam = torch.linalg.eigvalsh(0.5 * (jac + jac.transpose(-1, -2))).amin(-1)
                worst = min(worst, _min(1e-12 * size - sym), _min(lam + 1e-12 * size))
            cases += x.shape[0]
    return cases, worst


@register_check("exact_retrieval_margin")
def _exact_retrieval(gen):
    """alpha > 1: beta * gap >= 1/(alpha-1) retrieves the top pattern exactly in one step; below, not."""
    x = _randn(gen, 48, 6, 4)
    xi = _randn(gen, 48, 4)
    top2 = (x @ xi.unsqueeze(-1)).squeeze(-1).topk(2, dim=-1)
    gap = (top2.values[:, 0] - top2.values[:, 1]).unsqueeze(-1)
    x_top = x[torch.arange(48), top2.indices[:, 0]]
    worst = math.inf
    for alpha in (1.25, 1.5, 2.0, 3.0):
        # T depends on beta only through beta * xi: a per-problem beta is folded into the state
        above = 1.001 / ((alpha - 1) * gap) * xi
        below = 0.9 / ((alpha - 1) * gap) * xi
        err = (H.retrieval_map(above, x, alpha=alpha) - x_top).abs().amax(-1)
        p_max = H.retrieval_weights(below, x, alpha=alpha).amax(-1)
        # exact means error exactly 0 (margin 0); below the margin the top weight must be < 1
        worst = min(worst, _min(-err), _min(1.0 - p_max))
    return 2 * 48 * 4, worst


@register_check("theorem5_bound")
def _theorem5(gen):
    """|T(xi) - x_i| <= 2(N-1) exp(-beta(Delta_i - 2 r M)) M on separated problems (alpha 1, 1.5, 2)."""
    x, xi, beta = _separated_problem(gen, kappa=(1.0, 12.0))
    bound = torch.stack([H.retrieval_error_bound(xi[b], x[b], 0, float(beta[b])) for b in range(x.shape[0])])
    worst = math.inf
    for alpha in (1.0, 1.5, 2.0):
        # per-problem beta folded into the state (T depends on beta * xi only)
        err = (H.retrieval_map(beta.unsqueeze(-1) * xi, x, alpha=alpha) - x[:, 0]).norm(dim=-1)
        worst = min(worst, _min(bound * (1 + 1e-10) - err))  # relative fp64 slack on the exp
    return 3 * x.shape[0], worst


@register_check("capacity_constants")
def _capacity(gen):
    """Theorem 3 capacity constants of the paper's worked cases: c = 3.1546 and 1.3718 (truncated)."""
    del gen
    c1 = H.capacity_constant(1.0, 3.0, 20, 0.001)
    c2 = H.capacity_constant(1.0, 1.0, 75, 0.001)
    margins = [c1 - 3.1546, 3.1547 - c1, c2 - 1.3718, 1.3719 - c2]
    return 2, min(margins)


@register_check("fixed_point_retrieval")
def _fixed_point_retrieval(gen):
    """fixed_point from near x_i converges to x_i* with |x_i* - x_i| <= 2e(N-1)M exp(-beta Delta_i)."""
    x, xi, beta = _separated_problem(gen, batch=16)
    worst, cases = math.inf, 0
    for b in range(x.shape[0]):
        bt = float(beta[b])
        res = fixed_point(xi[b], x[b], beta=bt, tol=1e-12, max_iter=200)
        dist = float((res.state - x[b, 0]).norm())
        bound = float(H.stored_pattern_error_bound(x[b], bt)[0])
        worst = min(worst, (bound * (1 + 1e-8) + 1e-12 - dist) if res.converged else -math.inf)
        cases += 1
    return cases, worst


@register_check("global_averaging")
def _global_averaging(gen):
    """beta m_max^2 < 1 on centred data: regime 'global' and fixed_point converges to the mean (0)."""
    x = _randn(gen, 16, 6, 3)
    x = x - x.mean(-2, keepdim=True)
    m_max = x.norm(dim=-1).amax(-1)
    xi = _randn(gen, 16, 3)
    worst = math.inf
    for b in range(16):
        beta = 0.5 / float(m_max[b]) ** 2  # contraction constant L = 1/2
        regime = H.beta_regime(x[b], beta)
        res = fixed_point(xi[b], x[b], beta=beta, tol=1e-12, max_iter=2000)
        mean = x[b].mean(0)
        # |xi - xi*| <= residual / (1 - L) = 2e-12 for a contraction, plus rounding of the mean
        margin = 2e-12 + 1e-13 * (1 + float(m_max[b])) - float((res.state - mean).norm())
        ok = bool(regime.global_condition) and res.converged
        worst = min(worst, margin if ok else -math.inf)
    return 16, worst


@register_check("single_pattern_sphere")
def _single_pattern_sphere(gen):
    """Patterns labelled 'single' by beta_regime have a fixed point within 1/(beta N M) (Lemmas A5-A7)."""
    x, _, beta = _separated_problem(gen, batch=16)
    worst, cases = math.inf, 0
    for b in range(x.shape[0]):
        bt = 20.0 * float(beta[b])
        regime = H.beta_regime(x[b], bt)
        res = fixed_point(x[b], x[b], beta=bt, tol=1e-13, max_iter=200)  # every pattern at once
        dist = (res.state - x[b]).norm(dim=-1)
        single = regime.regime == regime.SINGLE
        if bool(single.any()):
            worst = min(worst, _min(float(regime.sphere_radius) - dist[single]))
            cases += int(single.sum())
    return cases, worst


