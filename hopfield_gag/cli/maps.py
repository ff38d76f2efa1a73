"""``hopfield-gag maps STORE --out DIR``: attention maps over the canvas per prompt token (dense, entmax, GAG's
effective weights) and the maps of c and of the flipped tokens, from an activation store
(:func:`hopfield_gag.studies.maps.store_maps`)."""
from __future__ import annotations

import argparse
from pathlib import Path

from ._common import UsageError, int_ge, real


def cmd_maps(args: argparse.Namespace) -> int:
    """Check the store and ``--out`` first, then write one PNG per selected record and print its path."""
    from ..capture import ActivationStore, StoreError
    from ..studies.maps import store_maps

    store = Path(args.store)
    if not (store / "manifest.json").is_file():
        raise UsageError(f"maps: {args.store} is not an activation store (no manifest.json)")
    if Path(args.out).exists() and not Path(args.out).is_dir():
        raise UsageError(f"maps: --out {args.out} exists and is not a directory")
    labels = None
    if args.labels:
        labels = args.labels.split(",")
    try:
        st = ActivationStore(store)
        if args.layer is not None and args.layer not in st.layers:
            raise UsageError(f"maps: --layer {args.layer!r} not in the store; its layers: {', '.join(st.layers)}")
        paths = store_maps(store, args.out, layer=args.layer, step=args.step,
                           branch=None if args.branch == "all" else args.branch, row=args.row,
                           max_records=args.max_records, token_labels=labels, lam=args.lam, eta=args.eta,
                           zeta=args.zeta, alpha=args.alpha)
    except StoreError as exc:
        raise UsageError(f"maps: {exc}") from None
    except ValueError as exc:
        raise UsageError(f"maps: {exc}") from None
    for p in paths:
        print(p)
    return 0


def add_parsers(sub) -> None:
    """Register ``maps``."""
    p = sub.add_parser("maps", help="attention maps per prompt token (dense / entmax / GAG) and maps of c and "
                       "flipped tokens from an activation store",
                       description="Per cross/joint-attention record of STORE: the attention weights of every "
                       "prompt token over the canvas for dense, entmax and GAG (its effective weights, which "
                       "reproduce GAG's output exactly), the parallel coefficient c and the fraction of heads GAG "
                       "flips. Capture with tokens=None (every query).")
    p.add_argument("store", help="activation store directory (hopfield-gag capture)")
    p.add_argument("--out", required=True, help="output directory for the PNGs")
    p.add_argument("--layer", default=None, help="only this layer (default: every cross/joint layer)")
    p.add_argument("--step", type=int_ge(0), default=None, help="only this step")
    p.add_argument("--branch", default="auto", help="cond / uncond / all (default: cond when the store has it)")
    p.add_argument("--row", type=int_ge(0), default=0, help="batch row (sample) to map (default 0)")
    p.add_argument("--max-records", type=int_ge(1), default=16, help="at most this many figures (default 16)")
    p.add_argument("--labels", default=None, help="comma-separated prompt-token labels")
    p.add_argument("--lam", type=real(ge=0), default=10.0, help="GAG lambda (default 10)")
    p.add_argument("--eta", type=real(gt=0), default=15.0, help="GAG eta (default 15)")
    p.add_argument("--zeta", type=real(ge=0, le=1), default=0.0, help="GAG zeta (default 0)")
    p.add_argument("--alpha", type=real(gt=1), default=1.5, help="entmax alpha (default 1.5)")
    p.set_defaults(handler=cmd_maps)
