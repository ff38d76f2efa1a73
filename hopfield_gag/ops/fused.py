"""CPU kernels for the fused attention path of :func:`hopfield_gag.gag_attention` (forward only).

* :func:`dual_normalize` writes the softmax and the exact alpha-entmax of each score row of a chunk into one
  (..., 2, rows, Lk) buffer, so that a single GEMM multiplies both probability maps by V (one pass over
  the scores; the row stays in L1 cache between the two normalizations).
* :func:`combine_rows` applies the per-token combination (``sparse``, ``pladis``, ``gag``; then
  ``strength``) to the (..., 2, rows, Dv) product and writes the output rows in place. It is a
  kernel-level second implementation of ``guidance.attention._combine``; the tests compare the two.

Both run in the C kernel of :mod:`._kernel` (OpenMP over rows, sharing torch's thread count). They are
plain functions, not differentiable and not traceable: ``gag_attention`` uses them only in eager CPU
calls without autograd, and its portable torch path everywhere else.
"""
from __future__ import annotations

import ctypes

import torch
from torch import Tensor

from . import _kernel

__all__ = ["available", "dual_normalize", "combine_rows", "COMBINE_METHODS"]

COMBINE_METHODS = {"sparse": 0, "pladis": 1, "gag": 2}


def available(device: torch.device, dtype: torch.dtype) -> bool:
    """True when the fused kernels can run: CPU, fp32/fp64, a built kernel."""
    return device.type == "cpu" and dtype in (torch.float32, torch.float64) and _kernel.load() is not None


def _ptr(t: Tensor):
    ctype = ctypes.c_float if t.dtype == torch.float32 else ctypes.c_double
    return ctypes.cast(t.data_ptr(), ctypes.POINTER(ctype))


def dual_normalize(z: Tensor, alpha: float) -> tuple[Tensor, int]:
    r"""Softmax and :math:`\alpha`-entmax of every row of ``z`` (..., rows, Lk), contiguous, CPU fp32/fp64.

    Returns ``(P, flags)`` with ``P`` (..., 2, rows, Lk): ``P[..., 0, :, :]`` the softmax and
    ``P[..., 1, :, :]`` the entmax of the same rows, and the kernel's status word (bit 1 NaN/+inf score,
    bit 2 fully masked row: such rows are NaN in both maps; bit 4 a row hit the iteration limit: the
    caller must not use the entmax map; bit 8 out of memory).
    """
    lib = _kernel.load()
    z = z.contiguous()
    rows, lk = z.shape[-2], z.shape[-1]
    out = torch.empty(*z.shape[:-2], 2, rows, lk, dtype=z.dtype)
    total = z.numel() // lk if z.numel() else 0
    if total == 0:
        return out, 0
    fn = lib.dual_rows_f32 if z.dtype == torch.float32 else lib.dual_rows_f64
    flags = fn(_ptr(z), _ptr(out), total, lk, rows, float(alpha), torch.get_num_threads())
    return out, int(flags)


def combine_rows(r: Tensor, out: Tensor, method: str, lam: float, eta: float, zeta: float, strength: float) -> None:
    r"""Combine the dense and sparse retrievals ``r`` (G..., 2, rows, Dv) (contiguous; ``r[..., 0, :, :]`` =
    :math:`d`, ``r[..., 1, :, :]`` = :math:`s`) into ``out`` (G..., rows, Dv), a view whose last two dims
    are contiguous (e.g. a chunk of rows of the full output), in place.

    Per token: ``sparse`` :math:`s`; ``pladis`` :math:`d + \lambda(s - d)`; ``gag``
    :math:`s + \lambda\min(1, \eta/\lVert g\rVert) g`, :math:`g = \zeta(s - d) + (1-\zeta) c s`,
    :math:`c = (\lVert s\rVert^2 - \langle d, s\rangle)/\lVert s\rVert^2` (0 where :math:`s = 0`); then
    :math:`d + t(o - d)` with :math:`t` = ``strength``. Accumulation in double.
    """
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
    fn(_ptr(r), _ptr(out), groups, rows, dv, gstride, COMBINE_METHODS[method], float(lam), float(eta),
       float(zeta), float(strength), torch.get_num_threads())
