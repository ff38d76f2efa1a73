"""Model cards of the shipped models: ``weights/<name>.md`` and the sample grid ``weights/<name>.png``."""
from __future__ import annotations

import json
from pathlib import Path

import torch

from ..ops.params import GagParams

__all__ = ["write_model_card", "evaluate"]


def evaluate(model, judge, per_class: int = 10, steps: int = 8, cfg_scale: float = 2.0, seed: int = 0,
             method: str = "dense", **params) -> tuple[dict, torch.Tensor]:
    """Judge metrics of ``per_class`` samples per digit; returns (metrics, images (N, 1, 8, 8))."""
    from .data import NUM_CLASSES
    from .report import judge_metrics
    from .sampling import sample

    labels = torch.arange(NUM_CLASSES).repeat_interleave(per_class)
    images = sample(model, labels, steps=steps, cfg_scale=cfg_scale, method=method, seed=seed, **params)
    return judge_metrics(judge, images, labels), images


def write_model_card(name: str, directory: Path) -> Path:
    """Evaluate the shipped ``name`` (dense and GAG, 100 samples, 8 and 4 steps) and write its card."""
    from .report import save_grid_png
    from .judge import load_judge
    from .registry import load_model

    directory = Path(directory)
    model, judge = load_model(name), load_judge()
    tr = json.loads((directory / f"{name}.json").read_text())["training"]
    rows = []
    grid = None
    for steps in ((8, 4) if name.startswith("dit") else (8,)):  # the UNet is ~5x slower per sample
        for method, params in (("dense", {}), ("gag", dict(lam=GagParams.lam, eta=GagParams.eta))):
            m, images = evaluate(model, judge, steps=steps, method=method, **params)
            rows.append((steps, method, m))
            if grid is None:
                grid = images
    save_grid_png(grid, 10, directory / f"{name}.png")
    curve = [json.loads(line) for line in (directory / f"{name}.train.jsonl").read_text().splitlines() if line]
    shown = curve[:: max(1, len(curve) // 8)] + ([curve[-1]] if curve and curve[-1] not in curve[:: max(1, len(curve) // 8)] else [])
    arch = "DiT (patch 2, 16 tokens, adaLN-Zero, self + cross-attention)" if name.startswith("dit") else \
        "diffusers UNet2DConditionModel (8x8 and 4x4 levels + mid, cross-attention at every level)"
    lines = [
        f"# Model card: `{name}`",
        "",
        f"{arch}, class-conditional through cross-attention to an 8-token prompt (7 learned context tokens + the "
        f"class token, one transformer encoder layer; class 10 = null prompt for CFG). {tr['parameters']:,} "
        "parameters, fp32 safetensors (EMA weights).",
        "",
        "Data: scikit-learn's bundled 8x8 digits (UCI optical digits, 1797 images), the fixed 80/20 split "
        "(seed 0) of `hopfield_gag.models.data`; trained on the 1438 training images only.",
        "",
        "Objective: flow matching (rectified flow), x_t = (1 - t) eps + t x1, t ~ U(0, 1), predict x1 - eps; "
        f"10% condition dropout; AdamW lr {tr['lr']} (warmup, cosine to 10%), batch {tr['batch']}, grad-norm "
        f"clip 1, EMA {tr['ema']}.",
        "",
        "## Training record",
        "",
        f"- command: `{tr['command']}` (seed {tr['seed']}, {tr['threads']} thread)",
        f"- commit: `{tr['commit']}`",
        f"- steps: {tr['steps_done']} of {tr['steps']} (stopped by {tr['stopped_by']})",
        f"- CPU time {tr['cpu_seconds']:.0f} s, wall time {tr['wall_seconds']:.0f} s (shared 2-core machine, load "
        f"average at the end {tr['loadavg_at_end'][0]:.1f})",
        f"- final loss (mean of the last 50 steps): {tr['final_loss']:.4f}",
        "",
        "| step | loss | CPU s |",
        "|---|---|---|",
        *[f"| {r['step']} | {r['loss']:.4f} | {r['cpu_s']:.0f} |" for r in shown],
        "",
        "## Samples and judge metrics",
        "",
        "100 samples (10 per digit, seed 0), Euler flow-matching, CFG scale 2, judged by the shipped digit "
        f"classifier (held-out accuracy {judge.held_out_accuracy:.1%}; a proxy). Fréchet distance to the held-out "
        "real digits in the judge's feature space. GAG: lam 10, eta 15, zeta 0, alpha 1.5 in every cross-attention "
        "layer.",
        "",
        "| steps | attention | accuracy | Fréchet distance | diversity |",
        "|---|---|---|---|---|",
        *[f"| {s} | {meth} | {m['accuracy']:.2f} | {m['frechet']:.2f} | {m['diversity']:.2f} |" for s, meth, m in rows],
        "",
        f"![samples, 8 steps, dense attention]({name}.png)",
        "",
        "Regenerate this card: `python experiments/train_digits.py --model "
        f"{name.split('-')[0]} --card-only`.",
        "",
    ]
    path = directory / f"{name}.md"
    path.write_text("\n".join(lines))
    return path
