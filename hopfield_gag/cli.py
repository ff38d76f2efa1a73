"""Command line interface: ``hopfield-gag <command>``.

Commands are argparse subcommands; each registers a parser and a handler ``handler(args) -> int`` (the
exit status) in :func:`build_parser`, so later commands (``demo``, studies, figures) plug in the same way.

Commands
--------
selfcheck   run the numerical self-check battery (:mod:`hopfield_gag.selfcheck`); exit status 1 if any
            check fails.
capture     record attention q/k/v of a model into an activation store (:mod:`hopfield_gag.cli_capture`).
store       ``store info DIR`` / ``store verify DIR``: inspect or check an activation store.
demo        dense vs GAG samples from the shipped DiT, judged, with theory margins on captured activations
            (:mod:`hopfield_gag.models.demo`); writes ./hopfield-gag-demo/report.md.
figures     regenerate every figure of ``paper_figures/`` and its index (:func:`hopfield_gag.studies.figures.make_all`).
"""
from __future__ import annotations

import argparse
import sys


def _cmd_selfcheck(args: argparse.Namespace) -> int:
    from . import selfcheck

    if args.list:
        width = max(len(name) for name in selfcheck.REGISTRY)
        for check in selfcheck.REGISTRY.values():
            print(f"{check.name:<{width}}  {check.description}")
        return 0
    checks = selfcheck.REGISTRY
    if args.only:
        unknown = [name for name in args.only if name not in checks]
        if unknown:
            print(f"unknown check(s): {', '.join(unknown)}; see `hopfield-gag selfcheck --list`", file=sys.stderr)
            return 2
        checks = {name: checks[name] for name in args.only}
    return selfcheck.run_selfcheck(checks, seed=args.seed)


def _cmd_figures(args: argparse.Namespace) -> int:
    from .studies.figures import make_all

    for path in make_all(args.out, fast=args.fast, only=args.only):
        print(path)
    return 0


def build_parser() -> argparse.ArgumentParser:
    """The top-level parser with one subparser per command (``set_defaults(handler=...)``)."""
    parser = argparse.ArgumentParser(
        prog="hopfield-gag",
        description="Modern Hopfield dynamics, sparse normalizers and attention guidance toolkit.",
    )
    sub = parser.add_subparsers(dest="command", metavar="<command>", required=True)

    p = sub.add_parser(
        "selfcheck",
        help="run the numerical self-check battery (exit status 1 on failure)",
        description="Check the toolkit's mathematical claims on random float64 problems and print a table "
        "(check, cases, pass/fail, worst margin); a margin >= 0 passes.",
    )
    p.add_argument("--seed", type=int, default=0, help="seed of the random problems (default 0)")
    p.add_argument("--only", action="append", metavar="NAME", help="run only this check (repeatable)")
    p.add_argument("--list", action="store_true", help="list the registered checks and exit")
    p.set_defaults(handler=_cmd_selfcheck)

    from .cli_capture import add_parsers as _add_capture_parsers

    _add_capture_parsers(sub)  # capture, store info, store verify
    from .models.demo import add_demo_parser

    add_demo_parser(sub)

    p = sub.add_parser("figures", help="regenerate every figure (PNG) and the index README.md in paper_figures/")
    p.add_argument("--fast", action="store_true", help="the test setting (small grids, few seeds)")
    p.add_argument("--out", default="paper_figures", help="output directory (default paper_figures)")
    p.add_argument("--only", action="append", metavar="FUNCTION", help="only this figure function (repeatable)")
    p.set_defaults(handler=_cmd_figures)
    return parser


def main(argv: list[str] | None = None) -> int:
    """Entry point of the ``hopfield-gag`` console script; returns the exit status."""
    args = build_parser().parse_args(argv)
    return int(args.handler(args))


if __name__ == "__main__":
    sys.exit(main())
