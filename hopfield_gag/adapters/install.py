r"""Install an attention function into a diffusers model: layer listing and selection, the shared step /
branch state, and a handle that restores the original processors.

``install_attention_fn(model_or_pipeline, fn, layers="auto")`` replaces the processor of each selected
attention module by the adapter of its stock processor type (:mod:`.processors`), all sharing one
:class:`AttentionState` and one function ``fn``; nothing else in the model changes. The state is kept
current by a diffusers ``ModelHook`` on the denoiser:

- **step / num_steps / timestep / sigma**: at each denoiser call the hook looks the ``timestep`` argument up
  in ``pipeline.scheduler.timesteps`` (also ``timestep * 1000``, since Flux and Qwen pass ``t / 1000``).
  This is automatic when a *pipeline* is passed and its loop iterates ``scheduler.timesteps`` and passes
  that value to the denoiser: StableDiffusion(XL)Pipeline, StableDiffusion3Pipeline, FluxPipeline,
  QwenImagePipeline (checked in the tests for SD and Flux). With a bare model, or a pipeline that does
  neither, set ``handle.state.set_step(i, n)`` yourself or pass ``callback_on_step_end=handle.step_callback``.
- **branch per batch row**: Flux and Qwen pipelines wrap each call in ``transformer.cache_context("cond" |
  "uncond")``; the hook receives that context (it is a stateful diffusers hook) and marks every row.
  SD/SDXL/SD3 pipelines batch [uncond, cond] when ``pipeline.do_classifier_free_guidance``; the hook marks
  the first half "uncond" and the second "cond" (and every row "cond" without CFG). PAG pipelines
  ([uncond, cond, perturbed]) are not labelled, so ``branches="cond"`` raises there instead of guessing.
"""
from __future__ import annotations

import difflib
import re
from dataclasses import dataclass
from typing import Any, Callable, Optional

import torch

__all__ = ["AttentionState", "AttentionHandle", "LayerInfo", "install_attention_fn", "list_attention_layers",
           "format_attention_layers", "resolve_model"]

_MARK = "_hopfield_gag_handle"
_HOOK = "hopfield_gag_state"
# architecture -> which kinds "auto" selects, and an optional name filter
_AUTO = {
    "UNet2DConditionModel": (("cross",), ("down_blocks.", "up_blocks.")),  # PLADIS: up + down attn2, not mid
    "SD3Transformer2DModel": (("joint",), None),
    "FluxTransformer2DModel": (("joint",), None),
    "QwenImageTransformer2DModel": (("joint",), None),
}


# ---------------------------------------------------------------------------------------------------- state


@dataclass
class AttentionState:
    """Mutable state shared by every installed processor and read at each attention call.

    Attributes
    ----------
    step, num_steps : int or None
        Denoising step index (0-based) and schedule length.
    timestep, sigma : float or None
        The scheduler's timestep and sigma of this step.
    branch : str or None
        Name of the active ``cache_context`` ("cond"/"uncond") of the current denoiser call.
    batch_branches : tuple of str or None
        Per batch row, for pipelines that batch [uncond, cond].
    calls : int
        Denoiser calls seen by the hook.
    """

    step: Optional[int] = None
    num_steps: Optional[int] = None
    timestep: Optional[float] = None
    sigma: Optional[float] = None
    branch: Optional[str] = None
    batch_branches: Optional[tuple] = None
    calls: int = 0

    def set_step(self, step: int, num_steps: Optional[int] = None, timestep=None, sigma=None) -> None:
        """Set the step counter by hand (bare models, custom loops)."""
        if not isinstance(step, int) or step < 0:
            raise ValueError(f"step must be a non-negative int, got {step!r}")
        if num_steps is not None and (not isinstance(num_steps, int) or num_steps <= step):
            raise ValueError(f"num_steps must be an int > step={step}, got {num_steps!r}")
        self.step, self.num_steps = step, num_steps if num_steps is not None else self.num_steps
        self.timestep = None if timestep is None else float(timestep)
        self.sigma = None if sigma is None else float(sigma)

    def branches_for(self, batch: int) -> Optional[tuple]:
        """Branch of each of ``batch`` rows: the cache context's name, else the CFG batch layout."""
        if self.branch is not None:
            return (self.branch,) * batch
        if self.batch_branches is not None and len(self.batch_branches) == batch:
            return self.batch_branches
        return None


def _scalar(t) -> Optional[float]:
    if t is None:
        return None
    if isinstance(t, torch.Tensor):
        return float(t.detach().flatten()[0]) if t.numel() else None
    try:
        return float(t)
    except (TypeError, ValueError):
        return None


def _make_hook(state: AttentionState, pipeline):
    from diffusers.hooks.hooks import ModelHook, StateManager

    class _ContextSink(StateManager):
        """Receives ``cache_context`` (diffusers calls ``set_context`` on stateful hooks' managers)."""

        def __init__(self):
            super().__init__(object)

        def set_context(self, context) -> None:
            self._context = context
            state.branch = None if context is None else context.name

    class _StateHook(ModelHook):
        _is_stateful = True

        def __init__(self):
            super().__init__()
            self.context = _ContextSink()

        def reset_state(self, module):
            return module

        def pre_forward(self, module, *args, **kwargs):
            state.calls += 1
            sample = args[0] if args else next((kwargs[n] for n in ("sample", "hidden_states") if n in kwargs), None)
            t = kwargs.get("timestep", args[1] if len(args) > 1 else None)
            _track_step(state, pipeline, _scalar(t))
            if pipeline is not None and isinstance(sample, torch.Tensor):
                try:
                    cfg = bool(getattr(pipeline, "do_classifier_free_guidance", False))
                except Exception:  # some pipelines compute it from attributes set later in __call__
                    cfg = False
                b = sample.shape[0]
                if getattr(pipeline, "do_perturbed_attention_guidance", False):
                    state.batch_branches = None  # PAG pipelines batch [uncond, cond, perturbed]: not labelled
                else:
                    state.batch_branches = (("uncond",) * (b // 2) + ("cond",) * (b // 2)) if cfg and b % 2 == 0 else ("cond",) * b
            return args, kwargs

    return _StateHook()


def _track_step(state: AttentionState, pipeline, t: Optional[float]) -> None:
    if t is None:
        return
    sched = getattr(pipeline, "scheduler", None) if pipeline is not None else None
    ts = getattr(sched, "timesteps", None)
    if not isinstance(ts, torch.Tensor) or ts.numel() == 0:
        state.timestep = t
        return
    tsf = ts.detach().double().cpu()
    for cand in (t, t * 1000.0):
        dist = (tsf - cand).abs()
        tol = 1e-3 * max(1.0, abs(cand))
        hits = (dist <= tol).nonzero().flatten().tolist()
        if hits:
            # repeated timesteps (2nd-order schedulers): prefer the scheduler's own index
            idx = getattr(sched, "step_index", None)
            j = idx if isinstance(idx, int) and idx in hits else hits[0]
            state.step, state.num_steps, state.timestep = j, len(tsf), float(tsf[j])
            sigmas = getattr(sched, "sigmas", None)
            state.sigma = float(sigmas[j]) if isinstance(sigmas, torch.Tensor) and sigmas.numel() > j else None
            return
    state.timestep = t


# ---------------------------------------------------------------------------------------------------- layers


@dataclass(frozen=True)
class LayerInfo:
    """One attention module: its ``named_modules()`` name, kind, stock processor type and sizes."""

    name: str
    kind: str
    processor: str
    supported: bool
    heads: int
    head_dim: int
    query_dim: int
    key_dim: int
    text_dim: Optional[int]

    def __str__(self):
        text = f" text_dim={self.text_dim}" if self.text_dim else ""
        flag = "" if self.supported else "  (unsupported processor)"
        return (f"{self.name:<60} {self.kind:<6} {self.processor:<34} heads={self.heads} head_dim={self.head_dim} "
                f"query_dim={self.query_dim} key_dim={self.key_dim}{text}{flag}")


def resolve_model(model_or_pipeline):
    """(denoiser model, pipeline or None): a pipeline's ``unet`` or ``transformer``, or the model itself."""
    if isinstance(model_or_pipeline, torch.nn.Module):
        return model_or_pipeline, None
    for attr in ("unet", "transformer"):
        m = getattr(model_or_pipeline, attr, None)
        if isinstance(m, torch.nn.Module):
            return m, model_or_pipeline
    raise TypeError(f"expected a diffusers model (torch.nn.Module) or a pipeline with a .unet or .transformer, "
                    f"got {type(model_or_pipeline).__name__}")


def _attention_modules(model):
    """[(name, module, parent)] of every module carrying an attention processor, in model order."""
    mods = dict(model.named_modules())
    out = []
    for name, m in mods.items():
        if name and hasattr(m, "processor") and callable(getattr(m, "set_processor", None)):
            parent = mods.get(name.rpartition(".")[0]) if "." in name else model
            out.append((name, m, parent))
    return out


def _original(proc):
    """The stock processor behind one of our adapters (listing an adapted model shows the stock type)."""
    return getattr(proc, "original", None) if hasattr(proc, "layer") and hasattr(proc, "fn") else proc


def _kind(module, parent) -> str:
    if getattr(module, "is_cross_attention", False):
        return "cross"
    if getattr(module, "added_kv_proj_dim", None) is not None or getattr(module, "add_k_proj", None) is not None:
        return "joint"
    if type(parent).__name__ == "FluxSingleTransformerBlock":  # text and image concatenated by the block
        return "joint"
    return "self"


def _info(name, module, parent) -> LayerInfo:
    from .processors import adapter_for

    proc = _original(module.processor)
    heads = int(getattr(module, "heads", 0))
    head_dim = int(getattr(module, "head_dim", 0) or (getattr(module, "inner_dim", 0) // max(heads, 1)))
    to_q, to_k, add_k = getattr(module, "to_q", None), getattr(module, "to_k", None), getattr(module, "add_k_proj", None)
    return LayerInfo(
        name=name, kind=_kind(module, parent), processor=type(proc).__name__, supported=adapter_for(proc) is not None,
        heads=heads, head_dim=head_dim,
        query_dim=int(getattr(to_q, "in_features", 0)), key_dim=int(getattr(to_k, "in_features", 0)),
        text_dim=int(add_k.in_features) if isinstance(add_k, torch.nn.Linear) else None,
    )


def list_attention_layers(model_or_pipeline) -> list:
    """Every attention module of the model as a :class:`LayerInfo` (name, kind cross/joint/self, processor
    type, heads, head_dim, query/key/text dims), in model order; ``print(format_attention_layers(model))``
    shows them as a table. The names are what ``layers=`` selects."""
    model, _ = resolve_model(model_or_pipeline)
    return [_info(n, m, p) for n, m, p in _attention_modules(model)]


def format_attention_layers(model_or_pipeline) -> str:
    """The table of :func:`list_attention_layers`, one line per layer."""
    return "\n".join(str(i) for i in list_attention_layers(model_or_pipeline))


def _prefixes(name: str) -> list:
    parts = name.split(".")
    return [".".join(parts[:i]) for i in range(1, len(parts) + 1)]


def _match_string(spec: str, names: list) -> list:
    """Names matched by ``spec``: the full name, or a dot-bounded leading part of it, matches ``spec`` as
    an anchored regex (so ``blocks.1`` never selects ``blocks.10``; ``transformer_blocks.1`` selects every
    attention module inside block 1)."""
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
    return ValueError(f"layers: {spec!r} matches no attention layer{hint} (list_attention_layers(model) shows all names)")


def _select(model, infos: list, layers, kinds) -> list:
    names = [i.name for i in infos]
    by_name = {i.name: i for i in infos}
    if isinstance(layers, str) and layers == "auto":
        cls = type(model).__name__
        # a model class outside diffusers may declare its own rule (the shipped models of hopfield_gag.models)
        rule = _AUTO.get(cls, getattr(type(model), "hopfield_gag_auto_layers", None))
        if rule is None:
            raise ValueError(f"layers='auto' has no rule for the architecture {cls}; supported: {sorted(_AUTO)}. "
                             f"Pass layers= explicitly (list_attention_layers(model) shows the choices)")
        auto_kinds, prefixes = rule
        chosen = [i.name for i in infos if i.kind in auto_kinds and (prefixes is None or i.name.startswith(prefixes))]
        if kinds is not None:
            chosen = [n for n in chosen if by_name[n].kind in kinds]
        if not chosen:
            raise ValueError(f"layers='auto' found no {auto_kinds} attention layer in {cls}")
        return chosen

    specs = list(layers) if isinstance(layers, (list, tuple, set)) else [layers]
    if not specs:
        raise ValueError("layers is empty")
    chosen = set()
    for spec in specs:
        exact = False
        if isinstance(spec, LayerInfo):
            spec = spec.name
        if isinstance(spec, str):
            stripped = spec[: -len(".processor")] if spec.endswith(".processor") else spec
            exact = stripped in by_name
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
            raise TypeError(f"layers: expected 'auto', a name/regex, an int index, a dict {{fqn: indices}}, a "
                            f"predicate (name, module) -> bool, or a list of these; got {type(spec).__name__}")
        if not hit:
            raise _no_match(spec, names)
        if kinds is not None:
            kept = [n for n in hit if by_name[n].kind in kinds]
            if not kept or exact:
                bad = [n for n in hit if by_name[n].kind not in kinds]
                if bad:
                    raise ValueError(
                        f"layers: {spec!r} selects {bad} of kind {sorted({by_name[n].kind for n in bad})}, but this "
                        f"function acts on {tuple(kinds)} layers (a layer without text keys, e.g. SD3.5's image-only "
                        f"attn2, has nothing to guide; apply_gag(..., guide_self=True) guides self-attention)")
            hit = kept
        chosen.update(hit)
    return [n for n in names if n in chosen]


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


# ---------------------------------------------------------------------------------------------------- handle


class AttentionHandle:
    """What :func:`install_attention_fn` returns.

    ``remove()`` (idempotent) puts the exact original processor objects back and removes the hooks; as a
    context manager the handle removes itself on exit, also when the body raises.

    Attributes
    ----------
    model : the denoiser; layers : list of selected module names; fn : the attention function;
    state : :class:`AttentionState`; processors : {name: adapter}.
    """

    def __init__(self, model, fn, layers, state, originals, processors, removers):
        self.model, self.fn, self.layers, self.state = model, fn, layers, state
        self._originals, self.processors, self._removers = originals, processors, removers
        self.removed = False

    def remove(self) -> None:
        if self.removed:
            return
        errors = []
        for name, (module, proc) in self._originals.items():
            try:
                module.set_processor(proc)
            except Exception as e:  # keep restoring the others
                errors.append(f"{name}: {e}")
        for r in self._removers:
            try:
                r()
            except Exception as e:
                errors.append(str(e))
        if getattr(self.model, _MARK, None) is self:
            delattr(self.model, _MARK)
        self.removed = True
        if errors:
            raise RuntimeError("restoring the original attention processors failed for: " + "; ".join(errors))

    def update(self, **params) -> None:
        """Change the function's parameters in place (``fn.update``): nothing is reinstalled."""
        upd = getattr(self.fn, "update", None)
        if upd is None:
            raise TypeError(f"{self.fn!r} has no update(**params)")
        upd(**params)

    def step_callback(self, pipeline, i, t, callback_kwargs):
        """``callback_on_step_end`` for pipelines the hook cannot follow: step ``i`` ended, the next is i+1."""
        n = getattr(pipeline, "num_timesteps", None)
        self.state.step = i + 1
        if isinstance(n, int):
            self.state.num_steps = n
        return callback_kwargs

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.remove()
        return False

    def __repr__(self):
        return f"AttentionHandle({type(self.model).__name__}, {len(self.layers)} layers, fn={self.fn!r}, removed={self.removed})"


def install_attention_fn(model_or_pipeline, fn: Callable[[Any], torch.Tensor], layers="auto", *, kinds=None,
                         state: Optional[AttentionState] = None) -> AttentionHandle:
    """Run ``fn(call: AttentionCall) -> Tensor (B, H, Lq, Dv)`` inside the selected attention layers.

    Parameters
    ----------
    model_or_pipeline : a diffusers denoiser (UNet2DConditionModel, SD3/Flux/QwenImage transformer, ...) or a
        pipeline (its ``unet``/``transformer`` is used, and its scheduler drives the step counter).
    fn : the attention function; ``call.dense()`` inside it is the stock attention.
    layers : "auto" | str | int | dict | callable | list of these
        "auto": UNet down+up cross-attention (not mid, as PLADIS), all joint layers of SD3/Flux/Qwen-Image.
        A string selects the layers whose name, or a dot-bounded leading part of it, fully matches it as a
        regex (``"up_blocks"``, ``"transformer_blocks.1"``, ``r".*attn2"``); an int indexes
        ``transformer_blocks``; ``{"single_transformer_blocks": [0, 2]}`` indexes any block list; a callable
        is a predicate ``(name, module) -> bool``.
    kinds : tuple of {"cross", "joint", "self"}, optional
        The kinds ``fn`` acts on: "auto" keeps only these; an explicit selection of another kind raises.
    state : AttentionState, optional (a fresh one by default)

    Returns
    -------
    AttentionHandle

    Raises
    ------
    RuntimeError : the model already has an installed function (remove its handle first).
    ValueError : no rule for "auto" on this architecture, a selector that matches nothing (close matches
        listed), a selected layer of a kind outside ``kinds``, or a selected processor type with no adapter.
    """
    model, pipeline = resolve_model(model_or_pipeline)
    prev = getattr(model, _MARK, None)
    if prev is not None and not prev.removed:
        raise RuntimeError(f"{type(model).__name__} already has an attention function installed by hopfield_gag "
                           f"({prev!r}); call handle.remove() (or leave its `with` block) before applying again")
    if not callable(fn):
        raise TypeError(f"fn must be callable (AttentionCall -> Tensor), got {type(fn).__name__}")
    if kinds is not None:
        kinds = tuple(kinds)
        bad = [k for k in kinds if k not in ("cross", "joint", "self")]
        if bad or not kinds:
            raise ValueError(f"kinds must be a non-empty subset of ('cross', 'joint', 'self'), got {kinds}")
    from .processors import adapter_for

    mods = _attention_modules(model)
    if not mods:
        raise ValueError(f"{type(model).__name__} has no attention module with a processor (unknown architecture)")
    infos = [_info(n, m, p) for n, m, p in mods]
    selected = _select(model, infos, layers, kinds)
    table = {n: (m, p) for n, m, p in mods}
    unsupported = [(n, type(table[n][0].processor).__name__) for n in selected if adapter_for(table[n][0].processor) is None]
    if unsupported:
        raise ValueError(f"no adapter for the processor type(s) {sorted({t for _, t in unsupported})} "
                         f"(layers {[n for n, _ in unsupported][:4]}...); supported: AttnProcessor2_0, "
                         f"JointAttnProcessor2_0, FluxAttnProcessor, QwenDoubleStreamAttnProcessor2_0. "
                         f"Install guidance after enable_xformers/IP-Adapter/LoRA processor swaps are undone")
    state = AttentionState() if state is None else state
    originals, processors, removers = {}, {}, []
    handle = AttentionHandle(model, fn, selected, state, originals, processors, removers)
    try:
        for name in selected:
            module, parent = table[name]
            proc = adapter_for(module.processor)(fn, name, state, module.processor)
            originals[name] = (module, module.processor)
            module.set_processor(proc)
            processors[name] = proc
            if type(parent).__name__ == "FluxSingleTransformerBlock":
                removers.append(parent.register_forward_pre_hook(_text_len_hook(proc), with_kwargs=True).remove)
        from diffusers.hooks.hooks import HookRegistry

        registry = HookRegistry.check_if_exists_or_initialize(model)
        registry.register_hook(_make_hook(state, pipeline), _HOOK)
        removers.append(lambda: registry.remove_hook(_HOOK, recurse=False))
        setattr(model, _MARK, handle)
    except BaseException:
        handle.remove()
        raise
    return handle


def _text_len_hook(proc):
    def hook(module, args, kwargs):
        ehs = kwargs.get("encoder_hidden_states", args[1] if len(args) > 1 else None)
        proc.text_len = None if ehs is None else int(ehs.shape[1])

    return hook
