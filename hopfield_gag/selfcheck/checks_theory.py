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
    """The sound certificates for c >= 0 (THEORY.md T5, "Sound allowances") on float32 inputs, against the
    same inputs' c recomputed in float64 with its own rigorous error bound: no certified token has a negative
    float64 c beyond that bound, and every bound is below the float64 <Delta, s_hat> plus its error bound."""
    cases, worst = 0, math.inf
    for mean in (0.0, 1.0, 5.0):  # centred and non-centred values (c < 0 occurs for the latter)
        q, k, v = _attention_problem(gen, lk=12)
        v = v + mean * _randn(gen, 1, 1, 1, v.shape[-1])
        q32, k32, v32 = q.float(), k.float(), v.float()
        b = T.parallel_bounds(q32, k32, v32)  # the sound allowance covers fp32 score and output rounding
        enc = T.sparse_dense_discrepancy(q32.double(), k32.double(), v32.double()).enclosure()
        sn = enc.s_norm.clamp_min(1e-300)
        # float64 <Delta, s_hat> of the same inputs plus its rigorous error (relative slack for ||s*|| vs ||s||)
        upper = (enc.x_hat + enc.e_x) / sn + 1e-12 * (enc.x_hat.abs() / sn + enc.delta_norm)
        for cert in (b.direct, b.transport, b.norm, b.split, b.sharp):
            ok = torch.isfinite(cert)
            if bool(ok.any()):
                worst = min(worst, _min((upper - cert)[ok]))
        cert = b.sharp >= 0
        if bool(cert.any()):
            worst = min(worst, _min(upper[cert]))
        cases += b.exact.numel()
    return cases, worst


@register_check("entmax_near_softmax")
def _entmax_near_softmax(gen):
    """alpha-entmax for alpha in (1, 1.05] (every method: the default C / torch Newton and bisection) agrees
    with the float64 bisection reference to (r + n) ulps, r = 1/(alpha - 1) (issue 21 item 8)."""
    from ..ops.normalizers import entmax

    cases, worst = 0, math.inf
    z = _randn(gen, 64, 24) * _uniform(gen, 0.5, 20.0, 1)
    for alpha in (1.0005, 1.001, 1.005, 1.02, 1.05):
        ref = entmax(z, alpha, method="bisect")
        tol = 64 * (1 / (alpha - 1) + z.shape[-1]) * EPS
        for method in ("newton", "bisect"):
            err = (entmax(z, alpha, method=method) - ref).abs().amax()
            worst = min(worst, tol - float(err))
            cases += z.shape[0]
    return cases, worst
