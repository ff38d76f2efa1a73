"""Few-step sampling study on the shipped digit models (see hopfield_gag.studies.sampling).

    python experiments/study_sampling.py [--fast] [--out DIR] [--seeds 0 1 2] [--scheduler ...]

Writes DIR/sampling.csv and DIR/sampling_accuracy.png; prints the table (means and 95% CIs over seeds).
"""
import argparse
import dataclasses
import sys
import time

from hopfield_gag.studies import SAMPLING_COLUMNS, SamplingConfig, study_sampling
from hopfield_gag.studies._io import format_table
from hopfield_gag.studies.mapreduce import add_scheduler_args


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--fast", action="store_true", help="steps 1 and 4, two seeds, 3 images per class")
    p.add_argument("--out", default="results/sampling")
    p.add_argument("--seeds", type=int, nargs="+", default=None)
    p.add_argument("--models", nargs="+", default=None)
    add_scheduler_args(p)
    args = p.parse_args(argv)
    cfg = SamplingConfig.fast() if args.fast else SamplingConfig()
    if args.seeds:
        cfg = dataclasses.replace(cfg, seeds=tuple(args.seeds))
    if args.models:
        cfg = dataclasses.replace(cfg, models=tuple(args.models))
    t0 = time.perf_counter()
    rows = study_sampling(cfg, args.out, scheduler=args.scheduler, workers=args.workers, progress=True)
    print(format_table(rows, SAMPLING_COLUMNS))
    print(f"\n{len(cfg.seeds)} seeds x {cfg.n_per_class * 10} images; {time.perf_counter() - t0:.1f} s")
    return 0


if __name__ == "__main__":
    sys.exit(main())
