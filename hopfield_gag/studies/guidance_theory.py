r"""Theory beside outcome: do the directional statistics of ``THEORY.md``, measured on captures of the study's
own runs, predict *where* (which layers, which steps) attention guidance helps or hurts?

1. **Captures.** For a model, a seed's prompts and each step count :math:`N`, the dense run (and the guided
   run, when :func:`hopfield_gag.capture.capture` composes with an installed guidance function) is captured
   into an :class:`~hopfield_gag.capture.ActivationStore`, and :func:`~hopfield_gag.studies.study_directional`
   turns it into per (layer, step) statistics: :math:`P(c<0)`, the flip rate of GAG at the variant's
   :math:`(\lambda,\eta,\zeta)`, the cap activity, the entmax support size and the sharp certificate's
   coverage.
2. **Ablation.** :func:`~hopfield_gag.studies.guidance.study_guidance` runs the variant on one layer group at
   a time (:func:`~hopfield_gag.studies.guidance.layer_groups`) and on the step windows first 60% / last 40%,
   paired against dense as everywhere in the study.
3. **Correlation.** Each (layer group or window, :math:`N`) is a point with an outcome (paired
   :math:`\Delta` exact match, :math:`\Delta` Fréchet) and a theory statistic (token-weighted mean over the
   group's layers, or the window's steps, of the capture at that :math:`N`). Reported: Spearman's
   :math:`\rho` and Pearson's :math:`r` per (statistic, outcome) with the number of points, whichever way
   they go.

Columns: :data:`POINT_COLUMNS` (one row per point) and :data:`CORRELATION_COLUMNS`.
"""
from __future__ import annotations

import math
import tempfile
from dataclasses import replace
from pathlib import Path

import numpy as np
import torch

from .guidance import WINDOWS, GuidanceConfig, Variant, layer_groups, prompts_for, study_guidance, _load
from .mapreduce import torch_threads
from ._io import save_figure

__all__ = ["THEORY_STATS", "POINT_COLUMNS", "CORRELATION_COLUMNS", "capture_theory", "ablation_variants",
           "theory_points", "correlations", "study_guidance_theory", "plot_theory_outcome"]

THEORY_STATS = ("frac_c_neg", "frac_flipped", "frac_cap_active", "support_mean", "sharp_coverage")
OUTCOMES = ("dexact", "dfd_cells", "dcell_acc", "dsharp")
POINT_COLUMNS = ("model", "steps", "w", "unit", "what", "variant") + tuple(f"{o}_mean" for o in OUTCOMES) + tuple(
    f"{o}_ci" for o in OUTCOMES) + THEORY_STATS + ("tokens", "captured")
CORRELATION_COLUMNS = ("model", "unit", "statistic", "outcome", "points", "spearman", "pearson")


def capture_theory(model, model_name: str, steps: int, variant: Variant, *, seed: int = 0, n_prompts: int = 8,
                   cfg_scale: float = 1.0, tokens: int | None = 48, guided: bool = False, calibration=None) -> tuple:
    """Capture one run (dense, or guided by ``variant`` when ``guided`` and capture composes with an installed
    function) and return (directional rows, what was captured: "dense" / "guided"). The directional flip
    rate and cap activity are evaluated at the variant's (lam, eta, zeta) (eta: the layer-median of kappa*m
    for a kappa variant)."""
    from ..capture import capture
    from ..models import sample
    from .directional import DirectionalConfig, study_directional
    from .guidance import _install

    eta = variant.eta
    if eta is None:
        eta = variant.kappa * float(np.median([st["m"] for st in calibration.values()]))
    dcfg = DirectionalConfig(lam=variant.lam, eta=eta, zeta=variant.zeta)
    prompts = prompts_for(model_name, "in-distribution", n_prompts, seed)
    what = "dense"
    with tempfile.TemporaryDirectory() as tmp:
        store = Path(tmp) / "store"
        handle = None
        if guided:
            handle = _install(model, variant, calibration)
        try:
            try:
                ctx = capture(model, store, tokens=tokens, via="adapters", layers=_cross_layers(model))
                with torch.inference_mode(), ctx:
                    sample(model, prompts, steps=steps, cfg_scale=cfg_scale, seed=seed)
                what = "guided" if handle is not None else "dense"
            except RuntimeError as exc:  # capture inside an installed function: not composable (yet)
                if handle is None or "already has an attention function" not in str(exc):
                    raise
                handle.remove()
                handle = None
                import shutil

                shutil.rmtree(store, ignore_errors=True)
                with torch.inference_mode(), capture(model, store, tokens=tokens, via="adapters",
                                                     layers=_cross_layers(model)):
                    sample(model, prompts, steps=steps, cfg_scale=cfg_scale, seed=seed)
        finally:
            if handle is not None:
                handle.remove()
        rows = study_directional(store, cfg=dcfg)
    return rows, what


def _cross_layers(model) -> list:
    from .guidance import _guided_layers

    return [l.replace(".", r"\.") for l in _guided_layers(model)]


def ablation_variants(model, best: Variant) -> list[Variant]:
    """The variant itself; on one layer group at a time; on each step window; under the theory-driven rules
    (certificate-gated tokens, c+layers, and eta = kappa * m from the measured ||s|| for kappa 0.25 and 1)."""
    out = [best]
    for g, layers in layer_groups(model).items():
        out.append(replace(best, layers=tuple(layers), group=g))
    for w in WINDOWS:
        if w != "all":
            out.append(replace(best, window=w))
    out += [replace(best, rule="cert"), replace(best, rule="c+layers")]
    if best.method == "gag":  # eta from the measured ||s|| (kappa * m) against the variant's own eta
        out += [replace(best, eta=None, kappa=k) for k in (0.25, 1.0) if k != best.kappa]
    return out


def _weighted(rows, column, pick) -> tuple[float, int]:
    tot, n = 0.0, 0
    for r in rows:
        if not pick(r):
            continue
        val = r[column]
        if val == "" or val is None or (isinstance(val, float) and math.isnan(val)):
            continue
        tot += float(val) * r["tokens"]
        n += r["tokens"]
    return (tot / n if n else math.nan), n


def theory_points(study_rows: list, directional: dict, model, model_name: str, w: float = 1.0) -> list[dict]:
    """One point per (layer group or window, steps) of the ablation rows of ``study_rows`` (in-distribution,
    guidance cfg ``w``): its paired outcomes and the theory statistics of ``directional[steps]`` (rows of the
    capture at that step count) over the group's layers / the window's steps."""
    groups = layer_groups(model)
    out = []
    for r in study_rows:
        if r["model"] != model_name or r["split"] != "in-distribution" or r["guidance"] != "cfg" or r["w"] != w:
            continue
        if r["variant"] == "dense" or r["rule"]:
            continue
        steps = r["steps"]
        drows, what = directional.get(steps, ([], ""))
        if r["layers"] != "auto" and r["window"] == "all":
            layers = set(groups[r["layers"]])
            pick = lambda d, layers=layers: d["layer"] in layers  # noqa: E731
            unit, name = "layer group", r["layers"]
        elif r["layers"] == "auto" and r["window"] != "all":
            lo, hi = WINDOWS[r["window"]]
            pick = lambda d, lo=lo, hi=hi, n=steps: lo <= d["step"] / n < hi or (hi == 1.0 and d["step"] / n == 1.0)  # noqa: E731
            unit, name = "step window", r["window"]
        else:
            continue
        pt = {"model": model_name, "steps": steps, "w": w, "unit": unit, "what": name, "variant": r["variant"],
              "captured": what}
        for o in OUTCOMES:
            pt[f"{o}_mean"], pt[f"{o}_ci"] = r[f"{o}_mean"], r[f"{o}_ci"]
        tokens = 0
        for s in THEORY_STATS:
            pt[s], tokens = _weighted(drows, s, pick)
        pt["tokens"] = tokens
        out.append(pt)
    return out


def correlations(points: list[dict]) -> list[dict]:
    """Spearman's rho and Pearson's r of every theory statistic against every outcome, per (model, unit)
    and over all units ("all"); nan with fewer than 3 points or a constant column."""
    from scipy import stats as sps

    rows = []
    keys = list(dict.fromkeys((p["model"], p["unit"]) for p in points))
    keys += [(m, "all") for m in dict.fromkeys(p["model"] for p in points)]
    for model, unit in keys:
        pts = [p for p in points if p["model"] == model and (unit == "all" or p["unit"] == unit)]
        for s in THEORY_STATS:
            for o in OUTCOMES:
                xy = [(float(p[s]), float(p[f"{o}_mean"])) for p in pts
                      if _finite(p[s]) and _finite(p[f"{o}_mean"])]
                rho = r = math.nan
                if len(xy) >= 3:
                    x, y = np.array(xy).T
                    if np.ptp(x) > 0 and np.ptp(y) > 0:
                        rho = float(sps.spearmanr(x, y).statistic)
                        r = float(np.corrcoef(x, y)[0, 1])
                rows.append({"model": model, "unit": unit, "statistic": s, "outcome": o, "points": len(xy),
                             "spearman": rho, "pearson": r})
    return rows


def _finite(x) -> bool:
    try:
        return math.isfinite(float(x))
    except (TypeError, ValueError):
        return False


def study_guidance_theory(model_name: str, best: Variant, out_dir=None, *, steps=(2, 4, 16), seeds=(0, 1, 2, 3, 4),
                          n_prompts: int = 32, w: float = 1.0, capture_prompts: int = 8, tokens: int | None = 48,
                          untrained: bool = False, name: str = "guidance_theory", scheduler: str = "sync",
                          workers: int | None = None, progress: bool = False) -> dict:
    """The ablation study (:func:`ablation_variants` of ``best``) with the theory captures beside it.

    Returns {"rows": study rows, "points": :data:`POINT_COLUMNS` rows, "correlations":
    :data:`CORRELATION_COLUMNS` rows, "directional": {steps: directional rows}}; with ``out_dir`` writes
    ``<name>.csv`` (the ablation study), ``<name>_points.csv``, ``<name>_correlation.csv``,
    ``<name>_directional.csv`` and ``<name>.png`` (:func:`plot_theory_outcome`)."""
    model = _load(model_name, untrained)
    variants = ablation_variants(model, best)
    cfg = GuidanceConfig(models=(model_name,), steps=tuple(steps), steps_for=(), guidance=(("cfg", w),),
                         variants=(Variant(),) + tuple(variants), splits=("in-distribution",), seeds=tuple(seeds),
                         n_prompts=n_prompts, untrained=untrained)
    rows = study_guidance(cfg, out_dir, name=name, scheduler=scheduler, workers=workers, progress=progress)
    cal = None
    if best.kappa is not None:
        from .guidance import calibrate

        seed, n, st = cfg.calibration
        cal = calibrate(model, model_name, seed, n, st)
    directional = {}
    with torch_threads(cfg.threads):
        for n_steps in steps:
            directional[n_steps] = capture_theory(model, model_name, n_steps, best, seed=seeds[0],
                                                  n_prompts=capture_prompts, cfg_scale=w, tokens=tokens,
                                                  guided=True, calibration=cal)
    points = theory_points(rows, directional, model, model_name, w)
    corr = correlations(points)
    if out_dir is not None:
        from ._io import write_csv
        from .directional import DIRECTIONAL_COLUMNS

        write_csv(points, POINT_COLUMNS, out_dir, f"{name}_points.csv")
        write_csv(corr, CORRELATION_COLUMNS, out_dir, f"{name}_correlation.csv")
        drows = [dict(r, steps=n) for n, (rs, _) in directional.items() for r in rs]
        write_csv(drows, ("steps",) + DIRECTIONAL_COLUMNS, out_dir, f"{name}_directional.csv")
        plot_theory_outcome(points, corr, Path(out_dir) / f"{name}.png")
    return {"rows": rows, "points": points, "correlations": corr, "directional": directional}


def plot_theory_outcome(points: list[dict], corr: list[dict], path) -> Path:
    """Scatter of each theory statistic (columns) against the paired Delta exact and Delta Frechet (rows), one
    marker per point (colour: layer group / step window), with Spearman's rho in the title."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(2, len(THEORY_STATS), figsize=(3.0 * len(THEORY_STATS), 5.4), squeeze=False)
    units = list(dict.fromkeys(p["unit"] for p in points))
    rho = {(c["statistic"], c["outcome"]): c["spearman"] for c in corr if c["unit"] == "all"}
    for i, o in enumerate(("dexact", "dfd_cells")):
        for j, s in enumerate(THEORY_STATS):
            ax = axes[i, j]
            for u, mk in zip(units, "os^"):
                pts = [p for p in points if p["unit"] == u and _finite(p[s]) and _finite(p[f"{o}_mean"])]
                ax.errorbar([float(p[s]) for p in pts], [float(p[f"{o}_mean"]) for p in pts],
                            yerr=[float(p[f"{o}_ci"]) if _finite(p[f"{o}_ci"]) else 0.0 for p in pts], fmt=mk,
                            ms=4, capsize=2, label=u)
            ax.axhline(0, color="k", lw=0.5)
            r = rho.get((s, o), math.nan)
            ax.set_title(f"Spearman ρ = {r:+.2f}" if _finite(r) else "ρ undefined (constant)", fontsize=8)
            ax.set_xlabel(s, fontsize=7)
            if j == 0:
                ax.set_ylabel({"dexact": "Δ exact (paired)", "dfd_cells": "Δ Fréchet cells (paired)"}[o], fontsize=7)
            ax.tick_params(labelsize=6)
    axes[0, 0].legend(fontsize=6)
    fig.tight_layout()
    path = Path(path)
    path = save_figure(fig, path, dpi=110)
    return path
