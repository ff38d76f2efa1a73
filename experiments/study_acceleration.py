"""Acceleration study on toy Hopfield problems (see hopfield_gag.studies.acceleration).

    python experiments/study_acceleration.py [--fast] [--out DIR] [--scheduler sync|processes|local|tcp://H:P]

Writes DIR/acceleration.csv and DIR/acceleration_curves.png and prints the iterations-to-tolerance table.
"""
import argparse
import sys
import time

from hopfield_gag.studies import ACCELERATION_COLUMNS, AccelerationConfig, study_acceleration
from hopfield_gag.studies._io import format_table
from hopfield_gag.studies.mapreduce import add_scheduler_args


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--fast", action="store_true", help="two seeds, fewer methods (test setting)")
    p.add_argument("--out", default="results/acceleration", help="output directory")
    add_scheduler_args(p)
    args = p.parse_args(argv)
    cfg = AccelerationConfig.fast() if args.fast else AccelerationConfig()
    t0 = time.perf_counter()
    rows = study_acceleration(cfg, args.out, scheduler=args.scheduler, workers=args.workers, progress=True)
    print(format_table(rows, ACCELERATION_COLUMNS))
    print(f"\n{len(cfg.seeds)} seeds x {len(cfg.regimes)} regimes, tol={cfg.tol}, max_iter={cfg.max_iter}; "
          f"{time.perf_counter() - t0:.1f} s")
    return 0


if __name__ == "__main__":
    sys.exit(main())
