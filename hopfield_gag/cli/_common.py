"""What every command shares: the one-line error, the parser class, and argument types that reject bad
values while parsing (before any expensive work)."""
from __future__ import annotations

import argparse
import math
import re

PROG = "hopfield-gag"


class UsageError(Exception):
    """A user error: :func:`hopfield_gag.cli.main` prints ``hopfield-gag: error: <message>`` (one line) on
    stderr and exits with status 2."""


class CliParser(argparse.ArgumentParser):
    """``argparse`` with one-line errors: a bad argument raises :class:`UsageError` naming the command."""

    def error(self, message):  # argparse prints the usage block then exits; we keep it to one line
        sub = self.prog[len(PROG):].strip()
        hint = f"see `{self.prog} --help`"
        raise UsageError(f"{sub + ': ' if sub else ''}{message} ({hint})")


def _type(name: str, fn):
    """An argparse type from ``fn(text) -> value`` that raises ``ValueError`` with the expectation."""
    def parse(text):
        try:
            return fn(text)
        except ValueError as exc:
            raise argparse.ArgumentTypeError(f"{exc}, got {text!r}") from None
    parse.__name__ = name  # argparse names the type in its messages
    return parse


def int_ge(lo: int):
    """Type: an int >= ``lo``."""
    def fn(text):
        try:
            x = int(text)
        except ValueError:
            x = None
        if x is None or x < lo:
            raise ValueError(f"must be an int >= {lo}")
        return x
    return _type(f"int>={lo}", fn)


def real(*, ge: float | None = None, gt: float | None = None, le: float | None = None):
    """Type: a finite float within the bounds."""
    bounds = " and ".join(b for b in (f">= {ge:g}" if ge is not None else "", f"> {gt:g}" if gt is not None else "",
                                      f"<= {le:g}" if le is not None else "") if b)
    want = "a finite number" + (f" {bounds}" if bounds else "")

    def fn(text):
        try:
            x = float(text)
        except ValueError:
            x = math.nan
        if not math.isfinite(x) or (ge is not None and x < ge) or (gt is not None and x <= gt) or (
                le is not None and x > le):
            raise ValueError(f"must be {want}")
        return x
    return _type("number", fn)


def int_list(lo: int = 0, hi: int | None = None):
    """Type: comma-separated distinct ints in ``[lo, hi)``."""
    def fn(text):
        try:
            xs = [int(p) for p in text.split(",")]
        except ValueError:
            xs = None
        if not xs or any(x < lo or (hi is not None and x >= hi) for x in xs):
            raise ValueError(f"must be comma-separated ints in [{lo}, {hi if hi is not None else 'inf'})")
        return xs
    return _type("list", fn)


def distinct(xs: list, what: str) -> list:
    if len(set(xs)) != len(xs):
        raise UsageError(f"{what}: indices must be distinct, got {xs}")
    return xs


def window(text: str) -> tuple[float, float]:
    """Type of ``--window START,STOP``: two fractions in [0, 1] with START < STOP."""
    parts = text.split(",")
    try:
        vals = [float(p) for p in parts]
    except ValueError:
        vals = []
    if len(vals) != 2 or not all(math.isfinite(v) and 0.0 <= v <= 1.0 for v in vals):
        raise argparse.ArgumentTypeError(f"START and STOP must be a fraction in [0, 1] each, as in 0.5,1.0; "
                                         f"got {text!r}")
    if not vals[0] < vals[1]:
        raise argparse.ArgumentTypeError(f"START must be below STOP, got {text!r}")
    return vals[0], vals[1]


window.__name__ = "window"


def regex(text: str) -> str:
    """Type of a layer pattern: a valid regular expression."""
    try:
        re.compile(text)
    except re.error as exc:
        raise argparse.ArgumentTypeError(f"{text!r} is not a valid regular expression ({exc})") from None
    return text


regex.__name__ = "pattern"


def human(n: float) -> str:
    """Bytes as B / KiB / MiB / GiB."""
    for unit in ("B", "KiB", "MiB", "GiB"):
        if n < 1024 or unit == "GiB":
            return f"{n:.0f} {unit}" if unit == "B" else f"{n:.1f} {unit}"
        n /= 1024
    return str(n)
