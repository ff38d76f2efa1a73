"""Directional-property study on one or more activation stores (see hopfield_gag.studies.directional).

    python experiments/study_directional.py STORE [STORE ...] [--out DIR] [--scheduler ...] [--workers N]
        [--lam 10] [--eta 15] [--zeta 0] [--alpha 1.5]

Per store: DIR/<store name>/directional.csv (columns documented in hopfield_gag.studies.directional) and the
figures directional_properties.png, directional_sign.png, directional_c.png. Streams shard by shard.
"""
import argparse
import sys
import time
from pathlib import Path

from hopfield_gag.studies import DirectionalConfig, study_directional
from hopfield_gag.studies._io import format_table
from hopfield_gag.studies.mapreduce import add_scheduler_args

SUMMARY = ("layer", "step", "branch", "tokens", "frac_sharpen", "frac_align_query", "frac_parallel",
           "frac_descent", "c_q50", "frac_c_neg", "frac_flipped", "frac_cap_active", "support_mean",
           "cert_coverage", "cert_soundness")


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("stores", nargs="+", metavar="STORE")
    p.add_argument("--out", default="results/directional")
    for name, default in (("lam", 10.0), ("eta", 15.0), ("zeta", 0.0), ("alpha", 1.5)):
        p.add_argument(f"--{name}", type=float, default=default)
    add_scheduler_args(p)
    args = p.parse_args(argv)
    cfg = DirectionalConfig(lam=args.lam, eta=args.eta, zeta=args.zeta, alpha=args.alpha)
    for store in args.stores:
        t0 = time.perf_counter()
        out = Path(args.out) / Path(store).name
        rows = study_directional(store, out, cfg, scheduler=args.scheduler, workers=args.workers, progress=True)
        print(f"## {store} ({time.perf_counter() - t0:.1f} s) -> {out}\n")
        print(format_table(rows, SUMMARY))
    return 0


if __name__ == "__main__":
    sys.exit(main())
