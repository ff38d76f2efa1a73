r"""The shipped diffusers UNet: a ``UNet2DConditionModel`` (8x8, two levels + mid) with cross-attention at every level.

``DigitsUNet`` pairs the UNet with the same 8-token :class:`~.conditioning.PromptEncoder` as the DiT and the
same flow-matching convention (:math:`x_t = (1 - t)\varepsilon + t x_1`, predict :math:`x_1 - \varepsilon`;
the UNet gets the timestep as :math:`1000 t`). Its attention layers are diffusers ``Attention`` modules, so
the installer of :mod:`hopfield_gag.adapters` applies to ``DigitsUNet`` (or to ``DigitsUNet.unet``) unchanged.
"""
from __future__ import annotations

from dataclasses import asdict, dataclass

import torch
from torch import Tensor, nn

from .conditioning import PromptEncoder
from .data import RESOLUTION

__all__ = ["DigitsUNet", "UNetConfig"]


@dataclass(frozen=True)
class UNetConfig:
    resolution: int = RESOLUTION
    block_out_channels: tuple = (32, 64)
    cross_attention_dim: int = 64
    attention_head_dim: int = 8
    norm_num_groups: int = 8
    layers_per_block: int = 1


class DigitsUNet(nn.Module):
    """``forward(x (B, 1, 8, 8), t (B,) in [0, 1], labels (B,) int64 in [0, 10]) -> velocity (B, 1, 8, 8)``."""

    # layers="auto" of the installer (hopfield_gag.adapters): the cross-attention of every level
    hopfield_gag_auto_layers = (("cross",), None)

    def __init__(self, config: UNetConfig = UNetConfig()):
        super().__init__()
        from diffusers import UNet2DConditionModel

        self.config = c = config
        n = len(c.block_out_channels)
        self.unet = UNet2DConditionModel(
            sample_size=c.resolution, in_channels=1, out_channels=1,
            down_block_types=("CrossAttnDownBlock2D",) * n, up_block_types=("CrossAttnUpBlock2D",) * n,
            mid_block_type="UNetMidBlock2DCrossAttn", block_out_channels=tuple(c.block_out_channels),
            layers_per_block=c.layers_per_block, cross_attention_dim=c.cross_attention_dim,
            attention_head_dim=c.attention_head_dim, norm_num_groups=c.norm_num_groups,
        )
        self.prompt = PromptEncoder(c.cross_attention_dim)

    def forward(self, x: Tensor, t: Tensor, labels: Tensor) -> Tensor:
        r = self.config.resolution
        if x.dim() != 4 or tuple(x.shape[1:]) != (1, r, r):
            raise ValueError(f"x must have shape (B, 1, {r}, {r}), got {tuple(x.shape)}")
        if t.shape != (x.shape[0],) or labels.shape != (x.shape[0],):
            raise ValueError(f"t and labels must have shape (B,) = ({x.shape[0]},), got {tuple(t.shape)} and {tuple(labels.shape)}")
        return self.unet(x, 1000.0 * t, encoder_hidden_states=self.prompt(labels)).sample
