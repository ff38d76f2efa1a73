"""Layer 2, Modern Hopfield networks: the dynamics (energies, retrieval maps, Jacobians, fixed points) in
:mod:`.dynamics` and Ramsauer's diagnostics (separation, metastability, beta regimes, capacity, Theorem 5)
in :mod:`.diagnostics`."""
from .diagnostics import *  # noqa: F401,F403
from .diagnostics import __all__ as _diagnostics_all
from .dynamics import *  # noqa: F401,F403
from .dynamics import __all__ as _dynamics_all

__all__ = list(_dynamics_all) + list(_diagnostics_all)
