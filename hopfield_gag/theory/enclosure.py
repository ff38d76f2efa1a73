r"""Rigorous enclosures of the *exact* attention quantities from the *computed* ones (``THEORY.md`` T5,
"Sound allowances").

A certificate about the parallel coefficient :math:`c` is a statement about the exact :math:`c^\ast` of the
given inputs: :math:`z^\ast = \beta q k^\top` (+ mask) in exact arithmetic on the float values of q, k, the
scale and the mask, :math:`p^\ast_d = \mathrm{softmax}(z^\ast)`, :math:`p^\ast_s = \alpha\text{-entmax}(z^\ast)`,
:math:`s^\ast = p^\ast_s V`, :math:`d^\ast = p^\ast_d V`. The code only has the rounded :math:`\hat z, \hat p,
\hat s, \hat d`. This module bounds the distance between the two, soundly (every bound below is a theorem
about IEEE arithmetic in the compute dtype, with unit roundoff :math:`u`; :math:`\gamma_n = nu/(1 - nu)`):

1. **Scores.** :math:`|\hat z_j - z^\ast_j| \le \varepsilon_j = \gamma_{d+2}\,\beta\sum_i|q_i k_{ji}|`
   (a dot product of length d in any summation order, then the product with :math:`\beta` rounded to the
   compute dtype); an additive float mask adds :math:`\gamma_2(|\hat z_j| + \beta\sum_i|q_ik_{ji}|)`.
2. **Weights.** Both normalizers are shift-equivariant and monotone: with :math:`\varepsilon =
   \max_j\varepsilon_j`, the softmax log-partition :math:`L(z^\ast) \in [L(\hat z) - \varepsilon, L(\hat z) +
   \varepsilon]` and the entmax threshold :math:`\tau(z^\ast) \in [\tau(\hat z) - (\alpha-1)\varepsilon,
   \tau(\hat z) + (\alpha-1)\varepsilon]` (:math:`p_j = [(\alpha-1)z_j - \tau]_+^{1/(\alpha-1)}`). :math:`L(\hat z)`
   is enclosed by a float64 evaluation with its error bound, :math:`\tau(\hat z)` by a bracket
   :math:`[\tau_{lo}, \tau_{hi}]` checked with outward-rounded sums (:math:`S(\tau_{lo}) \ge 1 \ge S(\tau_{hi})`).
   Then every exact weight lies in :math:`[\ell_j, h_j]` computed from these brackets; the radius around the
   computed weight is :math:`r_j = \max(h_j - \hat p_j, \hat p_j - \ell_j)`. This never trusts the
   normalizer's own accuracy, so it holds for every :math:`\alpha > 1`, including :math:`\alpha > 2` where
   entmax is only Hölder-continuous at the support boundary (the enclosure is then
   :math:`\approx\sqrt{\text{error}}` wide, as it must be).
3. **Outputs.** :math:`\lVert s^\ast - \hat s\rVert \le E_s = \gamma_n\lVert\hat p_s|V|\rVert +
   \sum_j r_j\lVert v_j - \hat s\rVert + |1 - \sum_j\hat p_{s,j}|\,\lVert\hat s\rVert` (matmul rounding, the
   weights' error with :math:`\sum_j(p^\ast_j - \hat p_j) = 1 - \sum_j\hat p_j` centred at :math:`\hat s`);
   the same for :math:`d` with :math:`E_d`.
4. **The inner product** :math:`X = \langle s - d, s\rangle`: :math:`|X^\ast - \hat X| \le E_X = (E_s + E_d)
   \lVert\hat s\rVert + \lVert\hat\Delta\rVert E_s + (E_s + E_d)E_s`, with :math:`\hat X` evaluated in float64
   with its own bound.

All bound arithmetic is float64 with explicit outward factors. Assumption: IEEE arithmetic in the compute
dtype (no TF32 / reduced-precision matmul modes) and a libm whose ``exp``, ``log``, ``pow`` err by at most
2 ulp (glibc: < 1 ulp).
"""
from __future__ import annotations

import math
from dataclasses import dataclass

import torch
from torch import Tensor

__all__ = ["unit_roundoff", "gamma", "score_error", "weight_enclosure", "OutputEnclosure", "output_enclosure"]

F64 = torch.float64
_U64 = 2.0**-53
_OUT = 1.0 + 1e-9  # outward factor for float64 evaluations of the bounds themselves (errors ~ n * 1e-16)
_TINY = 1e-300


def unit_roundoff(dtype: torch.dtype) -> float:
    """:math:`u = \\varepsilon_{\\text{mach}}/2` of a floating dtype."""
    return torch.finfo(dtype).eps / 2


def gamma(n: int, u: float) -> float:
    r""":math:`\gamma_n = nu/(1 - nu)` (Higham, *Accuracy and Stability of Numerical Algorithms*, §3.1)."""
    nu = n * u
    if nu >= 1:
        return math.inf
    return nu / (1 - nu)


def score_error(q: Tensor, k: Tensor, beta: float, compute: torch.dtype, additive_mask: bool = False,
                z: Tensor | None = None) -> Tensor:
    r"""Bound :math:`\varepsilon_{\cdot j}` (..., Lq, Lk), float64, on :math:`|\hat z - z^\ast|` for scores
    :math:`\hat z = \mathrm{fl}(\beta\,\mathrm{fl}(q k^\top))` computed in ``compute`` from the float values of
    ``q`` (..., Lq, d), ``k`` (..., Lk, d) (module docstring, item 1). With ``additive_mask`` the computed
    scores ``z`` (after the mask) are needed for the extra rounding of the addition."""
    u = unit_roundoff(compute)
    d = q.shape[-1]
    a = q.to(F64).abs() @ k.to(F64).abs().transpose(-1, -2)  # sum_i |q_i k_ji|, float64 (rel. error <= d u64)
    bs = abs(float(beta)) * a * (1 + (d + 2) * _U64)
    eps = gamma(d + 2, u) * bs
    if additive_mask:
        zz = torch.where(torch.isfinite(z), z.to(F64).abs(), torch.zeros((), dtype=F64))
        eps = eps + gamma(2, u) * (zz + bs)
    return eps * _OUT


def _masked(z: Tensor) -> Tensor:
    return ~torch.isfinite(z)


def _softmax_enclosure(z: Tensor, eps: Tensor) -> tuple[Tensor, Tensor]:
    """[lo, hi] of softmax(z*) for |z* - z| <= eps (float64 tensors; -inf entries of z are masked)."""
    u = _U64
    dead = _masked(z)
    n = (~dead).sum(-1, keepdim=True).to(F64)
    m = torch.where(dead, torch.full_like(z, -math.inf), z).amax(-1, keepdim=True)
    y = torch.where(dead, torch.zeros_like(z), z - m)  # rounded: |error| <= u |y|
    e = torch.where(dead, torch.zeros_like(z), torch.exp(y))
    ssum = e.sum(-1, keepdim=True)
    lse = torch.log(ssum)
    # |lse - log sum exp(z - m)| (exact scores z, module docstring): exp/sub/sum/log rounding
    e_l = (2 * n + 16) * u * (1 + lse.abs()) + _TINY
    em = torch.where(dead, torch.zeros_like(z), eps).amax(-1, keepdim=True)
    lo_arg = y - eps - em - lse - e_l
    hi_arg = y + eps + em - lse + e_l
    slack_lo = 8 * u * (y.abs() + eps + em + lse.abs() + e_l)
    lo = torch.exp(lo_arg - slack_lo) * (1 - 4 * u)
    hi = torch.clamp(torch.exp(hi_arg + slack_lo) * (1 + 4 * u), max=1.0)
    zero = torch.zeros_like(z)
    return torch.where(dead, zero, lo), torch.where(dead, zero, hi)


def _entmax_sum(y: Tensor, dead: Tensor, tau: Tensor, r: float, up: bool) -> Tensor:
    """Outward-rounded bound on S(tau) = sum_j [y_j - tau]_+^r: an upper bound if ``up`` else a lower bound,
    where ``y`` are the exact shifted scores (..., n) given as float64 values and tau (..., 1) float64."""
    u = _U64
    x = y - tau
    ex = 4 * u * (y.abs() + tau.abs()) + _TINY
    arg = torch.clamp(x + ex, min=0.0) if up else torch.clamp(x - ex, min=0.0)
    fac = 1 + 2 * (r + 4) * u
    t = torch.pow(arg, r) * (fac if up else (2 - fac))
    t = torch.where(dead, torch.zeros_like(t), t)
    n = y.shape[-1]
    g = gamma(n + 1, u)
    tot = t.sum(-1, keepdim=True)
    return tot * (1 + g) if up else tot * (1 - g)


def _entmax_enclosure(z: Tensor, eps: Tensor, alpha: float, p_hat: Tensor) -> tuple[Tensor, Tensor, Tensor]:
    """[lo, hi] of alpha-entmax(z*) for |z* - z| <= eps, and a bool (..., 1) 'bracket verified'."""
    am1 = alpha - 1.0
    r = 1.0 / am1
    dead = _masked(z)
    m = torch.where(dead, torch.full_like(z, -math.inf), z).amax(-1, keepdim=True)
    # y = (alpha - 1)(z - m): the exact y differs from this float64 value by <= 3.1 u |y| (two roundings and
    # alpha - 1 itself); folded into the enclosure below through the relative slack on y
    y = torch.where(dead, torch.zeros_like(z), am1 * (z - m))
    y_err = 3.1 * _U64 * y.abs()
    # a first tau from the computed weights, polished by safeguarded Newton steps in float64
    pmax = p_hat.to(F64).amax(-1, keepdim=True).clamp(min=1e-300, max=1.0)
    n = (~dead).sum(-1, keepdim=True).to(F64)
    lo_b = torch.full_like(pmax, -1.0)
    hi_b = -(n ** (-am1))
    tau = torch.clamp(-(pmax**am1), lo_b, hi_b)
    for _ in range(6):
        x = torch.clamp(y - tau, min=0.0)
        x = torch.where(dead, torch.zeros_like(x), x)
        s = (x**r).sum(-1, keepdim=True)
        ds = r * torch.where(x > 0, x ** (r - 1), torch.zeros_like(x)).sum(-1, keepdim=True)
        lo_b = torch.where(s >= 1, torch.maximum(lo_b, tau), lo_b)
        hi_b = torch.where(s <= 1, torch.minimum(hi_b, tau), hi_b)
        step = torch.where(ds > 0, (s - 1) / torch.where(ds > 0, ds, torch.ones_like(ds)), torch.zeros_like(ds))
        new = tau + step
        tau = torch.where((new >= lo_b) & (new <= hi_b), new, 0.5 * (lo_b + hi_b))
    # verified bracket [tau_lo, tau_hi]: widen until S(tau_lo) >= 1 >= S(tau_hi) with outward rounding
    ye = y + torch.where(dead, torch.zeros_like(y), y_err)  # upper values of y (exact y <= ye)
    yl = y - torch.where(dead, torch.zeros_like(y), y_err)
    width = 64 * _U64 * (1 + tau.abs())
    ok = torch.zeros_like(tau, dtype=torch.bool)
    t_lo, t_hi = tau - width, tau + width
    for _ in range(8):
        good = (_entmax_sum(yl, dead, t_lo, r, up=False) >= 1) & (_entmax_sum(ye, dead, t_hi, r, up=True) <= 1)
        ok = ok | good
        if bool(ok.all()):
            break
        width = torch.where(ok, width, width * 256)
        t_lo, t_hi = torch.where(ok, t_lo, tau - width), torch.where(ok, t_hi, tau + width)
    em = torch.where(dead, torch.zeros_like(z), eps).amax(-1, keepdim=True)
    shift = am1 * (eps + em)
    lo_x = yl - shift - t_hi
    hi_x = ye + shift - t_lo
    slack = 8 * _U64 * (y.abs() + t_lo.abs() + t_hi.abs() + shift) + _TINY
    fac = 1 + 2 * (r + 4) * _U64
    lo = torch.pow(torch.clamp(lo_x - slack, min=0.0), r) * (2 - fac)
    hi = torch.clamp(torch.pow(torch.clamp(hi_x + slack, min=0.0), r) * fac, max=1.0)
    zero = torch.zeros_like(z)
    lo = torch.where(dead | ~ok, zero, lo)
    hi = torch.where(dead, zero, torch.where(ok, hi, torch.ones_like(hi)))
    return lo, hi, ok


def weight_enclosure(z: Tensor, eps: Tensor, alpha: float, p_hat: Tensor | None = None) -> tuple[Tensor, Tensor]:
    r"""Componentwise enclosure :math:`[\ell, h]` (float64, (..., n)) of :math:`\alpha\text{-entmax}(z^\ast)`
    (softmax for ``alpha == 1``) for every :math:`z^\ast` with :math:`|z^\ast_j - z_j| \le` ``eps``\ :sub:`j`
    (module docstring, item 2). ``z`` (..., n): computed scores (``-inf`` = masked: weight 0 in both);
    ``p_hat``: the computed weights (only a starting point for the threshold search; not trusted).
    Where the threshold bracket cannot be verified the enclosure is the trivial [0, 1]."""
    z = z.to(F64)
    eps = eps.to(F64)
    if alpha == 1.0:
        return _softmax_enclosure(z, eps)
    if p_hat is None:
        from ..ops.normalizers import normalize

        p_hat = normalize(z, alpha)
    lo, hi, _ = _entmax_enclosure(z, eps, float(alpha), p_hat)
    return lo, hi


def _radius(lo: Tensor, hi: Tensor, p_hat: Tensor) -> Tensor:
    p = p_hat.to(F64)
    return torch.clamp(torch.maximum(hi - p, p - lo), min=0.0) * (1 + 4 * _U64) + _TINY * (hi > 0)


@dataclass(frozen=True)
class OutputEnclosure:
    r"""Sound bounds linking the computed outputs to the exact ones (module docstring), all float64.

    Attributes
    ----------
    eps : Tensor (..., Lq, Lk)        score error bound :math:`\varepsilon`.
    r_sparse, r_dense : Tensor (..., Lq, Lk)   weight radii around :math:`\hat p_s, \hat p_d`.
    e_sparse, e_dense : Tensor (..., Lq)       :math:`E_s \ge \lVert s^\ast - \hat s\rVert`, :math:`E_d`.
    e_matmul : Tensor (..., Lq)       the matmul part of :math:`E_s + E_d` (rounding of :math:`\hat pV`).
    x_hat : Tensor (..., Lq)          :math:`\hat X = \langle\hat s - \hat d, \hat s\rangle` (float64).
    e_x : Tensor (..., Lq)            :math:`E_X + |\text{float64 error of }\hat X|`: :math:`|X^\ast - \hat X| \le e_x`.
    s_norm : Tensor (..., Lq)         :math:`\lVert\hat s\rVert`.
    delta_norm : Tensor (..., Lq)     :math:`\lVert\hat s - \hat d\rVert`.
    verified : Tensor (..., Lq) bool  the entmax threshold bracket was verified (else the weights' enclosure
                                      is trivial and nothing is certified).
    """

    eps: Tensor
    r_sparse: Tensor
    r_dense: Tensor
    e_sparse: Tensor
    e_dense: Tensor
    e_matmul: Tensor
    x_hat: Tensor
    e_x: Tensor
    s_norm: Tensor
    delta_norm: Tensor
    verified: Tensor

    def x_lower(self, x_hat_lower: Tensor | None = None) -> Tensor:
        r"""A lower bound on :math:`X^\ast = \langle\Delta^\ast, s^\ast\rangle` from a lower bound on
        :math:`\hat X` (default :math:`\hat X` itself)."""
        base = self.x_hat if x_hat_lower is None else x_hat_lower
        out = base - self.e_x
        return torch.where(self.verified, out, torch.full_like(out, -math.inf))

    def x_upper(self) -> Tensor:
        out = self.x_hat + self.e_x
        return torch.where(self.verified, out, torch.full_like(out, math.inf))

    def s_norm_bounds(self) -> tuple[Tensor, Tensor]:
        r""":math:`[\lVert\hat s\rVert - E_s, \lVert\hat s\rVert + E_s] \ni \lVert s^\ast\rVert` (lower clamped at 0)."""
        lo = torch.clamp(self.s_norm - self.e_sparse, min=0.0)
        hi = self.s_norm + self.e_sparse
        return lo, torch.where(self.verified, hi, torch.full_like(hi, math.inf))

    def per_unit(self, x_lo: Tensor) -> Tensor:
        r"""A lower bound on :math:`\langle\Delta^\ast, s^\ast\rangle/\lVert s^\ast\rVert` (value units) from a
        lower bound ``x_lo`` on :math:`X^\ast`: divide by the upper bound of :math:`\lVert s^\ast\rVert` where
        ``x_lo >= 0``, by the lower one where it is negative (``-inf`` if that can be 0)."""
        lo, hi = self.s_norm_bounds()
        pos = x_lo >= 0
        den = torch.where(pos, hi, lo)
        safe = torch.where(den > 0, den, torch.ones_like(den))
        out = torch.where(den > 0, x_lo / safe, torch.full_like(x_lo, -math.inf))
        return torch.where(pos & ~torch.isfinite(den), torch.zeros_like(out), out)

    def c_bounds(self) -> tuple[Tensor, Tensor]:
        r"""An interval :math:`[c_{lo}, c_{hi}]` containing the exact :math:`c^\ast` (``(-inf, inf)`` where
        :math:`\lVert s^\ast\rVert` can be 0)."""
        x_lo, x_hi = self.x_lower(), self.x_upper()
        slo, shi = self.s_norm_bounds()
        ok = (slo > 0) & self.verified
        a2, b2 = torch.where(ok, slo * slo, torch.ones_like(slo)), shi * shi
        c_lo = torch.where(x_lo < 0, x_lo / a2, x_lo / b2)
        c_hi = torch.where(x_hi < 0, x_hi / b2, x_hi / a2)
        inf = torch.full_like(c_lo, math.inf)
        return torch.where(ok, c_lo, -inf), torch.where(ok, c_hi, inf)


def output_enclosure(disc) -> OutputEnclosure:
    r"""The :class:`OutputEnclosure` of a :class:`~hopfield_gag.theory.SparseDenseDiscrepancy` (built by
    :func:`~hopfield_gag.theory.sparse_dense_discrepancy`, which keeps q, k, v, the mask and the scale)."""
    q, k, v = disc._need("queries"), disc._need("keys"), disc._need("values")
    cd = disc.z.dtype
    u = unit_roundoff(cd)
    mask = disc.mask
    additive = mask is not None and mask.dtype != torch.bool
    eps = score_error(q, k, disc.scale, cd, additive, disc.z)
    eps = eps.expand(disc.z.shape)
    lo_s, hi_s, ok = _entmax_enclosure(disc.z.to(F64), eps, disc.alpha, disc.p_sparse)
    lo_d, hi_d = weight_enclosure(disc.z, eps, 1.0)
    r_s, r_d = _radius(lo_s, hi_s, disc.p_sparse), _radius(lo_d, hi_d, disc.p_dense)
    V = v.to(F64)
    s_hat, d_hat = disc.sparse.to(F64), disc.dense.to(F64)
    n = disc.n_keys
    g_n = gamma(n, u)
    absV = V.abs()
    e_mm_s = g_n * torch.linalg.vector_norm(disc.p_sparse.to(F64) @ absV, dim=-1)
    e_mm_d = g_n * torch.linalg.vector_norm(disc.p_dense.to(F64) @ absV, dim=-1)

    def spread(center: Tensor) -> Tensor:  # ||v_j - center|| (..., Lq, Lk)
        return torch.cdist(center, V.expand(*center.shape[:-2], *V.shape[-2:]),
                           compute_mode="donot_use_mm_for_euclid_dist")

    sum_err = (n + 2) * _U64
    e_s = e_mm_s + (r_s * spread(s_hat)).sum(-1) + ((1 - disc.p_sparse.to(F64).sum(-1)).abs() + sum_err) * \
        torch.linalg.vector_norm(s_hat, dim=-1)
    e_d = e_mm_d + (r_d * spread(d_hat)).sum(-1) + ((1 - disc.p_dense.to(F64).sum(-1)).abs() + sum_err) * \
        torch.linalg.vector_norm(d_hat, dim=-1)
    e_s, e_d = e_s * _OUT, e_d * _OUT  # the distances are direct float64 differences (no Gram expansion)
    delta = s_hat - d_hat
    x_hat = (delta * s_hat).sum(-1)
    dv = s_hat.shape[-1]
    x_round = gamma(dv + 2, _U64) * ((s_hat.abs() + d_hat.abs()) * s_hat.abs()).sum(-1)
    sn = torch.linalg.vector_norm(s_hat, dim=-1)
    dn = torch.linalg.vector_norm(delta, dim=-1)
    e_x = ((e_s + e_d) * sn + dn * e_s + (e_s + e_d) * e_s + x_round) * _OUT
    verified = ok.squeeze(-1).expand(sn.shape) & torch.isfinite(e_x)
    return OutputEnclosure(eps=eps, r_sparse=r_s, r_dense=r_d, e_sparse=e_s, e_dense=e_d,
                           e_matmul=(e_mm_s + e_mm_d) * _OUT, x_hat=x_hat, e_x=e_x, s_norm=sn, delta_norm=dn,
                           verified=verified)
