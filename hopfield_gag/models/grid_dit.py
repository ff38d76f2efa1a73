r"""The grid DiT: the project's :class:`~.dit.DiT` on 24x24 ``digit-grid`` canvases with the binding prompt
encoder of :mod:`.grid_conditioning`.

Same blocks, attention modules (swappable processors, so :func:`hopfield_gag.adapters.apply_gag` and
``capture`` install unchanged) and flow-matching convention as :class:`~.dit.DiT`: patch 2 -> 144 image
tokens, ``depth`` blocks of self-attention, cross-attention to the 9 prompt tokens and an MLP, adaLN-Zero on
the timestep. Image positions are a fixed 2-D sin-cos table plus the learned term of :class:`~.dit.DiT`
(with 144 tokens a learned table alone is slow to start).

``forward(x (B, 1, 24, 24), t (B,) in [0, 1], tokens (B, 9) int64) -> velocity (B, 1, 24, 24)``.
"""
from __future__ import annotations

import math
from dataclasses import dataclass

import torch
from torch import Tensor

from .dit import DiT, _modulate, timestep_embedding
from .grid_conditioning import GridPromptEncoder, check_denoiser_inputs
from .grid_data import CANVAS, PROMPT_LENGTH

__all__ = ["GridDiT", "GridDiTConfig", "sincos_2d"]


@dataclass(frozen=True)
class GridDiTConfig:
    resolution: int = CANVAS
    patch: int = 2
    channels: int = 1
    dim: int = 128
    depth: int = 4
    heads: int = 4
    mlp_ratio: int = 4


def sincos_2d(grid: int, dim: int) -> Tensor:
    r"""Fixed 2-D sin-cos positions (grid*grid, dim): half the channels encode the row, half the column,
    each as :math:`[\sin(\omega_k i), \cos(\omega_k i)]`, :math:`\omega_k = 10000^{-k/(dim/4)}`."""
    if dim % 4:
        raise ValueError(f"dim must be divisible by 4 for 2-D sin-cos positions, got {dim}")
    q = dim // 4
    omega = torch.exp(-math.log(10000.0) * torch.arange(q, dtype=torch.float32) / q)
    i = torch.arange(grid, dtype=torch.float32)
    rows, cols = torch.meshgrid(i, i, indexing="ij")

    def enc(v):
        a = v.reshape(-1, 1) * omega[None]
        return torch.cat([torch.sin(a), torch.cos(a)], dim=1)

    return torch.cat([enc(rows), enc(cols)], dim=1)


class GridDiT(DiT):
    """:class:`~.dit.DiT` for ``digit-grid`` (see the module docstring); the null prompt is all padding."""

    prompt_length = PROMPT_LENGTH

    def __init__(self, config: GridDiTConfig = GridDiTConfig()):
        super().__init__(config)
        self.prompt = GridPromptEncoder(config.dim, config.heads)
        self.register_buffer("pos_fixed", sincos_2d(self.grid, config.dim), persistent=False)

    def forward(self, x: Tensor, t: Tensor, tokens: Tensor) -> Tensor:
        check_denoiser_inputs(x, t, tokens, self.config.channels, self.config.resolution)
        temb = self.t_mlp(timestep_embedding(t, self.config.dim))
        prompt = self.prompt(tokens)
        h = self.patch_embed(self._patchify(x)) + self.pos + self.pos_fixed
        for block in self.blocks:
            h = block(h, temb, prompt)
        shift, scale = self.ada_out(temb).chunk(2, dim=-1)
        return self._unpatchify(self.out(_modulate(self.norm_out(h), shift, scale)))
