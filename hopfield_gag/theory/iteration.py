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

import math
from dataclasses import dataclass

import numpy as np
import torch
from torch import Tensor

from .._validation import check_scalar, check_tensor
from ..hopfield.diagnostics import separation
from ..ops.normalizers import normalize
from .gag import gag_map

__all__ = ["GagIterationVerdict", "gag_ray_map", "gag_iteration_verdict"]

F64 = torch.float64


@dataclass(frozen=True)
class GagIterationVerdict:
    r"""Result of :func:`gag_iteration_verdict`.

    Attributes
    ----------
    kind : str
        ``"fixed_point"``, ``"two_cycle"`` or ``"other"`` (the orbit never reached a ray on which the 1-D
        analysis is exact, or the 1-D iteration did not settle; ``reason`` says which).
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
        Why the verdict is ``"other"`` ("" otherwise).
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
    lam: float = 10.0,
    eta: float | None = 15.0,
    alpha: float = 1.5,
    max_warmup: int = 50,
    max_ray_steps: int = 200_000,
    tol: float = 1e-13,
    cycle_resolution: float = 1e-7,
) -> GagIterationVerdict:
    r"""Fixed point, 2-cycle or other: the fate of the GAG iteration :math:`\xi_{n+1} = G(\xi_n)` with
    :math:`\zeta = 0` (``THEORY.md`` T8e), decided on the 1-D map :math:`h` of :func:`gag_ray_map`.

    1. Apply :func:`hopfield_gag.theory.gag_map` (at most ``max_warmup`` times) until the sparse retrieval of
       the state is exactly one stored pattern :math:`x_i` with :math:`\beta\Delta_i \ge 1/(\alpha-1)`
       (then the whole ray :math:`\{\rho x_i : \rho \ge 1\}` is retrieved exactly and is invariant). One more
       step gives :math:`\rho_1`. If this never happens: ``kind = "other"``.
    2. :math:`\rho^*` = the unique root of :math:`h(\rho) = \rho` on :math:`[1, h(1)]` (bisection to
       machine precision); ``multiplier`` :math:`= h'(\rho^*)`.
    3. Iterate :math:`h\circ h` from :math:`\rho_1` (a monotone sequence) to its limit :math:`L`. If
       :math:`|L - \rho^*| \le` ``cycle_resolution`` (relative): ``"fixed_point"``; otherwise ``"two_cycle"`` with
       :math:`(a, b) = (\min(L, h(L)), \max(L, h(L)))`. If :math:`|h'(\rho^*)| > 1` the verdict is
       necessarily ``"two_cycle"`` unless :math:`\rho_1 = \rho^*` exactly.

    Parameters
    ----------
    patterns : Tensor (N, d), N >= 2, the stored patterns (keys = values).
    xi : Tensor (d,), the initial state.
    beta : float > 0;  lam : float >= 0;  eta : float > 0 or None;  alpha : float > 1 (the sparse order).
    max_warmup : int >= 0;  max_ray_steps : int >= 1 (applications of :math:`h\circ h`);
    tol : float > 0, relative step size at which the :math:`h\circ h` iteration stops;
    cycle_resolution : float > 0, a limit closer than this (relative) to :math:`\rho^*` is the fixed point.

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
    lam = check_scalar("lam", lam, ge=0.0)
    alpha = check_scalar("alpha", alpha, gt=1.0)
    tol = check_scalar("tol", tol, gt=0.0)
    cycle_resolution = check_scalar("cycle_resolution", cycle_resolution, gt=0.0)
    if eta is not None:
        eta = check_scalar("eta", eta, gt=0.0)
    for name, val, lo in (("max_warmup", max_warmup, 0), ("max_ray_steps", max_ray_steps, 1)):
        if isinstance(val, bool) or not isinstance(val, int) or val < lo:
            raise ValueError(f"{name} must be an int >= {lo}, got {val!r}")
    x = patterns.to(F64)
    state = xi.to(F64)
    gamma0 = 1.0 / (alpha - 1.0)
    delta = separation(x)

    def step(s: Tensor) -> Tensor:
        return gag_map(s, x, beta, lam, eta, 0.0, alpha)

    i = None
    for t in range(max_warmup + 1):
        p_s = normalize(beta * (x @ state), alpha)
        j = int(p_s.argmax())
        if int((p_s > 0).sum()) == 1 and beta * float(delta[j]) >= gamma0:
            i = j
            break
        if t < max_warmup:
            state = step(state)
    if i is None:
        return GagIterationVerdict("other", None, None, None, None, None, None, None, None, max_warmup, None,
                                   reason="the orbit did not reach an exactly retrieved pattern with "
                                          "beta * Delta_i >= 1/(alpha - 1) within max_warmup steps")
    warm = t
    xi_i = x[i]
    norm2 = float(xi_i @ xi_i)
    rho1 = float(step(state) @ xi_i) / norm2

    # the 1-D map in plain float64 arithmetic (same formula as gag_ray_map, ~100x less overhead per call)
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

    def hp(r: float) -> float:
        c, var = _c_var(r)
        return -lam * beta * var / norm2 if c < cap else 0.0

    # rho*: phi(r) = h(r) - r is strictly decreasing, phi(1) >= 0 >= phi(h(1))
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
    mult = hp(rho_star)
    # even subsequence: monotone, converges to the nearest fixed point of h∘h in its direction
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
    if not settled:
        return GagIterationVerdict("other", i, fixed, None, rho_star, mult, None, None, r, warm, rho1,
                                   reason="h∘h did not settle within max_ray_steps (multiplier near 1)")
    # the monotone h∘h orbit stopped at a fixed point of h∘h: rho* or a 2-cycle point. Near a period-doubling
    # (|h'(rho*)| ~ 1) the cycle is born at rho* with amplitude ~ sqrt(|h'(rho*)| - 1), so anything closer
    # than cycle_resolution to rho* is reported as the fixed point.
    if abs(r - rho_star) <= cycle_resolution * max(1.0, rho_star):
        return GagIterationVerdict("fixed_point", i, fixed, None, rho_star, mult, None, None, r, warm, rho1)
    a, b = sorted((r, h(r)))
    return GagIterationVerdict("two_cycle", i, fixed, (a * xi_i, b * xi_i), rho_star, mult, (a, b),
                               hp(a) * hp(b), r, warm, rho1)
