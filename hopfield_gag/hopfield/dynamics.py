r"""Modern Hopfield networks: energies, retrieval maps and Jacobians (fixed points by iteration:
:func:`hopfield_gag.fixed_point`, a solver call in :mod:`hopfield_gag.solvers`).

Conventions (Santos et al. 2024; the transpose of Ramsauer et al. 2021): stored patterns are the ROWS
of ``keys`` / ``patterns`` with shape ``(..., N, d)``, values have shape ``(..., N, dv)``, the state
(query) ``xi`` has shape ``(..., d)``. Leading dimensions broadcast. :math:`\beta > 0` is the inverse
temperature, :math:`\alpha \ge 1` selects the normalizer (1 = softmax / dense, 2 = sparsemax,
:math:`\alpha > 1` = :math:`\alpha`-entmax); every normalization goes through
:func:`hopfield_gag.ops.normalizers.normalize`. :math:`M = \max_i \lVert x_i\rVert`.

Retrieval (update) map, one attention step:

.. math::  T(\xi) = V^\top \hat p, \qquad \hat p = \alpha\text{-entmax}(\beta K \xi),

with :math:`V = K = X` in the Hopfield case. It is the CCCP step of the energy

.. math::

    E(\xi) = -\beta^{-1}\Omega^*_\alpha(\beta X\xi) + \beta^{-1} H_\alpha(u) + \tfrac12\lVert\xi\rVert^2
    + \tfrac12 M^2,

(Hopfield–Fenchel–Young energy; at :math:`\alpha = 1`, :math:`\Omega^*_1 = \mathrm{logsumexp}`,
:math:`H_1(u) = \log N` and this is exactly Ramsauer's energy), so :math:`E(T\xi) \le E(\xi)`,
:math:`\nabla E = \xi - T(\xi)` and fixed points of :math:`T` are the stationary points of :math:`E`.

References
----------
* H. Ramsauer et al., "Hopfield Networks is All You Need", ICLR 2021, arXiv 2008.02217 (energy §2,
  Theorems 1–5, appendix A.1.5 fixed-point regimes, §4 metastability statistic).
* S. Santos, V. Niculae, D. McNamee, A. Martins, "Sparse and Structured Hopfield Networks", ICML 2024,
  arXiv 2402.13725 (Hopfield–Fenchel–Young energies, margins and exact retrieval).
"""
from __future__ import annotations

import math

import torch
from torch import Tensor

from .._validation import check_finite, check_int, check_qkv, check_scalar, check_tensor, compute_dtype
from ..ops.normalizers import jacobian_weights, normalize

__all__ = [
    "tsallis_entropy",
    "tsallis_conjugate",
    "energy",
    "energy_grad",
    "retrieval_weights",
    "retrieval_map",
    "retrieval_jacobian",
    "exact_retrieval_margin",
]

# ----------------------------------------------------------------------------------------------------------
# Input handling


def _check_beta_alpha(beta, alpha) -> tuple[float, float]:
    beta = check_scalar("beta", beta, gt=0.0)
    alpha = check_scalar("alpha", alpha, ge=1.0)
    return beta, alpha


def _check_problem(
    xi: Tensor,
    keys: Tensor,
    values: Tensor | None = None,
    *,
    xi_name: str = "xi",
    keys_name: str = "keys",
) -> torch.Size:
    """Validate a (state, keys[, values]) triple (``_validation.check_qkv`` in its Hopfield form: one state
    (..., d) per batch element, patterns as rows); return the broadcast batch shape."""
    return check_qkv(xi, keys, values, names=(xi_name, keys_name, "values"), length="N", item="pattern",
                     q_vector=True)


def _scores(xi: Tensor, keys: Tensor) -> Tensor:
    """K xi along the last dims: (..., N).

    Written as a row times K^T so that a batch of states against shared keys folds into one GEMM
    (``keys @ xi[..., None]`` broadcasts the keys into one matrix-vector product per state).
    """
    return (xi.unsqueeze(-2) @ keys.mT).squeeze(-2)


def _weights_keys_values(xi, keys, values, beta, alpha) -> tuple[Tensor, Tensor, Tensor]:
    """Validate, cast to the compute dtype and normalize: (weights (..., N), keys, values) in that dtype
    (values = keys when ``values`` is None). The shared first step of every retrieval function."""
    _check_problem(xi, keys, values)
    beta, alpha = _check_beta_alpha(beta, alpha)
    cd = compute_dtype(xi.dtype)
    k = keys.to(cd)
    v = k if values is None else values.to(cd)
    return normalize(beta * _scores(xi.to(cd), k), alpha=alpha, dim=-1), k, v


def _uniform_entropy(n: int, alpha: float) -> float:
    r""":math:`H_\alpha(u)` of the uniform distribution on ``n`` points."""
    if alpha == 1.0:
        return math.log(n)
    # 1 - n^(1 - alpha) by expm1: no cancellation as alpha -> 1 (tsallis_entropy)
    return -math.expm1((1.0 - alpha) * math.log(n)) / (alpha * (alpha - 1.0))


def _nonneg(x: Tensor) -> Tensor:
    """max(x, 0) in value with the gradient of x: removes rounding below 0 of a quantity that is >= 0
    in exact arithmetic without cutting its gradient."""
    return x + (x.clamp_min(0.0) - x).detach()


# ----------------------------------------------------------------------------------------------------------
# Entropies


def tsallis_entropy(p: Tensor, alpha: float, dim: int = -1) -> Tensor:
    r"""Tsallis :math:`\alpha`-entropy of a distribution (Shannon at :math:`\alpha = 1`).

    .. math::

        H^T_\alpha(p) = \frac{1 - \sum_j p_j^\alpha}{\alpha(\alpha-1)} \;(\alpha > 1), \qquad
        H^T_1(p) = -\sum_j p_j \log p_j.

    This is the convention of the ``entmax`` package and of Blondel et al. (2020): :math:`\alpha`-entmax
    maximizes :math:`p^\top z + H^T_\alpha(p)` over the simplex.

    Evaluated as :math:`-\sum_j p_j\,\mathrm{expm1}((\alpha-1)\log p_j)/(\alpha(\alpha-1))`, which equals
    the formula on the simplex and whose rounding stays relative to the result as :math:`\alpha \to 1`
    (:math:`1 - \sum_j p_j^\alpha` cancels to :math:`\epsilon/(\alpha-1)` there: 2e-4 wrong at
    :math:`\alpha = 1 + 10^{-12}`). Its gradient differs from the formula's by the constant
    :math:`1/(\alpha(\alpha-1))` in every coordinate, the derivative of :math:`(1 - \sum_j p_j)/(\alpha(\alpha-1))`,
    which vanishes along the simplex; entries with :math:`p_j = 0` get gradient 0.

    Parameters
    ----------
    p : Tensor (..., n, ...)   points of the simplex along ``dim``.
    alpha : float, :math:`\alpha \ge 1`.
    dim : int, the simplex dimension.

    Returns
    -------
    Tensor, ``p``'s shape without ``dim``.

    References: Blondel, Martins & Niculae, JMLR 2020 (arXiv 1901.02324); Santos et al. 2024
    (arXiv 2402.13725).
    """
    check_tensor("p", p, min_dim=1)
    alpha = check_scalar("alpha", alpha, ge=1.0)
    if alpha == 1.0:
        return -torch.special.xlogy(p, p).sum(dim)
    positive = p > 0
    log_p = torch.log(torch.where(positive, p, torch.ones_like(p)))  # no log(0): its gradient would be NaN
    terms = torch.where(positive, p * torch.expm1((alpha - 1.0) * log_p), torch.zeros_like(p))
    return -terms.sum(dim) / (alpha * (alpha - 1.0))


def tsallis_conjugate(theta: Tensor, alpha: float, dim: int = -1) -> Tensor:
    r"""Convex conjugate :math:`\Omega^*_\alpha` of the negative Tsallis entropy restricted to the simplex.

    .. math::

        \Omega^*_\alpha(\theta) = \max_{p\in\triangle} \langle p,\theta\rangle + H^T_\alpha(p)
        = \langle p^*,\theta\rangle + H^T_\alpha(p^*), \quad p^* = \alpha\text{-entmax}(\theta),

    evaluated by this formula for every :math:`\alpha \ge 1` (at :math:`\alpha = 1` it equals
    :math:`\mathrm{logsumexp}(\theta)` only mathematically, which the tests use as a check). Its gradient
    is :math:`p^*`.

    Parameters
    ----------
    theta : Tensor (..., n, ...)   scores.
    alpha : float, :math:`\alpha \ge 1`.
    dim : int.

    Returns
    -------
    Tensor, ``theta``'s shape without ``dim``.

    References: Blondel et al., JMLR 2020 (arXiv 1901.02324); Santos et al. 2024 (arXiv 2402.13725), §3.
    """
    check_tensor("theta", theta, min_dim=1)
    check_finite("theta", theta)
    alpha = check_scalar("alpha", alpha, ge=1.0)
    p = normalize(theta, alpha=alpha, dim=dim)
    return (p * theta).sum(dim) + tsallis_entropy(p, alpha, dim)


# ----------------------------------------------------------------------------------------------------------
# Energy


def energy(xi: Tensor, patterns: Tensor, beta: float, alpha: float = 1.0) -> Tensor:
    r"""Modern Hopfield energy: Ramsauer's dense energy (:math:`\alpha = 1`) and the
    Hopfield–Fenchel–Young :math:`\alpha`-entmax energy (:math:`\alpha > 1`).

    .. math::

        E(\xi) = -\beta^{-1}\Omega^*_\alpha(\beta X\xi) + \beta^{-1} H_\alpha(u)
                 + \tfrac12\lVert\xi\rVert^2 + \tfrac12 M^2,

    with :math:`\Omega^*_\alpha` as in :func:`tsallis_conjugate`, :math:`M = \max_i\lVert x_i\rVert`,
    :math:`H_\alpha(u) = (1 - N^{1-\alpha})/(\alpha(\alpha-1))` (:math:`\log N` at :math:`\alpha = 1`).
    At :math:`\alpha = 1` this is :math:`-\mathrm{lse}(\beta, X\xi) + \tfrac12\xi^\top\xi + \beta^{-1}\log N
    + \tfrac12 M^2` (Ramsauer et al., Eq. 2) exactly.

    Evaluated in the shifted form of Ramsauer's appendix A.1.2: with
    :math:`z_i = -\tfrac12\big(M^2 - \lVert x_i\rVert^2 + \lVert x_i - \xi\rVert^2\big) \le 0` (which
    differs from :math:`x_i^\top\xi` by a constant) and :math:`z' = z - \max z`,

    .. math::

        E = -\max_i z_i \;-\; \langle \hat p, z'\rangle \;+\; \beta^{-1}\big(H_\alpha(u) - H^T_\alpha(\hat p)\big)
        \quad(\alpha > 1), \qquad
        E = -\max_i z_i - \beta^{-1}\log\tfrac1N\textstyle\sum_i e^{\beta z'_i} \quad(\alpha = 1),

    where :math:`\hat p = \alpha\text{-entmax}(\beta z')`. Every term is non-negative, so
    :math:`E \ge 0` holds in floating point too (the entropy gap is clipped at 0 against rounding, keeping
    its gradient), and no large terms cancel when :math:`\xi \approx x_i`.

    Parameters
    ----------
    xi : Tensor (..., d)
        State.
    patterns : Tensor (..., N, d)
        Stored patterns as rows; batch dims broadcast with ``xi``'s.
    beta : float
        Inverse temperature, > 0.
    alpha : float, default 1.0
        :math:`\alpha \ge 1`.

    Returns
    -------
    Tensor (...), same dtype as ``xi`` (half types computed in fp32). Differentiable; the gradient is
    :func:`energy_grad`. Memory is O(batch · N · d) (pairwise differences).

    References: Ramsauer et al. 2021 (arXiv 2008.02217), Eq. (2), appendix A.1.2 and Lemma A1; Santos et
    al. 2024 (arXiv 2402.13725), Hopfield–Fenchel–Young energy.
    """
    _check_problem(xi, patterns, xi_name="xi", keys_name="patterns")
    beta, alpha = _check_beta_alpha(beta, alpha)
    cd = compute_dtype(xi.dtype)
    q = xi.to(cd)
    x = patterns.to(cd)
    n = x.shape[-2]
    sq_norms = (x * x).sum(-1)  # (..., N)
    m2 = sq_norms.amax(-1, keepdim=True)
    dist2 = (x - q.unsqueeze(-2)).pow(2).sum(-1)  # (..., N), no cancellation near xi = x_i
    z = -0.5 * ((m2 - sq_norms) + dist2)
    z_max = z.amax(-1, keepdim=True)
    zs = z - z_max  # <= 0, max exactly 0
    if alpha == 1.0:
        # mean of values in (0, 1] is <= 1 in floating point, so the log term is <= 0.
        out = -z_max.squeeze(-1) - torch.log(torch.exp(beta * zs).mean(-1)) / beta
    else:
        p = normalize(beta * zs, alpha=alpha, dim=-1)
        linear = -(p * zs).sum(-1)  # >= 0 term by term
        gap = _nonneg(_uniform_entropy(n, alpha) - tsallis_entropy(p, alpha))
        out = -z_max.squeeze(-1) + linear + gap / beta
    return out.to(xi.dtype)


def energy_grad(xi: Tensor, patterns: Tensor, beta: float, alpha: float = 1.0) -> Tensor:
    r"""Gradient of :func:`energy` in closed form: :math:`\nabla_\xi E = \xi - T(\xi)`.

    Follows from :math:`\nabla\Omega^*_\alpha(\theta) = \alpha\text{-entmax}(\theta)`, so fixed points of
    the retrieval map are exactly the stationary points of the energy.

    Parameters
    ----------
    xi : Tensor (..., d);  patterns : Tensor (..., N, d);  beta : float > 0;  alpha : float >= 1.

    Returns
    -------
    Tensor (broadcast batch, d).

    References: Ramsauer et al. 2021 (arXiv 2008.02217), Theorem A1 (CCCP); Santos et al. 2024
    (arXiv 2402.13725).
    """
    return xi - retrieval_map(xi, patterns, beta=beta, alpha=alpha)


# ----------------------------------------------------------------------------------------------------------
# Retrieval map


def retrieval_weights(xi: Tensor, keys: Tensor, beta: float = 1.0, alpha: float = 1.0) -> Tensor:
    r"""Retrieval (attention) weights :math:`\hat p = \alpha\text{-entmax}(\beta K\xi)`.

    Parameters
    ----------
    xi : Tensor (..., d)
        State / query.
    keys : Tensor (..., N, d)
        Keys (stored patterns) as rows.
    beta : float, default 1.0
        Inverse temperature, > 0.
    alpha : float, default 1.0
        :math:`\alpha \ge 1` (1 = softmax).

    Returns
    -------
    Tensor (..., N) on the simplex, dtype of ``xi`` (half types computed in fp32).

    References: Ramsauer et al. 2021 (arXiv 2008.02217), Eq. (3); Santos et al. 2024 (arXiv 2402.13725).
    """
    p, _, _ = _weights_keys_values(xi, keys, None, beta, alpha)
    return p.to(xi.dtype)


def retrieval_map(
    xi: Tensor, keys: Tensor, values: Tensor | None = None, beta: float = 1.0, alpha: float = 1.0
) -> Tensor:
    r"""One retrieval step (one attention step) :math:`T(\xi) = V^\top\,\alpha\text{-entmax}(\beta K\xi)`.

    ``values=None`` means :math:`V = K` (the Hopfield update, Ramsauer Eq. 3 in row convention);
    :math:`V \ne K` is an attention layer, which reuses this code.

    Parameters
    ----------
    xi : Tensor (..., d)
    keys : Tensor (..., N, d)
    values : Tensor (..., N, dv), optional
    beta : float > 0;  alpha : float >= 1.

    Returns
    -------
    Tensor (..., dv) in the convex hull of the value rows; dtype of ``xi``.

    References: Ramsauer et al. 2021 (arXiv 2008.02217), Eq. (3) and §3; Santos et al. 2024
    (arXiv 2402.13725).
    """
    p, _, v = _weights_keys_values(xi, keys, values, beta, alpha)
    return (p.unsqueeze(-2) @ v).squeeze(-2).to(xi.dtype)


def retrieval_jacobian(
    xi: Tensor, keys: Tensor, values: Tensor | None = None, beta: float = 1.0, alpha: float = 1.0
) -> Tensor:
    r"""Jacobian of :func:`retrieval_map` with respect to ``xi``.

    .. math::

        \frac{\partial T}{\partial\xi} = \beta\,V^\top\Big(\mathrm{diag}(s) - \frac{s s^\top}{\mathbf 1^\top s}\Big)K,
        \qquad s = \text{jacobian\_weights}(\hat p, \alpha) = \hat p^{\,2-\alpha}\,\mathbb 1[\hat p > 0].

    For :math:`V = K` (``values=None``) it is :math:`\beta\,\mathrm{Var}_{\tilde p}[x]\cdot\mathbf 1^\top s`
    with :math:`\tilde p = s/\mathbf 1^\top s`: symmetric positive semi-definite. It vanishes where the
    weights are one-hot (:math:`\alpha > 1`, exact retrieval). At a support change of entmax the map is
    not differentiable; this returns the one-sided Jacobian of the current support.

    Parameters
    ----------
    xi : Tensor (..., d);  keys : Tensor (..., N, d);  values : Tensor (..., N, dv), optional;
    beta : float > 0;  alpha : float >= 1.

    Returns
    -------
    Tensor (..., dv, d), dtype of ``xi``.

    References: Ramsauer et al. 2021 (arXiv 2008.02217), appendix A.1.5.1; Peters et al. 2019
    (arXiv 1905.05702) for the entmax Jacobian.
    """
    p, k, v = _weights_keys_values(xi, keys, values, beta, alpha)
    beta, alpha = _check_beta_alpha(beta, alpha)
    s = jacobian_weights(p, alpha)  # (..., N)
    ssum = s.sum(-1)[..., None, None]
    vs = (s.unsqueeze(-2) @ v).squeeze(-2)  # (..., dv)
    ks = (s.unsqueeze(-2) @ k).squeeze(-2)  # (..., d)
    weighted = (v * s.unsqueeze(-1)).transpose(-1, -2) @ k  # V^T diag(s) K
    jac = beta * (weighted - vs.unsqueeze(-1) * ks.unsqueeze(-2) / ssum)
    return jac.to(xi.dtype)


def exact_retrieval_margin(xi: Tensor, keys: Tensor, beta: float = 1.0, alpha: float = 1.5) -> Tensor:
    r"""Margin of the one-step exact-retrieval condition of :math:`\alpha`-entmax.

    .. math::  m(\xi) = \beta\,\big(s_{(1)} - s_{(2)}\big) - \frac{1}{\alpha - 1}, \qquad s = K\xi,

    where :math:`s_{(1)} \ge s_{(2)}` are the two largest scores. If :math:`m \ge 0` the weights are
    exactly one-hot on the top key, so :math:`T(\xi)` equals that pattern exactly (the entmax margin
    :math:`1/(\alpha-1)` of Fenchel–Young losses). Softmax (:math:`\alpha = 1`) has no finite margin:
    returns :math:`-\infty`. With a single key (:math:`N = 1`) returns :math:`+\infty`.

    Parameters
    ----------
    xi : Tensor (..., d);  keys : Tensor (..., N, d);  beta : float > 0;  alpha : float >= 1.

    Returns
    -------
    Tensor (...), dtype of ``xi``.

    References: Santos et al. 2024 (arXiv 2402.13725), margins and exact retrieval; Blondel et al. 2020
    (arXiv 1901.02324), Prop. on margins of Fenchel–Young losses.
    """
    batch = _check_problem(xi, keys)
    beta, alpha = _check_beta_alpha(beta, alpha)
    cd = compute_dtype(xi.dtype)
    if alpha == 1.0:
        return torch.full(batch, -math.inf, dtype=xi.dtype, device=xi.device)
    s = _scores(xi.to(cd), keys.to(cd))
    if s.shape[-1] == 1:
        return torch.full(batch, math.inf, dtype=xi.dtype, device=xi.device)
    top2 = s.topk(2, dim=-1).values
    return (beta * (top2[..., 0] - top2[..., 1]) - 1.0 / (alpha - 1.0)).to(xi.dtype)
