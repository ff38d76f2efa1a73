"""Hypothesis strategies for the theory tests (float64 throughout).

Regimes (THEORY.md "Test regimes"):

* ``score_vectors``      raw score rows with ties, one-hot-ish rows and extreme scales (1e-3 .. 1e3);
* ``attention_inputs``   (q, k, v) with v != k, batch/head dims, random scales, optional boolean mask;
* ``hopfield_problems``  stored patterns as rows + beta + alpha, in a chosen regime:
    - "separated":   equal-norm patterns, beta chosen so that beta * Delta_min * (alpha - 1) >= mult >= 1,
                     i.e. every stored pattern is an exact fixed point of the sparse map;
    - "orthogonal":  orthonormal patterns times a radius (acute vertices, equiangular values);
    - "metastable":  near-duplicate clusters (small Delta), beta moderate;
    - "any":         unit patterns, any beta;
* ``basin_queries``      queries inside the exact-retrieval ball of a pattern (fraction < 1 of its radius)
                         or anywhere ("outside").

Large random tensors come from a drawn seed (torch.Generator) so examples stay cheap; small problems
(d <= 3) are drawn float by float so hypothesis can shrink them.
"""
from __future__ import annotations

import math
from dataclasses import dataclass

import torch
from hypothesis import strategies as st

F64 = torch.float64
seeds = st.integers(0, 2**31 - 1)
log_scales = st.floats(-3.0, 3.0, allow_nan=False).map(lambda e: 10.0**e)


def _gen(seed: int) -> torch.Generator:
    return torch.Generator().manual_seed(seed)


@st.composite
def score_vectors(draw, n_min: int = 1, n_max: int = 12):
    """A row of scores z (n,), float64: random values, optional ties, scale 1e-3..1e3."""
    n = draw(st.integers(n_min, n_max))
    vals = draw(st.lists(st.floats(-1.0, 1.0, allow_nan=False, width=64), min_size=n, max_size=n))
    z = torch.tensor(vals, dtype=F64)
    if n >= 2 and draw(st.booleans()):  # ties
        i, j = draw(st.integers(0, n - 1)), draw(st.integers(0, n - 1))
        z[j] = z[i]
    return z * draw(log_scales)


@dataclass
class Attention:
    q: torch.Tensor
    k: torch.Tensor
    v: torch.Tensor
    scale: float
    mask: torch.Tensor | None


@st.composite
def attention_inputs(draw, with_mask: bool = True):
    """(q, k, v) of shapes (B, H, Lq, d), (B, H, Lk, d), (B, H, Lk, dv) with v != k."""
    g = _gen(draw(seeds))
    b, h = draw(st.integers(1, 2)), draw(st.integers(1, 2))
    lq, lk = draw(st.integers(1, 5)), draw(st.integers(1, 9))
    d, dv = draw(st.integers(1, 8)), draw(st.integers(1, 6))
    q = torch.randn(b, h, lq, d, generator=g, dtype=F64)
    k = torch.randn(b, h, lk, d, generator=g, dtype=F64)
    v = torch.randn(b, h, lk, dv, generator=g, dtype=F64) + draw(st.floats(-2, 2))  # non-centred values too
    scale = draw(log_scales) / math.sqrt(d)
    mask = None
    if with_mask and draw(st.booleans()):
        mask = torch.rand(b, h, lq, lk, generator=g) > 0.3
        mask[..., 0] = True  # never a fully masked row
    return Attention(q, k, v, scale, mask)


@dataclass
class Hopfield:
    x: torch.Tensor  # (N, d) patterns
    beta: float
    alpha: float


def _unit_rows(n: int, d: int, g: torch.Generator) -> torch.Tensor:
    x = torch.randn(n, d, generator=g, dtype=F64)
    return x / x.norm(dim=-1, keepdim=True)


def separation_min(x: torch.Tensor) -> float:
    gram = x @ x.T
    n = x.shape[0]
    off = gram.masked_fill(torch.eye(n, dtype=torch.bool), -math.inf).amax(-1)
    return float((gram.diagonal() - off).min())


@st.composite
def hopfield_problems(draw, regime: str = "separated", alphas=(1.5, 2.0, 1.25)):
    """Patterns (N, d) and (beta, alpha) in a regime (module docstring)."""
    alpha = draw(st.sampled_from(alphas))
    g = _gen(draw(seeds))
    if regime == "orthogonal":
        d = draw(st.integers(2, 8))
        n = draw(st.integers(2, d))
        qmat, _ = torch.linalg.qr(torch.randn(d, d, generator=g, dtype=F64))
        x = qmat[:n] * draw(st.floats(0.2, 5.0))
        beta = draw(log_scales)
        return Hopfield(x, beta, alpha)
    if regime == "metastable":
        d = draw(st.integers(2, 6))
        n = draw(st.integers(3, 8))
        centre = _unit_rows(1, d, g)
        spread = draw(st.floats(0.02, 0.3))
        x = centre + spread * torch.randn(n, d, generator=g, dtype=F64)
        x = x / x.norm(dim=-1, keepdim=True)
        beta = draw(st.floats(0.5, 8.0))
        return Hopfield(x, beta, alpha)
    d = draw(st.integers(2, 16))
    n = draw(st.integers(2, 10))
    x = _unit_rows(n, d, g)
    if regime == "any":
        return Hopfield(x, draw(log_scales), alpha)
    assert regime == "separated"
    dmin = separation_min(x)
    if dmin < 0.05:  # near-duplicates are the metastable regime; resample deterministically
        x = torch.linalg.qr(torch.randn(max(d, n), max(d, n), generator=g, dtype=F64))[0][:n, : max(d, n)]
        dmin = separation_min(x)
    mult = draw(st.floats(1.01, 6.0))  # strictly inside: rounding must not push beta Delta below the margin
    beta = mult / ((alpha - 1.0) * dmin)
    return Hopfield(x, beta, alpha)


def exact_radius(x: torch.Tensor, i: int, beta: float, alpha: float) -> float:
    """Radius r of the ball around x_i mapped exactly to x_i by the sparse map:
    r = (Delta_i - 1/(beta (alpha - 1))) / (2 M)   (THEORY.md, exact-retrieval ball)."""
    gram = x @ x.T
    off = torch.cat([gram[i, :i], gram[i, i + 1 :]]).max()
    delta_i = float(gram[i, i] - off)
    m = float(x.norm(dim=-1).max())
    return (delta_i - 1.0 / (beta * (alpha - 1.0))) / (2.0 * m)


@st.composite
def basin_queries(draw, prob: Hopfield, inside: bool = True):
    """(query (1, d), index i): inside the exact ball of x_i (fraction < 1 of its radius), or anywhere."""
    x = prob.x
    n, d = x.shape
    i = draw(st.integers(0, n - 1))
    g = _gen(draw(seeds))
    u = torch.randn(d, generator=g, dtype=F64)
    u = u / u.norm()
    if inside:
        r = max(exact_radius(x, i, prob.beta, prob.alpha), 0.0) * draw(st.floats(0.0, 0.95))
        return (x[i] + r * u).unsqueeze(0), i
    return (draw(st.floats(0.0, 3.0)) * u).unsqueeze(0), i


@st.composite
def adversarial_attention(draw):
    """(q, k, v) in regimes built to break certificates for c >= 0 (THEORY.md T5, certificates):

    * "collinear":   values on one ray with different norms (c < 0 is common);
    * "duplicates":  near-duplicate keys and values (D tiny, cancellation in Delta);
    * "tiny_s":      values that nearly cancel under the sparse weights (||s|| near the noise floor);
    * "noncentred":  values with a large common mean;
    * "opposed":     values ordered against the scores (v_j = -t z_j u);
    * "random":      attention_inputs-like;
    each with an optional boolean mask and scores from mild to saturated.
    """
    regime = draw(st.sampled_from(["collinear", "duplicates", "tiny_s", "noncentred", "opposed", "random"]))
    g = _gen(draw(seeds))
    lq, lk = draw(st.integers(1, 4)), draw(st.integers(2, 9))
    d, dv = draw(st.integers(1, 6)), draw(st.integers(1, 5))
    q = torch.randn(1, lq, d, generator=g, dtype=F64) * draw(log_scales)
    k = torch.randn(1, lk, d, generator=g, dtype=F64)
    u = torch.randn(dv, generator=g, dtype=F64)
    u = u / u.norm()
    if regime == "collinear":
        v = torch.rand(1, lk, 1, generator=g, dtype=F64) * 4 * u
    elif regime == "duplicates":
        k = k[:, :1] + 1e-3 * draw(st.floats(0.0, 1.0)) * torch.randn(1, lk, d, generator=g, dtype=F64)
        v = torch.randn(1, 1, dv, generator=g, dtype=F64) + 1e-3 * torch.randn(1, lk, dv, generator=g, dtype=F64)
    elif regime == "tiny_s":
        sign = torch.where(torch.arange(lk) % 2 == 0, 1.0, -1.0).to(F64)
        v = sign[None, :, None] * u + 10.0 ** draw(st.floats(-14, -2)) * torch.randn(1, lk, dv, generator=g, dtype=F64)
    elif regime == "noncentred":
        v = torch.randn(1, lk, dv, generator=g, dtype=F64) + draw(st.floats(-50, 50)) * u
    elif regime == "opposed":
        z = (q @ k.transpose(-1, -2))[:, :1]  # (1, 1, lk)
        v = -z.transpose(-1, -2) * u + 0.1 * torch.randn(1, lk, dv, generator=g, dtype=F64)
    else:
        v = torch.randn(1, lk, dv, generator=g, dtype=F64) + draw(st.floats(-2, 2))
    scale = draw(log_scales) / math.sqrt(d)
    mask = None
    if draw(st.booleans()):
        mask = torch.rand(1, lq, lk, generator=g) > 0.4
        mask[..., 0] = True
    return regime, Attention(q, k, v, scale, mask)


@st.composite
def false_certificate_hunt(draw):
    """(regime, Attention, alpha, dtype) aimed at *false certificates* for c >= 0 (THEORY.md "Sound
    allowances"): inputs where the exact c of the given floats is near 0 and the computed one can have the
    other sign. The tensors are already in ``dtype`` (their float values are the exact inputs).

    * "big_scores":  |q| up to 2^30 (score rounding: fp32 from ~2^10, fp64 from ~2^30);
    * "cancel":      q = (A, x, -A) against keys (1, y, 1): scores < 1 after cancellation inside q.k;
    * "near_dup":    near-duplicate keys (10^-9 .. 10^-3 apart);
    * "edge":        1-D scores with one key placed on the entmax support boundary (alpha up to 3);
    * values are then tuned so that the *computed* <Delta, s> is a tiny positive number (a relative
      10^-16 .. 10^-4 of the scale of the values), the worst case for a certificate."""
    regime = draw(st.sampled_from(["big_scores", "cancel", "near_dup", "edge"]))
    dtype = draw(st.sampled_from([torch.float32, torch.float64]))
    alpha = draw(st.sampled_from([1.25, 1.5, 2.0, 2.5, 3.0]))
    g = _gen(draw(seeds))
    lk = draw(st.integers(2, 6))
    if regime == "big_scores":
        d = draw(st.integers(1, 4))
        A = 2.0 ** draw(st.integers(4, 30))
        q = torch.randn(1, 1, d, generator=g, dtype=F64) * A
        k = torch.randn(1, lk, d, generator=g, dtype=F64) / A * draw(st.floats(0.5, 4.0))
        k[0, :, 0] += 1.0  # a large common score, O(1) differences
        scale = 1.0
    elif regime == "cancel":
        A = 2.0 ** draw(st.integers(6, 16))
        x = draw(st.floats(0.1, 2.0))
        q = torch.tensor([[[A, x, -A]]], dtype=F64)
        k = torch.cat([torch.ones(1, lk, 1, dtype=F64), torch.rand(1, lk, 1, generator=g, dtype=F64),
                       torch.ones(1, lk, 1, dtype=F64)], -1)
        scale = 1.0
    elif regime == "near_dup":
        d = draw(st.integers(1, 4))
        k = torch.randn(1, 1, d, generator=g, dtype=F64) + 10.0 ** draw(st.floats(-9, -3)) * torch.randn(
            1, lk, d, generator=g, dtype=F64)
        q = torch.randn(1, 1, d, generator=g, dtype=F64) * 10.0 ** draw(st.floats(0, 4))
        scale = 1.0
    else:  # a key exactly on the support boundary of alpha-entmax, in exact binary scores
        z = torch.sort(torch.rand(lk - 1, generator=g, dtype=F64) * 2.0, descending=True).values
        z = torch.round(z * 256) / 256
        from hopfield_gag.ops.normalizers import normalize

        p = normalize(z, alpha)
        tau = (alpha - 1) * float(z.max()) - float(p.max()) ** (alpha - 1)
        zb = tau / (alpha - 1) + draw(st.sampled_from([0.0, 2.0**-40, -(2.0**-40), 2.0**-20]))
        k = torch.cat([z, torch.tensor([zb], dtype=F64)]).reshape(1, lk, 1)
        q = torch.ones(1, 1, 1, dtype=F64)
        scale = 1.0
    q, k = q.to(dtype), k.to(dtype)
    # values (1-D, plus an optional second coordinate) tuned on the computed weights so that the computed
    # <Delta, s> is a tiny positive number
    from hopfield_gag.theory import sparse_dense_discrepancy

    v0 = torch.randn(1, lk, 1, generator=g, dtype=F64).to(dtype)
    r = sparse_dense_discrepancy(q, k, v0.abs() + 1, scale, alpha)
    D = (r.p_sparse - r.p_dense).to(F64)[0, 0]
    j = int(D.abs().argmax())
    w = torch.randn(lk, generator=g, dtype=F64)
    w[j] = 0.0
    w[j] = -float((D * w).sum()) / float(D[j]) if float(D[j]) != 0 else 1.0  # <D, w> = 0
    ps = r.p_sparse.to(F64)[0, 0]
    shift = 1.0 + float(w.abs().max())
    v = w + shift  # s = <p_s, v> != 0; <Delta, s> = <D, v> s = <D, w> s ~ 0
    v = v * (1 + 10.0 ** draw(st.floats(-16, -4)) * torch.randn(lk, generator=g, dtype=F64))
    v = v.reshape(1, lk, 1)
    if draw(st.booleans()):
        v = torch.cat([v, 1e-3 * torch.randn(1, lk, 1, generator=g, dtype=F64)], -1)
    _ = ps
    return regime, Attention(q, k, v.to(dtype), scale, None), alpha, dtype
