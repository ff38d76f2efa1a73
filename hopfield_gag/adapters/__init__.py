"""Layer 4, adapters: attention layers of real models hand each call to an attention function as one
:class:`AttentionCall` (:mod:`.call`)."""
from .call import KINDS, AttentionCall, AttentionFn

__all__ = ["AttentionCall", "AttentionFn", "KINDS"]
