r"""The threshold-search setup of :math:`\alpha`-entmax on rows of length :math:`n`, derived once for every path
(the torch op of :mod:`.normalizers`, the C kernel, which receives it as arguments, and the Triton kernel).

In max-shifted coordinates :math:`u = z - \max z` the threshold :math:`t` (in units of :math:`z`) of
:math:`p_i = ((\alpha-1)(u_i - t))_+^{1/(\alpha-1)}` lies in :math:`[-1/(\alpha-1),\ h_0]`,
:math:`h_0 = -(1/n)^{\alpha-1}/(\alpha-1)` (at :math:`h_0` every :math:`p_i \le 1/n`, so the sum is at most
1; at the lower end the maximal entry alone has :math:`p = 1`).
"""
from __future__ import annotations

from typing import NamedTuple

from .codes import EntmaxKind

__all__ = ["EntmaxSetup", "NEAR_ONE", "entmax_kind", "entmax_setup", "near_one"]


class EntmaxSetup(NamedTuple):
    """``kind`` (:class:`~hopfield_gag.ops.codes.EntmaxKind`), :math:`a = \\alpha - 1`, :math:`r = 1/a`, the
    bracket's upper end :math:`x_{hi} = -(1/n)^a` in units of :math:`x = a(z - \\max z)` (the lower end is
    :math:`-1`) and :math:`h_0 = x_{hi}/a` in units of :math:`z` (the lower end is :math:`-1/a`)."""

    kind: EntmaxKind
    a: float
    r: float
    x_hi: float
    hi0: float

    @property
    def closed_form(self) -> bool:
        """Whether the search has an exact closed-form finish (alpha in {1.5, 2})."""
        return self.kind in (EntmaxKind.SPARSEMAX, EntmaxKind.ENTMAX15)


def entmax_kind(alpha: float) -> EntmaxKind:
    """Which search ``alpha`` takes: closed-form finishes at 2 and 1.5, Newton below 2, bisection above."""
    if alpha == 2.0:
        return EntmaxKind.SPARSEMAX
    if alpha == 1.5:
        return EntmaxKind.ENTMAX15
    return EntmaxKind.BISECT if alpha > 2.0 else EntmaxKind.GENERAL


def entmax_setup(alpha: float, n: int) -> EntmaxSetup:
    """The setup for ``alpha > 1`` (validated by the callers) on rows of ``n >= 1`` entries. Raises
    ``ValueError`` for alpha within :data:`NEAR_ONE` of 1, where these coordinates cannot resolve the threshold:
    the torch paths take the offset search there, and the kernels' entry points refuse such calls."""
    if near_one(alpha):
        raise ValueError(f"alpha={alpha!r} is within {NEAR_ONE:g} of 1: the threshold search of the kernels loses "
                         "eps/(alpha - 1) there; entmax() and gag_attention() take the offset search instead")
    a = alpha - 1.0
    x_hi = -((1.0 / max(n, 1)) ** a)
    return EntmaxSetup(entmax_kind(alpha), a, 1.0 / a, x_hi, x_hi * (1.0 / a))


# Below this alpha - 1 the threshold of the coordinates above, t in [-1/a, h0], is a number of size 1/a, so
# z - t keeps only eps/a of relative precision (measured on rows of 2-77 entries, fp64, against 50-digit
# entmax: 4e-15 at a = 1e-3, 3e-13 at 1e-4, 2e-8 at 1e-9, 3e-2 at 1e-15). There the torch paths search the
# offset s = t + 1/a in [0, log n] instead (normalizers._entmax_near_one), and the C and Triton kernels,
# which know only the coordinates above, do not take the call.
NEAR_ONE = 1e-3


def near_one(alpha: float) -> bool:
    """Whether ``alpha`` (> 1) is within :data:`NEAR_ONE` of 1, where only the offset search is accurate."""
    return alpha - 1.0 < NEAR_ONE
