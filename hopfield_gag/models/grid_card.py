r"""Evaluation and model cards of the ``digit-grid`` models: the quality bar and the headroom for guidance.

:func:`evaluate_grid` samples a prompt set and returns every :class:`~.grid_judge.GridJudge` metric.
:func:`headroom` runs dense sampling at 1, 2, 4 and 16 Euler steps, without CFG (w = 1) and with CFG
(w = :data:`CARD_CFG`), on the in-distribution and the compositional held-out prompts of
:func:`~.grid_data.eval_prompts`. The card (:func:`write_grid_card`) states

* the **quality bar** (16 steps + CFG, in-distribution: cell accuracy >= 0.95 and exact match >= 0.80),
  met or not, with the numbers;
* the **headroom**: Fréchet ratio ``FD(1 or 2 steps) / FD(16 steps)`` (>= 1.5 wanted) and the smallest
  no-CFG exact match over the step counts (< 0.90 wanted);
* the table of every setting, and GAG (lam 10, eta 15) beside dense at a few settings.

The metrics are also written to ``weights/<name>.metrics.json`` so other cards (the student's) and the README
can quote them without re-sampling.
"""
from __future__ import annotations

import json
import time
from pathlib import Path

import torch

from ..ops.params import GagParams

__all__ = ["CARD_CFG", "STEPS", "BAR", "evaluate_grid", "headroom", "write_grid_card", "student_lines"]

CARD_CFG = 3.0
STEPS = (1, 2, 4, 16)
BAR = dict(cell_accuracy=0.95, exact=0.80)
N_IN, N_HELD = 150, 60
GAG = dict(lam=GagParams.lam, eta=GagParams.eta)  # the paper's setting
ARCH = {
    "dit": "the project's DiT (patch 2 -> 144 image tokens, 4 blocks of self-attention + cross-attention to the "
           "9 prompt tokens + MLP, adaLN-Zero on the timestep, dim 128, 4 heads)",
    "unet": "diffusers `UNet2DConditionModel` (levels 24x24 (convolutions), 12x12 and 6x6 with self- and "
            "cross-attention, 6x6 mid block with cross-attention; channels 32/64/96)",
    "sd3": "diffusers `SD3Transformer2DModel` (MMDiT: 4 joint-attention blocks over [144 image; 9 prompt] tokens, "
           "4 heads of 32; pooled projection = mean prompt state)",
}


def evaluate_grid(model, judge, prompts, steps: int, cfg_scale: float, seed: int = 0, method: str = "dense",
                  **params) -> tuple[dict, torch.Tensor]:
    """Sample ``prompts`` (one image each, noise seed ``seed``) and judge them; returns (metrics, images)."""
    from .sampling import sample

    t0 = time.perf_counter()
    images = sample(model, prompts, steps=steps, cfg_scale=cfg_scale, seed=seed, method=method, **params)
    wall = time.perf_counter() - t0
    metrics = judge.evaluate(images, prompts)
    metrics["sample_wall_s"] = round(wall, 2)
    return metrics, images


def headroom(model, judge, steps=STEPS, cfgs=(1.0, CARD_CFG), n_in: int = N_IN, n_held: int = N_HELD,
             gag_settings=((16, CARD_CFG), (16, 1.0), (2, CARD_CFG)), seed: int = 0) -> dict:
    """Every card setting: ``{"rows": [dict(prompts, steps, cfg, method, **metrics)], "summary": {...}}``."""
    from .grid_data import eval_prompts

    sets = {"in-distribution": eval_prompts("in-distribution", n_in), "held-out": eval_prompts("held-out", n_held)}
    rows = []
    for kind, prompts in sets.items():
        for s in steps:
            for w in cfgs:
                m, _ = evaluate_grid(model, judge, prompts, s, w, seed=seed)
                rows.append(dict(prompts=kind, steps=s, cfg=w, method="dense", **m))
        for s, w in gag_settings:
            if kind == "in-distribution":
                m, _ = evaluate_grid(model, judge, prompts, s, w, seed=seed, method="gag", **GAG)
                rows.append(dict(prompts=kind, steps=s, cfg=w, method="gag", **m))
    return dict(rows=rows, summary=summarize(rows), n_in=n_in, n_held=n_held, cfg=CARD_CFG, seed=seed)


def _row(rows, **key):
    for r in rows:
        if all(r.get(k) == v for k, v in key.items()):
            return r
    return None


def summarize(rows) -> dict:
    """Bar and headroom figures from the dense in-distribution rows."""
    out = {}
    top = _row(rows, prompts="in-distribution", steps=max(STEPS), cfg=CARD_CFG, method="dense")
    if top is not None:
        out["bar_cell_accuracy"], out["bar_exact"] = top["cell_accuracy"], top["exact"]
        out["bar_met"] = top["cell_accuracy"] >= BAR["cell_accuracy"] and top["exact"] >= BAR["exact"]
    for w in sorted({r["cfg"] for r in rows}):
        ref = _row(rows, prompts="in-distribution", steps=max(STEPS), cfg=w, method="dense")
        if ref is None:
            continue
        for few in (1, 2):
            r = _row(rows, prompts="in-distribution", steps=few, cfg=w, method="dense")
            if r is not None:
                out[f"frechet_cells_ratio_{few}_vs_16_cfg{w:g}"] = r["frechet_cells"] / max(ref["frechet_cells"], 1e-12)
                if "frechet_canvas" in r:
                    out[f"frechet_canvas_ratio_{few}_vs_16_cfg{w:g}"] = r["frechet_canvas"] / max(ref["frechet_canvas"], 1e-12)
    no_cfg = [r for r in rows if r["cfg"] == 1.0 and r["method"] == "dense"]
    if no_cfg:
        worst = min(no_cfg, key=lambda r: r["exact"])
        out["min_exact_no_cfg"] = worst["exact"]
        out["min_exact_no_cfg_at"] = f"{worst['steps']} steps, {worst['prompts']}"
    return out


def _fmt(v):
    return f"{v:.3f}" if isinstance(v, float) else str(v)


def table(rows, cols=("prompts", "steps", "cfg", "method", "cell_accuracy", "exact", "missing", "extra", "misplaced",
                      "frechet_cells", "frechet_canvas", "sharpness", "nn_distance", "confidence", "diversity")) -> list[str]:
    """Markdown table lines of the given rows."""
    out = ["| " + " | ".join(cols) + " |", "|" + "---|" * len(cols)]
    for r in rows:
        out.append("| " + " | ".join(_fmt(r.get(c, "")) for c in cols) + " |")
    return out


def write_grid_card(name: str, directory: Path, results: dict | None = None, extra_lines: list[str] | None = None,
                    png_steps: int = 16, png_cfg: float = CARD_CFG) -> Path:
    """Evaluate the shipped ``name`` (unless ``results`` are given) and write ``<name>.md``, ``<name>.png``
    (16 in-distribution prompts at ``png_steps`` Euler steps, CFG ``png_cfg``) and ``<name>.metrics.json``."""
    from .grid_data import eval_prompts
    from .grid_judge import load_grid_judge
    from .registry import load_model
    from .report import save_grid_png
    from .sampling import sample

    directory = Path(directory)
    model, judge = load_model(name), load_grid_judge()
    if results is None:
        results = headroom(model, judge)
    (directory / f"{name}.metrics.json").write_text(json.dumps(results, indent=1) + "\n")
    prompts = eval_prompts("in-distribution", 16)
    save_grid_png(sample(model, prompts, steps=png_steps, cfg_scale=png_cfg, seed=0), 2, directory / f"{name}.png", scale=3)
    meta = json.loads((directory / f"{name}.json").read_text())
    tr = meta["training"]
    s = results["summary"]
    arch_key = name.split("-")[0]
    curve_path = directory / f"{name}.train.jsonl"
    curve = [json.loads(x) for x in curve_path.read_text().splitlines() if x] if curve_path.is_file() else []
    shown = curve[:: max(1, len(curve) // 8)]
    if curve and curve[-1] not in shown:
        shown.append(curve[-1])
    ratios = {k: v for k, v in s.items() if "ratio" in k}
    lines = [
        f"# Model card: `{name}`",
        "",
        f"{ARCH.get(arch_key, arch_key)}, conditioned on a `digit-grid` prompt through attention to 9 prompt "
        "tokens (one token per (position, digit) pair, explicit binding, padding = null token; the all-null "
        f"prompt is the CFG null prompt; `hopfield_gag.models.grid_conditioning`). {tr['parameters']:,} parameters, "
        f"{'fp16' if tr.get('fp16') else 'fp32'} safetensors (EMA weights).",
        "",
        "Data: `digit-grid` (`hopfield_gag.models.grid_data`): 3x3 canvases of 8x8 cells (24x24 px), each cell a "
        "real digit with probability 0.75 (else blank), drawn from the *train* part of the fixed 80/20 digit "
        "split; 9 (position, digit) combinations (`HELD_OUT_PAIRS`) never occur in training. Evaluation canvases "
        "use the held-out digits.",
        "",
        "Objective: flow matching (rectified flow), x_t = (1 - t) eps + t x1, t ~ U(0, 1), predict x1 - eps; 10% "
        f"null-prompt dropout; AdamW lr {tr['lr']} (warm-up, cosine to 10%), batch {tr['batch']}, grad-norm clip 1, "
        f"EMA {tr['ema']}.",
        "",
        "## Training record",
        "",
        f"- command: `{tr['command']}` (seed {tr['seed']}, {tr['threads']} thread)",
        f"- commit: `{tr['commit']}`",
        f"- steps: {tr['steps_done']} of {tr['steps']} (stopped by {tr['stopped_by']})",
        f"- CPU time {tr['cpu_seconds']:.0f} s ({tr['cpu_seconds'] / 60:.1f} CPU-min), wall time {tr['wall_seconds']:.0f} s "
        f"(shared 2-core machine, load average at the end {tr['loadavg_at_end'][0]:.1f})",
        *([f"- final loss (mean of the last logged window): {tr['final_loss']:.4f}"] if tr.get("final_loss") is not None else []),
        *([f"- {x}" for x in tr.get("notes", [])]),
        "",
        *(["| step | loss | CPU s |", "|---|---|---|", *[f"| {r['step']} | {r['loss']:.4f} | {r['cpu_s']:.0f} |" for r in shown], ""] if shown else []),
        "## Quality bar and headroom",
        "",
        f"Judge: `hopfield_gag.models.load_judge('digit-grid')` (cell reader = shipped digit classifier + blank "
        f"detector; a proxy). {results['n_in']} in-distribution and {results['n_held']} compositional held-out "
        f"prompts (`eval_prompts`), one sample each, noise seed {results['seed']}, Euler flow matching; CFG scale "
        f"{results['cfg']:g} where cfg != 1.",
        "",
        f"- **Quality bar** (16 steps + CFG {results['cfg']:g}, in-distribution: cell accuracy >= 0.95, exact >= 0.80): "
        + (f"cell accuracy {s['bar_cell_accuracy']:.3f}, exact {s['bar_exact']:.3f} -> "
           f"**{'met' if s['bar_met'] else 'NOT met'}**" if "bar_met" in s else "not evaluated"),
        "- **Headroom, quality** (Fréchet distance at 1-2 steps / at 16 steps, >= 1.5 wanted): "
        + ", ".join(f"{k.replace('frechet_', '').replace('_ratio_', ' ')} = {v:.2f}" for k, v in ratios.items()),
        f"- **Headroom, alignment** (exact match without CFG < 0.90 somewhere): lowest {s.get('min_exact_no_cfg', float('nan')):.3f} "
        f"at {s.get('min_exact_no_cfg_at', '?')}",
        "",
        *(extra_lines or []),
        "Metrics: cell_accuracy (9 cells, blank included), exact (whole canvas right), missing (requested digit "
        "read blank, per requested digit), extra (requested blank read as a digit, per blank), misplaced (a cell "
        "reads a digit the prompt requests elsewhere, per cell), frechet_cells (judge features, requested cells vs "
        "held-out real digits), frechet_canvas (canvas-feature Fréchet distance vs real held-out canvases of the same "
        "prompts), sharpness (edge energy of requested cells / real digits'; blur lowers it), nn_distance (L2 of a "
        "requested cell to its nearest real digit; pixel L2 favours smooth averages), confidence "
        "(reader's max-softmax; averages read confidently too), diversity (pairwise judge-feature distance within a digit).",
        "",
        *table(results["rows"]),
        "",
        f"![16 in-distribution prompts, {png_steps} steps, CFG {png_cfg:g}, dense]({name}.png)",
        "",
        f"Regenerate this card: `python experiments/train_grid.py --model {tr.get('card_model', arch_key)} --card-only`.",
        "",
    ]
    path = directory / f"{name}.md"
    path.write_text("\n".join(lines))
    return path


def student_lines(student: dict, teacher: dict) -> list[str]:
    """Card lines: the student's 1- and 2-step metrics next to the teacher's 1, 2 and 16 steps (dense)."""
    cols = ("model", "prompts", "steps", "cfg", "cell_accuracy", "exact", "frechet_cells", "frechet_canvas",
            "sharpness", "diversity")
    rows = []
    for kind in ("in-distribution", "held-out"):
        for who, res, steps in (("student", student, (1, 2)), ("teacher dit-grid", teacher, (1, 2, 16))):
            for s in steps:
                for w in (1.0, CARD_CFG):
                    r = _row(res["rows"], prompts=kind, steps=s, cfg=w, method="dense")
                    if r is not None:
                        rows.append(dict(r, model=who))
    return ["## Student vs teacher", "",
            "The student distils the teacher's 16-step CFG sampler (its native mode is cfg = 1); same prompts, "
            "noise seed and judge as the teacher's card.", "", *table(rows, cols), ""]
