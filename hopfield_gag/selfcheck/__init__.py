r"""Layer 8, ``hopfield-gag selfcheck``: a quick battery of the toolkit's mathematical claims on random problems.

Each check is a small function ``check(gen) -> (cases, worst_margin)`` that draws random float64
problems from the ``torch.Generator`` it is given, evaluates a claim with the library's own functions
and returns how many cases it examined and the smallest *margin* over them. A margin is a signed
distance from failure in the claim's own units (``tolerance - error``, ``bound - value``, ...):
``margin >= 0`` passes. A check fails if its worst margin is negative or NaN, if it examined no case,
or if it raises. Register more checks (e.g. later theory results) with :func:`register_check`::

    from hopfield_gag.selfcheck import register_check

    @register_check("my_claim")
    def _my_claim(gen):
        "One-line description shown by ``hopfield-gag selfcheck --list``."
        ...
        return cases, worst_margin

Tolerances are float64 rounding allowances (unit roundoff 1.1e-16), stated at each check. The whole
battery runs in a few seconds on a CPU; every check is seeded from ``seed`` and its own name, so adding
a check does not change the problems the others see.

References: Ramsauer et al. 2021 (arXiv 2008.02217); Santos et al. 2024 (arXiv 2402.13725); Peters et
al. 2019 (arXiv 1905.05702).
"""
from __future__ import annotations

import math
import sys
import time
import zlib
from dataclasses import dataclass
from typing import Callable, Iterable, Mapping, TextIO

import torch


__all__ = [
    "Check",
    "CheckResult",
    "REGISTRY",
    "register_check",
    "run_check",
    "run_checks",
    "format_table",
    "run_selfcheck",
]

CheckFn = Callable[[torch.Generator], "tuple[int, float]"]


@dataclass(frozen=True)
class Check:
    """A registered check: ``func(gen) -> (cases, worst_margin)``, margin >= 0 meaning pass."""

    name: str
    func: CheckFn
    description: str


@dataclass(frozen=True)
class CheckResult:
    """Outcome of one check.

    Attributes
    ----------
    name : str
    cases : int            number of random cases examined.
    worst_margin : float   smallest margin (NaN if the check raised).
    passed : bool
    seconds : float        wall time.
    error : str or None    ``"ExceptionType: message"`` if the check raised.
    """

    name: str
    cases: int
    worst_margin: float
    passed: bool
    seconds: float
    error: str | None = None


REGISTRY: dict[str, Check] = {}


def register_check(name: str, description: str | None = None, registry: dict | None = None):
    """Decorator adding ``func`` to ``registry`` (default :data:`REGISTRY`) under ``name``.

    The description defaults to the first line of the function's docstring. Names are unique.
    """
    target = REGISTRY if registry is None else registry

    def decorator(func: CheckFn) -> CheckFn:
        if name in target:
            raise ValueError(f"a check named {name!r} is already registered")
        if description is None:
            text = ((func.__doc__ or "").strip().splitlines() or [""])[0]
        else:
            text = description
        target[name] = Check(name, func, text)
        return func

    return decorator


def _seed_for(name: str, seed: int) -> int:
    return (zlib.crc32(name.encode()) + 7919 * int(seed)) % (2**63 - 1)


def run_check(check: Check, seed: int = 0) -> CheckResult:
    """Run one check with a generator seeded from ``seed`` and the check's name."""
    gen = torch.Generator().manual_seed(_seed_for(check.name, seed))
    start = time.perf_counter()
    try:
        cases, margin = check.func(gen)
        cases, margin = int(cases), float(margin) + 0.0  # + 0.0 turns -0.0 into 0.0
    except Exception as exc:  # a raising check is a failing check, reported with its message
        return CheckResult(check.name, 0, math.nan, False, time.perf_counter() - start,
                           f"{type(exc).__name__}: {exc}")
    passed = cases > 0 and margin >= 0.0  # NaN compares False: fails
    return CheckResult(check.name, cases, margin, passed, time.perf_counter() - start)


def run_checks(checks: Mapping[str, Check] | Iterable[Check] | None = None, seed: int = 0) -> list[CheckResult]:
    """Run ``checks`` (default: every registered check, in registration order)."""
    if checks is None:
        checks = REGISTRY
    items = list(checks.values()) if isinstance(checks, Mapping) else list(checks)
    return [run_check(c, seed) for c in items]


def format_table(results: list[CheckResult]) -> str:
    """Plain-text table with columns check, cases, status, worst margin, seconds (+ errors below)."""
    rows = [("check", "cases", "status", "worst margin", "time [s]")]
    for r in results:
        rows.append((r.name, str(r.cases), "pass" if r.passed else "FAIL",
                     f"{r.worst_margin:.3e}", f"{r.seconds:.2f}"))
    widths = [max(len(row[i]) for row in rows) for i in range(5)]
    align = ["<", ">", "<", ">", ">"]
    lines = []
    for k, row in enumerate(rows):
        lines.append("  ".join(f"{cell:{a}{w}}" for cell, a, w in zip(row, align, widths)))
        if k == 0:
            lines.append("  ".join("-" * w for w in widths))
    errors = [f"  {r.name}: {r.error}" for r in results if r.error]
    if errors:
        lines += ["", "errors:"] + errors
    return "\n".join(lines)


def run_selfcheck(
    checks: Mapping[str, Check] | Iterable[Check] | None = None, seed: int = 0, stream: TextIO | None = None
) -> int:
    """Run the battery, print the table and a summary line to ``stream``; return the exit status
    (0 if every check passed, 1 otherwise)."""
    stream = sys.stdout if stream is None else stream
    start = time.perf_counter()
    results = run_checks(checks, seed)
    failed = [r.name for r in results if not r.passed]
    print(format_table(results), file=stream)
    total = time.perf_counter() - start
    if failed:
        print(f"\nselfcheck FAILED: {len(failed)} of {len(results)} checks ({', '.join(failed)}) "
              f"in {total:.1f} s (seed {seed})", file=stream)
        return 1
    print(f"\nselfcheck passed: {len(results)} checks in {total:.1f} s (seed {seed})", file=stream)
    return 0




# The checks register themselves on import; one module per layer.
from . import checks_core, checks_theory  # noqa: E402,F401
