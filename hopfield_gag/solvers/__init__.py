"""Layer 2, fixed-point solvers: Anderson acceleration (type I/II) with plain iteration as depth 0, one
result type and one status enum (:mod:`.anderson`)."""
from .anderson import *  # noqa: F401,F403
from .anderson import __all__ as _anderson_all

__all__ = list(_anderson_all)
