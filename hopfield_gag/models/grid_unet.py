r"""The grid UNet: a diffusers ``UNet2DConditionModel`` on 24x24 ``digit-grid`` canvases with the binding prompt
encoder of :mod:`.grid_conditioning`.

Levels 24x24 (convolution only: self-attention over 576 tokens would dominate the CPU budget), 12x12 and 6x6
(transformer blocks with self- and cross-attention) and the 6x6 mid block (cross-attention), so cross-attention
runs at several resolutions (144 and 36 image queries against the 9 prompt tokens). Same flow-matching
convention as every shipped model (:math:`x_t = (1 - t)\varepsilon + t x_1`, predict :math:`x_1 - \varepsilon`,
the UNet gets the timestep as :math:`1000 t`). The attention layers are diffusers ``Attention`` modules, so
:func:`hopfield_gag.adapters.apply_gag` installs on ``GridUNet`` (or ``GridUNet.unet``) as in a user's pipeline.

``forward(x (B, 1, 24, 24), t (B,) in [0, 1], tokens (B, 9) int64) -> velocity (B, 1, 24, 24)``.
"""
from __future__ import annotations

from dataclasses import dataclass, fields

from torch import Tensor, nn

from .grid_conditioning import GridPromptEncoder, check_denoiser_inputs
from .grid_data import CANVAS, PROMPT_LENGTH

__all__ = ["GridUNet", "GridUNetConfig"]


@dataclass(frozen=True)
class GridUNetConfig:
    resolution: int = CANVAS
    block_out_channels: tuple = (32, 64, 96)
    cross_attention_dim: int = 64
    attention_head_dim: int = 8
    norm_num_groups: int = 8
    layers_per_block: int = 1

    @classmethod
    def from_dict(cls, d: dict) -> "GridUNetConfig":
        """From a JSON record (lists back to tuples); unknown keys raise."""
        names = {f.name for f in fields(cls)}
        unknown = set(d) - names
        if unknown:
            raise ValueError(f"unknown GridUNetConfig keys {sorted(unknown)}")
        d = dict(d)
        if "block_out_channels" in d:
            d["block_out_channels"] = tuple(d["block_out_channels"])
        return cls(**d)


class GridUNet(nn.Module):
    """See the module docstring; the null prompt is all padding."""

    # layers="auto" of the installer (hopfield_gag.adapters): the cross-attention of every level
    hopfield_gag_auto_layers = (("cross",), None)
    prompt_length = PROMPT_LENGTH

    def __init__(self, config: GridUNetConfig = GridUNetConfig()):
        super().__init__()
        from diffusers import UNet2DConditionModel

        self.config = c = config
        n = len(c.block_out_channels)
        self.unet = UNet2DConditionModel(
            sample_size=c.resolution, in_channels=1, out_channels=1,
            down_block_types=("DownBlock2D",) + ("CrossAttnDownBlock2D",) * (n - 1),
            up_block_types=("CrossAttnUpBlock2D",) * (n - 1) + ("UpBlock2D",),
            mid_block_type="UNetMidBlock2DCrossAttn", block_out_channels=tuple(c.block_out_channels),
            layers_per_block=c.layers_per_block, cross_attention_dim=c.cross_attention_dim,
            attention_head_dim=c.attention_head_dim, norm_num_groups=c.norm_num_groups,
        )
        self.prompt = GridPromptEncoder(c.cross_attention_dim)

    def forward(self, x: Tensor, t: Tensor, tokens: Tensor) -> Tensor:
        check_denoiser_inputs(x, t, tokens, 1, self.config.resolution)
        return self.unet(x, 1000.0 * t, encoder_hidden_states=self.prompt(tokens)).sample
