"""``hopfield-gag figures``: regenerate every figure of ``paper_figures/`` and its index
(:func:`hopfield_gag.studies.figures.make_all`)."""
from __future__ import annotations

import argparse
from pathlib import Path

from ._common import UsageError


def cmd_figures(args: argparse.Namespace) -> int:
    """Check ``--only`` and ``--out`` first, then make the figures and print their paths."""
    from ..studies.figures import FIGURES, make_all

    known = sorted(fn.__name__ for fn, *_ in FIGURES)
    unknown = sorted(set(args.only or ()) - set(known))
    if unknown:
        raise UsageError(f"figures: --only: unknown figure function(s) {', '.join(unknown)}; "
                         f"expected some of {', '.join(known)}")
    if Path(args.out).exists() and not Path(args.out).is_dir():
        raise UsageError(f"figures: --out {args.out} exists and is not a directory")
    for path in make_all(args.out, fast=args.fast, only=args.only):
        print(path)
    return 0


def add_parsers(sub) -> None:
    """Register ``figures``."""
    p = sub.add_parser("figures", help="regenerate every figure (PNG) and the index README.md in paper_figures/",
                       description="Regenerate every figure of the paper and the index README.md; each figure is "
                       "made by one function of hopfield_gag.studies.figures.")
    p.add_argument("--fast", action="store_true", help="the test setting (small grids, few seeds)")
    p.add_argument("--out", default="paper_figures", help="output directory (default paper_figures)")
    p.add_argument("--only", action="append", metavar="FUNCTION", help="only this figure function (repeatable)")
    p.set_defaults(handler=cmd_figures)
