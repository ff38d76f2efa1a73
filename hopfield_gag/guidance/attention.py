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
scores are computed once, normalized densely (``torch.softmax``) and sparsely (the exact sort-free entmax op
``hopfield_gag::entmax`` of :mod:`hopfield_gag.ops.normalizers`, which flags NaN/+inf scores and fully masked
rows without a host synchronization), multiplied by ``v`` (and by ``k`` for ``aa``), and combined per
(token, head) in fp32 or higher. Half-precision inputs are computed in fp32 and the output is cast back.
This portable path is differentiable, sync-free with ``checks=False`` and traceable by
``torch.compile(fullgraph=True)``; it is what non-CPU devices and autograd use.

Eager CPU calls without autograd take the fused kernels of :mod:`hopfield_gag.ops.fused`: fp32 compute
(fp32, fp16, bf16 inputs) runs the whole forward in one C call per block of queries (scores, both
normalizations, the sparse retrieval as a gather over the entmax support, the dense one, the combine; 1.1-1.7x
SDPA, README "Speed"); fp64 runs the chunked C path (both maps of a chunk into one (2, rows, Lk) buffer, one
GEMM with ``v``, the combine in C). CUDA tensors with Lk <= 512 and no grad take the Triton kernel.

Value checks (non-finite q/k/v, fully masked rows) read device data exactly once per call, at the end (on
the one-call CPU kernel not even that: its status word covers q through the scores and k, v through its
packing pass); ``checks=False`` or ``HOPFIELD_GAG_CHECKS=0`` skips them.
"""
from __future__ import annotations

import math
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import Tensor

from ..ops import fused, normalizers, triton_attention
from .._validation import (
    check_finite, check_mask_shape, check_qkv_structure, checks_enabled, compute_dtype, nonfinite_any,
)
from ..ops.combine import COMBINE_METHODS, check_options, combine

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
    """Validate q, k, v (``_validation.check_qkv_structure``: everything but their values) and the mask's type
    and shape; return (B, H, Lq, Lk). The value checks are :func:`_check_values`, one host read per call."""
    batch = check_qkv_structure(q, k, v)
    scores_shape = (*batch, q.shape[-2], k.shape[-2])
    check_mask_shape(mask, scores_shape)
    return scores_shape


_check_options = check_options  # (the options' one home: ops/combine.py)


def _auto_chunk(scores_shape, itemsize: int, budget: int) -> int:
    per_query_row = max(1, math.prod(scores_shape[:-2]) * scores_shape[-1] * itemsize * _SCORE_TEMPORARIES)
    return int(max(1, min(scores_shape[-2], budget // per_query_row)))


def _check_values(q, k, v, mask, flags, kv_in_flags: bool = False) -> None:
    """The value checks of :func:`gag_attention`, with one host synchronization on the good path.

    ``flags`` is the OR of the entmax op's status words over the chunks (bit 1: a NaN/+inf score, bit 2: a
    row with every key masked), or ``None`` when no scores were computed. A non-finite query always shows
    in its row of scores (NaN, +inf, or a row of -inf), so q is read only on the error path; k and v are
    read here (they are small next to the scores at cross-attention shapes). An additive mask holding NaN
    or +inf likewise shows in the scores. Only when something is wrong do the checks below, which name the
    culprit, run. ``kv_in_flags``: ``flags`` is a host int that also covers k and v (the one-call CPU kernel
    checks them while packing, bit 16), so the good path reads nothing.
    """
    if kv_in_flags:
        if flags == 0:
            return
    else:
        bad = nonfinite_any(q, k, v) if flags is None else (flags != 0) | nonfinite_any(k, v)
        if not bool(bad):  # the one host synchronization
            return
    check_finite("q", q)
    check_finite("k", k)
    check_finite("v", v)
    if mask is not None and mask.dtype != torch.bool:
        if bool((torch.isnan(mask) | torch.isposinf(mask)).any()):
            raise ValueError("mask (additive) must not contain NaN or +inf; use -inf to remove an entry")
    if flags is not None:
        normalizers._raise_for_flags(flags, name="the scores (B, H, Lq, Lk)")
    raise ValueError("gag_attention: non-finite values in the inputs")  # unreachable unless a check is missing


# ---------------------------------------------------------------------------------------------------- combine


def _combine(method, d, s, lam, eta, zeta, q_key=None, kd=None, ks=None, aa_range=(0.0, 3.0), parallel="paper"):
    """Per (token, head) combination in the compute dtype (:func:`hopfield_gag.ops.combine.combine`).
    Returns (o, c, cap_active, token_scale)."""
    r = combine(method, d, s, lam=lam, eta=eta, zeta=zeta, parallel=parallel, q_key=q_key, dense_key=kd,
                sparse_key=ks, aa_range=aa_range)
    return r.output, r.parallel_coef, r.cap_active, r.token_scale


# ---------------------------------------------------------------------------------------------------- op


def _fused_cpu_applies(q, k, v, mask, method, return_parts, strength) -> bool:
    """The fused CPU kernels (:mod:`hopfield_gag.ops.fused`) serve eager, inference-only CPU calls; autograd,
    ``return_parts``, ``torch.compile`` and other devices take the portable torch path."""
    if return_parts or method == "dense" or strength == 0.0 or torch.compiler.is_compiling():
        return False
    if torch.is_grad_enabled() and any(t is not None and t.requires_grad for t in (q, k, v, mask)):
        return False
    return fused.available(q.device, compute_dtype(q.dtype))


def _gag_attention_fused_cpu(q, k, v, mask, method, lam, eta, zeta, alpha, strength, beta, aa_range, chunk_size,
                             memory_budget, scores_shape, parallel="paper"):
    """The same computation as the torch path, per chunk of queries: scores by one GEMM, both maps by one
    pass of the C kernel into a (2, rows, Lk) buffer, one GEMM of that buffer with V, and the per-token
    combination in C (``aa``: ``_combine``) written straight into the output. Returns (output, flags)."""
    cd = compute_dtype(q.dtype)
    qc, kc, vc = q.to(cd), k.to(cd), v.to(cd)
    kT = kc.transpose(-1, -2)
    dv = v.shape[-1]
    lq = q.shape[-2]
    read = torch.cat([vc, kc.expand(*kc.shape[:-2], *kc.shape[-2:])], dim=-1) if method == "aa" else vc
    batch = scores_shape[:-2]
    out = torch.empty(*batch, lq, dv, dtype=cd)
    step = chunk_size or _auto_chunk(scores_shape, torch.finfo(cd).bits // 8, memory_budget)
    flags = 0
    for start in range(0, lq, step):
        stop = min(start + step, lq)
        rows = stop - start
        q_chunk = qc[..., start:stop, :]
        z = torch.matmul(q_chunk * beta, kT) if q.shape[-1] <= k.shape[-2] else torch.matmul(q_chunk, kT).mul_(beta)
        if mask is not None:
            m = mask[..., start:stop, :] if mask.dim() >= 2 and mask.shape[-2] == lq else mask
            z = normalizers.apply_mask(z, m, name="the scores (B, H, Lq, Lk)", check=False)
        maps, f = fused.dual_normalize(z, alpha)
        if f & normalizers._FLAG_MAXIT:
            # the kernel's entmax rows are only estimates: the op falls back to its exact default
            maps[..., 1, :, :], f_op = normalizers.entmax_op(z, alpha)
            f = (f & ~normalizers._FLAG_MAXIT) | int(f_op)
        flags |= f
        r = torch.matmul(maps.view(*maps.shape[:-3], 2 * rows, maps.shape[-1]), read)
        r = r.view(*r.shape[:-2], 2, rows, r.shape[-1])
        target = out[..., start:stop, :]
        if method == "aa":
            d, s = r[..., 0, :, :dv], r[..., 1, :, :dv]
            o = _combine(method, d, s, lam, eta, zeta, q_chunk, r[..., 0, :, dv:], r[..., 1, :, dv:], aa_range)[0]
            target.copy_(o if strength == 1.0 else torch.lerp(d, o, strength))
        else:
            fused.combine_rows(r, target, method, lam, eta, zeta, strength, parallel)
    return out.to(q.dtype), flags



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
    checks: bool | None = None,
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
        Queries per chunk of the chunked paths (torch, fp64 CPU); ``None`` picks it from ``memory_budget``.
        The fp32 CPU kernel works in blocks of at most 48 queries and allocates nothing score-sized, so
        neither option applies to it.
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
    checks : bool, optional
        Run the value checks (non-finite q/k/v, a fully masked query row). They cost exactly one host
        synchronization per call; ``False`` makes the call synchronization-free (CUDA graphs,
        ``torch.compile(fullgraph=True)``) and bad values then give NaN. Default: on, unless the environment
        sets ``HOPFIELD_GAG_CHECKS=0``. Shape, dtype and option checks always run (they read no data).

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
    checks = checks_enabled(checks)
    scores_shape = _check_inputs(q, k, v, mask)
    lam, eta, zeta, alpha, strength, beta, aa_range = _check_options(
        method, lam, eta, zeta, alpha, strength, chunk_size, scale, q.shape[-1], aa_range, parallel
    )
    # device-specific fused paths dispatch here: every argument is checked, no value has been read
    if triton_attention.triton_applies(q, k, v, mask):
        # one fused Triton launch (CUDA, Lk <= 512, no grad: ops/triton_attention.py); grad -> torch path
        res = triton_attention.fused_forward(q, k, v, mask, scores_shape, beta, scale, method, lam, eta, zeta,
                                             alpha, strength, return_parts, aa_range, parallel=parallel)
        return (res[0], GAGParts(*res[1])) if return_parts else res
    if _fused_cpu_applies(q, k, v, mask, method, return_parts, strength):
        out, kv_in_flags = None, False
        if fused.attention_applies(q, method):
            # fp32 compute: the whole forward in one C call, blocks of queries kept in cache (ops/fused.py)
            out, flags = fused.attention_forward(q, k, v, mask, scores_shape[:-2], beta, alpha, method, lam, eta,
                                                 zeta, strength, parallel, aa_range)
            if flags & normalizers._FLAG_MAXIT:
                out = None  # (never seen on real rows) an entmax row at the iteration limit
            else:
                out, kv_in_flags = out.to(q.dtype), True
        if out is None:
            # fp64, or the iteration limit above: the chunked path, whose normalizer falls back to the op's
            # provably exact default
            out, flags = _gag_attention_fused_cpu(
                q, k, v, mask, method, lam, eta, zeta, alpha, strength, beta, aa_range, chunk_size, memory_budget,
                scores_shape, parallel
            )
        if checks:
            _check_values(q, k, v, mask, flags, kv_in_flags)
        return out

    if not return_parts and (method == "dense" or strength == 0.0):
        # the stock op itself: strength 0 (or the dense method) is the exact off switch
        if checks:
            _check_values(q, k, v, mask, None)
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
    flags = None  # OR of the entmax op's status words; read once, by _check_values
    for start in range(0, lq, step):
        stop = min(start + step, lq)
        q_chunk = qc[..., start:stop, :]
        # scale whichever operand is smaller: the (Lq, D) queries or the (Lq, Lk) scores
        z = torch.matmul(q_chunk * beta, kT) if q.shape[-1] <= k.shape[-2] else torch.matmul(q_chunk, kT).mul_(beta)
        if mask is not None:
            m = mask[..., start:stop, :] if mask.dim() >= 2 and mask.shape[-2] == lq else mask
            z = normalizers.apply_mask(z, m, name="the scores (B, H, Lq, Lk)", check=False)
        # the entmax op flags NaN/+inf scores and fully masked rows for both branches, without a sync
        p_sparse, f = normalizers.entmax_op(z, alpha)
        flags = f if flags is None else flags | f
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
    if checks:
        _check_values(q, k, v, mask, flags)
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
