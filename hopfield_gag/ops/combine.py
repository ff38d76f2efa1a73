r"""One home for the guidance rules: how a dense and a sparse retrieval of the same query are combined.

Every caller (the production op :func:`hopfield_gag.gag_attention`, the AA(1) reading
:func:`hopfield_gag.extrapolation_as_aa`, the theory's :func:`hopfield_gag.gag_output` /
:func:`hopfield_gag.gag_map`, the symbolic library checks, the adapters) goes through :func:`combine`. The
float64 loop oracle (:mod:`hopfield_gag.guidance.reference`) is the one deliberate second implementation.

Per (token, head), with dense output :math:`d`, sparse output :math:`s` (both (..., dv)) and
:math:`\Delta = s - d`:

.. math::

    c = \frac{\langle\Delta, s\rangle}{\lVert s\rVert^2},\qquad
    \Delta_\parallel = c\,s,\qquad \Delta_\perp = \Delta - \Delta_\parallel .

=========== ====================================================================================
``dense``   :math:`d`
``sparse``  :math:`s`
``pladis``  :math:`d + \lambda(s - d)` (Kim & Sim 2025, Eq. 15)
``gag``     :math:`s + \lambda\,\mathrm{cap}_\eta(g)`, :math:`g = \tilde c\,s + \zeta\Delta_\perp`,
            :math:`\mathrm{cap}_\eta(g) = g\min(1, \eta/\lVert g\rVert)`; :math:`\tilde c = c` for
            ``parallel="paper"`` (GAG, arXiv 2603.02531, Eq. 12–13) and :math:`\tilde c = \max(c, 0)`
            for ``parallel="positive"`` (amplify :math:`\Delta_\parallel` only where it points along
            :math:`s`; with :math:`\zeta = 0` the paper's rule flips the sign of the output where
            :math:`c < -1/\lambda`)
``aa``      :math:`d + \lambda^\star(s - d)`, :math:`\lambda^\star = \mathrm{clamp}(1 - \gamma^\star, lo, hi)`,
            :math:`\gamma^\star` the AA(1) least-squares coefficient of the key-space residuals
            :math:`f_{k-1} = p_d k - \xi`, :math:`f_k = p_s k - \xi` (:func:`aa_token_scale`)
=========== ====================================================================================

Small-norm convention (one rule, used everywhere)
-------------------------------------------------
* :math:`\lVert s\rVert \to 0`: :math:`s` is treated as the zero vector (:math:`c = 0`,
  :math:`\Delta_\parallel = 0`, :math:`\Delta_\perp = \Delta`) exactly when :math:`\lVert s\rVert^2`, computed
  in the compute dtype (fp32 for half inputs, else the input dtype), is not a positive *normal* number,
  i.e. :math:`\lVert s\rVert^2 \le` ``torch.finfo(compute_dtype).tiny`` (1.2e-38 in fp32, 2.2e-308 in
  fp64). Why: above that threshold :math:`\langle\Delta, s\rangle` and :math:`\lVert s\rVert^2` each carry a
  relative error of at most :math:`n u` (:math:`u` the unit roundoff), so :math:`c` is accurate to a few
  ulps and is exactly invariant under rescaling :math:`(d, s) \to (t d, t s)` — as the formula is. Below
  it, :math:`\lVert s\rVert^2` is subnormal (fewer than :math:`p` significant bits) or zero and the quotient
  is no longer accurate to :math:`u`. An absolute floor such as ``clamp_min(1e-12)`` is not a property of
  any dtype: it rescales :math:`c` by :math:`\lVert s\rVert^2/10^{-12}` and, at
  :math:`\lVert s\rVert \approx 10^{-7}`, moved the GAG output by 94% of :math:`\lVert s\rVert`. The rule
  keeps :math:`\lVert\Delta_\parallel\rVert \le \lVert\Delta\rVert` (a projection), so nothing blows up as
  :math:`s \to 0`; the direction of a tiny :math:`s` may be rounding noise, which is the theory's concern
  (:func:`hopfield_gag.theory.discrepancy.noise_floor`), not the rule's.
* :math:`\lVert g\rVert \to 0`: no threshold is needed. The cap divides by :math:`\lVert g\rVert` only where
  :math:`\lVert g\rVert > \eta > 0`; elsewhere the factor is exactly 1, so :math:`g = 0` gives :math:`o = s`.
* AA(1): a pair of residuals whose difference is at rounding level (:math:`\lVert f_k - f_{k-1}\rVert^2 \le
  (64u)^2(\lVert f_k\rVert^2 + \lVert f_{k-1}\rVert^2)` or not a normal number) has no least-squares
  coefficient above noise: :math:`\gamma^\star := 0` (:math:`\lambda^\star = 1`, the sparse output).

All divisions use a ``where`` with a safe denominator, so gradients stay finite in the untaken branch.
Everything here is a pure, differentiable tensor function with no host synchronization.
"""
from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import Tensor

from .._validation import check_choice, check_scalar, compute_dtype
from .codes import METHOD_NAMES, PARALLEL_NAMES
from .params import GagParams

__all__ = [
    "COMBINE_METHODS",
    "PARALLEL_RULES",
    "Combined",
    "combine",
    "parallel_coefficient",
    "cap_factor",
    "gag_difference",
    "aa1_gamma",
    "aa_token_scale",
]

COMBINE_METHODS = METHOD_NAMES  # ("dense", "sparse", "pladis", "gag", "aa"): names of ops/codes.Method
PARALLEL_RULES = PARALLEL_NAMES
_D = GagParams()  # the defaults (their one home: ops/params.py)


_AA_REL_EPS = 64.0  # AA(1) degenerate-pair floor, in units of the compute dtype's eps


@dataclass(frozen=True)
class Combined:
    r"""Result of :func:`combine`, in the compute dtype (fp32 for half inputs).

    Attributes
    ----------
    output : Tensor (..., dv)
        The method's output :math:`o`.
    parallel_coef : Tensor (...)
        :math:`c = \langle\Delta, s\rangle/\lVert s\rVert^2` (0 where :math:`s` counts as zero; module doc).
    cap_active : Tensor (...) bool
        ``gag``: :math:`\lVert g\rVert > \eta`. False for the other methods and for ``eta=None``.
    token_scale : Tensor (...)
        Effective per-token scale: ``gag`` :math:`\lambda\min(1, \eta/\lVert g\rVert)`; ``pladis``
        :math:`\lambda`; ``aa`` :math:`\lambda^\star`; ``dense``/``sparse`` 0/1.
    cap_factor : Tensor (...)
        ``gag``: :math:`\min(1, \eta/\lVert g\rVert)`; 1 elsewhere.
    """

    output: Tensor
    parallel_coef: Tensor
    cap_active: Tensor
    token_scale: Tensor
    cap_factor: Tensor


def _safe_div(num: Tensor, den: Tensor, ok: Tensor) -> Tensor:
    """num/den where ``ok``, else 0 (no inf in the untaken branch, so gradients stay finite)."""
    return torch.where(ok, num / torch.where(ok, den, torch.ones_like(den)), torch.zeros_like(num))


def _sq_norm_and_c(dense: Tensor, sparse: Tensor) -> tuple[Tensor, Tensor]:
    s_norm = torch.linalg.vector_norm(sparse, dim=-1)
    ss = s_norm * s_norm
    # c = <s - d, s>/|s|^2 = (|s|^2 - <d, s>)/|s|^2: one norm and one dot product, Delta never materialized
    c = _safe_div(ss - torch.linalg.vecdot(dense, sparse), ss, ss > torch.finfo(ss.dtype).tiny)
    return s_norm, c


def parallel_coefficient(dense: Tensor, sparse: Tensor) -> Tensor:
    r""":math:`c = \langle s - d, s\rangle/\lVert s\rVert^2` along the last dim; 0 where
    :math:`\lVert s\rVert^2 \le` ``finfo.tiny`` (module doc). Inputs (..., dv) of one floating dtype,
    broadcastable; returns (...) in that dtype (callers pass the compute dtype)."""
    return _sq_norm_and_c(dense, sparse)[1]


def cap_factor(norm: Tensor, eta: float | None) -> tuple[Tensor, Tensor]:
    r"""The norm cap's factor :math:`\min(1, \eta/\lVert g\rVert)` from :math:`\lVert g\rVert` (...), and
    where it binds (:math:`\lVert g\rVert > \eta`). ``eta=None``: no cap (factor 1). The division happens
    only where :math:`\lVert g\rVert > \eta > 0`, so :math:`g \to 0` needs no threshold."""
    if eta is None:
        return torch.ones_like(norm), torch.zeros_like(norm, dtype=torch.bool)
    active = norm > eta
    return torch.where(active, eta / torch.where(active, norm, torch.ones_like(norm)), torch.ones_like(norm)), active


def _amplified(c: Tensor, parallel: str) -> Tensor:
    return c if parallel == "paper" else c.clamp_min(0.0)


def gag_difference(dense: Tensor, sparse: Tensor, c: Tensor, zeta: float, parallel: str = "paper") -> Tensor:
    r"""GAG's projected difference :math:`g = \tilde c\,s + \zeta\Delta_\perp = \zeta\Delta + (\tilde c -
    \zeta c)s` (:math:`\tilde c = c` for ``"paper"``, :math:`\max(c, 0)` for ``"positive"``), with ``c`` from
    :func:`parallel_coefficient`. Shapes (..., dv), (..., dv), (...); returns (..., dv)."""
    return zeta * (sparse - dense) + (_amplified(c, parallel) - zeta * c).unsqueeze(-1) * sparse


def aa1_gamma(f_prev: Tensor, f_curr: Tensor, rel_eps: float | None = None) -> tuple[Tensor, Tensor]:
    r"""AA(1)'s least-squares coefficient :math:`\gamma^\star = \langle f_k, f_k - f_{k-1}\rangle /
    \lVert f_k - f_{k-1}\rVert^2` (Walker & Ni 2011, m = 1) along the last dim, and the degenerate mask
    (module doc: :math:`\gamma^\star := 0` there). Inputs (..., n) of one dtype (the compute dtype);
    ``rel_eps`` defaults to :math:`64\,\epsilon`. Unchecked: :func:`hopfield_gag.aa1_mixing` validates."""
    if rel_eps is None:
        rel_eps = _AA_REL_EPS * torch.finfo(f_curr.dtype).eps
    diff = f_curr - f_prev
    den = torch.linalg.vecdot(diff, diff)
    scale = torch.linalg.vecdot(f_prev, f_prev) + torch.linalg.vecdot(f_curr, f_curr)
    degenerate = (den <= rel_eps**2 * scale) | (den <= torch.finfo(den.dtype).tiny)
    return _safe_div(torch.linalg.vecdot(f_curr, diff), den, ~degenerate), degenerate


def aa_token_scale(
    query: Tensor, key_dense: Tensor, key_sparse: Tensor, lo: float = _D.aa_range[0], hi: float = _D.aa_range[1]
) -> tuple[Tensor, Tensor, Tensor, Tensor]:
    r"""The per-token AA(1) scale :math:`\lambda^\star = \mathrm{clamp}(1 - \gamma^\star(p_d k - \xi,\ p_s k -
    \xi), lo, hi)` from the query :math:`\xi` and its key-space retrievals (all (..., d), compute dtype).

    Returns (lam, gamma_raw, degenerate, clamped), each (...).
    """
    gamma_raw, degenerate = aa1_gamma(key_dense - query, key_sparse - query)
    lam_raw = 1.0 - gamma_raw
    return lam_raw.clamp(lo, hi), gamma_raw, degenerate, (lam_raw < lo) | (lam_raw > hi)


def _vec(x):
    """A per-token scalar (float or Tensor (...)) ready to multiply (..., dv) vectors."""
    return x.unsqueeze(-1) if isinstance(x, Tensor) else x


def combine(
    method: str | GagParams,
    dense: Tensor,
    sparse: Tensor,
    *,
    lam: float | Tensor = _D.lam,
    eta: float | None = _D.eta,
    zeta: float = _D.zeta,
    parallel: str = _D.parallel,
    q_key: Tensor | None = None,
    dense_key: Tensor | None = None,
    sparse_key: Tensor | None = None,
    aa_range: tuple[float, float] = _D.aa_range,
) -> Combined:
    r"""Combine a dense and a sparse retrieval per (token, head) (formulas and small-norm rule: module doc).

    Parameters
    ----------
    method : {"dense", "sparse", "pladis", "gag", "aa"} or GagParams
        A :class:`~hopfield_gag.ops.params.GagParams` supplies ``method``, ``lam``, ``eta``, ``zeta``,
        ``parallel`` and ``aa_range`` (already validated; the keyword options below are then not read).
    dense, sparse : Tensor (..., dv)
        :math:`d` and :math:`s`, one floating dtype, broadcastable leading dims. Computed in fp32 for half
        types, else in their dtype; the result stays in that compute dtype (callers cast back).
    lam : float or Tensor broadcastable to (...)
        :math:`\lambda` of ``pladis`` and ``gag`` (a tensor gives a per-token scale; not re-checked).
        Any finite value is computed; the public callers restrict it (``gag_attention``: ``lam >= 0``).
    eta : float > 0 or None
        Norm cap of ``gag``; ``None`` = no cap.
    zeta : float in [0, 1]
        Weight of :math:`\Delta_\perp` in ``gag``.
    parallel : {"paper", "positive"}
        ``gag``'s parallel rule: the paper's :math:`c\,s`, or :math:`\max(c, 0)\,s`.
    q_key, dense_key, sparse_key : Tensor (..., d)
        ``aa`` only: the query :math:`\xi` and its key-space retrievals :math:`p_d k`, :math:`p_s k`.
    aa_range : (lo, hi)
        ``aa`` only: clamp range of :math:`\lambda^\star`, lo < hi.

    Returns
    -------
    Combined

    Raises
    ------
    ValueError
        Unknown ``method`` or ``parallel``; non-finite ``lam``, ``eta <= 0``, ``zeta`` outside [0, 1]; ``aa``
        without the key-space retrievals.
    """
    if isinstance(method, GagParams):
        p = method
        method, lam, eta, zeta, parallel, aa_range = p.method, p.lam, p.eta, p.zeta, p.parallel, p.aa_range
    else:
        check_choice("method", method, COMBINE_METHODS)
        check_choice("parallel", parallel, PARALLEL_RULES)
        if not isinstance(lam, Tensor):
            lam = check_scalar("lam", lam)  # callers bound its sign (gag_attention: >= 0)
        if eta is not None:
            eta = check_scalar("eta", eta, gt=0.0)
        zeta = check_scalar("zeta", zeta, ge=0.0, le=1.0)
    cd = compute_dtype(torch.promote_types(dense.dtype, sparse.dtype))
    d, s = dense.to(cd), sparse.to(cd)
    if isinstance(lam, Tensor):
        lam = lam.to(cd)
    s_norm, c = _sq_norm_and_c(d, s)
    ones = torch.ones_like(c)
    no_cap = torch.zeros_like(c, dtype=torch.bool)
    if method == "dense":
        return Combined(d, c, no_cap, torch.zeros_like(c), ones)
    if method == "sparse":
        return Combined(s, c, no_cap, ones, ones)
    if method == "pladis":
        return Combined(torch.lerp(d, s, _vec(lam)), c, no_cap, lam * ones, ones)
    if method == "aa":
        if q_key is None or dense_key is None or sparse_key is None:
            raise ValueError("method='aa' needs q_key, dense_key and sparse_key (the key-space retrievals)")
        lam_tok = aa_token_scale(q_key.to(cd), dense_key.to(cd), sparse_key.to(cd), *aa_range)[0]
        return Combined(torch.lerp(d, s, lam_tok.unsqueeze(-1)), c, no_cap, lam_tok, ones)
    # gag
    c_amp = _amplified(c, parallel)
    if zeta == 0.0:
        g, gnorm = None, c_amp.abs() * s_norm  # g = c~ s is never materialized
    else:
        g = gag_difference(d, s, c, zeta, parallel)
        gnorm = torch.linalg.vector_norm(g, dim=-1)
    factor, cap_active = cap_factor(gnorm, eta)
    token_scale = lam * factor
    if g is None:
        # o = s + lam * factor * c~ * s: a radial rescaling of the sparse output (THEORY.md)
        out = s * (1.0 + token_scale * c_amp).unsqueeze(-1)
    else:
        out = torch.addcmul(s, token_scale.unsqueeze(-1), g)
    return Combined(out, c, cap_active, token_scale, factor)
