r"""``study_guidance``: where does attention guidance help? The paper's claim mapped over models, step counts,
CFG/APG weights and the attention methods' parameters, with paired comparisons against dense attention.

The paper (GAG, arXiv 2603.02531) claims that GAG improves text-image alignment and detail of few-step and
step-distilled models, composed with CFG and APG. This study measures, for each

* model (the grid models of :mod:`hopfield_gag.models` — DiT, UNet, SD3-style MMDiT, the under-trained DiT
  and the few-step student — and the digit models as a control),
* number of Euler steps :math:`N`,
* sampler guidance ``cfg`` (:math:`v_u + w(v_c - v_u)`, :math:`w = 1` is no guidance) or ``apg``
  (:class:`~hopfield_gag.studies.apg.APG`) with weight :math:`w`,
* attention variant (:class:`Variant`: dense; PLADIS :math:`\lambda`; GAG :math:`\lambda,\eta,\zeta`, with
  :math:`\eta` either absolute or :math:`\kappa\,m_\ell` where :math:`m_\ell` is layer :math:`\ell`'s median
  :math:`\lVert s\rVert` on a calibration batch; the one-sided rule ``gag+``; AA-adaptive; a step window; a
  layer group; a theory-driven rule),

the judge's metrics on ``n_prompts`` prompts per seed and prompt split, and **paired** differences to dense:
every variant of a seed samples the *same prompts from the same initial noise* (the sampler's noise is a
function of the seed only; the study records a fingerprint of the noise each run actually used, column
``noise_fp``), so for a metric :math:`M` the per-seed difference :math:`\delta_s = M_s(\text{variant}) -
M_s(\text{dense})` removes the prompt and noise variance, and the reported interval is the Student-t interval
of the mean of :math:`\delta_s` over seeds (:func:`~hopfield_gag.studies.sampling.mean_ci`).

Metrics (per seed, over the batch; :meth:`hopfield_gag.models.grid_judge.GridJudge.evaluate` for the grid
models): ``cell_acc`` (fraction of the 9 cells read right; digit models: accuracy), ``exact`` (fraction of
canvases whose every cell is right; digit models: accuracy), ``misplaced`` (cells reading a digit the prompt
asks for at another cell: the binding failure; digit models: empty), ``fd_cells`` (Fréchet distance of the
judge's cell features to real held-out digits), ``fd_canvas`` (Fréchet distance of canvas features to real
canvases of the same prompts; digit models: empty), ``sharp`` (the reader's mean confidence on requested
cells) and ``nn_dist`` (mean L2 distance of each requested cell to its nearest real digit) — the realism
measures that catch blurred averages still read as the right digit — ``div`` (diversity), ``time_ratio``
(wall time over dense's, back to back in one process).

Map-reduce over ``(model, seed)`` shards (:mod:`.mapreduce`): runnable on one core, a process pool or Dask,
with tables identical across schedulers.

CSV columns (:data:`GUIDANCE_COLUMNS`): the key ``model, split, steps, guidance, w, variant``, the variant's
parameters ``family, lam, eta, kappa, zeta, window, layers, rule``, ``seeds, n_images, noise_fp,
prompt_fp``, then per metric ``M_mean, M_ci`` and per paired difference ``dM_mean, dM_ci`` (variant minus
dense; empty for dense itself).
"""
from __future__ import annotations

import hashlib
import math
import time
from dataclasses import dataclass, field, replace
from typing import Iterable

import numpy as np
import torch

from .mapreduce import Stats, run_study, torch_threads
from .sampling import mean_ci
from ._io import save_figure

__all__ = [
    "Variant", "GuidanceConfig", "study_guidance", "GUIDANCE_COLUMNS", "METRICS", "WINDOWS",
    "full_variant_grid", "coarse_variants", "prune_variants", "calibrate", "GuidedVariant", "layer_groups",
    "plot_where_it_helps", "headline", "PLAN",
]

METRICS = ("cell_acc", "exact", "misplaced", "fd_cells", "fd_canvas", "sharp", "nn_dist", "div", "time_ratio")
DELTA_METRICS = ("cell_acc", "exact", "misplaced", "fd_cells", "fd_canvas", "sharp", "nn_dist", "div")
WINDOWS = {"all": None, "first60": (0.0, 0.6), "last40": (0.6, 1.0)}
RULES = ("", "cert", "c+layers")
GUIDANCE_COLUMNS = (
    ("model", "split", "steps", "guidance", "w", "variant", "family", "lam", "eta", "kappa", "zeta", "window",
     "layers", "rule", "seeds", "n_images", "noise_fp", "prompt_fp")
    + tuple(c for m in METRICS for c in (f"{m}_mean", f"{m}_ci"))
    + tuple(c for m in DELTA_METRICS for c in (f"d{m}_mean", f"d{m}_ci"))
)
_UNIT = np.linspace(0.0, 1.0, 1001)
_SIGNED = np.linspace(-1.0, 1.0, 2001)
_WIDE = np.logspace(-4, 4, 801)
_SYM = np.concatenate([-np.logspace(4, -4, 801), [0.0], np.logspace(-4, 4, 801)])
_FP = np.linspace(0.0, 1.0, 3)  # fingerprints: only the exact sums are read


# ----------------------------------------------------------------------------------------------- variants
@dataclass(frozen=True)
class Variant:
    r"""One attention setting of the study.

    Attributes
    ----------
    method : {"dense", "pladis", "gag", "aa"}
    lam : PLADIS / GAG :math:`\lambda` (None for dense and aa)
    eta : GAG's absolute norm cap :math:`\eta` (None with ``kappa``)
    kappa : GAG's :math:`\eta_\ell = \kappa\,m_\ell`, :math:`m_\ell` the layer's median :math:`\lVert s\rVert`
        on the calibration batch (:func:`calibrate`)
    zeta : GAG's weight of :math:`\Delta_\perp`
    parallel : "paper" or "positive" (the one-sided rule, ``gag+``)
    window : key of :data:`WINDOWS` (guide steps :math:`i` with :math:`i/N` in the window)
    layers : "auto" (every cross/joint layer) or a tuple of layer names (a layer group)
    rule : "" (the variant as stated), "cert" (guide a token only where the sharp certificate proves
        :math:`c \ge 0`, :func:`hopfield_gag.parallel_certificate_sharp`; elsewhere dense) or "c+layers"
        (guide only the layers whose calibration :math:`P(c<0)` is at most the median over layers)
    group : display name of ``layers`` ("" for auto)
    """

    method: str = "dense"
    lam: float | None = None
    eta: float | None = None
    kappa: float | None = None
    zeta: float = 0.0
    parallel: str = "paper"
    window: str = "all"
    layers: tuple | str = "auto"
    rule: str = ""
    group: str = ""

    def __post_init__(self):
        if self.method not in ("dense", "pladis", "gag", "aa"):
            raise ValueError(f"method: expected dense, pladis, gag or aa, got {self.method!r}")
        if self.window not in WINDOWS:
            raise ValueError(f"window: expected one of {tuple(WINDOWS)}, got {self.window!r}")
        if self.rule not in RULES:
            raise ValueError(f"rule: expected one of {RULES}, got {self.rule!r}")
        if self.method == "gag" and (self.eta is None) == (self.kappa is None):
            raise ValueError("a gag variant needs exactly one of eta (absolute) and kappa (eta = kappa * m)")
        if self.method in ("pladis", "gag") and self.lam is None:
            raise ValueError(f"a {self.method} variant needs lam")

    @property
    def family(self) -> str:
        return "gag+" if self.method == "gag" and self.parallel == "positive" else self.method

    @property
    def name(self) -> str:
        """Short unique label, e.g. ``gag l10 e15 z0``, ``gag l5 k0.25 z0.3 @first60``, ``pladis l2``."""
        if self.method == "dense":
            base = "dense"
        elif self.method == "aa":
            base = "aa"
        elif self.method == "pladis":
            base = f"pladis l{self.lam:g}"
        else:
            cap = f"e{self.eta:g}" if self.eta is not None else f"k{self.kappa:g}"
            base = f"{self.family} l{self.lam:g} {cap} z{self.zeta:g}"
        if self.window != "all":
            base += f" @{self.window}"
        if self.group:
            base += f" [{self.group}]"
        if self.rule:
            base += f" <{self.rule}>"
        return base

    def params(self) -> dict:
        return {"family": self.family, "lam": "" if self.lam is None else self.lam,
                "eta": "" if self.eta is None else self.eta, "kappa": "" if self.kappa is None else self.kappa,
                "zeta": self.zeta, "window": self.window, "layers": self.group or "auto", "rule": self.rule}


DENSE = Variant()
PAPER = Variant("gag", lam=10.0, eta=15.0)


def full_variant_grid() -> list[Variant]:
    """The issue's full grid: dense; PLADIS :math:`\\lambda\\in\\{1.5,2,3\\}`; GAG :math:`\\lambda\\in\\{1,2,5,
    10\\}\\times\\eta\\in\\{15, 0.25m, m\\}\\times\\zeta\\in\\{0, 0.3\\}`; the one-sided rule at each
    :math:`(\\lambda, \\eta)` with :math:`\\zeta = 0`; AA-adaptive; all at every step (windows are a second
    pass on the kept variants). 3 + 24 + 12 + 2 = 41 settings."""
    out = [DENSE] + [Variant("pladis", lam=l) for l in (1.5, 2.0, 3.0)]
    for lam in (1.0, 2.0, 5.0, 10.0):
        for cap in ({"eta": 15.0}, {"kappa": 0.25}, {"kappa": 1.0}):
            for zeta in (0.0, 0.3):
                out.append(Variant("gag", lam=lam, zeta=zeta, **cap))
            out.append(Variant("gag", lam=lam, parallel="positive", **cap))
    out.append(Variant("aa"))
    return out


def coarse_variants() -> list[Variant]:
    """The coarse pass: the full grid (every attention setting), run on fewer models/steps/seeds."""
    return full_variant_grid()


# --------------------------------------------------------------------------------------- the study's plan
PLAN = r"""Coarse-to-fine plan (the full grid — 6 models x 5 step counts x 5 guidance settings x 41 attention
settings x 3 windows x 2 splits x 5 seeds, ~185k sampling runs — does not fit 2 shared CPU cores):

1. coarse: every attention setting of :func:`full_variant_grid` (41), main grid DiT and the under-trained DiT,
   steps {1, 4, 16}, CFG w in {1, 2}, in-distribution prompts, 2 seeds. Prune (:func:`prune_variants`):
   keep a setting if it helps somewhere with a paired interval excluding 0 (Delta exact up or Delta Frechet
   (cells) down), or it is the best of its family; always keep dense, PLADIS lambda = 2, the paper's GAG
   (lambda 10, eta 15, zeta 0) and its one-sided twin; cap the kept list at what the budget allows.
2. fine: the kept settings on every grid model (student: steps {1, 2}), steps {1, 2, 4, 8, 16}, CFG
   w in {1, 2, 4} and APG w in {2, 4}, both prompt splits, >= 5 seeds.
3. windows, layer groups, theory rules: the best GAG setting of pass 2 on the main grid DiT with step
   windows first 60% / last 40%, one layer group at a time, the certificate-gated rule and the
   c+layers rule; captures of the same runs for the per-layer x step theory statistics.
"""


def prune_variants(rows: list[dict], keep_per_family: int = 1, always: Iterable[Variant] = (),
                   max_kept: int | None = None) -> tuple[list, dict]:
    """The coarse-to-fine pruning rule (:data:`PLAN`). ``rows``: a coarse study table.

    A setting is kept if it is a reference (dense, PLADIS lambda = 2, the paper's GAG and its one-sided twin,
    ``always``); if it *helps* somewhere with a paired interval excluding 0 (Delta exact > 0 or Delta
    Frechet (cells) < 0); or if it is among the ``keep_per_family`` best of its family by the mean paired
    Delta exact, ties broken by the mean paired Delta Frechet. Settings that only hurt are pruned (the
    references show where guidance hurts). ``max_kept`` caps the list in that priority order. Returns (kept
    names in first-seen order, reasons {name: why kept or pruned})."""
    names = list(dict.fromkeys(r["variant"] for r in rows))
    always = {v.name for v in always} | {"dense", "pladis l2", PAPER.name,
                                         replace(PAPER, parallel="positive").name}
    reasons, priority = {}, {}
    by_family: dict = {}
    for n in names:
        rs = [r for r in rows if r["variant"] == n]
        fam = rs[0]["family"]
        helps = [r for r in rs if (_excludes_zero(r, "dexact") and _num(r["dexact_mean"]) > 0)
                 or (_excludes_zero(r, "dfd_cells") and _num(r["dfd_cells_mean"]) < 0)]
        hurts = [r for r in rs if (_excludes_zero(r, "dexact") and _num(r["dexact_mean"]) < 0)
                 or (_excludes_zero(r, "dfd_cells") and _num(r["dfd_cells_mean"]) > 0)]
        dx = [x for x in (_num(r["dexact_mean"]) for r in rs) if math.isfinite(x)]
        df = [x for x in (_num(r["dfd_cells_mean"]) for r in rs) if math.isfinite(x)]
        score = (round(float(np.mean(dx)), 4) if dx else -math.inf, -float(np.mean(df)) if df else -math.inf)
        if fam != "dense":
            by_family.setdefault(fam, []).append((score, n))
        if n in always:
            reasons[n], priority[n] = "kept: reference setting", 0
        elif helps:
            e = helps[0]
            reasons[n], priority[n] = f"kept: helps at {e['model']} steps {e['steps']} {e['guidance']} w={e['w']}", 1
        elif hurts:
            e = hurts[0]
            reasons[n] = f"pruned: only hurts (e.g. {e['model']} steps {e['steps']} {e['guidance']} w={e['w']})"
    for fam, lst in by_family.items():
        for _, n in sorted(lst, reverse=True)[:keep_per_family]:
            if n not in priority:
                reasons[n], priority[n] = f"kept: best of {fam} by mean Delta exact (then Delta Frechet)", 2
    kept = [n for n in names if n in priority]
    if max_kept is not None and len(kept) > max_kept:
        order = sorted(kept, key=lambda n: (priority[n], names.index(n)))
        for n in order[max_kept:]:
            reasons[n] = f"pruned: over the cap of {max_kept} settings ({reasons[n][6:]})"
        kept = [n for n in kept if n in set(order[:max_kept])]
    for n in names:
        reasons.setdefault(n, "pruned: no paired interval excluding 0 and not the best of its family")
    return kept, reasons


def _num(x) -> float:
    try:
        return float(x)
    except (TypeError, ValueError):
        return math.nan


def _excludes_zero(row, col) -> bool:
    m, c = _num(row.get(f"{col}_mean")), _num(row.get(f"{col}_ci"))
    return math.isfinite(m) and math.isfinite(c) and abs(m) > c


# ------------------------------------------------------------------------------------------------ config
@dataclass(frozen=True)
class GuidanceConfig:
    """Grid of one pass of the study (:data:`PLAN`).

    ``guidance``: (kind, w) pairs, kind "cfg" or "apg". ``steps_for``: per-model step counts overriding
    ``steps`` (the student samples in 1-2 steps). ``untrained=True`` builds freshly initialised models
    (plumbing check for tests, never a result). ``calibration``: (seed, prompts, steps) of the batch whose
    per-layer median ||s|| sets eta = kappa * m (its seed is outside the study's seeds).
    """

    models: tuple = ("dit-grid",)
    steps: tuple = (1, 2, 4, 8, 16)
    steps_for: tuple = (("dit-grid-student", (1, 2)),)
    guidance: tuple = (("cfg", 1.0), ("cfg", 2.0), ("cfg", 4.0), ("apg", 2.0), ("apg", 4.0))
    variants: tuple = tuple(full_variant_grid())
    splits: tuple = ("in-distribution", "held-out")
    seeds: tuple = (0, 1, 2, 3, 4)
    n_prompts: int = 32
    apg: tuple = (("eta", 0.0), ("momentum", -0.5), ("norm_threshold", 0.0))
    calibration: tuple = (10_000, 16, 4)
    threads: int = 1
    untrained: bool = False

    @staticmethod
    def fast() -> "GuidanceConfig":
        """The test setting: a tiny grid (control digit DiT, 1 step, CFG 2 and APG 2, four variants, 2 seeds)."""
        return GuidanceConfig(models=("dit-digits",), steps=(1,), guidance=(("cfg", 2.0), ("apg", 2.0)),
                              variants=(DENSE, Variant("pladis", lam=2.0), PAPER,
                                        Variant("gag", lam=2.0, kappa=1.0, window="first60")),
                              splits=("in-distribution",), seeds=(0, 1), n_prompts=20, calibration=(10_000, 4, 1))

    def steps_of(self, model: str) -> tuple:
        return dict(self.steps_for).get(model, self.steps)

    def splits_of(self, model: str) -> tuple:
        """The prompt splits of ``model``: the digit models have in-distribution prompts only."""
        return self.splits if _is_grid(model) else tuple(s for s in self.splits if s == "in-distribution")


# ------------------------------------------------------------------------------------------------ models
def _is_grid(name: str) -> bool:
    return "grid" in name


def _load(name: str, untrained: bool):
    from ..models import load_model
    from ..models.registry import build

    if untrained:
        torch.manual_seed(0)
        return build(name).eval().requires_grad_(False)
    return load_model(name)


def _load_judge(name: str):
    from ..models import load_judge

    return load_judge("digit-grid" if _is_grid(name) else "digits")


def prompts_for(model: str, split: str, n: int, seed: int):
    """The prompts of one seed and split: grid models, ``n`` prompts of
    :func:`hopfield_gag.models.grid_data.eval_prompts` (``split``, seeded by the study seed); digit models,
    digits ``0..9`` cycled (``split`` must be in-distribution)."""
    if _is_grid(model):
        from ..models.grid_data import eval_prompts

        return eval_prompts(split, n=n, seed=100_003 * (seed + 1))
    if split != "in-distribution":
        raise ValueError(f"split: the digit models have only 'in-distribution' prompts, got {split!r}")
    return [i % 10 for i in range(n)]


def _sample(model, prompts, steps, kind, w, seed, apg_params):
    from ..models import sample

    if kind == "cfg":
        return sample(model, prompts, steps=steps, cfg_scale=w, seed=seed)
    from .apg import APG

    return sample(model, prompts, steps=steps, cfg_scale=w, seed=seed, guider=APG(**dict(apg_params)))


def _score(name: str, judge, images, prompts, reference=None) -> dict:
    """Per-batch metrics (:data:`METRICS` except the time ratio). Grid models: the metrics of
    :meth:`~hopfield_gag.models.grid_judge.GridJudge.evaluate`, with the real reference canvases of the prompts
    (``reference``, the judge's default) built once per prompt set by the caller."""
    if _is_grid(name):
        a, r = judge.alignment(images, prompts), judge.realism(images, prompts)
        fd_canvas = math.nan
        if judge.canvas_net is not None:
            fd_canvas = judge.frechet_canvas(images, prompts, reference=reference)
        return {"cell_acc": a["cell_accuracy"], "exact": a["exact"], "misplaced": a["misplaced"],
                "fd_cells": judge.frechet_cells(images, prompts), "fd_canvas": fd_canvas,
                "sharp": r["confidence"], "nn_dist": r["nn_distance"], "div": judge.diversity(images, prompts)}
    labels = torch.as_tensor(prompts)
    acc = judge.accuracy(images, labels)
    with torch.inference_mode():
        from ..models.data import real_digits
        from ..models.judge import _check_images

        x = _check_images(images)
        conf = torch.softmax(judge.net(x), -1).max(-1).values.mean()
        nn_d = torch.cdist(x.flatten(1), real_digits()[0].flatten(1)).min(1).values.mean()
    return {"cell_acc": acc, "exact": acc, "misplaced": math.nan, "fd_cells": judge.frechet_distance(images),
            "fd_canvas": math.nan, "sharp": float(conf), "nn_dist": float(nn_d), "div": judge.diversity(images, labels)}


def _fingerprint(t: torch.Tensor) -> float:
    """A number in [0, 1) identifying a tensor's bytes (noise / prompt pairing check)."""
    h = hashlib.sha256(t.detach().contiguous().cpu().numpy().tobytes()).digest()
    return int.from_bytes(h[:6], "little") / float(1 << 48)


class _NoiseProbe:
    """Forward pre-hook recording the fingerprint of the first denoiser input of a run (the initial noise;
    under CFG the batch is [x; x] and the first half is kept)."""

    def __init__(self, model, batch: int):
        self.batch, self.fp = batch, None
        self.handle = model.register_forward_pre_hook(self, with_kwargs=True)

    def __call__(self, module, args, kwargs):
        if self.fp is None:
            x = args[0] if args else next(v for k, v in kwargs.items() if isinstance(v, torch.Tensor))
            self.fp = _fingerprint(x[: self.batch])

    def close(self):
        self.handle.remove()


# ------------------------------------------------------------------------------- calibration and layers
def _guided_layers(model) -> list[str]:
    """Names of the layers ``layers="auto"`` guides (cross / joint attention), in model order."""
    from ..adapters import install_attention_fn

    h = install_attention_fn(model, lambda call: call.dense(), "auto", kinds=("cross", "joint"))
    try:
        return list(h.layers)
    finally:
        h.remove()


def layer_groups(model, max_groups: int = 4) -> dict:
    """Groups of the guided layers for the per-group ablation: the leading two name components
    (``blocks.1``, ``down_blocks.0``, ``transformer_blocks.3``), merged into at most ``max_groups``
    contiguous groups (by depth). Returns {group name: tuple of layer names}."""
    layers = _guided_layers(model)
    keys = list(dict.fromkeys(".".join(n.split(".")[:2]) for n in layers))
    if len(keys) > max_groups:
        parts = np.array_split(np.arange(len(keys)), max_groups)
        merged = {}
        for p in parts:
            name = keys[p[0]] if len(p) == 1 else f"{keys[p[0]]}..{keys[p[-1]].split('.')[-1]}"
            merged[name] = {keys[i] for i in p}
        return {g: tuple(n for n in layers if ".".join(n.split(".")[:2]) in ks) for g, ks in merged.items()}
    return {k: tuple(n for n in layers if ".".join(n.split(".")[:2]) == k) for k in keys}


class _Calibration:
    """Attention function recording, per layer, ||s|| (entmax output) and c < 0 on a dense run."""

    def __init__(self):
        self.norms, self.neg = {}, {}

    def __call__(self, call):
        from .. import gag_attention
        from ..ops.combine import parallel_coefficient

        d = call.dense()
        q, k, v = call.q, call.k, call.v
        if call.kind == "joint" and call.text_keys is not None and call.image_queries is not None:
            q, k, v = q[..., call.image_queries, :], k[..., call.text_keys, :], v[..., call.text_keys, :]
            dd = gag_attention(q, k, v, scale=call.scale, method="dense").float()
        else:
            dd = d.float()
        s = gag_attention(q, k, v, scale=call.scale, method="sparse",
                          mask=call.mask if call.kind != "joint" else None).float()
        self.norms.setdefault(call.layer, []).append(s.norm(dim=-1).flatten())
        self.neg.setdefault(call.layer, []).append((parallel_coefficient(dd, s) < 0).float().flatten())
        return d


def calibrate(model, model_name: str, seed: int = 10_000, n_prompts: int = 16, steps: int = 4) -> dict:
    r"""Per guided layer: ``m`` = median :math:`\lVert s\rVert` over (token, head, step) of a dense run
    (CFG w = 1) on ``n_prompts`` in-distribution prompts, and ``c_neg`` = the fraction of (token, head, step)
    with :math:`c < 0`. Returns {layer: {"m": float, "c_neg": float}}."""
    from ..adapters import install_attention_fn
    from ..models import sample

    probe = _Calibration()
    h = install_attention_fn(model, probe, "auto", kinds=("cross", "joint"))
    try:
        with torch.inference_mode():
            sample(model, prompts_for(model_name, "in-distribution", n_prompts, seed), steps=steps, cfg_scale=1.0,
                   seed=seed)
    finally:
        h.remove()
    return {layer: {"m": float(torch.cat(probe.norms[layer]).median()),
                    "c_neg": float(torch.cat(probe.neg[layer]).mean())} for layer in probe.norms}


# ------------------------------------------------------------------------------------ attention function
class GuidedVariant:
    """The attention function of a :class:`Variant`: a :class:`hopfield_gag.adapters.GuidedAttention` per
    layer (per-layer :math:`\\eta = \\kappa m_\\ell` when ``kappa`` is set), the step window, and the
    variant's rule; layers without a function stay dense (``call.dense()``, bit-identical)."""

    def __init__(self, variant: Variant, calibration: dict | None = None):
        from ..adapters import GuidedAttention

        if variant.method == "dense":
            raise ValueError("variant: dense has no attention function (sample without one)")
        opts = {"method": variant.method, "steps": WINDOWS[variant.window]}
        if variant.method in ("pladis", "gag"):
            opts["lam"] = variant.lam
        if variant.method == "gag":
            opts.update(zeta=variant.zeta, parallel=variant.parallel)
        if variant.kappa is not None or variant.rule == "c+layers":
            if not calibration:
                raise ValueError(f"variant {variant.name!r} needs the calibration (calibrate())")
        self.variant = variant
        self.per_layer = {}
        self.default = None
        if variant.kappa is not None:
            for layer, st in calibration.items():
                # a layer whose s is (near) zero has nothing to cap: keep eta positive
                self.per_layer[layer] = GuidedAttention(eta=max(variant.kappa * st["m"], 1e-6), **opts)
        else:
            self.default = GuidedAttention(eta=15.0 if variant.eta is None else variant.eta, **opts)
        self.only = None
        if variant.rule == "c+layers":
            med = float(np.median([st["c_neg"] for st in calibration.values()]))
            self.only = {layer for layer, st in calibration.items() if st["c_neg"] <= med}

    def __call__(self, call):
        if self.only is not None and call.layer not in self.only:
            return call.dense()
        fn = self.per_layer.get(call.layer, self.default)
        if fn is None:
            return call.dense()
        if self.variant.rule != "cert":
            return fn(call)
        from .. import parallel_certificate_sharp

        guided = fn(call)
        if call.kind == "joint":  # the certificate is per cross-attention row; joint rows stay as guided
            return guided
        cert = parallel_certificate_sharp(call.q, call.k, call.v, call.scale, mask=call.mask)
        return torch.where((cert >= 0).unsqueeze(-1), guided, call.dense().to(guided.dtype))


def _install(model, variant: Variant, calibration):
    from ..adapters import install_attention_fn

    layers = "auto" if variant.layers == "auto" else list(variant.layers)
    return install_attention_fn(model, GuidedVariant(variant, calibration), layers, kinds=("cross", "joint"))


# ------------------------------------------------------------------------------------------------- map
class _GuidanceMap:
    """Picklable shard map: (model name, seed) -> Stats keyed by (model, split, steps, guidance, w, variant)."""

    def __init__(self, cfg: GuidanceConfig, calibrations: dict):
        self.cfg, self.calibrations = cfg, calibrations

    def __call__(self, shard) -> Stats:
        from ..adapters import preload

        preload()  # else the first guided run's time books the adapters' import
        name, seed = shard
        cfg = self.cfg
        model, judge = _load(name, cfg.untrained), _load_judge(name)
        cal = self.calibrations.get(name)
        variants = [v for v in cfg.variants if v.method != "dense"]
        stats = Stats()
        with torch_threads(cfg.threads), torch.inference_mode():
            for split in cfg.splits_of(name):
                prompts = prompts_for(name, split, cfg.n_prompts, seed)
                pfp = _fingerprint(torch.tensor([ord(ch) for ch in repr(prompts)]))
                reference = None
                if _is_grid(name):  # the judge's default reference, built once per prompt set
                    from ..models.grid_data import real_canvases

                    reference = real_canvases(prompts, seed=0, split="test")
                for steps in cfg.steps_of(name):
                    for kind, w in cfg.guidance:
                        base = None
                        for v in [DENSE] + variants:
                            key = (name, split, steps, kind, float(w), v.name)
                            handle = None if v.method == "dense" else _install(model, v, cal)
                            probe = _NoiseProbe(model, len(prompts))
                            try:
                                t0 = time.perf_counter()
                                images = _sample(model, prompts, steps, kind, w, seed, cfg.apg)
                                elapsed = time.perf_counter() - t0
                            finally:
                                probe.close()
                                if handle is not None:
                                    handle.remove()
                            scores = _score(name, judge, images, prompts, reference)
                            scores["time_ratio"] = elapsed / base["_time"] if base else 1.0
                            for m in METRICS:
                                stats.add(key, m, scores[m], _WIDE if m.startswith(("fd", "time", "nn")) else _UNIT)
                            stats.add(key, "noise_fp", probe.fp, _FP)
                            stats.add(key, "prompt_fp", pfp, _FP)
                            if base is None:
                                base = dict(scores, _time=elapsed)
                            else:
                                for m in DELTA_METRICS:
                                    stats.add(key, f"d{m}", scores[m] - base[m], _SYM)
        return stats


def _reduce(stats: Stats, cfg: GuidanceConfig) -> list[dict]:
    order = {v.name: i for i, v in enumerate((DENSE,) + tuple(v for v in cfg.variants if v.method != "dense"))}
    by_name = {v.name: v for v in cfg.variants}
    by_name["dense"] = DENSE
    split_order = {s: i for i, s in enumerate(cfg.splits)}
    guide_order = {(kind, float(w)): i for i, (kind, w) in enumerate(cfg.guidance)}
    rows = []
    for key in sorted(stats.groups, key=lambda k: (k[0], split_order[k[1]], k[2], guide_order[(k[3], k[4])],
                                                   order[k[5]])):
        h = stats.groups[key]
        v = by_name[key[5]]
        row = {"model": key[0], "split": key[1], "steps": key[2], "guidance": key[3], "w": key[4],
               "variant": key[5], **v.params(), "seeds": h["exact"].n, "n_images": cfg.n_prompts,
               "noise_fp": h["noise_fp"].total, "prompt_fp": h["prompt_fp"].total}
        for m in METRICS:
            row[f"{m}_mean"], row[f"{m}_ci"] = mean_ci(h[m]) if h[m].n else (math.nan, math.nan)
        for m in DELTA_METRICS:
            hd = h.get(f"d{m}")
            row[f"d{m}_mean"], row[f"d{m}_ci"] = mean_ci(hd) if hd is not None and hd.n else ("", "")
        rows.append(row)
    return rows


def study_guidance(cfg: GuidanceConfig | None = None, out_dir=None, *, name: str = "guidance",
                   scheduler: str = "sync", workers: int | None = None, progress: bool = False) -> list[dict]:
    """Run one pass of the guidance study; returns the table (:data:`GUIDANCE_COLUMNS`).

    The calibration (per-layer median ||s|| and P(c < 0), :func:`calibrate`) runs once per model before the
    map, for the variants that need it. With ``out_dir``: writes ``<name>.csv``, ``<name>_calibration.json``
    and the figure ``<name>_where.png`` (:func:`plot_where_it_helps`).
    """
    cfg = cfg or GuidanceConfig()
    needs_cal = any(v.kappa is not None or v.rule == "c+layers" for v in cfg.variants)
    calibrations = {}
    if needs_cal:
        seed, n, steps = cfg.calibration
        with torch_threads(cfg.threads):
            for m in cfg.models:
                calibrations[m] = calibrate(_load(m, cfg.untrained), m, seed, n, steps)
    shards = [(m, s) for m in cfg.models for s in cfg.seeds]
    rows = run_study(_GuidanceMap(cfg, calibrations), shards, lambda st: _reduce(st, cfg), scheduler=scheduler,
                     workers=workers, progress=progress, desc=name)
    if out_dir is not None:
        import json
        from pathlib import Path

        from ._io import write_csv

        write_csv(rows, GUIDANCE_COLUMNS, out_dir, f"{name}.csv")
        (Path(out_dir) / f"{name}_calibration.json").write_text(json.dumps(calibrations, indent=1) + "\n")
        plot_where_it_helps(rows, out_dir, f"{name}_where.png")
    return rows


# ---------------------------------------------------------------------------------------------- reading
def headline(rows: list[dict], metric: str = "dexact", splits=("in-distribution",)) -> list[dict]:
    """Best variant per (model, split, steps) against dense: the largest mean paired ``metric`` (``dexact``:
    higher is better; ``dfd_*``: lower is better) over every guidance setting, with its paired CI and the
    dense value it improves on, and the same row's other outcome (``other``: Delta Frechet (cells) for
    ``dexact``, else Delta exact) with its paired CI."""
    sign = -1.0 if metric.startswith("dfd") else 1.0
    out = []
    keys = list(dict.fromkeys((r["model"], r["split"], r["steps"]) for r in rows if r["split"] in splits))
    for model, split, steps in keys:
        cand = [r for r in rows if (r["model"], r["split"], r["steps"]) == (model, split, steps)
                and r["variant"] != "dense" and math.isfinite(_num(r[f"{metric}_mean"]))]
        if not cand:
            continue
        best = max(cand, key=lambda r: sign * _num(r[f"{metric}_mean"]))
        dense = next(r for r in rows if (r["model"], r["split"], r["steps"], r["guidance"], r["w"], r["variant"])
                     == (model, split, steps, best["guidance"], best["w"], "dense"))
        base = metric[1:]
        other = "dfd_cells" if metric != "dfd_cells" else "dexact"
        out.append({"model": model, "split": split, "steps": steps, "guidance": best["guidance"], "w": best["w"],
                    "variant": best["variant"], "dense": _num(dense[f"{base}_mean"]),
                    "delta": _num(best[f"{metric}_mean"]), "ci": _num(best[f"{metric}_ci"]),
                    "significant": _excludes_zero(best, metric), "other": other,
                    "other_dense": _num(dense[f"{other[1:]}_mean"]), "other_delta": _num(best[f"{other}_mean"]),
                    "other_ci": _num(best[f"{other}_ci"])})
    return out


def plot_where_it_helps(rows: list[dict], out_dir, filename: str = "guidance_where.png",
                        families=("pladis", "gag", "gag+")) -> list:
    r""""Where it helps": per model x (guidance, w) panel pair, heatmaps over (:math:`\lambda`, steps) of the
    paired :math:`\Delta` exact match and :math:`\Delta` Fréchet (cells) of the best setting of each family at
    that :math:`\lambda` (in-distribution prompts, windows "all", no layer group), cells with a paired 95%
    interval excluding 0 marked with a dot."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    from pathlib import Path

    sel = [r for r in rows if r["family"] in families and r["window"] == "all" and r["layers"] == "auto"
           and not r["rule"] and r["split"] == rows[0]["split"]]
    panels = list(dict.fromkeys((r["model"], r["guidance"], r["w"]) for r in sel))
    if not panels:
        return []
    models = list(dict.fromkeys(m for m, _, _ in panels))
    guides = list(dict.fromkeys((k, w) for _, k, w in panels))
    ncol = len(guides)
    # one row pair (Delta exact, Delta Frechet) per model, one column per sampler guidance setting
    fig, axes = plt.subplots(2 * len(models), ncol, figsize=(3.2 * ncol + 1, 2.9 * len(models) + 0.6), squeeze=False)
    for ax in axes.flat:
        ax.axis("off")
    for model, kind, w in panels:
        j = guides.index((kind, w))
        row0 = 2 * models.index(model)
        rs = [r for r in sel if (r["model"], r["guidance"], r["w"]) == (model, kind, w)]
        ylab = sorted({(r["family"], _num(r["lam"])) for r in rs}, key=lambda x: (families.index(x[0]), x[1]))
        steps = sorted({r["steps"] for r in rs})
        for i, (metric, cmap, better) in enumerate((("dexact", "RdBu", 1.0), ("dfd_cells", "RdBu_r", -1.0))):
            grid = np.full((len(ylab), len(steps)), np.nan)
            sig = np.zeros_like(grid, dtype=bool)
            for a, (fam, lam) in enumerate(ylab):
                for b, st in enumerate(steps):
                    cand = [r for r in rs if r["family"] == fam and _num(r["lam"]) == lam and r["steps"] == st
                            and math.isfinite(_num(r[f"{metric}_mean"]))]
                    if cand:
                        best = max(cand, key=lambda r: better * _num(r[f"{metric}_mean"]))
                        grid[a, b] = _num(best[f"{metric}_mean"])
                        sig[a, b] = _excludes_zero(best, metric)
            ax = axes[row0 + i, j]
            ax.axis("on")
            lim = np.nanmax(np.abs(grid)) if np.isfinite(grid).any() else 1.0
            im = ax.imshow(grid, cmap=cmap, vmin=-lim or -1, vmax=lim or 1, aspect="auto")
            for a, b in zip(*np.nonzero(np.isfinite(grid))):
                ax.text(b, a, f"{grid[a, b]:+.2g}", ha="center", va="center", fontsize=5,
                        fontweight="bold" if sig[a, b] else "normal")
            for a, b in zip(*np.nonzero(sig)):
                ax.plot(b, a + 0.3, "k.", ms=4)
            ax.set_xticks(range(len(steps)), steps, fontsize=7)
            ax.set_yticks(range(len(ylab)), [f"{f} {l:g}" for f, l in ylab], fontsize=6)
            ax.set_title(f"{model} {kind} w={w:g}\n{'Δ exact' if i == 0 else 'Δ Fréchet (cells)'}", fontsize=7)
            if i == 1:
                ax.set_xlabel("Euler steps", fontsize=7)
            fig.colorbar(im, ax=ax, fraction=0.046, pad=0.02).ax.tick_params(labelsize=6)
    fig.suptitle("method − dense, paired over seeds (dot: 95% CI excludes 0); best η/ζ per (family, λ)",
                 fontsize=8)
    fig.tight_layout()
    path = Path(out_dir) / filename
    path = save_figure(fig, path, dpi=110)
    return [path]
