r"""Attention maps over the canvas, per prompt token, from an activation store: dense, entmax and GAG, and the
maps of the parallel coefficient :math:`c` and of the tokens GAG flips.

For one captured cross-attention call (a record of :class:`hopfield_gag.capture.ActivationStore`: q
(B, H, Lq, D), k (B, H, Lk, D), v (B, H, Lk, Dv)) and one batch row, the image queries are laid out on their
:math:`\sqrt{L_q}\times\sqrt{L_q}` grid (the canvas at the layer's resolution) and, per prompt token
:math:`j`, the maps are

* dense: :math:`p_d = \mathrm{softmax}(\beta qk^\top)_j`, entmax: :math:`p_s = \alpha\text{-entmax}(\beta
  qk^\top)_j`;
* GAG: the *effective weights* :math:`p_g` with :math:`o_{\mathrm{GAG}} = p_g v` exactly. The rule
  :math:`o = s + \lambda f\,g`, :math:`g = \zeta(s - d) + (\tilde c - \zeta c)\,s`, :math:`f = \min(1,
  \eta/\lVert g\rVert)` is linear in :math:`(d, s) = (p_d v, p_s v)` once :math:`c` and :math:`f` are
  fixed, so :math:`p_g = p_s + \lambda f\,[\zeta(p_s - p_d) + (\tilde c - \zeta c)\,p_s]`
  (:func:`hopfield_gag.ops.combine.gag_difference` applied to the weights). :math:`p_g` sums to
  :math:`1 + \lambda f(\tilde c - \zeta c)` and may be negative (a flipped token);
* :math:`c` per query (mean over heads), and the fraction of heads where GAG flips the output
  (:func:`hopfield_gag.flipped_tokens` reading: the output's component along :math:`s` is negative).

Weights are averaged over heads for display. Theory in float64 (the captured tensors are the exact inputs).
Joint (MMDiT) records are read as cross-attention of the image queries over the text keys.
"""
from __future__ import annotations

import math
from dataclasses import dataclass
from pathlib import Path

import torch
from torch import Tensor

from ..ops.params import GagParams
from ._io import save_figure

__all__ = ["AttentionMaps", "attention_maps", "plot_attention_maps", "store_maps"]


@dataclass(frozen=True)
class AttentionMaps:
    """Maps of one record and batch row (side = canvas side at the layer's resolution).

    Attributes: ``dense``, ``entmax``, ``gag`` (Lk, side, side) head-mean weights per prompt token;
    ``c`` (side, side) head-mean parallel coefficient; ``flipped`` (side, side) fraction of heads flipped;
    ``layer``, ``step``, ``branch``; ``gag_weights`` (H, Lq, Lk) the per-head effective GAG weights."""

    dense: Tensor
    entmax: Tensor
    gag: Tensor
    c: Tensor
    flipped: Tensor
    gag_weights: Tensor
    layer: str
    step: int | None
    branch: str | None


def _canvas(x: Tensor, side: int) -> Tensor:
    """(..., Lq) -> (..., side, side)."""
    return x.reshape(*x.shape[:-1], side, side)


def attention_maps(record: dict, *, row: int = 0, alpha: float = GagParams.alpha, lam: float = GagParams.lam,
                   eta: float | None = GagParams.eta,
                   zeta: float = 0.0, parallel: str = "paper") -> AttentionMaps:
    r"""The maps of batch row ``row`` of a store ``record`` (module docstring for the math).

    Raises ``ValueError`` when the record has no q/k/v, was captured with a query subsample
    (``query_index``: the canvas is incomplete), its image queries do not form a square grid, or ``row`` is
    out of range.
    """
    from .. import sparse_dense_discrepancy
    from ..ops.combine import combine, gag_difference

    for name in ("q", "k", "v"):
        if not isinstance(record.get(name), Tensor):
            raise ValueError(f"record: needs tensor {name!r} (capture with keep_qkv=True)")
    if record.get("query_index") is not None:
        raise ValueError("record: captured with a query subsample (tokens=...); maps need every query "
                         "(capture with tokens=None)")
    q, k, v = record["q"].double(), record["k"].double(), record["v"].double()
    if q.dim() != 4 or k.dim() != 4 or v.dim() != 4:
        raise ValueError(f"record: q, k, v must be (B, H, L, D), got {tuple(q.shape)}, {tuple(k.shape)}, "
                         f"{tuple(v.shape)}")
    if not 0 <= row < q.shape[0]:
        raise ValueError(f"row: expected an index in [0, {q.shape[0]}), got {row}")
    mask = record.get("mask")
    if record.get("kind") == "joint":
        iq, tk = record.get("image_queries"), record.get("text_keys")
        if not isinstance(iq, slice) or not isinstance(tk, slice):
            raise ValueError("record: a joint record needs the image_queries / text_keys slices")
        q, k, v, mask = q[..., iq, :], k[..., tk, :], v[..., tk, :], None
    q, k, v = q[row], k[row], v[row]
    if mask is not None:
        mask = mask.double() if mask.is_floating_point() else mask
        mask = torch.broadcast_to(mask, (record["q"].shape[0], *q.shape[:-1], k.shape[-2]))[row]
    lq = q.shape[-2]
    side = math.isqrt(lq)
    if side * side != lq:
        raise ValueError(f"record: {lq} image queries do not form a square canvas")
    disc = sparse_dense_discrepancy(q, k, v, record.get("scale"), alpha, mask)
    comb = combine("gag", disc.dense, disc.sparse, lam=lam, eta=eta, zeta=zeta, parallel=parallel)
    c = disc.parallel_coef
    g_w = gag_difference(disc.p_dense, disc.p_sparse, c, zeta, parallel)
    p_gag = disc.p_sparse + lam * comb.cap_factor.unsqueeze(-1) * g_w
    # flipped: the output's component along s is negative (with zeta = 0, no cap: 1 + lam c < 0)
    s_norm2 = (disc.sparse * disc.sparse).sum(-1)
    flipped = ((comb.output * disc.sparse).sum(-1) < 0) & (s_norm2 > 0)
    heads_mean = lambda x: x.mean(0)  # noqa: E731
    to_map = lambda p: _canvas(heads_mean(p).transpose(0, 1), side)  # (H, Lq, Lk) -> (Lk, side, side)  # noqa: E731
    return AttentionMaps(dense=to_map(disc.p_dense), entmax=to_map(disc.p_sparse), gag=to_map(p_gag),
                         c=_canvas(heads_mean(c), side), flipped=_canvas(heads_mean(flipped.double()), side),
                         gag_weights=p_gag, layer=str(record.get("layer")), step=record.get("step"),
                         branch=record.get("branch"))


def plot_attention_maps(maps: AttentionMaps, path, token_labels=None, title: str | None = None) -> Path:
    """One figure: rows dense / entmax / GAG weights per prompt token (columns), then c and the flipped
    fraction; returns the path written."""
    from .figures import _plt

    plt = _plt()
    lk = maps.dense.shape[0]
    labels = list(token_labels) if token_labels is not None else [f"token {j}" for j in range(lk)]
    if len(labels) != lk:
        raise ValueError(f"token_labels: expected {lk} labels, got {len(labels)}")
    ncol = max(lk, 2)
    fig, axes = plt.subplots(4, ncol, figsize=(1.25 * ncol + 0.8, 5.6), squeeze=False)
    vmax = float(max(maps.dense.max(), maps.entmax.max()))  # dense and entmax on one scale, GAG on its own
    gmax = float(maps.gag.abs().max()) or 1.0
    for i, (name, m) in enumerate((("dense", maps.dense), ("entmax", maps.entmax), ("GAG", maps.gag))):
        for j in range(ncol):
            ax = axes[i, j]
            ax.set_xticks([])
            ax.set_yticks([])
            if j >= lk:
                ax.axis("off")
                continue
            ax.imshow(m[j].numpy(), cmap="RdBu_r" if name == "GAG" else "viridis",
                      vmin=-gmax if name == "GAG" else 0, vmax=gmax if name == "GAG" else vmax)
            if i == 0:
                ax.set_title(labels[j], fontsize=7)
        axes[i, 0].set_ylabel(f"{name}\n(0..{vmax:.2f})" if name != "GAG" else f"GAG\n(±{gmax:.2f})", fontsize=7)
    cl = float(maps.c.abs().max()) or 1.0
    im = axes[3, 0].imshow(maps.c.numpy(), cmap="RdBu_r", vmin=-cl, vmax=cl)
    axes[3, 0].set_title("c (head mean)", fontsize=7)
    fig.colorbar(im, ax=axes[3, 0], fraction=0.046)
    im = axes[3, 1].imshow(maps.flipped.numpy(), cmap="Reds", vmin=0, vmax=1)
    axes[3, 1].set_title("flipped (frac. heads)", fontsize=7)
    fig.colorbar(im, ax=axes[3, 1], fraction=0.046)
    for j in range(ncol):
        axes[3, j].set_xticks([])
        axes[3, j].set_yticks([])
        if j >= 2:
            axes[3, j].axis("off")
    fig.suptitle(title or f"{maps.layer}, step {maps.step}, {maps.branch}", fontsize=8)
    fig.tight_layout()
    path = Path(path)
    path = save_figure(fig, path, dpi=100)
    return path


def _safe_name(s: str) -> str:
    return "".join(ch if ch.isalnum() or ch in "-_." else "_" for ch in s)


def store_maps(store_path, out_dir, *, layer=None, step=None, branch="auto", row: int = 0, max_records: int = 16,
               token_labels=None, **gag) -> list[Path]:
    """Maps of up to ``max_records`` cross/joint records of the store at ``store_path`` (filtered by ``layer``,
    ``step``, ``branch``: "auto" = "cond" when the store has CFG branches, else every record; None = every
    branch) into ``out_dir`` as
    ``maps_<layer>_s<step>_<branch>.png``; ``gag``: ``lam``, ``eta``, ``zeta``, ``alpha``, ``parallel`` of
    :func:`attention_maps`. Self-attention records are skipped. Returns the paths."""
    from ..capture import ActivationStore

    if not isinstance(max_records, int) or max_records < 1:
        raise ValueError(f"max_records: expected a positive int, got {max_records!r}")
    store = ActivationStore(store_path)
    branches = list(store.manifest.get("branches") or [])
    if branch == "auto":
        branch = "cond" if "cond" in branches else None
    if branch is not None and branch not in branches:
        raise ValueError(f"branch: {branch!r} not in this store; its branches: {store.manifest.get('branches')}")
    out = Path(out_dir)
    paths = []
    for rec in store.records(layer=layer, step=step, branch=branch):
        if rec.get("kind") not in ("cross", "joint"):
            continue
        maps = attention_maps(rec, row=row, **gag)
        name = f"maps_{_safe_name(maps.layer)}_s{maps.step}_{maps.branch}.png"
        paths.append(plot_attention_maps(maps, out / name, token_labels))
        if len(paths) >= max_records:
            break
    if not paths:
        raise ValueError(f"no cross/joint-attention record matches layer={layer!r}, step={step!r}, branch={branch!r}")
    return paths
