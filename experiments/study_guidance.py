"""Where does attention guidance help? The coarse-to-fine guidance study (see hopfield_gag.studies.guidance.PLAN).

    python experiments/study_guidance.py --pass all  [--tag guidance] [--out paper_figures]
    python experiments/study_guidance.py --pass coarse --coarse-models dit-grid dit-grid-undertrained
    python experiments/study_guidance.py --pass fine   --models dit-grid unet-grid sd3-grid ...
    python experiments/study_guidance.py --pass theory --theory-model dit-grid
    python experiments/study_guidance.py --fast        (the test grid; minutes)

Passes (each reads the previous one's table from --out):
  coarse  every attention setting on --coarse-models, steps --coarse-steps, CFG --coarse-cfg, 2 seeds
          -> <tag>_coarse.csv; the pruning rule's verdict per setting -> <tag>_plan.md
  fine    the kept settings on --models, steps 1..16 (student 1, 2), CFG 1/2/4 and APG --apg, both prompt
          splits, --seeds -> <tag>_fine.csv, <tag>_fine_where.png, <tag>_headline.md
  theory  the best GAG setting of the fine pass on --theory-model: one layer group at a time, step windows,
          the certificate-gated and c+layers rules, beside study_directional on captures of the same runs
          -> <tag>_theory*.csv, <tag>_theory.png
"""
import argparse
import dataclasses
import json
import sys
import time
from pathlib import Path

from hopfield_gag.studies._io import format_table, read_csv, write_csv
from hopfield_gag.studies.guidance import (
    DENSE,
    GUIDANCE_COLUMNS,
    PAPER,
    PLAN,
    GuidanceConfig,
    Variant,
    full_variant_grid,
    headline,
    prune_variants,
    study_guidance,
)
from hopfield_gag.studies.mapreduce import add_scheduler_args

HEAD_COLS = ["model", "split", "steps", "guidance", "w", "variant", "dense", "delta", "ci", "significant"]


def _variant_by_name(names):
    table = {v.name: v for v in full_variant_grid()}
    return [table[n] for n in names if n in table]


def _log(out, tag, msg):
    print(msg, flush=True)
    with open(Path(out) / f"{tag}_log.txt", "a") as f:
        f.write(time.strftime("%H:%M:%S ") + msg + "\n")


def run_coarse(args):
    cfg = GuidanceConfig(models=tuple(args.coarse_models), steps=tuple(args.coarse_steps), steps_for=(),
                         guidance=tuple(("cfg", float(w)) for w in args.coarse_cfg),
                         variants=tuple(full_variant_grid()), splits=("in-distribution",),
                         seeds=tuple(args.seeds[:args.coarse_seeds]), n_prompts=args.n_prompts)
    t0 = time.perf_counter()
    rows = study_guidance(cfg, args.out, name=f"{args.tag}_coarse", scheduler=args.scheduler, workers=args.workers,
                          progress=True)
    kept, reasons = prune_variants(rows, keep_per_family=args.keep_per_family, max_kept=args.max_fine_variants or None)
    lines = [f"# {args.tag}: coarse-to-fine plan and what was pruned", "", PLAN.strip(), "",
             f"Coarse pass as run: models {list(cfg.models)}, steps {list(cfg.steps)}, CFG w {args.coarse_cfg}, "
             f"seeds {list(cfg.seeds)}, {cfg.n_prompts} in-distribution prompts per seed, "
             f"{len(cfg.variants)} attention settings; {time.perf_counter() - t0:.0f} s.", "",
             f"Kept {len(kept)} of {len(reasons)}:", ""]
    lines += [f"- `{n}`: {reasons[n]}" for n in kept]
    lines += ["", "Pruned:", ""] + [f"- `{n}`: {r}" for n, r in reasons.items() if n not in kept]
    (Path(args.out) / f"{args.tag}_plan.md").write_text("\n".join(lines) + "\n")
    _log(args.out, args.tag, f"coarse: {len(rows)} rows in {time.perf_counter() - t0:.0f} s; kept {kept}")
    return kept


def run_fine(args, kept=None):
    if kept is None:
        kept, _ = prune_variants(read_csv(Path(args.out) / f"{args.tag}_coarse.csv"),
                                 keep_per_family=args.keep_per_family, max_kept=args.max_fine_variants or None)
    variants = [DENSE] + [v for v in _variant_by_name(kept) if v.method != "dense"]
    guidance = tuple(("cfg", float(w)) for w in args.cfg) + tuple(("apg", float(w)) for w in args.apg)
    cfg = GuidanceConfig(models=tuple(args.models), steps=tuple(args.steps), guidance=guidance,
                         variants=tuple(variants), seeds=tuple(args.seeds), n_prompts=args.n_prompts,
                         splits=tuple(args.splits))
    t0 = time.perf_counter()
    rows = study_guidance(cfg, args.out, name=f"{args.tag}_fine", scheduler=args.scheduler, workers=args.workers,
                          progress=True)
    head = headline(rows, splits=tuple(args.splits))
    head_fd = headline(rows, metric="dfd_cells", splits=tuple(args.splits))
    text = ["## best setting per model, split and steps against dense (paired Delta exact match, 95% CI over "
            f"{len(cfg.seeds)} seeds)", "", format_table(head, HEAD_COLS), "",
            "## best setting by paired Delta Frechet distance (cells; lower is better)", "",
            format_table(head_fd, HEAD_COLS)]
    (Path(args.out) / f"{args.tag}_headline.md").write_text("\n".join(text) + "\n")
    _log(args.out, args.tag, f"fine: {len(rows)} rows in {time.perf_counter() - t0:.0f} s")
    print("\n".join(text))
    return rows


def best_gag(rows, model):
    """The GAG-family setting (all steps, all layers) with the best mean paired Delta exact (ties: Delta
    Frechet) over the fine pass's rows of ``model`` (in-distribution, CFG)."""
    def score(name):
        rs = [r for r in rows if r["model"] == model and r["variant"] == name and r["guidance"] == "cfg"
              and r["split"] == "in-distribution"]
        dx = [float(r["dexact_mean"]) for r in rs if r["dexact_mean"] != ""]
        df = [float(r["dfd_cells_mean"]) for r in rs if r["dfd_cells_mean"] != ""]
        return (sum(dx) / max(len(dx), 1), -sum(df) / max(len(df), 1))

    names = [v.name for v in _variant_by_name(dict.fromkeys(r["variant"] for r in rows)) if v.method == "gag"]
    return _variant_by_name([max(names, key=score)])[0] if names else PAPER


def run_theory(args, rows=None):
    from hopfield_gag.studies.guidance_theory import study_guidance_theory

    if rows is None:
        path = Path(args.out) / f"{args.tag}_fine.csv"
        rows = read_csv(path) if path.exists() else []
    best = best_gag(rows, args.theory_model)
    _log(args.out, args.tag, f"theory: best GAG setting on {args.theory_model}: {best.name}")
    t0 = time.perf_counter()
    res = study_guidance_theory(args.theory_model, best, args.out, steps=tuple(args.theory_steps),
                                seeds=tuple(args.seeds), n_prompts=args.n_prompts, name=f"{args.tag}_theory",
                                scheduler=args.scheduler, workers=args.workers, progress=True)
    _log(args.out, args.tag, f"theory: {len(res['rows'])} rows in {time.perf_counter() - t0:.0f} s")
    sel = [c for c in res["correlations"] if c["unit"] == "all" and c["outcome"] in ("dexact", "dfd_cells")]
    print(format_table(sel, ["model", "unit", "statistic", "outcome", "points", "spearman", "pearson"]))
    return res


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--pass", dest="which", choices=("coarse", "fine", "theory", "all"), default="all")
    p.add_argument("--fast", action="store_true", help="the test grid (GuidanceConfig.fast) only")
    p.add_argument("--out", default="paper_figures")
    p.add_argument("--tag", default="guidance", help="file prefix of every output")
    p.add_argument("--models", nargs="+", default=["dit-grid", "dit-grid-undertrained", "unet-grid", "sd3-grid",
                                                   "dit-grid-student"])
    p.add_argument("--coarse-models", nargs="+", default=["dit-grid", "dit-grid-undertrained"])
    p.add_argument("--coarse-steps", type=int, nargs="+", default=[1, 4, 16])
    p.add_argument("--coarse-cfg", type=float, nargs="+", default=[1.0, 2.0])
    p.add_argument("--coarse-seeds", type=int, default=2)
    p.add_argument("--keep-per-family", type=int, default=1)
    p.add_argument("--max-fine-variants", type=int, default=8, help="cap on the settings the coarse pass keeps")
    p.add_argument("--steps", type=int, nargs="+", default=[1, 2, 4, 8, 16])
    p.add_argument("--cfg", type=float, nargs="+", default=[1.0, 2.0, 4.0])
    p.add_argument("--apg", type=float, nargs="*", default=[2.0, 4.0])
    p.add_argument("--splits", nargs="+", default=["in-distribution", "held-out"])
    p.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2, 3, 4])
    p.add_argument("--n-prompts", type=int, default=16)
    p.add_argument("--theory-model", default="dit-grid")
    p.add_argument("--theory-steps", type=int, nargs="+", default=[2, 4, 16])
    add_scheduler_args(p)
    args = p.parse_args(argv)
    Path(args.out).mkdir(parents=True, exist_ok=True)
    if args.fast:
        cfg = GuidanceConfig.fast()
        rows = study_guidance(cfg, args.out, name=f"{args.tag}_fast", scheduler=args.scheduler, workers=args.workers)
        print(format_table(rows, [c for c in GUIDANCE_COLUMNS if c.endswith("_mean")][:8]))
        return 0
    kept = rows = None
    if args.which in ("coarse", "all"):
        kept = run_coarse(args)
    if args.which in ("fine", "all"):
        rows = run_fine(args, kept)
    if args.which in ("theory", "all"):
        run_theory(args, rows)
    return 0


if __name__ == "__main__":
    sys.exit(main())
