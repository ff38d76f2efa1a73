"""``hopfield-gag selfcheck``: the numerical self-check battery (:mod:`hopfield_gag.selfcheck`)."""
from __future__ import annotations

import argparse

from ._common import UsageError, int_ge


def cmd_selfcheck(args: argparse.Namespace) -> int:
    """Run the checks (``--only``) or list them (``--list``); exit status 1 if any check fails."""
    from .. import selfcheck

    if args.list:
        width = max(len(name) for name in selfcheck.REGISTRY)
        for check in selfcheck.REGISTRY.values():
            print(f"{check.name:<{width}}  {check.description}")
        return 0
    checks = selfcheck.REGISTRY
    if args.only:
        unknown = [name for name in args.only if name not in checks]
        if unknown:
            raise UsageError(f"selfcheck: unknown check(s): {', '.join(unknown)}; see `hopfield-gag selfcheck --list`")
        checks = {name: checks[name] for name in args.only}
    return selfcheck.run_selfcheck(checks, seed=args.seed)


def add_parsers(sub) -> None:
    """Register ``selfcheck``."""
    p = sub.add_parser(
        "selfcheck",
        help="run the numerical self-check battery (exit status 1 on failure)",
        description="Check the toolkit's mathematical claims on random float64 problems and print a table "
        "(check, cases, pass/fail, worst margin); a margin >= 0 passes.",
    )
    p.add_argument("--seed", type=int_ge(0), default=0, help="seed of the random problems (default 0)")
    p.add_argument("--only", action="append", metavar="NAME", help="run only this check (repeatable)")
    p.add_argument("--list", action="store_true", help="list the registered checks and exit")
    p.set_defaults(handler=cmd_selfcheck)
