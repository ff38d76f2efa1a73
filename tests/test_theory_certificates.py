"""Certificates for c >= 0 and the sign flip of GAG's output (THEORY.md T5a, T5e, T5f, "The sign flip").

Soundness: a certificate >= 0 must never occur where c < 0. "c < 0" is read from parallel_margin, which is
exactly 0 below the float noise floor (THEORY.md notation), so the check is: cert >= 0  =>  margin >= -TOL,
TOL = 1e-10 (cosines of float64 sums of <= 9 terms carry a few ulps). Every certificate already subtracts
its own rounding allowance (certificates._allowance).
"""
from __future__ import annotations

import math

import pytest
import torch
from hypothesis import example, given
from hypothesis import strategies as st

from _theory_strategies import F64, Attention, adversarial_attention, attention_inputs
from hopfield_gag import gag_attention
from hopfield_gag.theory import (
    equiangular_fit,
    flipped_tokens,
    parallel_bounds,
    parallel_certificate,
    parallel_certificate_sharp,
    parallel_margin,
    perturbative_parallel_certificate,
    sign_flip_margin,
    sparse_dense_discrepancy,
)

TOL = 1e-10


def T(*rows):
    return torch.tensor(rows, dtype=F64)


COLLINEAR = ("collinear", Attention(T([[-3.0, 0.0]]), T([[1.0, 0.0], [2.0, 0.0]]), T([[1.0, 0.0], [2.0, 0.0]]), 1.0,
                                    None))


@given(st.one_of(adversarial_attention(), attention_inputs().map(lambda a: ("random", a))),
       st.sampled_from([1.25, 1.5, 2.0]))
@example(COLLINEAR, 1.5)
def test_sharp_certificate_is_sound(case, alpha):
    """No false certificate in any regime: every bound >= 0 implies c >= 0; the sharp bound dominates the
    transport certificate (T5a) and is a lower bound on <Delta, s_hat>."""
    _, a = case
    b = parallel_bounds(a.q, a.k, a.v, a.scale, alpha, a.mask)
    m = parallel_margin(a.q, a.k, a.v, a.scale, alpha, a.mask)
    for cert in (b.transport, b.norm, b.split, b.sharp):
        assert bool((m[cert >= 0] >= -TOL).all())
    assert bool((b.sharp <= b.exact + 1e-9 * (1 + b.exact.abs())).all())  # a lower bound (allowance >= 0)
    # the sharp bound is the maximum of the three (so it dominates the transport certificate of T5a, up to
    # the allowance both now carry)
    assert bool((b.sharp >= torch.maximum(torch.maximum(b.transport, b.norm), b.split)).all())


def test_certificates_refuse_the_pinned_counterexamples():
    _, a = COLLINEAR
    assert float(parallel_margin(a.q, a.k, a.v, a.scale, 1.5)) < -0.1
    b = parallel_bounds(a.q, a.k, a.v, a.scale, 1.5)
    assert float(b.sharp) < 0 and float(b.norm) < 0


@given(attention_inputs(with_mask=False))
def test_norm_identity_is_exact(a):
    """Polarization: <Delta, s> = (||s||^2 - ||d||^2 + ||Delta||^2) / 2, so ||s|| >= ||d|| suffices (T5f)."""
    r = sparse_dense_discrepancy(a.q, a.k, a.v, a.scale, 1.5)
    lhs = (r.delta * r.sparse).sum(-1)
    rhs = 0.5 * (r.sparse.square().sum(-1) - r.dense.square().sum(-1) + r.delta.square().sum(-1))
    size = 1 + r.sparse.square().sum(-1) + r.dense.square().sum(-1)
    assert bool(((lhs - rhs).abs() <= 1e-12 * size).all())


@given(attention_inputs(), st.one_of(st.just(0.0), st.floats(0.0, 1.0)), st.integers(0, 2**31 - 1))
def test_perturbative_theorem(a, noise, seed):
    """T5e: V V^T = a I + b 11^T + E, max|E| <= eps  =>  <Delta, s> >= (a/2)(||p_s||^2 - ||p_d||^2) - eps.
    Values: a scaled orthonormal (or centred-simplex) frame plus a perturbation of relative size `noise`."""
    lk = a.k.shape[-2]
    g = torch.Generator().manual_seed(seed)
    base = torch.linalg.qr(torch.randn(lk, lk, generator=g, dtype=F64))[0] * 2.0
    # a shared extra coordinate 3 gives the b 11^T part (b = 9): non-centred values
    v = torch.cat([base + noise * torch.randn(lk, lk, generator=g, dtype=F64), torch.full((lk, 1), 3.0, dtype=F64)], -1)
    v = v.expand(*a.k.shape[:-2], lk, lk + 1)
    r = sparse_dense_discrepancy(a.q, a.k, v, a.scale, 1.5, a.mask)
    fit = equiangular_fit(v)
    gap = r.p_sparse.square().sum(-1) - r.p_dense.square().sum(-1)
    assert bool((gap >= -1e-12).all())  # ||p_s|| >= ||p_d|| (Schur convexity + T1)
    lower = 0.5 * fit.a.unsqueeze(-1) * gap - fit.eps.unsqueeze(-1) + 0.5 * r.delta.square().sum(-1)
    inner = (r.delta * r.sparse).sum(-1)
    assert bool((inner >= lower - 1e-10 * (1 + fit.a.abs().unsqueeze(-1) + fit.eps.unsqueeze(-1))).all())
    cert = perturbative_parallel_certificate(a.q, a.k, v, a.scale, 1.5, a.mask)
    assert bool((r.parallel_coef[cert >= 0] >= -TOL).all())
    if noise == 0.0:  # exactly equiangular: eps is rounding, the theorem is T5b
        assert bool((fit.eps <= 1e-12 * (1 + fit.a.abs() + fit.b.abs())).all())


def test_sharp_certificate_coverage_on_random_attention_proxy():
    """The coverage target on a random attention proxy (d = dv = 64, Lk = 77, beta = 1/sqrt d, centred and
    non-centred values): the sharp certificate proves c >= 0 for >= 80% of the tokens with c >= 0, the
    transport certificate for far fewer. (Measured: THEORY.md summary table.)"""
    g = torch.Generator().manual_seed(0)
    hits = total = hits_old = 0
    for qs, mu in ((1.0, 0.0), (2.0, 1.0), (4.0, 3.0)):
        q = torch.randn(2, 32, 64, generator=g, dtype=F64) * qs
        k = torch.randn(2, 77, 64, generator=g, dtype=F64)
        v = torch.randn(2, 77, 64, generator=g, dtype=F64) + mu * torch.randn(2, 1, 64, generator=g, dtype=F64)
        b = parallel_bounds(q, k, v)
        pos = b.exact >= 0
        hits += int(((b.sharp >= 0) & pos).sum())
        hits_old += int(((parallel_certificate(q, k, v) >= 0) & pos).sum())
        total += int(pos.sum())
        assert not bool(((b.sharp >= 0) & ~pos).any())
    assert hits >= 0.8 * total
    assert hits_old < 0.8 * hits


# ------------------------------------------------------------------------------------------------
# the sign flip
# ------------------------------------------------------------------------------------------------
@given(st.one_of(adversarial_attention(), attention_inputs().map(lambda a: ("random", a))),
       st.floats(0.0, 30.0), st.one_of(st.none(), st.floats(0.01, 100.0)))
@example(COLLINEAR, 10.0, 15.0)
def test_sign_flip_criterion_zeta0(case, lam, eta):
    """zeta = 0: o = m s with m = 1 + lam c min(1, eta / (|c| ||s||)); m < 0 iff c < -1/lam and
    ||s|| < lam eta (uncapped: iff c < -1/lam)."""
    _, a = case
    r = sparse_dense_discrepancy(a.q, a.k, a.v, a.scale, 1.5, a.mask)
    m = sign_flip_margin(a.q, a.k, a.v, lam, eta, 0.0, a.scale, 1.5, a.mask)
    c = r.parallel_coef
    sn = r.sparse.norm(dim=-1)
    ok = sn > r.floor()
    crit = (c < -1.0 / lam) if lam > 0 else torch.zeros_like(c, dtype=torch.bool)
    if eta is not None:
        crit = crit & (sn < lam * eta)
    # away from the boundary m = 0 (rounding ~ lam * ulps)
    clear = ok & ((m.abs() > 1e-9 * (1 + lam)))
    assert bool(((m < 0) == crit)[clear].all())
    assert bool((flipped_tokens(a.q, a.k, a.v, lam, eta, 0.0, a.scale, 1.5, a.mask) == (m < 0)).all())


def test_sign_flip_pinned():
    """Values on one ray, ordered against the scores (test_theory's "attention" counterexample): c = -0.238 <
    -1/10 and ||s|| = 1 < lam eta = 150, so the paper's rule reverses the output (m = -1.38); at lam = 1,
    c > -1/lam and it does not. The collinear case (c = -0.047 at beta = 1) flips only for lam > 21.1."""
    q, k, v = T([[1.0, 0.0]]), T([[1.0, 0.0], [0.0, 1.0]]), T([[1.0], [3.0]])
    assert float(sign_flip_margin(q, k, v, 10.0, 15.0, 0.0, 2.0, 1.5)) == pytest.approx(-1.3841, abs=1e-4)
    assert bool(flipped_tokens(q, k, v, 10.0, 15.0, 0.0, 2.0, 1.5))
    assert not bool(flipped_tokens(q, k, v, 1.0, 15.0, 0.0, 2.0, 1.5))
    _, a = COLLINEAR
    assert not bool(flipped_tokens(a.q, a.k, a.v, 10.0, 15.0, 0.0, a.scale, 1.5))
    assert bool(flipped_tokens(a.q, a.k, a.v, 22.0, 15.0, 0.0, a.scale, 1.5))


@given(st.one_of(adversarial_attention(), attention_inputs().map(lambda a: ("random", a))),
       st.floats(0.0, 30.0), st.one_of(st.none(), st.floats(0.01, 100.0)), st.floats(0.0, 1.0))
@example(COLLINEAR, 10.0, 15.0, 0.0)
def test_positive_rule_never_flips_the_output(case, lam, eta, zeta):
    """gag_attention(parallel="positive") amplifies Delta_par only where c >= 0: <o, s> >= ||s||^2 for every
    token, lam, eta and zeta (the flip margin is >= 1), while the paper's rule flips the pinned case."""
    _, a = case
    q, k, v = a.q.unsqueeze(0), a.k.unsqueeze(0), a.v.unsqueeze(0)
    mask = None if a.mask is None else a.mask.unsqueeze(0)
    o = gag_attention(q, k, v, mask=mask, scale=a.scale, lam=lam, eta=15.0 if eta is None else eta, zeta=zeta,
                      parallel="positive")
    r = sparse_dense_discrepancy(q, k, v, a.scale, 1.5, mask)
    ss = r.sparse.square().sum(-1)
    proj = (o * r.sparse).sum(-1)
    # proj / ss = 1 + lam max(c, 0) min(1, eta/||g||) >= 1; rounding of o ~ (||s|| + lam eta) ulps
    slack = 1e-12 * (1 + lam) * (ss + r.sparse.norm(dim=-1) * (1 + lam * (15.0 if eta is None else eta)))
    assert bool((proj >= ss - slack).all())
    m = sign_flip_margin(q, k, v, lam, 15.0 if eta is None else eta, zeta, a.scale, 1.5, mask, parallel="positive")
    assert bool((m >= 1 - 1e-9).all() | (m == 0).all())
