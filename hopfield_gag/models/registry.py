"""Names, construction, saving and offline loading of the shipped models.

Each shipped model ``<name>`` is two files in ``hopfield_gag/models/weights/``: ``<name>.safetensors`` (the EMA
weights, fp32, or fp16 where the record says so) and ``<name>.json`` (architecture config and training record), plus its model card
``<name>.md`` and sample grid ``<name>.png``.
"""
from __future__ import annotations

import json
from dataclasses import asdict
from importlib import resources
from pathlib import Path

from torch import nn

__all__ = ["MODELS", "build", "save", "load_model"]

MODELS = ("dit-digits", "unet-digits", "dit-grid", "dit-grid-undertrained", "unet-grid", "sd3-grid", "dit-grid-student")
# architectures that can be built (and trained) even before their weights are shipped
_ARCHITECTURES = MODELS


def _check(name: str, names=MODELS) -> None:
    if name not in names:
        raise ValueError(f"unknown model {name!r}; expected one of {names}")


def build(name: str, config: dict | None = None) -> nn.Module:
    """A freshly initialised model of the named architecture (``config`` overrides the defaults)."""
    _check(name, _ARCHITECTURES)
    if name.startswith("dit-grid"):
        from .grid_dit import GridDiT, GridDiTConfig

        return GridDiT(GridDiTConfig(**(config or {})))
    if name == "unet-grid":
        from .grid_unet import GridUNet, GridUNetConfig

        return GridUNet(GridUNetConfig.from_dict(config or {}))
    if name == "sd3-grid":
        from .grid_sd3 import GridSD3, GridSD3Config

        return GridSD3(GridSD3Config(**(config or {})))
    if name == "dit-digits":
        from .dit import DiT, DiTConfig

        return DiT(DiTConfig(**(config or {})))
    from .unet import DigitsUNet, UNetConfig

    cfg = dict(config or {})
    if "block_out_channels" in cfg:
        cfg["block_out_channels"] = tuple(cfg["block_out_channels"])
    return DigitsUNet(UNetConfig(**cfg))


def _config_dict(config) -> dict:
    return config.to_dict() if hasattr(config, "to_dict") else asdict(config)


def save(name: str, model: nn.Module, meta: dict, directory: Path, half: bool = False) -> None:
    """Write ``<name>.safetensors`` and ``<name>.json`` (``{"config": ..., "training": meta}``); ``half``
    stores floating tensors in fp16 (loading casts them back to the model's fp32 parameters)."""
    from safetensors.torch import save_file

    _check(name, _ARCHITECTURES)
    directory = Path(directory)
    state = {k: (v.half() if half and v.is_floating_point() else v).detach().contiguous()
             for k, v in model.state_dict().items()}
    save_file(state, str(directory / f"{name}.safetensors"))
    (directory / f"{name}.json").write_text(json.dumps({"config": _config_dict(model.config), "training": meta}, indent=2) + "\n")


def load_model(name: str) -> nn.Module:
    """A shipped model of :data:`MODELS`, in eval mode, loaded offline from the package.

    Digit models (``"dit-digits"``, ``"unet-digits"``): ``model(x (B, 1, 8, 8), t (B,), labels (B,)) ->
    velocity`` (see :mod:`.dit`). Grid models (``"dit-grid"``, ``"unet-grid"``, ``"sd3-grid"``,
    ``"dit-grid-undertrained"``, ``"dit-grid-student"``): ``model(x (B, 1, 24, 24), t (B,), tokens (B, 9)) ->
    velocity`` (see :mod:`.grid_dit`, :mod:`.grid_unet`, :mod:`.grid_sd3`). Sample from either with
    :func:`hopfield_gag.models.sample` (grid prompts as strings like ``"r0c0:3 r2c1:7"``).
    """
    from safetensors.torch import load_file

    _check(name)
    root = resources.files("hopfield_gag.models").joinpath("weights")
    meta = json.loads(root.joinpath(f"{name}.json").read_text())
    model = build(name, meta["config"])
    with resources.as_file(root.joinpath(f"{name}.safetensors")) as path:
        model.load_state_dict(load_file(str(path)))
    model.training_record = meta["training"]
    return model.eval().requires_grad_(False)
