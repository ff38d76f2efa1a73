"""Layer 3, the theory oracle: the sparse-dense discrepancy and its property margins (:mod:`.discrepancy`),
the GAG output, update and map and their contraction (:mod:`.gag`; the old path
:mod:`.contraction` still works), the sharp fixed-point / 2-cycle verdict of the
iterated GAG map (:mod:`.iteration`), certificates for the sign of the parallel coefficient and the sign
flip (:mod:`.certificates`), stability of GAG as run in a sampler (:mod:`.stability`), and exact identities
(:mod:`.symbolic`, imported on demand because sympy is slow to import:
``from hopfield_gag.theory import symbolic``)."""
from .certificates import *  # noqa: F401,F403
from .certificates import __all__ as _certificates_all
from .gag import *  # noqa: F401,F403
from .gag import __all__ as _gag_all
from .discrepancy import *  # noqa: F401,F403
from .discrepancy import __all__ as _discrepancy_all
from .iteration import *  # noqa: F401,F403
from .iteration import __all__ as _iteration_all
from .stability import *  # noqa: F401,F403
from .stability import __all__ as _stability_all

__all__ = (list(_discrepancy_all) + list(_gag_all) + list(_iteration_all) + list(_certificates_all)
           + list(_stability_all))
