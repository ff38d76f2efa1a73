r"""GAG and PLADIS as diffusers guiders, for modular pipelines (``diffusers.guiders``; needs diffusers).

:class:`GAGGuidance` is diffusers' :class:`~diffusers.ClassifierFreeGuidance` (so CFG keeps working: same
``guidance_scale``, ``guidance_rescale``, ``start``/``stop``) that also guides the denoiser's attention during
its passes. A modular pipeline calls ``prepare_models(denoiser)`` before each pass and ``cleanup_models`` after
it; the guider knows which pass is conditional (diffusers' ``is_conditional``: the first pass of a CFG step),
so it installs :class:`~hopfield_gag.adapters.GuidedAttention` for that pass, labels the pass's rows
(``cond``/``uncond``) and tells the attention function the step — no ``cache_context``, no batch guessing.
With ``branches="cond"`` (the default) the unconditional pass runs the stock attention.

Parameters beyond CFG's are those of :func:`~hopfield_gag.adapters.apply_gag`: ``method``, ``lam``, ``eta``,
``zeta``, ``alpha``, ``strength``, ``parallel``, ``layers``, ``branches``, ``via``, ``guide_self``,
``preset``; the step window is ``gag_start``/``gag_stop`` (fractions: step ``i`` of ``N`` is guided when
``gag_start <= i/N < gag_stop``, the rule of ``apply_gag(steps=(start, stop))``; named like PAG's
``perturbed_guidance_start``/``stop`` so that the saved config stays unambiguous JSON). A guider sees the
step, not the noise level, so a ``sigmas`` window is not available here (the ``"conservative"`` preset,
which has one, raises). ``save_pretrained`` / ``from_pretrained`` / ``new(...)`` work as for diffusers' guiders.

:class:`PLADISGuidance` is the same with ``method="pladis"`` and :math:`\lambda = 2`.
"""
from __future__ import annotations

from typing import Optional

from diffusers.configuration_utils import register_to_config
from diffusers.guiders import ClassifierFreeGuidance

from .gag import GuidedAttention
from .install import VIAS, install_attention_fn
from .presets import with_preset

__all__ = ["GAGGuidance", "PLADISGuidance"]


class GAGGuidance(ClassifierFreeGuidance):
    r"""Classifier-free guidance plus GAG (or PLADIS, ...) in the denoiser's attention (module docstring).

    Example::

        pipe.update_components(guider=GAGGuidance(guidance_scale=5.0, lam=10.0, eta=15.0))
        image = pipe(prompt=..., output="images")
    """

    _method_default = "gag"

    @register_to_config
    def __init__(self, guidance_scale: float = 7.5, guidance_rescale: float = 0.0,
                 use_original_formulation: bool = False, start: float = 0.0, stop: float = 1.0, enabled: bool = True,
                 method: Optional[str] = None, lam: Optional[float] = None, eta: Optional[float] = None,
                 zeta: Optional[float] = None, alpha: Optional[float] = None, strength: Optional[float] = None,
                 parallel: Optional[str] = None, gag_start: float = 0.0, gag_stop: float = 1.0, layers="auto",
                 branches: str = "cond", via: str = "auto", guide_self: bool = False, preset: Optional[str] = None):
        super().__init__(guidance_scale=guidance_scale, guidance_rescale=guidance_rescale,
                         use_original_formulation=use_original_formulation, start=start, stop=stop, enabled=enabled)
        self._gag_setup(method, lam, eta, zeta, alpha, strength, parallel, gag_start, gag_stop, layers, branches, via,
                        guide_self, preset)

    def _gag_setup(self, method, lam, eta, zeta, alpha, strength, parallel, gag_start, gag_stop, layers, branches,
                   via, guide_self, preset):
        given = dict(method=method, lam=lam, eta=eta, zeta=zeta, alpha=alpha, strength=strength, parallel=parallel)
        params = with_preset(preset, {k: v for k, v in given.items() if v is not None})
        if "sigmas" in params:
            raise ValueError(f"preset {preset!r} has a sigmas window, which a guider cannot apply (it sees the step, "
                             f"not sigma); use apply_gag(pipe, preset={preset!r}) or gag_start/gag_stop")
        params.setdefault("method", self._method_default)
        if via not in VIAS:
            raise ValueError(f"via must be one of {VIAS}, got {via!r}")
        window = None if (gag_start, gag_stop) == (0.0, 1.0) else (gag_start, gag_stop)
        # validated once, here: a bad value fails at construction, not in the middle of a run
        self._attention = GuidedAttention(steps=window, branches="all", **params)
        self._branches = branches
        if branches not in ("all", "cond"):
            raise ValueError(f"branches must be 'all' or 'cond', got {branches!r}")
        self._layers = list(layers) if isinstance(layers, tuple) else layers
        self._via = via
        self._kinds = ("cross", "joint", "self") if guide_self else ("cross", "joint")
        self._handle = None

    @property
    def attention(self) -> GuidedAttention:
        """The attention function installed during the guided passes (its ``log``, counters, parameters)."""
        return self._attention

    def prepare_models(self, denoiser) -> None:
        super().prepare_models(denoiser)  # counts the pass: the first of a step is the conditional one
        branch = "cond" if self.is_conditional else "uncond"
        if self._branches == "cond" and branch != "cond":
            return
        if self._handle is not None:  # a pass whose cleanup never ran (an exception in the pipeline)
            self._handle.remove()
        handle = install_attention_fn(denoiser, self._attention, self._layers, kinds=self._kinds, via=self._via)
        try:
            if self._step is not None and self._num_inference_steps is not None:
                handle.state.set_step(int(self._step), int(self._num_inference_steps), timestep=_float(self._timestep))
            handle.state.branch = branch  # every row of this pass
        except BaseException:
            handle.remove()
            raise
        self._handle = handle

    def cleanup_models(self, denoiser) -> None:
        super().cleanup_models(denoiser)
        if self._handle is not None:
            self._handle.state.branch = None
            self._handle.remove()
            self._handle = None


class PLADISGuidance(GAGGuidance):
    r"""Classifier-free guidance plus PLADIS (:math:`\lambda = 2` by default) in the denoiser's attention."""

    _method_default = "pladis"

    @register_to_config
    def __init__(self, guidance_scale: float = 7.5, guidance_rescale: float = 0.0,
                 use_original_formulation: bool = False, start: float = 0.0, stop: float = 1.0, enabled: bool = True,
                 lam: float = 2.0, alpha: Optional[float] = None, strength: Optional[float] = None,
                 gag_start: float = 0.0, gag_stop: float = 1.0, layers="auto", branches: str = "cond",
                 via: str = "auto", guide_self: bool = False):
        ClassifierFreeGuidance.__init__(self, guidance_scale=guidance_scale, guidance_rescale=guidance_rescale,
                                        use_original_formulation=use_original_formulation, start=start, stop=stop,
                                        enabled=enabled)
        self._gag_setup("pladis", lam, None, None, alpha, strength, None, gag_start, gag_stop, layers, branches, via,
                        guide_self, None)


def _float(t) -> Optional[float]:
    if t is None:
        return None
    try:
        return float(t.flatten()[0]) if hasattr(t, "flatten") else float(t)
    except (TypeError, ValueError):
        return None
