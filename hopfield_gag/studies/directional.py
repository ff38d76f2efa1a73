r"""``study_directional``: where the directional properties of ``THEORY.md`` hold on captured attention.

For every record of an :class:`hopfield_gag.capture.ActivationStore` (one attention call: q, k, v, scale,
optional mask) and every query token and head, the study evaluates the library's margins (a margin
:math:`\ge 0` means the property holds):

================  ==========================================================================================
``sharpen``       :func:`hopfield_gag.sharpening_margin` (entmax majorizes softmax)
``align_query``   :func:`hopfield_gag.query_alignment_margin` (key-space discrepancy along the query)
``parallel``      :func:`hopfield_gag.parallel_margin` (:math:`\cos(\Delta, s)`, so :math:`\ge 0 \iff c \ge 0`)
``descent``       :func:`hopfield_gag.descent_margin` (Hopfield reading :math:`v = k`; unmasked records only)
================  ==========================================================================================

and, from the same :func:`hopfield_gag.sparse_dense_discrepancy` (computed once per query chunk; every margin
above is one of its methods) and the GAG rule :func:`hopfield_gag.combine` on its outputs: the parallel
coefficient :math:`c`, the entmax support size, whether the GAG norm cap is active, and whether GAG *flips*
the output (:func:`hopfield_gag.flipped_tokens`: the output's
component along :math:`s` is negative; with :math:`\zeta = 0` and the cap inactive :math:`o = (1 + \lambda c)s`,
so this is :math:`c < -1/\lambda`). The sign question's certificates, :func:`hopfield_gag.parallel_certificate`
(transport, ``cert_*``) and :func:`hopfield_gag.parallel_certificate_sharp` (``sharp_*``), each
:math:`\ge 0` proving :math:`c \ge 0`, are scored by *coverage* (fraction of tokens certified) and
*soundness* (fraction of certified tokens with :math:`c \ge 0`; any value below 1 is a bug).

The study is a map over shards (:mod:`.mapreduce`): each shard is read alone with
:func:`hopfield_gag.capture.read_shard_file`, queries are processed in chunks (bounded memory), and the
statistics are fixed-bin histograms per (layer, step, branch), so quantiles are exact to one bin
(20 bins per decade of :math:`|x|` in :math:`[10^{-8}, 10^3]`, and 0 is an edge: the fractions
:math:`P(x \ge 0)` are exact).

CSV columns (``DIRECTIONAL_COLUMNS``): ``layer, step, branch, tokens``; per property P in
(sharpen, align_query, parallel, descent): ``frac_P`` (fraction of tokens with margin >= 0; empty if not
evaluated), ``P_q10, P_q50, P_q90`` (margin quantiles); ``c_q10, c_q50, c_q90`` (parallel coefficient),
``gain_q10, gain_q50, gain_q90`` (:math:`1 + \lambda c` at those quantiles; monotone in c),
``frac_c_neg`` (:math:`c < 0`), ``frac_flipped``, ``frac_cap_active``, ``support_mean``, ``support_q50``
(entmax support size), ``cert_coverage``, ``cert_soundness``, ``cert_violations`` (certified tokens with
c < 0, a count) and the same three for the sharp certificate (``sharp_*``).
"""
from __future__ import annotations

import math
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch

from ..ops.params import GagParams
from ..ops.combine import combine
from ..theory import sparse_dense_discrepancy
from .mapreduce import Stats, run_study, torch_threads

__all__ = ["DirectionalConfig", "study_directional", "DIRECTIONAL_COLUMNS", "PROPERTIES"]

PROPERTIES = ("sharpen", "align_query", "parallel", "descent")
_DECADES = np.logspace(-8, 3, 11 * 20 + 1)
MARGIN_EDGES = np.concatenate([-_DECADES[::-1], [0.0], _DECADES])
_BOOL = np.array([-0.5, 0.5, 1.5])
DIRECTIONAL_COLUMNS = (
    ("layer", "step", "branch", "tokens")
    + tuple(c for p in PROPERTIES for c in (f"frac_{p}", f"{p}_q10", f"{p}_q50", f"{p}_q90"))
    + ("c_q10", "c_q50", "c_q90", "gain_q10", "gain_q50", "gain_q90", "frac_c_neg", "frac_flipped",
       "frac_cap_active", "support_mean", "support_q50", "cert_coverage", "cert_soundness", "cert_violations",
       "sharp_coverage", "sharp_soundness", "sharp_violations")
)


@dataclass(frozen=True)
class DirectionalConfig:
    """GAG settings (paper defaults) and the query chunk bounding memory (score elements per chunk)."""

    lam: float = GagParams.lam
    eta: float = GagParams.eta
    zeta: float = 0.0
    alpha: float = 1.5
    max_score_elements: int = 1 << 22


class _DirectionalMap:
    """Picklable shard map: a :class:`~hopfield_gag.capture.ShardRef` -> Stats keyed by (layer, step, branch)."""

    def __init__(self, cfg: DirectionalConfig):
        self.cfg = cfg

    def __call__(self, shard) -> Stats:
        from ..capture import read_shard_file

        stats = Stats()
        with torch_threads(1), torch.no_grad():
            for rec in read_shard_file(shard):  # a ShardRef: size, header and SHA-256 checked before any use
                self._record(rec, stats)
        return stats

    def _record(self, rec, stats: Stats) -> None:
        cfg = self.cfg
        q, k, v = rec["q"], rec["k"], rec["v"]
        # theory in float64: the captured tensors are the exact inputs, so a margin below zero is a property
        # failing, not fp32 rounding of the margin itself (P-sharpen's partial sums still get n*eps below)
        q, k, v = q.double(), k.double(), v.double()
        mask = rec.get("mask")
        if mask is not None and mask.is_floating_point():
            mask = mask.double()
        scale = rec.get("scale")
        key = (str(rec.get("layer")), -1 if rec.get("step") is None else int(rec["step"]),
               str(rec.get("branch")))
        lq, lk = q.shape[-2], k.shape[-2]
        rows = max(1, int(np.prod(q.shape[:-2])))
        chunk = max(1, cfg.max_score_elements // (rows * lk))
        for i in range(0, lq, chunk):
            sl = slice(i, min(lq, i + chunk))
            qc = q[..., sl, :]
            mc = None if mask is None else torch.broadcast_to(mask, (*q.shape[:-2], lq, lk))[..., sl, :]
            # one discrepancy per chunk: every margin, certificate and the flip below are its methods (the
            # scores and both normalizers are computed once, not once per margin)
            disc = sparse_dense_discrepancy(qc, k, v, scale, cfg.alpha, mc)
            c = disc.parallel_coef
            stats.add(key, "c", c, MARGIN_EDGES)
            stats.add(key, "support", (disc.p_sparse > 0).sum(-1).double(), np.arange(-0.5, lk + 1.5))
            margins = {
                # partial sums of lk float64 probabilities: rounding below lk * eps (as the selfcheck)
                "sharpen": disc.sharpening_margin() + lk * torch.finfo(torch.float64).eps,
                "align_query": disc.query_alignment_margin(),
                "parallel": disc.parallel_margin(),
            }
            if mask is None and q.shape[-1] == k.shape[-1]:
                margins["descent"] = disc.descent_margin()
            for name, m in margins.items():
                stats.add(key, name, m, MARGIN_EDGES)
            combined = combine("gag", disc.dense, disc.sparse, lam=cfg.lam, eta=cfg.eta, zeta=cfg.zeta)
            flipped = disc.sign_flip_margin(cfg.lam, cfg.eta, cfg.zeta) < 0
            stats.add(key, "flipped", flipped.double(), _BOOL)
            stats.add(key, "cap_active", combined.cap_active.double(), _BOOL)
            bounds = disc.parallel_bounds()
            for prefix, cert in (("cert", disc.parallel_certificate()), ("sharp", bounds.sharp)):
                cert = cert >= 0
                stats.add(key, f"{prefix}_certified", cert.double(), _BOOL)
                stats.add(key, f"{prefix}_violation", (cert & (c < 0)).double(), _BOOL)


def _reduce(stats: Stats, cfg: DirectionalConfig) -> list[dict]:
    rows = []
    for key in sorted(stats.groups, key=lambda g: (g[0], g[1], g[2])):
        h = stats.groups[key]
        c = h["c"]
        row = {"layer": key[0], "step": key[1], "branch": key[2], "tokens": c.n}
        for p in PROPERTIES:
            hp = h.get(p)
            if hp is None or hp.n == 0:
                row.update({f"frac_{p}": "", f"{p}_q10": "", f"{p}_q50": "", f"{p}_q90": ""})
                continue
            row[f"frac_{p}"] = hp.fraction_at_least(0.0)
            for qn in (10, 50, 90):
                row[f"{p}_q{qn}"] = hp.quantile(qn / 100)
        for qn in (10, 50, 90):
            row[f"c_q{qn}"] = c.quantile(qn / 100)
            row[f"gain_q{qn}"] = 1.0 + cfg.lam * row[f"c_q{qn}"]
        row.update({
            "frac_c_neg": 1.0 - c.fraction_at_least(0.0),
            "frac_flipped": h["flipped"].mean,
            "frac_cap_active": h["cap_active"].mean,
            "support_mean": h["support"].mean,
            "support_q50": h["support"].quantile(0.5),
        })
        for prefix in ("cert", "sharp"):
            certified = h[f"{prefix}_certified"]
            n_cert = int(round(certified.total))
            violations = int(round(h[f"{prefix}_violation"].total))
            row[f"{prefix}_coverage"] = certified.mean
            row[f"{prefix}_soundness"] = (n_cert - violations) / n_cert if n_cert else math.nan
            row[f"{prefix}_violations"] = violations
        rows.append(row)
    return rows


def study_directional(store_path, out_dir=None, cfg: DirectionalConfig | None = None, *,
                      scheduler: str = "sync", workers: int | None = None, progress: bool = False) -> list[dict]:
    """Run the directional study on the store at ``store_path``; returns the table (one row per
    (layer, step, branch); columns :data:`DIRECTIONAL_COLUMNS`, documented in the module docstring).

    With ``out_dir``: writes ``directional.csv`` and the figures ``directional_properties.png`` (fraction of
    tokens where each property holds, per layer), ``directional_sign.png`` (the sign question per layer:
    c < 0, flipped, cap active, certificate coverage) and ``directional_c.png`` (c quantiles per step).
    """
    from ..capture import ActivationStore

    cfg = cfg or DirectionalConfig()
    store = ActivationStore(store_path)
    shards = [store.shard_ref(n, verify=True) for n in store.shards]
    rows = run_study(_DirectionalMap(cfg), shards, lambda st: _reduce(st, cfg), scheduler=scheduler,
                     workers=workers, progress=progress, desc="directional")
    if out_dir is not None:
        from ._io import write_csv

        write_csv(rows, DIRECTIONAL_COLUMNS, out_dir, "directional.csv")
        plot_directional(rows, out_dir)
    return rows


def _by_layer(rows, column):
    """Token-weighted mean of ``column`` per layer (over steps and branches), layers in first-seen order."""
    acc: dict = {}
    for r in rows:
        if r[column] == "" or r[column] is None or (isinstance(r[column], float) and math.isnan(r[column])):
            continue
        s = acc.setdefault(r["layer"], [0.0, 0])
        s[0] += float(r[column]) * r["tokens"]
        s[1] += r["tokens"]
    return {layer: s[0] / s[1] for layer, s in acc.items() if s[1]}


def plot_directional(rows, out_dir) -> list[Path]:
    """The three directional figures from the study's table; returns their paths."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    layers = list(dict.fromkeys(r["layer"] for r in rows))
    x = np.arange(len(layers))
    paths = []

    def bars(columns, labels, title, name, ylabel):
        fig, ax = plt.subplots(figsize=(max(5, 0.6 * len(layers) + 3), 3.6))
        w = 0.8 / len(columns)
        for j, (col, lab) in enumerate(zip(columns, labels)):
            d = _by_layer(rows, col)
            ax.bar(x + (j - (len(columns) - 1) / 2) * w, [d.get(l, np.nan) for l in layers], w, label=lab)
        ax.set_xticks(x, layers, rotation=60, ha="right", fontsize=7)
        ax.set_ylim(0, 1.02)
        ax.set_ylabel(ylabel)
        ax.set_title(title, fontsize=9)
        ax.legend(fontsize=7)
        fig.tight_layout()
        p = out / name
        fig.savefig(p, dpi=110)
        plt.close(fig)
        paths.append(p)

    bars([f"frac_{p}" for p in PROPERTIES], PROPERTIES, "fraction of tokens where each property holds",
         "directional_properties.png", "fraction")
    bars(["frac_c_neg", "frac_flipped", "frac_cap_active", "cert_coverage", "sharp_coverage"],
         ["c < 0", "GAG flips output", "cap active", "transport certificate covers", "sharp certificate covers"],
         "the sign question per layer (GAG lam, eta at paper defaults)", "directional_sign.png", "fraction")

    fig, ax = plt.subplots(figsize=(5.5, 3.6))
    for layer in layers:
        rs = sorted((r for r in rows if r["layer"] == layer and r["branch"] == rows[0]["branch"]),
                    key=lambda r: r["step"])
        steps = [r["step"] for r in rs]
        line = ax.plot(steps, [r["c_q50"] for r in rs], marker="o", ms=3, label=layer)[0]
        ax.fill_between(steps, [r["c_q10"] for r in rs], [r["c_q90"] for r in rs], alpha=0.15,
                        color=line.get_color())
    ax.axhline(0, color="k", lw=0.6)
    ax.set_yscale("symlog", linthresh=1e-3)
    ax.set_xlabel("step")
    ax.set_ylabel("parallel coefficient c (q10-q50-q90)")
    ax.set_title(f"c per step, branch {rows[0]['branch'] if rows else ''}", fontsize=9)
    if len(layers) <= 12:
        ax.legend(fontsize=6)
    fig.tight_layout()
    p = out / "directional_c.png"
    fig.savefig(p, dpi=110)
    plt.close(fig)
    paths.append(p)
    return paths
