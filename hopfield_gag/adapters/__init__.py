"""Layer 4, adapters: attention layers of real models hand each call to an attention function as one
:class:`AttentionCall` (:mod:`.call`).

diffusers integration (needs the ``diffusers`` extra; imported on first use):

- :func:`apply_gag` (:mod:`.gag`): GAG / PLADIS in UNet, SD3/SD3.5, Flux and Qwen-Image models;
- :func:`install_attention_fn`, :func:`list_attention_layers`, :class:`AttentionHandle`,
  :class:`AttentionState` (:mod:`.install`): any attention function;
- the processors themselves (:mod:`.processors`);
- :func:`preload`: do that first-use import now.
"""
from .call import KINDS, AttentionCall, AttentionFn

__all__ = ["AttentionCall", "AttentionFn", "KINDS", "preload", "apply_gag", "GuidedAttention", "install_attention_fn",
           "list_attention_layers", "format_attention_layers", "AttentionHandle", "AttentionState", "LayerInfo"]

_LAZY = {
    "apply_gag": ".gag", "GuidedAttention": ".gag",
    "install_attention_fn": ".install", "list_attention_layers": ".install", "format_attention_layers": ".install",
    "AttentionHandle": ".install", "AttentionState": ".install", "LayerInfo": ".install",
}


def preload() -> None:
    """Import the diffusers side of the adapters now. The first :func:`install_attention_fn` /
    :func:`apply_gag` imports diffusers' transformer modules (5-9 s on a cold 2-core machine); a caller that
    times sampling calls this first, so that the import is not booked as guidance overhead."""
    from . import processors  # noqa: F401


def __getattr__(name):
    # diffusers is an optional extra: import it only when a diffusers-facing name is used
    if name in _LAZY:
        import importlib

        return getattr(importlib.import_module(_LAZY[name], __name__), name)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
