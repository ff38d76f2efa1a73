r"""Maps from scores to the probability simplex: softmax, sparsemax and :math:`\alpha`-entmax.

All three solve a regularized argmax over the simplex :math:`\triangle = \{p \ge 0, \mathbf 1^\top p = 1\}`:

.. math::

    \alpha\text{-entmax}(z) = \arg\max_{p\in\triangle}\; p^\top z + H^T_\alpha(p), \qquad
    H^T_\alpha(p) = \frac{1}{\alpha(\alpha-1)}\sum_j (p_j - p_j^\alpha),

with Shannon entropy at :math:`\alpha = 1` (softmax) and :math:`\alpha = 2` giving sparsemax. For
:math:`\alpha > 1` the solution has the threshold form

.. math::

    p_i = \big[(\alpha-1) z_i - \tau\big]_+^{1/(\alpha-1)}, \qquad \tau \text{ such that } \textstyle\sum_i p_i = 1.

Algorithms for the threshold (``method=``):

``"newton"`` (default, exact, no sort)
    :math:`h(t) = \lVert (z - t)_+ \rVert_r - 1/(\alpha-1)` with :math:`r = 1/(\alpha-1)` and
    :math:`t = \tau/(\alpha-1)` is decreasing in :math:`t` and convex for :math:`\alpha \le 2` (a norm of
    a vector of convex, non-negative functions), so Newton's method started at the lower bracket end
    :math:`t_0 = \max z - 1/(\alpha-1)` increases monotonically to the root; a bisection bracket
    safeguards :math:`\alpha > 2` and rounding. The iteration finishes *exactly*: at :math:`\alpha = 1.5`
    and :math:`\alpha = 2` the threshold on a fixed support :math:`S` has a closed form, which is accepted
    only when the support it induces is :math:`S` itself (so it is the root, not an approximation). For
    other :math:`\alpha` Newton runs to a stall at double precision on the final smooth piece. This runs
    row-wise in a small C kernel (:mod:`hopfield_gag.ops._kernel`) on CPU fp32/fp64. Everywhere else the
    op :func:`entmax_op` runs a sync-free PyTorch form (:func:`_entmax_torch`): a fixed, provably
    sufficient budget of bisection steps, then the same exact support-based finish.
``"sort"`` (exact reference, :math:`\alpha \in \{1.5, 2\}`)
    The sort-and-cumsum algorithms of Martins & Astudillo (2016) and Peters, Niculae & Martins (2019).
``"bisect"`` (reference, any :math:`\alpha > 1`)
    64 bisection steps on :math:`\tau \in [-1, -(1/n)^{\alpha-1}]` (after shifting the max to 0), then
    renormalization (Blondel et al. 2020; the ``entmax`` package's ``entmax_bisect``).

Backward passes use the closed-form Jacobian (never materialized):

.. math::

    \frac{\partial p}{\partial z} = \mathrm{diag}(s) - \frac{s s^\top}{\mathbf 1^\top s}, \qquad
    s_j = p_j^{2-\alpha}\,\mathbb 1[p_j > 0]

(:math:`s = p` for softmax, :math:`s = \mathbb 1[p>0]` for sparsemax), which is symmetric, so the
vector–Jacobian and Jacobian–vector products coincide (:func:`jacobian_vector_product`).

Numerics. Half-precision inputs are computed in fp32, renormalized, and cast back; fp32 and fp64 are
computed in their own precision (the C kernel accumulates in double). Masks are boolean (``True`` = keep)
or additive floats (``-inf`` removes an entry); ``-inf`` entries in the scores themselves are treated as
masked. NaN or ``+inf`` scores raise ``ValueError`` naming the argument, and so does a row with no
unmasked entry (it has no distribution). Entries removed by a boolean mask are not inspected.
For :math:`1 < \alpha < 1 + 10^{-3}` (``threshold.NEAR_ONE``) every method searches the threshold's offset
from :math:`-1/(\alpha-1)` instead (:func:`_entmax_near_one`, log1p/exp, on every device): the coordinates above
lose :math:`\epsilon/(\alpha-1)` there (at :math:`\alpha = 1 + 2^{-52}` they returned rows 5% off softmax,
which α-entmax equals to within :math:`\approx 0.45(\alpha-1)`, measured), and the fused C and Triton
kernels leave such calls to the torch path.

References: Martins & Astudillo, "From Softmax to Sparsemax", ICML 2016 (arXiv 1602.02068); Peters,
Niculae & Martins, "Sparse Sequence-to-Sequence Models", ACL 2019 (arXiv 1905.05702); Blondel, Martins &
Niculae, "Learning with Fenchel-Young Losses", JMLR 2020 (arXiv 1901.02324).
"""
from __future__ import annotations

import ctypes
import math

import torch
from torch import Tensor, nn

from . import _kernel
from .codes import EntmaxKind, Status
from .threshold import entmax_setup, near_one
from .._validation import check_dim, check_finite, check_scalar, check_tensor, checks_enabled, compute_dtype

__all__ = [
    "apply_mask",
    "entmax_op",
    "bisection_budget",
    "jacobian_weights",
    "jacobian_vector_product",
    "SoftmaxFunction",
    "EntmaxFunction",
    "softmax",
    "entmax",
    "sparsemax",
    "normalize",
    "Softmax",
    "Entmax",
    "Sparsemax",
    "Normalize",
]

METHODS = ("newton", "sort", "bisect")
_BISECT_STEPS = 64

# ----------------------------------------------------------------------------------------------------------
# Input handling


def apply_mask(scores: Tensor, mask, name: str = "x", check: bool = True) -> Tensor:
    r"""Apply a mask to scores: boolean ``False`` entries become :math:`-\infty`, an additive float mask
    is added (it may hold :math:`-\infty`, not NaN or :math:`+\infty`).

    Parameters
    ----------
    scores : Tensor (..., n)
    mask : Tensor, bool or floating, broadcastable to ``scores`` (not the other way round).
    name : str
        How the error messages name ``scores``.
    check : bool
        Check an additive mask for NaN/+inf here (a host synchronization). ``False`` leaves it to the
        caller: such an entry turns its score into NaN/+inf, which the entmax op flags.

    Returns
    -------
    Tensor, the shape and dtype of ``scores``.
    """
    shape = scores.shape
    if not isinstance(mask, torch.Tensor):
        raise TypeError(f"mask must be a torch.Tensor (bool or floating) or None, got {type(mask).__name__}")
    try:
        target = torch.broadcast_shapes(shape, mask.shape)
    except RuntimeError:
        target = None
    if target != shape:
        raise ValueError(f"mask of shape {tuple(mask.shape)} must be broadcastable to {name} of shape {tuple(shape)}")
    if mask.device != scores.device:
        raise ValueError(f"mask is on {mask.device} but {name} is on {scores.device}")
    if mask.dtype == torch.bool:
        return scores.masked_fill(~mask, -math.inf)
    if mask.is_floating_point():
        if check and bool((torch.isnan(mask) | torch.isposinf(mask)).any()):
            raise ValueError("mask (additive) must not contain NaN or +inf; use -inf to remove an entry")
        return scores + mask.to(scores.dtype)
    raise ValueError(f"mask must have dtype bool (True = keep) or a floating dtype (additive), got {mask.dtype}")


def _prepare(x: Tensor, dim: int, mask, name: str = "x", check: bool = True) -> tuple[Tensor, int]:
    """Validate, upcast half types, apply the mask. Returns (scores in compute dtype, normalized dim)."""
    check_tensor(name, x, min_dim=1)
    dim = check_dim("dim", dim, x.dim())
    if x.shape[dim] == 0:
        raise ValueError(f"{name} must have at least one entry along dim={dim}, got shape {tuple(x.shape)}")
    z = x.to(compute_dtype(x.dtype))
    if mask is not None:
        z = apply_mask(z, mask, name, check=check)
    return z, dim


def _raise_for_row_max(zmax: Tensor, name: str = "x") -> None:
    """Turn a non-finite row maximum into the documented error (NaN and +inf propagate into the max)."""
    if bool(torch.isfinite(zmax).all()):
        return
    if bool(torch.isnan(zmax).any()):
        raise ValueError(f"{name} must not contain NaN")
    if bool(torch.isposinf(zmax).any()):
        raise ValueError(f"{name} must not contain +inf")
    raise ValueError(
        f"{name}: every row must keep at least one finite entry; a fully masked row (all -inf) has no "
        "distribution"
    )


def _check_alpha(alpha) -> float:
    a = check_scalar("alpha", alpha, gt=1.0)
    return a


def _check_method(method: str, alpha: float) -> str:
    if method not in METHODS:
        raise ValueError(f"method must be one of {METHODS}, got {method!r}")
    if method == "sort" and alpha not in (1.5, 2.0):
        raise ValueError(f"method='sort' is exact only for alpha in (1.5, 2.0), got alpha={alpha}; use 'newton'")
    return method


# ----------------------------------------------------------------------------------------------------------
# Jacobian (shared by every backward and by hopfield.retrieval_jacobian)


def jacobian_weights(p: Tensor, alpha: float) -> Tensor:
    r"""Weights :math:`s` of the normalizer Jacobian :math:`\mathrm{diag}(s) - s s^\top/\mathbf 1^\top s`.

    :math:`s_j = p_j^{2-\alpha}` on the support :math:`p_j > 0` and 0 elsewhere; :math:`s = p` for
    softmax (:math:`\alpha = 1`), :math:`s = \mathbb 1[p > 0]` for sparsemax, :math:`s = \sqrt p` for
    1.5-entmax (Peters et al. 2019, §3).

    Parameters
    ----------
    p : Tensor (..., n)
        Output of the normalizer (any shape; elementwise).
    alpha : float
        :math:`\alpha \ge 1`.

    Returns
    -------
    Tensor, same shape and dtype as ``p``.
    """
    alpha = check_scalar("alpha", alpha, ge=1.0)
    if alpha == 1.0:
        return p
    if alpha == 2.0:
        return (p > 0).to(p.dtype)
    if alpha == 1.5:
        return p.sqrt()
    positive = p > 0
    return torch.where(positive, p.clamp_min(torch.finfo(p.dtype).tiny).pow(2.0 - alpha), torch.zeros_like(p))


def jacobian_vector_product(p: Tensor, g: Tensor, alpha: float, dim: int = -1) -> Tensor:
    r"""Product of the normalizer Jacobian at output ``p`` with ``g`` along ``dim``.

    .. math::  J g = s \odot g - s\,\frac{\langle s, g\rangle}{\mathbf 1^\top s},
               \qquad s = \text{jacobian\_weights}(p, \alpha).

    The Jacobian is symmetric, so this is also the vector–Jacobian product used in backward.

    Parameters
    ----------
    p : Tensor (..., n, ...)   normalizer output.
    g : Tensor, same shape as ``p``.
    alpha : float, :math:`\alpha \ge 1`.
    dim : int, the normalized dimension.
    """
    s = jacobian_weights(p, alpha)
    ssum = s.sum(dim, keepdim=True)
    coef = (s * g).sum(dim, keepdim=True) / ssum
    return s * g - s * coef


# ----------------------------------------------------------------------------------------------------------
# Threshold algorithms. All take scores z in the compute dtype (masked entries = -inf) and return p.


def _entmax_sort(z: Tensor, alpha: float, dim: int) -> Tensor:
    """Exact sort-based 1.5-entmax / sparsemax (reference path)."""
    zmax = z.amax(dim, keepdim=True)
    _raise_for_row_max(zmax)
    a = alpha - 1.0
    # Entries below max - 1/a can never be in the support; give -inf a finite stand-in there so the
    # cumulative sums stay finite. Shift first: at |z| ~ 1e38 an unshifted max - c rounds to max.
    x = a * (z - zmax).clamp_min(-(2.0 / a + 1.0))
    xs, _ = torch.sort(x, dim=dim, descending=True)
    n = z.shape[dim]
    shape = [1] * z.dim()
    shape[dim] = n
    rho = torch.arange(1, n + 1, device=z.device, dtype=z.dtype).view(shape)
    csum = xs.cumsum(dim)
    if alpha == 2.0:
        support = (1 + rho * xs > csum).sum(dim, keepdim=True)
        tau = (csum.gather(dim, support - 1) - 1) / support.to(z.dtype)
        p = (x - tau).clamp_min(0)
    else:
        mean = csum / rho
        mean_sq = (xs * xs).cumsum(dim) / rho
        ss = rho * (mean_sq - mean * mean)
        delta = (1 - ss) / rho
        tau_rho = mean - delta.clamp_min(0).sqrt()
        support = (tau_rho <= xs).sum(dim, keepdim=True)
        tau = tau_rho.gather(dim, support - 1)
        p = (x - tau).clamp_min(0).square()
    return p / p.sum(dim, keepdim=True)


def _entmax_near_one(z: Tensor, alpha: float) -> tuple[Tensor, Tensor]:
    r"""alpha-entmax over the last dim for :math:`1 < \alpha < 1 + 10^{-3}` (``threshold.near_one``), in the
    coordinates that stay exact as :math:`a = \alpha - 1 \to 0`: with :math:`u = z - \max z` and the offset
    :math:`s = \tau + 1/a` of the threshold,

    .. math::

        p_i = \big(1 + a(u_i - s)\big)_+^{1/a} = \exp\!\big(\mathrm{log1p}(a(u_i - s))/a\big),

    whose rounding is relative to :math:`|u_i - s|`, not to :math:`1/a` (the limit :math:`a \to 0` is
    :math:`e^{u_i - s}`, softmax). :math:`\sum_i p_i` falls in :math:`s`; it is :math:`\ge 1` at :math:`s = 0`
    (the maximal entry alone gives 1) and :math:`\le 1` at :math:`s = (1 - m^{-a})/a \le \log m` (every
    :math:`p_i \le 1/m`, :math:`m` the row's finite entries). 64 bisection steps put the bracket below
    :math:`2^{-64}\log m`, under the rounding of :math:`s`'s effect on :math:`p`; then the row is renormalized.
    Computed in float64 (fp32 rows too, as :func:`_entmax_torch` does for general alpha), no host sync.

    Returns ``(p, flags)`` as :func:`_entmax_torch` (rows without a distribution come out NaN and flagged).
    """
    if z.numel() == 0:
        return torch.empty_like(z), torch.zeros((), dtype=torch.int64, device=z.device)
    a = alpha - 1.0
    work = z if z.dtype == torch.float64 else z.double()
    zmax = work.amax(-1, keepdim=True)
    flags = _row_flags(zmax)
    u = work - zmax  # -inf entries stay -inf: a (u - s) clamps to -1, p = 0
    m = (u > -math.inf).sum(-1, keepdim=True).clamp_min(1).to(work.dtype)
    lo = torch.zeros_like(zmax)
    hi = -torch.expm1(-a * torch.log(m)) / a

    def weights(s):
        return torch.exp(torch.log1p((a * (u - s)).clamp_min(-1.0)) / a)

    for _ in range(_BISECT_STEPS):
        mid = 0.5 * (lo + hi)
        above = weights(mid).sum(-1, keepdim=True) >= 1.0
        lo = torch.where(above, mid, lo)
        hi = torch.where(above, hi, mid)
    p = weights(lo)
    return (p / p.sum(-1, keepdim=True)).to(z.dtype), flags


def _entmax_bisect(z: Tensor, alpha: float, dim: int, n_iter: int = _BISECT_STEPS) -> Tensor:
    """Bisection on the threshold for any alpha > 1 (reference path; near 1, :func:`_entmax_near_one`)."""
    if near_one(alpha):
        p, flags = _entmax_near_one(z.movedim(dim, -1), alpha)
        _raise_for_flags(flags)
        return p.movedim(-1, dim)
    zmax = z.amax(dim, keepdim=True)
    _raise_for_row_max(zmax)
    a = alpha - 1.0
    r = 1.0 / a
    x = a * (z - zmax)
    n = z.shape[dim]
    lo = torch.full_like(zmax, -1.0)
    hi = torch.full_like(zmax, -((1.0 / n) ** a))
    for _ in range(n_iter):
        mid = 0.5 * (lo + hi)
        f = (x - mid).clamp_min(0).pow(r).sum(dim, keepdim=True) - 1
        above = f >= 0
        lo = torch.where(above, mid, lo)
        hi = torch.where(above, hi, mid)
    p = (x - lo).clamp_min(0).pow(r)
    return p / p.sum(dim, keepdim=True)


# the status bits (one home: ops/codes.py), under their old private names
_FLAG_NONFINITE, _FLAG_EMPTY = int(Status.NONFINITE_SCORES), int(Status.FULLY_MASKED)
_FLAG_MAXIT, _FLAG_NOMEM = int(Status.ITER_LIMIT), int(Status.OUT_OF_MEMORY)


def _row_flags(zmax: Tensor) -> Tensor:
    """Sync-free status of a batch of rows from their maxima, as a 0-dim int64 tensor: ``Status.NONFINITE_SCORES``
    = a NaN or +inf score (both propagate into the max), ``Status.FULLY_MASKED`` = a row with no finite entry."""
    nonfinite = (~(zmax < math.inf)).any().to(torch.int64)
    empty = (zmax == -math.inf).any().to(torch.int64)
    return nonfinite * _FLAG_NONFINITE + empty * _FLAG_EMPTY


def _raise_for_flags(flags: Tensor | int, name: str = "x") -> None:
    """Turn a status word of the entmax op into the documented error (the one host read of the flags)."""
    f = int(flags)
    if f & _FLAG_NONFINITE:
        raise ValueError(f"{name} must not contain NaN or +inf")
    if f & _FLAG_EMPTY:
        raise ValueError(
            f"{name}: every row must keep at least one finite entry; a fully masked row (all -inf) has no "
            "distribution"
        )
    if f & _FLAG_NOMEM:
        raise MemoryError("entmax kernel: could not allocate a per-thread row buffer")


def raise_for_status(status, q: Tensor, k: Tensor, v: Tensor, mask=None, name: str = "the scores (B, H, Lq, Lk)") -> None:
    """Read a guided-attention status word (:class:`~hopfield_gag.ops.codes.Status`; an int or a 0-dim tensor:
    the one host read) and, if any error bit is set, raise the error that names the culprit: a non-finite
    q, k or v; NaN/+inf in an additive mask; then the scores' own condition. ``ITER_LIMIT`` is not an error
    (the paths that set it use the bracket estimate, or recompute)."""
    f = int(status) & ~_FLAG_MAXIT
    if f == 0:
        return
    check_finite("q", q)
    check_finite("k", k)
    check_finite("v", v)
    if mask is not None and mask.dtype != torch.bool and bool((torch.isnan(mask) | torch.isposinf(mask)).any()):
        raise ValueError("mask (additive) must not contain NaN or +inf; use -inf to remove an entry")
    _raise_for_flags(f, name=name)
    raise ValueError(f"{name}: non-finite values (status {Status(f)!r})")  # unreachable unless a check is missing


def bisection_budget(n: int, alpha: float, dtype: torch.dtype) -> int:
    r"""Number of bisection steps after which the threshold bracket of :func:`_entmax_torch` is below the
    rounding of the threshold itself, so more steps cannot change it.

    In the coordinates :math:`x = (\alpha-1)(z - \max z)` the threshold lies in :math:`[-1, -(1/n)^{\alpha-1}]`
    (a width below 1), and every point of the bracket has magnitude at least :math:`(1/n)^{\alpha-1}`; a width
    of :math:`\varepsilon (1/n)^{\alpha-1}` is its unit roundoff. Hence
    :math:`\lceil \log_2(1/(\varepsilon (1/n)^{\alpha-1}))\rceil` steps, plus two for the rounding of the
    midpoints: 28 for fp32 at (n, alpha) = (77, 1.5), 61 for fp64 at (300, 2).
    """
    eps = torch.finfo(dtype).eps
    hi = (1.0 / max(n, 1)) ** (alpha - 1.0)
    return int(math.ceil(math.log2(1.0 / (eps * hi)))) + 2


def _entmax_torch(z: Tensor, alpha: float) -> tuple[Tensor, Tensor]:
    r"""alpha-entmax over the last dim in plain PyTorch, for any device, with no host synchronization.

    A fixed budget of bisection steps (:func:`bisection_budget`, provably enough: the bracket ends below the
    threshold's own rounding) gives a lower bound ``lo`` of the threshold; then the exact support-based
    finish: for alpha in {1.5, 2} the threshold on the candidate support :math:`S = \{x > lo\}` has a closed
    form, which is the exact root when :math:`S` is the support and within the bracket width (below
    rounding) of it otherwise, because a superset entry sits within that width of the threshold. For other
    alpha the bracket's lower end is the threshold to rounding. No data-dependent branch: the same work
    for every input, so the op also runs inside CUDA graphs and ``torch.compile``.

    Returns ``(p, flags)`` with the status word of :func:`_row_flags`; rows without a distribution (NaN,
    +inf, fully masked) come out NaN and are flagged instead of raising, so validation costs the caller one
    read of ``flags`` at most.
    """
    if near_one(alpha):
        return _entmax_near_one(z, alpha)
    if z.numel() == 0:
        return torch.empty_like(z), torch.zeros((), dtype=torch.int64, device=z.device)
    n = z.shape[-1]
    setup = entmax_setup(alpha, n)
    kind, a, r = setup.kind, setup.a, setup.r
    # y**r under/overflows fp32 for general alpha
    work = z if setup.closed_form or z.dtype == torch.float64 else z.double()
    zmax = work.amax(-1, keepdim=True)
    flags = _row_flags(zmax)
    x = (work - zmax).mul_(a)  # -inf entries stay -inf and drop out of every sum below
    # the bracket [lo, lo + width] has the same width in every row, halved each step: only lo is a tensor
    lo = torch.full_like(zmax, -1.0)
    width = 1.0 + setup.x_hi
    for _ in range(bisection_budget(n, alpha, work.dtype)):
        width *= 0.5
        mid = lo + width
        y = (x - mid).clamp_min_(0)
        if kind == EntmaxKind.SPARSEMAX:
            f = y.sum(-1, keepdim=True)
        elif kind == EntmaxKind.ENTMAX15:
            f = torch.linalg.vecdot(y, y).unsqueeze(-1)
        else:
            f = y.pow_(r).sum(-1, keepdim=True)
        lo = torch.where(f >= 1.0, mid, lo)
    hi = lo + width
    y = (x - lo).clamp_min_(0)
    if setup.closed_form:
        s0 = (y > 0).sum(-1, keepdim=True).to(y.dtype)
        s1 = y.sum(-1, keepdim=True)
        if kind == EntmaxKind.SPARSEMAX:
            delta = (s1 - 1.0) / s0
        else:
            s2 = torch.linalg.vecdot(y, y).unsqueeze(-1)
            delta = (s1 - (s1 * s1 - s0 * (s2 - 1.0)).clamp_min(0).sqrt()) / s0
        tau = torch.minimum(torch.maximum(lo + delta, lo), hi)
        y = (x - tau).clamp_min_(0)
        p = y if kind == EntmaxKind.SPARSEMAX else y.square_()
    else:
        p = y.pow_(r)
    p = p / p.sum(-1, keepdim=True)
    return p.to(z.dtype), flags


def _c_setup(alpha: float, n: int) -> tuple[float, int, float]:
    """(alpha, kind, hi0): the entmax setup as the C entry points take it (``ValueError`` near alpha = 1, as
    :func:`~hopfield_gag.ops.threshold.entmax_setup`)."""
    setup = entmax_setup(alpha, n)
    return float(alpha), int(setup.kind), setup.hi0


def _kernel_entmax(z: Tensor, alpha: float) -> tuple[Tensor, int]:
    """The C kernel on a contiguous CPU fp32/fp64 tensor, last dim: ``(p, flags)`` as the kernel returns
    them (``Status.ITER_LIMIT`` = some row hit the iteration limit; its output is then only the bracket
    estimate)."""
    lib = _kernel.load()
    p = torch.empty_like(z)
    rows = z.numel() // z.shape[-1] if z.numel() else 0
    if rows == 0:
        return p, 0
    fn = lib.entmax_rows_f32 if z.dtype == torch.float32 else lib.entmax_rows_f64
    ctype = ctypes.POINTER(ctypes.c_float if z.dtype == torch.float32 else ctypes.c_double)
    flags = fn(
        ctypes.cast(z.data_ptr(), ctype),
        ctypes.cast(p.data_ptr(), ctype),
        rows,
        z.shape[-1],
        *_c_setup(alpha, z.shape[-1]),
        torch.get_num_threads(),
    )
    return p, int(flags)


def _kernel_applies(z: Tensor) -> bool:
    return z.device.type == "cpu" and z.dtype in (torch.float32, torch.float64) and _kernel.load() is not None


@torch.library.custom_op("hopfield_gag::entmax", mutates_args=())
def entmax_op(z: Tensor, alpha: float) -> tuple[Tensor, Tensor]:
    r"""The normalizer op: alpha-entmax (alpha > 1) over the last dim; returns ``(p, flags)``.

    ``flags`` is a 0-dim int64 status word (bit 1: a NaN/+inf score, bit 2: a fully masked row; those rows
    are NaN in ``p``); the op itself never raises on data and never synchronizes with the host, so callers
    decide when to read the flags (:func:`entmax` reads them once). Implementations: CPU fp32/fp64, the C
    kernel (:mod:`._kernel`; a row that hits the kernel's iteration limit sends the call to the default
    implementation); every other device and dtype, the sync-free PyTorch :func:`_entmax_torch`. Autograd:
    the closed-form backward :func:`jacobian_vector_product`; a fake implementation serves
    ``torch.compile``/meta tensors.
    """
    return _entmax_torch(z, alpha)


def _entmax_cpu(z: Tensor, alpha: float) -> tuple[Tensor, Tensor | int]:
    """The op's CPU implementation: the C kernel where it applies (a host-int status word), else (and when
    a row hits the kernel's iteration limit) the provably exact default (a 0-dim tensor status word)."""
    if not _kernel_applies(z) or near_one(alpha):
        return _entmax_torch(z, alpha)
    p, flags = _kernel_entmax(z.contiguous(), alpha)
    if flags & _FLAG_MAXIT:
        # the kernel's iterate is only a bracket estimate: use the provably exact default instead
        return _entmax_torch(z, alpha)
    return p, flags


@entmax_op.register_kernel("cpu")
def _(z: Tensor, alpha: float):
    p, flags = _entmax_cpu(z, alpha)
    return p, flags if isinstance(flags, Tensor) else torch.tensor(flags, dtype=torch.int64)


@entmax_op.register_fake
def _(z, alpha):
    return torch.empty_like(z), z.new_empty((), dtype=torch.int64)


def _entmax_setup(ctx, inputs, output):
    ctx.save_for_backward(output[0])
    ctx.alpha = inputs[1]


def _entmax_backward(ctx, grad_p, grad_flags):
    (p,) = ctx.saved_tensors
    return jacobian_vector_product(p, grad_p, ctx.alpha, -1), None


entmax_op.register_autograd(_entmax_backward, setup_context=_entmax_setup)


def _entmax_newton(z: Tensor, alpha: float, dim: int) -> Tensor:
    """The op along ``dim``, raising on its flags (for :class:`EntmaxFunction`; :func:`entmax` calls the op)."""
    p, flags = entmax_op(z.movedim(dim, -1), alpha)
    _raise_for_flags(flags)
    return p.movedim(-1, dim)


_ALGORITHMS = {"newton": _entmax_newton, "sort": _entmax_sort, "bisect": _entmax_bisect}

# ----------------------------------------------------------------------------------------------------------
# autograd Functions


class SoftmaxFunction(torch.autograd.Function):
    r"""Softmax with the closed-form backward :math:`p \odot (g - \langle p, g\rangle)`."""

    @staticmethod
    def forward(ctx, z: Tensor, dim: int):
        zmax = z.amax(dim, keepdim=True)
        _raise_for_row_max(zmax)
        p = torch.softmax(z, dim)
        ctx.save_for_backward(p)
        ctx.dim = dim
        return p

    @staticmethod
    def backward(ctx, g):
        (p,) = ctx.saved_tensors
        return jacobian_vector_product(p, g, 1.0, ctx.dim), None


class EntmaxFunction(torch.autograd.Function):
    r""":math:`\alpha`-entmax (:math:`\alpha > 1`) with the closed-form backward
    :math:`s \odot g - s \langle s, g\rangle/\mathbf 1^\top s`, :math:`s = p^{2-\alpha}` on the support."""

    @staticmethod
    def forward(ctx, z: Tensor, alpha: float, dim: int, method: str):
        p = _ALGORITHMS[method](z, alpha, dim)
        ctx.save_for_backward(p)
        ctx.alpha = alpha
        ctx.dim = dim
        return p

    @staticmethod
    def backward(ctx, g):
        (p,) = ctx.saved_tensors
        return jacobian_vector_product(p, g, ctx.alpha, ctx.dim), None, None, None


# ----------------------------------------------------------------------------------------------------------
# Functional API


def softmax(x: Tensor, dim: int = -1, mask: Tensor | None = None) -> Tensor:
    r"""Softmax :math:`p_i = e^{z_i} / \sum_j e^{z_j}` along ``dim`` (:math:`\alpha = 1` entmax).

    Parameters
    ----------
    x : Tensor (..., n, ...)
        Scores, fp16/bf16/fp32/fp64. ``-inf`` entries get probability 0.
    dim : int
        Dimension normalized.
    mask : Tensor, optional
        Boolean (``True`` = keep) or additive float, broadcastable to ``x``.

    Returns
    -------
    Tensor, same shape and dtype as ``x``; rows on the simplex.

    Raises
    ------
    ValueError
        NaN or ``+inf`` in ``x``; a row with no unmasked entry; a mask of the wrong shape or dtype.
    """
    z, dim = _prepare(x, dim, mask)
    return SoftmaxFunction.apply(z, dim).to(x.dtype)


def entmax(x: Tensor, alpha: float = 1.5, dim: int = -1, mask: Tensor | None = None, method: str = "newton") -> Tensor:
    r""":math:`\alpha`-entmax along ``dim`` for any :math:`\alpha > 1`.

    .. math::

        \alpha\text{-entmax}(z) = \arg\max_{p\in\triangle} p^\top z + H^T_\alpha(p)
        = \big[(\alpha-1) z - \tau\mathbf 1\big]_+^{1/(\alpha-1)}.

    Parameters
    ----------
    x : Tensor (..., n, ...)
        Scores, fp16/bf16/fp32/fp64 (half types are computed in fp32). ``-inf`` entries get 0.
    alpha : float
        :math:`\alpha > 1`; 1.5 is the PLADIS/GAG default, 2 is sparsemax. Use :func:`softmax` (or
        :func:`normalize`) for :math:`\alpha = 1`.
    dim : int
        Dimension normalized.
    mask : Tensor, optional
        Boolean (``True`` = keep) or additive float, broadcastable to ``x``.
    method : {"newton", "sort", "bisect"}
        Threshold algorithm (module docstring). ``"sort"`` only for :math:`\alpha \in \{1.5, 2\}`.

    Returns
    -------
    Tensor, same shape and dtype as ``x``; rows on the simplex (sum 1 to the compute dtype's rounding
    before the final cast), exactly sparse.

    Raises
    ------
    ValueError
        :math:`\alpha \le 1`; unknown method; NaN or ``+inf`` in ``x``; a fully masked row; bad mask.
        The value checks (NaN, +inf, fully masked rows, additive-mask values) cost one host read and are
        skipped with ``HOPFIELD_GAG_CHECKS=0`` (such rows then come out NaN).
    """
    alpha = _check_alpha(alpha)
    method = _check_method(method, alpha)
    checks = checks_enabled()
    z, dim = _prepare(x, dim, mask, check=checks)
    if method != "newton":
        return EntmaxFunction.apply(z, alpha, dim, method).to(x.dtype)
    zl = z.movedim(dim, -1)
    if zl.device.type == "cpu" and not torch.compiler.is_compiling() and not (zl.requires_grad and torch.is_grad_enabled()):
        # eager CPU inference: the op's CPU implementation without the custom-op dispatcher (~0.1 ms a call)
        p, flags = _entmax_cpu(zl, alpha)
    else:
        p, flags = entmax_op(zl, alpha)
    if checks:
        _raise_for_flags(flags)  # the one host read
    return p.movedim(-1, dim).to(x.dtype)


def sparsemax(x: Tensor, dim: int = -1, mask: Tensor | None = None, method: str = "newton") -> Tensor:
    r"""Sparsemax :math:`\arg\min_{p\in\triangle}\lVert p - z\rVert^2 = [z - \tau]_+` along ``dim``
    (:math:`\alpha = 2` entmax). Same arguments, shapes and errors as :func:`entmax`."""
    return entmax(x, 2.0, dim, mask, method)


def normalize(x: Tensor, alpha: float = 1.0, dim: int = -1, mask: Tensor | None = None) -> Tensor:
    r"""The :math:`\alpha`-entmax family including its limit: :func:`softmax` at :math:`\alpha = 1`,
    :func:`entmax` (``method="newton"``) for :math:`\alpha > 1`.

    This is the single entry point the Hopfield, theory and attention layers use, so that every
    retrieval map in the package normalizes scores the same way. Shapes and errors as :func:`entmax`;
    ``alpha < 1`` raises ``ValueError``.
    """
    alpha = check_scalar("alpha", alpha, ge=1.0)
    if alpha == 1.0:
        return softmax(x, dim, mask)
    return entmax(x, alpha, dim, mask)


# ----------------------------------------------------------------------------------------------------------
# Modules


class Softmax(nn.Module):
    """Module form of :func:`softmax`."""

    def __init__(self, dim: int = -1):
        super().__init__()
        self.dim = dim

    def forward(self, x: Tensor, mask: Tensor | None = None) -> Tensor:
        return softmax(x, self.dim, mask)

    def extra_repr(self) -> str:
        return f"dim={self.dim}"


class Entmax(nn.Module):
    """Module form of :func:`entmax`."""

    def __init__(self, alpha: float = 1.5, dim: int = -1, method: str = "newton"):
        super().__init__()
        self.alpha = _check_alpha(alpha)
        self.method = _check_method(method, self.alpha)
        self.dim = dim

    def forward(self, x: Tensor, mask: Tensor | None = None) -> Tensor:
        return entmax(x, self.alpha, self.dim, mask, self.method)

    def extra_repr(self) -> str:
        return f"alpha={self.alpha}, dim={self.dim}, method={self.method!r}"


class Sparsemax(Entmax):
    """Module form of :func:`sparsemax`."""

    def __init__(self, dim: int = -1, method: str = "newton"):
        super().__init__(2.0, dim, method)


class Normalize(nn.Module):
    """Module form of :func:`normalize` (softmax at ``alpha=1``, entmax above)."""

    def __init__(self, alpha: float = 1.0, dim: int = -1):
        super().__init__()
        self.alpha = check_scalar("alpha", alpha, ge=1.0)
        self.dim = dim

    def forward(self, x: Tensor, mask: Tensor | None = None) -> Tensor:
        return normalize(x, self.alpha, self.dim, mask)

    def extra_repr(self) -> str:
        return f"alpha={self.alpha}, dim={self.dim}"
