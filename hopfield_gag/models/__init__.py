"""Layer 6, models: small diffusion models trained on real digits and shipped with the toolkit, a judge of
their samples, and the ``demo`` main job.

- :func:`load_model` ``("dit-digits" | "unet-digits")``: a class-conditional DiT and a diffusers
  ``UNet2DConditionModel``, flow matching on scikit-learn's 8x8 digits, cross-attention to an 8-token prompt;
- the ``digit-grid`` models (names containing ``grid``, see :data:`MODELS`): 24x24 compositional canvases
  (3x3 cells of real digits) from prompts like ``"r0c0:3 r2c1:7"`` (:mod:`.grid_data`), as the project's DiT,
  a diffusers ``UNet2DConditionModel``, a diffusers ``SD3Transformer2DModel`` (joint attention), an
  under-trained DiT checkpoint and a few-step (reflow-distilled) DiT student;
- :func:`sample`: Euler flow-matching sampler with CFG and the attention method per call;
- :mod:`.denoisers`: a saved diffusers denoiser (UNet, SD3, Flux, Qwen-Image) loaded from its directory and run
  by an Euler flow loop from seeded noise, without its pipeline (``hopfield-gag capture --model PATH``);
- :mod:`.report`: the sample grid PNG and the judge's metrics shared by the demo and the model cards;
- :func:`load_judge`: a digit classifier as a proxy judge (accuracy, Fréchet distance, diversity);
  ``load_judge("digit-grid")`` the canvas judge (cell reading, exact match, Fréchet distances, realism).
"""
from .registry import MODELS, load_model
from .sampling import sample
from .judge import Judge, load_judge

__all__ = ["MODELS", "load_model", "sample", "load_judge", "Judge"]
