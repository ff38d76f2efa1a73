"""Argument checks shared by every public function.

Every check raises ``ValueError`` (or ``TypeError`` for a non-tensor) whose message names the
argument and states what was expected, so bad input never turns into a silent NaN downstream.
"""
from __future__ import annotations

import math
import numbers
import os

import torch

FLOAT_DTYPES = (torch.float16, torch.bfloat16, torch.float32, torch.float64)


def check_tensor(name: str, x, *, min_dim: int = 0) -> torch.Tensor:
    """Require a floating tensor of one of the supported dtypes with at least ``min_dim`` dims."""
    if not isinstance(x, torch.Tensor):
        raise TypeError(f"{name} must be a torch.Tensor, got {type(x).__name__}")
    if x.dtype not in FLOAT_DTYPES:
        raise ValueError(
            f"{name} must have a floating dtype in (float16, bfloat16, float32, float64), got {x.dtype}"
        )
    if x.dim() < min_dim:
        raise ValueError(f"{name} must have at least {min_dim} dimension(s), got shape {tuple(x.shape)}")
    return x


def check_finite(name: str, x: torch.Tensor, *, allow_neg_inf: bool = False) -> None:
    """Raise if ``x`` holds NaN or +inf (and -inf unless ``allow_neg_inf``).

    One fused min/max reduction (NaN propagates into both) decides; the entries are counted only to
    word the error.
    """
    if x.numel() == 0:
        return
    lo, hi = torch.aminmax(x.detach())
    lo_ok = bool(~torch.isnan(lo)) if allow_neg_inf else bool(torch.isfinite(lo))
    if lo_ok and bool(torch.isfinite(hi) | (torch.isneginf(hi) & allow_neg_inf)):
        return
    if allow_neg_inf:
        bad = torch.isnan(x) | torch.isposinf(x)
        what = "NaN or +inf"
    else:
        bad = ~torch.isfinite(x)
        what = "NaN or inf"
    if bool(bad.any()):
        raise ValueError(f"{name} must be finite: found {int(bad.sum())} entries that are {what}")


def check_dim(name: str, dim: int, ndim: int) -> int:
    """Normalize a possibly negative ``dim`` and check it is in range for a tensor of ``ndim`` dims."""
    if isinstance(dim, bool) or not isinstance(dim, int):
        raise TypeError(f"{name} must be an int, got {type(dim).__name__}")
    if not -ndim <= dim < max(ndim, 1):
        raise ValueError(f"{name}={dim} is out of range for a tensor with {ndim} dimension(s)")
    return dim % max(ndim, 1)


def check_int(
    name: str, value, *, ge: int | None = None, lt: int | None = None, lt_name: str | None = None,
    allow_none: bool = False,
) -> int | None:
    """Require an integer (Python or NumPy, not ``bool``) with ``ge <= value`` (and ``value < lt``);
    ``None`` passes if ``allow_none``. Returns it as ``int``. ``lt_name`` words the upper bound
    ("an int in [0, N) with N = 5")."""
    if value is None and allow_none:
        return None
    ok = isinstance(value, numbers.Integral) and not isinstance(value, bool)
    ok = ok and (ge is None or value >= ge) and (lt is None or value < lt)
    if not ok:
        if lt is not None:
            what = f"an int in [{ge}, {lt_name or lt})" + (f" with {lt_name} = {lt}" if lt_name else "")
        else:
            what = "an int" + ("" if ge is None else f" >= {ge}")
        raise ValueError(f"{name} must be {what}{' or None' if allow_none else ''}, got {value!r}")
    return int(value)


def check_choice(name: str, value, choices: tuple) -> str:
    """Require ``value`` to be one of ``choices``; the error lists them."""
    if not isinstance(value, str) or value not in choices:
        raise ValueError(f"{name} must be one of {choices}, got {value!r}")
    return value


def default_scale(scale, d: int) -> float:
    """The score scale: ``scale`` checked to be a finite float > 0, or SDPA's default :math:`1/\\sqrt d`."""
    if scale is None and d < 1:
        raise ValueError(f"scale: the default 1/sqrt(d) needs a feature dim d >= 1, got d = {d}; pass scale")
    return 1.0 / math.sqrt(d) if scale is None else check_scalar("scale", scale, gt=0.0)


def _is_real(value) -> bool:
    """A real, non-bool number: Python int/float/Fraction/Decimal-like ``numbers.Real``, or a NumPy scalar or
    one-element array of integer or floating kind."""
    if isinstance(value, bool):
        return False
    if isinstance(value, numbers.Real):
        return getattr(value, "dtype", None) is None or value.dtype.kind in "iuf"
    kind = getattr(getattr(value, "dtype", None), "kind", None)
    return kind is not None and kind in "iuf" and getattr(value, "size", 0) == 1


def check_scalar(
    name: str,
    value,
    *,
    gt: float | None = None,
    ge: float | None = None,
    le: float | None = None,
    lt: float | None = None,
) -> float:
    """Require a finite real number inside the given bounds; return it as ``float``.

    A real number is a Python/NumPy int or float or a one-element real tensor; ``bool`` (``lam=True``), strings
    (``lam="10"``), complex numbers and anything else raise ``TypeError`` naming the argument: the one scalar
    check of every public function."""
    if isinstance(value, torch.Tensor):
        if value.numel() != 1:
            raise ValueError(f"{name} must be a scalar, got a tensor of shape {tuple(value.shape)}")
        if value.dtype == torch.bool or value.is_complex():
            raise TypeError(f"{name} must be a real number, got a tensor of dtype {value.dtype}")
        value = value.item()
    elif not _is_real(value):
        raise TypeError(f"{name} must be a real number (int or float, not bool or str), got {value!r}")
    try:
        v = float(value)
    except (TypeError, ValueError, OverflowError):
        raise TypeError(f"{name} must be a real number, got {value!r}") from None
    if not math.isfinite(v):
        raise ValueError(f"{name} must be finite, got {v}")
    if (gt is None or v > gt) and (ge is None or v >= ge) and (lt is None or v < lt) and (le is None or v <= le):
        return v
    # the message states every bound given (built only on failure: this runs per guided-attention call)
    bounds = [f"{op} {b}" for op, b in ((">", gt), (">=", ge), ("<", lt), ("<=", le)) if b is not None]
    raise ValueError(f"{name} must be {' and '.join(bounds)}, got {v}")


def broadcast_shapes(*shapes) -> torch.Size:
    """``torch.broadcast_shapes`` for the argument checks, in plain Python: the same result and the same
    ``RuntimeError`` on a mismatch, at ~1 us instead of ~50 us (torch's goes through its reference
    implementation), which matters in a per-layer guidance call."""
    if torch.compiler.is_compiling():  # traced shapes may be symbolic: torch's own rules
        return torch.broadcast_shapes(*shapes)
    ndim = 0
    for shape in shapes:
        ndim = len(shape) if len(shape) > ndim else ndim
    out = [1] * ndim
    for shape in shapes:
        for i, size in enumerate(shape, start=ndim - len(shape)):
            if size != 1 and size != out[i]:
                if out[i] != 1:
                    raise RuntimeError(f"shapes {[tuple(s) for s in shapes]} are not broadcastable")
                out[i] = size
    return torch.Size(out)


def compute_dtype(dtype: torch.dtype) -> torch.dtype:
    """Dtype for thresholds and reductions: fp32 for half types, otherwise the input dtype."""
    return torch.float32 if dtype in (torch.float16, torch.bfloat16) else dtype


def check_qkv(
    q: torch.Tensor,
    k: torch.Tensor,
    v: torch.Tensor | None = None,
    *,
    names: tuple[str, str, str] = ("q", "k", "v"),
    length: str = "Lk",
    item: str = "key",
    q_vector: bool = False,
    finite: bool = True,
) -> torch.Size:
    """Validate attention inputs q (..., Lq, d), k (..., Lk, d), v (..., Lk, dv) (``None``: v = k).

    One dtype and device, finite entries, matching d and Lk, Lk >= 1, batch dims that broadcast.
    Returns the broadcast batch shape. The Hopfield form (``q_vector=True``) takes one state per batch
    element, q (..., d), and returns the broadcast of ``q.shape[:-1]`` with the key/value batch dims;
    ``names``, ``length`` and ``item`` word the errors (e.g. ``("xi", "keys", "values")``, ``"N"``,
    ``"pattern"``).
    """
    qn, kn, vn = names
    check_tensor(qn, q, min_dim=1 if q_vector else 2)
    check_tensor(kn, k, min_dim=2)
    for name, x in ((kn, k),) + (() if v is None else ((vn, v),)):
        if x is v:
            check_tensor(vn, v, min_dim=2)
        if x.dtype != q.dtype:
            raise ValueError(f"{name} must have the dtype of {qn} (all inputs need the same dtype, {q.dtype}), got {x.dtype}")
        if x.device != q.device:
            raise ValueError(f"{name} must be on the device of {qn} ({q.device}), got {x.device}")
    if k.shape[-1] != q.shape[-1]:
        raise ValueError(
            f"{kn} must have shape (..., {length}, d) with d = {qn}.shape[-1] = {q.shape[-1]}, "
            f"got {kn} shape {tuple(k.shape)}"
        )
    if k.shape[-2] == 0:
        raise ValueError(f"{kn} must hold at least one {item} (shape (..., {length}, d) with {length} >= 1), "
                         f"got shape {tuple(k.shape)}")
    if v is not None and v.shape[-2] != k.shape[-2]:
        raise ValueError(
            f"{vn} must have shape (..., {length}, dv) with {length} = {kn}.shape[-2] = {k.shape[-2]}, "
            f"got {vn} shape {tuple(v.shape)}"
        )
    q_batch = q.shape[:-1] if q_vector else q.shape[:-2]
    try:
        batch = broadcast_shapes(q_batch, k.shape[:-2], *(() if v is None else (v.shape[:-2],)))
    except RuntimeError:
        raise ValueError(
            f"batch dims of {qn} {tuple(q_batch)}, {kn} {tuple(k.shape[:-2])}"
            + ("" if v is None else f", {vn} {tuple(v.shape[:-2])}")
            + " must broadcast"
        ) from None
    if finite:
        check_finite(qn, q)
        check_finite(kn, k)
        if v is not None:
            check_finite(vn, v)
    return batch


def check_tensor_pair(
    a: torch.Tensor, b: torch.Tensor, names: tuple[str, str], *, same_dtype: bool = True, same_shape: bool = False,
    finite: bool = True,
) -> None:
    """Validate two tensors (..., n) combined elementwise: floating, finite (unless ``finite=False``: that
    check reads device data), the same last dim, and either the same shape (``same_shape``) or broadcastable
    leading dims; one dtype unless ``same_dtype=False``."""
    na, nb = names
    check_tensor(na, a, min_dim=1)
    check_tensor(nb, b, min_dim=1)
    if finite:
        check_finite(na, a)
        check_finite(nb, b)
    if same_dtype and a.dtype != b.dtype:
        raise ValueError(f"{na} and {nb} must have the same dtype, got {a.dtype} and {b.dtype}")
    if same_shape:
        if a.shape != b.shape:
            raise ValueError(f"{nb} must have the shape of {na} {tuple(a.shape)}, got {tuple(b.shape)}")
        return
    if a.shape[-1] != b.shape[-1]:
        raise ValueError(f"{na} and {nb} must have the same last dim, got {a.shape[-1]} and {b.shape[-1]}")
    try:
        broadcast_shapes(a.shape, b.shape)
    except RuntimeError:
        raise ValueError(f"{na} {tuple(a.shape)} and {nb} {tuple(b.shape)} must have broadcastable shapes") from None


def check_output_pair(dense: torch.Tensor, sparse: torch.Tensor) -> None:
    """Validate a pair of attention outputs (..., dv): floating, finite, one dtype, the same last dim and
    broadcastable leading dims (the extrapolation formulas are elementwise)."""
    check_tensor_pair(dense, sparse, ("dense", "sparse"))


def checks_enabled(checks: bool | None = None) -> bool:
    """Whether value checks that read device data back to the host (finiteness, masked rows) run.

    ``checks`` given: that; otherwise the environment variable ``HOPFIELD_GAG_CHECKS`` (``0``, ``false``,
    ``no`` or ``off`` turn them off; default on). Shape, dtype and option checks never read device data and
    always run.
    """
    if checks is not None:
        return bool(checks)
    return os.environ.get("HOPFIELD_GAG_CHECKS", "1").strip().lower() not in ("0", "false", "no", "off")


def nonfinite_any(*tensors: torch.Tensor) -> torch.Tensor:
    """A 0-dim bool tensor: does any of ``tensors`` hold NaN or +-inf? No host synchronization (the caller
    reads it once, together with whatever else it checks)."""
    bad = [~torch.isfinite(t).all() for t in tensors if t.numel()]
    if not bad:
        return torch.zeros((), dtype=torch.bool, device=tensors[0].device if tensors else None)
    return torch.stack(bad).any()


def check_qkv_structure(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor | None = None) -> torch.Size:
    """:func:`check_qkv` without the finiteness checks (which read device data): dtypes, devices, shapes.
    Returns the broadcast batch shape."""
    return check_qkv(q, k, v, finite=False)


def check_mask(mask, scores_shape, device: torch.device | None = None) -> None:
    """The one mask rule of every attention path and every strength: ``mask`` is None, a **bool** tensor
    (``True`` = keep, ``False`` = drop) or a **floating** tensor (an additive bias, computed in the compute
    dtype), broadcastable to the scores ``(B, H, Lq, Lk)`` and on ``device``. Integer, complex and other
    dtypes raise (an int 0/1 mask is ambiguous: keep/drop or a bias of 0 and 1?). The values are checked where
    the mask meets the scores."""
    if mask is None:
        return
    if not isinstance(mask, torch.Tensor):
        raise TypeError(f"mask must be a torch.Tensor or None, got {type(mask).__name__}")
    if mask.dtype != torch.bool and not mask.is_floating_point():
        raise ValueError(
            f"mask must have dtype bool (True = keep, False = drop) or a floating dtype (float16, bfloat16, "
            f"float32, float64: an additive bias), got {mask.dtype}; for a 0/1 mask use mask.bool()"
        )
    try:
        ok = broadcast_shapes(mask.shape, scores_shape) == torch.Size(scores_shape)
    except RuntimeError:
        ok = False
    if not ok:
        raise ValueError(f"mask of shape {tuple(mask.shape)} must be broadcastable to (B, H, Lq, Lk) = {tuple(scores_shape)}")
    if device is not None and mask.device != device:
        raise ValueError(f"mask must be on the device of q ({device}), got {mask.device}")


check_mask_shape = check_mask  # (old name)


def sdpa_mask(mask, dtype: torch.dtype):
    """A mask that passed :func:`check_mask` in the form ``F.scaled_dot_product_attention`` accepts for inputs
    of ``dtype``, with the same meaning: at least 2-D (a (Lk,) mask becomes (1, Lk)) and, if floating, in
    ``dtype`` (SDPA rejects another float dtype; the guided paths cast it to their compute dtype likewise)."""
    if mask is None:
        return None
    if mask.dim() < 2:
        mask = mask.reshape((1,) * (2 - mask.dim()) + tuple(mask.shape))
    if mask.dtype != torch.bool and mask.dtype != dtype:
        mask = mask.to(dtype)
    return mask
