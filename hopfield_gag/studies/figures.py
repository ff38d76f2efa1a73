r"""Every figure of ``paper_figures/``: one function per figure, called by the notebooks and by
``hopfield-gag figures`` (:func:`make_all`), which also writes the index ``paper_figures/README.md``.

Each function takes ``out_dir`` and ``fast`` (the test setting: smaller grids, fewer seeds) and returns the
paths it wrote. All quantities come from library calls; this module only arranges them in plots.
"""
from __future__ import annotations

import math
import os
import time
from pathlib import Path

import numpy as np
import torch

from .. import (
    aa_adaptive_scale,
    extrapolation_as_aa,
    beta_regime,
    energy,
    fixed_point,
    retrieval_error_bound,
    retrieval_map,
    descent_margin,
    parallel_margin,
    query_alignment_margin,
    sharpening_margin,
    sparse_dense_discrepancy,
    basin_alignment_margin,
)
from ..theory.contraction import iterate_map
from .mapreduce import torch_threads

__all__ = ["FIGURES", "make_all", "fast_mode", "figures_dir", "digits_patterns"] + [
    "fig_energy", "fig_beta_regimes", "fig_sparse_dense", "fig_directional", "fig_anderson",
    "fig_acceleration", "fig_directional_store", "fig_sampling", "fig_samples_grid", "fig_guidance_where",
    "fig_guidance_theory", "fig_guidance_maps"]


def fast_mode() -> bool:
    """The notebooks' test setting: environment ``HOPFIELD_GAG_FAST=1``."""
    return os.environ.get("HOPFIELD_GAG_FAST", "0") not in ("", "0", "false", "False")


def figures_dir() -> Path:
    """Where notebooks save figures: ``HOPFIELD_GAG_FIGURES_DIR`` or ``paper_figures`` (cwd's repo root)."""
    env = os.environ.get("HOPFIELD_GAG_FIGURES_DIR")
    if env:
        return Path(env)
    here = Path.cwd()
    for p in (here, *here.parents):
        if (p / "paper_figures").is_dir() and (p / "hopfield_gag").is_dir():
            return p / "paper_figures"
    return here / "paper_figures"


def _plt():
    import matplotlib

    if not os.environ.get("MPLBACKEND"):
        matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt


def _save(fig, out_dir, name) -> Path:
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    path = out / name
    fig.savefig(path, dpi=110)
    _plt().close(fig)
    return path


def digits_patterns(n: int = 20, seed: int = 0) -> torch.Tensor:
    """``n`` digits from scikit-learn's bundled 8x8 set (float64, (n, 64)), centred and scaled to unit
    max norm, two per class first."""
    from sklearn.datasets import load_digits

    d = load_digits()
    rng = np.random.default_rng(seed)
    idx = np.concatenate([rng.permutation(np.flatnonzero(d.target == c))[: math.ceil(n / 10)] for c in range(10)])
    x = torch.tensor(d.data[idx[:n]], dtype=torch.float64)
    x = x - x.mean(0)
    return x / x.norm(dim=-1).max()


# ------------------------------------------------------------------------------------------------ 01 energy
def fig_energy(out_dir, fast: bool = False) -> list[Path]:
    """01: Hopfield energy contours with retrieval trajectories for alpha in {1, 1.5, 2} in 2-D, and the
    basins of attraction (colour = the stored pattern the fixed point lands nearest to)."""
    plt = _plt()
    X = torch.tensor([[1.0, 0.2], [-0.6, 0.9], [-0.5, -0.9], [0.9, -0.8]], dtype=torch.float64)
    beta, n = 4.0, (16 if fast else 120)
    g = torch.linspace(-1.6, 1.6, n, dtype=torch.float64)
    grid = torch.stack(torch.meshgrid(g, g, indexing="xy"), -1).reshape(-1, 2)
    alphas = (1.0, 1.5, 2.0)
    fig, axes = plt.subplots(2, 3, figsize=(11, 7))
    starts = torch.tensor([[0.0, 0.0], [1.4, 1.4], [-1.4, 0.2], [0.3, -1.5], [-1.2, -1.4]], dtype=torch.float64)
    for j, a in enumerate(alphas):
        E = energy(grid, X, beta, a).reshape(n, n)
        ax = axes[0, j]
        ax.contourf(g, g, E, levels=30, cmap="viridis")
        traj = iterate_map(lambda x: retrieval_map(x, X, beta=beta, alpha=a), starts, 12)
        for t in range(starts.shape[0]):
            ax.plot(traj[:, t, 0], traj[:, t, 1], "w.-", lw=1, ms=4)
        ax.plot(X[:, 0], X[:, 1], "r*", ms=12)
        ax.set_title(f"energy, alpha={a}, beta={beta}")
        fp = fixed_point(grid, X, beta=beta, alpha=a, tol=1e-9, max_iter=100 if fast else 1000).state
        nearest = torch.cdist(fp, X).argmin(-1).reshape(n, n)
        ax = axes[1, j]
        ax.pcolormesh(g, g, nearest, cmap="tab10", vmin=0, vmax=9, shading="auto")
        # a fixed point far from every pattern is a metastable (mixed) state: mark it
        mixed = (torch.cdist(fp, X).min(-1).values > 0.1).reshape(n, n)
        ax.contour(g, g, mixed.double(), levels=[0.5], colors="k", linewidths=0.8)
        ax.plot(X[:, 0], X[:, 1], "k*", ms=12)
        ax.set_title(f"basins, alpha={a}", fontsize=9)
    fig.tight_layout()
    return [_save(fig, out_dir, "01_energy_basins.png")]


# ------------------------------------------------------------------------------------------- 02 beta regimes
def fig_beta_regimes(out_dir, fast: bool = False) -> list[Path]:
    """02: one-step retrieval of digit patterns (8x8, noisy queries) vs beta: measured error
    ||T(xi) - x_i|| for dense and entmax, Theorem 5's bound, and the regime of beta_regime."""
    plt = _plt()
    X = digits_patterns(20)
    gen = torch.Generator().manual_seed(0)
    noise = 0.003 * torch.randn(X.shape, generator=gen, dtype=torch.float64)
    Q = X + noise
    betas = np.logspace(0, 3, 6 if fast else 30)
    rows = {"dense": [], "entmax 1.5": [], "bound": [], "regime": []}
    for b in betas:
        rows["dense"].append(float((retrieval_map(Q, X, beta=b) - X).norm(dim=-1).median()))
        rows["entmax 1.5"].append(float((retrieval_map(Q, X, beta=b, alpha=1.5) - X).norm(dim=-1).median()))
        bound = torch.stack([retrieval_error_bound(Q[i], X, i, float(b)) for i in range(X.shape[0])])
        rows["bound"].append(float(bound.median()))
        rows["regime"].append(float(beta_regime(X, float(b)).regime.double().mean()))
    fig, (ax, ax2) = plt.subplots(1, 2, figsize=(10, 3.8))
    for k in ("dense", "entmax 1.5", "bound"):
        ax.loglog(betas, rows[k], "--" if k == "bound" else "-", marker=".", label=k)
    ax.axhline(2.0, color="grey", lw=0.6)  # trivial bound 2M with M = 1
    ax.set_ylim(1e-18, 1e3)
    ax.set_xlabel("beta")
    ax.set_ylabel("median ||T(xi) - x_i||")
    ax.set_title("digits: measured error vs Theorem 5 bound")
    ax.legend(fontsize=8)
    ax2.semilogx(betas, rows["regime"], marker=".")
    ax2.set_yticks([0, 1, 2], ["global", "metastable", "single"])
    ax2.set_xlabel("beta")
    ax2.set_title("mean regime index (beta_regime)")
    fig.tight_layout()
    return [_save(fig, out_dir, "02_beta_regimes.png")]


# ------------------------------------------------------------------------------------------ 03 sparse/dense
def _toy_qkv(seed=0, b=2, h=4, lq=64, lk=32, d=16, spread=2.0, offset=2.0):
    g = torch.Generator().manual_seed(seed)
    q, k, v = (spread * torch.randn(b, h, n, d, generator=g, dtype=torch.float64) for n in (lq, lk, lk))
    v[..., 0] += offset
    return q, k, v


def _digits_qkv(fast):
    X = digits_patterns(20 if fast else 60)
    g = torch.Generator().manual_seed(1)
    Q = X[torch.randint(0, X.shape[0], (64,), generator=g)] + 0.1 * torch.randn(64, X.shape[1], generator=g,
                                                                               dtype=torch.float64)
    return Q, X, X


def fig_sparse_dense(out_dir, fast: bool = False) -> list[Path]:
    """03: majorization margin of entmax over softmax, and the discrepancy's geometry (||Delta_par|| vs
    ||Delta_perp||, histogram of c) on toy Gaussian tensors and on digits (Hopfield case v = k)."""
    plt = _plt()
    sets = {"toy Gaussian": _toy_qkv(lq=32 if fast else 128), "digits (v = k)": _digits_qkv(fast)}
    fig, axes = plt.subplots(2, 3, figsize=(12, 7))
    for i, (name, (q, k, v)) in enumerate(sets.items()):
        scale = 1.0 / math.sqrt(q.shape[-1]) if name.startswith("toy") else 8.0
        m = sharpening_margin(q, k, scale=scale).flatten()
        disc = sparse_dense_discrepancy(q, k, v, scale=scale)
        axes[i, 0].hist(m.numpy(), bins=40)
        axes[i, 0].set_title(f"{name}: majorization margin (>= 0 holds: {(m >= 0).double().mean():.2f})",
                             fontsize=8)
        par = disc.delta_parallel.norm(dim=-1).flatten()
        perp = disc.delta_perp.norm(dim=-1).flatten()
        axes[i, 1].loglog(par.clamp_min(1e-12).numpy(), perp.clamp_min(1e-12).numpy(), ".", ms=3)
        axes[i, 1].set_xlabel("||Delta_par||")
        axes[i, 1].set_ylabel("||Delta_perp||")
        axes[i, 1].set_title(f"{name}: geometry of Delta", fontsize=8)
        c = disc.parallel_coef.flatten()
        axes[i, 2].hist(c.numpy(), bins=50)
        axes[i, 2].axvline(0, color="k", lw=0.6)
        axes[i, 2].set_title(f"{name}: c (fraction c < 0: {(c < 0).double().mean():.2f})", fontsize=8)
    fig.tight_layout()
    return [_save(fig, out_dir, "03_sparse_dense.png")]


# ------------------------------------------------------------------------------------------- 04 directional
def fig_directional(out_dir, fast: bool = False) -> list[Path]:
    """04: distribution of each directional margin on random Hopfield problems (v = k) and the fraction of
    tokens where it holds as the score scale grows; prints (returns) the worst counterexample per margin."""
    plt = _plt()
    scales = np.logspace(-1, 1.3, 6 if fast else 14)
    props = {
        "sharpen": lambda q, k, s: sharpening_margin(q, k, scale=s),
        "align_query": lambda q, k, s: query_alignment_margin(q, k, scale=s),
        "parallel (c >= 0)": lambda q, k, s: parallel_margin(q, k, None, scale=s),
        "descent": lambda q, k, s: descent_margin(q, k, scale=s),
        "basin": lambda q, k, s: basin_alignment_margin(q, k, scale=s),
    }
    g = torch.Generator().manual_seed(0)
    k = torch.randn(4, 24, 8, generator=g, dtype=torch.float64)
    k = k / k.norm(dim=-1, keepdim=True)
    q = k[:, :16] + 0.3 * torch.randn(4, 16, 8, generator=g, dtype=torch.float64)
    frac = {p: [] for p in props}
    worst = {}
    fig, (ax, ax2) = plt.subplots(1, 2, figsize=(11, 3.8))
    for s in scales:
        for p, fn in props.items():
            m = fn(q, k, float(s))
            frac[p].append(float((m >= 0).double().mean()))
            if p not in worst or float(m.min()) < worst[p][0]:
                worst[p] = (float(m.min()), float(s))
    for p in props:
        ax.semilogx(scales, frac[p], marker=".", label=p)
        ax2.hist(props[p](q, k, 1.0).flatten().numpy(), bins=40, histtype="step", label=p)
    ax.set_xlabel("score scale beta")
    ax.set_ylabel("fraction of tokens where it holds")
    ax.legend(fontsize=7)
    ax2.set_title("margins at beta = 1", fontsize=9)
    ax2.axvline(0, color="k", lw=0.6)
    fig.tight_layout()
    path = _save(fig, out_dir, "04_directional_margins.png")
    fig_directional.counterexamples = worst
    return [path]


# --------------------------------------------------------------------------------------------- 05 anderson
def fig_anderson(out_dir, fast: bool = False) -> list[Path]:
    """05: extrapolation as AA(1): PLADIS is an AA(1) step with gamma = 1 - lambda (identity checked on toy
    attention), GAG's effective gamma distribution, and the AA-adaptive scale lambda* per token."""
    plt = _plt()
    q, k, v = _toy_qkv(lq=32 if fast else 128)
    disc = sparse_dense_discrepancy(q, k, v)
    fig, axes = plt.subplots(1, 3, figsize=(12, 3.6))
    lams = np.linspace(0, 3, 7)
    gam = [float(extrapolation_as_aa(disc.dense, disc.sparse, "pladis", lam=float(l)).gamma.mean()) for l in lams]
    axes[0].plot(lams, gam, "o", label="extrapolation_as_aa")
    axes[0].plot(lams, 1 - lams, "-", lw=0.8, label="1 - lambda")
    axes[0].set_xlabel("PLADIS lambda")
    axes[0].set_ylabel("AA(1) gamma")
    axes[0].legend(fontsize=8)
    gag = extrapolation_as_aa(disc.dense, disc.sparse, "gag", lam=10.0, eta=15.0)
    axes[1].hist(gag.gamma.flatten().numpy(), bins=40)
    axes[1].set_title("GAG (lam=10, eta=15): AA(1) gamma per token", fontsize=9)
    ad = aa_adaptive_scale(q, k, v)
    axes[2].hist(ad.pladis_scale.flatten().numpy(), bins=40)
    axes[2].set_title("AA-adaptive PLADIS scale lambda* per token", fontsize=9)
    fig.tight_layout()
    return [_save(fig, out_dir, "05_anderson_aa1.png")]


def fig_acceleration(out_dir, fast: bool = False) -> list[Path]:
    """05: convergence curves and the iterations-to-tolerance table of ``study_acceleration``."""
    from .acceleration import AccelerationConfig, study_acceleration

    cfg = AccelerationConfig.fast() if fast else AccelerationConfig()
    study_acceleration(cfg, out_dir)
    return [Path(out_dir) / "acceleration_curves.png"]


# ----------------------------------------------------------------------------------------- 06 real model
def _model(name, fast):
    """The shipped model; if its weights are not in the package, a freshly initialised one (flagged)."""
    from ..models import load_model
    from ..models.registry import build

    try:
        return load_model(name), True
    except (FileNotFoundError, OSError):
        torch.manual_seed(0)
        return build(name).eval().requires_grad_(False), False


def fig_samples_grid(out_dir, fast: bool = False, model_name: str = "dit-digits") -> list[Path]:
    """06: a grid of samples (rows: dense / PLADIS / GAG / AA-adaptive; columns: digits 0-9) at 4 steps."""
    from ..models import sample
    from .sampling import VARIANTS

    plt = _plt()
    model, trained = _model(model_name, fast)
    labels = list(range(10))
    variants = ("dense", "pladis", "gag", "aa")
    fig, axes = plt.subplots(len(variants), 10, figsize=(10, 1.1 * len(variants) + 0.6))
    with torch.inference_mode():
        for i, vname in enumerate(variants):
            imgs = sample(model, labels, steps=4, cfg_scale=2.0, seed=0, **VARIANTS[vname])
            for j in range(10):
                axes[i, j].imshow(imgs[j, 0].numpy(), cmap="gray", vmin=0, vmax=1)
                axes[i, j].set_xticks([])
                axes[i, j].set_yticks([])
            axes[i, 0].set_ylabel(vname, fontsize=8)
    fig.suptitle(f"{model_name}{'' if trained else ' (UNTRAINED: weights not shipped yet)'}, 4 steps, cfg=2",
                 fontsize=9)
    fig.tight_layout()
    return [_save(fig, out_dir, "06_samples_grid.png")]


def fig_sampling(out_dir, fast: bool = False) -> list[Path]:
    """06: the sampling study's accuracy figure (``study_sampling``; fast: 2 step counts, 2 seeds)."""
    import dataclasses

    from .sampling import SamplingConfig, study_sampling

    cfg = SamplingConfig.fast() if fast else SamplingConfig()
    _, trained = _model(cfg.models[0], fast)
    if fast:
        cfg = dataclasses.replace(cfg, models=cfg.models[:1], variants=("dense", "gag"), steps=(1,),
                                  n_per_class=2)
    cfg = dataclasses.replace(cfg, untrained=not trained)
    study_sampling(cfg, out_dir)
    return [Path(out_dir) / "sampling_accuracy.png"]


def fig_directional_store(out_dir, fast: bool = False, model_name: str = "dit-digits") -> list[Path]:
    """06: the theory margins per layer on a real model: capture a few sampling steps of ``model_name``
    into a temporary store and run ``study_directional`` on it."""
    import tempfile

    from ..capture import capture
    from ..models import sample
    from .directional import study_directional

    model, _ = _model(model_name, fast)
    with tempfile.TemporaryDirectory() as tmp:
        store = Path(tmp) / "store"
        with torch.inference_mode(), capture(model, store, tokens=8 if fast else 64, via="adapters"):
            sample(model, list(range(10)) if not fast else [0], steps=1 if fast else 4, cfg_scale=2.0, seed=0)
        study_directional(store, out_dir)
    return [Path(out_dir) / n for n in ("directional_properties.png", "directional_sign.png", "directional_c.png")]


# --------------------------------------------------------------------------------- 07 where guidance helps
def _study_csv(out_dir, name):
    """The committed study table ``name`` (written by ``experiments/study_guidance.py``): ``out_dir/name`` or
    the repository's ``paper_figures/name``; None if neither exists."""
    for d in (Path(out_dir), figures_dir()):
        if (d / name).is_file():
            return d / name
    return None


def _grid_or_digits(fast):
    """The main grid DiT if shipped, else the digits DiT (before the grid models exist)."""
    from ..models import MODELS

    return "dit-grid" if "dit-grid" in MODELS else "dit-digits"


def fig_guidance_where(out_dir, fast: bool = False) -> list[Path]:
    """07: "where it helps" — paired Delta exact match and Delta Frechet (cells) of PLADIS / GAG / GAG+ against
    dense over (lambda, steps), per model and CFG/APG weight. Full: re-plotted from the committed study table
    ``guidance_fine.csv`` (the study runs for an hour: ``experiments/study_guidance.py``); fast: the tiny
    test grid is run."""
    from ._io import read_csv
    from .guidance import GuidanceConfig, plot_where_it_helps, study_guidance

    if fast:
        rows = study_guidance(GuidanceConfig.fast())
    else:
        path = _study_csv(out_dir, "guidance_fine.csv")
        if path is None:
            raise FileNotFoundError("guidance_fine.csv: run `python experiments/study_guidance.py` first (the "
                                    "guidance study's fine pass writes it into paper_figures/)")
        rows = read_csv(path)
    return plot_where_it_helps(rows, out_dir, "guidance_where.png")


def fig_guidance_theory(out_dir, fast: bool = False) -> list[Path]:
    """07: theory beside outcome — each directional statistic per layer group / step window against the paired
    outcome of guiding only there. Full: re-plotted from ``guidance_theory_points.csv`` and
    ``guidance_theory_correlation.csv``; fast: a tiny ablation of the digits DiT."""
    from ._io import read_csv
    from .guidance import PAPER
    from .guidance_theory import plot_theory_outcome, study_guidance_theory

    if fast:
        res = study_guidance_theory("dit-digits", PAPER, None, steps=(1,), seeds=(0, 1), n_prompts=20,
                                    capture_prompts=2, tokens=8)
        points, corr = res["points"], res["correlations"]
    else:
        pp, cp = _study_csv(out_dir, "guidance_theory_points.csv"), _study_csv(out_dir, "guidance_theory_correlation.csv")
        if pp is None or cp is None:
            raise FileNotFoundError("guidance_theory_points.csv: run `python experiments/study_guidance.py` first")
        points, corr = read_csv(pp), read_csv(cp)
    return [plot_theory_outcome(points, corr, Path(out_dir) / "guidance_theory.png")]


def fig_guidance_maps(out_dir, fast: bool = False) -> list[Path]:
    """07: attention maps over the canvas per prompt token (dense, entmax, GAG's effective weights) and the
    maps of c and of flipped tokens, from a capture of the main grid DiT (one prompt, CFG 2, 4 steps; the
    cross-attention of the middle block at the middle step)."""
    import tempfile

    from ..capture import ActivationStore, capture
    from ..models import sample
    from .guidance import _guided_layers, prompts_for
    from .maps import attention_maps, plot_attention_maps

    name = _grid_or_digits(fast)
    model, _ = _model(name, fast)
    layers = _guided_layers(model)
    layer = layers[len(layers) // 2]
    prompt = prompts_for(name, "in-distribution", 1, 0)
    steps = 2 if fast else 4
    with tempfile.TemporaryDirectory() as tmp:
        with torch.inference_mode(), capture(model, Path(tmp) / "s", via="adapters", layers=layer.replace(".", r"\.")):
            sample(model, prompt, steps=steps, cfg_scale=2.0, seed=0)
        rec = next(iter(ActivationStore(Path(tmp) / "s").records(step=steps // 2, branch="cond")))
        maps = attention_maps(rec)
    title = f"{name}, prompt {prompt[0]!r}, {layer}, step {steps // 2} of {steps} (GAG lam 10, eta 15)"
    labels = None
    if "grid" in name:  # the prompt tokens in the order the sampler feeds them: one per (position, digit) pair
        from ..models.grid_data import GRID, NULL_TOKEN, layouts_to_tokens, prompts_to_layouts

        ids = layouts_to_tokens(prompts_to_layouts(prompt))[0].tolist()
        labels = ["null" if t == NULL_TOKEN else f"r{t // 10 // GRID}c{t // 10 % GRID}:{t % 10}" for t in ids]
    return [plot_attention_maps(maps, Path(out_dir) / "guidance_maps.png", labels, title=title)]


# ------------------------------------------------------------------------------------------------ the index
FIGURES = (
    # (function, files, notebook, what it shows)
    (fig_energy, ("01_energy_basins.png",), "01_hopfield_energy",
     "Hopfield energy contours, retrieval trajectories and basins for alpha = 1, 1.5, 2 (2-D, 4 patterns)"),
    (fig_beta_regimes, ("02_beta_regimes.png",), "02_beta_regimes",
     "one-step retrieval error of noisy digits vs beta (dense, entmax) against Theorem 5's bound; regime"),
    (fig_sparse_dense, ("03_sparse_dense.png",), "03_sparse_vs_dense",
     "majorization margin, ||Delta_par|| vs ||Delta_perp|| and the distribution of c (toy and digits)"),
    (fig_directional, ("04_directional_margins.png",), "04_directional_properties",
     "fraction of tokens where each directional property holds vs beta, and margin distributions"),
    (fig_anderson, ("05_anderson_aa1.png",), "05_anderson",
     "PLADIS as AA(1) (gamma = 1 - lambda), GAG's effective gamma, the AA-adaptive scale per token"),
    (fig_acceleration, ("acceleration_curves.png",), "05_anderson",
     "study_acceleration: distance to the attractor and energy per iteration, three beta regimes"),
    (fig_samples_grid, ("06_samples_grid.png",), "06_gag_real_model",
     "samples of the digits DiT at 4 steps with dense / PLADIS / GAG / AA-adaptive attention"),
    (fig_sampling, ("sampling_accuracy.png",), "06_gag_real_model",
     "study_sampling: judge accuracy vs Euler steps per method (95% CI over seeds)"),
    (fig_directional_store, ("directional_properties.png", "directional_sign.png", "directional_c.png"),
     "06_gag_real_model", "study_directional on a capture of the digits DiT: properties, sign question, c"),
    (fig_guidance_where, ("guidance_where.png",), "07_where_guidance_helps",
     "study_guidance: paired Delta exact / Delta Frechet of PLADIS, GAG, GAG+ vs dense over (lambda, steps), per "
     "model and CFG/APG weight"),
    (fig_guidance_theory, ("guidance_theory.png",), "07_where_guidance_helps",
     "theory beside outcome: c<0 rate, flip rate, cap activity, support, certificate coverage per layer group / "
     "step window vs the paired outcome of guiding only there"),
    (fig_guidance_maps, ("guidance_maps.png",), "07_where_guidance_helps",
     "attention maps over the canvas per prompt token (dense, entmax, GAG effective weights), maps of c and "
     "flipped tokens"),
)


def make_all(out_dir="paper_figures", fast: bool = False, only=None) -> list[Path]:
    """Regenerate every figure into ``out_dir`` and write ``out_dir/README.md`` (the index); returns the
    paths. ``only``: names of figure functions to run. The setting (full / ``--fast``), date and run time
    of each figure are kept in ``out_dir/index.json`` across runs, so a partial run (``only``) updates its
    own rows and the index still lists every figure with the command that made it."""
    import json

    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    known = {fn.__name__ for fn, *_ in FIGURES}
    unknown = sorted(set(only or ()) - known)
    if unknown:
        raise ValueError(f"only: unknown figure function(s) {unknown}; expected some of {sorted(known)}")
    index_path = out / "index.json"
    made = json.loads(index_path.read_text()) if index_path.exists() else {}
    paths = []
    with torch_threads(1):
        for fn, files, nb, what in FIGURES:
            if only and fn.__name__ not in only:
                continue
            t0 = time.perf_counter()
            paths += fn(out, fast)
            made[fn.__name__] = {"fast": fast, "seconds": round(time.perf_counter() - t0, 1),
                                 "date": time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime())}
    index_path.write_text(json.dumps(made, indent=1, sort_keys=True) + "\n")
    lines = [
        "# paper_figures",
        "",
        "Regenerate with `hopfield-gag figures [--fast]` (or `python -m hopfield_gag.cli figures`). Each figure "
        "is made by one function of `hopfield_gag.studies.figures`, which the notebook named below also calls; "
        "the last column says which setting made the file here.",
        "",
        "| figure | what it shows | function | notebook | made by |",
        "|---|---|---|---|---|",
    ]
    for fn, files, nb, what in FIGURES:
        m = made.get(fn.__name__)
        how = "not yet generated" if m is None else (
            f"`figures{' --fast' if m['fast'] else ''} --only {fn.__name__}`, {m['date']}, {m['seconds']} s")
        for f in files:
            lines.append(f"| [{f}]({f}) | {what} | `{fn.__name__}` | `notebooks/{nb}.ipynb` | {how} |")
    (out / "README.md").write_text("\n".join(lines) + "\n")
    return paths
