"""Layer 5, adapters: attention layers of real models hand each call to an attention function as one
:class:`AttentionCall` (:mod:`.call`).

diffusers-free core (the shipped pure-torch models need nothing else):

- :mod:`.core`: the shared :class:`AttentionState`, the per-call runner, attention functions that compose
  (capture around GAG), the registry behind :func:`installed`;
- :mod:`.selection`: the one meaning of ``layers=`` / ``steps=`` / ``sigmas=``;
- :func:`apply_gag`, :class:`GuidedAttention` (:mod:`.gag`), :func:`install_attention_fn`,
  :func:`list_attention_layers`, :class:`AttentionHandle` (:mod:`.install`).

diffusers paths (imported on first use): the processor copies (:mod:`.processors`), the hook path that reaches
any diffusers attention module (:mod:`.hooks`), the modular-pipeline guiders (:mod:`.guiders`);
:func:`preload` does that first-use import now.
"""
from .call import KINDS, AttentionCall, AttentionFn
from .core import AttentionState, installed

__all__ = ["AttentionCall", "AttentionFn", "KINDS", "preload", "apply_gag", "GuidedAttention", "install_attention_fn",
           "list_attention_layers", "format_attention_layers", "AttentionHandle", "AttentionState", "LayerInfo",
           "installed"]

_LAZY = {
    "apply_gag": ".gag", "GuidedAttention": ".gag",
    "install_attention_fn": ".install", "list_attention_layers": ".install", "format_attention_layers": ".install",
    "AttentionHandle": ".install", "LayerInfo": ".selection",
}


def preload() -> None:
    """Import the diffusers side of the adapters now. The first :func:`install_attention_fn` /
    :func:`apply_gag` on a diffusers model imports diffusers' transformer modules (5-9 s on a cold 2-core
    machine); a caller that times sampling calls this first, so that the import is not booked as guidance
    overhead."""
    from . import hooks, processors  # noqa: F401


def __getattr__(name):
    # diffusers is an optional extra: import it only when a diffusers-facing name is used
    if name in _LAZY:
        import importlib

        return getattr(importlib.import_module(_LAZY[name], __name__), name)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
