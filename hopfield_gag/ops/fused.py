"""CPU kernels for the fused attention paths of :func:`hopfield_gag.gag_attention` (forward only).

* :func:`attention_forward` is the whole guided attention forward in one C call (fp32 compute; fp32, fp16
  and bf16 inputs; every method): per block of queries of one head, the scores by a register-tiled
  micro-kernel, both normalizations on rows still in L1, the entmax retrieval as a gather over its
  support, the softmax retrieval by the same micro-kernel, and the per-token combination. No score-sized
  temporary exists (memory O(threads x block x Lk)).
* The chunked path (fp64, and the fallback when an entmax row hits the kernel's iteration limit):
  :func:`dual_normalize` writes the softmax and the exact alpha-entmax of each score row of a chunk into one
  (..., 2, rows, Lk) buffer, so that a single GEMM multiplies both probability maps by V, and
  :func:`combine_rows` applies the per-token combination (``sparse``, ``pladis``, ``gag``; then
  ``strength``) to the (..., 2, rows, Dv) product, writing the output rows in place.

The per-token combination is written once in C (``combine_one`` in ``gag_forward.c``), the kernel-level
twin of :func:`hopfield_gag.ops.combine.combine`; the tests compare the two on every method and parallel
rule. Everything runs in the C kernel of :mod:`._kernel` (OpenMP over rows or query blocks, sharing torch's
thread count). These are plain functions, not differentiable and not traceable: ``gag_attention`` uses them
only in eager CPU calls without autograd, and its portable torch path everywhere else.
"""
from __future__ import annotations

import ctypes
import math

import torch
from torch import Tensor

from . import _kernel, normalizers
from .codes import Status
from .params import GagParams

__all__ = ["available", "attention_applies", "attention_forward", "dual_normalize", "combine_rows",
           "ROW_METHODS", "FLAG_KV_NONFINITE"]

ROW_METHODS = ("sparse", "pladis", "gag")  # the methods combine_rows computes (aa needs key-space retrievals)
FLAG_KV_NONFINITE = int(Status.KV_NONFINITE)  # (old name) attention_forward's bit: k or v holds NaN or inf
_OOM = int(Status.OUT_OF_MEMORY)  # a plain int: IntFlag arithmetic costs ~10 us per call


def available(device: torch.device, dtype: torch.dtype) -> bool:
    """True when the fused kernels can run: CPU, fp32/fp64, a built kernel."""
    return device.type == "cpu" and dtype in (torch.float32, torch.float64) and _kernel.load() is not None


def _ptr(t: Tensor):
    ctype = ctypes.c_float if t.dtype == torch.float32 else ctypes.c_double
    return ctypes.cast(t.data_ptr(), ctypes.POINTER(ctype))


def dual_normalize(z: Tensor, alpha: float) -> tuple[Tensor, int]:
    r"""Softmax and :math:`\alpha`-entmax of every row of ``z`` (..., rows, Lk), contiguous, CPU fp32/fp64.

    Returns ``(P, flags)`` with ``P`` (..., 2, rows, Lk): ``P[..., 0, :, :]`` the softmax and
    ``P[..., 1, :, :]`` the entmax of the same rows, and the kernel's :class:`~hopfield_gag.ops.codes.Status`
    word (``NONFINITE_SCORES``, ``FULLY_MASKED``: such rows are NaN in both maps; ``ITER_LIMIT``: the caller
    must not use the entmax map; ``OUT_OF_MEMORY``).
    """
    lib = _kernel.load()
    z = z.contiguous()
    rows, lk = z.shape[-2], z.shape[-1]
    out = torch.empty(*z.shape[:-2], 2, rows, lk, dtype=z.dtype)
    total = z.numel() // lk if z.numel() else 0
    if total == 0:
        return out, 0
    fn = lib.dual_rows_f32 if z.dtype == torch.float32 else lib.dual_rows_f64
    flags = fn(_ptr(z), _ptr(out), total, lk, rows, *normalizers._c_setup(alpha, lk), torch.get_num_threads())
    return out, int(flags)


def combine_rows(r: Tensor, out: Tensor, params: GagParams) -> None:
    r"""Combine the dense and sparse retrievals ``r`` (G..., 2, rows, Dv) (contiguous; ``r[..., 0, :, :]`` =
    :math:`d`, ``r[..., 1, :, :]`` = :math:`s`) into ``out`` (G..., rows, Dv), a view whose last two dims
    are contiguous (e.g. a chunk of rows of the full output), in place.

    Per token: ``sparse`` :math:`s`; ``pladis`` :math:`d + \lambda(s - d)`; ``gag``
    :math:`s + \lambda\min(1, \eta/\lVert g\rVert) g`, :math:`g = \tilde c s + \zeta(\Delta - c s)`,
    :math:`\Delta = s - d`, :math:`c = (\lVert s\rVert^2 - \langle d, s\rangle)/\lVert s\rVert^2` (0 where
    :math:`s = 0`), :math:`\tilde c = c` (``parallel="paper"``) or :math:`\max(c, 0)` (``"positive"``); then
    :math:`d + t(o - d)` with :math:`t` = ``strength``; all from ``params`` (``method`` in :data:`ROW_METHODS`).
    Accumulation in double.
    """
    if params.method not in ROW_METHODS:
        raise ValueError(f"combine_rows: method must be one of {ROW_METHODS}, got {params.method!r}")
    lib = _kernel.load()
    rows, dv = r.shape[-2], r.shape[-1]
    groups = r.numel() // (2 * rows * dv) if r.numel() else 0
    if groups == 0:
        return
    if out.stride(-1) != 1 or out.stride(-2) != dv or out.dtype != r.dtype:
        raise ValueError("combine_rows: out must have contiguous rows of r's dtype")
    # the group stride of out: uniform over the flattened leading dims (checked)
    gstride = out.stride(-3) if out.dim() >= 3 else rows * dv
    lead = out.shape[:-2]
    expect = gstride
    for size, stride in zip(reversed(lead), reversed(out.stride()[:-2])):
        if size > 1 and stride != expect:
            raise ValueError("combine_rows: out's leading dims must flatten with one stride")
        expect = stride * size
    fn = lib.combine_rows_f32 if r.dtype == torch.float32 else lib.combine_rows_f64
    r = r.contiguous()  # kept alive by the name while the kernel reads it
    fn(_ptr(r), _ptr(out), groups, rows, dv, gstride, int(params.method_code), int(params.parallel_code),
       params.lam, params.eta_value, params.zeta, params.strength, torch.get_num_threads())


def attention_applies(q: Tensor, method: str) -> bool:
    """True when :func:`attention_forward` serves the call: CPU, fp32 compute (fp16/bf16/fp32 inputs), a
    built kernel, ``method`` in sparse/pladis/gag/aa (fp64 keeps the chunked path, :func:`dual_normalize`
    + one GEMM + :func:`combine_rows`)."""
    return (q.device.type == "cpu" and q.dtype in (torch.float32, torch.float16, torch.bfloat16)
            and (method in ROW_METHODS or method == "aa") and _kernel.load() is not None)


def _mask_operand(mask: Tensor, batch: torch.Size, lq: int, lk: int):
    """An additive fp32 mask as the kernel reads it: (data, per-group offsets (G,) int64, row stride), with
    unit column stride and broadcast dims kept as zero strides (nothing score-sized is materialized)."""
    if mask.dtype == torch.bool:  # False -> -inf, the one rule of normalizers.apply_mask
        m = normalizers.apply_mask(torch.zeros(mask.shape, dtype=torch.float32), mask, name="the mask", check=False)
    else:
        m = mask.to(torch.float32)
    if m.dim() < 2:  # a (Lk,) or 0-d mask: one row for every query
        m = m.reshape((1,) * (2 - m.dim()) + tuple(m.shape))
    if m.shape[-1] != lk:
        m = m.expand(*m.shape[:-1], lk)
    m = m.contiguous()  # at the mask's own (broadcastable) shape
    full = m.expand(*batch, lq, lk)
    offs = torch.zeros(batch, dtype=torch.int64)
    for dim, (size, stride) in enumerate(zip(batch, full.stride()[:-2])):
        shape = [1] * len(batch)
        shape[dim] = size
        offs = offs + torch.arange(size, dtype=torch.int64).view(shape) * stride
    return m, offs.reshape(-1).contiguous(), full.stride(-2)


def bf16_uses_tiles() -> bool:
    """Whether the fused CPU kernel multiplies bf16 storage on AMX tiles here (compiled with AMX-BF16 and the
    tile state granted by the OS). Then both products are bf16 tile products (exact products, fp32 sums; P·V
    with P split into two bf16 matrices, ~16 bits) and the output is within one bf16 ulp of the fp32
    computation converted (not equal to it bit for bit), with bf16 subnormals flushed to zero by the tiles;
    otherwise bf16 is computed in fp32 like fp16."""
    lib = _kernel.load()
    return bool(lib is not None and lib.hg_bf16_tiles())


def _grouped(x: Tensor, io: torch.dtype, batch: torch.Size, groups: int) -> Tensor:
    """``x`` (..., rows, cols) broadcast to ``batch`` as the contiguous (groups, rows, cols) tensor of dtype ``io``
    the kernel reads: a view when ``x`` already is one (the usual call; ~1 us against ~4 us for the general
    convert-expand-copy, which matters in a per-layer call of ~1 ms)."""
    rows, cols = x.shape[-2], x.shape[-1]
    if x.dtype == io and x.shape[:-2] == batch and x.is_contiguous():
        return x.view(groups, rows, cols)
    return x.to(io).expand(*batch, rows, cols).reshape(groups, rows, cols).contiguous()


_FORWARD_ENTRY = {torch.float32: "gag_forward_f32", torch.bfloat16: "gag_forward_bf16",
                  torch.float16: "gag_forward_f16"}  # the kernel's entry point by storage type


def attention_forward(q: Tensor, k: Tensor, v: Tensor, mask: Tensor | None, batch: torch.Size, beta: float,
                      params: GagParams) -> tuple[Tensor, int]:
    r"""The guided attention forward in one fused C call, fp32 (inputs of half types are computed in fp32).

    ``q`` (..., Lq, D), ``k`` (..., Lk, D), ``v`` (..., Lk, Dv) with leading dims broadcasting to ``batch``;
    ``mask`` None, boolean (True = attend) or additive, broadcastable to (*batch, Lq, Lk). Per token:
    :math:`d = \mathrm{softmax}(\beta q K^\top + m) V`, :math:`s = \alpha\text{-entmax}(\cdot) V`, and the
    method's combination of :func:`combine_rows` with ``strength`` (all from ``params``; ``params.scale`` is
    not read: ``beta`` is the resolved scale); ``aa``: :math:`d + \lambda^\star(s - d)`
    with the AA(1) scale of :func:`hopfield_gag.ops.combine.aa_token_scale` from the key-space retrievals
    (the dense one by the same micro-kernel against K, the sparse one by the support gather), clamped to
    ``aa_range``. Returns ``(out, flags)``: ``out`` (*batch, Lq, Dv) in q's dtype (fp32 compute; the kernel
    reads fp16/bf16 inputs and writes the output in their own type, rounded as ``.to()`` rounds, so the
    result equals the fp32 computation on the upcast inputs, converted — for bf16 on AMX tiles, see
    :func:`bf16_uses_tiles`, within one bf16 ulp of it), and the status word of
    :func:`dual_normalize` (``Status.ITER_LIMIT``: recompute elsewhere) with ``Status.KV_NONFINITE`` set when k
    or v holds NaN or an infinity.
    """
    lib = _kernel.load()
    lq, d, lk, dv = q.shape[-2], q.shape[-1], k.shape[-2], v.shape[-1]
    io = q.dtype  # one storage type for q, k, v and out (gag_attention checks that they agree)
    out = torch.empty(*batch, lq, dv, dtype=io)
    if out.numel() == 0:  # no query, no value column or an empty batch: nothing to compute
        return out, 0
    groups = math.prod(batch)
    qg, kg, vg = (_grouped(x, io, batch, groups) for x in (q, k, v))
    if mask is None:
        m_ptr, off_ptr, msi, keep = None, None, 0, ()
    else:
        m, offs, msi = _mask_operand(mask, batch, lq, lk)
        m_ptr, off_ptr, keep = m.data_ptr(), offs.data_ptr(), (m, offs)
    # raw addresses (void* arguments): the tensors stay alive in this frame for the call
    p = params
    forward = _FORWARD_ENTRY[io]
    flags = getattr(lib, forward)(qg.data_ptr(), kg.data_ptr(), vg.data_ptr(), m_ptr, off_ptr, msi, out.data_ptr(),
                                  groups, lq, lk, d, dv, float(beta), *normalizers._c_setup(p.alpha, lk),
                                  int(p.method_code), int(p.parallel_code), p.lam, p.eta_value, p.zeta, p.strength,
                                  *p.aa_range, torch.get_num_threads())
    del keep
    if flags & _OOM:
        raise MemoryError("gag_attention: the fused CPU kernel could not allocate its scratch")
    return out, int(flags)
