r"""The slow, obviously correct oracle of :func:`hopfield_gag.guidance.attention.gag_attention`.

Deliberately independent of the production code path: float64, plain loops over every (batch, head,
query), the sort/bisection normalizers, and every formula written out one token at a time. For tests and
audits only.
"""
from __future__ import annotations

import math

import torch
from torch import Tensor

from ..ops import normalizers
from ..ops.params import GagParams
from .attention import _check_inputs

__all__ = [
    "reference_gag_attention",
]



def reference_gag_attention(
    q: Tensor,
    k: Tensor,
    v: Tensor,
    *,
    mask: Tensor | None = None,
    params: GagParams | None = None,
    **options,
) -> Tensor:
    r"""Slow, obviously correct oracle for :func:`gag_attention`: float64, plain loops over every
    (batch, head, query), the sort/bisection normalizers, and the formulas written out one token at a
    time. Same arguments (``params`` and/or the keyword options of :class:`~hopfield_gag.ops.params.GagParams`;
    ``chunk_size`` and ``memory_budget`` are not used) and output shape (float64) as :func:`gag_attention`;
    for tests and audits only.

    ``parallel="positive"`` keeps the parallel part :math:`c\,s` only for tokens with :math:`c \ge 0`
    (else drops it); the perpendicular part :math:`\Delta - c\,s` is weighted by :math:`\zeta` either way.
    """
    p = GagParams.from_kwargs(params, **options)
    scores_shape = _check_inputs(q, k, v, mask)
    method, lam, eta, zeta, alpha, strength = p.method, p.lam, p.eta_value, p.zeta, p.alpha, p.strength
    beta, aa_range, parallel = p.beta(q.shape[-1]), p.aa_range, p.parallel
    batch = scores_shape[:-2]
    qb = q.double().expand(*batch, *q.shape[-2:])
    kb = k.double().expand(*batch, *k.shape[-2:])
    vb = v.double().expand(*batch, *v.shape[-2:])
    mb = None
    if mask is not None:  # bool = keep/drop, floating = an additive bias (the one mask rule)
        mb = mask.expand(scores_shape) if mask.dtype == torch.bool else mask.double().expand(scores_shape)
    out = torch.empty(*batch, q.shape[-2], v.shape[-1], dtype=torch.float64)
    sparse_method = "sort" if alpha in (1.5, 2.0) else "bisect"
    for idx in torch.cartesian_prod(*[torch.arange(n) for n in batch]).view(-1, len(batch)).tolist() if batch else [[]]:
        idx = tuple(idx)
        K, V = kb[idx], vb[idx]
        for i in range(q.shape[-2]):
            xi = qb[idx][i]
            z = torch.stack([beta * torch.dot(xi, K[j]) for j in range(K.shape[0])])
            if mb is not None:
                mrow = mb[idx][i]
                z = torch.where(mrow, z, torch.tensor(-math.inf, dtype=z.dtype)) if mrow.dtype == torch.bool else z + mrow
            p_d = normalizers.softmax(z)
            p_s = normalizers.entmax(z, alpha, method=sparse_method)
            d = sum(p_d[j] * V[j] for j in range(K.shape[0]))
            s = sum(p_s[j] * V[j] for j in range(K.shape[0]))
            delta = s - d
            # s counts as zero when |s|^2 is not a normal float64 (hopfield_gag.ops.combine, small-norm rule)
            ss = float(torch.dot(s, s))
            c = float(torch.dot(delta, s)) / ss if ss > torch.finfo(torch.float64).tiny else 0.0
            if method == "dense":
                o = d
            elif method == "sparse":
                o = s
            elif method == "pladis":
                o = d + lam * (s - d)
            elif method == "gag":
                perp = delta - c * s
                keep_parallel = parallel == "paper" or c >= 0.0
                g = (c * s if keep_parallel else torch.zeros_like(s)) + zeta * perp
                gn = float(torch.linalg.vector_norm(g))
                o = s + lam * (g * min(1.0, eta / gn) if gn > 0 else g)
            else:  # aa
                kd = sum(p_d[j] * K[j] for j in range(K.shape[0]))
                ks = sum(p_s[j] * K[j] for j in range(K.shape[0]))
                f_prev, f_curr = kd - xi, ks - xi
                diff = f_curr - f_prev
                den = float(torch.dot(diff, diff))
                floor = (64 * torch.finfo(torch.float64).eps) ** 2 * float(torch.dot(f_prev, f_prev) + torch.dot(f_curr, f_curr))
                gamma = 0.0 if den <= max(floor, torch.finfo(torch.float64).tiny) else float(torch.dot(f_curr, diff)) / den
                lam_tok = min(max(1.0 - gamma, aa_range[0]), aa_range[1])
                o = d + lam_tok * (s - d)
            out[idx][i] = d + strength * (o - d)
    return out
