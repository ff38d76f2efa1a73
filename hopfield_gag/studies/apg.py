r"""Adaptive projected guidance (APG; Sadat, Hilliges & Weber, "Eliminating Oversaturation and Artifacts of High
Guidance Scales in Diffusion Models", ICLR 2025) as a drop-in replacement of the CFG combination of the
project's Euler flow-matching sampler, built on diffusers' own implementation
(:func:`diffusers.guiders.adaptive_projected_guidance.normalized_guidance` and its ``MomentumBuffer``).

APG acts on the *denoised* prediction (the paper's Sec. 4: the update is projected in the space of
:math:`D(x_t)`, not of the noise or velocity). For the straight flow :math:`x_t = (1-t)\varepsilon + t\,x_1`
with velocity :math:`v = x_1 - \varepsilon`, the denoised prediction is :math:`\hat x_1 = x_t + (1-t)\,v`.
Per sample, with :math:`\hat x_1^{u}, \hat x_1^{c}` the unconditional / conditional predictions:

.. math::

    \Delta_k = \hat x_1^{c} - \hat x_1^{u},\qquad
    \bar\Delta_k = \Delta_k + \beta\,\bar\Delta_{k-1}\ \ (\text{momentum; }\bar\Delta_{-1} = 0),\qquad
    \bar\Delta \leftarrow \bar\Delta\,\min\!\big(1, r/\lVert\bar\Delta\rVert\big)\ \ (r > 0),

    \bar\Delta_\parallel = \frac{\langle\bar\Delta, \hat x_1^{c}\rangle}{\lVert\hat x_1^{c}\rVert^2}\,\hat x_1^{c},\qquad
    \hat x_1 = \hat x_1^{u} + w\,\big(\bar\Delta - \bar\Delta_\parallel + \eta\,\bar\Delta_\parallel\big),

and the sampler's velocity is :math:`v = (\hat x_1 - x_t)/(1 - t)` (:math:`t < 1` at every Euler step).
With :math:`\beta = 0, r = 0, \eta = 1` this is exactly CFG, :math:`v_u + w(v_c - v_u)` (tested). The
defaults :math:`\eta = 0, \beta = -0.5` are the paper's recommended setting; the rescaling radius :math:`r` is
off by default (it is scale-dependent: the paper's values are for SD latents, not our 24x24 canvases).
Norms are over every dimension but the batch (per sample), as in diffusers.

An :class:`APG` instance carries the momentum of **one** sampling run: make a new one (or call
:meth:`APG.reset`) per run.
"""
from __future__ import annotations

import math

import torch
from torch import Tensor

__all__ = ["APG"]


class APG:
    r"""Adaptive projected guidance as a sampler ``guider`` (module docstring for the math).

    Parameters
    ----------
    eta : float >= 0
        Weight of the component of the update parallel to the conditional prediction (0 drops it, 1 keeps it).
    momentum : float in (-1, 1)
        :math:`\beta` of the running average of the update (negative = the paper's reverse momentum); 0 = none.
    norm_threshold : float >= 0
        Radius :math:`r` of the update's norm cap (0 = off).

    Call ``apg(v_uncond, v_cond, cfg_scale, x, t) -> v``: velocities and state (B, ...) of one dtype, ``t``
    the flow time in [0, 1) of this step; returns the guided velocity (B, ...).
    """

    def __init__(self, eta: float = 0.0, momentum: float = -0.5, norm_threshold: float = 0.0):
        for name, val, lo, hi in (("eta", eta, 0.0, math.inf), ("momentum", momentum, -1.0, 1.0),
                                  ("norm_threshold", norm_threshold, 0.0, math.inf)):
            if isinstance(val, bool) or not isinstance(val, (int, float)) or not math.isfinite(val):
                raise ValueError(f"{name} must be a finite number, got {val!r}")
        if eta < 0:
            raise ValueError(f"eta must be >= 0, got {eta}")
        if not -1.0 < momentum < 1.0:
            raise ValueError(f"momentum must lie in (-1, 1), got {momentum}")
        if norm_threshold < 0:
            raise ValueError(f"norm_threshold must be >= 0, got {norm_threshold}")
        self.eta, self.momentum, self.norm_threshold = float(eta), float(momentum), float(norm_threshold)
        self.reset()

    def reset(self) -> None:
        """Forget the momentum (start of a new sampling run)."""
        from diffusers.guiders.adaptive_projected_guidance import MomentumBuffer

        self._buffer = MomentumBuffer(self.momentum) if self.momentum != 0.0 else None

    def __call__(self, v_uncond: Tensor, v_cond: Tensor, cfg_scale: float, x: Tensor, t: float) -> Tensor:
        from diffusers.guiders.adaptive_projected_guidance import normalized_guidance

        if v_uncond.shape != v_cond.shape or v_cond.shape != x.shape:
            raise ValueError(f"v_uncond, v_cond and x must have one shape, got {tuple(v_uncond.shape)}, "
                             f"{tuple(v_cond.shape)}, {tuple(x.shape)}")
        t = float(t)
        if not 0.0 <= t < 1.0:
            raise ValueError(f"t must lie in [0, 1) (the flow time of an Euler step), got {t}")
        if isinstance(cfg_scale, bool) or not math.isfinite(float(cfg_scale)) or cfg_scale < 0:
            raise ValueError(f"cfg_scale must be a finite number >= 0, got {cfg_scale!r}")
        # denoised predictions x1 = x_t + (1 - t) v; APG projects there (the paper's space), then back
        x1_u, x1_c = x + (1.0 - t) * v_uncond, x + (1.0 - t) * v_cond
        x1 = normalized_guidance(x1_c, x1_u, float(cfg_scale), self._buffer, self.eta, self.norm_threshold)
        return (x1 - x) / (1.0 - t)

    def __repr__(self):
        return f"APG(eta={self.eta}, momentum={self.momentum}, norm_threshold={self.norm_threshold})"
