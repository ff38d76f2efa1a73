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


def write_plan(args, rows, seconds=None):
    """Apply the pruning rule to a coarse table and write <tag>_plan.md (the plan, the pass as run, kept and
    pruned settings with the reason for each); returns the kept names."""
    kept, reasons = prune_variants(rows, keep_per_family=args.keep_per_family, max_kept=args.max_fine_variants or None)
    models = list(dict.fromkeys(r["model"] for r in rows))
    steps = sorted({r["steps"] for r in rows})
    ws = sorted({float(r["w"]) for r in rows})
    seeds = max(int(r["seeds"]) for r in rows)
    lines = [f"# {args.tag}: coarse-to-fine plan and what was pruned", "", PLAN.strip(), "",
             f"Coarse pass as run: models {models}, steps {steps}, CFG w {ws}, {seeds} seeds, "
             f"{rows[0]['n_images']} in-distribution prompts per seed, {len(reasons)} attention settings"
             + (f"; {seconds:.0f} s." if seconds is not None else "."),
             f"Rule: keep-per-family {args.keep_per_family}, cap {args.max_fine_variants or 'none'}.", "",
             f"Kept {len(kept)} of {len(reasons)}:", ""]
    lines += [f"- `{n}`: {reasons[n]}" for n in kept]
    lines += ["", "Pruned:", ""] + [f"- `{n}`: {r}" for n, r in reasons.items() if n not in kept]
    (Path(args.out) / f"{args.tag}_plan.md").write_text("\n".join(lines) + "\n")
    return kept


def run_coarse(args):
    cfg = GuidanceConfig(models=tuple(args.coarse_models), steps=tuple(args.coarse_steps), steps_for=(),
                         guidance=tuple(("cfg", float(w)) for w in args.coarse_cfg),
                         variants=tuple(full_variant_grid()), splits=("in-distribution",),
                         seeds=tuple(args.seeds[:args.coarse_seeds]), n_prompts=args.n_prompts)
    t0 = time.perf_counter()
    rows = study_guidance(cfg, args.out, name=f"{args.tag}_coarse", scheduler=args.scheduler, workers=args.workers,
                          progress=True)
    kept = write_plan(args, rows, time.perf_counter() - t0)
    _log(args.out, args.tag, f"coarse: {len(rows)} rows in {time.perf_counter() - t0:.0f} s; kept {kept}")
    return kept


def _headline_text(rows, seeds, splits):
    head = headline(rows, splits=tuple(splits))
    head_fd = headline(rows, metric="dfd_cells", splits=tuple(splits))
    return ["## best setting per model, split and steps against dense (paired Delta exact match, 95% CI over "
            f"{seeds} seeds)", "", format_table(head, HEAD_COLS), "",
            "## best setting by paired Delta Frechet distance (cells; lower is better)", "",
            format_table(head_fd, HEAD_COLS)]


def merge_fine(args):
    """Concatenate the per-model fine tables <tag>_fine_<model>.csv (in --models order, then any others) into
    <tag>_fine.csv, and rewrite <tag>_headline.md and <tag>_fine_where.png from it."""
    from hopfield_gag.studies.guidance import plot_where_it_helps

    out = Path(args.out)
    files = {p.name[len(f"{args.tag}_fine_"):-4]: p for p in sorted(out.glob(f"{args.tag}_fine_*.csv"))}
    order = [m for m in args.models if m in files] + [m for m in files if m not in args.models]
    rows = [r for m in order for r in read_csv(files[m])]
    if not rows:
        return []
    write_csv(rows, GUIDANCE_COLUMNS, out, f"{args.tag}_fine.csv")
    seeds = max(int(r["seeds"]) for r in rows)
    (out / f"{args.tag}_headline.md").write_text("\n".join(_headline_text(rows, seeds, args.splits)) + "\n")
    plot_where_it_helps(rows, out, f"{args.tag}_fine_where.png")
    return rows


def run_fine(args, kept=None):
    """The fine pass, one model at a time (each model's table is written as soon as it is done, and the merged
    table, headline and figure are refreshed after each model, so a run cut short keeps what finished)."""
    if args.variants:  # an explicit subset (of the kept settings, by the budget), recorded in the log
        kept = list(args.variants)
    elif kept is None:
        kept, _ = prune_variants(read_csv(Path(args.out) / f"{args.tag}_coarse.csv"),
                                 keep_per_family=args.keep_per_family, max_kept=args.max_fine_variants or None)
    variants = [DENSE] + [v for v in _variant_by_name(kept) if v.method != "dense"]
    guidance = tuple(("cfg", float(w)) for w in args.cfg) + tuple(("apg", float(w)) for w in args.apg)
    _log(args.out, args.tag, f"fine settings: {[v.name for v in variants]}")
    rows = []
    for model in args.models:
        cfg = GuidanceConfig(models=(model,), steps=tuple(args.steps), guidance=guidance, variants=tuple(variants),
                             seeds=tuple(args.seeds), n_prompts=args.n_prompts, splits=tuple(args.splits))
        t0 = time.perf_counter()
        study_guidance(cfg, args.out, name=f"{args.tag}_fine_{model}", scheduler=args.scheduler,
                       workers=args.workers, progress=True)
        _log(args.out, args.tag, f"fine {model}: steps {cfg.steps_of(model)}, guidance {list(guidance)}, "
             f"{len(variants)} settings, seeds {list(cfg.seeds)}, {cfg.n_prompts} prompts x {list(cfg.splits_of(model))}: "
             f"{time.perf_counter() - t0:.0f} s")
        rows = merge_fine(args)
    print("\n".join(_headline_text(rows, len(args.seeds), args.splits)))
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
    best = _variant_by_name([args.theory_variant])[0] if args.theory_variant else best_gag(rows, args.theory_model)
    _log(args.out, args.tag, f"theory: best GAG setting on {args.theory_model}: {best.name}")
    t0 = time.perf_counter()
    res = study_guidance_theory(args.theory_model, best, args.out, steps=tuple(args.theory_steps),
                                seeds=tuple(args.seeds), n_prompts=args.n_prompts, name=f"{args.tag}_theory",
                                scheduler=args.scheduler, workers=args.workers, progress=True)
    _log(args.out, args.tag, f"theory: {len(res['rows'])} rows in {time.perf_counter() - t0:.0f} s")
    sel = [c for c in res["correlations"] if c["unit"] == "all" and c["outcome"] in ("dexact", "dfd_cells")]
    print(format_table(sel, ["model", "unit", "statistic", "outcome", "points", "spearman", "pearson"]))
    return res


def run_directional(args):
    """THEORY.md's real-activation table on the grid model: capture a dense sampling run of --theory-model (CFG 2,
    4 steps, 8 in-distribution prompts, 64 query tokens per call, every attention layer), run study_directional
    in float64 and write <tag>_directional.csv and a summary <tag>_directional.md (token-weighted rates)."""
    import tempfile

    import torch

    from hopfield_gag.capture import capture
    from hopfield_gag.models import load_model, sample
    from hopfield_gag.studies.directional import DIRECTIONAL_COLUMNS, study_directional
    from hopfield_gag.studies.guidance import prompts_for

    model = load_model(args.theory_model)
    prompts = prompts_for(args.theory_model, "in-distribution", 8, 0)
    with tempfile.TemporaryDirectory() as tmp:
        with torch.inference_mode(), capture(model, Path(tmp) / "store", tokens=64, via="adapters"):
            sample(model, prompts, steps=4, cfg_scale=2.0, seed=0)
        rows = study_directional(Path(tmp) / "store")
    write_csv(rows, DIRECTIONAL_COLUMNS, args.out, f"{args.tag}_directional.csv")

    def rate(col, pick=lambda r: True):
        num = sum(float(r[col]) * r["tokens"] for r in rows if pick(r) and r[col] != "")
        den = sum(r["tokens"] for r in rows if pick(r) and r[col] != "")
        return num / den if den else float("nan")

    cross = lambda r: r["layer"].endswith("attn2")  # noqa: E731
    layers = sorted({r["layer"] for r in rows})
    per_layer = {l: rate("frac_parallel", lambda r, l=l: r["layer"] == l) for l in layers}
    lines = [f"# {args.theory_model}: directional properties on captured activations (float64)", "",
             f"capture: dense sampling, CFG 2, 4 Euler steps, 8 prompts, 64 query tokens per call, {len(layers)} layers, "
             f"both branches; {sum(r['tokens'] for r in rows)} (token, head) pairs", ""]
    for col in ("frac_sharpen", "frac_align_query", "frac_parallel", "frac_c_neg", "frac_flipped", "frac_cap_active",
                "sharp_coverage", "cert_coverage", "support_mean"):
        lines.append(f"- {col}: all layers {rate(col):.4f}; cross-attention {rate(col, cross):.4f}")
    viol = sum(int(r["sharp_violations"]) for r in rows)
    lines.append(f"- sharp certificate violations (certified with c < 0): {viol}")
    lines.append("- c >= 0 per layer: " + ", ".join(f"{l} {v:.3f}" for l, v in per_layer.items()))
    (Path(args.out) / f"{args.tag}_directional.md").write_text("\n".join(lines) + "\n")
    print("\n".join(lines))


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--pass", dest="which", choices=("coarse", "plan", "fine", "merge", "theory", "directional", "all"), default="all",
                   help="plan: rewrite <tag>_plan.md from the coarse table with the current rule")
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
    p.add_argument("--variants", nargs="+", default=None, help="fine pass: these setting names instead of the kept list")
    p.add_argument("--steps", type=int, nargs="+", default=[1, 2, 4, 8, 16])
    p.add_argument("--cfg", type=float, nargs="+", default=[1.0, 2.0, 4.0])
    p.add_argument("--apg", type=float, nargs="*", default=[2.0, 4.0])
    p.add_argument("--splits", nargs="+", default=["in-distribution", "held-out"])
    p.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2, 3, 4])
    p.add_argument("--n-prompts", type=int, default=16)
    p.add_argument("--theory-model", default="dit-grid")
    p.add_argument("--theory-steps", type=int, nargs="+", default=[2, 4, 16])
    p.add_argument("--theory-variant", default=None, help="the setting to ablate (default: best GAG of the fine pass)")
    add_scheduler_args(p)
    args = p.parse_args(argv)
    Path(args.out).mkdir(parents=True, exist_ok=True)
    if args.fast:
        cfg = GuidanceConfig.fast()
        rows = study_guidance(cfg, args.out, name=f"{args.tag}_fast", scheduler=args.scheduler, workers=args.workers)
        print(format_table(rows, [c for c in GUIDANCE_COLUMNS if c.endswith("_mean")][:8]))
        return 0
    kept = rows = None
    if args.which == "plan":
        write_plan(args, read_csv(Path(args.out) / f"{args.tag}_coarse.csv"))
        return 0
    if args.which == "merge":
        merge_fine(args)
        return 0
    if args.which == "directional":
        run_directional(args)
        return 0
    if args.which in ("coarse", "all"):
        kept = run_coarse(args)
    if args.which in ("fine", "all"):
        rows = run_fine(args, kept)
    if args.which in ("theory", "all"):
        run_theory(args, rows)
    return 0


if __name__ == "__main__":
    sys.exit(main())
