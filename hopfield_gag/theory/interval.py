r"""Outward-rounded interval arithmetic with forward-mode derivatives, for the rigorous checks of
:func:`hopfield_gag.theory.gag_iteration_verdict` (``THEORY.md`` T8e, "a verdict that decides").

An :class:`Interval` holds float64 arrays ``lo <= hi``; every operation rounds its result outward by one ulp
(two for ``exp``): IEEE +, -, *, /, sqrt are correctly rounded, so the exact result of the operation on any
real numbers inside the operands lies inside the result (glibc's ``exp`` errs by < 1 ulp). A :class:`Dual`
carries an interval value and an interval gradient (last axis = the seed directions), so one evaluation of a
map on a box gives enclosures of its values and of its Jacobian over the whole box (the mean-value theorem
then bounds its variation). Pure numpy, no dependencies; small problems only (d, N up to a few dozen).
"""
from __future__ import annotations

import numpy as np

__all__ = ["Interval", "Dual", "IntervalFailure"]

_NINF, _PINF = -np.inf, np.inf


class IntervalFailure(ArithmeticError):
    """A check that must hold on the whole box does not (the reason is the message)."""


def _dn(x):
    return np.nextafter(x, _NINF)


def _up(x):
    return np.nextafter(x, _PINF)


class Interval:
    """Arrays of closed intervals [lo, hi] (float64), broadcasting like numpy."""

    __slots__ = ("lo", "hi")

    def __init__(self, lo, hi=None):
        lo = np.asarray(lo, dtype=np.float64)
        self.lo = lo
        self.hi = lo if hi is None else np.asarray(hi, dtype=np.float64)

    # ------------------------------------------------------------------ construction and reading
    @classmethod
    def const(cls, x) -> "Interval":
        """The exact float64 values ``x`` as point intervals."""
        return cls(np.asarray(x, dtype=np.float64))

    @property
    def shape(self):
        return np.broadcast_shapes(self.lo.shape, self.hi.shape)

    def mid(self):
        return 0.5 * (self.lo + self.hi)

    def mag(self):
        """max |x| over the interval."""
        return np.maximum(np.abs(self.lo), np.abs(self.hi))

    def __getitem__(self, idx) -> "Interval":
        return Interval(np.broadcast_to(self.lo, self.shape)[idx], np.broadcast_to(self.hi, self.shape)[idx])

    # ------------------------------------------------------------------ arithmetic
    @staticmethod
    def _wrap(o) -> "Interval":
        return o if isinstance(o, Interval) else Interval.const(o)

    def __add__(self, o):
        o = self._wrap(o)
        return Interval(_dn(self.lo + o.lo), _up(self.hi + o.hi))

    __radd__ = __add__

    def __neg__(self):
        return Interval(-self.hi, -self.lo)

    def __sub__(self, o):
        o = self._wrap(o)
        return Interval(_dn(self.lo - o.hi), _up(self.hi - o.lo))

    def __rsub__(self, o):
        return self._wrap(o) - self

    def __mul__(self, o):
        o = self._wrap(o)
        p = np.stack(np.broadcast_arrays(self.lo * o.lo, self.lo * o.hi, self.hi * o.lo, self.hi * o.hi))
        p = np.where(np.isnan(p), 0.0, p)  # 0 * inf only arises for empty products of unbounded intervals
        return Interval(_dn(p.min(0)), _up(p.max(0)))

    __rmul__ = __mul__

    def reciprocal(self) -> "Interval":
        if np.any((self.lo <= 0) & (self.hi >= 0)):
            raise IntervalFailure("division by an interval containing 0")
        return Interval(_dn(1.0 / self.hi), _up(1.0 / self.lo))

    def __truediv__(self, o):
        return self * self._wrap(o).reciprocal()

    def __rtruediv__(self, o):
        return self._wrap(o) * self.reciprocal()

    def sqrt(self) -> "Interval":
        if np.any(self.lo < 0):
            raise IntervalFailure("square root of an interval reaching below 0")
        return Interval(_dn(np.sqrt(self.lo)), _up(np.sqrt(self.hi)))

    def exp(self) -> "Interval":
        return Interval(_dn(_dn(np.exp(self.lo))), _up(_up(np.exp(self.hi))))

    def sum(self, axis) -> "Interval":
        """Sum along ``axis`` with the summation's rounding bounded by n u sum|x| (any order)."""
        lo, hi = np.broadcast_to(self.lo, self.shape), np.broadcast_to(self.hi, self.shape)
        n = lo.shape[axis]
        u = 2.0**-53
        err_lo = (n + 1) * u * np.abs(lo).sum(axis) * 1.01
        err_hi = (n + 1) * u * np.abs(hi).sum(axis) * 1.01
        return Interval(_dn(lo.sum(axis) - err_lo), _up(hi.sum(axis) + err_hi))

    def positive(self) -> bool:
        return bool(np.all(self.lo > 0))

    def negative(self) -> bool:
        return bool(np.all(self.hi < 0))

    def __repr__(self):
        return f"Interval(lo={self.lo!r}, hi={self.hi!r})"


class Dual:
    """An interval value (shape S) with an interval gradient (shape S + (m,)) along m seed directions."""

    __slots__ = ("v", "g")

    def __init__(self, v: Interval, g: Interval):
        self.v, self.g = v, g

    @classmethod
    def seed(cls, box: Interval) -> "Dual":
        """The identity map on a box of shape (m,): value = the box, gradient = I."""
        m = box.shape[0]
        return cls(box, Interval.const(np.eye(m)))

    @classmethod
    def const(cls, x, m: int) -> "Dual":
        x = np.asarray(x, dtype=np.float64)
        return cls(Interval.const(x), Interval.const(np.zeros(x.shape + (m,))))

    @property
    def m(self) -> int:
        return self.g.shape[-1]

    @staticmethod
    def _ex(iv: Interval) -> Interval:  # value -> broadcast against gradients
        return Interval(iv.lo[..., None], iv.hi[..., None])

    def _wrap(self, o) -> "Dual":
        if isinstance(o, Dual):
            return o
        if isinstance(o, Interval):
            return Dual(o, Interval.const(np.zeros(o.shape + (self.m,))))
        return Dual.const(o, self.m)

    def __add__(self, o):
        o = self._wrap(o)
        return Dual(self.v + o.v, self.g + o.g)

    __radd__ = __add__

    def __neg__(self):
        return Dual(-self.v, -self.g)

    def __sub__(self, o):
        o = self._wrap(o)
        return Dual(self.v - o.v, self.g - o.g)

    def __rsub__(self, o):
        return self._wrap(o) - self

    def __mul__(self, o):
        o = self._wrap(o)
        return Dual(self.v * o.v, self._ex(self.v) * o.g + self._ex(o.v) * self.g)

    __rmul__ = __mul__

    def __truediv__(self, o):
        o = self._wrap(o)
        inv = o.v.reciprocal()
        val = self.v * inv
        return Dual(val, (self.g - self._ex(val) * o.g) * self._ex(inv))

    def sqrt(self) -> "Dual":
        r = self.v.sqrt()
        return Dual(r, self.g / self._ex(r * 2.0))

    def exp(self) -> "Dual":
        e = self.v.exp()
        return Dual(e, self._ex(e) * self.g)

    def sum(self, axis: int) -> "Dual":
        """Sum along a (non-negative) value axis."""
        return Dual(self.v.sum(axis), self.g.sum(axis))

    def __getitem__(self, idx) -> "Dual":
        return Dual(self.v[idx], self.g[idx])
