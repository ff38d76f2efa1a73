r"""Saved diffusers denoisers run without their pipelines: load one from its directory and sample it from
seeded noise with random conditioning through an Euler flow loop.

Used by ``hopfield-gag capture --model PATH`` to record the attention tensors of a real model's weights on
its own trajectory, without text encoders. Supported: ``UNet2DConditionModel``, ``SD3Transformer2DModel``,
``FluxTransformer2DModel``, ``QwenImageTransformer2DModel`` (:data:`SUPPORTED_DENOISERS`).

The loop integrates the flow ODE from noise :math:`t = 1` to data :math:`t = 0` on the uniform grid
:math:`t_i = 1 - i/N`: :math:`x \leftarrow x + (t_{i+1} - t_i)\,v(x, t_i)`; under classifier-free guidance
(``cfg_scale != 1``) the batch is ``[uncond (zero conditioning); cond]`` and
:math:`v = v_u + w (v_c - v_u)`.
"""
from __future__ import annotations

import json
from pathlib import Path
from typing import Callable, Optional

__all__ = ["SUPPORTED_DENOISERS", "check_denoiser_dir", "load_denoiser", "denoiser_inputs", "sample_denoiser"]

SUPPORTED_DENOISERS = ("UNet2DConditionModel", "SD3Transformer2DModel", "FluxTransformer2DModel",
                       "QwenImageTransformer2DModel")
_WEIGHTS = ("diffusion_pytorch_model*.safetensors", "diffusion_pytorch_model*.bin",
            "diffusion_pytorch_model*.index.json")


def check_denoiser_dir(path) -> str:
    """Check, without importing diffusers or reading weights, that ``path`` is a saved denoiser this module
    runs: a directory with a JSON ``config.json`` naming a supported ``_class_name`` and a weights file.
    Returns the class name; raises ``ValueError`` naming the problem."""
    path = Path(path)
    if (path / "model_index.json").is_file():
        raise ValueError(f"{path} is a diffusers *pipeline* directory; pass its denoiser directory "
                         f"({path}/unet or {path}/transformer), or capture a pipeline from Python: "
                         "`with capture(pipe, out_dir): pipe(...)`")
    cfg_file = path / "config.json"
    if not cfg_file.is_file():
        raise ValueError(f"{path} is not a diffusers model directory (no config.json)")
    try:
        cfg = json.loads(cfg_file.read_text())
    except (ValueError, RecursionError) as exc:
        raise ValueError(f"{cfg_file} is not valid JSON ({str(exc)[:120]})") from None
    cls_name = cfg.get("_class_name") if isinstance(cfg, dict) else None
    if cls_name not in SUPPORTED_DENOISERS:
        raise ValueError(f"{cfg_file} names class {cls_name!r}; supported denoisers: {', '.join(SUPPORTED_DENOISERS)}")
    if not any(next(path.glob(pattern), None) for pattern in _WEIGHTS):
        raise ValueError(f"{path} holds no weights (expected diffusion_pytorch_model.safetensors or .bin)")
    return cls_name


def load_denoiser(path):
    """The denoiser saved in ``path`` (checked by :func:`check_denoiser_dir`), in eval mode, loaded offline."""
    cls_name = check_denoiser_dir(path)
    import diffusers
    from diffusers.utils import is_accelerate_available

    try:  # low_cpu_mem_usage needs accelerate; saying so up front keeps diffusers from warning about it
        return getattr(diffusers, cls_name).from_pretrained(
            str(path), local_files_only=True, low_cpu_mem_usage=is_accelerate_available()).eval()
    except Exception as exc:  # diffusers raises OSError, ValueError, safetensors errors... for broken files
        msg = " ".join(str(exc).split())[:300]
        raise ValueError(f"{path}: diffusers could not load the {cls_name} ({type(exc).__name__}: {msg})") from None


def denoiser_inputs(model, batch: int, size: int, gen):
    """Seeded latent and conditioning for one of the supported denoisers.

    Returns ``(x0, make_kwargs)``: the initial noise (``(B, C, s, s)`` for the UNet and SD3, ``(B, s*s, C)``
    tokens for Flux and Qwen-Image; ``size`` = the side ``s``, 0 for the config's default) and
    ``make_kwargs(x, t, rows)`` building the model's keyword arguments at flow time ``t`` (shape ``(1,)``),
    where ``rows(c)`` maps a conditioning tensor to the batch's rows (``[zeros; c]`` under CFG).
    """
    import torch

    cfg = model.config
    cls = type(model).__name__
    n_txt = 8
    if cls == "UNet2DConditionModel":
        s = size or min(int(cfg.sample_size), 32)
        x0 = torch.randn(batch, cfg.in_channels, s, s, generator=gen)
        ctx = torch.randn(batch, n_txt, cfg.cross_attention_dim, generator=gen)
        added = None
        if cfg.addition_embed_type == "text_time":
            dt = cfg.projection_class_embeddings_input_dim - 6 * cfg.addition_time_embed_dim
            added = {"text_embeds": torch.randn(batch, dt, generator=gen), "time_ids": torch.randn(batch, 6, generator=gen)}
        elif cfg.addition_embed_type is not None:
            raise ValueError(f"UNet2DConditionModel with addition_embed_type={cfg.addition_embed_type!r} is not supported")

        def kwargs(x, t, ctx_rows):
            kw = dict(sample=x, timestep=t * 1000.0, encoder_hidden_states=ctx_rows(ctx))
            if added is not None:
                kw["added_cond_kwargs"] = {k: torch.cat([v] * (x.shape[0] // batch)) for k, v in added.items()}
            return kw
        return x0, kwargs
    if cls == "SD3Transformer2DModel":
        s = size or min(int(cfg.sample_size), 32)
        x0 = torch.randn(batch, cfg.in_channels, s, s, generator=gen)
        ctx = torch.randn(batch, n_txt, cfg.joint_attention_dim, generator=gen)
        pooled = torch.randn(batch, cfg.pooled_projection_dim, generator=gen)
        return x0, lambda x, t, rows: dict(hidden_states=x, encoder_hidden_states=rows(ctx),
                                           pooled_projections=rows(pooled), timestep=(t * 1000.0).expand(x.shape[0]))
    if cls == "FluxTransformer2DModel":
        side = size or 4
        x0 = torch.randn(batch, side * side, cfg.in_channels, generator=gen)
        ctx = torch.randn(batch, n_txt, cfg.joint_attention_dim, generator=gen)
        pooled = torch.randn(batch, cfg.pooled_projection_dim, generator=gen)
        img_ids = torch.zeros(side, side, 3)
        img_ids[..., 1] = torch.arange(side)[:, None]
        img_ids[..., 2] = torch.arange(side)[None, :]

        def kwargs(x, t, rows):
            kw = dict(hidden_states=x, encoder_hidden_states=rows(ctx), pooled_projections=rows(pooled),
                      img_ids=img_ids.reshape(-1, 3), txt_ids=torch.zeros(n_txt, 3), timestep=t.expand(x.shape[0]))
            if cfg.guidance_embeds:
                kw["guidance"] = torch.full((x.shape[0],), 3.5)
            return kw
        return x0, kwargs
    if cls == "QwenImageTransformer2DModel":
        side = size or 4
        x0 = torch.randn(batch, side * side, cfg.in_channels, generator=gen)
        ctx = torch.randn(batch, n_txt, cfg.joint_attention_dim, generator=gen)
        return x0, lambda x, t, rows: dict(
            hidden_states=x, encoder_hidden_states=rows(ctx), encoder_hidden_states_mask=torch.ones(
                x.shape[0], n_txt, dtype=torch.long), timestep=t.expand(x.shape[0]), img_shapes=[(1, side, side)] * x.shape[0])
    raise ValueError(f"{cls} is not one of the supported denoisers ({', '.join(SUPPORTED_DENOISERS)})")


def sample_denoiser(model, steps: int, cfg_scale: float = 1.0, batch: int = 1, size: int = 0, seed: int = 0,
                    on_step: Optional[Callable[[int, int, float], None]] = None, progress: bool = False):
    r"""Integrate the flow ODE of ``model`` for ``steps`` Euler steps from seeded noise (module docstring).

    ``on_step(i, steps, t_i)`` is called before step ``i`` (e.g. ``Capture.set_step``); ``progress`` shows a
    bar. Returns the final latent (same shape as the initial noise, see :func:`denoiser_inputs`).
    """
    import torch
    from tqdm.auto import tqdm

    gen = torch.Generator().manual_seed(seed)
    x, make = denoiser_inputs(model, batch, size, gen)
    guided = cfg_scale != 1.0

    def rows(c):  # [uncond (zero conditioning); cond] under CFG
        return torch.cat([torch.zeros_like(c), c]) if guided else c

    ts = torch.linspace(1.0, 0.0, steps + 1)
    with torch.no_grad(), tqdm(total=steps, desc=f"sample {type(model).__name__}", disable=not progress) as bar:
        for i in range(steps):
            t = ts[i]
            if on_step is not None:
                on_step(i, steps, float(t))
            x_in = torch.cat([x, x]) if guided else x
            out = model(**make(x_in, t.reshape(1), rows))[0]
            if guided:
                u, c = out.chunk(2)
                out = u + cfg_scale * (c - u)
            x = x + (ts[i + 1] - t) * out
            bar.update(1)
    return x
