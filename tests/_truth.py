"""The truth oracle of the theory tests: exact attention quantities of the *given* float inputs, in mpmath.

Every float (q, k, v, the scale, an additive mask) is converted to an mpf exactly (binary floats are exact
rationals), and everything after that is computed at ``DPS`` = 60 significant digits: the scores
z_j = scale * sum_i q_i k_ji (+ bias), softmax, alpha-entmax (threshold by safeguarded Newton to 1e-55), the
outputs s = p_s V and d = p_d V, Delta = s - d and c = <Delta, s>/||s||^2 (0 if s = 0). This is independent of
the package's normalizers, matmuls and rounding: a certificate that holds against this holds for the inputs.
"""
from __future__ import annotations

import math
from dataclasses import dataclass

import mpmath as mp
import torch

DPS = 60
_ctx = mp.MPContext()
ctx = _ctx  # the 60-digit context (mpmath.mp keeps its own, default 15 digits)
_ctx.dps = DPS
mpf = _ctx.mpf


def exact(x) -> "mp.mpf":
    """A Python/numpy/torch float as the exact mpf of its binary value."""
    return mpf(float(x))


def scores(q_row, k_rows, scale, mask_row=None) -> list:
    """Exact scores of one query row: list of mpf, or None for a key removed by a boolean mask (or -inf)."""
    s = exact(scale)
    out = []
    for j, kj in enumerate(k_rows):
        if mask_row is not None:
            mj = mask_row[j]
            if isinstance(mj, bool) and not mj:
                out.append(None)
                continue
        z = s * _ctx.fsum(exact(a) * exact(b) for a, b in zip(q_row, kj))
        if mask_row is not None and not isinstance(mask_row[j], bool):
            b = float(mask_row[j])
            if b == -math.inf:
                out.append(None)
                continue
            z = z + exact(b)
        out.append(z)
    return out


def softmax(z: list) -> list:
    """softmax of a list of mpf (None = removed)."""
    m = max(x for x in z if x is not None)
    e = [_ctx.exp(x - m) if x is not None else mpf(0) for x in z]
    tot = _ctx.fsum(e)
    return [x / tot for x in e]


def entmax(z: list, alpha) -> list:
    """alpha-entmax (alpha > 1) of a list of mpf (None = removed): p_j = [(alpha-1) z_j - tau]_+^(1/(alpha-1))
    with sum p = 1; tau by safeguarded Newton on the bracket [-1, -n^(1-alpha)] (scores shifted to max 0)."""
    a = exact(alpha)
    am1 = a - 1
    r = 1 / am1
    live = [x for x in z if x is not None]
    m = max(live)
    y = [am1 * (x - m) if x is not None else None for x in z]
    n = len(live)
    lo, hi = mpf(-1), -(mpf(n) ** (-am1))

    def S(t):
        return _ctx.fsum((yj - t) ** r for yj in y if yj is not None and yj > t)

    def dS(t):
        return -r * _ctx.fsum((yj - t) ** (r - 1) for yj in y if yj is not None and yj > t)

    # start Newton from a float64 bisection estimate (only a starting point: the bracket below keeps every
    # step inside [lo, hi] and the stopping test is on the 60-digit residual)
    yf = [float(x) for x in y if x is not None]
    rf, flo, fhi = float(r), -1.0, float(hi)
    for _ in range(64):
        mid = 0.5 * (flo + fhi)
        if sum((x - mid) ** rf for x in yf if x > mid) > 1:
            flo = mid
        else:
            fhi = mid
    t = mpf(0.5 * (flo + fhi))
    if not lo <= t <= hi:
        t = hi
    tol = mpf(10) ** (-(DPS - 5))
    for _ in range(2000):
        s = S(t) - 1
        if abs(s) <= tol:
            break
        if s > 0:
            lo = t
        else:
            hi = t
        d = dS(t)
        nt = t - s / d if d != 0 else (lo + hi) / 2
        t = nt if lo < nt < hi else (lo + hi) / 2
        if hi - lo <= tol:
            break
    p = [((yj - t) ** r if (yj is not None and yj > t) else mpf(0)) for yj in y]
    tot = _ctx.fsum(p)
    return [x / tot for x in p]


def normalize(z: list, alpha) -> list:
    return softmax(z) if float(alpha) == 1.0 else entmax(z, alpha)


@dataclass
class RowTruth:
    """Exact quantities of one query row (mpf)."""

    p_sparse: list
    p_dense: list
    sparse: list
    dense: list
    c: "mp.mpf"
    inner: "mp.mpf"  # <Delta, s>
    s_norm: "mp.mpf"

    @property
    def inner_unit(self):
        """<Delta, s/||s||> (0 if s = 0)."""
        return self.inner / self.s_norm if self.s_norm > 0 else mpf(0)

    def flip_margin(self, lam, eta, zeta=0.0, parallel="paper"):
        """m = <o, s>/||s||^2 = 1 + lam c~ min(1, eta/||g||) of the exact outputs (THEORY.md, the sign flip)."""
        if self.s_norm == 0:
            return mpf(0)
        c = self.c
        ct = c if parallel == "paper" else max(c, mpf(0))
        z = exact(zeta)
        g = [z * (si - di) + (ct - z * c) * si for si, di in zip(self.sparse, self.dense)]
        gn = _ctx.sqrt(_ctx.fsum(x * x for x in g))
        f = mpf(1) if (eta is None or gn <= exact(eta)) else exact(eta) / gn
        return 1 + exact(lam) * ct * f


def row_truth(q_row, k_rows, v_rows, scale, alpha, mask_row=None) -> RowTruth:
    z = scores(q_row, k_rows, scale, mask_row)
    ps, pd = normalize(z, alpha), softmax(z)
    V = [[exact(x) for x in row] for row in v_rows]
    dv = len(V[0])
    s = [_ctx.fsum(ps[j] * V[j][i] for j in range(len(z))) for i in range(dv)]
    d = [_ctx.fsum(pd[j] * V[j][i] for j in range(len(z))) for i in range(dv)]
    ss = _ctx.fsum(x * x for x in s)
    inner = _ctx.fsum((s[i] - d[i]) * s[i] for i in range(dv))
    c = inner / ss if ss > 0 else mpf(0)
    return RowTruth(ps, pd, s, d, c, inner, _ctx.sqrt(ss))


def truth(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor | None, scale: float, alpha: float,
          mask: torch.Tensor | None = None, rows=None) -> list:
    """Row truths for batched inputs q (..., Lq, d), k (..., Lk, d), v (..., Lk, dv) (None = k), mask
    broadcastable to (..., Lq, Lk) (bool keep/drop or additive float). Returns a list over the query rows of
    the broadcast batch in C order (one :class:`RowTruth` per row; ``None`` for rows not in ``rows``, an
    optional collection of flat row indices to compute)."""
    v = k if v is None else v
    batch = torch.broadcast_shapes(q.shape[:-2], k.shape[:-2], v.shape[:-2])
    lq, lk = q.shape[-2], k.shape[-2]
    qb = q.expand(*batch, *q.shape[-2:]).reshape(-1, lq, q.shape[-1]).double().tolist()
    kb = k.expand(*batch, *k.shape[-2:]).reshape(-1, lk, k.shape[-1]).double().tolist()
    vb = v.expand(*batch, *v.shape[-2:]).reshape(-1, lk, v.shape[-1]).double().tolist()
    mb = None
    if mask is not None:
        mfull = torch.broadcast_to(mask, (*batch, lq, lk)).reshape(-1, lq, lk)
        mb = mfull.tolist() if mask.dtype == torch.bool else mfull.double().tolist()
    out = []
    want = None if rows is None else set(rows)
    for b in range(len(qb)):
        for i in range(lq):
            if want is not None and b * lq + i not in want:
                out.append(None)
                continue
            out.append(row_truth(qb[b][i], kb[b], vb[b], scale, alpha, None if mb is None else mb[b][i]))
    return out


def as_tensor(values, shape) -> torch.Tensor:
    """mpf values -> float64 tensor of ``shape`` (rounded to nearest; the sign is kept exactly)."""
    return torch.tensor([float(x) for x in values], dtype=torch.float64).reshape(shape)
