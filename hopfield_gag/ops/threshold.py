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

__all__ = ["EntmaxSetup", "entmax_kind", "entmax_setup"]


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
    """The setup for ``alpha > 1`` (validated by the callers) on rows of ``n >= 1`` entries."""
    a = alpha - 1.0
    x_hi = -((1.0 / max(n, 1)) ** a)
    return EntmaxSetup(entmax_kind(alpha), a, 1.0 / a, x_hi, x_hi * (1.0 / a))
