r"""``study_sampling``: few-step sampling of the shipped digit models with dense / PLADIS / GAG / AA-adaptive
attention, with and without classifier-free guidance.

The paper's main claim is that GAG improves few-step generation at negligible cost. Here it is tested at
small scale: for each model, seed, number of Euler steps and CFG weight, ``n_per_class`` images of every
digit are sampled with :func:`hopfield_gag.models.sample` under each attention method and scored by the
shipped judge (:func:`hopfield_gag.models.load_judge`): accuracy (the judge reads the requested digit),
Fréchet distance of the judge features to held-out real digits, diversity (mean within-class feature
distance), and the wall time relative to dense sampling of the same configuration (measured back to back
in the same process).

Variants: ``dense``; ``pladis`` (:math:`\lambda = 2`); ``gag`` (paper rule, :math:`\lambda=10, \eta=15,
\zeta=0`); ``gag+`` (the one-sided rule, ``parallel="positive"``: amplify :math:`\Delta_\parallel` only
where :math:`c \ge 0`; included when the installed attention adapter accepts it); ``aa`` (per-token AA(1)
scale). Seeds are the shards of a map-reduce (:mod:`.mapreduce`): each metric is accumulated over seeds as
count, sum and sum of squares, and reported as mean and a 95% Student-t confidence half-width over seeds.

CSV columns (``SAMPLING_COLUMNS``): ``model, steps, cfg_scale, method, seeds, acc_mean, acc_ci,
fd_mean, fd_ci, div_mean, div_ci, time_ratio_mean, time_ratio_ci``.
"""
from __future__ import annotations

import math
import time
from dataclasses import dataclass

import numpy as np
import torch

from .mapreduce import Stats, run_study, torch_threads
from ._io import save_figure

__all__ = ["SamplingConfig", "study_sampling", "SAMPLING_COLUMNS", "VARIANTS"]

VARIANTS = {
    "dense": {"method": "dense"},
    "pladis": {"method": "pladis", "lam": 2.0},
    "gag": {"method": "gag", "lam": 10.0, "eta": 15.0, "zeta": 0.0},
    "gag+": {"method": "gag", "lam": 10.0, "eta": 15.0, "zeta": 0.0, "parallel": "positive"},
    "aa": {"method": "aa"},
}
SAMPLING_COLUMNS = ("model", "steps", "cfg_scale", "method", "seeds", "acc_mean", "acc_ci", "fd_mean", "fd_ci",
                    "div_mean", "div_ci", "time_ratio_mean", "time_ratio_ci")
_UNIT = np.linspace(0.0, 1.0, 1001)
_WIDE = np.logspace(-4, 4, 801)


@dataclass(frozen=True)
class SamplingConfig:
    """Grid of the sampling study. ``untrained=True`` builds freshly initialised models (``seed`` 0) instead
    of loading the shipped weights: a plumbing check only (used by the tests), never a result."""

    models: tuple = ("dit-digits", "unet-digits")
    steps: tuple = (1, 2, 4, 8, 16)
    cfg_scales: tuple = (1.0, 2.0)
    variants: tuple = ("dense", "pladis", "gag", "gag+", "aa")
    seeds: tuple = (0, 1, 2)
    n_per_class: int = 10
    untrained: bool = False

    @staticmethod
    def fast() -> "SamplingConfig":
        return SamplingConfig(steps=(1, 4), seeds=(0, 1), n_per_class=3, cfg_scales=(2.0,))


def _load(name: str, untrained: bool):
    from ..models import load_model
    from ..models.registry import build

    if untrained:
        torch.manual_seed(0)
        return build(name).eval().requires_grad_(False)
    return load_model(name)


class _SamplingMap:
    """Picklable shard map: (model name, seed) -> Stats keyed by (model, steps, cfg, variant)."""

    def __init__(self, cfg: SamplingConfig):
        self.cfg = cfg

    def __call__(self, shard) -> Stats:
        from ..adapters import preload
        from ..models import load_judge, sample

        preload()  # else the first guided variant's time ratio books the adapters' import (24x, not 1.1x)
        name, seed = shard
        cfg = self.cfg
        model, judge = _load(name, cfg.untrained), load_judge()
        variants = list(cfg.variants)
        labels = torch.arange(10).repeat_interleave(cfg.n_per_class)
        stats = Stats()
        with torch_threads(1), torch.inference_mode():
            for steps in cfg.steps:
                for w in cfg.cfg_scales:
                    dense_time = None
                    for v in ["dense"] + [x for x in variants if x != "dense"]:
                        t0 = time.perf_counter()
                        images = sample(model, labels, steps=steps, cfg_scale=w, seed=seed, **VARIANTS[v])
                        elapsed = time.perf_counter() - t0
                        dense_time = elapsed if v == "dense" else dense_time
                        key = (name, steps, w, v)
                        stats.add(key, "acc", judge.accuracy(images, labels), _UNIT)
                        stats.add(key, "fd", judge.frechet_distance(images), _WIDE)
                        stats.add(key, "div", judge.diversity(images, labels), _WIDE)
                        stats.add(key, "time_ratio", elapsed / dense_time, _WIDE)
        return stats


def mean_ci(h, level: float = 0.95) -> tuple[float, float]:
    """Mean over seeds and the Student-t half-width of its ``level`` confidence interval (nan for n < 2)."""
    from scipy import stats as sps

    if h.n == 0:
        return math.nan, math.nan
    mean = h.total / h.n
    if h.n < 2:
        return mean, math.nan
    var = max(0.0, (h.total_sq - h.n * mean * mean) / (h.n - 1))
    return mean, float(sps.t.ppf(0.5 + level / 2, h.n - 1) * math.sqrt(var / h.n))


def _reduce(stats: Stats) -> list[dict]:
    order = {v: i for i, v in enumerate(VARIANTS)}
    rows = []
    for key in sorted(stats.groups, key=lambda k: (k[0], k[1], k[2], order[k[3]])):
        h = stats.groups[key]
        row = {"model": key[0], "steps": key[1], "cfg_scale": key[2], "method": key[3], "seeds": h["acc"].n}
        for m in ("acc", "fd", "div", "time_ratio"):
            row[f"{m}_mean"], row[f"{m}_ci"] = mean_ci(h[m])
        rows.append(row)
    return rows


def study_sampling(cfg: SamplingConfig | None = None, out_dir=None, *, scheduler: str = "sync",
                   workers: int | None = None, progress: bool = False) -> list[dict]:
    """Run the sampling study; returns the table (:data:`SAMPLING_COLUMNS`). With ``out_dir``: writes
    ``sampling.csv`` and ``sampling_accuracy.png`` (judge accuracy vs steps per model, CFG weight and
    method, with the 95% CI over seeds)."""
    cfg = cfg or SamplingConfig()
    shards = [(m, s) for m in cfg.models for s in cfg.seeds]
    rows = run_study(_SamplingMap(cfg), shards, _reduce, scheduler=scheduler, workers=workers,
                     progress=progress, desc="sampling")
    if out_dir is not None:
        from ._io import write_csv

        write_csv(rows, SAMPLING_COLUMNS, out_dir, "sampling.csv")
        plot_sampling(rows, out_dir)
    return rows


def plot_sampling(rows, out_dir, metric: str = "acc"):
    """Judge ``metric`` vs steps (log2 axis), one panel per (model, cfg_scale), one line per method."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    from pathlib import Path

    panels = list(dict.fromkeys((r["model"], r["cfg_scale"]) for r in rows))
    fig, axes = plt.subplots(1, len(panels), figsize=(3.8 * len(panels), 3.3), squeeze=False)
    for ax, (model, w) in zip(axes[0], panels):
        for method in dict.fromkeys(r["method"] for r in rows):
            rs = sorted((r for r in rows if (r["model"], r["cfg_scale"], r["method"]) == (model, w, method)),
                        key=lambda r: r["steps"])
            if not rs:
                continue
            ci = [0.0 if math.isnan(r[f"{metric}_ci"]) else r[f"{metric}_ci"] for r in rs]
            ax.errorbar([r["steps"] for r in rs], [r[f"{metric}_mean"] for r in rs], yerr=ci, marker="o",
                        ms=3, capsize=2, label=method)
        ax.set_xscale("log", base=2)
        ax.set_title(f"{model}, cfg={w}", fontsize=9)
        ax.set_xlabel("Euler steps")
    axes[0, 0].set_ylabel({"acc": "judge accuracy", "fd": "Frechet distance"}.get(metric, metric))
    axes[0, -1].legend(fontsize=7)
    fig.tight_layout()
    path = Path(out_dir) / f"sampling_{'accuracy' if metric == 'acc' else metric}.png"
    path = save_figure(fig, path, dpi=110)
    return [path]
