r"""A small class-conditional diffusion transformer (DiT) for 8x8 digits.

Architecture (Peebles & Xie 2023, with a cross-attention sub-block as in PixArt-alpha):

* patchify: 8x8x1 -> 16 tokens of 2x2 pixels, linear to ``dim``, plus learned positions;
* ``depth`` blocks, each ``x += g1 * SelfAttn(mod(LN(x)))``, ``x += g2 * CrossAttn(mod(LN(x)), prompt)``,
  ``x += g3 * MLP(mod(LN(x)))``, where the shifts/scales/gates come from the timestep embedding (adaLN-Zero;
  the class enters *only* through cross-attention to the 8-token prompt of :mod:`.conditioning`);
* final adaLN + linear back to 2x2 patches: the flow-matching velocity.

Every attention layer is an :class:`Attention` module with a swappable processor, like diffusers'
``Attention``: the stock processor calls ``F.scaled_dot_product_attention``; the installer of
:mod:`hopfield_gag.adapters` (``install_attention_fn`` / ``apply_gag``, and ``capture``) swaps in
:class:`~hopfield_gag.models._dit_adapter.AdaptedDiTAttnProcessor`, which hands each call to an attention
function as one :class:`~hopfield_gag.adapters.AttentionCall` (``call.dense()`` is the same SDPA call, so an
attention function returning it leaves the model bit-identical).
"""
from __future__ import annotations

import math
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from .conditioning import PromptEncoder
from .data import RESOLUTION

__all__ = ["DiT", "DiTConfig", "Attention", "DiTAttnProcessor", "timestep_embedding"]


class DiTAttnProcessor:
    r"""The stock kernel of :class:`Attention`: ``F.scaled_dot_product_attention`` on the split heads.

    ``hopfield_gag_adapter()`` names the adapter class the installer of :mod:`hopfield_gag.adapters`
    substitutes for it (:class:`hopfield_gag.models._dit_adapter.AdaptedDiTAttnProcessor`), which hands the
    same q, k, v to an attention function as one :class:`~hopfield_gag.adapters.AttentionCall`.
    """

    @staticmethod
    def hopfield_gag_adapter():
        from ._dit_adapter import AdaptedDiTAttnProcessor

        return AdaptedDiTAttnProcessor

    def __call__(self, attn: "Attention", x: Tensor, context: Tensor | None = None) -> Tensor:
        q, k, v = attn.project(x, context)
        return attn.merge(F.scaled_dot_product_attention(q, k, v))


class Attention(nn.Module):
    r"""Multi-head attention with a swappable processor (the diffusers ``Attention`` convention).

    ``forward(x (B, Lq, dim), context (B, Lk, dim) or None) -> (B, Lq, dim)`` runs
    ``self.processor(self, x, context)``; the stock :class:`DiTAttnProcessor` computes
    ``to_out(merge(SDPA(q, k, v)))`` with q, k, v from :meth:`project` in (B, H, L, D).
    :func:`hopfield_gag.adapters.install_attention_fn` swaps in an adapter that routes the kernel call
    through an attention function (``kind`` "self" for ``attn1``, "cross" for ``attn2``).
    """

    def __init__(self, dim: int, heads: int, kind: str, context_dim: int | None = None):
        super().__init__()
        if kind not in ("self", "cross"):
            raise ValueError(f"kind must be 'self' or 'cross', got {kind!r}")
        if dim % heads:
            raise ValueError(f"dim={dim} must be divisible by heads={heads}")
        self.kind, self.heads, self.head_dim = kind, heads, dim // heads
        self.is_cross_attention = kind == "cross"  # read by the installer's layer listing
        kv_dim = dim if context_dim is None else context_dim
        self.to_q = nn.Linear(dim, dim)
        self.to_k = nn.Linear(kv_dim, dim)
        self.to_v = nn.Linear(kv_dim, dim)
        self.to_out = nn.Linear(dim, dim)
        self.processor = DiTAttnProcessor()

    def set_processor(self, processor) -> None:
        """Replace the processor (``processor(attn, x, context) -> (B, Lq, dim)``)."""
        self.processor = processor

    def project(self, x: Tensor, context: Tensor | None) -> tuple[Tensor, Tensor, Tensor]:
        """q (B, H, Lq, D) from ``x``; k, v (B, H, Lk, D) from ``x`` (self) or ``context`` (cross)."""
        if self.kind == "cross" and context is None:
            raise ValueError("cross-attention needs the prompt tokens as context (B, Lk, dim)")
        src = x if self.kind == "self" else context

        def split(t):
            return t.view(t.shape[0], t.shape[1], self.heads, self.head_dim).transpose(1, 2)

        return split(self.to_q(x)), split(self.to_k(src)), split(self.to_v(src))

    def merge(self, out: Tensor) -> Tensor:
        """(B, H, Lq, D) heads -> output projection (B, Lq, dim)."""
        b, h, n, d = out.shape
        return self.to_out(out.transpose(1, 2).reshape(b, n, h * d))

    def forward(self, x: Tensor, context: Tensor | None = None) -> Tensor:
        return self.processor(self, x, context)


def timestep_embedding(t: Tensor, dim: int, max_period: float = 10000.0) -> Tensor:
    r"""Sinusoidal embedding of :math:`1000\,t` for t (B,) in [0, 1] -> (B, dim) (DDPM/DiT convention)."""
    half = dim // 2
    freqs = torch.exp(-math.log(max_period) * torch.arange(half, dtype=torch.float32, device=t.device) / half)
    args = 1000.0 * t.float()[:, None] * freqs[None]
    return torch.cat([torch.cos(args), torch.sin(args)], dim=-1)


def _modulate(x: Tensor, shift: Tensor, scale: Tensor) -> Tensor:
    return x * (1 + scale[:, None]) + shift[:, None]


class DiTBlock(nn.Module):
    def __init__(self, dim: int, heads: int, mlp_ratio: int):
        super().__init__()
        self.norm1 = nn.LayerNorm(dim, elementwise_affine=False, eps=1e-6)
        self.attn1 = Attention(dim, heads, "self")
        self.norm2 = nn.LayerNorm(dim, elementwise_affine=False, eps=1e-6)
        self.attn2 = Attention(dim, heads, "cross", context_dim=dim)
        self.norm3 = nn.LayerNorm(dim, elementwise_affine=False, eps=1e-6)
        self.mlp = nn.Sequential(nn.Linear(dim, mlp_ratio * dim), nn.GELU(approximate="tanh"), nn.Linear(mlp_ratio * dim, dim))
        self.ada = nn.Sequential(nn.SiLU(), nn.Linear(dim, 9 * dim))
        nn.init.zeros_(self.ada[1].weight)
        nn.init.zeros_(self.ada[1].bias)

    def forward(self, x: Tensor, temb: Tensor, prompt: Tensor) -> Tensor:
        s1, c1, g1, s2, c2, g2, s3, c3, g3 = self.ada(temb).chunk(9, dim=-1)
        x = x + g1[:, None] * self.attn1(_modulate(self.norm1(x), s1, c1))
        x = x + g2[:, None] * self.attn2(_modulate(self.norm2(x), s2, c2), prompt)
        return x + g3[:, None] * self.mlp(_modulate(self.norm3(x), s3, c3))


@dataclass(frozen=True)
class DiTConfig:
    resolution: int = RESOLUTION
    patch: int = 2
    channels: int = 1
    dim: int = 96
    depth: int = 4
    heads: int = 4
    mlp_ratio: int = 3


class DiT(nn.Module):
    r"""``forward(x (B, 1, 8, 8), t (B,) in [0, 1], labels (B,) int64 in [0, 10]) -> velocity (B, 1, 8, 8)``.

    Flow matching convention: :math:`x_t = (1 - t)\,\varepsilon + t\,x_1` (noise at t = 0, data at t = 1),
    the network predicts :math:`v = x_1 - \varepsilon`. Label 10 is the null prompt.
    """

    def __init__(self, config: DiTConfig = DiTConfig()):
        super().__init__()
        self.config = c = config
        self.grid = c.resolution // c.patch
        self.patch_embed = nn.Linear(c.channels * c.patch * c.patch, c.dim)
        self.pos = nn.Parameter(torch.randn(self.grid * self.grid, c.dim) * 0.02)
        self.t_mlp = nn.Sequential(nn.Linear(c.dim, c.dim), nn.SiLU(), nn.Linear(c.dim, c.dim))
        self.prompt = PromptEncoder(c.dim, c.heads)
        self.blocks = nn.ModuleList(DiTBlock(c.dim, c.heads, c.mlp_ratio) for _ in range(c.depth))
        self.norm_out = nn.LayerNorm(c.dim, elementwise_affine=False, eps=1e-6)
        self.ada_out = nn.Sequential(nn.SiLU(), nn.Linear(c.dim, 2 * c.dim))
        self.out = nn.Linear(c.dim, c.channels * c.patch * c.patch)
        for m in (self.ada_out[1], self.out):
            nn.init.zeros_(m.weight)
            nn.init.zeros_(m.bias)

    # layers="auto" of the installer (hopfield_gag.adapters): every cross-attention layer
    hopfield_gag_auto_layers = (("cross",), None)

    def attention_layers(self) -> dict[str, Attention]:
        """``{qualified name: Attention}`` of every attention layer, in forward order."""
        return {name: m for name, m in self.named_modules() if isinstance(m, Attention)}

    def _patchify(self, x: Tensor) -> Tensor:
        b, ch, h, w = x.shape
        p = self.config.patch
        x = x.view(b, ch, h // p, p, w // p, p).permute(0, 2, 4, 1, 3, 5)
        return x.reshape(b, (h // p) * (w // p), ch * p * p)

    def _unpatchify(self, x: Tensor) -> Tensor:
        b = x.shape[0]
        p, g, ch = self.config.patch, self.grid, self.config.channels
        x = x.view(b, g, g, ch, p, p).permute(0, 3, 1, 4, 2, 5)
        return x.reshape(b, ch, g * p, g * p)

    def forward(self, x: Tensor, t: Tensor, labels: Tensor) -> Tensor:
        r = self.config.resolution
        if x.dim() != 4 or tuple(x.shape[1:]) != (self.config.channels, r, r):
            raise ValueError(f"x must have shape (B, {self.config.channels}, {r}, {r}), got {tuple(x.shape)}")
        if t.shape != (x.shape[0],) or labels.shape != (x.shape[0],):
            raise ValueError(f"t and labels must have shape (B,) = ({x.shape[0]},), got {tuple(t.shape)} and {tuple(labels.shape)}")
        temb = self.t_mlp(timestep_embedding(t, self.config.dim))
        prompt = self.prompt(labels)
        h = self.patch_embed(self._patchify(x)) + self.pos
        for block in self.blocks:
            h = block(h, temb, prompt)
        shift, scale = self.ada_out(temb).chunk(2, dim=-1)
        return self._unpatchify(self.out(_modulate(self.norm_out(h), shift, scale)))
