r"""Hopfield fixed points by plain iteration: :func:`hopfield_gag.anderson` with depth 0 and the energy trace.

It lives with the solvers (layer 3) because it *is* a solver call; the Hopfield quantities it iterates and
records (:func:`hopfield_gag.retrieval_map`, :func:`hopfield_gag.energy`) come from the layer below.
"""
from __future__ import annotations

from torch import Tensor

from .._validation import check_int, check_qkv, check_scalar
from ..hopfield.dynamics import energy, retrieval_map
from .anderson import anderson
from .result import SolverResult

__all__ = ["FixedPointResult", "fixed_point"]

# the result type of fixed_point before the solvers shared one (kept: public API)
FixedPointResult = SolverResult


def fixed_point(
    xi0: Tensor,
    keys: Tensor,
    beta: float = 1.0,
    alpha: float = 1.0,
    tol: float = 1e-10,
    max_iter: int = 1000,
) -> SolverResult:
    r"""Iterate the Hopfield update :math:`\xi_{t+1} = T(\xi_t) = X^\top\alpha\text{-entmax}(\beta X\xi_t)`
    to a fixed point: ``anderson(T, xi0, m=0, tol=tol, max_iter=max_iter, energy=E, trace_energy=True)``.

    Stops when every batch element has residual :math:`\lVert T(\xi_t) - \xi_t\rVert_2 \le` ``tol``, or
    after ``max_iter`` updates. Elements that reach the tolerance are frozen (they no longer move), so
    the returned state of a converged element satisfies the residual criterion exactly as recorded.
    The energy is non-increasing along the iterates and converges (Ramsauer et al., Theorems 1–2; the
    same CCCP argument for :math:`\alpha > 1`, Santos et al. 2024). Runs without autograd.

    Parameters
    ----------
    xi0 : Tensor (..., d)
        Initial state.
    keys : Tensor (..., N, d)
        Stored patterns as rows (values = keys).
    beta : float > 0;  alpha : float >= 1.
    tol : float >= 0
        Residual tolerance (absolute, 2-norm). The default 1e-10 suits float64; in float32 use about
        1e-5 times the pattern scale.
    max_iter : int >= 0
        Maximum number of updates.

    Returns
    -------
    SolverResult
        ``state`` (= ``solution``, broadcast batch, d), ``iterations``, per-element ``residual_history``
        and ``energy_history`` of shape (iterations + 1, ...), ``converged`` (all elements, bool),
        ``element_converged``, ``status`` / ``reason`` (``"converged"``, ``"max_iter"``, ``"non-finite"``).

    References: Ramsauer et al. 2021 (arXiv 2008.02217), Theorems 1–2; Santos et al. 2024
    (arXiv 2402.13725).
    """
    # the shared argument checks (_validation), in their Hopfield form: one state (..., d) per batch element
    batch = check_qkv(xi0, keys, names=("xi0", "keys", "values"), length="N", item="pattern", q_vector=True)
    beta = check_scalar("beta", beta, gt=0.0)
    alpha = check_scalar("alpha", alpha, ge=1.0)
    tol = check_scalar("tol", tol, ge=0.0)
    check_int("max_iter", max_iter, ge=0)
    x0 = xi0.expand(*batch, xi0.shape[-1])
    return anderson(
        lambda xi: retrieval_map(xi, keys, beta=beta, alpha=alpha),
        x0,
        m=0,
        tol=tol,
        max_iter=max_iter,
        energy=lambda xi: energy(xi, keys, beta, alpha),
        trace_energy=True,
    )
