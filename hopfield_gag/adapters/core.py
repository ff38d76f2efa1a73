r"""The diffusers-free core of the adapters: the shared step/branch state, the per-call runner, attention
functions that compose, and the registry of what is installed in a model.

Nothing here imports diffusers: the shipped pure-torch models are guided and captured through this core
alone, and the diffusers paths (:mod:`.processors`, :mod:`.hooks`) build on it.

Composition
-----------
Several attention functions may be installed in one model (e.g. :func:`~hopfield_gag.capture.capture`
inside :func:`~hopfield_gag.adapters.apply_gag`). Each selected layer has one :class:`LayerSlot` that runs
the functions installed on it as a chain, in this fixed order, whatever the order of installation::

    observer installed last  ->  ...  ->  observer installed first  ->  replacing function  ->  stock kernel

- a **replacing** function (GAG, PLADIS, any function computing the output itself) is innermost; a layer
  has at most one (installing a second raises);
- an **observer** (a function with a true ``observer`` attribute, such as capture) sees the call, calls
  ``call.inner()`` — the output of everything inside it, i.e. the *guided* output when a replacing
  function is installed, the stock output otherwise — and returns it.

``call.dense()`` is always the stock kernel on the call's inputs, at any depth of the chain.
"""
from __future__ import annotations

import dataclasses
from dataclasses import dataclass
from typing import Any, Callable, Optional

import torch

from .call import AttentionCall

__all__ = ["AttentionState", "LayerSlot", "ProcessorAdapter", "run_call", "installed", "is_observer",
           "ModelRegistry", "registry_of"]

_REGISTRY = "_hopfield_gag_registry"  # the one attribute this package sets on a model


# ---------------------------------------------------------------------------------------------------- state


@dataclass
class AttentionState:
    """Mutable state shared by every attention function installed in one model, read at each call.

    Attributes
    ----------
    step, num_steps : int or None
        Denoising step index (0-based) and schedule length.
    timestep, sigma : float or None
        The scheduler's timestep and sigma of this step.
    branch : str or None
        The CFG branch ("cond"/"uncond") of every row of the current denoiser call: the name of the active
        ``cache_context``, or what a guider sets for its pass.
    batch_branches : tuple of str or None
        Per batch row, for loops that batch [uncond, cond]; None = unknown (never guessed).
    calls : int
        Denoiser calls seen by the state hook.
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
        if not isinstance(step, int) or isinstance(step, bool) or step < 0:
            raise ValueError(f"step must be a non-negative int, got {step!r}")
        if num_steps is not None and (not isinstance(num_steps, int) or num_steps <= step):
            raise ValueError(f"num_steps must be an int > step={step}, got {num_steps!r}")
        self.step, self.num_steps = step, num_steps if num_steps is not None else self.num_steps
        self.timestep = None if timestep is None else float(timestep)
        self.sigma = None if sigma is None else float(sigma)

    def branches_for(self, batch: int) -> Optional[tuple]:
        """Branch of each of ``batch`` rows: the pass's branch, else the per-row layout, else None (unknown)."""
        if self.branch is not None:
            return (self.branch,) * batch
        if self.batch_branches is not None and len(self.batch_branches) == batch:
            return self.batch_branches
        return None


# ---------------------------------------------------------------------------------------------------- chain


def is_observer(fn) -> bool:
    """Whether ``fn`` observes (calls ``call.inner()`` and returns it) rather than replacing the output."""
    return bool(getattr(fn, "observer", False))


class LayerSlot:
    """The functions installed on one attention layer, run as a chain (module docstring for the order).

    A slot is itself an attention function: ``slot(call)`` runs the chain. ``entries`` holds
    ``(handle, fn)`` in installation order.
    """

    def __init__(self, layer: str, state: AttentionState, path: str):
        self.layer, self.state, self.path = layer, state, path
        self.entries: list = []
        self.teardown: Optional[Callable[[], None]] = None  # undoes the layer's installation
        self.runner = None  # the adapter processor or hook that calls this slot
        self.extra: dict = {}  # per-layer facts the path keeps (e.g. the text length of a Flux single block)

    def chain(self) -> list:
        """The functions, outermost first: observers (last installed first), then the replacing one."""
        obs = [fn for _, fn in reversed(self.entries) if is_observer(fn)]
        rep = [fn for _, fn in self.entries if not is_observer(fn)]
        return obs + rep

    def replacing(self):
        return next(((h, fn) for h, fn in self.entries if not is_observer(fn)), None)

    def __call__(self, call: AttentionCall) -> torch.Tensor:
        fns = self.chain()

        def at(i: int, c: AttentionCall):
            if i == len(fns):
                return c.dense()
            inner = c.dense if i + 1 == len(fns) else (lambda: at(i + 1, c))
            return fns[i](dataclasses.replace(c, inner=inner))

        return at(0, call)

    def __repr__(self):
        return f"LayerSlot({self.layer!r}, path={self.path!r}, chain={self.chain()!r})"


def _state_fields(state) -> dict:
    if state is None:
        return {}
    return dict(step=state.step, num_steps=state.num_steps, timestep=state.timestep, sigma=state.sigma)


@torch._dynamo.disable
def run_call(fn, layer: str, state: Optional[AttentionState], q, k, v, mask, scale, dense, kind, text_keys,
             image_queries, extra, *, keep_layout: bool = True) -> torch.Tensor:
    """Build the :class:`AttentionCall` of one kernel call and run ``fn`` (a function or a :class:`LayerSlot`).

    Runs outside dynamo on purpose: the function reads mutable state (lambda, step, branch) that would
    otherwise become guards and recompile the model whenever it changes. The result must be a tensor whose
    (B, H, Lq) are q's; with ``keep_layout`` it is returned laid out as the stock kernels lay theirs out,
    (B, Lq, H, Dv) in memory, so the stock reshape after the kernel stays a view and ``torch.compile`` sees
    one stride pattern whether guidance is on or off (a no-op for ``call.dense()``)."""
    branches = state.branches_for(q.shape[0]) if state is not None else None
    call = AttentionCall(q=q, k=k, v=v, mask=mask, scale=scale, dense=dense, layer=layer, kind=kind,
                         text_keys=text_keys, image_queries=image_queries, branches=branches, extra=extra,
                         **_state_fields(state))
    out = fn(call)
    if not isinstance(out, torch.Tensor) or out.shape[:-1] != q.shape[:-1]:
        got = tuple(out.shape) if isinstance(out, torch.Tensor) else type(out).__name__
        raise ValueError(f"attention function {fn!r} returned {got} at layer {layer!r}; "
                         f"expected a tensor (B, H, Lq, Dv) with (B, H, Lq) = {tuple(q.shape[:-1])}")
    return out.transpose(1, 2).contiguous().transpose(1, 2) if keep_layout else out


class ProcessorAdapter:
    """Base of the processors that hand their kernel call to a :class:`LayerSlot` (diffusers-free).

    ``fn`` is the slot (or any attention function), ``layer`` the module name, ``state`` the shared
    :class:`AttentionState`, ``original`` the replaced stock processor (restored on removal). A subclass
    calls :meth:`run` where the stock processor calls its kernel."""

    def _setup(self, fn, layer: str, state=None, original=None):
        self.fn = fn
        self.layer = layer
        self.state = state
        self.original = original
        # keep a backend / context-parallel choice made on the stock processor
        for attr in ("_attention_backend", "_parallel_config"):
            if original is not None and hasattr(original, attr) and hasattr(type(self), attr):
                setattr(self, attr, getattr(original, attr))

    def run(self, q, k, v, mask, scale, dense, kind, text_keys, image_queries, extra):
        """The kernel call: q, k, v (B, H, L, D) -> (B, H, Lq, Dv) from the installed functions."""
        return run_call(self.fn, self.layer, self.state, q, k, v, mask, scale, dense, kind, text_keys,
                        image_queries, extra)

    def __repr__(self):
        return f"{type(self).__name__}(layer={self.layer!r}, fn={self.fn!r})"


# ---------------------------------------------------------------------------------------------------- registry


class ModelRegistry:
    """What is installed in one model: the shared state, one :class:`LayerSlot` per guided layer, the live
    handles (installation order) and the undo of the model-level hooks (state tracking)."""

    def __init__(self, model, state: AttentionState):
        self.model, self.state = model, state
        self.pipeline = None  # the pipeline whose scheduler the state hook follows, when one was passed
        self.told_branches = None  # the batch layout the state hook last set (a user's own is kept)
        self.slots: dict = {}
        self.handles: list = []
        self.teardown: list = []

    def remove_handle(self, handle) -> list:
        """Detach ``handle``'s functions; undo layers and model hooks nobody uses any more. Returns errors."""
        errors = []
        for layer in list(handle.layers):
            slot = self.slots.get(layer)
            if slot is None:
                continue
            slot.entries = [(h, f) for h, f in slot.entries if h is not handle]
            if not slot.entries:
                del self.slots[layer]
                try:
                    if slot.teardown is not None:
                        slot.teardown()
                except Exception as e:  # keep restoring the others
                    errors.append(f"{layer}: {e}")
        self.handles = [h for h in self.handles if h is not handle]
        if not self.handles:
            for undo in reversed(self.teardown):
                try:
                    undo()
                except Exception as e:
                    errors.append(str(e))
            self.teardown = []
            if getattr(self.model, _REGISTRY, None) is self:
                delattr(self.model, _REGISTRY)
        return errors


def registry_of(model, create: bool = False, state: Optional[AttentionState] = None) -> Optional[ModelRegistry]:
    """The model's :class:`ModelRegistry` (created on request with ``state`` or a fresh state)."""
    reg = model.__dict__.get(_REGISTRY)
    if reg is None and create:
        reg = ModelRegistry(model, AttentionState() if state is None else state)
        # object.__setattr__: nn.Module.__setattr__ would not register a plain object, but stay explicit
        object.__setattr__(model, _REGISTRY, reg)
    return reg


def installed(model_or_pipeline) -> tuple:
    """The live handles of the attention functions installed in a model (installation order; empty if none).

    All of them share one :class:`AttentionState` (``installed(model)[0].state``): set the step or the
    batch layout there when driving a model by hand."""
    from .selection import resolve_model

    model, _ = resolve_model(model_or_pipeline)
    reg = registry_of(model)
    return tuple(reg.handles) if reg is not None else ()
