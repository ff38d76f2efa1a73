r"""The grid MMDiT: a diffusers ``SD3Transformer2DModel`` (joint attention) on 24x24 ``digit-grid`` canvases with
the binding prompt encoder of :mod:`.grid_conditioning`.

Patch 2 -> 144 image tokens; in every block the 9 prompt tokens and the image tokens attend *jointly* (one
softmax over [image; prompt] keys, separate projections per stream, as in SD3), so
:func:`hopfield_gag.adapters.apply_gag` takes its joint-attention (mass-preserving) path here on trained
weights. The pooled projection is the mean of the prompt states. Same flow-matching convention as every
shipped model (:math:`x_t = (1 - t)\varepsilon + t x_1`, predict :math:`x_1 - \varepsilon`); the transformer
gets the timestep as :math:`1000 t`.

``forward(x (B, 1, 24, 24), t (B,) in [0, 1], tokens (B, 9) int64) -> velocity (B, 1, 24, 24)``.
"""
from __future__ import annotations

from dataclasses import dataclass

from torch import Tensor, nn

from .grid_conditioning import GridPromptEncoder, check_denoiser_inputs
from .grid_data import CANVAS, PROMPT_LENGTH

__all__ = ["GridSD3", "GridSD3Config"]


@dataclass(frozen=True)
class GridSD3Config:
    resolution: int = CANVAS
    patch: int = 2
    num_layers: int = 4
    heads: int = 4
    head_dim: int = 32
    prompt_dim: int = 128


class GridSD3(nn.Module):
    """See the module docstring; the null prompt is all padding."""

    # layers="auto" of the installer: every joint-attention layer (as for SD3Transformer2DModel itself)
    hopfield_gag_auto_layers = (("joint",), None)
    prompt_length = PROMPT_LENGTH

    def __init__(self, config: GridSD3Config = GridSD3Config()):
        super().__init__()
        from diffusers import SD3Transformer2DModel

        self.config = c = config
        inner = c.heads * c.head_dim
        self.transformer = SD3Transformer2DModel(
            sample_size=c.resolution, patch_size=c.patch, in_channels=1, out_channels=1, num_layers=c.num_layers,
            attention_head_dim=c.head_dim, num_attention_heads=c.heads, joint_attention_dim=c.prompt_dim,
            caption_projection_dim=inner, pooled_projection_dim=c.prompt_dim,
            pos_embed_max_size=c.resolution // c.patch,
        )
        self.prompt = GridPromptEncoder(c.prompt_dim, c.heads)

    def forward(self, x: Tensor, t: Tensor, tokens: Tensor) -> Tensor:
        check_denoiser_inputs(x, t, tokens, 1, self.config.resolution)
        prompt = self.prompt(tokens)
        return self.transformer(x, encoder_hidden_states=prompt, pooled_projections=prompt.mean(1),
                                timestep=1000.0 * t).sample
