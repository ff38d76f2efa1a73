r"""Rigorous check of a contracting periodic orbit of the GAG map (``THEORY.md`` T8e, part (b)); used by
:func:`hopfield_gag.theory.gag_iteration_verdict` where the ray analysis does not apply.

Hopfield case, :math:`\zeta = 0`, :math:`\alpha \in \{1.5, 2\}` (closed-form entmax on a fixed support).

* :func:`gag_step_np` -- one GAG step in plain float64 numpy (the brute-force orbit finder; checked against
  :func:`hopfield_gag.theory.gag_map` in the tests).
* :func:`interval_step` -- one GAG step on a :class:`~.interval.Dual` box: encloses the values and the Jacobian
  over the whole box, and raises :class:`~.interval.IntervalFailure` unless the entmax support, the sign of
  the cap test and :math:`s \ne 0` are the same at every point of the box (so :math:`G` is :math:`C^1` there).
* :func:`certify_orbit` -- for an approximate orbit point :math:`\tilde x` of period p and a preconditioner
  :math:`P` (:math:`Q \approx P^{-1}`, :math:`R = I - QP`, :math:`\lVert R\rVert_\infty < 1`), with
  :math:`F(y) = Q(G^p(\tilde x + Q^{-1}y) - \tilde x)` on :math:`\lVert y\rVert_\infty \le r`: if
  :math:`\lVert F(0)\rVert_\infty + \kappa r \le r` with :math:`\kappa = \lVert Q\,[DG^p](X)\,P\rVert_\infty/(1 -
  \lVert R\rVert_\infty) < 1` (:math:`X \supseteq \tilde x + Q^{-1}[-r, r]^d` the x-box, :math:`[DG^p](X)` the
  interval Jacobian), then :math:`F` maps the box into itself and contracts it (mean-value theorem), so
  :math:`G^p` has exactly one fixed point there and every point of the box converges to it under
  :math:`G^p`. Its minimal period is p if :math:`G^j(X) \cap X = \emptyset` for the proper divisors j of p.
* :func:`carry_start` -- the start :math:`\xi_0` is carried into the box by the centred (mean-value) interval
  iteration :math:`B_{n+1} = (G(m_n) + [DG](B_n)(B_n - m_n)) \cap G(B_n)`; once :math:`Q(B_n - \tilde x)
  \subseteq [-r, r]^d` the orbit of :math:`\xi_0` provably converges to the certified orbit.
"""
from __future__ import annotations

import math

import numpy as np

from .interval import Dual, Interval, IntervalFailure

SUPPORTED_ALPHAS = (1.5, 2.0)


# ----------------------------------------------------------------------------------------------------
# float64 map (brute force)
# ----------------------------------------------------------------------------------------------------
def entmax_support(u: np.ndarray, alpha: float) -> list[int]:
    """Support of alpha-entmax of the rows' thresholds-ready scores u = (alpha - 1) z, alpha in {1.5, 2}
    (sort-based; float64). Returns sorted indices."""
    order = np.argsort(-u, kind="stable")
    us = u[order]
    n = len(u)
    if alpha == 2.0:
        cs = np.cumsum(us)
        ks = np.arange(1, n + 1)
        k = int(ks[1 + ks * us > cs].max())
        return sorted(order[:k].tolist())
    for k in range(n, 0, -1):
        sel = us[:k]
        su, su2 = sel.sum(), (sel * sel).sum()
        disc = su * su - k * (su2 - 1)
        if disc < 0:
            continue
        tau = (su - math.sqrt(disc)) / k
        if (sel - tau > 0).all() and (k == n or us[k] - tau <= 0):
            return sorted(order[:k].tolist())
    return [int(order[0])]


def _entmax_np(z: np.ndarray, alpha: float) -> np.ndarray:
    u = (alpha - 1) * (z - z.max())
    S = entmax_support(u, alpha)
    p = np.zeros_like(z)
    us = u[S]
    k = len(S)
    if alpha == 2.0:
        tau = (us.sum() - 1) / k
        p[S] = us - tau
    else:
        su, su2 = us.sum(), (us * us).sum()
        tau = (su - math.sqrt(max(su * su - k * (su2 - 1), 0.0))) / k
        p[S] = (us - tau) ** 2
    return p / p.sum()


def gag_step_np(x: np.ndarray, X: np.ndarray, beta: float, lam: float, eta: float | None, alpha: float):
    """One GAG step G(x) (zeta = 0) in float64 numpy; x (d,), X (N, d)."""
    z = beta * (X @ x)
    ps = _entmax_np(z, alpha)
    e = np.exp(z - z.max())
    pd = e / e.sum()
    s, d = ps @ X, pd @ X
    ss = s @ s
    c = (ss - d @ s) / ss if ss > np.finfo(np.float64).tiny else 0.0
    g = abs(c) * math.sqrt(ss)
    f = 1.0 if (eta is None or g <= eta) else eta / g
    return s * (1 + lam * c * f)


# ----------------------------------------------------------------------------------------------------
# interval map
# ----------------------------------------------------------------------------------------------------
def interval_step(x: Dual, X: np.ndarray, beta: float, lam: float, eta: float | None, alpha: float) -> Dual:
    """G on a Dual box (value shape (d,)); raises IntervalFailure where G is not C^1 on the box."""
    N, d = X.shape
    m = x.m
    Xc = Dual.const(X, m)
    xb = Dual(Interval(np.broadcast_to(x.v.lo, (N, d)), np.broadcast_to(x.v.hi, (N, d))),
              Interval(np.broadcast_to(x.g.lo, (N, d, m)), np.broadcast_to(x.g.hi, (N, d, m))))
    z = (xb * Xc).sum(1) * beta  # (N,)
    zmid = z.v.mid()
    shift = float(zmid.max())
    u = (z - shift) * (alpha - 1)
    S = entmax_support((alpha - 1) * (zmid - shift), alpha)
    k = len(S)
    inside = np.zeros(N, dtype=bool)
    inside[S] = True
    uS = u[S]
    if k == 1:
        tau = uS - 1.0
    elif alpha == 2.0:
        tau = (uS.sum(0) - 1.0) / float(k)
    else:
        su = uS.sum(0)
        disc = su * su - (uS * uS).sum(0) * float(k) + float(k)
        if not disc.v.positive():
            raise IntervalFailure("entmax discriminant not positive on the box")
        tau = (su - disc.sqrt()) / float(k)
    gap = u - tau  # (N,) after broadcasting tau (shape () or (1,))
    if not gap[inside].v.positive():
        raise IntervalFailure("an entmax support boundary crosses the box (a support key may drop out)")
    if k < N and not gap[~inside].v.negative():
        raise IntervalFailure("an entmax support boundary crosses the box (a key may enter the support)")
    if k == 1:
        ps = Dual.const(np.ones(1), m)
    elif alpha == 2.0:
        ps = gap[inside]
    else:
        ps = gap[inside] * gap[inside]
    XS = Dual.const(X[inside], m)
    s = (Dual(Interval(ps.v.lo[:, None], ps.v.hi[:, None]), Interval(ps.g.lo[:, None, :], ps.g.hi[:, None, :]))
         * XS).sum(0)
    e = (z - shift).exp()
    E = e.sum(0)
    pd = e / E
    d_ = (Dual(Interval(pd.v.lo[:, None], pd.v.hi[:, None]), Interval(pd.g.lo[:, None, :], pd.g.hi[:, None, :]))
          * Xc).sum(0)
    ss = (s * s).sum(0)
    if not ss.v.positive():
        raise IntervalFailure("s may vanish on the box")
    c = (ss - (d_ * s).sum(0)) / ss
    if eta is None:
        active = False
    else:
        g2 = c * c * ss
        if bool(np.all(g2.v.hi < eta * eta)):
            active = False
        elif bool(np.all(g2.v.lo > eta * eta)):
            active = True
        else:
            raise IntervalFailure("the norm cap switches on the box")
    if not active:
        factor = c * lam + 1.0
    else:
        if c.v.positive():
            sign = 1.0
        elif c.v.negative():
            sign = -1.0
        else:
            raise IntervalFailure("c changes sign on the box while the cap is active")
        factor = Dual.const(sign * lam * eta, m) / ss.sqrt() + 1.0  # 1 + lam sgn(c) eta/||s||
    return s * factor


def _point(x: np.ndarray) -> Dual:
    return Dual(Interval.const(x), Interval.const(np.zeros((len(x), 0))))


def _matvec(A: np.ndarray, v: Interval) -> Interval:
    return (Interval.const(A) * Interval(v.lo[None, :], v.hi[None, :])).sum(1)


def _imat(A: Interval, B: Interval) -> Interval:
    return (Interval(A.lo[:, :, None], A.hi[:, :, None]) * Interval(B.lo[None, :, :], B.hi[None, :, :])).sum(1)


def _norm_inf(A: Interval) -> float:
    return float(A.mag().sum(-1).max())


def certify_orbit(X, beta, lam, eta, alpha, orbit: list, r: float, P: np.ndarray, power: int = 1):
    """The contraction check of the module docstring for the orbit point ``orbit[0]`` of period
    ``len(orbit)``, applied to the power ``power`` of the return map :math:`G^p` (a power of the return map contracts in the max-norm
    even when complex multipliers make :math:`G^p` itself fail it); returns a dict (kappa, f0, r, Q, x_box)
    or raises IntervalFailure with the reason."""
    period = len(orbit)
    p = period * power
    xt = np.asarray(orbit[0], dtype=np.float64)
    d = len(xt)
    Q = np.linalg.inv(P)
    R = Interval.const(np.eye(d)) - _imat(Interval.const(Q), Interval.const(P))
    nr = _norm_inf(R)
    if not nr < 0.5:
        raise IntervalFailure("preconditioner too ill-conditioned")
    rho_x = _norm_inf(Interval.const(P)) * nr * r / (1 - nr) * 1.01
    ybox = Interval(np.full(d, -r), np.full(d, r))
    xb = _matvec(P, ybox) + xt
    xbox = Interval(np.nextafter(xb.lo - rho_x, -np.inf), np.nextafter(xb.hi + rho_x, np.inf))
    # G^p over the box step by step: each step's image by the centred (mean-value) form intersected with the
    # direct enclosure (no wrapping blow-up), and D G^p = DG(x_{p-1}) ... DG(x_0) enclosed by the product of
    # the steps' interval Jacobians (each x_j lies in the j-th image)
    B, J = xbox, Interval.const(np.eye(d))
    images = []
    for _ in range(p):
        B, Jstep = _centred_step(B, X, beta, lam, eta, alpha)
        J = _imat(Jstep, J)
        images.append(B)
    kappa = _norm_inf(_imat(_imat(Interval.const(Q), J), Interval.const(P))) / (1 - nr)
    pt = _point(xt)
    for _ in range(p):
        pt = interval_step(pt, X, beta, lam, eta, alpha)
    f0 = float(_matvec(Q, pt.v - xt).mag().max())
    if not (kappa < 1 and f0 + kappa * r <= r):
        raise IntervalFailure(f"no contraction on the box: kappa = {kappa:.3g}, |F(0)| = {f0:.3g}, r = {r:.3g}")
    for j in range(1, period):
        if period % j == 0:
            img = images[j - 1]
            if not bool(np.any((img.hi < xbox.lo) | (img.lo > xbox.hi))):
                raise IntervalFailure(f"cannot exclude period {j} (G^{j}(box) meets the box)")
    return dict(kappa=kappa, f0=f0, r=r, Q=Q, x_box=xbox, xt=xt)


def _centred_step(B: Interval, X, beta, lam, eta, alpha) -> tuple[Interval, Interval]:
    """(enclosure of G(B), enclosure of DG over B): G(B) within G(m) + [DG](B)(B - m), intersected with
    the direct interval evaluation."""
    m_ = B.mid()
    Gm = interval_step(_point(m_), X, beta, lam, eta, alpha).v
    GB = interval_step(Dual.seed(B), X, beta, lam, eta, alpha)
    delta = B - m_
    C = Gm + (GB.g * Interval(delta.lo[None, :], delta.hi[None, :])).sum(1)
    lo, hi = np.maximum(C.lo, GB.v.lo), np.minimum(C.hi, GB.v.hi)
    if bool(np.any(lo > hi)):
        raise IntervalFailure("inconsistent enclosures (rounding)")
    return Interval(lo, hi), GB.g


def carry_start(X, beta, lam, eta, alpha, xi0: np.ndarray, cert: dict, max_steps: int = 4000):
    """Steps n after which the enclosure of G^n(xi0) lies in the certified y-box (module docstring), or
    raises IntervalFailure."""
    Q, xt, r, box = cert["Q"], cert["xt"], cert["r"], cert["x_box"]
    B = Interval.const(np.asarray(xi0, dtype=np.float64))
    for n in range(max_steps + 1):
        y = _matvec(Q, B - xt)
        if bool(np.all(y.lo >= -r) and np.all(y.hi <= r)):
            return n
        if n == max_steps:
            break
        B, _ = _centred_step(B, X, beta, lam, eta, alpha)
        if bool(np.any((B.hi - B.lo) > 10 * (box.hi - box.lo))):
            raise IntervalFailure(f"the start's enclosure grew too wide after {n + 1} steps")
    raise IntervalFailure(f"the start did not enter the certified box within {max_steps} steps")


def find_orbit(X, beta, lam, eta, alpha, xi0, burn: int = 3000, max_period: int = 4, rel: float = 1e-12):
    """Float64 brute force: iterate from xi0, return (period p, orbit list) or (None, None)."""
    x = np.asarray(xi0, dtype=np.float64)
    for _ in range(burn):
        x = gag_step_np(x, X, beta, lam, eta, alpha)
    traj = [x]
    for _ in range(2 * max_period):
        traj.append(gag_step_np(traj[-1], X, beta, lam, eta, alpha))
    size = 1.0 + float(np.linalg.norm(x))
    for p in range(1, max_period + 1):
        if np.linalg.norm(traj[p] - traj[0]) <= rel * size and np.linalg.norm(traj[2 * p] - traj[p]) <= rel * size:
            return p, traj[:p]
    return None, None


def preconditioners(X, beta, lam, eta, alpha, orbit):
    """Candidate P: the real eigenbasis of the float Jacobian of G^p at orbit[0] (from the interval AD at the
    point), then the identity."""
    xt = np.asarray(orbit[0], dtype=np.float64)
    d = len(xt)
    out, jac = [], []
    try:
        cur = Dual.seed(Interval.const(xt))
        for _ in range(len(orbit)):
            cur = interval_step(cur, X, beta, lam, eta, alpha)
        J = cur.g.mid()
        jac.append(J)
        w, V = np.linalg.eig(J)
        cols, used = [], set()
        for i in range(d):
            if i in used:
                continue
            if abs(w[i].imag) < 1e-12:
                cols.append(V[:, i].real)
            else:
                cols.append(V[:, i].real)
                cols.append(V[:, i].imag)
                j = int(np.argmin(np.abs(w - np.conj(w[i])) + (np.arange(d) == i) * 1e9))
                used.add(j)
            used.add(i)
        P = np.stack(cols[:d], 1)
        if np.linalg.cond(P) < 1e8:
            out.append(P)
    except (IntervalFailure, np.linalg.LinAlgError, ValueError):
        pass
    out.append(np.eye(d))
    # the power k of the return map whose preconditioned Jacobian contracts in the max-norm (<= 12)
    powers = []
    for P in out:
        k = 1
        if jac:
            M = np.linalg.solve(P, jac[0] @ P)
            Mk = M.copy()
            while np.abs(Mk).sum(1).max() >= 0.9 and k < 12:
                Mk = Mk @ M
                k += 1
        powers.append(k)
    return list(zip(out, powers))
