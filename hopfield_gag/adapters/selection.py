r"""Which layers and which steps: the one selection used by :func:`~hopfield_gag.adapters.apply_gag`,
:func:`~hopfield_gag.adapters.install_attention_fn`, the guiders and :func:`~hopfield_gag.capture.capture`
(diffusers-free).

``layers=`` (one meaning everywhere)
    - ``"auto"``: the architecture's rule (:data:`AUTO`; UNet down+up cross-attention as PLADIS, every
      joint layer of an MMDiT, every cross-attention layer of other diffusers models);
    - a string: the layers whose name, **or a dot-bounded leading part of it**, fully matches it as a
      regular expression: ``"blocks.1"`` selects every attention layer inside block 1 (``blocks.1.attn1``,
      ``blocks.1.attn2``) and never ``blocks.10``; ``r".*attn2"`` every cross-attention layer of a UNet;
    - a UNet block string ``"d2.2-9,m0,u0.4"`` (ComfyUI convention, :func:`parse_block_string`);
    - an int: an index into ``transformer_blocks``; a dict ``{"single_transformer_blocks": [0, 2]}``
      indexes any block list; a callable ``(name, module) -> bool``; a :class:`LayerInfo`; a list of these.
    Every selector must match something (else ``ValueError`` with close matches).

``steps=`` (one meaning everywhere)
    - ``None``: every step;
    - a **tuple** ``(start, stop)`` of numbers in [0, 1]: a window of the schedule; step ``i`` of ``N`` is
      selected when ``start <= i / N < stop`` (half-open; the last step has ``i / N < 1``, so ``stop = 1``
      keeps it): ``(0, 1)`` is every step, ``(0.5, 1.0)`` the second half;
    - an int, a list, a set or a ``range`` of ints: step indices (0-based) — ``[0, 1]`` or ``range(2)`` for
      the first two steps.

``sigmas=(low, high)``: steps whose noise level ``sigma`` lies in the closed interval ``[low, high]``.
"""
from __future__ import annotations

import difflib
import math
import re
from dataclasses import dataclass
from typing import Optional, Sequence

import torch

__all__ = ["resolve_model", "attention_modules", "static_kind", "LayerInfo", "select_layers", "select_names",
           "parse_block_string", "is_block_string", "StepSelection", "parse_steps", "parse_sigmas", "AUTO"]

#: architecture -> (kinds "auto" selects, optional name prefixes). Models outside diffusers may declare
#: their own rule as a ``hopfield_gag_auto_layers`` class attribute (the shipped models do).
AUTO = {
    "UNet2DConditionModel": (("cross",), ("down_blocks.", "up_blocks.")),  # PLADIS: up + down attn2, not mid
    "SD3Transformer2DModel": (("joint",), None),
    "FluxTransformer2DModel": (("joint",), None),
    "QwenImageTransformer2DModel": (("joint",), None),
}
#: the rule for any other diffusers model: every cross-attention layer
AUTO_DEFAULT = (("cross",), None)


# ---------------------------------------------------------------------------------------------------- models


def resolve_model(model_or_pipeline):
    """(denoiser model, pipeline or None): a pipeline's ``unet`` or ``transformer``, or the model itself."""
    if isinstance(model_or_pipeline, torch.nn.Module):
        return model_or_pipeline, None
    for attr in ("unet", "transformer"):
        try:
            m = getattr(model_or_pipeline, attr, None)
        except Exception:  # a modular pipeline without that component
            m = None
        if isinstance(m, torch.nn.Module):
            return m, model_or_pipeline
    raise TypeError(f"expected a diffusers model (torch.nn.Module) or a pipeline with a .unet or .transformer, "
                    f"got {type(model_or_pipeline).__name__}")


def attention_modules(model) -> list:
    """[(name, module, parent)] of every module carrying an attention processor, in model order."""
    mods = dict(model.named_modules())
    out = []
    for name, m in mods.items():
        if name and hasattr(m, "processor") and callable(getattr(m, "set_processor", None)):
            parent = mods.get(name.rpartition(".")[0]) if "." in name else model
            out.append((name, m, parent))
    return out


def static_kind(name: str, module, parent) -> str:
    """The kind of an attention module as its attributes tell it (the hook path re-checks each call's shapes):
    ``is_cross_attention``; text projections (``added_kv_proj_dim``/``add_k_proj``) or a Flux single block
    make it joint; a module without ``is_cross_attention`` named ``attn2`` is cross (the diffusers
    convention: ``attn1`` self, ``attn2`` cross)."""
    flag = getattr(module, "is_cross_attention", None)
    if flag:
        return "cross"
    if getattr(module, "added_kv_proj_dim", None) is not None or getattr(module, "add_k_proj", None) is not None:
        return "joint"
    if type(parent).__name__ == "FluxSingleTransformerBlock":  # text and image concatenated by the block
        return "joint"
    if flag is None and name.rpartition(".")[2] == "attn2":
        return "cross"
    return "self"


@dataclass(frozen=True)
class LayerInfo:
    """One attention module: its ``named_modules()`` name, kind, processor type, sizes, and the path an
    attention function would reach it by (``"processors"``, ``"hooks"`` or ``"none"``: see
    :func:`~hopfield_gag.adapters.install_attention_fn`)."""

    name: str
    kind: str
    processor: str
    supported: bool
    heads: int
    head_dim: int
    query_dim: int
    key_dim: int
    text_dim: Optional[int]
    path: str = "processors"

    def __str__(self):
        text = f" text_dim={self.text_dim}" if self.text_dim else ""
        return (f"{self.name:<60} {self.kind:<6} {self.path:<10} {self.processor:<34} heads={self.heads} "
                f"head_dim={self.head_dim} query_dim={self.query_dim} key_dim={self.key_dim}{text}")


# ---------------------------------------------------------------------------------------------------- layers


def _prefixes(name: str) -> list:
    parts = name.split(".")
    return [".".join(parts[:i]) for i in range(1, len(parts) + 1)]


def _match_string(spec: str, names: Sequence[str]) -> list:
    """Names of which the full name, or a dot-bounded leading part, fully matches ``spec`` as a regex."""
    spec = spec[: -len(".processor")] if spec.endswith(".processor") else spec
    try:
        rx = re.compile(spec)
    except re.error:
        rx = re.compile(re.escape(spec))
    return [n for n in names if any(rx.fullmatch(p) for p in _prefixes(n))]


def _no_match(spec, names) -> ValueError:
    pool = sorted({p for n in names for p in _prefixes(n)})
    close = difflib.get_close_matches(str(spec), pool, n=6, cutoff=0.5)
    hint = f"; close matches: {close}" if close else ""
    shown = ", ".join(list(names)[:12]) + (", ..." if len(names) > 12 else "")
    shown_spec = f"'{spec}'" if isinstance(spec, str) else repr(spec)
    return ValueError(f"layers: {shown_spec} matches no attention layer{hint}; available: [{shown}] "
                      f"(list_attention_layers(model) shows all names)")


_BLOCK_ITEM = r"[dmu]\d+(?:-\d+)?(?:\.\d+(?:-\d+)?)?"
_BLOCK_RE = re.compile(rf"^\s*{_BLOCK_ITEM}(?:\s*,\s*{_BLOCK_ITEM})*\s*$")


def is_block_string(spec) -> bool:
    """Whether ``spec`` is a UNet block string such as ``"d2.2-9,m0,u0.4"``."""
    return isinstance(spec, str) and bool(_BLOCK_RE.match(spec))


def _span(text: str, n: int, what: str) -> range:
    a, _, b = text.partition("-")
    lo, hi = int(a), int(b) if b else int(a)
    if not 0 <= lo <= hi < n:
        raise ValueError(f"layers: {what} {text} is out of range (this model has {n}: 0..{n - 1})")
    return range(lo, hi + 1)


def parse_block_string(spec: str, model) -> list:
    r"""Module prefixes selected by a UNet block string (the ComfyUI PLADIS/PAG node convention).

    Items are comma-separated: ``d`` (input/down), ``m`` (middle), ``u`` (output/up), then the index of a
    cross-attention *transformer* (``Transformer2DModel``) counted along that path in model order (SDXL:
    ``d0-d3``, ``m0``, ``u0-u5``; SD1.5: ``d0-d5``, ``m0``, ``u0-u8``), then optionally ``.i`` or ``.i-j``:
    its ``transformer_blocks`` (inclusive range). ``"d2.2-9,m0,u0.4"`` selects transformer blocks 2..9 of
    the third down transformer, all of the middle one, and block 4 of the first up transformer. Returns
    names like ``down_blocks.2.attentions.0.transformer_blocks.2`` (every attention layer inside is
    selected; a ``kinds`` filter keeps the cross-attention ones)."""
    paths = {"d": [], "m": [], "u": []}
    for key, attr in (("d", "down_blocks"), ("u", "up_blocks")):
        for i, blk in enumerate(getattr(model, attr, None) or []):
            for j, _ in enumerate(getattr(blk, "attentions", None) or []):
                paths[key].append(f"{attr}.{i}.attentions.{j}")
    mid = getattr(model, "mid_block", None)
    for j, _ in enumerate(getattr(mid, "attentions", None) or []):
        paths["m"].append(f"mid_block.attentions.{j}")
    if not any(paths.values()):
        raise ValueError(f"layers: the block string {spec!r} selects UNet transformers, but "
                         f"{type(model).__name__} has no down_blocks/mid_block/up_blocks attentions")
    out = []
    for item in spec.replace(" ", "").split(","):
        key, rest = item[0], item[1:]
        blocks, _, sub = rest.partition(".")
        for b in _span(blocks, len(paths[key]), f"{'down' if key == 'd' else 'mid' if key == 'm' else 'up'} "
                                                 f"transformer"):
            prefix = paths[key][b]
            tb = model.get_submodule(prefix + ".transformer_blocks")
            idx = _span(sub, len(tb), f"transformer_blocks of {prefix}") if sub else range(len(tb))
            out += [f"{prefix}.transformer_blocks.{t}" for t in idx]
    return out


def _index_hits(model, fqn: str, index: int, names: list) -> list:
    blocks = model
    for part in fqn.split("."):
        blocks = getattr(blocks, part, None)
    if not isinstance(blocks, torch.nn.ModuleList):
        raise ValueError(f"layers: an index selects a block of {type(model).__name__}.{fqn}, which it does not have")
    if not -len(blocks) <= index < len(blocks):
        raise ValueError(f"layers: index {index} is out of range for {fqn} ({len(blocks)} blocks)")
    prefix = f"{fqn}.{index % len(blocks)}."
    return [n for n in names if n.startswith(prefix)]


def select_names(model, names: Sequence[str], layers, kinds_of: Optional[dict] = None, kinds=None) -> list:
    """The names of ``names`` selected by an explicit ``layers`` selector (module docstring), in model order.

    ``kinds_of`` maps name -> kind; with ``kinds`` only layers of those kinds are kept, and a selector that
    matches only other kinds (or names one exactly) raises instead of selecting nothing silently."""
    names = list(names)
    specs = list(layers) if isinstance(layers, (list, tuple, set)) else [layers]
    if not specs:
        raise ValueError("layers is empty")
    chosen = set()
    for spec in specs:
        exact = False
        if isinstance(spec, LayerInfo):
            spec = spec.name
        if isinstance(spec, str):
            if is_block_string(spec):
                prefixes = parse_block_string(spec, model)
                hit = [n for n in names if any(n == p or n.startswith(p + ".") for p in prefixes)]
            else:
                stripped = spec[: -len(".processor")] if spec.endswith(".processor") else spec
                exact = stripped in names
                hit = _match_string(spec, names)
        elif isinstance(spec, bool):
            raise TypeError(f"layers: {spec!r} is not a layer selector")
        elif isinstance(spec, int):
            hit = _index_hits(model, "transformer_blocks", spec, names)
        elif isinstance(spec, dict):
            hit = []
            for fqn, idx in spec.items():
                for i in ([idx] if isinstance(idx, int) else idx):
                    hit += _index_hits(model, fqn, i, names)
        elif callable(spec):
            mods = dict(model.named_modules())
            hit = [n for n in names if spec(n, mods[n])]
            if not hit:
                raise ValueError(f"layers: the predicate {spec!r} selected no attention layer")
        else:
            raise TypeError(f"layers: expected 'auto', a name/regex, a UNet block string ('d2.2-9,m0'), an int "
                            f"index, a dict {{fqn: indices}}, a predicate (name, module) -> bool, or a list of "
                            f"these; got {type(spec).__name__}")
        if not hit:
            raise _no_match(spec, names)
        if kinds is not None and kinds_of is not None:
            kept = [n for n in hit if kinds_of[n] in kinds]
            if not kept or exact:
                bad = [n for n in hit if kinds_of[n] not in kinds]
                if bad:
                    raise ValueError(
                        f"layers: {spec!r} selects {bad} of kind {sorted({kinds_of[n] for n in bad})}, but this "
                        f"function acts on {tuple(kinds)} layers (a layer without text keys, e.g. SD3.5's image-only "
                        f"attn2, has nothing to guide; apply_gag(..., guide_self=True) guides self-attention)")
            hit = kept
        chosen.update(hit)
    return [n for n in names if n in chosen]


def select_layers(model, infos: Sequence[LayerInfo], layers, kinds=None) -> list:
    """Names of the :class:`LayerInfo` rows selected by ``layers`` (``"auto"`` or a selector), model order."""
    names = [i.name for i in infos]
    kinds_of = {i.name: i.kind for i in infos}
    if isinstance(layers, str) and layers == "auto":
        cls = type(model).__name__
        rule = AUTO.get(cls, getattr(type(model), "hopfield_gag_auto_layers", None))
        if rule is None:
            if not type(model).__module__.startswith("diffusers."):
                raise ValueError(f"layers='auto' has no rule for the architecture {cls}; known: {sorted(AUTO)} and "
                                 f"diffusers models with cross-attention. Pass layers= explicitly "
                                 f"(list_attention_layers(model) shows the choices)")
            rule = AUTO_DEFAULT
        auto_kinds, prefixes = rule
        chosen = [i.name for i in infos if i.kind in auto_kinds and (prefixes is None or i.name.startswith(prefixes))]
        if kinds is not None:
            chosen = [n for n in chosen if kinds_of[n] in kinds]
        if not chosen:
            raise ValueError(f"layers='auto' found no {auto_kinds} attention layer in {cls}; pass layers= "
                             f"explicitly (list_attention_layers(model) shows the choices)")
        return chosen
    return select_names(model, names, layers, kinds_of, kinds)


# ---------------------------------------------------------------------------------------------------- steps


@dataclass(frozen=True)
class StepSelection:
    """A parsed ``steps=``: ``window`` = (start, stop) fractions, or ``indices`` = a frozenset of step indices."""

    window: Optional[tuple] = None
    indices: Optional[frozenset] = None

    def selects(self, step: Optional[int], num_steps: Optional[int], where: str = "") -> bool:
        """Whether step ``step`` of ``num_steps`` is selected (module docstring for the rule)."""
        if step is None:
            raise RuntimeError(f"steps={self.describe()} needs the denoising step, which is unknown{where}: apply to "
                               f"the pipeline (not the bare model), or set the step by hand "
                               f"(installed(model)[0].state.set_step(i, num_steps), cap.set_step(i, n))")
        if self.indices is not None:
            return step in self.indices
        if num_steps is None:
            raise RuntimeError(f"steps={self.describe()} (a window of the schedule) needs the number of steps, "
                               f"unknown{where}: run through a pipeline, or give num_steps (state.set_step(i, n), "
                               f"capture(num_steps=...))")
        return self.window[0] <= step / num_steps < self.window[1]

    def describe(self):
        return self.window if self.window is not None else sorted(self.indices)

    def to_json(self):
        return list(self.window) if self.window is not None else sorted(self.indices)


def _real(x) -> bool:
    return isinstance(x, (int, float)) and not isinstance(x, bool) and math.isfinite(float(x))


def parse_steps(steps) -> Optional[StepSelection]:
    """Parse ``steps=`` (module docstring): None, a (start, stop) tuple window, or step indices."""
    if steps is None:
        return None
    if isinstance(steps, StepSelection):
        return steps
    if isinstance(steps, tuple) and len(steps) == 2:
        start, stop = steps
        for nm, x in (("start", start), ("stop", stop)):
            if not _real(x) or not 0.0 <= float(x) <= 1.0:
                raise ValueError(f"steps window {nm}={x!r} must be a fraction in [0, 1] (steps=(start, stop) is a "
                                 f"window of the schedule; give step indices as a list or range, e.g. "
                                 f"steps=[2, 5] or range(2, 5))")
        if float(start) > float(stop):
            raise ValueError(f"steps window start={start} must be <= stop={stop}")
        return StepSelection(window=(float(start), float(stop)))
    if isinstance(steps, int) and not isinstance(steps, bool):
        steps = [steps]
    if isinstance(steps, (str, bytes, dict)):
        steps = None
    try:
        idx = list(steps)
    except TypeError:
        idx = None
    if not idx or not all(isinstance(s, int) and not isinstance(s, bool) and s >= 0 for s in idx):
        raise ValueError(f"steps must be None, a (start, stop) tuple of fractions in [0, 1], or non-negative int "
                         f"step indices (an int, list, set or range); got {steps!r}")
    return StepSelection(indices=frozenset(idx))


def parse_sigmas(sigmas) -> Optional[tuple]:
    """Parse ``sigmas=(low, high)``: finite, ``0 <= low <= high``; a step is selected when low <= sigma <= high."""
    if sigmas is None:
        return None
    try:
        ok = len(sigmas) == 2 and all(_real(x) for x in sigmas)
    except TypeError:
        ok = False
    if not ok or not 0.0 <= float(sigmas[0]) <= float(sigmas[1]):
        raise ValueError(f"sigmas must be a pair (low, high) of finite numbers with 0 <= low <= high, got {sigmas!r}")
    return float(sigmas[0]), float(sigmas[1])
