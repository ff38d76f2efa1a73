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
            :math:`\lambda^\star = 1 - \gamma^\star` of :func:`hopfield_gag.aa_adaptive_scale`,
            clamped to ``aa_range``
=========== =========================================================================================

Finally ``strength`` :math:`t` returns :math:`d + t(o - d)`; :math:`t = 0` returns
``F.scaled_dot_product_attention(q, k, v, attn_mask=mask, scale=scale)`` bit for bit (the safe off switch;
the GAG rule itself at :math:`\lambda = 0` is pure sparse attention, not dense).

Masks follow one rule on every path and at every strength (:func:`hopfield_gag._validation.check_mask`): bool
(``True`` = keep) or floating (an additive bias, cast to the compute dtype), broadcastable to (B, H, Lq, Lk);
integer and complex masks raise. A 1-D (Lk,) mask or a float mask of another dtype, which SDPA itself
rejects, means the same at ``strength=0`` (it is reshaped/cast for SDPA) as at ``strength=1``.

Implementation: queries are processed in chunks (peak extra memory bounded by a budget); per chunk the
scores are computed once, normalized densely (``torch.softmax``) and sparsely (the exact sort-free entmax op
``hopfield_gag::entmax`` of :mod:`hopfield_gag.ops.normalizers`, which flags NaN/+inf scores and fully masked
rows without a host synchronization), multiplied by ``v`` (and by ``k`` for ``aa``), and combined per
(token, head) in fp32 or higher. Half-precision inputs are computed in fp32 and the output is cast back.
This portable path is differentiable, sync-free with ``checks=False`` and traceable by
``torch.compile(fullgraph=True)``; it is what non-CPU devices and autograd use.

Execution paths (:data:`PATHS`, tried in order; each declares the inputs it takes, and the first that takes
the call runs it):

============== ==============================================================================================
``stock``      ``strength == 0`` or ``method == "dense"`` without ``return_parts``: SDPA itself
``triton``     CUDA (or ``TRITON_INTERPRET=1``), fp16/bf16/fp32, Lk <= 512, head dims <= 256, no grad, not
               compiling: one fused launch (:mod:`hopfield_gag.ops.triton_attention`)
``one-call C`` eager CPU, fp16/bf16/fp32, no grad, no ``return_parts``: the whole forward in one C call per block
               of queries (scores, both normalizations, the sparse retrieval as a gather over the entmax
               support, the dense one, the combine; README "Speed"); a row at the entmax iteration limit
               sends the call to ``chunked C``
``chunked C``  eager CPU, fp64, no grad, no ``return_parts``: per chunk of queries both maps into one (2, rows,
               Lk) buffer, one GEMM with ``v``, the combine in C (``aa``: :func:`~hopfield_gag.ops.combine.combine`)
``torch``      everything else (autograd, ``return_parts``, ``torch.compile``, other devices)
============== ==============================================================================================

Every path reports the same :class:`~hopfield_gag.ops.codes.Status` word (non-finite scores, a fully masked
row, non-finite k/v, ...), which the op reads once at the end.

Value checks (non-finite q/k/v, fully masked rows) read device data exactly once per call, at the end (on
the one-call CPU kernel not even that: its status word covers q through the scores and k, v through its
packing pass); ``checks=False`` or ``HOPFIELD_GAG_CHECKS=0`` skips them.
"""
from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Callable, Iterator

import torch
import torch.nn.functional as F
from torch import Tensor

from ..ops import fused, normalizers, triton_attention
from ..ops.codes import Status
from ..ops.combine import COMBINE_METHODS, combine
from ..ops.params import DEFAULT_MEMORY_BUDGET, GagParams
from ..ops.threshold import near_one
from .._validation import (
    check_mask, check_qkv_structure, checks_enabled, compute_dtype, nonfinite_any, sdpa_mask,
)

__all__ = ["gag_attention", "GAGParts", "METHODS", "GAGAttention", "GagParams", "PATHS", "Path"]

METHODS = COMBINE_METHODS
_SCORE_TEMPORARIES = 5  # z, p_dense, p_sparse, and two transient buffers of the normalizers
_HALF_OR_F32 = (torch.float16, torch.bfloat16, torch.float32)
# the Status bits as plain ints for the per-call paths (IntFlag arithmetic costs ~10 us an operation)
_ITER, _KV = int(Status.ITER_LIMIT), int(Status.KV_NONFINITE)
_NONFINITE, _MASKED = int(Status.NONFINITE_SCORES), int(Status.FULLY_MASKED)


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


# ---------------------------------------------------------------------------------------------------- a call


@dataclass(frozen=True)
class _Call:
    """One validated call: the inputs, the parameters, and what the checks derived (no value read yet)."""

    q: Tensor
    k: Tensor
    v: Tensor
    mask: Tensor | None
    params: GagParams
    scores_shape: tuple
    beta: float
    return_parts: bool

    @property
    def tensors(self) -> tuple:
        return (self.q, self.k, self.v) if self.mask is None else (self.q, self.k, self.v, self.mask)

    @property
    def needs_grad(self) -> bool:
        return torch.is_grad_enabled() and any(t.requires_grad for t in self.tensors)


def _check_inputs(q, k, v, mask):
    """Validate q, k, v (``_validation.check_qkv_structure``: everything but their values) and the mask (the one
    mask rule, :func:`hopfield_gag._validation.check_mask`); return (B, H, Lq, Lk)."""
    batch = check_qkv_structure(q, k, v)
    scores_shape = (*batch, q.shape[-2], k.shape[-2])
    check_mask(mask, scores_shape, q.device)
    return scores_shape


def _auto_chunk(scores_shape, itemsize: int, budget: int) -> int:
    per_query_row = max(1, math.prod(scores_shape[:-2]) * scores_shape[-1] * itemsize * _SCORE_TEMPORARIES)
    return int(max(1, min(scores_shape[-2], budget // per_query_row)))


def _score_chunks(call: _Call, cd: torch.dtype) -> Iterator[tuple[slice, Tensor, Tensor]]:
    """The chunk loop of the chunked paths, written once: per chunk of queries (``chunk_size``, or as many as
    ``memory_budget`` allows), ``(rows, q_chunk, z)`` with ``z`` = scale * q_chunk k^T (+ mask) in ``cd``."""
    q, k, mask, p = call.q, call.k, call.mask, call.params
    qc, kT = q.to(cd), k.to(cd).transpose(-1, -2)
    lq = q.shape[-2]
    step = p.chunk_size or _auto_chunk(call.scores_shape, torch.finfo(cd).bits // 8, p.memory_budget)
    for start in range(0, lq, step):
        rows = slice(start, min(start + step, lq))
        q_chunk = qc[..., rows, :]
        # scale whichever operand is smaller: the (Lq, D) queries or the (Lq, Lk) scores
        if q.shape[-1] <= k.shape[-2]:
            z = torch.matmul(q_chunk * call.beta, kT)
        else:
            z = torch.matmul(q_chunk, kT).mul_(call.beta)
        if mask is not None:
            m = mask[..., rows, :] if mask.dim() >= 2 and mask.shape[-2] == lq else mask
            z = normalizers.apply_mask(z, m, name="the scores (B, H, Lq, Lk)", check=False)
        yield rows, q_chunk, z


def _values_read(call: _Call, cd: torch.dtype) -> Tensor:
    """What the maps multiply: v, or [v | k] for ``aa`` (which needs the key-space retrievals p k too)."""
    vc = call.v.to(cd)
    if call.params.method != "aa":
        return vc
    kc = call.k.to(cd)
    return torch.cat([vc, kc.expand(*kc.shape[:-2], *kc.shape[-2:])], dim=-1)


def _combine(params: GagParams, d, s, q_key=None, kd=None, ks=None):
    """Per (token, head) combination in the compute dtype (:func:`hopfield_gag.ops.combine.combine`).
    Returns (o, c, cap_active, token_scale)."""
    r = combine(params, d, s, q_key=q_key, dense_key=kd, sparse_key=ks)
    return r.output, r.parallel_coef, r.cap_active, r.token_scale


# ---------------------------------------------------------------------------------------------------- paths
# Each runner returns (output in q's dtype, status word, parts or None); the status is a host int or a 0-dim
# tensor of ops.codes.Status bits, read once by gag_attention.


def _run_triton(call: _Call):
    out, parts, status = triton_attention.launch(call.q, call.k, call.v, call.mask, call.scores_shape, call.beta,
                                                 call.params, call.return_parts)
    return out, status, None if parts is None else GAGParts(*parts)


def _run_stock(call: _Call):
    p = call.params
    out = F.scaled_dot_product_attention(call.q, call.k, call.v, attn_mask=sdpa_mask(call.mask, call.q.dtype),
                                         scale=p.scale)
    return out, None, None


def _run_one_call_c(call: _Call):
    out, flags = fused.attention_forward(call.q, call.k, call.v, call.mask, call.scores_shape[:-2], call.beta,
                                         call.params)
    return out.to(call.q.dtype), flags, None


def _run_chunked_c(call: _Call):
    """Per chunk: both maps by one pass of the C kernel into a (2, rows, Lk) buffer, one GEMM of that buffer
    with V, and the per-token combination in C (``aa``: :func:`_combine`) written straight into the output."""
    p, cd = call.params, compute_dtype(call.q.dtype)
    read, dv = _values_read(call, cd), call.v.shape[-1]
    out = torch.empty(*call.scores_shape[:-2], call.q.shape[-2], dv, dtype=cd)
    flags = 0
    for rows, q_chunk, z in _score_chunks(call, cd):
        n = rows.stop - rows.start
        maps, f = fused.dual_normalize(z, p.alpha)
        if f & _ITER:
            # the kernel's entmax rows are only estimates: the op falls back to its exact default
            maps[..., 1, :, :], f_op = normalizers.entmax_op(z, p.alpha)
            f = (f & ~_ITER) | int(f_op)
        flags |= f
        r = torch.matmul(maps.view(*maps.shape[:-3], 2 * n, maps.shape[-1]), read)
        r = r.view(*r.shape[:-2], 2, n, r.shape[-1])
        target = out[..., rows, :]
        if p.method == "aa":
            d, s = r[..., 0, :, :dv], r[..., 1, :, :dv]
            o = _combine(p, d, s, q_chunk, r[..., 0, :, dv:], r[..., 1, :, dv:])[0]
            target.copy_(o if p.strength == 1.0 else torch.lerp(d, o, p.strength))
        else:
            fused.combine_rows(r, target, p)
    return out.to(call.q.dtype), flags, None


def _run_torch(call: _Call):
    """The portable path: per chunk, the scores once, ``torch.softmax`` and the entmax op (which flags NaN/+inf
    scores and fully masked rows without a host synchronization), one matmul each with v (and k for ``aa``),
    the combination; differentiable and traceable."""
    p, cd = call.params, compute_dtype(call.q.dtype)
    read, dv = _values_read(call, cd), call.v.shape[-1]
    outs, parts = [], []
    flags = None  # OR of the entmax op's status words
    for _, q_chunk, z in _score_chunks(call, cd):
        p_sparse, f = normalizers.entmax_op(z, p.alpha)
        flags = f if flags is None else flags | f
        p_dense = torch.softmax(z, dim=-1)
        r_dense, r_sparse = torch.matmul(p_dense, read), torch.matmul(p_sparse, read)
        d, s = r_dense[..., :dv], r_sparse[..., :dv]
        if p.method == "aa":
            o, c, cap, tok = _combine(p, d, s, q_chunk, r_dense[..., dv:], r_sparse[..., dv:])
        else:
            o, c, cap, tok = _combine(p, d, s)
        outs.append(o if p.strength == 1.0 else torch.lerp(d, o, p.strength))
        if call.return_parts:
            parts.append((d, s, s - d, c, cap, tok, o))
    if not outs:  # no query: the empty output
        outs = [torch.empty(*call.scores_shape[:-2], 0, dv, dtype=cd, device=call.q.device)]
    out = torch.cat(outs, dim=-2) if len(outs) > 1 else outs[0]
    if p.is_off:
        out = _run_stock(call)[0]  # the stock op itself, bit for bit (parts were asked for)
    else:
        out = out.to(call.q.dtype)
    if not call.return_parts:
        return out, flags, None
    cat = [torch.cat(xs, dim=-2 if xs[0].dim() == out.dim() else -1) for xs in zip(*parts)]
    return out, flags, GAGParts(*cat)


@dataclass(frozen=True)
class Path:
    """An execution path of :func:`gag_attention` and the inputs it takes.

    ``devices``: device types it runs on (None: any); ``dtypes``: input dtypes (None: any); ``methods``;
    ``grad``/``parts``/``compile``: whether it takes inputs that require grad, ``return_parts=True``, a call
    inside ``torch.compile``; ``off``: True = only the off switch (strength 0 or ``dense``), False = never it,
    None = either; ``extra``: a further condition (a built kernel, Triton's size limits); ``covers_kv``: its
    status word includes ``Status.KV_NONFINITE`` (else the op checks k and v itself); ``on_iter_limit``: the
    path that reruns a call whose status has ``Status.ITER_LIMIT``."""

    name: str
    run: Callable[[_Call], tuple]
    devices: tuple | None = None
    dtypes: tuple | None = None
    methods: tuple = COMBINE_METHODS
    grad: bool = True
    parts: bool = True
    compile: bool = True
    off: bool | None = None
    extra: Callable[[_Call], bool] | None = None
    covers_kv: bool = False
    on_iter_limit: str | None = None

    def takes(self, call: _Call) -> bool:
        p = call.params
        return ((self.devices is None or call.q.device.type in self.devices)
                and (self.dtypes is None or call.q.dtype in self.dtypes)
                and p.method in self.methods
                and (self.off is None or self.off == (p.is_off and not call.return_parts))
                and (self.parts or not call.return_parts)
                and (self.compile or not torch.compiler.is_compiling())
                and (self.grad or not call.needs_grad)
                and (self.extra is None or self.extra(call)))


def _c_kernel(call: _Call) -> bool:
    # the kernels search the threshold in coordinates that lose eps/(alpha - 1) near alpha = 1 (ops/threshold)
    return fused.available(call.q.device, compute_dtype(call.q.dtype)) and not near_one(call.params.alpha)


_GUIDED = ("sparse", "pladis", "gag", "aa")
PATHS = (
    Path("stock", _run_stock, off=True),
    Path("triton", _run_triton, grad=False, compile=False, covers_kv=True,
         extra=lambda c: not near_one(c.params.alpha) and triton_attention.triton_applies(c.q, c.k, c.v, c.mask)),
    Path("one-call C", _run_one_call_c, devices=("cpu",), dtypes=_HALF_OR_F32, methods=_GUIDED, grad=False,
         parts=False, compile=False, off=False, extra=_c_kernel, covers_kv=True, on_iter_limit="chunked C"),
    Path("chunked C", _run_chunked_c, devices=("cpu",), dtypes=(torch.float64,), methods=_GUIDED, grad=False,
         parts=False, compile=False, off=False, extra=_c_kernel),
    Path("torch", _run_torch),
)
_BY_NAME = {path.name: path for path in PATHS}


def _pick(call: _Call) -> Path:
    """The first path of :data:`PATHS` that takes the call (``torch`` takes every call)."""
    return next(path for path in PATHS if path.takes(call))


def _forward(call: _Call, path: Path, checks: bool):
    """Run ``path`` (and its ``on_iter_limit`` fallback); returns (out, status, parts) with the status word
    completed by the k/v check when ``checks`` and the path does not cover it (no host read here)."""
    out, status, parts = path.run(call)
    if path.on_iter_limit is not None and int(status) & _ITER:
        # (never seen on real rows) an entmax row at the iteration limit: the fallback recomputes exactly
        path = _BY_NAME[path.on_iter_limit]
        out, status, parts = path.run(call)
    if checks and status is None:  # (stock) no scores were computed here: their conditions from the inputs
        status = _stock_status(call, out)
    if checks and not path.covers_kv:
        status = nonfinite_any(call.k, call.v).to(torch.int64) * _KV | status
    return out, status, parts


def _stock_status(call: _Call, out: Tensor) -> Tensor:
    """The status word of a call that computed no scores itself (SDPA), so that the off switch rejects what
    the guided paths reject: ``NONFINITE_SCORES`` for a non-finite q or k (it shows in the scores), a NaN/+inf
    additive-mask entry, or a non-finite output from finite inputs and rows (an overflowing q.k);
    ``FULLY_MASKED`` for a query row with every key masked. No host read."""
    mask, device = call.mask, call.q.device
    empty = bad_mask = torch.zeros((), dtype=torch.bool, device=device)
    if mask is not None and mask.numel():
        if mask.dtype == torch.bool:
            empty = ~mask.any(-1).all()
        else:
            bad_mask = (torch.isnan(mask) | torch.isposinf(mask)).any()
            empty = (mask == -math.inf).all(-1).any()
    overflow = nonfinite_any(out) & ~nonfinite_any(call.k, call.v) & ~empty
    bad = nonfinite_any(call.q, call.k) | bad_mask | overflow
    return bad.to(torch.int64) * _NONFINITE | empty.to(torch.int64) * _MASKED


# ---------------------------------------------------------------------------------------------------- op


def _fused_cpu_applies(q, k, v, mask, method, return_parts, strength) -> bool:
    """Whether a C path of :data:`PATHS` (``one-call C``, ``chunked C``) would serve this call (for the
    benchmarks, which name the path they time)."""
    p = GagParams(method=method, strength=strength)
    call = _Call(q, k, v, mask, p, (*q.shape[:-1], k.shape[-2]), 1.0, return_parts)
    return _pick(call).name in ("one-call C", "chunked C")


def gag_attention(
    q: Tensor,
    k: Tensor,
    v: Tensor,
    *,
    mask: Tensor | None = None,
    params: GagParams | None = None,
    return_parts: bool = False,
    checks: bool | None = None,
    **options,
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
        Boolean (``True`` = attend) or additive float, broadcastable to (B, H, Lq, Lk); integer and complex
        masks raise (module docstring: one rule for every path and strength).
    params : GagParams, optional
        The guidance parameters (:class:`hopfield_gag.ops.params.GagParams`, which holds the defaults);
        default ``GagParams()``.
    **options
        Fields of :class:`GagParams` replacing those of ``params``: ``method`` ({"gag", "pladis", "sparse",
        "dense", "aa"}, default "gag"), ``lam`` (:math:`\lambda \ge 0` of ``gag`` — paper default 10 — and
        ``pladis``, which uses 1.5–2.0), ``eta`` (norm cap :math:`\eta > 0` of ``gag``, paper default 15;
        None = no cap), ``zeta`` (weight of :math:`\Delta_\perp` in ``gag``, in [0, 1], default 0), ``alpha``
        (entmax order > 1 of the sparse branch, default 1.5; 2 = sparsemax), ``strength`` (:math:`t` in
        :math:`d + t(o - d)`, >= 0; 0 is bit-identical to SDPA, 1 returns :math:`o`), ``parallel``
        ({"paper", "positive"}: ``gag``'s parallel part :math:`c\,s` or the one-sided :math:`\max(c, 0)\,s`,
        :mod:`hopfield_gag.ops.combine`), ``aa_range`` (clamp range (lo, hi) of ``aa``'s per-token scale,
        default (0, 3)), ``scale`` (score scale > 0, default :math:`1/\sqrt D`), ``chunk_size`` (queries per
        chunk of the chunked paths, torch and fp64 CPU; None picks it from ``memory_budget``, the bytes of
        score-sized temporaries per chunk, default 256 MiB; the fp32 CPU kernel works in blocks of at most
        48 queries and allocates nothing score-sized, so neither applies to it). Unknown names raise
        ``TypeError``.
    return_parts : bool
        Also return a :class:`GAGParts`.
    checks : bool, optional
        Run the value checks (non-finite q/k/v, a fully masked query row). They cost exactly one host
        synchronization per call (the read of the path's status word); ``False`` makes the call
        synchronization-free (CUDA graphs, ``torch.compile(fullgraph=True)``) and bad values then give NaN.
        Default: on, unless the environment sets ``HOPFIELD_GAG_CHECKS=0``. Shape, dtype and option checks
        always run (they read no data).

    Returns
    -------
    Tensor (B, H, Lq, Dv) in the dtype of ``q``; with ``return_parts``, ``(output, GAGParts)``.

    Raises
    ------
    ValueError
        Shape/dtype/device mismatches, a mask that is not bool or floating, non-finite inputs, a fully
        masked query row, ``lam < 0``, ``eta <= 0``, ``zeta`` outside [0, 1], ``alpha <= 1``, ``strength < 0``,
        ``memory_budget < 1``, an unknown method or ``parallel`` rule.
    TypeError
        A non-number option (``lam="10"``, ``lam=True``), an unknown option.
    """
    checks = checks_enabled(checks)
    params = GagParams.from_kwargs(params, **options)
    scores_shape = _check_inputs(q, k, v, mask)
    call = _Call(q, k, v, mask, params, scores_shape, params.beta(q.shape[-1]), bool(return_parts))
    out, status, parts = _forward(call, _pick(call), checks)
    if checks:
        normalizers.raise_for_status(status, q, k, v, mask)  # the one host synchronization
    return (out, parts) if return_parts else out


class GAGAttention(torch.nn.Module):
    """Module holding the parameters of :func:`gag_attention` (a :class:`GagParams`, built and validated
    once); ``forward(q, k, v, mask=None)``. ``GAGAttention(params)`` or ``GAGAttention(method=..., lam=...)``."""

    def __init__(self, params: GagParams | str | None = None, **options):
        super().__init__()
        if isinstance(params, str):  # GAGAttention("pladis", ...): the method, positionally (old form)
            params, options = None, {"method": params, **options}
        self.params = GagParams.from_kwargs(params, **options)

    @property
    def options(self) -> dict:
        """The parameters as keyword arguments of :func:`gag_attention`."""
        return self.params.as_kwargs()

    def forward(self, q: Tensor, k: Tensor, v: Tensor, mask: Tensor | None = None) -> Tensor:
        return gag_attention(q, k, v, mask=mask, params=self.params)

    def extra_repr(self) -> str:
        return ", ".join(f"{k}={v!r}" for k, v in self.options.items())
