"""Layer 0, tensor ops: the exact sparse normalizers (softmax, sparsemax, alpha-entmax) with their CPU kernel
and reference algorithms.

Nothing here imports a higher layer of :mod:`hopfield_gag`.
"""
from .normalizers import *  # noqa: F401,F403
from .normalizers import __all__ as _normalizers_all

__all__ = list(_normalizers_all)
