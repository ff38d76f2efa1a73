r"""Fused guided-attention forward in Triton (CUDA; the Triton interpreter on CPU for tests).

:func:`triton_gag_attention` computes exactly what :func:`hopfield_gag.gag_attention` computes (module
docstring of :mod:`hopfield_gag.guidance.attention` for the formulas), forward only, in **one launch**: each
program reads a block of queries and the whole key/value sequence of its (batch, head) once, and keeps the
scores, the softmax map, the exact :math:`\alpha`-entmax map, both value products (and the key-space
retrievals :math:`p k` for ``aa``), the per-token combine and the ``strength`` blend in registers, in fp32;
it writes only :math:`o` (and, with ``return_parts``, :math:`d`, :math:`s`, the method output, :math:`c`,
the cap flag and the token scale). Kernel details: :mod:`hopfield_gag.ops._triton_kernel`.

Scope (:func:`triton_applies`):

* key lengths up to :data:`MAX_KEYS` = 512 (cross-attention to text tokens: 77–512), padded to the next
  power of two with masking; longer key sequences (self-attention) use the torch path of
  :func:`gag_attention` (a tiled two-pass scheme is not implemented);
* fp16, bf16, fp32 tensors on a CUDA device — or on any device when the Triton interpreter is on
  (``TRITON_INTERPRET=1``; numpy-backed, slow, for tests);
* no tensor requires grad: the kernel has no backward; :func:`gag_attention` sends ``requires_grad`` inputs
  to its differentiable torch path;
* head dims up to 256.

Numerics: scores and both normalizations in fp32; fp32 value products in IEEE fp32 (never TF32); half
inputs are multiplied by the maps split into high and low halves in the input dtype (two tensor-core dots,
fp32 accumulation), so half inputs lose only the final cast of the output against the fp32 torch path.
``strength == 0`` and ``method == "dense"`` return ``F.scaled_dot_product_attention`` itself (bit for bit).
Status: tested in the Triton interpreter against the float64 oracle (tests/test_triton_attention.py) and
compiled to cubin for sm_80 and sm_90 with Triton 3.9 (``triton.compile`` + ptxas, no device needed); not yet
run or timed on a GPU (``python experiments/bench_attention.py --device cuda`` measures it).

Errors: fully masked query rows, NaN/+inf scores (overflowing :math:`q\cdot k`), non-finite k or v and NaN/+inf
in an additive mask raise ``ValueError`` like the torch path; the kernel reports them in the status word of
:class:`hopfield_gag.ops.codes.Status` (the same bits as every other path). A row that runs out of the
entmax iteration budget (``Status.ITER_LIMIT``) keeps its bracketed iterate; the CPU paths instead recompute
such rows exactly, so the two do not promise the same answer there (the budget is never reached on real rows).
"""
from __future__ import annotations

import functools
import importlib.util
import math
import os
from typing import NamedTuple

import torch
import torch.nn.functional as F
from torch import Tensor

from .._validation import check_mask, check_qkv, nonfinite_any, sdpa_mask
from .codes import Parallel, Status
from .normalizers import raise_for_status
from .params import GagParams
from .threshold import entmax_setup

__all__ = ["triton_gag_attention", "triton_applies", "triton_available", "FusedParts", "MAX_KEYS", "launch",
           "fused_forward"]

MAX_KEYS = 512
MAX_HEAD_DIM = 256
_DTYPES = (torch.float16, torch.bfloat16, torch.float32)
_MAXIT = 100  # entmax iteration budget per block of rows (bisection alone collapses an fp32 bracket in ~30)
_MODULES: dict = {}


class FusedParts(NamedTuple):
    """Intermediates of :func:`triton_gag_attention` in the field order of
    :class:`hopfield_gag.GAGParts` (fp32): dense, sparse, delta (B.., Lq, Dv); parallel_coef, cap_active (bool),
    token_scale (B.., Lq); output (B.., Lq, Dv) = the method output before ``strength``."""

    dense: Tensor
    sparse: Tensor
    delta: Tensor
    parallel_coef: Tensor
    cap_active: Tensor
    token_scale: Tensor
    output: Tensor


def _interpreting() -> bool:
    return os.environ.get("TRITON_INTERPRET", "0") not in ("", "0")


@functools.lru_cache(maxsize=1)
def triton_available() -> bool:
    """True if ``triton`` can be imported (it is the ``gpu`` extra)."""
    return importlib.util.find_spec("triton") is not None


def _kernel():
    """The kernel module, built for the current mode. ``triton.jit`` decides between the compiler and the
    interpreter when it decorates, so each mode gets its own copy of the module (loaded on first use)."""
    mode = _interpreting()
    mod = _MODULES.get(mode)
    if mod is None:
        path = os.path.join(os.path.dirname(os.path.abspath(__file__)), "_triton_kernel.py")
        name = "hopfield_gag.ops._triton_kernel" + ("_interpreted" if mode else "")
        spec = importlib.util.spec_from_file_location(name, path)
        mod = importlib.util.module_from_spec(spec)
        spec.loader.exec_module(mod)
        _MODULES[mode] = mod
    return mod


def triton_applies(q: Tensor, k: Tensor, v: Tensor, mask: Tensor | None = None) -> bool:
    """Whether :func:`triton_gag_attention` handles these inputs (otherwise use the torch path).

    True when triton is importable, q, k, v are fp16/bf16/fp32 on a CUDA device (any device under
    ``TRITON_INTERPRET=1``), none of q, k, v, mask requires grad (unless grad mode is off), ``Lk <= MAX_KEYS``,
    the head dims are at most 256 and no tensor is empty. Shapes and values are not validated here (:func:`gag_attention` does that first)."""
    tensors = (q, k, v) if mask is None else (q, k, v, mask)
    if not all(isinstance(x, Tensor) for x in tensors) or q.dim() < 2 or k.dim() < 2 or v.dim() < 2:
        return False
    if any(x.requires_grad for x in tensors) and torch.is_grad_enabled():
        return False
    if q.dtype not in _DTYPES or k.dtype != q.dtype or v.dtype != q.dtype:
        return False
    if not (q.is_cuda or _interpreting()):
        return False
    if k.shape[-2] > MAX_KEYS or q.shape[-1] > MAX_HEAD_DIM or v.shape[-1] > MAX_HEAD_DIM:
        return False
    if q.numel() == 0 or k.numel() == 0 or v.numel() == 0:  # empty launches: the torch path handles them
        return False
    return triton_available()


def _pow2(n: int, floor: int = 16) -> int:
    return max(floor, 1 << max(0, (n - 1).bit_length()))


def _as_4d(x: Tensor, batch: tuple, rows: int, cols: int) -> Tensor:
    """Broadcast x to (*batch, rows, cols) and view it as (B', H', rows, cols) (copies only when the
    leading batch dims cannot be merged by a view)."""
    x = x.expand(*batch, rows, cols)
    if len(batch) == 0:
        return x.reshape(1, 1, rows, cols)
    if len(batch) == 1:
        return x.unsqueeze(0)
    return x.reshape(math.prod(batch[:-1]), batch[-1], rows, cols)


def triton_gag_attention(
    q: Tensor,
    k: Tensor,
    v: Tensor,
    *,
    mask: Tensor | None = None,
    params: GagParams | None = None,
    return_parts: bool = False,
    block_m: int | None = None,
    num_warps: int | None = None,
    **options,
):
    r"""Fused forward of :func:`hopfield_gag.gag_attention` (same math, arguments and output) in one Triton
    launch; forward only.

    Parameters
    ----------
    q : Tensor (..., Lq, D);  k : Tensor (..., Lk, D);  v : Tensor (..., Lk, Dv)
        fp16/bf16/fp32, one device (CUDA, or any under ``TRITON_INTERPRET=1``), batch dims broadcast,
        ``Lk <= MAX_KEYS``, ``D, Dv <= 256``.
    mask : Tensor, optional
        Bool (True = attend) or additive float, broadcastable to (..., Lq, Lk).
    params : GagParams, optional
        The guidance parameters (:class:`hopfield_gag.ops.params.GagParams`; default: its defaults);
        ``**options`` (``scale``, ``method``, ``lam``, ``eta``, ``zeta``, ``alpha``, ``strength``, ``aa_range``,
        ``parallel``) replace fields of it, as in :func:`gag_attention`; ``alpha > 1`` any value (1.5 and 2 use
        the exact closed-form finish).
    return_parts : bool
        Also return :class:`FusedParts` (fp32).
    block_m, num_warps : int, optional
        Launch tuning (queries per program, warps); defaults depend on the padded key length.

    Returns
    -------
    Tensor (..., Lq, Dv) in the dtype of ``q``; with ``return_parts``, ``(output, FusedParts)``.

    Raises
    ------
    ValueError
        Arguments out of range (as :func:`gag_attention`), inputs the kernel does not handle
        (:func:`triton_applies` is False), a fully masked query row, NaN/+inf scores or additive mask.
    """
    params = GagParams.from_kwargs(params, **options)
    batch = check_qkv(q, k, v)
    scores_shape = (*batch, q.shape[-2], k.shape[-2])
    check_mask(mask, scores_shape, q.device)
    beta = params.beta(q.shape[-1])
    if not triton_applies(q, k, v, mask):
        raise ValueError(
            "triton_gag_attention needs fp16/bf16/fp32 CUDA tensors (or TRITON_INTERPRET=1), no grad, "
            f"Lk <= {MAX_KEYS}, head dims <= {MAX_HEAD_DIM}, and triton installed; got dtype {q.dtype}, device "
            f"{q.device}, Lk = {k.shape[-2]}, D = {q.shape[-1]}, Dv = {v.shape[-1]}"
        )
    return fused_forward(q, k, v, mask, scores_shape, beta, params, return_parts, block_m=block_m,
                         num_warps=num_warps)


def fused_forward(q, k, v, mask, scores_shape, beta, params: GagParams, return_parts=False, block_m=None,
                  num_warps=None):
    """:func:`launch` and the read of its status word (raising as :func:`gag_attention` does), for arguments
    that have passed :func:`gag_attention`'s checks and :func:`triton_applies`. Returns the output (and
    :class:`FusedParts` with ``return_parts``)."""
    if not return_parts and params.is_off:
        return F.scaled_dot_product_attention(q, k, v, attn_mask=sdpa_mask(mask, q.dtype), scale=params.scale)
    out, parts, status = launch(q, k, v, mask, scores_shape, beta, params, return_parts, block_m, num_warps)
    raise_for_status(status, q, k, v, mask)  # the one host synchronization
    return (out, parts) if return_parts else out


def launch(q, k, v, mask, scores_shape, beta, params: GagParams, return_parts=False, block_m=None,
           num_warps=None):
    """One launch of the kernel, without a host synchronization: ``(out, parts or None, status)`` with
    ``status`` a 0-dim int32 device tensor of :class:`~hopfield_gag.ops.codes.Status` bits (the kernel's
    row conditions and ``KV_NONFINITE`` from a device-side check of k and v). ``out`` is SDPA itself when
    ``params`` is the off switch (``strength == 0`` or ``method == "dense"``)."""
    method, strength = params.method, params.strength

    batch = tuple(scores_shape[:-2])
    lq, lk, dim, dv = q.shape[-2], k.shape[-2], q.shape[-1], v.shape[-1]
    q4, k4, v4 = _as_4d(q, batch, lq, dim), _as_4d(k, batch, lk, dim), _as_4d(v, batch, lk, dv)
    nb, nh = q4.shape[0], q4.shape[1]
    device = q.device

    mask_kind, m4 = 0, q4  # q4: a dummy pointer when there is no mask
    if mask is not None:
        # (type, dtype, shape and device: _validation.check_mask; NaN/+inf in an additive mask shows as a
        # non-finite score)
        if mask.dtype == torch.bool:
            mask_kind, m4 = 1, _as_4d(mask, batch, lq, lk).view(torch.uint8)
        else:
            mask_kind, m4 = 2, _as_4d(mask.to(torch.float32), batch, lq, lk)

    out = torch.empty(nb, nh, lq, dv, dtype=q.dtype, device=device)
    f32 = dict(dtype=torch.float32, device=device)
    if return_parts:
        pd, ps, po = (torch.empty(nb, nh, lq, dv, **f32) for _ in range(3))
        pc, ptok = torch.empty(nb, nh, lq, **f32), torch.empty(nb, nh, lq, **f32)
        pcap = torch.empty(nb, nh, lq, dtype=torch.int8, device=device)
    else:
        pd = ps = po = pc = ptok = pcap = out  # unused pointers
    flag = torch.zeros(1, dtype=torch.int32, device=device)

    block_n = _pow2(lk)
    # Launch defaults from ptxas -v for sm_80 (Triton 3.9, fp16 gag, D = 64; not timed: no GPU was at hand):
    # (BLOCK_M, BLOCK_N, warps) = (64, 64, 8) and (32, 128, 8) compile without spills, (64, 128, 8) spills
    # 312 B, (16, 256, 16) 52 B, (16, 512, 16) ~1 KB (the k tile dominates: a tiled scheme would help there).
    if block_m is None:
        block_m = 64 if block_n <= 64 else max(16, 4096 // block_n)
    if num_warps is None:
        num_warps = 4 if block_n <= 32 else (8 if block_n <= 128 else 16)
    setup = entmax_setup(params.alpha, lk)  # kind and the upper end of the threshold bracket (z units)
    p = params
    grid = (nb * nh, -(-lq // block_m))  # batch·head on axis 0 (up to 2^31 - 1 programs; axis 1 stops at 65535)
    _kernel().gag_fwd_kernel[grid](
        q4, k4, v4, m4, out, pd, ps, po, pc, pcap, ptok, flag,
        *q4.stride(), *k4.stride(), *v4.stride(), *m4.stride(), *out.stride(),
        nh, lq, lk, dim, dv,
        float(beta), p.lam, p.eta_value, p.zeta, p.strength, p.alpha, setup.hi0, p.aa_range[0], p.aa_range[1],
        METHOD=int(p.method_code), KIND=int(setup.kind), MASK_KIND=mask_kind, HALF=q.dtype != torch.float32,
        PARTS=bool(return_parts), ZETA0=p.zeta == 0.0, STRENGTH1=p.strength == 1.0, MAXIT=_MAXIT,
        WIDEN=q.dtype == torch.bfloat16 and _interpreting(), POSITIVE=p.parallel_code == Parallel.POSITIVE,
        BLOCK_M=block_m, BLOCK_N=block_n, BLOCK_D=_pow2(dim), BLOCK_DV=_pow2(dv),
        num_warps=num_warps,
    )
    # the kernel's row conditions, and the finiteness of k and v (a NaN in v never shows in the scores): one
    # status word, no host synchronization (Status.ITER_LIMIT: the bracketed iterate was used)
    status = flag[0] | nonfinite_any(k, v).to(flag.dtype) * int(Status.KV_NONFINITE)

    shape_vec, shape_tok = (*batch, lq, dv), (*batch, lq)
    if params.is_off:
        out = F.scaled_dot_product_attention(q, k, v, attn_mask=sdpa_mask(mask, q.dtype), scale=params.scale)
    else:
        out = out.reshape(shape_vec)
    if not return_parts:
        return out, None, status
    d, s = pd.reshape(shape_vec), ps.reshape(shape_vec)
    parts = FusedParts(d, s, s - d, pc.reshape(shape_tok), pcap.reshape(shape_tok).bool(),
                       ptok.reshape(shape_tok), po.reshape(shape_vec))
    return out, parts, status
