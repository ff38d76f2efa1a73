r"""The one result type and status enum of every fixed-point solve (:func:`hopfield_gag.anderson`, and
:func:`hopfield_gag.fixed_point`, which is Anderson with depth 0 plus an energy trace)."""
from __future__ import annotations

import enum
from dataclasses import dataclass
from typing import Optional

from torch import Tensor

__all__ = ["SolverStatus", "SolverResult"]


class SolverStatus(enum.Enum):
    """Why a batch element (or the whole solve) stopped. Values are the codes stored in
    :attr:`SolverResult.element_status`."""

    RUNNING = 0
    CONVERGED = 1  #: residual ||g(x) - x||_2 <= tol
    MAX_ITER = 2  #: max_iter steps taken without reaching tol
    BREAKDOWN = 3  #: the step was exactly zero although the residual is above tol (stagnation)
    NONFINITE = 4  #: g returned NaN/inf; the last finite iterate is kept

    @property
    def reason(self) -> str:
        """Short lower-case name: ``"converged"``, ``"max_iter"``, ``"breakdown"``, ``"non-finite"``,
        ``"running"``."""
        return _REASONS[self]


_REASONS = {
    SolverStatus.RUNNING: "running",
    SolverStatus.CONVERGED: "converged",
    SolverStatus.MAX_ITER: "max_iter",
    SolverStatus.BREAKDOWN: "breakdown",
    SolverStatus.NONFINITE: "non-finite",
}


@dataclass(frozen=True)
class SolverResult:
    r"""Outcome of a batched fixed-point solve :math:`x = g(x)`.

    Attributes
    ----------
    solution : Tensor (..., n)
        Final iterate :math:`x_k` per batch element (dtype of ``x0``). A converged element is frozen at
        the first iterate with :math:`\lVert g(x_k) - x_k\rVert_2 \le` ``tol``. Also available as ``state``
        (the Hopfield name).
    image : Tensor (..., n)
        :math:`g(\text{solution})` (already evaluated; for a contraction it is closer to the fixed point).
    residual : Tensor (...)
        :math:`\lVert g(x_k) - x_k\rVert_2` at ``solution``.
    status : SolverStatus
        ``CONVERGED`` iff every element converged; otherwise the most severe element status
        (``NONFINITE`` > ``BREAKDOWN`` > ``MAX_ITER``). ``reason`` is its short name.
    element_status : Tensor (...) int64
        Per-element :class:`SolverStatus` values (``SolverStatus(int(code))``).
    element_converged : Tensor (...) bool
        Which elements reached the tolerance.
    converged : bool
        Every element reached the tolerance (``status is SolverStatus.CONVERGED``).
    iterations : int
        Solver steps taken (for the slowest element); histories have ``iterations + 1`` rows.
    map_evaluations : int
        Calls of ``g``, each on the whole batch: ``iterations + 1``. An element that stopped early is
        still evaluated (it is frozen), so this is the honest cost of the batched solve.
    element_map_evaluations : Tensor (...) int64
        Map evaluations each element needed on its own: ``steps + 1``.
    energy_evaluations : int
        Calls of ``energy`` (safeguard: 1 at start, 2 per step; trace only: 1 per iterate).
    residual_history : Tensor (iterations + 1, ...)
        Row ``t`` = :math:`\lVert f_t\rVert_2` (constant after an element stops).
    energy_history : Tensor (iterations + 1, ...) or None
        Row ``t`` = :math:`E(x_t)` (energy safeguard or energy trace only).
    restarts, safeguard_rejections : Tensor (...) int64
    tol : float
        The tolerance used.
    """

    solution: Tensor
    image: Tensor
    residual: Tensor
    status: SolverStatus
    element_status: Tensor
    element_converged: Tensor
    converged: bool
    iterations: int
    map_evaluations: int
    element_map_evaluations: Tensor
    energy_evaluations: int
    residual_history: Tensor
    energy_history: Optional[Tensor]
    restarts: Tensor
    safeguard_rejections: Tensor
    tol: float

    @property
    def state(self) -> Tensor:
        """The solution (the name :func:`hopfield_gag.fixed_point` used for it)."""
        return self.solution

    @property
    def reason(self) -> str:
        """``status.reason``: ``"converged"``, ``"max_iter"``, ``"breakdown"`` or ``"non-finite"``."""
        return self.status.reason
