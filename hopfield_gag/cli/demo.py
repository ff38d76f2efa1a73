"""``hopfield-gag demo``: dense vs GAG samples from the shipped DiT, judged, with theory margins on captured
activations (:func:`hopfield_gag.models.demo.run_demo`)."""
from __future__ import annotations

import argparse

from ._common import UsageError, int_ge, real


def cmd_demo(args: argparse.Namespace) -> int:
    """Check the options and ``--out`` (before any sampling), run the demo, print the report's path."""
    from ..models.demo import DemoOutputError, check_demo_options, run_demo

    opts = dict(per_class=args.per_class, steps=args.steps, cfg_scale=args.cfg_scale, lam=args.lam, eta=args.eta,
                zeta=args.zeta, capture_per_class=args.capture_per_class, seed=args.seed)
    try:
        check_demo_options(**opts)
    except (ValueError, TypeError) as exc:
        raise UsageError(f"demo: {exc}") from None
    try:
        report = run_demo(out=args.out, force=args.force, progress=not args.no_progress, model_name=args.model, **opts)
    except DemoOutputError as exc:  # raised before anything is loaded or written
        raise UsageError(f"demo: {exc}") from None
    print(f"report: {report.resolve()}")
    return 0


def add_parsers(sub) -> None:
    """Register ``demo``."""
    p = sub.add_parser(
        "demo",
        help="sample digits with dense attention and GAG from the shipped DiT, judge them, check the theory "
        "margins on captured activations, write a report",
        description="Runs on CPU in about a minute, offline: the DiT and the judge ship with the package. "
        "Writes <out>/report.md with sample grids, judge metrics and per-layer margin tables. --out must be "
        "absent, empty, or a previous demo output (marked by its .hopfield-gag-demo file) with --force; the demo "
        "never deletes or overwrites files it did not write.",
    )
    p.add_argument("--out", default="hopfield-gag-demo", help="output directory (default ./hopfield-gag-demo)")
    p.add_argument("--force", action="store_true",
                   help="overwrite a previous demo output in --out (only the files the demo wrote)")
    p.add_argument("--per-class", type=int_ge(2), default=10, help="samples per digit and method (>= 2, default 10)")
    p.add_argument("--steps", type=int_ge(1), default=4, help="Euler steps (default 4)")
    p.add_argument("--cfg-scale", type=real(ge=0.0), default=2.0, help="classifier-free guidance scale (default 2)")
    p.add_argument("--lam", type=real(ge=0.0), default=10.0, help="GAG lambda, >= 0 (default 10)")
    p.add_argument("--eta", type=real(gt=0.0), default=15.0, help="GAG norm cap eta, > 0 (default 15)")
    p.add_argument("--zeta", type=real(ge=0.0, le=1.0), default=0.0,
                   help="GAG weight of the perpendicular part, in [0, 1] (default 0)")
    p.add_argument("--capture-per-class", type=int_ge(1), default=2, help="captured samples per digit (default 2)")
    p.add_argument("--seed", type=int_ge(0), default=0, help="seed of the samples (default 0)")
    p.add_argument("--model", choices=("dit-grid", "dit-digits"), default="dit-grid",
                   help="dit-grid (default: compositional 3x3 digit canvases, 10 x --per-class prompts) or dit-digits "
                   "(the single-digit model)")
    p.add_argument("--no-progress", action="store_true", help="no progress bars")
    p.set_defaults(handler=cmd_demo)
