r"""Named parameter sets for :func:`~hopfield_gag.adapters.apply_gag` and the guiders (``preset=``).

==================  =============================================================================================
preset              parameters
==================  =============================================================================================
``"paper"``         GAG with the paper's SDXL setting: :math:`\lambda = 10`, :math:`\eta = 15`
                    (:class:`~hopfield_gag.GagParams`' defaults)
``"pladis"``        PLADIS with its recommended scale :math:`\lambda = 2` (the ComfyUI PLADIS node's default)
``"conservative"``  GAG at :math:`\lambda = 5`, :math:`\eta = 15`, ``strength = 0.6``, only for
                    :math:`\sigma \in [0.678, 0.881]` (the one published GAG node's setting, for flow-matching
                    schedules with :math:`\sigma \in [0, 1]`): a mild start when the full rule over-sharpens
==================  =============================================================================================

Explicit arguments win over the preset's: ``apply_gag(pipe, preset="paper", lam=5.0)`` is the paper's rule
at :math:`\lambda = 5`.
"""
from __future__ import annotations

from types import MappingProxyType

from ..ops.params import GagParams

__all__ = ["PRESETS", "with_preset"]

PRESETS = MappingProxyType({
    "paper": MappingProxyType(dict(method="gag", lam=GagParams.lam, eta=GagParams.eta)),
    "pladis": MappingProxyType(dict(method="pladis", lam=2.0)),
    "conservative": MappingProxyType(dict(method="gag", lam=5.0, eta=GagParams.eta, strength=0.6,
                                          sigmas=(0.678, 0.881))),
})


def with_preset(preset, params: dict) -> dict:
    """``params`` on top of the preset's (``preset=None``: ``params`` unchanged); an unknown name raises."""
    if preset is None:
        return dict(params)
    if not isinstance(preset, str) or preset not in PRESETS:
        raise ValueError(f"preset must be one of {sorted(PRESETS)} or None, got {preset!r}")
    return {**PRESETS[preset], **params}
