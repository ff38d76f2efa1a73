r"""The prompt encoder of the grid models: one token per (position, digit) pair, binding explicit.

A grid prompt is :data:`~.grid_data.PROMPT_LENGTH` token ids (:mod:`.grid_data`): pair ``(p, d)`` has id
``10 p + d``, padding is :data:`~.grid_data.NULL_TOKEN`. The encoder embeds a pair as

.. math::  e_{p,d} = \mathrm{MLP}(E_\text{pos}[p] + E_\text{digit}[d]) + E_\text{pos}[p] + E_\text{digit}[d],

one token per pair, so the position and the digit are *bound* inside a single key/value before any attention
(a probe found that unbound (position, digit) tokens in random order stall training at 14% exact match; see
``shared/reference/testbed-feasibility.md``); a padding token is one learned null vector. Then one pre-LN
transformer layer *without* slot positions lets the pairs see each other; the whole encoder is equivariant
to the order of the tokens, so the prompt's pair order cannot matter to the models. Because position and
digit are embedded separately, a (position, digit) combination never seen in training still has a meaningful
token (the compositional held-out prompts).
"""
from __future__ import annotations

import torch
from torch import Tensor, nn

from .data import NUM_CLASSES
from .grid_data import NULL_TOKEN, NUM_POSITIONS, PROMPT_LENGTH

__all__ = ["GridPromptEncoder"]


class GridPromptEncoder(nn.Module):
    """tokens (B, 9) int64 in [0, 90] (90 = padding) -> prompt states (B, 9, dim)."""

    def __init__(self, dim: int, heads: int = 4):
        super().__init__()
        self.pos_embed = nn.Embedding(NUM_POSITIONS, dim)
        self.digit_embed = nn.Embedding(NUM_CLASSES, dim)
        self.null = nn.Parameter(torch.randn(dim) * 0.02)
        self.bind = nn.Sequential(nn.LayerNorm(dim), nn.Linear(dim, 2 * dim), nn.GELU(), nn.Linear(2 * dim, dim))
        self.encoder = nn.TransformerEncoderLayer(dim, heads, 2 * dim, dropout=0.0, batch_first=True, norm_first=True)
        self.norm = nn.LayerNorm(dim)

    def forward(self, tokens: Tensor) -> Tensor:
        if not isinstance(tokens, Tensor) or tokens.dtype != torch.int64 or tokens.dim() != 2 \
                or tokens.shape[1] != PROMPT_LENGTH:
            raise ValueError(f"tokens must be an int64 tensor (B, {PROMPT_LENGTH}), got "
                             f"{getattr(tokens, 'dtype', type(tokens))} {tuple(getattr(tokens, 'shape', ()))}")
        if tokens.numel() and (int(tokens.min()) < 0 or int(tokens.max()) > NULL_TOKEN):
            raise ValueError(f"tokens must lie in [0, {NULL_TOKEN}] ({NULL_TOKEN} = padding / null prompt)")
        is_null = tokens == NULL_TOKEN
        t = tokens.clamp(max=NULL_TOKEN - 1)
        e = self.pos_embed(t // NUM_CLASSES) + self.digit_embed(t % NUM_CLASSES)
        e = e + self.bind(e)
        e = torch.where(is_null[..., None], self.null.expand_as(e), e)
        return self.norm(self.encoder(e))


def check_denoiser_inputs(x: Tensor, t: Tensor, tokens: Tensor, channels: int, resolution: int) -> None:
    """The grid denoisers' one input check: ``x`` (B, channels, resolution, resolution), ``t`` (B,), ``tokens``
    (B, PROMPT_LENGTH); raises ``ValueError`` naming the argument and the shape it expected."""
    r = resolution
    if x.dim() != 4 or tuple(x.shape[1:]) != (channels, r, r):
        raise ValueError(f"x must have shape (B, {channels}, {r}, {r}), got {tuple(x.shape)}")
    if t.shape != (x.shape[0],) or tokens.shape[:1] != (x.shape[0],):
        raise ValueError(f"t must be (B,) and tokens (B, {PROMPT_LENGTH}) with B = {x.shape[0]}, got "
                         f"{tuple(t.shape)} and {tuple(tokens.shape)}")

