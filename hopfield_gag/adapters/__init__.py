"""Layer 4, adapters: attention layers of real models hand each call to an attention function as one
:class:`AttentionCall` (:mod:`.call`).

diffusers integration (needs the ``diffusers`` extra; imported on first use):

- :func:`apply_gag` (:mod:`.gag`): GAG / PLADIS in UNet, SD3/SD3.5, Flux and Qwen-Image models;
- :func:`install_attention_fn`, :func:`list_attention_layers`, :class:`AttentionHandle`,
  :class:`AttentionState` (:mod:`.install`): any attention function;
- the processors themselves (:mod:`.processors`).
"""
from .call import KINDS, AttentionCall, AttentionFn

__all__ = ["AttentionCall", "AttentionFn", "KINDS", "apply_gag", "GuidedAttention", "install_attention_fn",
           "list_attention_layers", "format_attention_layers", "AttentionHandle", "AttentionState", "LayerInfo"]

_LAZY = {
    "apply_gag": ".gag", "GuidedAttention": ".gag",
    "install_attention_fn": ".install", "list_attention_layers": ".install", "format_attention_layers": ".install",
    "AttentionHandle": ".install", "AttentionState": ".install", "LayerInfo": ".install",
}


def __getattr__(name):
    # diffusers is an optional extra: import it only when a diffusers-facing name is used
    if name in _LAZY:
        import importlib

        return getattr(importlib.import_module(_LAZY[name], __name__), name)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
