r"""Euler flow-matching sampler of the shipped digit models, with classifier-free guidance and the attention
method per call.

The models predict the velocity :math:`v_\theta(x_t, t, c) \approx x_1 - \varepsilon` of the straight path
:math:`x_t = (1 - t)\,\varepsilon + t\,x_1` (noise at :math:`t = 0`, data at :math:`t = 1`). With ``steps``
:math:`= N`, :math:`t_i = i/N` and

.. math::

    x_{t_{i+1}} = x_{t_i} + \tfrac1N\,\big[v(x_{t_i}, t_i, \varnothing)
        + w\,\big(v(x_{t_i}, t_i, c) - v(x_{t_i}, t_i, \varnothing)\big)\big],

where :math:`w` is ``cfg_scale`` (:math:`w = 1`: conditional only, one model call per step; otherwise the
batch is ``[uncond; cond]``, one call per step). Images are returned as :math:`(x_1 + 1)/2` clamped to [0, 1].
"""
from __future__ import annotations

import math
from typing import Sequence

import torch
from torch import Tensor, nn

from .conditioning import NULL_CLASS
from .data import NUM_CLASSES

__all__ = ["sample"]


def _is_grid(model: nn.Module) -> bool:
    """A ``digit-grid`` model reads token prompts (B, prompt_length) instead of class labels (B,)."""
    return getattr(model, "prompt_length", None) is not None


def _grid_tokens(prompts) -> Tensor:
    from .grid_data import PROMPT_LENGTH, layouts_to_tokens, prompts_to_layouts

    if isinstance(prompts, Tensor):
        if prompts.dtype != torch.int64 or prompts.dim() != 2 or prompts.shape[1] != PROMPT_LENGTH or not len(prompts):
            raise ValueError(f"grid prompts given as a tensor must be int64 tokens (B, {PROMPT_LENGTH}), got "
                             f"{prompts.dtype} {tuple(prompts.shape)}")
        from .grid_data import tokens_to_layouts

        tokens_to_layouts(prompts)  # validates the token range
        return prompts
    return layouts_to_tokens(prompts_to_layouts(prompts))


def _conditions(model: nn.Module, prompts) -> tuple[Tensor, Tensor]:
    """(conditions for the model, the null condition of the same shape) for digit labels or grid prompts."""
    if _is_grid(model):
        from .grid_data import NULL_TOKEN

        tokens = _grid_tokens(prompts)
        return tokens, torch.full_like(tokens, NULL_TOKEN)
    y = _labels(prompts)
    return y, torch.full_like(y, NULL_CLASS)


def _labels(labels) -> Tensor:
    y = torch.as_tensor(labels)
    if y.dim() != 1 or y.numel() == 0 or y.dtype.is_floating_point or y.dtype == torch.bool:
        raise ValueError(f"labels must be a non-empty 1-D sequence of ints, got {tuple(y.shape)} {y.dtype}")
    y = y.to(torch.int64)
    if int(y.min()) < 0 or int(y.max()) >= NUM_CLASSES:
        raise ValueError(f"labels must be digits in [0, {NUM_CLASSES - 1}], got min {int(y.min())} max {int(y.max())}")
    return y


def _installed_handle(model: nn.Module):
    from ..adapters import installed

    handles = installed(model)
    return handles[0] if handles else None  # every installed function shares the model's one state


@torch.inference_mode()
def sample(model: nn.Module, prompts: Sequence | Tensor, steps: int = 8, cfg_scale: float = 2.0,
           method: str = "dense", seed: int = 0, layers="auto", guide_self: bool = False, progress: bool = False,
           guider=None, **attention_params) -> Tensor:
    r"""Sample images for the given prompts from a shipped model (:func:`~hopfield_gag.models.load_model`).

    Parameters
    ----------
    model : a model of :func:`load_model` (digit models ``*-digits``, grid models ``*-grid*``).
    prompts : digit models: B digit classes in [0, 9]. Grid models: B prompts, each a string like
        ``"r0c0:3 r2c1:7"`` or a list of (row, col, digit) triples (a single string is one prompt), or
        already-encoded tokens (B, 9) int64 (:mod:`hopfield_gag.models.grid_data`).
    steps : Euler steps, 1..50.
    cfg_scale : classifier-free guidance weight :math:`w \ge 0` (1 = no guidance).
    method : ``"dense"`` (stock attention) or a :func:`hopfield_gag.gag_attention` method ("gag", "pladis",
        "sparse", "aa"), installed for the call with :func:`hopfield_gag.adapters.apply_gag` on ``layers``
        (default "auto": every cross-attention layer) and removed afterwards.
    seed : seed of the initial noise (the only randomness: the result is deterministic under it).
    layers, guide_self : as in :func:`~hopfield_gag.adapters.apply_gag`.
    progress : show a progress bar over the steps.
    guider : optional callable ``(v_uncond, v_cond, cfg_scale, x, t) -> v`` replacing the CFG combination
        when ``cfg_scale != 1`` (e.g. :class:`hopfield_gag.studies.apg.APG`); None = CFG as above.
    **attention_params : ``lam``, ``eta``, ``zeta``, ``alpha``, ``strength``, ``steps`` window, ... of
        :class:`~hopfield_gag.adapters.GuidedAttention`.

    Every attention call made through an installed attention function (this one, or one installed by the
    caller, e.g. :func:`hopfield_gag.capture.capture`) carries ``step`` (0-based), ``num_steps`` and
    ``timestep`` :math:`t_i` (flow time, 0 = noise) and, under CFG, ``branches`` (``"uncond"`` rows first).

    Returns
    -------
    Tensor (B, 1, R, R) float32 in [0, 1] (R = 8 for the digit models, 24 for the grid models).
    """
    y, y_null = _conditions(model, prompts)
    if isinstance(steps, bool) or not isinstance(steps, int) or not 1 <= steps <= 50:
        raise ValueError(f"steps must be an int in [1, 50], got {steps!r}")
    if isinstance(cfg_scale, bool) or not isinstance(cfg_scale, (int, float)) or not math.isfinite(cfg_scale) or cfg_scale < 0:
        raise ValueError(f"cfg_scale must be a finite number >= 0, got {cfg_scale!r}")
    if not isinstance(seed, int) or isinstance(seed, bool):
        raise ValueError(f"seed must be an int, got {seed!r}")
    res = model.config.resolution
    b = y.shape[0]
    gen = torch.Generator().manual_seed(seed)
    x = torch.randn((b, 1, res, res), generator=gen)
    cfg = float(cfg_scale) != 1.0
    y_in = torch.cat([y_null, y]) if cfg else y

    own = None
    if method != "dense" or attention_params:
        from ..adapters import apply_gag

        own = apply_gag(model, layers=layers, method=method, guide_self=guide_self, **attention_params)
    handle = _installed_handle(model)
    if handle is not None:
        handle.state.batch_branches = ("uncond",) * b + ("cond",) * b if cfg else ("cond",) * b
    bar = None
    if progress:
        from tqdm.auto import tqdm

        bar = tqdm(total=steps, desc=f"sampling ({method})", leave=False)
    try:
        for i in range(steps):
            t = i / steps
            if handle is not None:
                handle.state.set_step(i, steps, timestep=t)
            x_in = torch.cat([x, x]) if cfg else x
            v = model(x_in, torch.full((x_in.shape[0],), t), y_in)
            if cfg:
                v_u, v_c = v.chunk(2)
                v = v_u + cfg_scale * (v_c - v_u) if guider is None else guider(v_u, v_c, cfg_scale, x, t)
            x = x + v / steps
            if bar is not None:
                bar.update(1)
    finally:
        if bar is not None:
            bar.close()
        if own is not None:
            own.remove()
    return ((x + 1.0) / 2.0).clamp_(0.0, 1.0)
