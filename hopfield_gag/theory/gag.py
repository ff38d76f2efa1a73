r"""GAG in the theory's terms: the rule on output vectors (:func:`gag_output`), on one attention call
(:func:`gag_update`), the map on Hopfield states (:func:`gag_map`), and its contraction properties
(``THEORY.md`` T8). (Formerly ``theory/contraction.py``; that import path still works.)

Notation as in :mod:`hopfield_gag.theory.discrepancy`.
"""
from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Callable

import torch
from torch import Tensor

from .._validation import check_int, check_output_pair, check_scalar, check_tensor, compute_dtype
from ..ops.combine import cap_factor, combine
from ..ops.params import GagParams
from ..hopfield.dynamics import retrieval_map
from ..hopfield.diagnostics import separation
from .discrepancy import sparse_dense_discrepancy

__all__ = [
    "norm_cap",
    "gag_output",
    "gag_update",
    "gag_map",
    "iterate_map",
    "LipschitzEstimate",
    "lipschitz_estimate",
    "GagContractionBound",
    "gag_contraction_bound",
]

# the GAG map
# ----------------------------------------------------------------------------------------------------
def norm_cap(g: Tensor, eta: float | None) -> Tensor:
    r"""Norm cap :math:`\mathrm{cap}_\eta(g) = g\min(1, \eta/\lVert g\rVert)` along the last dim.

    It is the Euclidean projection onto the ball :math:`\{\lVert x\rVert \le \eta\}`, hence
    1-Lipschitz (firmly non-expansive). ``eta=None`` means no cap. :math:`\mathrm{cap}_\eta(0) = 0`.
    """
    if eta is None:
        return g
    eta = check_scalar("eta", eta, gt=0.0)
    factor, _ = cap_factor(torch.linalg.vector_norm(g, dim=-1), eta)
    return g * factor.unsqueeze(-1)


def gag_output(
    dense: Tensor, sparse: Tensor, lam: float = GagParams.lam, eta: float | None = GagParams.eta,
    zeta: float = GagParams.zeta, parallel: str = GagParams.parallel, *, params: GagParams | None = None,
) -> Tensor:
    r"""The GAG formula on output vectors (:func:`hopfield_gag.ops.combine.combine` with ``method="gag"``).

    .. math::

        \Delta = s - d,\quad c = \frac{\langle\Delta, s\rangle}{\lVert s\rVert^2}\ (0 \text{ if } \lVert s\rVert^2
        \text{ is not a normal float; } \texttt{combine}),
        \quad g = c\,s + \zeta(\Delta - c\,s),\quad
        o = s + \lambda\, g \min\!\big(1, \eta/\lVert g\rVert\big).

    Special cases (exact, :mod:`hopfield_gag.theory.symbolic`): ``lam = 0`` gives :math:`s`; ``zeta = 1``
    uncapped gives PLADIS :math:`d + (1 + \lambda)(s - d)`; ``zeta = 0`` uncapped gives
    :math:`(1 + \lambda c)s`. Always :math:`\lVert o - s\rVert \le \lambda\eta`.

    Parameters
    ----------
    dense, sparse : Tensor (..., dv)
        Dense and sparse attention outputs (broadcastable, same dtype).
    lam : float >= 0
        GAG scale :math:`\lambda` (paper default 10).
    eta : float > 0 or None
        Norm cap :math:`\eta` (paper default 15); ``None`` = no cap.
    zeta : float in [0, 1]
        Weight of the orthogonal part (paper default 0).
    parallel : {"paper", "positive"}
        ``"positive"`` replaces :math:`c` by :math:`\max(c, 0)` in the parallel part.
    params : GagParams, optional
        The four options above as one validated :class:`~hopfield_gag.GagParams` (its ``method`` is not read);
        then they are not passed separately.

    Returns
    -------
    Tensor (..., dv) in the input dtype (computed in fp32 for half inputs).

    References: GAG (arXiv 2603.02531) Eq. 12–13 as reimplemented by iljung1106/Krea2-Training-Free-
    Improvements ``guidance_math.py`` and kmittle/RepLDM ``attention_baselines.py``.
    """
    check_output_pair(dense, sparse)
    if params is not None:  # the validated parameter object supplies lam, eta, zeta, parallel
        if (lam, eta, zeta, parallel) != (GagParams.lam, GagParams.eta, GagParams.zeta, GagParams.parallel):
            raise TypeError("gag_output: pass either params or lam/eta/zeta/parallel, not both")
        return combine(params.replace(method="gag"), dense, sparse).output.to(dense.dtype)
    lam = check_scalar("lam", lam, ge=0.0)
    zeta = check_scalar("zeta", zeta, ge=0.0, le=1.0)
    return combine("gag", dense, sparse, lam=lam, eta=eta, zeta=zeta, parallel=parallel).output.to(dense.dtype)


def gag_update(
    q: Tensor,
    k: Tensor,
    v: Tensor | None = None,
    lam: float = GagParams.lam,
    eta: float | None = GagParams.eta,
    zeta: float = 0.0,
    scale: float | None = None,
    alpha: float = 1.5,
    mask: Tensor | None = None,
    parallel: str = "paper",
) -> Tensor:
    r"""GAG attention output :math:`o = s + \lambda\,\mathrm{cap}_\eta(\tilde c\,s + \zeta\Delta_\perp)`
    for (q, k, v): :func:`sparse_dense_discrepancy` followed by :func:`gag_output` (``parallel`` as there:
    :math:`\tilde c = c` for ``"paper"``, :math:`\max(c, 0)` for ``"positive"``).

    Returns
    -------
    Tensor (..., Lq, dv), input dtype.
    """
    disc = sparse_dense_discrepancy(q, k, v, scale, alpha, mask)
    return gag_output(disc.dense, disc.sparse, lam, eta, zeta, parallel).to(q.dtype)


def gag_map(
    xi: Tensor,
    patterns: Tensor,
    beta: float,
    lam: float = GagParams.lam,
    eta: float | None = GagParams.eta,
    zeta: float = 0.0,
    alpha: float = 1.5,
    parallel: str = "paper",
) -> Tensor:
    r"""The GAG map on Hopfield states, :math:`G(\xi) = T_s(\xi) + \lambda\,\mathrm{cap}_\eta(\tilde c\,T_s(\xi)
    + \zeta\Delta_\perp)`, with :math:`T_s, T_d` the sparse/dense retrieval maps
    (:func:`hopfield_gag.hopfield.retrieval_map`, patterns as keys and values).

    Parameters
    ----------
    xi : Tensor (..., d);  patterns : Tensor (..., N, d);  beta : float > 0;  lam, eta, zeta, parallel : as in
    :func:`gag_output`;  alpha : float > 1.

    Returns
    -------
    Tensor (..., d). Properties (``THEORY.md`` T8): :math:`\lVert G(\xi) - T_s(\xi)\rVert \le \lambda\eta`;
    Banach contraction on the invariant set of :func:`gag_contraction_bound`.
    """
    alpha = check_scalar("alpha", alpha, gt=1.0)  # > 1: the sparse branch (alpha = 1 would give Delta = 0)
    s = retrieval_map(xi, patterns, beta=beta, alpha=alpha)
    d = retrieval_map(xi, patterns, beta=beta, alpha=1.0)
    return gag_output(d, s, lam, eta, zeta, parallel)


def iterate_map(fn: Callable[[Tensor], Tensor], x0: Tensor, steps: int) -> Tensor:
    r"""Trajectory :math:`x_0, f(x_0), \dots, f^{\text{steps}}(x_0)` stacked on a new leading dim.

    Returns
    -------
    Tensor (steps + 1, *x0.shape).
    """
    check_int("steps", steps, ge=0)
    xs = [x0]
    for _ in range(steps):
        xs.append(fn(xs[-1]))
    return torch.stack(xs)


@dataclass(frozen=True)
class LipschitzEstimate:
    r"""Result of :func:`lipschitz_estimate`.

    Attributes
    ----------
    ratios : Tensor (...)   :math:`\lVert f(x) - f(y)\rVert / \lVert x - y\rVert` per pair.
    max_ratio : float       the largest ratio (a lower bound on the Lipschitz constant on the sample).
    """

    ratios: Tensor
    max_ratio: float


def lipschitz_estimate(fn: Callable[[Tensor], Tensor], x: Tensor, y: Tensor) -> LipschitzEstimate:
    r"""Empirical Lipschitz ratios of a map on sampled pairs.

    .. math::  r(x, y) = \frac{\lVert f(x) - f(y)\rVert}{\lVert x - y\rVert}.

    ``max_ratio <= 1`` on a sample is evidence of non-expansiveness (never a proof); ``max_ratio > 1``
    on any pair disproves it.

    Parameters
    ----------
    fn : callable (..., d) -> (..., d')
    x, y : Tensor (..., d), same shape; every pair must be distinct.

    Returns
    -------
    LipschitzEstimate
    """
    check_tensor("x", x, min_dim=1)
    check_tensor("y", y, min_dim=1)
    if x.shape != y.shape:
        raise ValueError(f"x and y must have the same shape, got {tuple(x.shape)} and {tuple(y.shape)}")
    dx = torch.linalg.vector_norm(x - y, dim=-1)
    if bool((dx == 0).any()):
        raise ValueError("x and y must differ in every pair (found x == y)")
    ratios = torch.linalg.vector_norm(fn(x) - fn(y), dim=-1) / dx
    return LipschitzEstimate(ratios=ratios, max_ratio=float(ratios.max()))


@dataclass(frozen=True)
class GagContractionBound:
    r"""Sufficient conditions of ``THEORY.md`` T8 for pattern :math:`i` (all tensors (..., N)).

    Attributes
    ----------
    gap : Tensor
        :math:`\gamma_1`: the invariant set is :math:`R_i(\gamma_1) = \{\xi : \beta(x_i - x_j)^\top\xi \ge
        \gamma_1\ \forall j \ne i\}`. For :math:`\zeta = 0`, :math:`\gamma_1 = \beta\Delta_i`.
    exact : Tensor bool
        :math:`\gamma_1 \ge 1/(\alpha-1)`: on :math:`R_i(\gamma_1)` the sparse map is exactly
        :math:`T_s \equiv x_i`, and :math:`R_i(\gamma_1)` is mapped into itself by :math:`G`.
    lipschitz : Tensor
        :math:`L = \lambda\beta D_i^2\varepsilon`, :math:`\varepsilon = \frac{(N-1)e^{-\gamma_1}}{1 +
        (N-1)e^{-\gamma_1}}`, :math:`D_i = \max_j\lVert x_j - x_i\rVert`: a Lipschitz constant of
        :math:`G` on :math:`R_i(\gamma_1)` (when ``exact``).
    contraction : Tensor bool
        ``exact & (lipschitz < 1)``: :math:`G` is a Banach contraction of :math:`R_i(\gamma_1)`.
    dense_error : Tensor
        :math:`\varepsilon D_i \ge \lVert x_i - T_d(\xi)\rVert` on :math:`R_i(\gamma_1)`; the fixed point
        :math:`\xi_G` satisfies :math:`\lVert\xi_G - x_i\rVert \le \lambda\min(\eta, \varepsilon D_i)`.
    """

    gap: Tensor
    exact: Tensor
    lipschitz: Tensor
    contraction: Tensor
    dense_error: Tensor


def gag_contraction_bound(
    patterns: Tensor,
    beta: float,
    lam: float,
    eta: float | None = GagParams.eta,
    zeta: float = 0.0,
    alpha: float = 1.5,
) -> GagContractionBound:
    r"""Certificate that the GAG map is a Banach contraction near each stored pattern (``THEORY.md`` T8).

    Let :math:`\gamma_0 = 1/(\alpha-1)`, :math:`\varepsilon(\gamma) = \frac{(N-1)e^{-\gamma}}{1 +
    (N-1)e^{-\gamma}}`, :math:`D_i = \max_j\lVert x_j - x_i\rVert`. For :math:`\zeta = 0`,
    :math:`\gamma_1 = \beta\Delta_i`; for :math:`\zeta > 0`, :math:`\gamma_1 = \beta\Delta_i -
    \lambda\beta D_i\min(\eta, D_i\varepsilon(\gamma_0))`. If :math:`\gamma_1 \ge \gamma_0` then
    :math:`G(R_i(\gamma_1)) \subset R_i(\gamma_1)` and :math:`G` is :math:`L`-Lipschitz there with
    :math:`L = \lambda\beta D_i^2\varepsilon(\gamma_1)`.

    Parameters
    ----------
    patterns : Tensor (..., N, d), N >= 2;  beta : float > 0;  lam : float >= 0;
    eta : float > 0 or None;  zeta : float in [0, 1];  alpha : float > 1.

    Returns
    -------
    GagContractionBound
    """
    beta = check_scalar("beta", beta, gt=0.0)
    lam = check_scalar("lam", lam, ge=0.0)
    zeta = check_scalar("zeta", zeta, ge=0.0, le=1.0)
    alpha = check_scalar("alpha", alpha, gt=1.0)
    if eta is not None:
        eta = check_scalar("eta", eta, gt=0.0)
    cd = compute_dtype(patterns.dtype)
    x = patterns.to(cd)
    delta_i = separation(x)  # validates patterns
    n = x.shape[-2]
    dist = torch.cdist(x, x)
    d_i = dist.amax(-1)
    gamma0 = 1.0 / (alpha - 1.0)

    def eps(g):
        # (N-1) e^-g / (1 + (N-1) e^-g) as a logistic: finite at every g (the quotient is inf/inf = NaN once
        # e^-g overflows, i.e. gamma_1 < -709 far outside the regime, where eps = 1)
        return torch.sigmoid(math.log(n - 1) - g)

    if zeta == 0.0:
        gamma1 = beta * delta_i
    else:
        e0 = eps(torch.full_like(delta_i, gamma0))
        move = d_i * e0 if eta is None else torch.clamp(d_i * e0, max=eta)
        gamma1 = beta * delta_i - lam * beta * d_i * move
    exact = gamma1 >= gamma0
    e1 = eps(gamma1)
    lip = lam * beta * d_i**2 * e1
    return GagContractionBound(
        gap=gamma1, exact=exact, lipschitz=lip, contraction=exact & (lip < 1), dense_error=e1 * d_i
    )
