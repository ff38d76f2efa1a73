"""Self-check battery: theory (THEORY.md) and the attention op. It sits at the top of the layer stack, so it
checks the claims a user of gag_attention relies on (registered on import)."""
from __future__ import annotations

import math

import torch

from .. import theory as T
from ..guidance.attention import METHODS as _ATTENTION_METHODS
from ..guidance.attention import gag_attention
from ..guidance.reference import reference_gag_attention
from . import register_check
from .checks_core import EPS, _min, _randn, _uniform


def _attention_problem(gen, b=2, h=2, lq=6, lk=9, d=8, dv=5):
    scale = _uniform(gen, 0.3, 3.0, 1)
    return _randn(gen, b, h, lq, d) * scale, _randn(gen, b, h, lk, d) * scale, _randn(gen, b, h, lk, dv)


@register_check("p_sharpen_majorization")
def _p_sharpen(gen):
    """alpha-entmax majorizes softmax on the same scores, alpha in {1.25, 1.5, 2, 3} (THEORY.md T1)."""
    cases, worst = 0, math.inf
    q, k, _ = _attention_problem(gen, lk=40)
    for alpha in (1.25, 1.5, 2.0, 3.0):
        # partial sums of n probabilities: rounding below n eps
        margin = T.sharpening_margin(q, k, alpha=alpha) + k.shape[-2] * EPS
        worst = min(worst, _min(margin))
        cases += margin.numel()
    return cases, worst


@register_check("p_align_query")
def _p_align_query(gen):
    """The key-space discrepancy is aligned with the query: <Delta_K, q> >= 0 (THEORY.md T3)."""
    q, k, _ = _attention_problem(gen)
    # a cosine of float64 dot products over d terms: rounding below 64 eps
    margin = T.query_alignment_margin(q, k, alpha=1.5) + 64 * EPS
    return margin.numel(), _min(margin)


@register_check("gag_deviation_bound")
def _gag_deviation_bound(gen):
    """GAG stays within lam * eta of the sparse output: |o - s| <= lam eta (THEORY.md T8)."""
    cases, worst = 0, math.inf
    q, k, v = _attention_problem(gen)
    disc = T.sparse_dense_discrepancy(q, k, 30.0 * v)
    for lam, eta, zeta in ((10.0, 15.0, 0.0), (10.0, 0.5, 0.0), (3.0, 0.2, 0.7), (0.5, 2.0, 1.0)):
        dev = torch.linalg.vector_norm(T.gag_output(disc.dense, disc.sparse, lam, eta, zeta) - disc.sparse, dim=-1)
        # o = s + lam cap(g) is rounded at the scale of |o| <= |s| + lam eta before s is subtracted again
        s_norm = torch.linalg.vector_norm(disc.sparse, dim=-1)
        worst = min(worst, _min(lam * eta + 16 * EPS * (s_norm + lam * eta) - dev))
        cases += dev.numel()
    return cases, worst


@register_check("gag_attention_vs_oracle")
def _gag_attention_vs_oracle(gen):
    """gag_attention (every method) equals the float64 per-token loop oracle reference_gag_attention."""
    cases, worst = 0, math.inf
    q, k, v = _attention_problem(gen, b=1, h=2, lq=4, lk=7)
    for method in _ATTENTION_METHODS:
        kw = dict(method=method, lam=4.0, eta=2.0, zeta=0.3, strength=0.8)
        err = (gag_attention(q, k, v, **kw) - reference_gag_attention(q, k, v, **kw)).abs().amax()
        # both float64; the fast op reassociates matmul sums and rescales instead of adding: ~eps (1 + lam)
        worst = min(worst, 1e-10 * (1 + 4.0) - float(err))
        cases += q.shape[-2] * q.shape[-3]
    return cases, worst


@register_check("symbolic_identities")
def _symbolic_identities(gen):
    """The 13 exact identities of hopfield_gag.theory.symbolic hold symbolically (sympy) and numerically."""
    from ..theory import symbolic  # sympy is slow to import: only when this check runs

    results = symbolic.all_identities()
    return len(results), (0.0 if all(r.holds for r in results) else -1.0)


@register_check("parallel_certificate_sharp")
def _parallel_certificate_sharp(gen):
    """The sharp certificate for c >= 0 is a sound lower bound on <Delta, s_hat> (THEORY.md T5a/T5e/T5f)."""
    cases, worst = 0, math.inf
    for mean in (0.0, 1.0, 5.0):  # centred and non-centred values (c < 0 occurs for the latter)
        q, k, v = _attention_problem(gen, lk=12)
        v = v + mean * _randn(gen, 1, 1, 1, v.shape[-1])
        b = T.parallel_bounds(q, k, v)
        # lower bound: exact - sharp >= 0 (the allowance covers rounding; 1e-12 relative on top for the
        # comparison itself); certified tokens must have exact >= 0
        size = 1e-12 * (1 + b.exact.abs())
        worst = min(worst, _min(b.exact - b.sharp.clamp_min(-1e300) + size))
        cert = b.sharp >= 0
        if bool(cert.any()):
            worst = min(worst, _min(b.exact[cert] + size[cert]))
        cases += b.exact.numel()
    return cases, worst
