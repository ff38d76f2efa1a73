"""The adapted processor of the shipped DiT's attention (imported on first install). It builds on the
diffusers-free core of :mod:`hopfield_gag.adapters` only, so the DiT is guided and captured without diffusers."""
from __future__ import annotations

import torch.nn.functional as F

from ..adapters.core import ProcessorAdapter
from .dit import DiTAttnProcessor

__all__ = ["AdaptedDiTAttnProcessor"]


class AdaptedDiTAttnProcessor(ProcessorAdapter, DiTAttnProcessor):
    """:class:`~hopfield_gag.models.dit.DiTAttnProcessor` whose kernel call goes to the installed functions:
    q, k, v (B, H, L, D) as SDPA sees them, no mask, default scale; cross: every key is a prompt token."""

    def __init__(self, fn, layer: str, state=None, original=None):
        self._setup(fn, layer, state, original)

    def __call__(self, attn, x, context=None):
        q, k, v = attn.project(x, context)

        def dense():
            return F.scaled_dot_product_attention(q, k, v)

        cross = attn.kind == "cross"
        out = self.run(q, k, v, None, None, dense, attn.kind, slice(0, k.shape[2]) if cross else None,
                       slice(0, q.shape[2]), {})
        return attn.merge(out)
