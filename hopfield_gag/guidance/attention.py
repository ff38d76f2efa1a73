r"""The production op: geometry-aware attention guidance (GAG) and its special cases.

For queries :math:`q` (B, H, Lq, D), keys :math:`k` (B, H, Lk, D) and values :math:`v` (B, H, Lk, Dv), with
scores :math:`z = \text{scale}\cdot q k^\top` (+ mask), the dense and sparse retrievals of the *same* scores
are

.. math::

    d = \mathrm{softmax}(z)\,v, \qquad s = \alpha\text{-entmax}(z)\,v, \qquad \Delta = s - d,

and, per query token and head, :math:`c = \langle\Delta, s\rangle/\lVert s\rVert^2`,
:math:`\Delta_\parallel = c\,s`, :math:`\Delta_\perp = \Delta - \Delta_\parallel`. The methods:

=========== =========================================================================================
``dense``   :math:`d`, computed by ``F.scaled_dot_product_attention`` itself
``sparse``  :math:`s`
``pladis``  :math:`d + \lambda(s - d)` (Kim & Sim 2025, Eq. 15)
``gag``     :math:`s + \lambda\,\mathrm{cap}_\eta(\Delta_\parallel + \zeta\Delta_\perp)`,
            :math:`\mathrm{cap}_\eta(g) = g\min(1, \eta/\lVert g\rVert)` (GAG, arXiv 2603.02531, Eq. 12–13
            as reimplemented by two independent ports; ``THEORY.md``)
``aa``      :math:`d + \lambda^\star(s - d)` with the per-token AA(1) least-squares scale
            :math:`\lambda^\star = 1 - \gamma^\star` of :func:`hopfield_gag.anderson.aa_adaptive_scale`,
            clamped to ``aa_range``
=========== =========================================================================================

Finally ``strength`` :math:`t` returns :math:`d + t(o - d)`; :math:`t = 0` returns
``F.scaled_dot_product_attention(q, k, v, attn_mask=mask, scale=scale)`` bit for bit (the safe off switch;
the GAG rule itself at :math:`\lambda = 0` is pure sparse attention, not dense).

Implementation: queries are processed in chunks (peak extra memory bounded by a budget); per chunk the
scores are computed once, normalized densely (``torch.softmax``) and sparsely (the exact sort-free entmax of
:mod:`hopfield_gag.normalizers`, which also rejects NaN/+inf scores and fully masked rows), multiplied by
``v`` (and by ``k`` for ``aa``), and combined per (token, head) in fp32 or higher. Half-precision inputs are
computed in fp32 and the output is cast back. Everything is differentiable.

The two probability maps are multiplied by ``v`` in two matmuls, not one batched matmul over their stack:
on CPU the stacking copy costs more than it saves (measured at (2,8,1024,77)/(2,8,1024,1024): 1.59/47.4 ms
stacked vs 1.13/16.4 ms separately), and writing both maps into one preallocated buffer would need
``out=`` variants, which do not support autograd.
"""
from __future__ import annotations

import math
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import Tensor

from ..ops import normalizers
from .._validation import check_choice, check_int, check_qkv, check_scalar, compute_dtype, default_scale
from ..ops.combine import COMBINE_METHODS, PARALLEL_RULES, combine

__all__ = ["gag_attention", "GAGParts", "METHODS", "GAGAttention"]

METHODS = COMBINE_METHODS
DEFAULT_MEMORY_BUDGET = 256 * 2**20  # bytes of score-sized temporaries per chunk
_SCORE_TEMPORARIES = 5  # z, p_dense, p_sparse, and two transient buffers of the normalizers


@dataclass(frozen=True)
class GAGParts:
    r"""Intermediate quantities of :func:`gag_attention` (``return_parts=True``), in the compute dtype
    (fp32 for half inputs).

    Attributes
    ----------
    dense, sparse, delta : Tensor (B, H, Lq, Dv)
        :math:`d`, :math:`s`, :math:`\Delta = s - d`.
    parallel_coef : Tensor (B, H, Lq)
        :math:`c = \langle\Delta, s\rangle/\lVert s\rVert^2` (0 where :math:`s = 0`).
    cap_active : Tensor (B, H, Lq) bool
        ``gag``: the norm cap bound, :math:`\lVert\Delta_\parallel + \zeta\Delta_\perp\rVert > \eta`.
        False for the other methods.
    token_scale : Tensor (B, H, Lq)
        The effective per-token scale: ``aa``: :math:`\lambda^\star`; ``pladis``: :math:`\lambda`;
        ``gag``: :math:`\lambda\min(1, \eta/\lVert g\rVert)`; ``dense``/``sparse``: 0/1.
    output : Tensor (B, H, Lq, Dv)
        The method's output :math:`o` before ``strength`` is applied.
    """

    dense: Tensor
    sparse: Tensor
    delta: Tensor
    parallel_coef: Tensor
    cap_active: Tensor
    token_scale: Tensor
    output: Tensor


# ---------------------------------------------------------------------------------------------------- checks


def _check_inputs(q, k, v, mask):
    """Validate q, k, v (``_validation.check_qkv``) and the mask's type and shape; return (B, H, Lq, Lk)."""
    batch = check_qkv(q, k, v)
    scores_shape = (*batch, q.shape[-2], k.shape[-2])
    if mask is not None:
        # the full check (values, device) runs where the mask is applied to each chunk of scores
        if not isinstance(mask, torch.Tensor):
            raise TypeError(f"mask must be a torch.Tensor or None, got {type(mask).__name__}")
        try:
            ok = torch.broadcast_shapes(mask.shape, scores_shape) == torch.Size(scores_shape)
        except RuntimeError:
            ok = False
        if not ok:
            raise ValueError(f"mask of shape {tuple(mask.shape)} must be broadcastable to (B, H, Lq, Lk) = {scores_shape}")
    return scores_shape


def _check_options(method, lam, eta, zeta, alpha, strength, chunk_size, scale, d, aa_range, parallel="paper"):
    """Validate the options; ``d=None`` (no inputs yet, ``GAGAttention``) leaves a ``None`` scale unresolved."""
    check_choice("method", method, METHODS)
    check_choice("parallel", parallel, PARALLEL_RULES)
    lam = check_scalar("lam", lam, ge=0.0)
    eta = check_scalar("eta", eta, gt=0.0)
    zeta = check_scalar("zeta", zeta, ge=0.0, le=1.0)
    alpha = check_scalar("alpha", alpha, gt=1.0)
    strength = check_scalar("strength", strength, ge=0.0)
    check_int("chunk_size", chunk_size, ge=1, allow_none=True)
    scale = None if d is None and scale is None else default_scale(scale, d)
    lo, hi = (check_scalar("aa_range[0]", aa_range[0]), check_scalar("aa_range[1]", aa_range[1]))
    if not lo < hi:
        raise ValueError(f"aa_range must be (lo, hi) with lo < hi, got {aa_range}")
    return lam, eta, zeta, alpha, strength, scale, (lo, hi)


def _auto_chunk(scores_shape, itemsize: int, budget: int) -> int:
    per_query_row = max(1, math.prod(scores_shape[:-2]) * scores_shape[-1] * itemsize * _SCORE_TEMPORARIES)
    return int(max(1, min(scores_shape[-2], budget // per_query_row)))


# ---------------------------------------------------------------------------------------------------- combine


def _combine(method, d, s, lam, eta, zeta, q_key=None, kd=None, ks=None, aa_range=(0.0, 3.0), parallel="paper"):
    """Per (token, head) combination in the compute dtype (:func:`hopfield_gag.ops.combine.combine`).
    Returns (o, c, cap_active, token_scale)."""
    r = combine(method, d, s, lam=lam, eta=eta, zeta=zeta, parallel=parallel, q_key=q_key, dense_key=kd,
                sparse_key=ks, aa_range=aa_range)
    return r.output, r.parallel_coef, r.cap_active, r.token_scale


# ---------------------------------------------------------------------------------------------------- op


def gag_attention(
    q: Tensor,
    k: Tensor,
    v: Tensor,
    *,
    mask: Tensor | None = None,
    scale: float | None = None,
    method: str = "gag",
    lam: float = 10.0,
    eta: float = 15.0,
    zeta: float = 0.0,
    alpha: float = 1.5,
    strength: float = 1.0,
    chunk_size: int | None = None,
    return_parts: bool = False,
    aa_range: tuple[float, float] = (0.0, 3.0),
    memory_budget: int = DEFAULT_MEMORY_BUDGET,
    parallel: str = "paper",
):
    r"""Geometry-aware attention guidance and its special cases (module docstring for the formulas).

    Parameters
    ----------
    q : Tensor (B, H, Lq, D)
    k : Tensor (B, H, Lk, D)
    v : Tensor (B, H, Lk, Dv)
        One floating dtype (fp16, bf16, fp32, fp64) and device; leading (batch) dims broadcast as in
        ``F.scaled_dot_product_attention``; any number of leading dims >= 0.
    mask : Tensor, optional
        Boolean (``True`` = attend) or additive float, broadcastable to (B, H, Lq, Lk).
    scale : float > 0, optional
        Score scale; default :math:`1/\sqrt D` (SDPA's default).
    method : {"gag", "pladis", "sparse", "dense", "aa"}
    lam : float >= 0
        :math:`\lambda` for ``gag`` (paper default 10) and ``pladis`` (PLADIS uses 1.5–2.0).
    eta : float > 0
        Norm cap :math:`\eta` of ``gag`` (paper default 15).
    zeta : float in [0, 1]
        Weight of :math:`\Delta_\perp` in ``gag`` (paper default 0).
    alpha : float > 1
        Entmax order of the sparse branch (default 1.5; 2 = sparsemax).
    strength : float >= 0
        :math:`t` in :math:`d + t(o - d)`; 0 is bit-identical to SDPA, 1 returns :math:`o`.
    chunk_size : int, optional
        Queries per chunk; ``None`` picks it from ``memory_budget``.
    return_parts : bool
        Also return a :class:`GAGParts`.
    aa_range : (float, float)
        Clamp range of the per-token scale of ``aa`` (default (0, 3)).
    memory_budget : int
        Bytes of score-sized temporaries per chunk when ``chunk_size`` is None (default 256 MiB).
    parallel : {"paper", "positive"}
        ``gag``'s parallel rule: the paper's :math:`\Delta_\parallel = c\,s` (default), or the one-sided
        :math:`\max(c, 0)\,s` that amplifies :math:`\Delta_\parallel` only where it points along :math:`s`
        (:mod:`hopfield_gag.ops.combine`).

    Returns
    -------
    Tensor (B, H, Lq, Dv) in the dtype of ``q``; with ``return_parts``, ``(output, GAGParts)``.

    Raises
    ------
    ValueError
        Shape/dtype/device mismatches, non-finite inputs, a fully masked query row, ``lam < 0``,
        ``eta <= 0``, ``zeta`` outside [0, 1], ``alpha <= 1``, ``strength < 0``, an unknown method or
        ``parallel`` rule.
    """
    scores_shape = _check_inputs(q, k, v, mask)
    lam, eta, zeta, alpha, strength, beta, aa_range = _check_options(
        method, lam, eta, zeta, alpha, strength, chunk_size, scale, q.shape[-1], aa_range, parallel
    )

    if not return_parts and (method == "dense" or strength == 0.0):
        # the stock op itself: strength 0 (or the dense method) is the exact off switch
        return F.scaled_dot_product_attention(q, k, v, attn_mask=mask, scale=scale)

    cd = compute_dtype(q.dtype)
    qc, kc, vc = q.to(cd), k.to(cd), v.to(cd)
    kT = kc.transpose(-1, -2)
    dv = v.shape[-1]
    # aa needs the key-space retrievals p k as well: one matmul against [v | k]
    read = torch.cat([vc, kc.expand(*kc.shape[:-2], *kc.shape[-2:])], dim=-1) if method == "aa" else vc
    lq = q.shape[-2]
    step = chunk_size or _auto_chunk(scores_shape, torch.finfo(cd).bits // 8, memory_budget)

    outs, parts = [], []
    for start in range(0, lq, step):
        stop = min(start + step, lq)
        q_chunk = qc[..., start:stop, :]
        # scale whichever operand is smaller: the (Lq, D) queries or the (Lq, Lk) scores
        z = torch.matmul(q_chunk * beta, kT) if q.shape[-1] <= k.shape[-2] else torch.matmul(q_chunk, kT).mul_(beta)
        if mask is not None:
            m = mask[..., start:stop, :] if mask.dim() >= 2 and mask.shape[-2] == lq else mask
            z = normalizers.apply_mask(z, m, name="the scores (B, H, Lq, Lk)")
        # the entmax kernel validates the scores (NaN/+inf, fully masked rows) for both branches
        p_sparse = normalizers.entmax(z, alpha)
        p_dense = torch.softmax(z, dim=-1)
        r_dense, r_sparse = torch.matmul(p_dense, read), torch.matmul(p_sparse, read)
        d, s = r_dense[..., :dv], r_sparse[..., :dv]
        if method == "aa":
            o, c, cap, tok = _combine(method, d, s, lam, eta, zeta, q_chunk, r_dense[..., dv:], r_sparse[..., dv:], aa_range)
        else:
            o, c, cap, tok = _combine(method, d, s, lam, eta, zeta, parallel=parallel)
        outs.append(o if strength == 1.0 else torch.lerp(d, o, strength))
        if return_parts:
            parts.append((d, s, s - d, c, cap, tok, o))
    out = torch.cat(outs, dim=-2) if len(outs) > 1 else outs[0]
    if strength == 0.0 or method == "dense":
        out = F.scaled_dot_product_attention(q, k, v, attn_mask=mask, scale=scale)
    else:
        out = out.to(q.dtype)
    if not return_parts:
        return out
    cat = [torch.cat(xs, dim=-2 if xs[0].dim() == out.dim() else -1) for xs in zip(*parts)]
    return out, GAGParts(*cat)


class GAGAttention(torch.nn.Module):
    """Module holding the options of :func:`gag_attention`; ``forward(q, k, v, mask=None)``."""

    def __init__(self, method="gag", lam=10.0, eta=15.0, zeta=0.0, alpha=1.5, strength=1.0, scale=None, chunk_size=None,
                 parallel="paper"):
        super().__init__()
        self.options = dict(method=method, lam=lam, eta=eta, zeta=zeta, alpha=alpha, strength=strength, scale=scale,
                            chunk_size=chunk_size, parallel=parallel)
        _check_options(method, lam, eta, zeta, alpha, strength, chunk_size, scale, None, (0.0, 3.0), parallel)

    def forward(self, q: Tensor, k: Tensor, v: Tensor, mask: Tensor | None = None) -> Tensor:
        return gag_attention(q, k, v, mask=mask, **self.options)

    def extra_repr(self) -> str:
        return ", ".join(f"{k}={v!r}" for k, v in self.options.items())


# ---------------------------------------------------------------------------------------------------- oracle
