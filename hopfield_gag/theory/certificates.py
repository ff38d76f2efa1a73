r"""Sound certificates for the sign of the parallel coefficient :math:`c`, and the sign flip of GAG's output
(``THEORY.md`` T5a, T5e, T5f and "The sign flip").

Notation as in :mod:`hopfield_gag.theory.discrepancy`: :math:`D = p_s - p_d`, :math:`\mathrm{TV} =
\tfrac12\lVert D\rVert_1`, :math:`s = p_s V`, :math:`d = p_d V`, :math:`\Delta = s - d`,
:math:`\hat s = s/\lVert s\rVert`, :math:`c = \langle\Delta, s\rangle/\lVert s\rVert^2`.

Every certificate here is a **lower bound on** :math:`\langle\Delta, \hat s\rangle = c\lVert s\rVert`
(units of the values) with a rounding allowance already subtracted, so ``certificate >= 0`` proves
:math:`c \ge 0`. The three bounds (``THEORY.md``):

* transport (T5a, L1): :math:`\mathrm{TV}\cdot(\min_{S^+}w - \max_{S^-}w)`, :math:`w = V\hat s`
  (:func:`hopfield_gag.theory.parallel_certificate` is its bracket);
* norm (T5f, polarization): :math:`\langle\Delta, s\rangle = \tfrac12(\lVert s\rVert^2 - \lVert d\rVert^2
  + \lVert\Delta\rVert^2) \ge \tfrac12(\lVert s\rVert^2 - \lVert d\rVert^2)`: **the sparse output is at least
  as long as the dense output** (averaging shrinks);
* split (T5e): for any :math:`f` non-decreasing in the scores, :math:`\langle D, f\rangle \ge 0` (T1 + L2), and
  :math:`\langle D, Vs\rangle = \langle D, f\rangle + \langle D, Vs - f\rangle \ge \langle D, f\rangle +
  \mathrm{TV}(\min_{S^+} r - \max_{S^-} r)`, :math:`r = Vs - f`, with :math:`f = a\,p_s + e\,z`,
  :math:`a, e \ge 0` on a grid. :math:`f = a p_s` is the perturbative theorem's split
  :math:`VV^\top = aI + b\mathbf 1\mathbf 1^\top + E`.

:func:`parallel_certificate_sharp` is their maximum.
"""
from __future__ import annotations

import math
from dataclasses import dataclass

import torch
from torch import Tensor

from ..ops.params import GagParams
from .._validation import check_scalar, check_tensor, compute_dtype
from .gag import gag_output
from .discrepancy import SparseDenseDiscrepancy, sparse_dense_discrepancy
from .enclosure import gamma, unit_roundoff

F64 = torch.float64

__all__ = [
    "ParallelBounds",
    "parallel_bounds",
    "bounds_of_discrepancy",
    "parallel_certificate_sharp",
    "parallel_norm_certificate",
    "EquiangularFit",
    "equiangular_fit",
    "perturbative_parallel_certificate",
    "sign_flip_margin",
    "sign_flip_of_discrepancy",
    "flipped_tokens",
]

_A_GRID = tuple([0.0] + [2.0 ** (j / 2) for j in range(-12, 9)])  # a, relative to max|w| / max p_s
_E_GRID = (0.0, 0.0625, 0.25, 1.0, 4.0)  # e, relative to max|w| / max|z|


@dataclass(frozen=True)
class ParallelBounds:
    r"""Sound lower bounds on the *exact* :math:`\langle\Delta^\ast, \hat s^\ast\rangle = c^\ast\lVert s^\ast\rVert`
    of the given inputs (all (..., Lq), float64, value units); ``>= 0`` proves :math:`c^\ast \ge 0`. Each bound
    already includes the rigorous error bound of :mod:`hopfield_gag.theory.enclosure` (score rounding, the
    weights' enclosure, matmul rounding, its own evaluation).

    Attributes
    ----------
    direct : Tensor
        The a-posteriori certificate: computed :math:`\langle\hat\Delta, \hat s\rangle` minus its error bound,
        divided by a bound on :math:`\lVert s^\ast\rVert`. Needs s and d; it dominates the other three up to
        their own rounding (each is a lower bound on the same quantity).
    transport, norm, split : Tensor
        The mechanism bounds of the module docstring, made sound the same way.
    sharp : Tensor
        The maximum of the four.
    allowance : Tensor
        The error bound of ``direct``, :math:`E_X/\lVert\hat s\rVert` (``inf`` where nothing can be certified).
    exact : Tensor
        The computed :math:`\langle\hat\Delta, \hat s\rangle` (``parallel_coef * ||s||``), for coverage studies.
    """

    transport: Tensor
    norm: Tensor
    split: Tensor
    sharp: Tensor
    allowance: Tensor
    exact: Tensor
    direct: Tensor | None = None


_U64 = 2.0**-53


def _unit_and_scores(disc: SparseDenseDiscrepancy, enc):
    """float64: D = p_s - p_d, P, N (mass moved up / down), w = V u_hat with u_hat = s_hat/||s_hat||, the bound
    on |fl(w_j) - w_j|, and the conversion error of a lower bound Y on <s~ - d~, u_hat> into one on
    X_hat / ||s_hat|| (matmul rounding + the unit vector's rounding)."""
    V = disc._need("values").to(F64)
    D = disc.p_sparse.to(F64) - disc.p_dense.to(F64)  # sign of a float difference is exact
    P = torch.clamp(D, min=0.0).sum(-1)
    N = torch.clamp(-D, min=0.0).sum(-1)
    s_hat = disc.sparse.to(F64)
    sn = enc.s_norm
    safe = torch.where(sn > 0, sn, torch.ones_like(sn))
    u_hat = s_hat / safe.unsqueeze(-1)
    w = u_hat @ V.transpose(-1, -2)
    dv = V.shape[-1]
    vn = torch.linalg.vector_norm(V, dim=-1)  # (..., Lk)
    err_w = gamma(dv + 3, _U64) * vn.amax(-1, keepdim=True) * 1.01  # |fl(w_j) - <v_j, u_hat>|, ||u_hat|| <= 1.01
    convert = enc.e_matmul * 1.01 + enc.delta_norm * (dv + 4) * 1.1 * _U64
    return D, P, N, w, err_w, convert


def _transport_y(D, P, N, w, err_w, n):
    """Lower bound on <D, w_exact> by the transport lemma: <D, w> >= P min_{S+} w - N max_{S-} w (exact for
    any D; no sum-zero assumption), minus the rounding of w and of this evaluation."""
    inf = torch.full_like(w, math.inf)
    lo = torch.where(D > 0, w, inf).amin(-1)
    hi = torch.where(D < 0, w, -inf).amax(-1)
    lo_t = torch.where(P > 0, P * lo, torch.zeros_like(P))  # P > 0: S+ is not empty, lo is finite
    hi_t = torch.where(N > 0, N * hi, torch.zeros_like(N))
    y = lo_t - hi_t
    return y - (P + N) * err_w - gamma(n + 4, _U64) * (lo_t.abs() + hi_t.abs()), lo, hi


def _split_y(disc: SparseDenseDiscrepancy, D, P, N, w, err_w, n):
    """max over the (a, e) grid of a sound lower bound on <D, w>: <D, f> + P min_{S+} r - N max_{S-} r with
    r = w - f, f = a p_s + e z (any f gives a valid identity; the grid picks a good one). <D, f> = a <D, p_s> +
    e <D, z> and the error terms use |f| <= a p_s + e |z|, so each grid point costs one pass over the keys."""
    ps = disc.p_sparse.to(F64)
    z = disc.z.to(F64)
    z = torch.where(torch.isfinite(z), z, torch.zeros_like(z))
    wmax = w.abs().amax(-1, keepdim=True)
    psmax = ps.amax(-1, keepdim=True).clamp(min=1e-300)
    a_unit = wmax / psmax
    zmax = z.abs().amax(-1, keepdim=True)
    e_unit = torch.where(zmax > 0, wmax / torch.where(zmax > 0, zmax, torch.ones_like(zmax)), torch.zeros_like(zmax))
    w_pos = w + torch.where(D > 0, torch.zeros_like(w), torch.full_like(w, math.inf))
    w_neg = w + torch.where(D < 0, torch.zeros_like(w), torch.full_like(w, -math.inf))
    absD = D.abs()
    d_ps, d_z = (D * ps).sum(-1), (D * z).sum(-1)
    ad_ps, ad_z = (absD * ps).sum(-1), (absD * z.abs()).sum(-1)
    a_u, e_u, wm, pm, zm = (x.squeeze(-1) for x in (a_unit, e_unit, wmax, psmax, zmax))
    g = gamma(n + 4, _U64)
    pos, neg = P > 0, N > 0
    zero = torch.zeros_like(P)
    best = torch.full(P.shape, -math.inf, dtype=F64, device=w.device)
    for ea in _E_GRID:
        fe = (ea * e_unit) * z
        for aa in _A_GRID:
            f = (aa * a_unit) * ps + fe
            lo = (w_pos - f).amin(-1)  # min over S+ of r = w - f (inf where S+ is empty)
            hi = (w_neg - f).amax(-1)
            lo_t = torch.where(pos, P * lo, zero)
            hi_t = torch.where(neg, N * hi, zero)
            a, e = aa * a_u, ea * e_u
            df = a * d_ps + e * d_z
            rmax = wm + a * pm + e * zm
            err = g * (a * ad_ps + e * ad_z + lo_t.abs() + hi_t.abs()) + (P + N) * (err_w + 2 * _U64 * rmax)
            best = torch.maximum(best, df + lo_t - hi_t - err)
    return best


def bounds_of_discrepancy(disc: SparseDenseDiscrepancy) -> ParallelBounds:
    r""":func:`parallel_bounds` from an existing :class:`SparseDenseDiscrepancy` (built by
    :func:`hopfield_gag.theory.sparse_dense_discrepancy`, which keeps its q, k, v); same as
    ``disc.parallel_bounds()``."""
    cached = disc.__dict__.get("_bounds")
    if cached is not None:
        return cached
    enc = disc.enclosure()
    n = disc.n_keys
    sn = enc.s_norm
    D, P, N, w, err_w, convert = _unit_and_scores(disc, enc)

    def sound(y_lo: Tensor) -> Tensor:  # lower bound on <s~ - d~, u_hat>  ->  on <Delta*, s*>/||s*||
        x_hat_lo = sn * (y_lo - convert)
        x_hat_lo = x_hat_lo - x_hat_lo.abs() * 8 * _U64
        return enc.per_unit(enc.x_lower(x_hat_lo))

    transport = sound(_transport_y(D, P, N, w, err_w, n)[0])
    split = sound(_split_y(disc, D, P, N, w, err_w, n))
    dn2 = (disc.dense.to(F64) ** 2).sum(-1)
    dv = disc.sparse.shape[-1]
    norm_x = 0.5 * (sn * sn - dn2) - gamma(dv + 4, _U64) * (sn * sn + dn2)  # <= X_hat (polarization, T5f)
    norm = enc.per_unit(enc.x_lower(norm_x))
    direct = enc.per_unit(enc.x_lower())
    ok = (sn > 0) & enc.verified
    ninf = torch.full_like(sn, -math.inf)
    transport, norm, split, direct = (torch.where(ok, b, ninf) for b in (transport, norm, split, direct))
    sharp = torch.maximum(torch.maximum(transport, norm), torch.maximum(split, direct))
    allowance = torch.where(ok, enc.e_x / torch.where(sn > 0, sn, torch.ones_like(sn)), torch.full_like(sn, math.inf))
    out = ParallelBounds(transport=transport, norm=norm, split=split, sharp=sharp, allowance=allowance,
                         exact=(disc.parallel_coef * torch.linalg.vector_norm(disc.sparse, dim=-1)).to(F64),
                         direct=direct)
    object.__setattr__(disc, "_bounds", out)  # a discrepancy is immutable: its bounds are computed once
    return out


def transport_certificate_of_discrepancy(disc: SparseDenseDiscrepancy) -> Tensor:
    r"""The sound transport bracket (T5a): :math:`\min_{S^+}w - \max_{S^-}w` (:math:`w = V\hat s`) lowered so
    that ``>= 0`` proves :math:`c^\ast \ge 0` for the exact inputs: the sound transport bound of
    :func:`parallel_bounds` divided by the moved mass :math:`\mathrm{TV}` where it certifies, else the
    bracket minus the error bound per unit mass (negative). (..., Lq), float64."""
    b = bounds_of_discrepancy(disc)
    D = disc.p_sparse.to(F64) - disc.p_dense.to(F64)
    tv = 0.5 * D.abs().sum(-1)
    safe = torch.where(tv > 0, tv, torch.ones_like(tv))
    return torch.where(tv > 0, b.transport / safe, torch.where(b.transport >= 0, b.transport,
                                                               torch.full_like(tv, -math.inf)))


def parallel_bounds(
    q: Tensor,
    k: Tensor,
    v: Tensor | None = None,
    scale: float | None = None,
    alpha: float = 1.5,
    mask: Tensor | None = None,
) -> ParallelBounds:
    r"""Sound lower bounds on the exact :math:`\langle\Delta^\ast, \hat s^\ast\rangle` of the given inputs: the
    a-posteriori (direct) bound and the transport, norm and split mechanism bounds, and their maximum (module
    docstring; ``THEORY.md`` T5a, T5f, "Sound allowances"). With :math:`w = V\hat u`, :math:`\hat u = \hat s/
    \lVert\hat s\rVert`, :math:`P, N` the mass moved up / down:

    .. math::

        \langle\hat D, w\rangle \ge \max\Big(P\min_{S^+}w - N\max_{S^-}w,\ \
        \frac{\lVert\hat s\rVert^2 - \lVert\hat d\rVert^2}{2\lVert\hat s\rVert},\ \
        \max_{a, e \ge 0}\langle\hat D, f\rangle + P\min_{S^+}r - N\max_{S^-}r\Big),\quad r = w - f,

    each minus its evaluation error, then carried to the exact inputs with
    :class:`hopfield_gag.theory.enclosure.OutputEnclosure` (``x_lower`` / ``per_unit``).

    Parameters
    ----------
    q (..., Lq, d), k (..., Lk, d), v (..., Lk, dv) or None (= k); scale, alpha, mask: as in
    :func:`hopfield_gag.theory.sparse_dense_discrepancy`.

    Returns
    -------
    ParallelBounds (tensors (..., Lq), float64).
    """
    return sparse_dense_discrepancy(q, k, v, scale, alpha, mask).parallel_bounds()


def parallel_certificate_sharp(
    q: Tensor,
    k: Tensor,
    v: Tensor | None = None,
    scale: float | None = None,
    alpha: float = 1.5,
    mask: Tensor | None = None,
) -> Tensor:
    r"""Sharper sound certificate for :math:`c \ge 0`: ``parallel_bounds(...).sharp``.

    A lower bound on :math:`\langle\Delta, \hat s\rangle = c\lVert s\rVert` (value units, rounding allowance
    subtracted): ``>= 0`` proves :math:`c \ge 0`. It dominates the transport certificate
    (:func:`hopfield_gag.theory.parallel_certificate`, T5a) and adds the norm certificate
    :math:`\lVert s\rVert \ge \lVert d\rVert` (T5f) and the split certificate (T5e).

    Returns
    -------
    Tensor (..., Lq), compute dtype; ``-inf`` where :math:`\lVert s\rVert` is below the noise floor.
    """
    return parallel_bounds(q, k, v, scale, alpha, mask).sharp


def parallel_norm_certificate(
    q: Tensor,
    k: Tensor,
    v: Tensor | None = None,
    scale: float | None = None,
    alpha: float = 1.5,
    mask: Tensor | None = None,
) -> Tensor:
    r"""Norm certificate (T5f): :math:`(\lVert s\rVert^2 - \lVert d\rVert^2)/(2\lVert s\rVert)` minus the
    rounding allowance; ``>= 0`` (the sparse output is at least as long as the dense one) proves
    :math:`c \ge 0`, because :math:`\langle\Delta, s\rangle = \tfrac12(\lVert s\rVert^2 - \lVert d\rVert^2 +
    \lVert\Delta\rVert^2)`.

    Returns
    -------
    Tensor (..., Lq), value units.
    """
    return parallel_bounds(q, k, v, scale, alpha, mask).norm


@dataclass(frozen=True)
class EquiangularFit:
    r"""Least-squares fit :math:`VV^\top \approx aI + b\mathbf 1\mathbf 1^\top` (per leading index).

    Attributes
    ----------
    a, b : Tensor (...)
    eps : Tensor (...)   :math:`\max_{j,l}|E_{jl}|`, :math:`E = VV^\top - aI - b\mathbf 1\mathbf 1^\top`.
    """

    a: Tensor
    b: Tensor
    eps: Tensor


def equiangular_fit(v: Tensor) -> EquiangularFit:
    r"""Fit the Gram matrix of the values to the equiangular model of T5b (``THEORY.md`` T5e).

    .. math::

        b = \operatorname{mean}_{j\ne l} G_{jl},\quad a = \operatorname{mean}_j G_{jj} - b,\quad
        \varepsilon = \max_{j,l}|G - aI - b\mathbf 1\mathbf 1^\top|_{jl},\qquad G = VV^\top .

    (The least-squares fit in the Frobenius norm.) With :math:`L_k = 1`, :math:`b = 0`.

    Parameters
    ----------
    v : Tensor (..., Lk, dv)

    Returns
    -------
    EquiangularFit (compute dtype).
    """
    check_tensor("v", v, min_dim=2)
    vc = v.to(compute_dtype(v.dtype))
    g = vc @ vc.transpose(-1, -2)
    n = g.shape[-1]
    diag = g.diagonal(dim1=-2, dim2=-1)
    if n > 1:
        b = (g.sum((-1, -2)) - diag.sum(-1)) / (n * (n - 1))
    else:
        b = torch.zeros_like(diag[..., 0])
    a = diag.mean(-1) - b
    eye = torch.eye(n, dtype=g.dtype, device=g.device)
    e = g - a[..., None, None] * eye - b[..., None, None]
    return EquiangularFit(a=a, b=b, eps=e.abs().amax((-1, -2)))


def perturbative_parallel_certificate(
    q: Tensor,
    k: Tensor,
    v: Tensor,
    scale: float | None = None,
    alpha: float = 1.5,
    mask: Tensor | None = None,
) -> Tensor:
    r"""The perturbative theorem (``THEORY.md`` T5e) as a certificate.

    If :math:`VV^\top = aI + b\mathbf 1\mathbf 1^\top + E` with :math:`a \ge 0` and
    :math:`\max_{jl}|E_{jl}| \le \varepsilon` (:func:`equiangular_fit`), then for every query

    .. math::  \langle\Delta, s\rangle \ \ge\ \tfrac a2\big(\lVert p_s\rVert^2 - \lVert p_d\rVert^2\big)
               - \varepsilon + \tfrac12\lVert\Delta\rVert^2 ,

    and :math:`\lVert p_s\rVert \ge \lVert p_d\rVert` always (T1 and Schur convexity). Returned: the
    certificate :math:`\tfrac a2(\lVert p_s\rVert^2 - \lVert p_d\rVert^2) - \varepsilon` (units of
    :math:`\lVert v\rVert^2`; ``>= 0`` proves :math:`c \ge 0`): the tolerance on :math:`E` is
    :math:`\varepsilon \le \tfrac a2(\lVert p_s\rVert^2 - \lVert p_d\rVert^2)`, a function of the scores only.

    Returns
    -------
    Tensor (..., Lq).
    """
    check_tensor("v", v, min_dim=2)
    disc = sparse_dense_discrepancy(q, k, v, scale, alpha, mask)
    return perturbative_of_discrepancy(disc)


def perturbative_of_discrepancy(disc: SparseDenseDiscrepancy) -> Tensor:
    r""":func:`perturbative_parallel_certificate` from an existing discrepancy, sound for the exact inputs:
    the gap :math:`\lVert p^\ast_s\rVert^2 - \lVert p^\ast_d\rVert^2` is bounded below from the weights'
    enclosure, and :math:`\varepsilon` above by the fit's float value plus the Gram matrix's rounding
    (:math:`a, b` are any numbers in T5e, so their own rounding costs nothing). (..., Lq), float64."""
    v = disc._need("values")
    enc = disc.enclosure()
    fit = equiangular_fit(v)
    ps, pd = disc.p_sparse.to(F64), disc.p_dense.to(F64)
    lo_s = torch.clamp(ps - enc.r_sparse, min=0.0)
    hi_d = pd + enc.r_dense
    n = disc.n_keys
    gap = (lo_s * lo_s).sum(-1) * (1 - gamma(n + 2, _U64)) - (hi_d * hi_d).sum(-1) * (1 + gamma(n + 2, _U64))
    a = fit.a.to(F64).unsqueeze(-1)
    b = fit.b.to(F64).unsqueeze(-1)
    u = unit_roundoff(fit.a.dtype)
    vmax2 = (v.to(F64) ** 2).sum(-1).amax(-1).unsqueeze(-1)
    # |fl(G) - G| <= gamma_dv max||v||^2; the subtraction G - aI - b and the max: 3 more roundings
    eps = (fit.eps.to(F64).unsqueeze(-1) + gamma(v.shape[-1], u) * vmax2 * 1.01
           + 4 * u * (vmax2 * 1.01 + a.abs() + b.abs())) * 1.01
    out = torch.clamp(a, min=0.0) * 0.5 * gap
    out = out - out.abs() * 4 * _U64 - eps
    return torch.where(enc.verified, out, torch.full_like(out, -math.inf))


def sign_flip_margin(
    q: Tensor,
    k: Tensor,
    v: Tensor | None = None,
    lam: float = GagParams.lam,
    eta: float | None = GagParams.eta,
    zeta: float = 0.0,
    scale: float | None = None,
    alpha: float = 1.5,
    mask: Tensor | None = None,
    parallel: str = "paper",
) -> Tensor:
    r"""Component of the GAG output along the sparse output, in units of :math:`s` ("The sign flip").

    .. math::  m = \frac{\langle o, s\rangle}{\lVert s\rVert^2} = 1 + \lambda\,\tilde c\,\min(1, \eta/\lVert g\rVert),
               \qquad o = \texttt{gag\_output}(d, s, \lambda, \eta, \zeta),

    since :math:`\langle g, s\rangle = \tilde c\lVert s\rVert^2`. :math:`m < 0` means GAG **reversed** the
    output along :math:`s`. With :math:`\zeta = 0`: :math:`o = m\,s` and :math:`m < 0 \iff c < -1/\lambda`
    and :math:`\lVert s\rVert < \lambda\eta`. With ``parallel="positive"`` (:math:`\tilde c = \max(c, 0)`)
    :math:`m \ge 1` always. 0 where :math:`\lVert s\rVert` is below the noise floor.

    Parameters
    ----------
    q, k, v, scale, alpha, mask : as in :func:`hopfield_gag.theory.sparse_dense_discrepancy`;
    lam, eta, zeta, parallel : as in :func:`hopfield_gag.theory.gag_output`.

    Returns
    -------
    Tensor (..., Lq), compute dtype.
    """
    return sparse_dense_discrepancy(q, k, v, scale, alpha, mask).sign_flip_margin(lam, eta, zeta, parallel)


def sign_flip_of_discrepancy(disc: SparseDenseDiscrepancy, lam: float = GagParams.lam, eta: float | None = GagParams.eta,
                             zeta: float = 0.0, parallel: str = "paper") -> Tensor:
    r""":func:`sign_flip_margin` from an existing :class:`SparseDenseDiscrepancy`; same as
    ``disc.sign_flip_margin(lam, eta, zeta, parallel)``. Returns (..., Lq)."""
    o = gag_output(disc.dense, disc.sparse, lam, eta, zeta, parallel)
    ss = (disc.sparse * disc.sparse).sum(-1)
    m = torch.where(ss > 0, (o * disc.sparse).sum(-1) / torch.where(ss > 0, ss, torch.ones_like(ss)),
                    torch.zeros_like(ss))
    lo, hi = _flip_interval(disc, lam, eta, zeta, parallel)
    decided = (lo > 0) | (hi < 0)
    # the computed m where the exact m* provably has its sign; 0 where rounding could change the sign
    return torch.where(decided & (torch.sign(m) == torch.sign(lo)), m, torch.zeros_like(m)).to(m.dtype)


def _flip_interval(disc: SparseDenseDiscrepancy, lam, eta, zeta, parallel) -> tuple[Tensor, Tensor]:
    r"""An interval containing the exact :math:`m^\ast = 1 + \lambda\tilde c^\ast\min(1, \eta/\lVert g^\ast\rVert)`
    ("The sign flip"), from the enclosure's :math:`c^\ast` and :math:`\lVert s^\ast\rVert` intervals and
    :math:`|\tilde c|\lVert s\rVert \le \lVert g\rVert \le \zeta\lVert\Delta\rVert + (|\tilde c| + \zeta|c|)\lVert s\rVert`."""
    lam = check_scalar("lam", lam, ge=0.0)
    zeta = check_scalar("zeta", zeta, ge=0.0, le=1.0)
    enc = disc.enclosure()
    c_lo, c_hi = enc.c_bounds()
    if parallel == "positive":
        t_lo, t_hi = torch.clamp(c_lo, min=0.0), torch.clamp(c_hi, min=0.0)
    else:
        t_lo, t_hi = c_lo, c_hi
    s_lo, s_hi = enc.s_norm_bounds()
    straddle = (t_lo <= 0) & (t_hi >= 0)
    t_absmin = torch.where(straddle, torch.zeros_like(t_lo), torch.minimum(t_lo.abs(), t_hi.abs()))
    t_absmax = torch.maximum(t_lo.abs(), t_hi.abs())
    c_absmax = torch.maximum(c_lo.abs(), c_hi.abs())
    if eta is None:
        f_lo = f_hi = torch.ones_like(t_lo)
    else:
        eta = check_scalar("eta", eta, gt=0.0)
        g_lo = t_absmin * s_lo
        g_hi = zeta * (enc.delta_norm + enc.e_sparse + enc.e_dense) + (t_absmax + zeta * c_absmax) * s_hi
        f_lo = torch.clamp(eta / torch.where(g_hi > 0, g_hi, torch.ones_like(g_hi)), max=1.0)
        f_lo = torch.where(g_hi > 0, f_lo, torch.ones_like(f_lo))
        f_hi = torch.clamp(eta / torch.where(g_lo > 0, g_lo, torch.ones_like(g_lo)), max=1.0)
        f_hi = torch.where(g_lo > 0, f_hi, torch.ones_like(f_hi))
    corners = torch.stack([t_lo * f_lo, t_lo * f_hi, t_hi * f_lo, t_hi * f_hi]).nan_to_num(nan=0.0)
    lo = 1 + lam * corners.amin(0)
    hi = 1 + lam * corners.amax(0)
    bad = ~(torch.isfinite(c_lo) & torch.isfinite(c_hi))  # ||s*|| may be 0: c* unknown
    if parallel != "positive":
        lo = torch.where(bad, torch.full_like(lo, -math.inf), lo)
    hi = torch.where(bad, torch.full_like(hi, math.inf), hi)
    lo = lo - lo.abs() * 1e-12 - 1e-300  # the float64 evaluation of the interval itself
    hi = hi + hi.abs() * 1e-12 + 1e-300
    if lam == 0.0:
        lo, hi = torch.ones_like(lo), torch.ones_like(hi)
    return lo, hi


def flipped_tokens(
    q: Tensor,
    k: Tensor,
    v: Tensor | None = None,
    lam: float = GagParams.lam,
    eta: float | None = GagParams.eta,
    zeta: float = 0.0,
    scale: float | None = None,
    alpha: float = 1.5,
    mask: Tensor | None = None,
    parallel: str = "paper",
) -> Tensor:
    r"""Boolean mask (..., Lq) of the tokens whose GAG output is reversed along :math:`s`:
    ``sign_flip_margin(...) < 0``."""
    lam = check_scalar("lam", lam, ge=0.0)
    return sign_flip_margin(q, k, v, lam, eta, zeta, scale, alpha, mask, parallel) < 0
