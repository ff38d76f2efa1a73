"""Names, construction, saving and offline loading of the shipped models.

Each shipped model ``<name>`` is two files in ``hopfield_gag/models/weights/``: ``<name>.safetensors`` (the EMA
weights, fp32) and ``<name>.json`` (architecture config and training record), plus its model card
``<name>.md`` and sample grid ``<name>.png``.
"""
from __future__ import annotations

import json
from dataclasses import asdict
from importlib import resources
from pathlib import Path

from torch import nn

__all__ = ["MODELS", "build", "save", "load_model"]

MODELS = ("dit-digits", "unet-digits")


def _check(name: str) -> None:
    if name not in MODELS:
        raise ValueError(f"unknown model {name!r}; expected one of {MODELS}")


def build(name: str, config: dict | None = None) -> nn.Module:
    """A freshly initialised model of the named architecture (``config`` overrides the defaults)."""
    _check(name)
    if name == "dit-digits":
        from .dit import DiT, DiTConfig

        return DiT(DiTConfig(**(config or {})))
    from .unet import DigitsUNet, UNetConfig

    cfg = dict(config or {})
    if "block_out_channels" in cfg:
        cfg["block_out_channels"] = tuple(cfg["block_out_channels"])
    return DigitsUNet(UNetConfig(**cfg))


def save(name: str, model: nn.Module, meta: dict, directory: Path) -> None:
    """Write ``<name>.safetensors`` and ``<name>.json`` (``{"config": ..., "training": meta}``)."""
    from safetensors.torch import save_file

    _check(name)
    directory = Path(directory)
    state = {k: v.detach().contiguous() for k, v in model.state_dict().items()}
    save_file(state, str(directory / f"{name}.safetensors"))
    (directory / f"{name}.json").write_text(json.dumps({"config": asdict(model.config), "training": meta}, indent=2) + "\n")


def load_model(name: str) -> nn.Module:
    """The shipped model ``"dit-digits"`` or ``"unet-digits"``, in eval mode, loaded offline from the package.

    Returns a module ``model(x (B, 1, 16, 16), t (B,), labels (B,)) -> velocity`` (see :mod:`.dit`); sample
    from it with :func:`hopfield_gag.models.sample`.
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
