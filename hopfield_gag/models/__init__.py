"""Layer ``models``: small diffusion models trained on real digits and shipped with the toolkit, a judge of
their samples, and the ``demo`` main job.

- :func:`load_model` ``("dit-digits" | "unet-digits")``: a class-conditional DiT and a diffusers
  ``UNet2DConditionModel``, flow matching on scikit-learn's 8x8 digits, cross-attention to an 8-token prompt;
- :func:`sample`: Euler flow-matching sampler with CFG and the attention method per call;
- :func:`load_judge`: a digit classifier as a proxy judge (accuracy, Fréchet distance, diversity).
"""
from .registry import MODELS, load_model
from .sampling import sample
from .judge import Judge, load_judge

__all__ = ["MODELS", "load_model", "sample", "load_judge", "Judge"]
