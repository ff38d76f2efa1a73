r"""The one interface between a model's attention layers and what runs in them.

Every adapter (diffusers processors, the shipped models' attention, torch-hook extractors) hands each
attention call to an *attention function* as one :class:`AttentionCall`; guidance
(:func:`hopfield_gag.gag_attention`), capture and the studies are attention functions, so no stock
processor's logic is copied per function.

An attention function is any callable ``fn(call: AttentionCall) -> Tensor`` returning the attention output
(B, H, Lq, Dv) in the layout of ``call.q``; ``call.dense()`` is the stock attention on exactly these
inputs (the same kernel call the stock processor makes), so an attention function that returns
``call.dense()`` leaves the model bit-identical. ``call.inner()`` is the output of the functions installed
inside this one (an observer such as capture returns it; see :mod:`.core`).
"""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Callable, Optional, Protocol

from torch import Tensor

__all__ = ["AttentionCall", "AttentionFn", "KINDS"]

KINDS = ("cross", "joint", "self")


@dataclass(frozen=True)
class AttentionCall:
    r"""One attention call as the attention kernel sees it.

    Attributes
    ----------
    q : Tensor (B, H, Lq, D)
        Queries after head split, q/k norms and RoPE.
    k : Tensor (B, H, Lk, D)
        Keys, likewise.
    v : Tensor (B, H, Lk, Dv)
    mask : Tensor or None
        Boolean (True = attend) or additive float, broadcastable to (B, H, Lq, Lk).
    scale : float or None
        Score scale; None means :math:`1/\sqrt D`.
    dense : Callable[[], Tensor]
        The stock attention on exactly these inputs, returning (B, H, Lq, Dv): the bit-exact off switch.
    layer : str
        Qualified module name of the attention layer (``model.named_modules()`` name).
    kind : {"cross", "joint", "self"}
        Cross-attention (all keys are text), joint MMDiT attention (text and image tokens in one
        sequence), or self-attention (no text keys).
    text_keys : slice or None
        Key positions holding text/conditioning tokens (``slice(0, Lk)`` for cross, ``None`` for self).
    image_queries : slice or None
        Query positions holding image tokens (``slice(0, Lq)`` for cross and self).
    step : int or None
        Denoising step index (0-based) when the caller tracks it.
    num_steps : int or None
        Number of denoising steps of the schedule, when known.
    timestep : float or None
        Timestep of this step (the scheduler's value), when known.
    branches : tuple of str or None
        Per batch row, ``"cond"`` or ``"uncond"`` when the batch carries a CFG pair; None if unknown.
    extra : dict
        Architecture-specific facts an attention function may read (e.g. the number of text tokens).
    sigma : float or None
        Noise level of this step (``scheduler.sigmas[step]``), when the scheduler has sigmas.
    inner : Callable[[], Tensor]
        The output of the attention functions installed *inside* this one on the same layer (the guided
        output when GAG runs inside a capture), or ``dense`` when there are none
        (:mod:`hopfield_gag.adapters.core` defines the order). An observer returns ``call.inner()``.
    """

    q: Tensor
    k: Tensor
    v: Tensor
    mask: Optional[Tensor]
    scale: Optional[float]
    dense: Callable[[], Tensor]
    layer: str
    kind: str
    text_keys: Optional[slice] = None
    image_queries: Optional[slice] = None
    step: Optional[int] = None
    num_steps: Optional[int] = None
    timestep: Optional[float] = None
    branches: Optional[tuple] = None
    extra: dict = field(default_factory=dict)
    sigma: Optional[float] = None
    inner: Optional[Callable[[], Tensor]] = None

    def __post_init__(self):
        if self.inner is None:  # nothing installed inside: the stock kernel
            object.__setattr__(self, "inner", self.dense)


class AttentionFn(Protocol):
    """``fn(call) -> Tensor (B, H, Lq, Dv)``: what runs inside an adapted attention layer."""

    def __call__(self, call: AttentionCall) -> Tensor: ...
