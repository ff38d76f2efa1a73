r"""GAG / PLADIS as an attention function, and ``apply_gag`` to install it in a diffusers model.

:class:`GuidedAttention` acts per call according to the layer's kind:

- ``cross`` (UNet ``attn2``) and ``self`` (only when asked): the whole map,
  :func:`~hopfield_gag.gag_attention` on the call's q, k, v, mask;
- ``joint`` (SD3, Flux, Qwen-Image): image queries over text keys, mass-preserving
  (:func:`hopfield_gag.guidance.joint.joint_text_guidance`); text queries and the image-key part of each
  row stay dense.

Outside the step window, for rows of the wrong branch, at ``strength=0`` and for ``method="dense"`` it
returns ``call.dense()`` (the stock kernel: bit-identical). Its parameters are plain attributes read at
each call, so ``handle.update(lam=...)`` takes effect at once, reinstalls nothing and, since the function
runs outside dynamo (:func:`.core.run_call`), triggers no ``torch.compile`` recompilation. ``steps=`` and
``sigmas=`` have the one meaning of :mod:`.selection` (shared with ``capture``).
"""
from __future__ import annotations

from typing import Optional

import torch
from torch import Tensor

from ..guidance.attention import GagParams, gag_attention
from ..guidance.joint import joint_text_guidance
from .call import AttentionCall
from .install import AttentionHandle, install_attention_fn
from .presets import with_preset
from .selection import parse_sigmas, parse_steps

__all__ = ["GuidedAttention", "apply_gag"]

_OPTIONS = ("method", "lam", "eta", "zeta", "alpha", "strength", "chunk_size", "parallel", "aa_range", "memory_budget")
_DEFAULT_LAM = {"pladis": 2.0}  # PLADIS' own default; gag_attention's (10) otherwise


class GuidedAttention:
    r"""Attention function applying :func:`~hopfield_gag.gag_attention` (module docstring for the rule).

    Parameters
    ----------
    method : {"gag", "pladis", "sparse", "aa", "dense"}
    lam, eta, zeta, alpha, strength, chunk_size, parallel, aa_range
        As in :func:`gag_attention` (fields of :class:`~hopfield_gag.GagParams`) (``parallel="positive"``: the one-sided rule, THEORY.md T5); ``lam`` defaults to 2.0 for ``pladis`` and 10.0 otherwise.
    steps : optional
        A tuple ``(start, stop)`` of fractions: guide step ``i`` of ``N`` when ``start <= i/N < stop``; or step
        indices as an int, list or range (:mod:`.selection`; needs the step counter: apply to a pipeline, use
        a guider, or set ``handle.state``).
    sigmas : (low, high), optional
        Guide steps whose sigma lies in ``[low, high]`` (needs a scheduler with sigmas).
    branches : {"all", "cond"}
        ``"cond"`` guides only the conditional rows of a CFG batch (the unconditional rows stay dense).
    record : bool
        Append ``(layer, kind, step, rows guided, rows total)`` to ``self.log`` for every guided call.

    Attributes
    ----------
    guided_calls, dense_calls : int
        Counters of calls that were guided / passed through dense.
    """

    def __init__(self, method: str = "gag", lam: Optional[float] = None, eta: Optional[float] = GagParams.eta,
                 zeta: float = GagParams.zeta, alpha: float = GagParams.alpha, strength: float = GagParams.strength,
                 steps=None, sigmas=None, branches: str = "all", chunk_size: Optional[int] = None, record: bool = False,
                 parallel: str = GagParams.parallel, aa_range=GagParams.aa_range):
        self.options = {}
        self.steps = self.sigmas = None
        self.branches = "all"
        self.record = bool(record)
        self.log = []
        self.guided_calls = self.dense_calls = 0
        self.update(method=method, lam=_DEFAULT_LAM.get(method, GagParams.lam) if lam is None else lam, eta=eta,
                    zeta=zeta, alpha=alpha, strength=strength, chunk_size=chunk_size, parallel=parallel,
                    aa_range=aa_range, steps=steps, sigmas=sigmas, branches=branches)

    def update(self, **params) -> None:
        """Change parameters (validated together; on error nothing changes)."""
        unknown = set(params) - set(_OPTIONS) - {"steps", "sigmas", "branches", "record"}
        if unknown:
            raise TypeError(f"unknown parameter(s) {sorted(unknown)}; expected {_OPTIONS + ('steps', 'sigmas', 'branches', 'record')}")
        opts = dict(self.options, **{k: v for k, v in params.items() if k in _OPTIONS})
        GagParams.from_kwargs(**opts)  # validates every option (ops/params.py)
        steps = parse_steps(params["steps"]) if "steps" in params else self.steps
        sigmas = parse_sigmas(params["sigmas"]) if "sigmas" in params else self.sigmas
        branches = params.get("branches", self.branches)
        if branches not in ("all", "cond"):
            raise ValueError(f"branches must be 'all' or 'cond', got {branches!r}")
        self.options, self.steps, self.sigmas, self.branches = opts, steps, sigmas, branches
        if "record" in params:
            self.record = bool(params["record"])

    def __getattr__(self, name):
        # lam, eta, ... read as attributes
        options = self.__dict__.get("options", {})
        if name in options:
            return options[name]
        raise AttributeError(name)

    def active(self, call: AttentionCall) -> bool:
        """Whether this call is inside the step/sigma window and the options are not the off switch."""
        if self.options["strength"] == 0.0 or self.options["method"] == "dense":
            return False
        if self.steps is not None and not self.steps.selects(call.step, call.num_steps, f" at layer {call.layer!r}"):
            return False
        if self.sigmas is not None:
            if call.sigma is None:
                raise RuntimeError(f"sigmas={self.sigmas} needs the step's sigma, unknown at layer {call.layer!r} "
                                   f"(apply to a pipeline whose scheduler has sigmas)")
            if not self.sigmas[0] <= call.sigma <= self.sigmas[1]:
                return False
        return True

    def _rows(self, call: AttentionCall) -> Optional[list]:
        """Batch rows to guide: None = all."""
        if self.branches == "all":
            return None
        if call.branches is None:
            raise RuntimeError(
                f"branches='cond' needs to know which batch rows are conditional at layer {call.layer!r}, and this "
                f"call does not say (a modular pipeline, a hand-written loop, a pipeline that batches otherwise): "
                f"in a modular pipeline use the guider hopfield_gag.adapters.guiders.GAGGuidance (or "
                f"PLADISGuidance), which knows its conditional pass; in your own loop run each call inside "
                f"model.cache_context('cond'/'uncond') or set installed(model)[0].state.batch_branches = "
                f"('uncond', 'cond', ...) per row; or pass a classic pipeline that batches [uncond, cond]; or use "
                f"branches='all'")
        rows = [i for i, b in enumerate(call.branches) if b == "cond"]
        return None if len(rows) == len(call.branches) else rows

    def _guide(self, call: AttentionCall, q: Tensor, k: Tensor, v: Tensor, mask, dense) -> Tensor:
        opts = {k_: v_ for k_, v_ in self.options.items() if k_ != "strength"}
        strength = self.options["strength"]
        if call.kind == "joint":
            if call.text_keys is None or call.image_queries is None:
                raise ValueError(f"joint layer {call.layer!r} came without text_keys/image_queries")
            return joint_text_guidance(q, k, v, dense(), text_keys=call.text_keys, image_queries=call.image_queries,
                                       mask=mask, scale=call.scale, strength=strength, **opts)
        return gag_attention(q, k, v, mask=mask, scale=call.scale, strength=strength, **opts)

    def __call__(self, call: AttentionCall) -> Tensor:
        if not self.active(call):
            self.dense_calls += 1
            return call.dense()
        rows = self._rows(call)
        if rows is not None and not rows:
            self.dense_calls += 1
            return call.dense()
        batch = call.q.shape[0]
        if rows is None:
            out = self._guide(call, call.q, call.k, call.v, call.mask, call.dense)
        else:
            full = call.dense()
            idx = torch.tensor(rows, device=call.q.device)

            def sub(x):
                return x if x is None or x.dim() < 4 or x.shape[0] != batch else x.index_select(0, idx)

            guided = self._guide(call, sub(call.q), sub(call.k), sub(call.v), sub(call.mask), lambda: full.index_select(0, idx))
            out = full.index_copy(0, idx, guided.to(full.dtype))
        self.guided_calls += 1
        if self.record:
            self.log.append((call.layer, call.kind, call.step, batch if rows is None else len(rows), batch))
        return out

    def __repr__(self):
        extra = f", steps={self.steps.describe()!r}" if self.steps is not None else ""
        extra += f", sigmas={self.sigmas!r}" if self.sigmas is not None else ""
        opts = ", ".join(f"{k}={v!r}" for k, v in self.options.items() if v is not None)
        return f"GuidedAttention({opts}{extra}, branches={self.branches!r})"


def apply_gag(model_or_pipeline, layers="auto", method: Optional[str] = None, steps=None, branches: str = "all", *,
              guide_self: bool = False, via: str = "auto", preset: Optional[str] = None, **params) -> AttentionHandle:
    r"""Install GAG (or PLADIS, ...) in a model or pipeline; returns the handle.

    ``with apply_gag(pipe, method="pladis", lam=2.0): image = pipe(...)`` guides the ``"auto"`` layers (UNet
    down+up cross-attention; every joint layer of SD3/SD3.5, Flux, Qwen-Image; every cross-attention layer of
    other diffusers models) and restores everything on exit. ``handle.update(lam=...)`` changes parameters
    without reinstalling.

    Parameters
    ----------
    model_or_pipeline : diffusers pipeline or denoiser model
    layers : see :func:`install_attention_fn` ("auto" by default)
    method, steps, branches, **params : see :class:`GuidedAttention` (``lam``, ``eta``, ``zeta``, ``alpha``,
        ``strength``, ``aa_range``, ``sigmas``, ``chunk_size``, ``record``); ``method`` defaults to the
        preset's, else ``"gag"``
    guide_self : bool
        Also allow self-attention layers (off by default: sparse self-attention hurts, PLADIS Fig. 3).
    via : {"auto", "processors", "hooks"}
        How the attention call is reached (:func:`install_attention_fn`): processor copies, or diffusers hooks
        that keep the module's own processor and reach any diffusers attention; "auto" takes the processor
        path where a copy exists and the hook path elsewhere.
    preset : {"paper", "pladis", "conservative"}, optional
        Named parameters (:mod:`.presets`); explicit arguments win.

    Raises
    ------
    RuntimeError
        Applied twice to the same model without removing the first handle.
    ValueError
        As :func:`install_attention_fn` and :class:`GuidedAttention`.
    """
    given = dict(params, **({"method": method} if method is not None else {}),
                 **({"steps": steps} if steps is not None else {}))
    fn = GuidedAttention(branches=branches, **with_preset(preset, given))
    kinds = ("cross", "joint", "self") if guide_self else ("cross", "joint")
    return install_attention_fn(model_or_pipeline, fn, layers, kinds=kinds, via=via)
