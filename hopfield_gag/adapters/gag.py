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
runs outside dynamo (:func:`.processors._run`), triggers no ``torch.compile`` recompilation.
"""
from __future__ import annotations

from typing import Optional

import torch
from torch import Tensor

from ..guidance.attention import GagParams, gag_attention
from ..guidance.joint import joint_text_guidance
from .call import AttentionCall
from .install import AttentionHandle, install_attention_fn

__all__ = ["GuidedAttention", "apply_gag"]

_OPTIONS = ("method", "lam", "eta", "zeta", "alpha", "strength", "chunk_size", "parallel", "aa_range", "memory_budget")
_DEFAULT_LAM = {"pladis": 2.0}  # PLADIS' own default; gag_attention's (10) otherwise


def _check_window(name, win, lo_ok=0.0, hi_ok=None):
    if win is None:
        return None
    try:
        a, b = (float(win[0]), float(win[1]))
        if len(win) != 2:
            raise TypeError
    except (TypeError, ValueError, IndexError):
        raise ValueError(f"{name} must be a pair (start, stop) of numbers or None, got {win!r}") from None
    if not (lo_ok <= a <= b and (hi_ok is None or b <= hi_ok)):
        rng = f"[{lo_ok}, {hi_ok}]" if hi_ok is not None else f">= {lo_ok}"
        raise ValueError(f"{name} must satisfy start <= stop within {rng}, got {win!r}")
    return a, b


class GuidedAttention:
    r"""Attention function applying :func:`~hopfield_gag.gag_attention` (module docstring for the rule).

    Parameters
    ----------
    method : {"gag", "pladis", "sparse", "aa", "dense"}
    lam, eta, zeta, alpha, strength, chunk_size, parallel, aa_range
        As in :func:`gag_attention` (fields of :class:`~hopfield_gag.GagParams`) (``parallel="positive"``: the one-sided rule, THEORY.md T5); ``lam`` defaults to 2.0 for ``pladis`` and 10.0 otherwise.
    steps : (start, stop) fractions in [0, 1], optional
        Guide steps ``i`` with ``start <= i / num_steps < stop`` (needs the step counter: apply to a pipeline,
        or set ``handle.state``).
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
        steps = _check_window("steps", params["steps"], 0.0, 1.0) if "steps" in params else self.steps
        sigmas = _check_window("sigmas", params["sigmas"]) if "sigmas" in params else self.sigmas
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
        if self.steps is not None:
            if call.step is None or call.num_steps is None:
                raise RuntimeError(
                    f"steps={self.steps} needs the denoising step, which is unknown at layer {call.layer!r}: apply "
                    f"to the pipeline (not the bare model), or set handle.state.set_step(i, num_steps)")
            frac = call.step / call.num_steps
            if not self.steps[0] <= frac < self.steps[1] and not (self.steps[1] == 1.0 and frac == 1.0):
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
                f"branches='cond' needs to know which batch rows are conditional at layer {call.layer!r}: apply to "
                f"the pipeline, run the model inside model.cache_context('cond'/'uncond'), or set "
                f"handle.state.batch_branches")
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
        extra = "".join(f", {n}={getattr(self, n)!r}" for n in ("steps", "sigmas") if getattr(self, n) is not None)
        opts = ", ".join(f"{k}={v!r}" for k, v in self.options.items() if v is not None)
        return f"GuidedAttention({opts}{extra}, branches={self.branches!r})"


def apply_gag(model_or_pipeline, layers="auto", method: str = "gag", steps=None, branches: str = "all", *,
              guide_self: bool = False, **params) -> AttentionHandle:
    r"""Install GAG (or PLADIS, ...) in a diffusers model or pipeline; returns the handle.

    ``with apply_gag(pipe, method="pladis", lam=2.0): image = pipe(...)`` guides the ``"auto"`` layers (UNet
    down+up cross-attention; every joint layer of SD3/SD3.5, Flux, Qwen-Image) and restores the stock
    processors on exit. ``handle.update(lam=...)`` changes parameters without reinstalling.

    Parameters
    ----------
    model_or_pipeline : diffusers pipeline or denoiser model
    layers : see :func:`install_attention_fn` ("auto" by default)
    method, steps, branches, **params : see :class:`GuidedAttention` (``lam``, ``eta``, ``zeta``, ``alpha``,
        ``strength``, ``aa_range``, ``sigmas``, ``chunk_size``, ``record``)
    guide_self : bool
        Also allow self-attention layers (off by default: sparse self-attention hurts, PLADIS Fig. 3).

    Raises
    ------
    RuntimeError
        Applied twice to the same model without removing the first handle.
    ValueError
        As :func:`install_attention_fn` and :class:`GuidedAttention`.
    """
    fn = GuidedAttention(method=method, steps=steps, branches=branches, **params)
    kinds = ("cross", "joint", "self") if guide_self else ("cross", "joint")
    return install_attention_fn(model_or_pipeline, fn, layers, kinds=kinds)
