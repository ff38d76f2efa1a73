"""Layer 1, tensor ops: the exact sparse normalizers (softmax, sparsemax, alpha-entmax) with their CPU kernel
and reference algorithms; the guidance rule (:mod:`.combine`) with its parameter object (:mod:`.params`,
:class:`GagParams`) and the integer codes shared with the kernels (:mod:`.codes`); and the fused guided-attention
forwards: the CPU one (:mod:`.fused`, C sources ``entmax_rows.c`` and ``gag_forward.c``) and the Triton one
(:mod:`.triton_attention`), which :func:`hopfield_gag.gag_attention` dispatches to.

Nothing here imports a higher layer of :mod:`hopfield_gag`.
"""
from .normalizers import *  # noqa: F401,F403
from .normalizers import __all__ as _normalizers_all

from .codes import Method, Status  # noqa: F401
from .params import GagParams  # noqa: F401

__all__ = list(_normalizers_all) + ["GagParams", "Method", "Status"]
