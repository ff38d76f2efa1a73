r"""Guidance inside *joint* (MMDiT) attention: image queries over text keys, mass-preserving.

SD3, Flux and Qwen-Image have no separate cross-attention: text and image tokens form one sequence and
every query attends to all of them. PLADIS/GAG act on the cross-attention map, so in a joint layer only
the block *image queries x text keys* is guided, and the dense row's split between text and image is
kept (the rule of the official PLADIS FLUX code: the text block's new weights are scaled to the dense
row's text mass, the rest of the row stays dense).

For an image query :math:`i` with joint scores :math:`z_i` (text keys :math:`T`, image keys :math:`I`),
the dense joint row is :math:`p_i = \mathrm{softmax}(z_i)` with text mass
:math:`m_i = \sum_{j\in T} p_{ij} = \exp(\mathrm{lse}(z_{iT}) - \mathrm{lse}(z_i))`, and
:math:`p_{iT} = m_i\,\mathrm{softmax}(z_{iT})`. Replacing the normalized text block
:math:`\mathrm{softmax}(z_{iT})v_T = d_i` by the guided retrieval :math:`o_i` of
:func:`~hopfield_gag.gag_attention` on the text keys alone gives

.. math::

    \text{out}_i = \text{dense}_i + m_i\,(o_i - d_i),

which for ``pladis`` is exactly the row :math:`[\,m_i((1-\lambda)\mathrm{softmax} + \lambda\,\alpha\text{-entmax})(z_{iT}),\;p_{iI}\,]`
(its weights still sum to 1). Text queries are left dense. :math:`o_i` and :math:`d_i` come from the same
:func:`gag_attention` call (``return_parts``), so they share one score computation and :math:`o_i - d_i`
holds no kernel-to-kernel rounding difference; ``strength`` :math:`t` scales the correction,
:math:`t = 0` returns ``dense`` itself.
"""
from __future__ import annotations

import math

import torch
from torch import Tensor

from .._validation import compute_dtype, default_scale
from ..ops import normalizers
from .attention import DEFAULT_MEMORY_BUDGET, gag_attention

__all__ = ["joint_text_guidance", "text_mass"]


def _rows(mask: Tensor | None, rows: slice, lq: int) -> Tensor | None:
    """The mask restricted to query rows ``rows`` (a mask broadcast over queries is returned unchanged)."""
    if mask is None or mask.dim() < 2 or mask.shape[-2] == 1:
        return mask
    if mask.shape[-2] != lq:
        raise ValueError(f"mask of shape {tuple(mask.shape)} does not match {lq} queries")
    return mask[..., rows, :]


def _cols(mask: Tensor | None, cols: slice, lk: int) -> Tensor | None:
    if mask is None or mask.shape[-1] == 1:
        return mask
    if mask.shape[-1] != lk:
        raise ValueError(f"mask of shape {tuple(mask.shape)} does not match {lk} keys")
    return mask[..., cols]


def text_mass(q: Tensor, k: Tensor, text_keys: slice, *, mask: Tensor | None = None, scale: float | None = None,
              memory_budget: int = DEFAULT_MEMORY_BUDGET) -> Tensor:
    r"""Text mass :math:`m = \sum_{j\in T}\mathrm{softmax}(z)_j` of each dense attention row.

    Parameters
    ----------
    q : Tensor (B, H, Lq, D);  k : Tensor (B, H, Lk, D)
    text_keys : slice of the key axis
    mask : bool (True = attend) or additive float, broadcastable to (B, H, Lq, Lk)
    scale : float, optional (default :math:`1/\sqrt D`)

    Returns
    -------
    Tensor (B, H, Lq) in the compute dtype (fp32 for half inputs), computed as
    :math:`\exp(\mathrm{lse}(z_T) - \mathrm{lse}(z))` in query chunks bounded by ``memory_budget``.
    """
    cd = compute_dtype(q.dtype)
    beta = default_scale(scale, q.shape[-1])  # the package's one default-scale rule (validated)
    kT = k.to(cd).transpose(-1, -2)
    lq, lk = q.shape[-2], k.shape[-2]
    per_row = max(1, math.prod(torch.broadcast_shapes(q.shape[:-2], k.shape[:-2])) * lk * (torch.finfo(cd).bits // 8) * 2)
    step = int(max(1, min(lq, memory_budget // per_row)))
    out = []
    for start in range(0, lq, step):
        rows = slice(start, min(start + step, lq))
        z = torch.matmul(q[..., rows, :].to(cd), kT).mul_(beta)
        m = _rows(mask, rows, lq)
        if m is not None:
            z = normalizers.apply_mask(z, m, name="the joint scores (B, H, Lq, Lk)")
        out.append(torch.exp(torch.logsumexp(z[..., text_keys], dim=-1) - torch.logsumexp(z, dim=-1)))
    return torch.cat(out, dim=-1) if len(out) > 1 else out[0]


def joint_text_guidance(q: Tensor, k: Tensor, v: Tensor, dense: Tensor, *, text_keys: slice, image_queries: slice,
                        mask: Tensor | None = None, scale: float | None = None, strength: float = 1.0,
                        **options) -> Tensor:
    r"""Mass-preserving guidance of the image-query x text-key block of a joint attention (module docstring).

    Parameters
    ----------
    q : Tensor (B, H, Lq, D);  k : Tensor (B, H, Lk, D);  v : Tensor (B, H, Lk, Dv)
        The joint sequences (text and image tokens in the model's order).
    dense : Tensor (B, H, Lq, Dv)
        The stock (dense) joint attention output on exactly these inputs.
    text_keys, image_queries : slice
        Positions of the text keys and of the image queries.
    mask : bool or additive float, broadcastable to (B, H, Lq, Lk), optional
    scale : float, optional
    strength : float >= 0
        Scales the correction; 0 returns ``dense`` (the same tensor).
    **options
        ``method``, ``lam``, ``eta``, ``zeta``, ``alpha``, ... of :func:`~hopfield_gag.gag_attention`.

    Returns
    -------
    Tensor (B, H, Lq, Dv), dtype of ``dense``: ``dense`` with the image-query rows replaced by
    :math:`\text{dense}_i + t\,m_i(o_i - d_i)`.

    Raises
    ------
    ValueError
        As :func:`gag_attention` (non-finite scores, a query row whose text keys are all masked, bad options).
    """
    if strength == 0.0 or options.get("method") == "dense":
        return dense
    lq, lk = q.shape[-2], k.shape[-2]
    qi = q[..., image_queries, :]
    kt, vt = k[..., text_keys, :], v[..., text_keys, :]
    mask_i = _rows(mask, image_queries, lq)
    _, parts = gag_attention(qi, kt, vt, mask=_cols(mask_i, text_keys, lk), scale=scale, strength=strength,
                             return_parts=True, **options)
    # the correction relative to the text-only dense retrieval, strength applied as gag_attention does
    correction = (parts.output - parts.dense) * strength
    mass = text_mass(qi, k, text_keys, mask=mask_i, scale=scale)
    rows = (dense[..., image_queries, :].to(correction.dtype) + mass.unsqueeze(-1) * correction).to(dense.dtype)
    out = dense.clone()
    out[..., image_queries, :] = rows
    return out
