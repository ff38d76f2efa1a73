r"""``study_acceleration``: how fast each update rule reaches its attractor on toy Hopfield problems.

Problem (one per seed and regime): :math:`N` patterns in :math:`\mathbb R^d` in ``clusters`` tight clusters
(so a metastable regime, an average over one cluster, exists between the global average and single-pattern
retrieval), and a query :math:`\xi_0` = pattern 0 + noise. The inverse temperature of each regime is chosen
from Ramsauer's sufficient conditions by :func:`hopfield_gag.beta_regime`:

* ``global``: the largest grid :math:`\beta` with :math:`\beta m_{\max}^2 < 1` (one global fixed point);
* ``single``: the smallest grid :math:`\beta` at which every pattern meets the single-pattern condition
  (isolated spheres);
* ``metastable``: the geometric mean of the two.

The measured metastability count :math:`k` (:func:`hopfield_gag.metastability_count` of the dense weights
at the dense fixed point) is reported, so the labels are checked, not assumed.

Methods (each a fixed-point map :math:`g` iterated by :class:`hopfield_gag.AndersonSolver`; depth
:math:`m = 0` is plain iteration):

=================  ====================================================================================
``dense``          :math:`T_d(\xi) = X^\top\mathrm{softmax}(\beta X\xi)` (:func:`hopfield_gag.retrieval_map`)
``sparse``         :math:`T_s`, the :math:`\alpha`-entmax retrieval (``alpha``)
``AA(m) dense``    Anderson AA(m) on :math:`T_d`; ``AA(m) sparse`` on :math:`T_s`
``pladis``         :math:`T_d + \lambda(T_s - T_d)` (:func:`hopfield_gag.gag_attention`, ``method="pladis"``)
``gag``            :func:`hopfield_gag.gag_map` (:math:`\lambda, \eta, \zeta` sweep)
``aa-adaptive``    :func:`hopfield_gag.gag_attention` ``method="aa"`` (per-state AA(1) scale)
=================  ====================================================================================

Per method: iterations until the residual :math:`\lVert g(\xi_t) - \xi_t\rVert_2 \le` ``tol``, whether it
converged, the distance of the final state to the target pattern and to the dense fixed point, and the dense
energy :func:`hopfield_gag.energy` there. The table is a map over (regime, seed) problems and an exact reduce
(:mod:`.mapreduce`).
"""
from __future__ import annotations

import math
from dataclasses import dataclass, field

import numpy as np
import torch

# public names only (the package root re-exports them wherever they live)
from .. import (
    AndersonSolver,
    AndersonStatus,
    beta_regime,
    energy,
    fixed_point,
    gag_attention,
    gag_map,
    metastability_count,
    retrieval_map,
    retrieval_weights,
)
from .mapreduce import Stats, run_study, torch_threads
from ._io import save_figure

__all__ = ["AccelerationConfig", "study_acceleration", "acceleration_problem", "acceleration_methods", "dense_fixed_point",
           "acceleration_trajectory", "ACCELERATION_COLUMNS"]

REGIMES = ("global", "metastable", "single")
ACCELERATION_COLUMNS = (
    "regime", "method", "beta", "n_problems", "converged_frac", "iters_median", "iters_mean", "iters_p90",
    "dist_target_median", "dist_dense_fp_median", "energy_median", "k_dense_median",
)
_LOG_EDGES = np.linspace(-16.0, 4.0, 201)  # log10 distances: 0.1-decade bins


@dataclass(frozen=True)
class AccelerationConfig:
    """Parameters of :func:`study_acceleration` (defaults = the full study; ``fast()`` for tests)."""

    d: int = 16
    n_patterns: int = 12
    clusters: int = 3
    spread: float = 0.15
    noise: float = 0.3
    alpha: float = 1.5
    tol: float = 1e-8
    max_iter: int = 200
    seeds: tuple = tuple(range(8))
    aa_depths: tuple = (1, 3, 5)
    pladis_lams: tuple = (1.5, 2.0)
    gag_grid: tuple = ((1.0, 15.0, 0.0), (2.0, 15.0, 0.0), (10.0, 15.0, 0.0), (10.0, 0.5, 0.0),
                       (2.0, 15.0, 1.0))  # (lambda, eta, zeta); paper default lambda=10, eta=15, zeta=0
    regimes: tuple = REGIMES

    @staticmethod
    def fast() -> "AccelerationConfig":
        return AccelerationConfig(seeds=(0,), max_iter=40, aa_depths=(3,), pladis_lams=(1.5,),
                                  gag_grid=((1.0, 15.0, 0.0), (10.0, 15.0, 0.0)))


def acceleration_problem(seed: int, regime: str, cfg: AccelerationConfig):
    """(patterns (N, d), xi0 (d,), beta, target index 0) for one seed and regime, float64."""
    if regime not in REGIMES:
        raise ValueError(f"regime: expected one of {REGIMES}, got {regime!r}")
    g = torch.Generator().manual_seed(seed)
    centers = torch.randn(cfg.clusters, cfg.d, generator=g, dtype=torch.float64)
    centers = centers / centers.norm(dim=-1, keepdim=True) * math.sqrt(cfg.d)
    members = centers.repeat_interleave(math.ceil(cfg.n_patterns / cfg.clusters), 0)[: cfg.n_patterns]
    X = members + cfg.spread * torch.randn(cfg.n_patterns, cfg.d, generator=g, dtype=torch.float64)
    xi0 = X[0] + cfg.noise * torch.randn(cfg.d, generator=g, dtype=torch.float64)
    return X, xi0, regime_beta(X, xi0, regime, cfg), 0


def dense_fixed_point(X: torch.Tensor, xi0: torch.Tensor, beta: float) -> torch.Tensor:
    """The dense attractor of ``xi0`` (:func:`hopfield_gag.fixed_point`, tol 1e-12)."""
    return fixed_point(xi0, X, beta=beta, alpha=1.0, tol=1e-12, max_iter=5000).state


def regime_beta(X: torch.Tensor, xi0: torch.Tensor, regime: str, cfg: AccelerationConfig) -> float:
    """The regime's inverse temperature on a log grid: ``global`` and ``single`` from Ramsauer's sufficient
    conditions (:func:`hopfield_gag.beta_regime`); ``metastable`` the grid value between them whose dense
    fixed point averages a cluster (measured :func:`hopfield_gag.metastability_count` closest to the
    cluster size)."""
    grid = np.logspace(-4, 4, 81)
    regimes = [beta_regime(X, float(b)) for b in grid]
    glob = [b for b, r in zip(grid, regimes) if bool(r.global_condition)]
    single = [b for b, r in zip(grid, regimes) if bool((r.regime == 2).all())]
    b_glob = float(max(glob)) if glob else float(grid[0])
    b_single = float(min(single)) if single else float(grid[-1])
    if regime == "global":
        return b_glob
    if regime == "single":
        return b_single
    size = cfg.n_patterns / cfg.clusters
    best, best_gap = math.sqrt(b_glob * b_single), math.inf
    for b in grid[(grid > b_glob) & (grid < b_single)]:
        k = int(metastability_count(retrieval_weights(dense_fixed_point(X, xi0, float(b)), X, beta=float(b))))
        if abs(k - size) < best_gap:
            best, best_gap = float(b), abs(k - size)
    return best


def acceleration_methods(X: torch.Tensor, beta: float, cfg: AccelerationConfig):
    """``[(name, depth m, map g)]``: every method as a fixed-point map on states (B, d)."""
    a = cfg.alpha
    dense = lambda x: retrieval_map(x, X, beta=beta, alpha=1.0)  # noqa: E731
    sparse = lambda x: retrieval_map(x, X, beta=beta, alpha=a)  # noqa: E731

    def attn(method, **kw):
        # a batch of states is a batch of queries against the patterns as keys and values
        def g(x):
            out = gag_attention(x[None, None], X[None, None], X[None, None], scale=beta, method=method,
                                alpha=a, **kw)
            return out[0, 0]
        return g

    methods = [("dense", 0, dense), ("sparse", 0, sparse)]
    methods += [(f"AA({m}) dense", m, dense) for m in cfg.aa_depths]
    methods += [(f"AA({m}) sparse", m, sparse) for m in cfg.aa_depths]
    methods += [(f"pladis lam={lam}", 0, attn("pladis", lam=lam)) for lam in cfg.pladis_lams]
    for lam, eta, zeta in cfg.gag_grid:
        methods.append((f"gag lam={lam} eta={eta} zeta={zeta}", 0,
                        lambda x, lam=lam, eta=eta, zeta=zeta: gag_map(x, X, beta, lam=lam, eta=eta,
                                                                       zeta=zeta, alpha=a)))
    methods.append(("aa-adaptive", 0, attn("aa")))
    return methods


def acceleration_trajectory(g, m: int, xi0: torch.Tensor, tol: float, max_iter: int):
    """Iterates (T+1, d) of AA(m) on ``g`` from ``xi0`` (m = 0: plain iteration) and the solver status."""
    solver = AndersonSolver(m=m, tol=tol, max_iter=max_iter)
    state = solver.init(g, xi0[None])
    xs = [state.x[0].clone()]
    while True:
        done, status = solver.terminate(state)
        if done:
            break
        state = solver.step(g, state)
        xs.append(state.x[0].clone())
    return torch.stack(xs), status


def _iterations_to_tol(traj: torch.Tensor, g, tol: float) -> int:
    """First t with ||g(x_t) - x_t|| <= tol (len(traj) if none): the residual at each iterate."""
    with torch.no_grad():
        res = (g(traj) - traj).norm(dim=-1)
    hit = torch.nonzero(res <= tol)
    return int(hit[0, 0]) if hit.numel() else int(traj.shape[0])


class _AccelerationMap:
    """Picklable shard map: one (regime, seed) problem -> Stats keyed by (regime, method)."""

    def __init__(self, cfg: AccelerationConfig):
        self.cfg = cfg

    def __call__(self, shard) -> Stats:
        with torch_threads(1):
            return self._map(shard)

    def _map(self, shard) -> Stats:
        regime, seed = shard
        cfg = self.cfg
        X, xi0, beta, target = acceleration_problem(seed, regime, cfg)
        fp = dense_fixed_point(X, xi0, beta)
        k = metastability_count(retrieval_weights(fp, X, beta=beta))
        stats = Stats()
        iter_edges = np.arange(-0.5, cfg.max_iter + 2.5)
        for name, m, g in acceleration_methods(X, beta, cfg):
            traj, status = acceleration_trajectory(g, m, xi0, cfg.tol, cfg.max_iter)
            key = (regime, name)
            finite = bool(torch.isfinite(traj[-1]).all())
            conv = status == AndersonStatus.CONVERGED
            stats.add(key, "iters", _iterations_to_tol(traj, g, cfg.tol) if conv else cfg.max_iter + 1,
                      iter_edges)
            stats.add(key, "converged", float(conv), [-0.5, 0.5, 1.5])
            stats.add(key, "beta", math.log10(beta), np.linspace(-4, 4, 801))
            last = traj[-1]
            for nm, val in (("dist_target", (last - X[target]).norm()), ("dist_dense_fp", (last - fp).norm())):
                stats.add(key, nm, torch.log10(val.clamp_min(1e-16)) if finite else math.inf, _LOG_EDGES)
            e = energy(last, X, beta) if finite else torch.tensor(math.inf)
            stats.add(key, "energy", e, np.linspace(-200, 200, 4001))
            stats.add(key, "k_dense", k.double(), np.arange(0.5, cfg.n_patterns + 1.5))
        return stats


def _reduce(stats: Stats, cfg: AccelerationConfig) -> list[dict]:
    rows = []
    names = [n for n, _, _ in acceleration_methods(torch.zeros(1, 1, dtype=torch.float64), 1.0, cfg)]
    for regime in cfg.regimes:
        for name in names:
            h = stats.groups[(regime, name)]
            conv = h["converged"]
            rows.append({
                "regime": regime, "method": name,
                "beta": 10 ** h["beta"].mean,
                "n_problems": conv.n,
                "converged_frac": conv.mean,
                "iters_median": h["iters"].quantile(0.5),
                "iters_mean": h["iters"].mean,
                "iters_p90": h["iters"].quantile(0.9),
                "dist_target_median": 10 ** h["dist_target"].quantile(0.5),
                "dist_dense_fp_median": 10 ** h["dist_dense_fp"].quantile(0.5),
                "energy_median": h["energy"].quantile(0.5),
                "k_dense_median": h["k_dense"].quantile(0.5),
            })
    return rows


def study_acceleration(cfg: AccelerationConfig | None = None, out_dir=None, *, scheduler: str = "sync",
                       workers: int | None = None, progress: bool = False) -> list[dict]:
    """Run the acceleration study; returns the table (rows with :data:`ACCELERATION_COLUMNS`).

    ``iters_*`` count iterations until the residual is <= ``cfg.tol``; a run that did not converge counts as
    ``max_iter + 1`` (so medians above ``max_iter`` mean "mostly not converged"). Quantiles are bin
    quantiles (:meth:`Histogram.quantile`, interpolated within one-iteration bins). With ``out_dir`` the
    table is written to ``acceleration.csv`` and the curves figure to ``acceleration_curves.png``.
    """
    cfg = cfg or AccelerationConfig()
    shards = [(r, s) for r in cfg.regimes for s in cfg.seeds]
    rows = run_study(_AccelerationMap(cfg), shards, lambda st: _reduce(st, cfg), scheduler=scheduler,
                     workers=workers, progress=progress, desc="acceleration")
    if out_dir is not None:
        from ._io import write_csv

        write_csv(rows, ACCELERATION_COLUMNS, out_dir, "acceleration.csv")
        plot_acceleration_curves(cfg, out_dir)
    return rows


def plot_acceleration_curves(cfg: AccelerationConfig, out_dir, seed: int = 0) -> list:
    """Distance to the attractor (the method's own final iterate) and dense energy per iteration, one
    column per regime, for seed ``seed``. Saves ``acceleration_curves.png``; returns the paths."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    from pathlib import Path

    with torch_threads(1):
        return _plot_curves(cfg, out_dir, seed, plt, Path)


def _plot_curves(cfg, out_dir, seed, plt, Path):
    fig, axes = plt.subplots(2, len(cfg.regimes), figsize=(4.2 * len(cfg.regimes), 6.5), squeeze=False)
    for j, regime in enumerate(cfg.regimes):
        X, xi0, beta, _ = acceleration_problem(seed, regime, cfg)
        for name, m, g in acceleration_methods(X, beta, cfg):
            traj, _ = acceleration_trajectory(g, m, xi0, cfg.tol, cfg.max_iter)
            if not torch.isfinite(traj).all():
                continue
            dist = (traj - traj[-1]).norm(dim=-1).clamp_min(1e-16)
            style = "-" if m == 0 else "--"
            axes[0, j].semilogy(dist.numpy(), style, label=name, lw=1.2)
            axes[1, j].plot(energy(traj, X, beta).numpy(), style, lw=1.2)
        axes[0, j].set_title(f"{regime} (beta={beta:.3g})")
        axes[1, j].set_xlabel("iteration")
    axes[0, 0].set_ylabel("||xi_t - xi_final||")
    axes[1, 0].set_ylabel("dense energy E(xi_t)")
    axes[0, -1].legend(fontsize=6, loc="upper right")
    fig.tight_layout()
    path = Path(out_dir) / "acceleration_curves.png"
    path = save_figure(fig, path, dpi=110)
    return [path]
