"""The integer codes shared by Python, the C kernel and the Triton kernel: one home for each.

* :class:`Method` — the guidance methods (``method=`` of :func:`hopfield_gag.gag_attention`) as the kernels
  read them; :class:`Parallel` — ``gag``'s parallel rule.
* :class:`Status` — the bits of the status word every path of :func:`hopfield_gag.gag_attention` reports
  (torch entmax op, chunked C, one-call C, Triton): the same condition sets the same bit everywhere
  (``tests/test_status_codes.py``).
* :class:`EntmaxKind` — which threshold search an :math:`\\alpha` takes (:func:`hopfield_gag.ops.threshold.
  entmax_setup` derives it, once, for every path).

The C kernel is compiled with these values as ``-D`` flags (:func:`c_defines`; the loader's cache key
includes them) and the Triton kernel reads them as ``tl.constexpr`` globals built from this module, so
neither writes a code of its own.
"""
from __future__ import annotations

import enum

__all__ = ["Method", "Parallel", "Status", "EntmaxKind", "METHOD_NAMES", "PARALLEL_NAMES", "method_code",
           "c_defines"]


class Method(enum.IntEnum):
    """Guidance method codes (formulas: :mod:`hopfield_gag.ops.combine`)."""

    DENSE = 0
    SPARSE = 1
    PLADIS = 2
    GAG = 3
    AA = 4


class Parallel(enum.IntEnum):
    """``gag``'s parallel rule: the paper's :math:`c\\,s`, or the one-sided :math:`\\max(c, 0)\\,s`."""

    PAPER = 0
    POSITIVE = 1


class Status(enum.IntFlag):
    """Bits of a guided-attention / entmax status word (0 = all good)."""

    OK = 0
    NONFINITE_SCORES = 1  # a NaN or +inf score (NaN/+inf in q, an overflowing q.k, NaN/+inf in an additive mask)
    FULLY_MASKED = 2  # a query row with every key masked: no distribution
    ITER_LIMIT = 4  # an entmax row hit the iteration limit (its output is only the bracket estimate)
    OUT_OF_MEMORY = 8  # a kernel could not allocate its scratch
    KV_NONFINITE = 16  # k or v holds NaN or an infinity (NaN in v never shows in the scores)


class EntmaxKind(enum.IntEnum):
    """The threshold search of :math:`\\alpha`-entmax: a closed-form finish at :math:`\\alpha \\in \\{2, 1.5\\}`,
    Newton for :math:`1 < \\alpha < 2`, bisection for :math:`\\alpha > 2` (the root function is not convex)."""

    GENERAL = 0
    SPARSEMAX = 1
    ENTMAX15 = 2
    BISECT = 3


METHOD_NAMES = tuple(m.name.lower() for m in Method)  # ("dense", "sparse", "pladis", "gag", "aa")
PARALLEL_NAMES = tuple(p.name.lower() for p in Parallel)  # ("paper", "positive")


def method_code(method: str) -> Method:
    """The code of a method name (``"gag"`` -> ``Method.GAG``)."""
    return Method[method.upper()]


def c_defines() -> tuple[str, ...]:
    """The codes as C preprocessor flags (``-DHG_METHOD_GAG=3``, ``-DHG_STATUS_ITER_LIMIT=4``, ...), the
    only definition the C kernel sees."""
    out = []
    for prefix, enum_cls in (("HG_METHOD", Method), ("HG_PARALLEL", Parallel), ("HG_STATUS", Status),
                             ("HG_KIND", EntmaxKind)):
        for member in enum_cls:
            if prefix == "HG_STATUS" and member.value == 0:
                continue
            out.append(f"-D{prefix}_{member.name}={int(member.value)}")
    return tuple(out)
