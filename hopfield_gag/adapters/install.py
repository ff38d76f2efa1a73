r"""Install an attention function into a model: the two paths, layer listing, the state hook, the handle.

``install_attention_fn(model_or_pipeline, fn, layers="auto", via="auto")`` runs ``fn`` in each selected
attention layer (:mod:`.selection` says what ``layers=`` selects) by one of two paths:

- ``"processors"``: the module's processor is replaced by a copy of its stock type that hands the kernel
  call to ``fn`` (:mod:`.processors`: UNet/PixArt ``AttnProcessor2_0``, SD3 ``JointAttnProcessor2_0``,
  ``FluxAttnProcessor``, ``QwenDoubleStreamAttnProcessor2_0``; models declaring their own adapter such as
  the shipped DiT). Needs diffusers only for diffusers processors.
- ``"hooks"``: a diffusers ``ModelHook`` on the module intercepts the attention kernel call
  (:mod:`.hooks`); the module's own processor — IP-Adapter, LoRA, custom, any diffusers architecture —
  stays in place.

``via="auto"`` takes the processor path where an adapter exists and the hook path elsewhere;
:func:`list_attention_layers` shows which path each layer would take. Several functions may be installed in
one model; they compose per layer in a fixed order (:mod:`.core`).

The step / branch state (:class:`~.core.AttentionState`, shared by everything installed in the model) is
kept current by a hook on the denoiser:

- **step / num_steps / timestep / sigma**: at each denoiser call the hook looks the ``timestep`` argument up
  in ``pipeline.scheduler.timesteps`` (also ``timestep * 1000``, since Flux and Qwen pass ``t / 1000``).
  This is automatic when a *pipeline* is passed and its loop iterates ``scheduler.timesteps`` and passes
  that value to the denoiser (StableDiffusion(XL), SD3, Flux, QwenImage pipelines). With a bare model, or a
  loop that does neither, call ``state.set_step(i, n)`` or pass ``callback_on_step_end=handle.step_callback``.
- **branch per batch row** (never guessed): a ``cache_context("cond" | "uncond")`` around the call (Flux and
  Qwen pipelines; the hook receives it as a stateful diffusers hook) or a guider's pass
  (:mod:`.guiders`) labels every row; a classic pipeline that batches [uncond, cond] and says so
  (``pipeline.do_classifier_free_guidance`` readable and true, even batch) labels the halves, and one that
  says it runs without CFG labels every row "cond". Anything else — a modular pipeline, a hand-written
  loop, PAG's [uncond, cond, perturbed] — leaves the rows unknown, and ``branches="cond"`` raises naming
  the fixes instead of guessing.
"""
from __future__ import annotations

from typing import Any, Callable, Optional

import torch

from .core import AttentionState, LayerSlot, is_observer, registry_of
from .selection import LayerInfo, attention_modules, resolve_model, select_layers, static_kind

__all__ = ["AttentionState", "AttentionHandle", "LayerInfo", "install_attention_fn", "list_attention_layers",
           "format_attention_layers", "resolve_model", "VIAS"]

VIAS = ("auto", "processors", "hooks")
_HOOK = "hopfield_gag_state"


# ---------------------------------------------------------------------------------------------------- state hook


def _scalar(t) -> Optional[float]:
    if t is None:
        return None
    if isinstance(t, torch.Tensor):
        return float(t.detach().flatten()[0]) if t.numel() else None
    try:
        return float(t)
    except (TypeError, ValueError):
        return None


def _batch_layout(pipeline, batch: int) -> Optional[tuple]:
    """Per-row branches of a classic pipeline's batch, or None when the pipeline does not say (never a guess)."""
    if pipeline is None:
        return None
    if getattr(pipeline, "do_perturbed_attention_guidance", False):
        return None  # PAG pipelines batch [uncond, cond, perturbed]
    try:
        cfg = pipeline.do_classifier_free_guidance
    except Exception:  # no such attribute (modular pipelines), or not set outside the pipeline's __call__
        return None
    if not isinstance(cfg, bool):
        return None
    if not cfg:
        return ("cond",) * batch
    if batch % 2:
        return None
    return ("uncond",) * (batch // 2) + ("cond",) * (batch // 2)


@torch._dynamo.disable
def _on_denoiser_call(reg, args, kwargs) -> None:
    """One denoiser call: count it, follow the step, label the batch rows.

    Outside dynamo: under ``torch.compile`` the counter and the timestep lookup (``Tensor.item``) would
    otherwise be traced, recompiling at every call and warning of a graph break."""
    state = reg.state
    state.calls += 1
    sample = args[0] if args else next((kwargs[n] for n in ("sample", "hidden_states") if n in kwargs), None)
    t = kwargs.get("timestep", args[1] if len(args) > 1 else None)
    _track_step(state, reg.pipeline, _scalar(t))
    if reg.pipeline is not None and isinstance(sample, torch.Tensor):
        told = _batch_layout(reg.pipeline, sample.shape[0])
        if told is not None or state.batch_branches is reg.told_branches:
            # what the pipeline says, else unknown; a layout the user set by hand is kept
            state.batch_branches = reg.told_branches = told


def _diffusers_state_hook(reg):
    from diffusers.hooks.hooks import ModelHook, StateManager

    class _ContextSink(StateManager):
        """Receives ``cache_context`` (diffusers calls ``set_context`` on stateful hooks' managers)."""

        def __init__(self):
            super().__init__(object)

        def set_context(self, context) -> None:
            self._context = context
            reg.state.branch = None if context is None else context.name

    class _StateHook(ModelHook):
        _is_stateful = True

        def __init__(self):
            super().__init__()
            self.context = _ContextSink()

        def reset_state(self, module):
            return module

        def pre_forward(self, module, *args, **kwargs):
            _on_denoiser_call(reg, args, kwargs)
            return args, kwargs

    return _StateHook()


def _install_state_hook(model, reg) -> None:
    if _is_diffusers_model(model):
        from diffusers.hooks.hooks import HookRegistry

        registry = HookRegistry.check_if_exists_or_initialize(model)
        registry.register_hook(_diffusers_state_hook(reg), _HOOK)
        reg.teardown.append(lambda: registry.remove_hook(_HOOK, recurse=False))
    else:  # a pure-torch model (the shipped DiT): no cache_context, a plain forward pre-hook
        h = model.register_forward_pre_hook(lambda m, a, kw: _on_denoiser_call(reg, a, kw), with_kwargs=True)
        reg.teardown.append(h.remove)


def _is_diffusers_model(model) -> bool:
    import sys

    if "diffusers" not in sys.modules:  # a model of diffusers would have imported it
        return False
    from diffusers.models.modeling_utils import ModelMixin

    return isinstance(model, ModelMixin)


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


def _adapter_for(processor):
    """The processor-path adapter class for ``processor``, or None (diffusers imported only for its types)."""
    own = getattr(type(processor), "hopfield_gag_adapter", None)
    if callable(own):
        return own()
    if not type(processor).__module__.startswith("diffusers."):
        return None
    from .processors import adapter_for

    return adapter_for(processor)


def _original(proc):
    """The stock processor behind one of our adapters (listing an adapted model shows the stock type)."""
    return getattr(proc, "original", None) if hasattr(proc, "layer") and hasattr(proc, "fn") else proc


def _layer_info(name, module, parent, slot=None) -> LayerInfo:
    proc = _original(module.processor)
    heads = int(getattr(module, "heads", 0))
    head_dim = int(getattr(module, "head_dim", 0) or (getattr(module, "inner_dim", 0) // max(heads, 1)))
    to_q, to_k, add_k = getattr(module, "to_q", None), getattr(module, "to_k", None), getattr(module, "add_k_proj", None)
    supported = _adapter_for(proc) is not None
    if slot is not None:
        path = slot.path
    elif supported:
        path = "processors"
    else:
        from .hooks import hook_problem

        path = "hooks" if hook_problem(module) is None else "none"
    return LayerInfo(
        name=name, kind=static_kind(name, module, parent), processor=type(proc).__name__, supported=supported,
        heads=heads, head_dim=head_dim,
        query_dim=int(getattr(to_q, "in_features", 0)), key_dim=int(getattr(to_k, "in_features", 0)),
        text_dim=int(add_k.in_features) if isinstance(add_k, torch.nn.Linear) else None, path=path,
    )


def list_attention_layers(model_or_pipeline) -> list:
    """Every attention module of the model as a :class:`LayerInfo` (name, kind cross/joint/self, processor
    type, heads, head_dim, query/key/text dims, and the path — ``processors``, ``hooks`` or ``none`` — an
    attention function installed with ``via="auto"`` would take), in model order;
    ``print(format_attention_layers(model))`` shows them as a table. The names are what ``layers=`` selects."""
    model, _ = resolve_model(model_or_pipeline)
    reg = registry_of(model)
    slots = reg.slots if reg is not None else {}
    return [_layer_info(n, m, p, slots.get(n)) for n, m, p in attention_modules(model)]


def format_attention_layers(model_or_pipeline) -> str:
    """The table of :func:`list_attention_layers`, one line per layer."""
    return "\n".join(str(i) for i in list_attention_layers(model_or_pipeline))


# ---------------------------------------------------------------------------------------------------- handle


class AttentionHandle:
    """What :func:`install_attention_fn` returns.

    ``remove()`` (idempotent) detaches the function; a layer no other function uses gets its exact original
    processor back (processor path) or loses its hook (hook path), and the state hook goes with the last
    handle. As a context manager the handle removes itself on exit, also when the body raises.

    Attributes
    ----------
    model : the denoiser; layers : list of selected module names; fn : the attention function;
    state : :class:`AttentionState` (shared by every function installed in the model);
    processors : {name: the adapter processor or hook running the layer}; paths : {name: "processors"|"hooks"}.
    """

    def __init__(self, model, fn, layers, state):
        self.model, self.fn, self.layers, self.state = model, fn, layers, state
        self.processors: dict = {}
        self.paths: dict = {}
        self.removed = False

    def remove(self) -> None:
        if self.removed:
            return
        reg = registry_of(self.model)
        errors = reg.remove_handle(self) if reg is not None else []
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


def _unsupported(rows) -> ValueError:
    return ValueError(f"no adapter for the processor type(s) {sorted({t for _, t in rows})} (layers "
                      f"{[n for n, _ in rows][:4]}...); the processor path supports AttnProcessor2_0, "
                      f"JointAttnProcessor2_0, FluxAttnProcessor, QwenDoubleStreamAttnProcessor2_0 (exact types). "
                      f"Use via='hooks' (or 'auto') to keep the module's own processor, or undo the "
                      f"enable_xformers/IP-Adapter/LoRA processor swap")


def install_attention_fn(model_or_pipeline, fn: Callable[[Any], torch.Tensor], layers="auto", *, kinds=None,
                         state: Optional[AttentionState] = None, via: str = "auto") -> AttentionHandle:
    """Run ``fn(call: AttentionCall) -> Tensor (B, H, Lq, Dv)`` inside the selected attention layers.

    Parameters
    ----------
    model_or_pipeline : a diffusers denoiser (UNet2DConditionModel, SD3/Flux/QwenImage/PixArt/Sana/Wan/...
        transformer), a shipped model of :mod:`hopfield_gag.models`, or a pipeline (its ``unet``/
        ``transformer`` is used, and its scheduler drives the step counter).
    fn : the attention function; ``call.dense()`` inside it is the stock attention, ``call.inner()`` the
        output of the functions installed inside it. A function with a true ``observer`` attribute
        (capture) composes with a replacing one (GAG) on the same layer (:mod:`.core` for the order).
    layers : "auto" | str | int | dict | callable | list of these; :mod:`.selection` for the one meaning
        ("auto": UNet down+up cross-attention, every joint layer of SD3/Flux/Qwen-Image, every
        cross-attention layer of other diffusers models).
    kinds : tuple of {"cross", "joint", "self"}, optional
        The kinds ``fn`` acts on: "auto" keeps only these; an explicit selection of another kind raises.
    state : AttentionState, optional (the model's shared state; a fresh one for the first function)
    via : {"auto", "processors", "hooks"}
        The path (module docstring). A layer that already runs a function keeps its path.

    Returns
    -------
    AttentionHandle

    Raises
    ------
    RuntimeError : a selected layer already runs a replacing function (remove its handle first).
    ValueError : no rule for "auto" on this architecture, a selector that matches nothing (close matches
        listed), a selected layer of a kind outside ``kinds``, a layer neither path can reach, or a processor
        with no adapter under ``via="processors"``.
    """
    model, pipeline = resolve_model(model_or_pipeline)
    if not callable(fn):
        raise TypeError(f"fn must be callable (AttentionCall -> Tensor), got {type(fn).__name__}")
    if via not in VIAS:
        raise ValueError(f"via must be one of {VIAS}, got {via!r}")
    if kinds is not None:
        kinds = tuple(kinds)
        bad = [k for k in kinds if k not in ("cross", "joint", "self")]
        if bad or not kinds:
            raise ValueError(f"kinds must be a non-empty subset of ('cross', 'joint', 'self'), got {kinds}")
    mods = attention_modules(model)
    if not mods:
        raise ValueError(f"{type(model).__name__} has no attention module with a processor (unknown architecture)")
    reg = registry_of(model)
    if reg is not None and state is not None and state is not reg.state:
        raise ValueError("state: this model already has functions installed sharing another AttentionState; "
                         "leave state=None (installed(model)[0].state is the shared one)")
    slots = reg.slots if reg is not None else {}
    infos = [_layer_info(n, m, p, slots.get(n)) for n, m, p in mods]
    selected = select_layers(model, infos, layers, kinds)
    table = {n: (m, p) for n, m, p in mods}
    info = {i.name: i for i in infos}
    observer = is_observer(fn)
    taken = [n for n in selected if n in slots and not observer and slots[n].replacing() is not None]
    if taken:
        prev = slots[taken[0]].replacing()[0]
        raise RuntimeError(f"{type(model).__name__} already has an attention function installed by hopfield_gag on "
                           f"{taken[:3]} ({prev!r}); call handle.remove() (or leave its `with` block) before applying "
                           f"again (an observer such as capture composes with it)")
    plan = {}
    for n in selected:
        if n in slots:
            plan[n] = slots[n].path
        elif via == "processors" or (via == "auto" and info[n].supported):
            plan[n] = "processors"
        else:
            plan[n] = "hooks"
    bad = [(n, info[n].processor) for n in selected if plan[n] == "processors" and n not in slots and not info[n].supported]
    if bad:
        raise _unsupported(bad)
    hook_layers = [n for n in selected if plan[n] == "hooks" and n not in slots]
    if hook_layers:
        from .hooks import hook_problem

        problems = [(n, hook_problem(table[n][0])) for n in hook_layers]
        problems = [(n, p) for n, p in problems if p is not None]
        if problems:
            raise ValueError(f"layers {[n for n, _ in problems][:4]} cannot be reached by the hook path: "
                             f"{problems[0][1]}")
    fresh = reg is None
    reg = registry_of(model, create=True, state=state)
    if pipeline is not None:
        reg.pipeline = pipeline
    handle = AttentionHandle(model, fn, selected, reg.state)
    reg.handles.append(handle)
    try:
        if fresh:
            _install_state_hook(model, reg)
        for name in selected:
            module, parent = table[name]
            slot = reg.slots.get(name)
            if slot is None:
                slot = LayerSlot(name, reg.state, plan[name])
                if plan[name] == "processors":
                    _attach_processor(slot, module, parent)
                else:
                    from .hooks import attach_hook

                    attach_hook(slot, module, parent, model)
                reg.slots[name] = slot
            slot.entries.append((handle, fn))
            handle.processors[name] = slot.runner
            handle.paths[name] = slot.path
    except BaseException:
        handle.remove()
        raise
    return handle


def _attach_processor(slot: LayerSlot, module, parent) -> None:
    original = module.processor
    proc = _adapter_for(original)(slot, slot.layer, slot.state, original)
    removers = []

    def teardown():
        module.set_processor(original)
        for r in removers:
            r()

    module.set_processor(proc)
    slot.runner, slot.teardown = proc, teardown
    if type(parent).__name__ == "FluxSingleTransformerBlock":
        removers.append(parent.register_forward_pre_hook(_text_len_hook(proc), with_kwargs=True).remove)


def _text_len_hook(proc):
    def hook(module, args, kwargs):
        ehs = kwargs.get("encoder_hidden_states", args[1] if len(args) > 1 else None)
        proc.text_len = None if ehs is None else int(ehs.shape[1])

    return hook
