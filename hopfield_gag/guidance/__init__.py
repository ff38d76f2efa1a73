"""Layer 4, attention guidance: the production op :func:`gag_attention` (:mod:`.attention`), extrapolation
read as AA(1) and the AA-adaptive scale (:mod:`.aa1`), and the float64 loop oracle (:mod:`.reference`)."""
from .aa1 import *  # noqa: F401,F403
from .aa1 import __all__ as _aa1_all
from .attention import GAGAttention, GAGParts, gag_attention
from .reference import reference_gag_attention

__all__ = list(_aa1_all) + ["GAGAttention", "GAGParts", "gag_attention", "reference_gag_attention"]
