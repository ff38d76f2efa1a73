"""Old home of :mod:`hopfield_gag.theory.gag` (the GAG output, update and map, and their contraction).

Kept so ``from hopfield_gag.theory import contraction`` and ``hopfield_gag.theory.contraction.<name>`` keep
working: the module object *is* :mod:`hopfield_gag.theory.gag` (so patching a name here patches it there)."""
import sys

from . import gag as _gag

sys.modules[__name__] = _gag
