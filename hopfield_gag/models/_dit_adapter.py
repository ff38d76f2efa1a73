"""The adapted processor of the shipped DiT's attention (imported on first install; needs diffusers, as the
rest of :mod:`hopfield_gag.adapters.processors`)."""
from __future__ import annotations

import torch.nn.functional as F

from ..adapters.processors import _Adapter, _run
from .dit import DiTAttnProcessor

__all__ = ["AdaptedDiTAttnProcessor"]


class AdaptedDiTAttnProcessor(_Adapter, DiTAttnProcessor):
    """:class:`~hopfield_gag.models.dit.DiTAttnProcessor` whose kernel call goes to the installed function:
    q, k, v (B, H, L, D) as SDPA sees them, no mask, default scale; cross: every key is a prompt token."""

    def __init__(self, fn, layer: str, state=None, original=None):
        self._setup(fn, layer, state, original)

    def __call__(self, attn, x, context=None):
        q, k, v = attn.project(x, context)

        def dense():
            return F.scaled_dot_product_attention(q, k, v)

        cross = attn.kind == "cross"
        out = _run(self, q, k, v, None, None, dense, attn.kind, slice(0, k.shape[2]) if cross else None,
                   slice(0, q.shape[2]), {})
        return attn.merge(out)
