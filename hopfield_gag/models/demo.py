r"""``hopfield-gag demo``: GAG on a real (small, shipped) diffusion model, end to end, in about a minute.

1. Sample ``10 * per_class`` compositional ``digit-grid`` prompts (e.g. ``"r0c0:3 r2c1:7"``) from the shipped
   grid DiT (``model_name="dit-grid"``, the default; ``"dit-digits"`` keeps the single-digit demo: ``per_class``
   digits of every class) with stock (dense) attention and with GAG in every cross-attention layer (same
   seeds, few Euler steps, CFG).
2. Judge both sets: the canvas judge (cell accuracy, exact-prompt match, missing / extra / misplaced digits,
   Fréchet distance, realism) or, for the digit model, the digit classifier (accuracy, Fréchet distance,
   within-class diversity); proxies.
3. Capture the cross-attention q, k, v of a dense sampling run with :func:`hopfield_gag.capture.capture`,
   which evaluates the theory margins on the fly (:func:`hopfield_gag.sharpening_margin`,
   :func:`~hopfield_gag.query_alignment_margin`, :func:`~hopfield_gag.parallel_margin`), and check GAG's
   deviation bound :math:`\lVert o - s\rVert \le \lambda\eta` on the same tensors with
   :func:`hopfield_gag.gag_attention` (``return_parts``).
4. Write ``<out>/report.md`` with the sample grids (PNG), the metrics and per-layer tables (fraction of
   query tokens x heads where each property holds, worst margin).
"""
from __future__ import annotations

import json
import os
import platform
import re
import stat
import time
from pathlib import Path

import torch

from ..ops.params import GagParams

from .report import judge_metrics, save_grid_png

__all__ = ["run_demo", "check_demo_options", "prepare_output", "DemoOutputError", "PROPERTIES", "MARKER"]

# property -> (record key, one-line statement); margins >= -TOL count as holding
PROPERTIES = {
    "P-sharpen": ("margin_sharpening", "1.5-entmax majorizes softmax (proved, THEORY.md T1-T2)"),
    "P-align (query)": ("margin_query_alignment", "cos(k^T(p_s - p_d), q) >= 0 (proved, T3)"),
    "c >= 0 (parallel)": ("margin_parallel", "cos(s - d, s) >= 0 (not a theorem: holds when values follow scores, T5)"),
}
# fp32 margins are cosines / sorted-mass differences of O(1) quantities from sums over <= 16 terms: a few
# unit roundoffs (2^-24 ~ 6e-8) each, so 1e-5 separates rounding from a real violation by >100x
TOL = 1e-5

# --out: the demo writes only these names, and marks the directory as its own so a rerun (with force) knows
# what it may replace; everything else in the directory is the user's
MARKER = ".hopfield-gag-demo"
_OUTPUTS = ("report.md", "samples_dense.png", "samples_gag.png")
_ACTIVATIONS = "activations"
_STORE_FILE = re.compile(r"^(manifest\.json|shard-\d{6}\.safetensors|\.(manifest\.json|shard-\d{6}\.safetensors)\.tmp)$")


class DemoOutputError(ValueError):
    """The output directory cannot be used as asked; nothing was written or deleted."""


def check_demo_options(per_class: int = 10, steps: int = 4, cfg_scale: float = 2.0, lam: float = GagParams.lam,
                       eta: float = GagParams.eta, zeta: float = GagParams.zeta, capture_per_class: int = 2, seed: int = 0) -> None:
    """Validate :func:`run_demo`'s numbers before any work: ``per_class >= 2`` (the Fréchet distance and the
    diversity need pairs), ``steps >= 1``, finite ``cfg_scale >= 0``, GAG's ``lam >= 0``, ``eta > 0``,
    ``zeta`` in [0, 1], ``capture_per_class >= 1``, ``seed >= 0``; raises ``ValueError`` naming the argument."""
    from .._validation import check_int, check_scalar

    check_int("per_class", per_class, ge=2)
    check_int("steps", steps, ge=1)
    check_scalar("cfg_scale", cfg_scale, ge=0.0)
    check_scalar("lam", lam, ge=0.0)
    check_scalar("eta", eta, gt=0.0)
    check_scalar("zeta", zeta, ge=0.0, le=1.0)
    check_int("capture_per_class", capture_per_class, ge=1)
    check_int("seed", seed, ge=0)


def _is_regular(path: Path) -> bool:
    try:
        return stat.S_ISREG(os.lstat(path).st_mode)
    except FileNotFoundError:
        return False


def prepare_output(out, force: bool = False) -> Path:
    """Make ``out`` ready for a demo run, deleting nothing the demo did not write.

    ``out`` may be absent, empty, or a previous demo output (it holds the :data:`MARKER` file); the last only
    with ``force``, which removes the previous run's report, grids and activation store (the store only if it
    holds nothing but store files) and leaves every other file alone. Anything else raises
    :class:`DemoOutputError` before a byte is written. Returns ``out`` (created, marked).
    """
    out = Path(out)
    if out.exists() and not out.is_dir():
        raise DemoOutputError(f"out {out} exists and is not a directory")
    entries = sorted(p.name for p in out.iterdir()) if out.is_dir() else []
    if entries and entries != [MARKER]:
        if not _is_regular(out / MARKER):
            raise DemoOutputError(f"out {out} is not empty and is not a previous demo output (no {MARKER} file); "
                                  "refusing to write into it: choose a new or empty directory (nothing was changed)")
        if not force:
            raise DemoOutputError(f"out {out} holds a previous demo output; pass --force (force=True) to replace it, "
                                  "or choose another directory (nothing was changed)")
        doomed = [out / name for name in _OUTPUTS if _is_regular(out / name)]
        acts = out / _ACTIVATIONS
        if acts.is_symlink() or (acts.exists() and not acts.is_dir()):
            raise DemoOutputError(f"out {out}: {acts.name} is not the demo's activation store; move it away "
                                  "(nothing was changed)")
        if acts.is_dir():
            foreign = [p.name for p in acts.iterdir() if not (_STORE_FILE.match(p.name) and _is_regular(p))]
            if foreign:
                raise DemoOutputError(f"out {out}: {acts.name}/ holds files the demo did not write ({foreign[:3]}); "
                                      "move them away (nothing was changed)")
            doomed += sorted(acts.iterdir())
        for p in doomed:
            p.unlink()
        if acts.is_dir():
            acts.rmdir()
    out.mkdir(parents=True, exist_ok=True)
    (out / MARKER).write_text(json.dumps({"written_by": "hopfield-gag demo", "files": list(_OUTPUTS) +
                                          [_ACTIVATIONS + "/"]}) + "\n")
    return out


def _layer_table(store, lam: float, eta: float, zeta: float) -> list[dict]:
    """Per layer: records, and per property the fraction holding and the worst margin."""
    from .. import gag_attention

    rows = {}
    for rec in store.records(verify=True):
        row = rows.setdefault(rec["layer"], {"layer": rec["layer"], "kind": rec["kind"], "records": 0, "steps": set(),
                                             **{p: [] for p in PROPERTIES}, "cap": []})
        row["records"] += 1
        row["steps"].add(rec["step"])
        for prop, (key, _) in PROPERTIES.items():
            row[prop].append(rec[key].reshape(-1))
        q, k, v = (rec[n].float() for n in ("q", "k", "v"))
        out, parts = gag_attention(q, k, v, method="gag", lam=lam, eta=eta, zeta=zeta, return_parts=True)
        # GAG's deviation bound, a consequence of the norm cap: lam * eta - |o - s| >= 0
        row["cap"].append((lam * eta - torch.linalg.vector_norm(parts.output - parts.sparse, dim=-1)).reshape(-1))
    table = []
    for row in rows.values():
        entry = {"layer": row["layer"], "kind": row["kind"], "records": row["records"], "steps": sorted(row["steps"])}
        for prop in list(PROPERTIES) + ["cap"]:
            m = torch.cat(row[prop])
            entry[prop] = (float((m >= -TOL).float().mean()), float(m.min()))
        table.append(entry)
    return table


def run_demo(out: str | Path = "hopfield-gag-demo", per_class: int = 10, steps: int = 4, cfg_scale: float = 2.0,
             lam: float = GagParams.lam, eta: float = GagParams.eta, zeta: float = GagParams.zeta, capture_per_class: int = 2, seed: int = 0,
             progress: bool = True, model_name: str = "dit-grid", force: bool = False) -> Path:
    """Run the demo and return the path of ``<out>/report.md`` (see the module docstring for what it does).

    ``per_class`` samples per digit per method; ``steps`` Euler steps; GAG with ``lam``, ``eta``, ``zeta`` in
    every cross-attention layer; activations of ``capture_per_class`` samples per digit captured at every step.
    The options (:func:`check_demo_options`) and ``out`` (:func:`prepare_output`; ``force`` replaces a previous
    demo output) are checked before anything is loaded or sampled.
    """
    from tqdm.auto import tqdm

    from ..capture import capture
    from . import load_judge, load_model, sample
    from .data import NUM_CLASSES

    check_demo_options(per_class, steps, cfg_scale, lam, eta, zeta, capture_per_class, seed)
    out = prepare_output(out, force)
    t_start = time.perf_counter()
    phases = tqdm(total=5, desc="demo", disable=not progress)

    phases.set_postfix_str("loading the shipped DiT and judge")
    grid = "grid" in model_name  # digit-grid: compositional prompts, 24x24 canvases (the default)
    model, judge = load_model(model_name), load_judge(model_name)
    labels = torch.arange(NUM_CLASSES).repeat_interleave(per_class)
    if grid:  # as many in-distribution grid prompts as digit samples (10 per_class)
        from .grid_data import eval_prompts

        labels = eval_prompts("in-distribution", NUM_CLASSES * per_class)
    phases.update(1)

    from ..adapters import preload

    preload()  # the adapters' first-use import is not sampling time
    results, timings = {}, {}
    gag = dict(lam=lam, eta=eta, zeta=zeta)
    for method, params in (("dense", {}), ("gag", gag)):
        phases.set_postfix_str(f"sampling {len(labels)} digits ({method})")
        t0 = time.perf_counter()
        images = sample(model, labels, steps=steps, cfg_scale=cfg_scale, method=method, seed=seed, progress=progress, **params)
        timings[method] = time.perf_counter() - t0
        save_grid_png(images, NUM_CLASSES, out / f"samples_{method}.png")
        results[method] = judge.evaluate(images, labels) if grid else judge_metrics(judge, images, labels)
        phases.update(1)

    phases.set_postfix_str("capturing attention and evaluating margins")
    cap_dir = out / _ACTIVATIONS  # prepare_output left it absent
    cap_labels = torch.arange(NUM_CLASSES).repeat_interleave(capture_per_class)
    if grid:
        cap_labels = labels[: len(cap_labels)]
    with capture(model, cap_dir, via="adapters", compute=("sharpening", "query_alignment", "parallel")) as cap:
        sample(model, cap_labels, steps=steps, cfg_scale=cfg_scale, seed=seed + 1)
    store = cap.store
    table = _layer_table(store, lam, eta, zeta)
    phases.update(1)

    phases.set_postfix_str("writing the report")
    real = judge.record
    lines = [
        "# hopfield-gag demo: GAG on a shipped diffusion transformer",
        "",
        f"Model `{model_name}` ({sum(p.numel() for p in model.parameters()):,} parameters, trained on "
        + ("`digit-grid`: 3x3 canvases of real 8x8 digits from prompts like `r0c0:3 r2c1:7`; " if grid else "8x8 digits; ")
        + f"model card: `hopfield_gag/models/weights/{model_name}.md`). {len(labels)} samples per method "
        + (f"(one per in-distribution grid prompt), " if grid else f"({per_class} per digit), ")
        + f"{steps} Euler flow-matching steps, CFG scale {cfg_scale}, seed {seed}. "
        f"GAG: `gag_attention(method='gag', lam={lam}, eta={eta}, zeta={zeta}, alpha=1.5)` in every "
        "cross-attention layer (`apply_gag`), at every step, both CFG branches.",
        "",
        "## Samples (one row per digit 0-9)" if not grid else f"## Samples (the first {len(labels)} grid prompts, row-major)",
        "",
        "| dense attention | GAG |",
        "|---|---|",
        "| ![dense](samples_dense.png) | ![gag](samples_gag.png) |",
        "",
        "## Judge metrics (a proxy: one small digit classifier)",
        "",
        f"The judge reads {real.get('held_out_accuracy', float('nan')):.1%} of {real.get('held_out_images', '?')} "
        "held-out real digits correctly. Fréchet distance: to the held-out real digits in the judge's 64-d feature "
        "space (torchmetrics `FrechetInceptionDistance` with the judge as feature extractor; not an Inception FID). "
        "Diversity: mean pairwise feature distance within a class.",
        "",
        "| method | accuracy | Fréchet distance | diversity | sampling time (s) |",
        "|---|---|---|---|---|",
    ]
    if grid:  # the canvas judge's metrics replace the digit judge's paragraph and table
        lines = lines[: lines.index("## Judge metrics (a proxy: one small digit classifier)")] + [
            "## Judge metrics (a proxy: the canvas judge)",
            "",
            "`load_judge('digit-grid')` reads each 8x8 cell with the shipped digit classifier plus a blank detector "
            "(>= 98% of the cells of real held-out canvases, `tests/test_grid.py`). exact: the whole canvas right; "
            "missing: requested digit read blank; extra: requested blank read as a digit; misplaced: a cell reads a "
            "digit the prompt puts elsewhere. Fréchet distance: canvas features vs real held-out canvases of the "
            "same prompts; sharpness: edge energy of the requested cells relative to real digits (1 = as sharp, "
            "blur lowers it).",
            "",
            "| method | cell accuracy | exact | missing | extra | misplaced | Fréchet (canvas) | sharpness | sampling time (s) |",
            "|---|---|---|---|---|---|---|---|---|",
        ]
    for method, r in results.items():
        if grid:
            lines.append(f"| {method} | {r['cell_accuracy']:.2f} | {r['exact']:.2f} | {r['missing']:.3f} | {r['extra']:.3f} | "
                         f"{r['misplaced']:.3f} | {r['frechet_canvas']:.1f} | {r['sharpness']:.2f} | {timings[method]:.1f} |")
        else:
            lines.append(f"| {method} | {r['accuracy']:.2f} | {r['frechet']:.2f} | {r['diversity']:.2f} | {timings[method]:.1f} |")
    lines += [
        "",
        "## Theory margins on captured activations",
        "",
        f"Attention q, k, v (self-attention `attn1`, cross-attention to the prompt `attn2`) of {len(cap_labels)} dense samples ({'the first ' + str(len(cap_labels)) + ' prompts' if grid else str(capture_per_class) + ' per digit'}) at all {steps} "
        f"steps, both CFG branches, captured by `hopfield_gag.capture.capture` into `activations/` "
        f"({len(store)} records). Margins are per (query token, head), computed by the library "
        f"(`sharpening_margin`, `query_alignment_margin`, `parallel_margin`); a property holds where the margin "
        f">= -{TOL:g} (fp32 rounding). The cap bound is `lam*eta - |o - s|` of `gag_attention(..., return_parts=True)`.",
        "",
    ]
    for prop, (_, statement) in PROPERTIES.items():
        lines.append(f"- **{prop}**: {statement}")
    lines += ["- **cap bound**: |o - s| <= lam * eta (GAG's norm cap)", ""]
    head = "| layer | records | " + " | ".join(f"{p} holds / worst" for p in list(PROPERTIES) + ["cap bound"]) + " |"
    lines += [head, "|---|---|" + "---|" * (len(PROPERTIES) + 1)]
    for row in table:
        cells = [f"{row[p][0]:.1%} / {row[p][1]:+.3g}" for p in list(PROPERTIES) + ["cap"]]
        lines.append(f"| `{row['layer']}` | {row['records']} | " + " | ".join(cells) + " |")
    total = time.perf_counter() - t_start
    lines += [
        "",
        f"Runtime {total:.0f} s on {platform.machine()} ({torch.get_num_threads()} torch threads). "
        "Reproduce: `hopfield-gag demo` (options: `hopfield-gag demo --help`).",
        "",
    ]
    report = out / "report.md"
    report.write_text("\n".join(lines))
    phases.update(1)
    phases.close()
    return report
