"""Layer 2, the theory oracle: the sparse-dense discrepancy and its property margins (:mod:`.discrepancy`),
the GAG map and its contraction (:mod:`.contraction`), and exact identities (:mod:`.symbolic`, imported on
demand because sympy is slow to import: ``from hopfield_gag.theory import symbolic``)."""
from .contraction import *  # noqa: F401,F403
from .contraction import __all__ as _contraction_all
from .discrepancy import *  # noqa: F401,F403
from .discrepancy import __all__ as _discrepancy_all

__all__ = list(_discrepancy_all) + list(_contraction_all)
