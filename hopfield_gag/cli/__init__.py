"""Layer 9, the command line interface: ``hopfield-gag <command>`` (also ``python -m hopfield_gag.cli``).

One module per command group; each has ``add_parsers(sub)`` registering its subparsers with a
``handler(args) -> exit status``:

==========  ======================  ========================================================================
command     module                  what it does
==========  ======================  ========================================================================
selfcheck   :mod:`.selfcheck`       the numerical self-check battery (exit status 1 if a check fails)
capture     :mod:`.capture`         record attention q/k/v of a model into an activation store
store       :mod:`.store`           ``store info DIR`` / ``store verify DIR``: inspect or check a store
demo        :mod:`.demo`            dense vs GAG samples from the shipped DiT, judged, with theory margins
figures     :mod:`.figures`         regenerate every figure of ``paper_figures/`` and its index
maps        :mod:`.maps`            attention maps per prompt token (dense / entmax / GAG), c and flips, from a store
==========  ======================  ========================================================================

Conventions: a user error (a bad number, path or name; a damaged store) is one line
``hopfield-gag: error: ...`` on stderr and exit status 2, detected before any expensive work; output cut
short by a closed pipe (``... | head``) ends quietly.
"""
from __future__ import annotations

import os
import sys

from ._common import PROG, CliParser, UsageError

__all__ = ["main", "build_parser", "UsageError"]


def build_parser() -> CliParser:
    """The top-level parser with one subparser per command (``set_defaults(handler=...)``)."""
    from . import capture, demo, figures, maps, selfcheck, store

    parser = CliParser(prog=PROG, description="Modern Hopfield dynamics, sparse normalizers and attention "
                       "guidance toolkit.")
    sub = parser.add_subparsers(dest="command", metavar="<command>", required=True)
    for module in (selfcheck, capture, store, demo, figures, maps):
        module.add_parsers(sub)
    return parser


def main(argv: list[str] | None = None) -> int:
    """Entry point of the ``hopfield-gag`` console script; returns the exit status."""
    try:
        args = build_parser().parse_args(argv)
        status = int(args.handler(args))
        sys.stdout.flush()  # a closed pipe shows up here, inside the handler below
        return status
    except UsageError as exc:
        print(f"{PROG}: error: {' '.join(str(exc).split())}", file=sys.stderr)
        return 2
    except BrokenPipeError:
        # the reader left (`| head`): what was asked for went out; point stdout at /dev/null so the
        # interpreter's final flush does not raise again
        devnull = os.open(os.devnull, os.O_WRONLY)
        os.dup2(devnull, sys.stdout.fileno())
        os.close(devnull)
        return 0
