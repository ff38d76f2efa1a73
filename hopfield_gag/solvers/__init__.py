"""Layer 3, fixed-point solvers: Anderson acceleration (type I/II) with plain iteration as depth 0
(:mod:`.anderson`), the Hopfield fixed point as a depth-0 solve with the energy trace (:mod:`.fixed_point`),
and the one result type and status enum they share (:mod:`.result`)."""
from .anderson import *  # noqa: F401,F403
from .anderson import __all__ as _anderson_all
from .fixed_point import FixedPointResult, fixed_point
from .result import SolverResult, SolverStatus

__all__ = list(_anderson_all) + ["SolverResult", "SolverStatus", "FixedPointResult", "fixed_point"]
