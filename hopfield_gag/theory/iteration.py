r"""Where the iterated GAG map goes: fixed point or 2-cycle, decided on a 1-D map (``THEORY.md`` T8e).

Hopfield case, :math:`\zeta = 0`. Once a state :math:`\xi` is retrieved exactly by the sparse map,
:math:`T_s(\xi) = x_i`, the GAG map sends it to the ray of :math:`x_i`:

.. math::

    G(\xi) = x_i + \lambda\,\mathrm{cap}_\eta(c\,x_i) = \big(1 + \lambda\min(c, \eta/\lVert x_i\rVert)\big)\,x_i
    \qquad (c \ge 0 \text{ when } \Delta_i \ge 0).

If moreover :math:`\beta\Delta_i \ge \gamma_0 = 1/(\alpha-1)`, every point :math:`\rho x_i` with
:math:`\rho \ge 1` is retrieved exactly again (its score gap is :math:`\rho\beta\Delta_i`), so from then on
the orbit is :math:`\rho_{n+1} = h(\rho_n)` with

.. math::

    h(\rho) = 1 + \lambda\min\big(c(\rho), \eta/\lVert x_i\rVert\big),\qquad
    c(\rho) = 1 - \frac{\sum_j \mathrm{softmax}(\rho\beta a)_j\, a_j}{\lVert x_i\rVert^2},\quad a_j = \langle x_j, x_i\rangle,

    h'(\rho) = -\lambda\beta\,\mathrm{Var}_{\mathrm{softmax}(\rho\beta a)}[a]/\lVert x_i\rVert^2
    \ \text{(cap inactive)},\qquad h'(\rho) = 0\ \text{(cap active)}.

:math:`h` is continuous and non-increasing on :math:`[1, \infty)`, maps it into :math:`[1, h(1)]`, and has
exactly one fixed point :math:`\rho^*`. :math:`h\circ h` is non-decreasing, so the even and the odd
subsequences of every orbit are monotone and bounded: every orbit converges to :math:`\rho^*` or to a
2-cycle :math:`a < \rho^* < b`, and if :math:`|h'(\rho^*)| > 1` only a 2-cycle can attract it (proof in
``THEORY.md`` T8e). :func:`gag_iteration_verdict` runs exactly this analysis.
"""
from __future__ import annotations

import dataclasses
import math
from dataclasses import dataclass

import numpy as np
import torch
from torch import Tensor

from .._validation import check_scalar, check_tensor
from ..ops.params import GagParams
from ..hopfield.diagnostics import separation
from ..ops.normalizers import normalize
from ._orbit import SUPPORTED_ALPHAS, carry_start, certify_orbit, find_orbit, preconditioners
from .gag import gag_map
from .interval import IntervalFailure

__all__ = ["GagIterationVerdict", "gag_ray_map", "gag_iteration_verdict"]

F64 = torch.float64


@dataclass(frozen=True)
class GagIterationVerdict:
    r"""Result of :func:`gag_iteration_verdict`.

    Attributes
    ----------
    kind : str
        ``"fixed_point"``, ``"two_cycle"``, ``"cycle"`` (period 3 or 4, interval method only) or
        ``"undecided"`` (neither check succeeded; ``reason`` says why).
    pattern : int or None
        Index :math:`i` of the stored pattern whose ray carries the orbit.
    fixed_point : Tensor (d,) or None
        :math:`\rho^* x_i` (the fixed point of :math:`G` on the ray; also returned for a 2-cycle, where it
        is repelling or not reached).
    cycle : tuple of two Tensors (d,) or None
        :math:`(a\,x_i, b\,x_i)` with :math:`a < \rho^* < b`, for ``kind == "two_cycle"``.
    rho_star : float or None
        :math:`\rho^*`.
    multiplier : float or None
        :math:`h'(\rho^*) \le 0`; :math:`|h'(\rho^*)| > 1` proves the fixed point repels.
    cycle_rhos : tuple of floats or None
        :math:`(a, b)`.
    cycle_multiplier : float or None
        :math:`(h\circ h)'(a) = h'(a)h'(b) \ge 0`.
    limit_rho : float or None
        Limit of the even subsequence :math:`h^{2n}(\rho_1)`.
    warmup_steps : int
        Number of applications of :math:`G` before the orbit was on the ray (:math:`\rho_1` is the ray
        coordinate after ``warmup_steps + 1`` steps).
    rho1 : float or None
        Ray coordinate of the first state on the ray.
    reason : str
        Why the verdict is ``"undecided"`` ("" otherwise).
    method : str
        ``"ray"`` (the 1-D analysis on the ray of a pattern, with the ray extension) or ``"interval"`` (the
        rigorous contraction check of a periodic orbit; :mod:`hopfield_gag.theory._orbit`).
    period : int or None
        Period of the attracting orbit (1 = fixed point).
    orbit : tuple of Tensors (d,) or None
        The orbit points (interval method: float64 points within ``radius`` of the certified orbit).
    radius : float or None
        Interval method: every certified orbit point lies within this max-norm distance of ``orbit``.
    contraction : float or None
        Interval method: the certified contraction factor :math:`\kappa < 1` of :math:`G^p` on the box.
    kink : bool
        Ray method: :math:`\rho^*` sits where the cap switches (c(rho*) = eta/||x_i||): ``multiplier`` is then
        the product of the one-sided derivatives :math:`h'_-(\rho^*)h'_+(\rho^*) \ge 0` (stability of
        :math:`h\circ h`), not a derivative.
    """

    kind: str
    pattern: int | None
    fixed_point: Tensor | None
    cycle: tuple[Tensor, Tensor] | None
    rho_star: float | None
    multiplier: float | None
    cycle_rhos: tuple[float, float] | None
    cycle_multiplier: float | None
    limit_rho: float | None
    warmup_steps: int
    rho1: float | None
    reason: str = ""
    method: str = ""
    period: int | None = None
    orbit: tuple | None = None
    radius: float | None = None
    contraction: float | None = None
    kink: bool = False


def _ray_terms(a: Tensor, norm2: float, beta: float, rho: Tensor) -> tuple[Tensor, Tensor]:
    """c(rho) and Var_p[a] for rho (...,): softmax over rho * beta * a (N,)."""
    p = normalize(rho.unsqueeze(-1) * beta * a, 1.0)
    mean = (p * a).sum(-1)
    var = (p * (a - mean.unsqueeze(-1)) ** 2).sum(-1)
    return 1.0 - mean / norm2, var


def gag_ray_map(
    patterns: Tensor, i: int, rho: Tensor, beta: float, lam: float, eta: float | None
) -> tuple[Tensor, Tensor]:
    r"""The GAG map restricted to the ray of :math:`x_i` (``THEORY.md`` T8e), and its derivative.

    .. math::

        h(\rho) = 1 + \lambda\min(c(\rho), \eta/\lVert x_i\rVert),\qquad
        h'(\rho) = -\lambda\beta\,\mathrm{Var}_{p(\rho)}[a]/\lVert x_i\rVert^2\,\mathbb 1[c(\rho) < \eta/\lVert x_i\rVert],

    with :math:`a_j = \langle x_j, x_i\rangle` and :math:`p(\rho) = \mathrm{softmax}(\rho\beta a)`. Equals
    :math:`\langle G(\rho x_i), x_i\rangle/\lVert x_i\rVert^2` wherever :math:`T_s(\rho x_i) = x_i`
    (i.e. :math:`\rho\beta\Delta_i \ge 1/(\alpha-1)`); the sparse order :math:`\alpha` plays no other role.

    Parameters
    ----------
    patterns : Tensor (N, d);  i : int in [0, N);  rho : Tensor (...) of ray coordinates;
    beta : float > 0;  lam : float >= 0;  eta : float > 0 or None (no cap).

    Returns
    -------
    (h, h_prime) : Tensors shaped like ``rho``, float64.
    """
    check_tensor("patterns", patterns, min_dim=2)
    x = patterns.to(F64)
    xi_ = x[i]
    norm2 = float(xi_ @ xi_)
    if norm2 <= 0:
        raise ValueError(f"patterns[{i}] must be non-zero to define a ray")
    a = x @ xi_
    rho = torch.as_tensor(rho, dtype=F64)
    c, var = _ray_terms(a, norm2, beta, rho)
    cap = math.inf if eta is None else eta / math.sqrt(norm2)
    h = 1.0 + lam * torch.clamp(c, max=cap)
    hp = torch.where(c < cap, -lam * beta * var / norm2, torch.zeros_like(c))
    return h, hp


def gag_iteration_verdict(
    patterns: Tensor,
    xi: Tensor,
    beta: float,
    lam: float = GagParams.lam,
    eta: float | None = GagParams.eta,
    alpha: float = GagParams.alpha,
    max_warmup: int = 50,
    max_ray_steps: int = 200_000,
    tol: float = 1e-13,
    cycle_resolution: float = 1e-7,
    *,
    params: GagParams | None = None,
    interval: bool = True,
    max_burn: int = 3000,
) -> GagIterationVerdict:
    r"""Fixed point, 2-cycle, longer cycle or undecided: the fate of the GAG iteration
    :math:`\xi_{n+1} = G(\xi_n)` with :math:`\zeta = 0` (``THEORY.md`` T8e).

    **Ray method.** Apply :func:`hopfield_gag.theory.gag_map` (at most ``max_warmup`` times) until the
    sparse retrieval of the state is exactly one stored pattern :math:`x_i` with :math:`\Delta_i > 0`; one
    more step puts the state on the ray, :math:`\rho_1 x_i`. On the ray the orbit is :math:`\rho_{n+1} =
    h(\rho_n)` as long as every :math:`\rho_n \ge \rho_0 = \gamma_0/(\beta\Delta_i)` (exact retrieval;
    :math:`\gamma_0 = 1/(\alpha-1)`). :math:`h` is non-increasing, so the even and odd subsequences are
    monotone: the whole orbit stays in :math:`[\min(\rho_1, h(\rho_1), L, h(L)), \infty)` with :math:`L` the
    limit of :math:`h^{2n}(\rho_1)`, and the condition is checked on those four numbers (*ray extension*;
    with :math:`\beta\Delta_i \ge \gamma_0` it holds trivially). :math:`\rho^*` is the unique fixed point of
    :math:`h`; if :math:`|L - \rho^*| \le` ``cycle_resolution`` (relative) the limit is the fixed point, else
    the 2-cycle :math:`(\min(L, h(L)), \max(L, h(L)))`. ``multiplier`` is :math:`h'(\rho^*)`, or at a kink
    (the cap switches at :math:`\rho^*`) the product of the one-sided derivatives; :math:`\rho^*` repels iff
    :math:`|h'(\rho^*)| > 1` (kink: iff that product is > 1), and then, unless :math:`\rho_1 = \rho^*`, the
    limit is a 2-cycle -- reported as ``"two_cycle"`` once :math:`h\circ h` has settled, and as
    ``"undecided"`` (with that reason) when it settles too slowly to locate the cycle (multiplier near 1).

    **Interval method** (``interval=True``, :math:`\alpha \in \{1.5, 2\}`), where the ray method does not
    apply: iterate :math:`G` in float64 for ``max_burn`` steps, detect a period :math:`p \le 4`, and check
    rigorously (outward-rounded interval arithmetic, :mod:`hopfield_gag.theory._orbit`) that :math:`G^p` maps
    a box around the orbit point into itself and contracts it, that the support and cap status are constant
    on it, that the period is exactly p, and that the start :math:`\xi` enters the box (a centred-form
    interval iteration from :math:`\xi`). Success proves that the orbit of :math:`\xi` converges to a unique
    attracting orbit of period p inside the box.

    ``"undecided"`` only when both fail, with the reason.

    Parameters
    ----------
    patterns : Tensor (N, d), N >= 2, the stored patterns (keys = values).
    xi : Tensor (d,), the initial state.
    beta : float > 0;  lam, eta, alpha : GAG's :math:`\lambda \ge 0`, cap :math:`\eta > 0` or None, sparse
    order :math:`\alpha > 1` (or one validated ``params``: :class:`hopfield_gag.GagParams`, whose ``zeta``
    must be 0).
    max_warmup : int >= 0;  max_ray_steps : int >= 1 (applications of :math:`h\circ h`);
    tol : float > 0, relative step size at which the :math:`h\circ h` iteration stops;
    cycle_resolution : float > 0, a limit closer than this (relative) to :math:`\rho^*` is the fixed point;
    interval : bool, try the interval method;  max_burn : int >= 1, float steps before detecting a period.

    Returns
    -------
    GagIterationVerdict (float64 tensors).
    """
    check_tensor("patterns", patterns, min_dim=2)
    check_tensor("xi", xi, min_dim=1)
    if patterns.dim() != 2 or patterns.shape[0] < 2:
        raise ValueError(f"patterns must have shape (N, d) with N >= 2, got {tuple(patterns.shape)}")
    if xi.shape != patterns.shape[-1:]:
        raise ValueError(f"xi must have shape ({patterns.shape[-1]},), got {tuple(xi.shape)}")
    beta = check_scalar("beta", beta, gt=0.0)
    if params is None:
        params = GagParams.from_kwargs(lam=lam, eta=eta, alpha=alpha)  # validated once, there
    elif (lam, eta, alpha) != (GagParams.lam, GagParams.eta, GagParams.alpha):
        raise TypeError("gag_iteration_verdict: pass either params or lam/eta/alpha, not both")
    elif not isinstance(params, GagParams):
        raise TypeError(f"params must be a GagParams, got {type(params).__name__}")
    if params.zeta != 0.0:
        raise ValueError(f"gag_iteration_verdict analyses zeta = 0, got params.zeta = {params.zeta}")
    lam, eta, alpha = params.lam, params.eta, params.alpha
    tol = check_scalar("tol", tol, gt=0.0)
    cycle_resolution = check_scalar("cycle_resolution", cycle_resolution, gt=0.0)
    for name, val, lo in (("max_warmup", max_warmup, 0), ("max_ray_steps", max_ray_steps, 1),
                          ("max_burn", max_burn, 1)):
        if isinstance(val, bool) or not isinstance(val, int) or val < lo:
            raise ValueError(f"{name} must be an int >= {lo}, got {val!r}")
    x = patterns.to(F64)
    ray = _ray_verdict(x, xi.to(F64), beta, lam, eta, alpha, max_warmup, max_ray_steps, tol, cycle_resolution)
    if ray.kind != "undecided" or not interval:
        return ray
    if alpha not in SUPPORTED_ALPHAS:
        return dataclasses.replace(ray, reason=ray.reason + f"; the interval check supports alpha in "
                                                             f"{SUPPORTED_ALPHAS}, got {alpha}")
    return _interval_verdict(x, xi.to(F64), beta, lam, eta, alpha, max_burn, ray)


def _interval_verdict(x, xi, beta, lam, eta, alpha, max_burn, ray) -> GagIterationVerdict:
    X, x0 = x.numpy(), xi.numpy()
    p, orbit = find_orbit(X, beta, lam, eta, alpha, x0, burn=max_burn)
    if p is None:  # slow transients: one longer look before giving up
        p, orbit = find_orbit(X, beta, lam, eta, alpha, x0, burn=5 * max_burn)
    if p is None:
        return dataclasses.replace(ray, reason=ray.reason + f"; no period <= 4 after {6 * max_burn} float steps")
    reason, carries = "", 0
    precs = preconditioners(X, beta, lam, eta, alpha, orbit)
    for r_rel in (1e-2, 1e-4, 1e-6, 1e-8):  # the largest certified box first: the start enters it soonest
        r = r_rel * (1.0 + float(np.linalg.norm(orbit[0])))
        for P, power in precs:
            try:
                cert = certify_orbit(X, beta, lam, eta, alpha, orbit, r, P, power)
            except IntervalFailure as exc:
                reason = str(exc)
                continue
            try:
                carries += 1
                carry_start(X, beta, lam, eta, alpha, x0, cert)
            except IntervalFailure as exc:
                reason = f"orbit certified (kappa = {cert['kappa']:.3g}) but not the start: {exc}"
                if carries >= 2:
                    break
                continue
            pts = tuple(torch.tensor(o, dtype=F64) for o in orbit)
            half = float(0.5 * (cert["x_box"].hi - cert["x_box"].lo).max())
            kind = {1: "fixed_point", 2: "two_cycle"}.get(p, "cycle")
            return GagIterationVerdict(
                kind, None, pts[0] if p == 1 else None, pts if p == 2 else None, None, None, None, None, None,
                ray.warmup_steps, None, "", method="interval", period=p, orbit=pts, radius=half,
                contraction=float(cert["kappa"]))
        if carries >= 2:
            break
    return dataclasses.replace(ray, reason=ray.reason + f"; interval check of the period-{p} orbit failed: {reason}")


def _ray_verdict(x, state, beta, lam, eta, alpha, max_warmup, max_ray_steps, tol, cycle_resolution):
    gamma0 = 1.0 / (alpha - 1.0)
    delta = separation(x)

    def step(s: Tensor) -> Tensor:
        return gag_map(s, x, beta, lam, eta, 0.0, alpha)

    def undecided(reason, **kw):
        base = dict(pattern=None, fixed_point=None, cycle=None, rho_star=None, multiplier=None, cycle_rhos=None,
                    cycle_multiplier=None, limit_rho=None, warmup_steps=max_warmup, rho1=None)
        base.update(kw)
        return GagIterationVerdict("undecided", reason=reason, method="ray", **base)

    i = None
    for t in range(max_warmup + 1):
        p_s = normalize(beta * (x @ state), alpha)
        j = int(p_s.argmax())
        if int((p_s > 0).sum()) == 1 and float(delta[j]) > 0:
            i = j
            break
        if t < max_warmup:
            state = step(state)
    if i is None:
        return undecided("ray method: the orbit did not reach an exactly retrieved pattern with Delta_i > 0 "
                         "within max_warmup steps")
    warm = t
    xi_i = x[i]
    norm2 = float(xi_i @ xi_i)
    rho1 = float(step(state) @ xi_i) / norm2
    rho0 = gamma0 / (beta * float(delta[i]))  # exact retrieval on the ray needs rho >= rho0

    a_np = (x @ xi_i).numpy()
    cap = math.inf if eta is None else eta / math.sqrt(norm2)

    def _c_var(r: float) -> tuple[float, float]:
        e = r * beta * a_np
        p = np.exp(e - e.max())
        p /= p.sum()
        mean = float(p @ a_np)
        return 1.0 - mean / norm2, float(p @ (a_np - mean) ** 2)

    def h(r: float) -> float:
        return 1.0 + lam * min(_c_var(r)[0], cap)

    def hp(r: float, side: float = 0.0) -> float:
        """h'(r); side = -1 / +1: the one-sided derivative (the cap state just left / right of r)."""
        c, var = _c_var(r)
        if side:
            c = _c_var(r * (1 + side * 1e-9))[0]
        return -lam * beta * var / norm2 if c < cap else 0.0

    lo, hi = 1.0, h(1.0)
    for _ in range(200):
        mid = 0.5 * (lo + hi)
        if mid <= lo or mid >= hi:
            break
        if h(mid) >= mid:
            lo = mid
        else:
            hi = mid
    rho_star = 0.5 * (lo + hi)
    c_star = _c_var(rho_star)[0]
    kink = math.isfinite(cap) and abs(c_star - cap) <= 1e-9 * max(1.0, cap)
    if kink:
        mult = hp(rho_star, -1.0) * hp(rho_star, +1.0)  # stability of h o h at a kink
        repelling = mult > 1
    else:
        mult = hp(rho_star)
        repelling = abs(mult) > 1
    r = rho1
    settled = False
    for _ in range(max_ray_steps):
        r2 = h(h(r))
        if abs(r2 - r) <= tol * max(1.0, abs(r)):
            r = r2
            settled = True
            break
        r = r2
    fixed = rho_star * xi_i
    common = dict(pattern=i, fixed_point=fixed, rho_star=rho_star, multiplier=mult, limit_rho=r,
                  warmup_steps=warm, rho1=rho1, kink=kink)
    if not settled:
        why = ("the fixed point repels (a 2-cycle exists on the ray)" if repelling else
               "the fixed point attracts") + " but h o h did not settle within max_ray_steps (multiplier near 1)"
        return undecided("ray method: " + why, **common)
    if min(rho1, h(rho1), r, h(r)) < rho0:
        return undecided(f"ray method: the ray orbit leaves the exact-retrieval range rho >= {rho0:.4g} "
                         "(beta * Delta_i too small)", **common)
    if abs(r - rho_star) <= cycle_resolution * max(1.0, rho_star):
        if repelling and rho1 != rho_star:
            return undecided("ray method: the limit is within cycle_resolution of a repelling fixed point (a "
                             "2-cycle too small to resolve)", **common)
        return GagIterationVerdict("fixed_point", cycle=None, cycle_rhos=None, cycle_multiplier=None,
                                   method="ray", period=1, orbit=(fixed,), **common)
    a, b = sorted((r, h(r)))
    return GagIterationVerdict("two_cycle", cycle=(a * xi_i, b * xi_i), cycle_rhos=(a, b),
                               cycle_multiplier=hp(a) * hp(b), method="ray", period=2,
                               orbit=(a * xi_i, b * xi_i), **common)
