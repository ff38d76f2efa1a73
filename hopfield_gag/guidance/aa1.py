r"""Attention extrapolation read as first-order Anderson acceleration, AA(1) (``THEORY.md``, "Extrapolation
as first-order Anderson acceleration").

With the sparse output as the newest image :math:`g(x_k) = s` and the dense output as the previous image
:math:`g(x_{k-1}) = d`, one AA(1) step is :math:`s - \gamma(s - d)`. PLADIS is AA(1) with
:math:`\gamma = 1 - \lambda`; GAG is AA(1) on the capped projected difference.
"""
from __future__ import annotations

import warnings
from dataclasses import dataclass
from typing import Optional

import torch
from torch import Tensor

from .._validation import (
    check_choice, check_finite, check_output_pair, check_qkv, check_scalar, check_tensor, check_tensor_pair, compute_dtype,
    default_scale,
)
from ..ops.combine import aa1_gamma, aa_token_scale, combine, gag_difference, parallel_coefficient
from ..ops.params import GagParams
from ..theory.discrepancy import sparse_dense_discrepancy

__all__ = [
    "AA1Extrapolation",
    "extrapolation_as_aa",
    "aa1_mixing",
    "AdaptiveScale",
    "aa_scale_from_retrievals",
    "aa_adaptive_scale",
]


# ----------------------------------------------------------------------------------------------------------
# Attention extrapolation read as AA(1)

METHODS = ("pladis", "gag")
_DEFAULT_LAM = {"pladis": 2.0, "gag": 10.0}


@dataclass(frozen=True)
class AA1Extrapolation:
    r"""An attention extrapolation written as one AA(1) step :math:`o = s - \gamma\,D`.

    With the sparse output as the newest image :math:`g(x_k) = s` and the dense output as the previous
    image :math:`g(x_{k-1}) = d`, AA(1) is :math:`s - \gamma(s - d)`. A method is "AA(1)" if its output has
    this form with some coefficient :math:`\gamma` and some difference :math:`D` derived from
    :math:`s - d`.

    Attributes
    ----------
    method : str
    gamma : Tensor (...)
        Per-token mixing coefficient :math:`\gamma`.
    difference : Tensor (..., dv)
        The difference :math:`D` it multiplies: :math:`s - d` (PLADIS) or
        :math:`P_\zeta(s - d) = \Delta_\parallel + \zeta\Delta_\perp` (GAG).
    output : Tensor (..., dv)
        :math:`s - \gamma D`, equal to the method's own formula.
    newest, previous : Tensor (..., dv)
        :math:`s` and :math:`d`.
    cap_factor : Tensor (...)
        :math:`\min(1, \eta/\lVert D\rVert)` for GAG (1 for PLADIS).
    zeta : float
        Orthogonal weight (GAG; 1.0 for PLADIS, whose difference is not projected).
    parallel : str
        GAG's parallel rule, ``"paper"`` or ``"positive"`` (:func:`hopfield_gag.ops.combine.combine`).
    """

    method: str
    gamma: Tensor
    difference: Tensor
    output: Tensor
    newest: Tensor
    previous: Tensor
    cap_factor: Tensor
    zeta: float
    parallel: str = "paper"

    def mixing_operator(self) -> Tensor:
        r"""Matrix :math:`\Gamma` with :math:`o = s - \Gamma(s - d)` (a matrix-valued AA(1) coefficient).

        PLADIS: :math:`\Gamma = \gamma I`. GAG: :math:`\Gamma = \gamma\,(\zeta I + (\kappa-\zeta)\hat s\hat s^\top)`,
        :math:`\hat s = s/\lVert s\rVert` (the projection :math:`P_\zeta`), with the capped
        :math:`\gamma = -\lambda\min(1, \eta/\lVert P_\zeta\Delta\rVert)`; :math:`\kappa = 1`, except
        :math:`\kappa = 0` where ``parallel="positive"`` drops the parallel part (:math:`c < 0`).

        Returns
        -------
        Tensor (..., dv, dv)
        """
        s = self.newest
        dv = s.shape[-1]
        eye = torch.eye(dv, dtype=s.dtype, device=s.device)
        if self.method == "pladis":
            return self.gamma[..., None, None] * eye
        ss = (s * s).sum(-1, keepdim=True)
        tiny = torch.finfo(s.dtype).tiny  # s counts as zero below it (hopfield_gag.ops.combine)
        u = torch.where(ss > tiny, s / ss.clamp_min(tiny).sqrt(), torch.zeros_like(s))
        keep = 1.0
        if self.parallel == "positive":
            keep = (parallel_coefficient(self.previous.to(s.dtype), s) >= 0).to(s.dtype)[..., None, None]
        P = self.zeta * eye + (keep - self.zeta) * u.unsqueeze(-1) * u.unsqueeze(-2)
        return self.gamma[..., None, None] * P


def _as_scalar_or_tensor(name: str, value, ref: Tensor, **bounds):
    if isinstance(value, Tensor) and value.numel() != 1:
        check_finite(name, value)
        try:
            torch.broadcast_shapes(value.shape, ref.shape[:-1])
        except RuntimeError:
            raise ValueError(f"{name} must be a float or a tensor broadcastable to {tuple(ref.shape[:-1])}, "
                             f"got shape {tuple(value.shape)}") from None
        return value.to(ref.dtype)
    return check_scalar(name, value, **bounds)


def extrapolation_as_aa(
    dense: Tensor,
    sparse: Tensor,
    method: str,
    lam=None,
    eta: float = GagParams.eta,
    zeta: float = GagParams.zeta,
    eps: float | None = None,
    parallel: str = "paper",
) -> AA1Extrapolation:
    r"""The AA(1) step an attention extrapolation implies: :math:`o = s - \gamma D`.

    Roles: the two retrievals of the same state are read as two successive images of the retrieval map,
    :math:`g(x_{k-1}) = d` (dense, earlier/less converged) and :math:`g(x_k) = s` (sparse, newer); AA(1) is
    :math:`x_{k+1} = g(x_k) - \gamma(g(x_k) - g(x_{k-1})) = (1-\gamma)s + \gamma d`.

    * ``"pladis"`` (Kim & Sim 2025, Eq. 15): :math:`d + \lambda(s - d)` is AA(1) with the fixed
      :math:`\gamma = 1 - \lambda` and :math:`D = s - d` (:math:`\lambda > 1` ⇔ :math:`\gamma < 0`,
      extrapolation past the newest image).
    * ``"gag"`` (Kim 2026, Eq. 12–13): :math:`s + \lambda\,\mathrm{cap}_\eta(\Delta_\parallel + \zeta\Delta_\perp)`
      with :math:`\Delta = s - d`, :math:`\Delta_\parallel = (\langle\Delta, s\rangle/\lVert s\rVert^2)s`,
      :math:`\Delta_\perp = \Delta - \Delta_\parallel`, :math:`\mathrm{cap}_\eta(v) = v\min(1, \eta/\lVert v\rVert)`
      is AA(1) with the difference replaced by :math:`D = P_\zeta\Delta = \Delta_\parallel + \zeta\Delta_\perp`
      and the per-token coefficient :math:`\gamma = -\lambda\min(1, \eta/\lVert D\rVert)`. Uncapped with
      :math:`\zeta = 1` it is PLADIS with :math:`\lambda_P = 1 + \lambda`; with :math:`\zeta = 0` the
      output is :math:`(1 + \lambda c)s` (:math:`c = \langle\Delta, s\rangle/\lVert s\rVert^2`), a radial
      rescaling of :math:`s`.

    Unlike true AA(1), neither :math:`\gamma` is the least-squares coefficient (see :func:`aa1_mixing` and
    :func:`aa_adaptive_scale` for that one).

    Parameters
    ----------
    dense, sparse : Tensor (..., dv), one dtype, broadcastable leading dims
        Dense (softmax) and sparse (entmax) retrieval outputs of the same queries.
    method : {"pladis", "gag"}
    lam : float or Tensor broadcastable to (...), optional
        Extrapolation scale; default 2.0 for PLADIS (its recommended 1.5–2.0) and 10.0 for GAG.
    eta : float > 0, default 15.0
        GAG norm cap.
    zeta : float in [0, 1], default 0.0
        GAG weight of the orthogonal part.
    eps : None
        Deprecated and ignored (it was an absolute floor of :math:`\lVert s\rVert^2` and :math:`\lVert D\rVert`,
        which disagreed with the method's own formula at small norms). The small-norm rule is now the one
        of :mod:`hopfield_gag.ops.combine`, so ``output`` equals :func:`hopfield_gag.gag_attention`'s formula.
    parallel : {"paper", "positive"}
        GAG's parallel rule (:func:`hopfield_gag.ops.combine.combine`).

    Returns
    -------
    AA1Extrapolation
        ``gamma`` (...), ``difference`` (..., dv), ``output`` = ``sparse - gamma * difference`` (...,
        dv), in the dtype of the inputs (half types computed in fp32).

    References
    ----------
    K. Kim, B. Sim, "PLADIS", ICCV 2025, arXiv 2503.07677; K. Kim, "Geometry-Aware Attention Guidance",
    arXiv 2603.02531; Walker & Ni 2011 (AA(1)).
    """
    check_output_pair(dense, sparse)
    check_choice("method", method, METHODS)
    if eps is not None:
        warnings.warn("extrapolation_as_aa(eps=...) is deprecated and ignored: small norms follow the rule of "
                      "hopfield_gag.ops.combine", DeprecationWarning, stacklevel=2)
    if lam is None:
        lam = _DEFAULT_LAM[method]
    lam = _as_scalar_or_tensor("lam", lam, dense)
    dt = dense.dtype
    cd = compute_dtype(dt)
    d, s = dense.to(cd), sparse.to(cd)
    if isinstance(lam, Tensor):
        lam = lam.to(cd)
    batch = torch.broadcast_shapes(d.shape[:-1], s.shape[:-1], lam.shape if isinstance(lam, Tensor) else ())
    if method == "pladis":
        r = combine("pladis", d, s, lam=lam)
        gamma = (1.0 - r.token_scale).expand(batch)
        diff = s - d
        zeta_v = 1.0
    else:
        zeta_v = check_scalar("zeta", zeta, ge=0.0, le=1.0)
        r = combine("gag", d, s, lam=lam, eta=eta, zeta=zeta_v, parallel=parallel)
        diff = gag_difference(d, s, r.parallel_coef, zeta_v, parallel)
        gamma = (-r.token_scale).expand(batch)
    return AA1Extrapolation(
        method=method, gamma=gamma.to(dt), difference=diff.to(dt), output=r.output.to(dt), newest=sparse,
        previous=dense, cap_factor=r.cap_factor.expand(batch).to(dt), zeta=zeta_v,
        parallel=parallel if method == "gag" else "paper",
    )


def aa1_mixing(
    f_prev: Tensor, f_curr: Tensor, rel_eps: Optional[float] = None, *, check_values: bool = True
) -> tuple[Tensor, Tensor]:
    r"""AA(1)'s least-squares mixing coefficient from two residuals.

    .. math::

        \gamma^\star = \arg\min_\gamma\lVert f_k - \gamma(f_k - f_{k-1})\rVert_2
        = \frac{\langle f_k, f_k - f_{k-1}\rangle}{\lVert f_k - f_{k-1}\rVert_2^2}

    (Walker & Ni 2011 with m = 1; equivalently the minimizer of
    :math:`\lVert(1-\gamma)f_k + \gamma f_{k-1}\rVert`). The next AA(1) iterate is
    :math:`(1-\gamma^\star)g(x_k) + \gamma^\star g(x_{k-1})`. Degenerate pairs, where
    :math:`\lVert f_k - f_{k-1}\rVert^2 \le (\text{rel\_eps})^2(\lVert f_k\rVert^2 + \lVert f_{k-1}\rVert^2)`
    or it is below the smallest normal number, get :math:`\gamma^\star = 0` (keep the newest image): the
    coefficient would be rounding noise.

    Parameters
    ----------
    f_prev, f_curr : Tensor (..., n)
        Residuals :math:`f_{k-1}` and :math:`f_k`.
    rel_eps : float, optional
        Relative floor of the difference; default :math:`64\,\epsilon` of the compute dtype.
    check_values : bool
        Check finiteness (host synchronizations); ``False`` for callers whose residuals come from already
        validated inputs (``gag_attention``'s ``aa`` method).

    Returns
    -------
    gamma : Tensor (...)
        Compute dtype (fp32 for half inputs).
    degenerate : Tensor (...) bool
    """
    check_tensor_pair(f_prev, f_curr, ("f_prev", "f_curr"), same_dtype=False, same_shape=True, finite=check_values)
    cd = compute_dtype(torch.promote_types(f_prev.dtype, f_curr.dtype))
    if rel_eps is not None:
        rel_eps = check_scalar("rel_eps", rel_eps, ge=0.0)
    return aa1_gamma(f_prev.to(cd), f_curr.to(cd), rel_eps)


@dataclass(frozen=True)
class AdaptiveScale:
    r"""Result of :func:`aa_adaptive_scale` (per query token).

    Attributes
    ----------
    gamma : Tensor (..., Lq)
        AA(1) mixing coefficient after clamping, :math:`\gamma = 1 - \lambda`.
    pladis_scale : Tensor (..., Lq)
        The implied PLADIS scale :math:`\lambda = \mathrm{clamp}(1 - \gamma^\star, \text{lo}, \text{hi})`.
    gamma_raw : Tensor (..., Lq)
        Unclamped :math:`\gamma^\star` (0 where degenerate).
    degenerate : Tensor (..., Lq) bool
        :math:`\lVert f_k - f_{k-1}\rVert` at rounding level (dense ≈ sparse): :math:`\gamma^\star := 0`.
    clamped : Tensor (..., Lq) bool
        :math:`1 - \gamma^\star` fell outside ``[lo, hi]``.
    dense, sparse, output : Tensor (..., Lq, dv)
        :math:`d = \mathrm{softmax}(z)V`, :math:`s = \alpha\text{-entmax}(z)V`, and
        :math:`d + \lambda(s - d) = (1-\gamma)s + \gamma d`.
    """

    gamma: Tensor
    pladis_scale: Tensor
    gamma_raw: Tensor
    degenerate: Tensor
    clamped: Tensor
    dense: Tensor
    sparse: Tensor
    output: Tensor


def aa_scale_from_retrievals(
    query: Tensor, key_dense: Tensor, key_sparse: Tensor, lo: float = GagParams.aa_range[0],
    hi: float = GagParams.aa_range[1],
) -> tuple[Tensor, Tensor, Tensor, Tensor]:
    r"""The AA-adaptive PLADIS scale from the key-space retrievals of the same state (shared by
    :func:`aa_adaptive_scale` and ``gag_attention``'s ``method="aa"``).

    .. math::

        f_{k-1} = p_d k - \xi,\quad f_k = p_s k - \xi,\qquad
        \lambda^\star = \mathrm{clamp}\big(1 - \gamma^\star(f_{k-1}, f_k),\ \text{lo},\ \text{hi}\big)

    with :math:`\gamma^\star` from :func:`aa1_mixing` (0 for a degenerate pair, i.e. :math:`\lambda = 1`).

    Parameters
    ----------
    query : Tensor (..., Lq, d)        the states :math:`\xi` (queries, in key space).
    key_dense, key_sparse : Tensor (..., Lq, d)   :math:`p_d k` and :math:`p_s k`.
    lo, hi : float                     clamp range of :math:`\lambda`, lo < hi (not re-checked here).

    Returns
    -------
    (lam, gamma_raw, degenerate, clamped), each (..., Lq): the clamped scale, the unclamped
    :math:`\gamma^\star`, the degenerate mask and the clamp-active mask.
    """
    for name, x in (("query", query), ("key_dense", key_dense), ("key_sparse", key_sparse)):
        check_tensor(name, x, min_dim=1)
        check_finite(name, x)
    cd = compute_dtype(query.dtype)
    return aa_token_scale(query.to(cd), key_dense.to(cd), key_sparse.to(cd), lo, hi)


def aa_adaptive_scale(
    q: Tensor,
    k: Tensor,
    v: Optional[Tensor] = None,
    scale: Optional[float] = None,
    alpha: float = 1.5,
    mask: Optional[Tensor] = None,
    lo: Optional[float] = None,
    hi: Optional[float] = None,
    *,
    aa_range: Optional[tuple[float, float]] = None,
) -> AdaptiveScale:
    r"""Per-token extrapolation scale chosen by AA(1)'s own least-squares rule (no tuning).

    Hopfield reading (``THEORY.md``, "Extrapolation as first-order Anderson acceleration"): the query is
    the state :math:`\xi` (it lives in key space), :math:`\beta` = ``scale``, and the dense and sparse
    retrievals of the *same* state are two images of the retrieval map, so the AA(1) iterates coincide,
    :math:`x_{k-1} = x_k = \xi`, while the images differ. The residuals are measured where the Hopfield
    state lives, in key space:

    .. math::

        p_d = \mathrm{softmax}(z),\ p_s = \alpha\text{-entmax}(z),\ z = \text{scale}\cdot q k^\top,\qquad
        f_{k-1} = p_d k - \xi,\quad f_k = p_s k - \xi,\quad f_k - f_{k-1} = (p_s - p_d)k,

    .. math::

        \gamma^\star = \frac{\langle f_k, f_k - f_{k-1}\rangle}{\lVert f_k - f_{k-1}\rVert^2},\qquad
        \lambda^\star = 1 - \gamma^\star = \frac{\langle \xi - p_d k, (p_s - p_d)k\rangle}{\lVert (p_s - p_d)k\rVert^2},

    i.e. :math:`\lambda^\star` puts the key-space mixture :math:`((1-\gamma)p_s + \gamma p_d)k` at the point
    of the dense→sparse line closest to the state (smallest fixed-point residual). The coefficient mixes
    the *weights*, so it applies unchanged to any linear read-out: the returned output is
    :math:`((1-\gamma)p_s + \gamma p_d)v = d + \lambda(s - d)`. For :math:`v = k` this is exactly AA(1) on
    :math:`f_{k-1} = d - \xi`, :math:`f_k = s - \xi`.

    Guards: a degenerate difference (:func:`aa1_mixing`) gives :math:`\gamma^\star = 0` (:math:`\lambda = 1`,
    the sparse output; then :math:`s \approx d` in key space anyway). :math:`\lambda` is clamped to
    ``aa_range = (lo, hi)`` (default ``(0, 3)``, :class:`~hopfield_gag.GagParams`: never past the dense output, at most 1.5× PLADIS's largest
    recommended scale 2.0; bounded coefficients, :math:`|\gamma| + |1-\gamma| \le 2\,\text{hi} - 1`, are what
    the local convergence theory of Toth & Kelley 2015 assumes).

    Parameters
    ----------
    q : Tensor (..., Lq, d)
    k : Tensor (..., Lk, d)
    v : Tensor (..., Lk, dv), optional
        Values; ``None`` means ``v = k`` (the Hopfield case). Batch dims of q, k, v broadcast.
    scale : float > 0, optional
        Score scale (inverse temperature :math:`\beta`); default :math:`1/\sqrt d`.
    alpha : float > 1, default 1.5
        Entmax order of the sparse branch (PLADIS/GAG use 1.5).
    mask : Tensor, optional
        Boolean (True = keep) or additive float, broadcastable to the scores (..., Lq, Lk).
    aa_range : (float, float), default (0.0, 3.0)
        Clamp range ``(lo, hi)``, ``lo < hi``, of the PLADIS scale :math:`\lambda` (the ``aa_range`` of
        :func:`~hopfield_gag.gag_attention`'s ``method="aa"``).
    lo, hi : float, optional
        The two ends of ``aa_range`` given separately (the older spelling; either end replaces that end of
        ``aa_range``).

    Returns
    -------
    AdaptiveScale
        Per-token ``gamma``, ``pladis_scale`` (..., Lq) and the outputs (..., Lq, dv), dtype of ``q``
        (half types computed in fp32).

    References
    ----------
    Walker & Ni 2011 (AA(1)); Ramsauer et al. 2021, arXiv 2008.02217 (attention as a Hopfield update,
    re-iteration in key space); Kim & Sim 2025 (PLADIS); Toth & Kelley 2015 (bounded coefficients).
    """
    check_qkv(q, k, v)
    scale = default_scale(scale, q.shape[-1])
    alpha = check_scalar("alpha", alpha, gt=1.0)
    base = GagParams.aa_range if aa_range is None else GagParams(aa_range=aa_range).aa_range  # validated
    lo, hi = GagParams(aa_range=(base[0] if lo is None else lo, base[1] if hi is None else hi)).aa_range
    dt = q.dtype
    # the retrievals (scores, both normalizers, value- and key-space outputs) from the theory's one helper
    disc = sparse_dense_discrepancy(q, k, v, scale, alpha, mask)
    d_key, s_key = disc.key_retrievals()
    dense, sparse = disc.dense, disc.sparse
    lam, gamma_raw, degenerate, clamped = aa_token_scale(disc.queries, d_key, s_key, lo, hi)
    gamma = 1.0 - lam
    out = combine("pladis", dense, sparse, lam=lam).output  # d + lam* (s - d) per token
    return AdaptiveScale(
        gamma=gamma.to(dt), pladis_scale=lam.to(dt), gamma_raw=gamma_raw.to(dt), degenerate=degenerate,
        clamped=clamped, dense=dense.to(dt), sparse=sparse.to(dt), output=out.to(dt),
    )
