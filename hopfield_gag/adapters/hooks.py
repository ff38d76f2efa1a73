r"""The hook path: reach the attention call of any diffusers attention module, keeping its own processor.

As diffusers' PAG does (``hooks/layer_skip.py``: a ``ModelHook`` whose forward runs the module inside a
``TorchFunctionMode``), a :class:`AttentionCallHook` on each selected module runs the module's forward — its
own processor, IP-Adapter, LoRA or custom, untouched — inside a mode that catches
``torch.nn.functional.scaled_dot_product_attention``. diffusers' ``dispatch_attention_fn`` reaches that
function on its native backends, so both processor families are covered. Each caught call becomes one
:class:`~hopfield_gag.adapters.AttentionCall` for the layer's functions; ``call.dense()`` is the caught call
itself, so a function returning it leaves the model bit-identical.

What a call is, from the shapes (q (B, H, Lq, D), k (B, H, Lk, D)) and the module's inputs
(``hidden_states`` with ``Li`` tokens, ``encoder_hidden_states`` with ``Lt``):

==============================================  =========  =====================================================
shapes                                          kind       text keys / image queries
==============================================  =========  =====================================================
``Lk == Lt`` (or ``Lq != Lk``)                  cross      all keys / all queries (IP-Adapter's extra call too)
``Lq == Lk == Li + Lt``                         joint      order from :data:`JOINT_LAYOUTS` (per architecture)
``Lq == Lk``, no text                           self       none / all queries
==============================================  =========  =====================================================

Joint attention arrives already concatenated, so the text length and its place come from
:data:`JOINT_LAYOUTS` (architecture -> order) and, for blocks that concatenate text and image before the
attention module (Flux single blocks), from the parent block's ``encoder_hidden_states``
(:data:`SINGLE_STREAM_BLOCKS`). Calls that go to a kernel the mode cannot see (flash, sage, xformers,
flex, NPU/XLA backends; xformers processors) are refused with an error naming the fix, before and during
the run; a hooked module whose forward makes no interceptable call raises instead of doing nothing.
"""
from __future__ import annotations

from typing import Optional

import torch
import torch.nn.functional as F

from .core import LayerSlot, run_call

__all__ = ["AttentionCallHook", "attach_hook", "hook_problem", "JOINT_LAYOUTS", "SINGLE_STREAM_BLOCKS",
           "INTERCEPTABLE_BACKENDS"]

#: architecture -> order of the concatenated joint sequence ("image_text": image tokens first)
JOINT_LAYOUTS = {
    "SD3Transformer2DModel": "image_text",        # JointAttnProcessor2_0: cat([image, text])
    "FluxTransformer2DModel": "text_image",       # FluxAttnProcessor: cat([text, image])
    "QwenImageTransformer2DModel": "text_image",  # QwenDoubleStreamAttnProcessor2_0: cat([txt, img])
}
#: block types that concatenate [text, image] before their attention module -> the argument holding the text
SINGLE_STREAM_BLOCKS = {"FluxSingleTransformerBlock": ("encoder_hidden_states", 1)}
#: diffusers attention backends that end in torch's scaled_dot_product_attention
INTERCEPTABLE_BACKENDS = ("native", "_native_cudnn", "_native_efficient", "_native_flash", "_native_math")
_HOOK_NAME = "hopfield_gag_attention"


def _backend_name(b) -> Optional[str]:
    return None if b is None else str(getattr(b, "value", b))


def hook_problem(module) -> Optional[str]:
    """Why the hook path cannot reach ``module``'s attention call, or None when it can."""
    try:
        from diffusers.hooks.hooks import ModelHook  # noqa: F401
    except ImportError:
        return "the hook path needs diffusers (pip install diffusers)"
    proc = getattr(module, "processor", None)
    if proc is None or not hasattr(module, "set_processor"):
        return f"{type(module).__name__} is not an attention module with a processor"
    name = type(proc).__name__
    if "xformers" in name.lower():
        return (f"its processor {name} calls xformers' kernel, which cannot be intercepted; call "
                f"model.disable_xformers_memory_efficient_attention() (or set_default_attn_processor()) first")
    if hasattr(proc, "_attention_backend"):  # a dispatch_attention_fn processor
        backend = _backend_name(proc._attention_backend)
        if backend is None:
            from diffusers.models.attention_dispatch import _AttentionBackendRegistry

            backend = _backend_name(_AttentionBackendRegistry.get_active_backend()[0])
        if backend not in INTERCEPTABLE_BACKENDS:
            return (f"its attention backend {backend!r} runs a kernel the hook cannot intercept (flash, sage, "
                    f"xformers, flex, NPU/XLA); use model.set_attention_backend('native') (or one of "
                    f"{INTERCEPTABLE_BACKENDS}) while guiding, or the processor path where it exists")
    return None


def _arg(args, kwargs, name, pos, default=None):
    if name in kwargs:
        return kwargs[name]
    return args[pos] if len(args) > pos else default


class _Intercept(torch.overrides.TorchFunctionMode):
    """Catches ``F.scaled_dot_product_attention`` during one forward of a hooked module."""

    def __init__(self, hook: "AttentionCallHook", n_img: Optional[int], n_text: Optional[int], single: bool):
        super().__init__()
        self.hook, self.n_img, self.n_text, self.single = hook, n_img, n_text, single
        self.count = 0

    def __torch_function__(self, func, types, args=(), kwargs=None):
        kwargs = kwargs or {}
        if func is F.scaled_dot_product_attention:
            self.count += 1
            return self.hook.attend(self, func, args, kwargs)
        return func(*args, **kwargs)


def _hook_class():
    from diffusers.hooks.hooks import ModelHook

    class AttentionCallHook(ModelHook):
        """A ``ModelHook`` running its module's forward with the attention kernel call handed to a
        :class:`~hopfield_gag.adapters.core.LayerSlot` (module docstring)."""

        def __init__(self, slot: LayerSlot, module, order: Optional[str], static_kind: str):
            super().__init__()
            self.slot, self.module, self.order, self.static_kind = slot, module, order, static_kind
            self.layer = slot.layer

        def new_forward(self, module, *args, **kwargs):
            problem = hook_problem(module)
            if problem is not None:
                raise RuntimeError(f"layer {self.layer!r}: {problem}")
            hs = _arg(args, kwargs, "hidden_states", 0)
            ehs = _arg(args, kwargs, "encoder_hidden_states", 1)
            if isinstance(ehs, (tuple, list)):  # IP-Adapter: (text, image prompt tokens)
                ehs = ehs[0]
            n_img = int(hs.shape[1]) if isinstance(hs, torch.Tensor) and hs.dim() == 3 else None
            n_text = int(ehs.shape[1]) if isinstance(ehs, torch.Tensor) and ehs.dim() >= 2 else None
            single = n_text is None and self.slot.extra.get("text_len") is not None
            if single:
                n_text = self.slot.extra["text_len"]
            mode = _Intercept(self, n_img, n_text, single)
            with mode:
                out = self.fn_ref.original_forward(*args, **kwargs)
            if mode.count == 0:
                raise RuntimeError(
                    f"layer {self.layer!r}: its processor {type(module.processor).__name__} made no "
                    f"torch.nn.functional.scaled_dot_product_attention call the hook could intercept (linear "
                    f"attention, or a custom kernel); deselect this layer, or use the processor path")
            return out

        def attend(self, mode: _Intercept, func, args, kwargs):
            q, k, v = (_arg(args, kwargs, n, i) for i, n in enumerate(("query", "key", "value")))
            mask = _arg(args, kwargs, "attn_mask", 3)
            dropout = _arg(args, kwargs, "dropout_p", 4, 0.0)
            causal = _arg(args, kwargs, "is_causal", 5, False)
            scale = kwargs.get("scale", args[6] if len(args) > 6 else None)
            if dropout or causal or kwargs.get("enable_gqa", False) or q.dim() != 4 or k.shape[1] != q.shape[1]:
                raise RuntimeError(f"layer {self.layer!r}: an attention call with dropout_p={dropout}, "
                                   f"is_causal={causal}, grouped heads or a non-(B, H, L, D) layout cannot be "
                                   f"guided (shapes q {tuple(q.shape)}, k {tuple(k.shape)})")

            def dense():
                return func(*args, **kwargs)

            lq, lk = q.shape[2], k.shape[2]
            n_img, n_text = mode.n_img, mode.n_text
            extra = {}
            if n_text is not None and lq == lk and (mode.single or n_img is not None and lk == n_img + n_text) \
                    and self.static_kind != "cross":
                if self.order is None:
                    raise RuntimeError(
                        f"layer {self.layer!r}: a joint text+image attention call ({lk} tokens = {n_img} image + "
                        f"{n_text} text), but the text order of this architecture is unknown; add it to "
                        f"hopfield_gag.adapters.hooks.JOINT_LAYOUTS ('text_image' or 'image_text')")
                kind = "joint"
                if self.order == "text_image":
                    text_keys, image_queries = slice(0, n_text), slice(n_text, lk)
                else:
                    text_keys, image_queries = slice(lk - n_text, lk), slice(0, lk - n_text)
                extra["n_text"] = n_text
            elif lq != lk or (n_text is not None and lk == n_text and not mode.single):
                kind, text_keys, image_queries = "cross", slice(0, lk), slice(0, lq)
            else:
                kind, text_keys, image_queries = "self", None, slice(0, lq)
            extra["call_index"] = mode.count - 1  # IP-Adapter processors make a second (image-prompt) call
            m = mask
            if m is not None and m.dtype != torch.bool and not m.is_floating_point():
                m = m != 0  # an integer 0/1 mask reaches the function as bool (True = attend)
            return run_call(self.slot, self.layer, self.slot.state, q, k, v, m, scale, dense, kind, text_keys,
                            image_queries, extra)

        def __repr__(self):
            return f"AttentionCallHook(layer={self.layer!r}, chain={self.slot.chain()!r})"

    return AttentionCallHook


_CLASS = None


def AttentionCallHook(*args, **kwargs):  # noqa: N802 - a class built on first use (diffusers is optional)
    """Build the hook (see the class docstring inside :func:`_hook_class`)."""
    global _CLASS
    if _CLASS is None:
        _CLASS = _hook_class()
    return _CLASS(*args, **kwargs)


def attach_hook(slot: LayerSlot, module, parent, model) -> None:
    """Register the hook of ``slot`` on ``module`` (and the text-length pre-hook on a single-stream parent)."""
    from diffusers.hooks.hooks import HookRegistry

    from .selection import static_kind

    hook = AttentionCallHook(slot, module, JOINT_LAYOUTS.get(type(model).__name__),
                             static_kind(slot.layer, module, parent))
    registry = HookRegistry.check_if_exists_or_initialize(module)
    registry.register_hook(hook, _HOOK_NAME)
    removers = [lambda: registry.remove_hook(_HOOK_NAME, recurse=False)]
    single = SINGLE_STREAM_BLOCKS.get(type(parent).__name__)
    if single is not None:
        name, pos = single

        def pre(mod, args, kwargs):
            t = kwargs.get(name, args[pos] if len(args) > pos else None)
            slot.extra["text_len"] = None if t is None else int(t.shape[1])

        removers.append(parent.register_forward_pre_hook(pre, with_kwargs=True).remove)

    def teardown():
        for r in removers:
            r()

    slot.runner, slot.teardown = hook, teardown
