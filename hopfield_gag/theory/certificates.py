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

from .._validation import check_scalar, check_tensor, compute_dtype
from .gag import gag_output
from .discrepancy import SparseDenseDiscrepancy, crossing_certificate, sparse_dense_discrepancy

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
    r"""Lower bounds on :math:`\langle\Delta, \hat s\rangle` (all (..., Lq), compute dtype), allowance
    already subtracted; ``>= 0`` proves :math:`c \ge 0`.

    Attributes
    ----------
    transport, norm, split : Tensor
        The three certificates of the module docstring (``-inf`` where :math:`\lVert s\rVert` is below the
        noise floor: no direction to certify).
    sharp : Tensor
        Their maximum.
    allowance : Tensor
        The rounding allowance subtracted from each.
    exact : Tensor
        :math:`\langle\Delta, \hat s\rangle` itself (``parallel_coef * ||s||``), for coverage studies.
    """

    transport: Tensor
    norm: Tensor
    split: Tensor
    sharp: Tensor
    allowance: Tensor
    exact: Tensor


def _allowance(disc: SparseDenseDiscrepancy) -> tuple[Tensor, Tensor]:
    """(allowance, ||s||): rounding allowance of a lower bound on <Delta, s_hat>, in value units.

    s, d carry an absolute error below the vector noise floor f = 64 eps sqrt(Lk) max||v|| (noise_floor);
    a difference of squared norms ||s||^2 - ||d||^2 then errs by <= 2 (||s|| + ||d||) f + 64 eps (||s||^2 +
    ||d||^2), divided by 2 ||s||. The transport and split bounds are inner products of the same vectors and
    carry errors of the same order (one more factor Lk u on sums of Lk terms, inside the 64)."""
    floor = disc.floor()
    eps = torch.finfo(disc.z.dtype).eps
    sn = torch.linalg.vector_norm(disc.sparse, dim=-1)
    dn = torch.linalg.vector_norm(disc.dense, dim=-1)
    safe = torch.where(sn > floor, sn, torch.ones_like(sn))
    allow = ((sn + dn) * floor + 32 * eps * (sn * sn + dn * dn)) / safe + floor
    return allow, sn


def _split_bound(disc: SparseDenseDiscrepancy, v: Tensor) -> Tensor:
    """max over (a, e) of <D, f> + TV (min_{S+} r - max_{S-} r), r = V s - f, f = a p_s + e z; divided by ||s||."""
    D = disc.p_sparse - disc.p_dense
    tv = 0.5 * D.abs().sum(-1)
    w = disc.sparse @ v.transpose(-1, -2)  # (..., Lq, Lk): <v_j, s> = (G p_s)_j
    z = torch.where(torch.isfinite(disc.z), disc.z, torch.zeros_like(disc.z))
    ps = disc.p_sparse
    wmax = w.abs().amax(-1, keepdim=True)
    a_unit = wmax / ps.amax(-1, keepdim=True)
    zmax = z.abs().amax(-1, keepdim=True)
    e_unit = torch.where(zmax > 0, wmax / torch.where(zmax > 0, zmax, torch.ones_like(zmax)), torch.zeros_like(zmax))
    pos, neg = D > 0, D < 0
    inf = torch.full_like(w, math.inf)
    best = torch.full(tv.shape, -math.inf, dtype=w.dtype, device=w.device)
    for ea in _E_GRID:
        fe = (ea * e_unit) * z
        for aa in _A_GRID:
            f = (aa * a_unit) * ps + fe
            r = w - f
            lo = torch.where(pos, r, inf).amin(-1)
            hi = torch.where(neg, r, -inf).amax(-1)
            gap = torch.where(torch.isfinite(lo) & torch.isfinite(hi), lo - hi, torch.zeros_like(lo))
            best = torch.maximum(best, (D * f).sum(-1) + tv * gap)
    sn = torch.linalg.vector_norm(disc.sparse, dim=-1)
    return best / torch.where(sn > 0, sn, torch.ones_like(sn))


def parallel_bounds(
    q: Tensor,
    k: Tensor,
    v: Tensor | None = None,
    scale: float | None = None,
    alpha: float = 1.5,
    mask: Tensor | None = None,
) -> ParallelBounds:
    r"""The transport, norm and split lower bounds on :math:`\langle\Delta, \hat s\rangle` and their maximum
    (module docstring; ``THEORY.md`` T5a, T5e, T5f).

    .. math::

        \langle\Delta, \hat s\rangle \ \ge\ \max\Big(\mathrm{TV}\,(\min_{S^+}w - \max_{S^-}w),\ \
        \frac{\lVert s\rVert^2 - \lVert d\rVert^2}{2\lVert s\rVert},\ \
        \max_{a, e \ge 0}\frac{\langle D, f\rangle + \mathrm{TV}(\min_{S^+}r - \max_{S^-}r)}{\lVert s\rVert}\Big)
        - \text{allowance}.

    Parameters
    ----------
    q (..., Lq, d), k (..., Lk, d), v (..., Lk, dv) or None (= k); scale, alpha, mask: as in
    :func:`hopfield_gag.theory.sparse_dense_discrepancy`.

    Returns
    -------
    ParallelBounds (tensors (..., Lq), compute dtype).
    """
    return sparse_dense_discrepancy(q, k, v, scale, alpha, mask).parallel_bounds()


def bounds_of_discrepancy(disc: SparseDenseDiscrepancy) -> ParallelBounds:
    r""":func:`parallel_bounds` from an existing :class:`SparseDenseDiscrepancy` (built by
    :func:`hopfield_gag.theory.sparse_dense_discrepancy`, which keeps its q, k, v); same as
    ``disc.parallel_bounds()``."""
    vc = disc._need("values")
    allow, sn = _allowance(disc)
    ok = sn > disc.floor()
    safe = torch.where(ok, sn, torch.ones_like(sn))
    D = disc.p_sparse - disc.p_dense
    tv = 0.5 * D.abs().sum(-1)
    shat = disc.sparse / safe.unsqueeze(-1)
    cert_t = crossing_certificate(disc.p_sparse, disc.p_dense, shat @ vc.transpose(-1, -2))
    transport = torch.where(torch.isfinite(cert_t), tv * cert_t, torch.zeros_like(tv))  # D = 0: <D, w> = 0
    dn = torch.linalg.vector_norm(disc.dense, dim=-1)
    norm = (sn * sn - dn * dn) / (2 * safe)
    split = _split_bound(disc, vc)
    ninf = torch.full_like(sn, -math.inf)
    transport, norm, split = (torch.where(ok, b - allow, ninf) for b in (transport, norm, split))
    return ParallelBounds(transport=transport, norm=norm, split=split,
                          sharp=torch.maximum(torch.maximum(transport, norm), split), allowance=allow,
                          exact=disc.parallel_coef * sn)


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
    fit = equiangular_fit(v)
    gap = (disc.p_sparse.square().sum(-1) - disc.p_dense.square().sum(-1))
    a = fit.a.to(gap.dtype).unsqueeze(-1)
    eps = fit.eps.to(gap.dtype).unsqueeze(-1)
    # rounding of a Gram entry: ~ dv u ||v||^2; of ||p||^2: ~ Lk u
    u = torch.finfo(gap.dtype).eps
    slack = 64 * u * (v.shape[-1] + disc.n_keys) * (a.abs() + eps + fit.b.to(gap.dtype).abs().unsqueeze(-1))
    return torch.clamp(a, min=0.0) * 0.5 * gap - eps - slack


def sign_flip_margin(
    q: Tensor,
    k: Tensor,
    v: Tensor | None = None,
    lam: float = 10.0,
    eta: float | None = 15.0,
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


def sign_flip_of_discrepancy(disc: SparseDenseDiscrepancy, lam: float = 10.0, eta: float | None = 15.0,
                             zeta: float = 0.0, parallel: str = "paper") -> Tensor:
    r""":func:`sign_flip_margin` from an existing :class:`SparseDenseDiscrepancy`; same as
    ``disc.sign_flip_margin(lam, eta, zeta, parallel)``. Returns (..., Lq)."""
    o = gag_output(disc.dense, disc.sparse, lam, eta, zeta, parallel)
    ss = (disc.sparse * disc.sparse).sum(-1)
    sn = ss.sqrt()
    ok = sn > disc.floor()
    return torch.where(ok, (o * disc.sparse).sum(-1) / torch.where(ok, ss, torch.ones_like(ss)),
                       torch.zeros_like(ss))


def flipped_tokens(
    q: Tensor,
    k: Tensor,
    v: Tensor | None = None,
    lam: float = 10.0,
    eta: float | None = 15.0,
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
