"""Certificates for c >= 0 and the sign flip of GAG's output (THEORY.md T5a, T5e, T5f, "Sound allowances",
"The sign flip").

Soundness is checked against the truth oracle (tests/_truth.py): c, <Delta, s_hat> and the flip margin of the
*given* float inputs in 60-digit arithmetic, independent of the package's scores, normalizers and rounding.
A certificate >= 0 where the exact value is negative is a false certificate; every bound must also be a lower
bound of the exact value. The four counterexamples of the second audit are pinned by name.
"""
from __future__ import annotations

import math

import mpmath as mp
import pytest
import torch
from hypothesis import example, given
from hypothesis import strategies as st

import _truth
from _theory_strategies import F64, Attention, adversarial_attention, attention_inputs, false_certificate_hunt
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


def T(*rows):
    return torch.tensor(rows, dtype=F64)


COLLINEAR = ("collinear", Attention(T([[-3.0, 0.0]]), T([[1.0, 0.0], [2.0, 0.0]]), T([[1.0, 0.0], [2.0, 0.0]]), 1.0,
                                    None))


def _flat(x):
    return x.reshape(-1).tolist()


def assert_sound(q, k, v, scale, alpha, mask=None):
    """Every certificate of parallel_bounds / parallel_certificate / perturbative_parallel_certificate and the
    sign of parallel_margin against the exact truth of these inputs. Returns the number of certified rows."""
    b = parallel_bounds(q, k, v, scale, alpha, mask)
    certs = {name: _flat(getattr(b, name)) for name in ("transport", "norm", "split", "direct", "sharp")}
    margin = _flat(parallel_margin(q, k, v, scale, alpha, mask))
    pc = _flat(parallel_certificate(q, k, v, scale, alpha, mask))
    pert = _flat(perturbative_parallel_certificate(q, k, v, scale, alpha, mask)) if v is not None else None
    need = [i for i in range(len(margin)) if margin[i] != 0 or pc[i] >= 0 or any(c[i] > -math.inf for c in
                                                                                  certs.values())]
    if not need:
        return 0
    truths = _truth.truth(q, k, v, scale, alpha, mask, rows=need)
    certified = 0
    for i in need:
        t = truths[i]
        exact_unit = t.inner_unit
        for name, c in certs.items():
            if c[i] >= 0:
                assert t.inner >= 0, f"false {name} certificate {c[i]} (row {i}): exact <Delta, s_hat> = {exact_unit}"
            if math.isfinite(c[i]):  # a lower bound of the exact value, not only of its sign
                assert mp.mpf(c[i]) <= exact_unit, f"{name} bound {c[i]} above the exact {exact_unit} (row {i})"
        certified += certs["sharp"][i] >= 0
        if pc[i] >= 0:
            assert t.inner >= 0, f"false transport bracket {pc[i]} (row {i}): exact {exact_unit}"
        if margin[i] > 0:
            assert t.c > 0, f"parallel_margin {margin[i]} > 0 but the exact c = {t.c} (row {i})"
        if margin[i] < 0:
            assert t.c < 0, f"parallel_margin {margin[i]} < 0 but the exact c = {t.c} (row {i})"
        if pert is not None and math.isfinite(pert[i]):
            assert mp.mpf(pert[i]) <= t.inner, f"perturbative bound {pert[i]} above the exact {t.inner} (row {i})"
    return certified


@given(st.one_of(adversarial_attention(), attention_inputs().map(lambda a: ("random", a))),
       st.sampled_from([1.25, 1.5, 2.0, 3.0]))
@example(COLLINEAR, 1.5)
def test_sharp_certificate_is_sound(case, alpha):
    """No false certificate in any regime, against the exact truth of the inputs: every bound >= 0 implies
    c* >= 0 and every bound is below the exact <Delta*, s_hat*>; the sharp bound is the maximum of the four."""
    _, a = case
    assert_sound(a.q, a.k, a.v, a.scale, alpha, a.mask)
    b = parallel_bounds(a.q, a.k, a.v, a.scale, alpha, a.mask)
    assert bool((b.sharp >= torch.maximum(torch.maximum(b.transport, b.norm), torch.maximum(b.split, b.direct))).all())
    torch.testing.assert_close(parallel_certificate_sharp(a.q, a.k, a.v, a.scale, alpha, a.mask), b.sharp)


@given(false_certificate_hunt())
def test_no_false_certificate_where_rounding_decides(case):
    """The hypothesis search aimed at false certificates (large and cancelling scores, near-duplicate keys,
    supports on the edge, alpha up to 3, fp32 and fp64, values tuned so the computed <Delta, s> is a tiny
    positive number): no certificate and no margin sign contradicts the exact truth."""
    _, a, alpha, _ = case
    assert_sound(a.q, a.k, a.v, a.scale, alpha, a.mask)


# ------------------------------------------------------------------------------------------------
# the second audit's counterexamples (theory-audit-2.md section 1), pinned with the audit's inputs
# ------------------------------------------------------------------------------------------------
def _refused(q, k, v, scale, alpha):
    t = _truth.truth(q, k, v, scale, alpha)[0]
    assert t.inner < 0  # a genuine c < 0 of the given inputs
    b = parallel_bounds(q, k, v, scale, alpha)
    for name in ("transport", "norm", "split", "direct", "sharp"):
        assert float(getattr(b, name)[0]) < 0, name
    assert float(parallel_certificate(q, k, v, scale, alpha)[0]) < 0
    assert float(parallel_margin(q, k, v, scale, alpha)[0]) <= 0  # never the wrong sign
    assert_sound(q, k, v, scale, alpha)
    return t, b


def test_certificate_score_rounding_fp32():
    """fp32, alpha = 1.5, scale 1: q = (8192, 1), k = ((1, x1), (1, 0)), x1 = float32(t* - 1e-5) with t* the
    root of ((t + sqrt(8 - t^2))/4)^2 = 2/3, v = (1, -2): the computed score gap 0.478516 vs the exact
    0.478283 put the computed s on the wrong side of 0 (exact c = -14593); the old sharp certificate said
    +0.134. The score-rounding allowance (gamma_{d+2} scale sum|q_i k_ji| = 1e-3 here) refuses it."""
    q = torch.tensor([[8192.0, 1.0]])
    k = torch.tensor([[1.0, 0.478282630443573], [1.0, 0.0]])
    v = torch.tensor([[1.0], [-2.0]])
    t, b = _refused(q, k, v, 1.0, 1.5)
    assert float(t.c) == pytest.approx(-14593, rel=1e-3)


def test_certificate_score_rounding_cancellation():
    """fp32, scores below 1 from cancellation inside q.k: q = (4096, 1, -4096), k = ((1, x1, 1), (1, 0, 1)),
    x1 = (m + 0.6) ulp(4096), v = (1, -b) with b placing the exact root of s 0.75 ulp above a multiple of
    ulp(4096) (the audit's score_rounding_small.py)."""
    q = torch.tensor([[4096.0, 1.0, -4096.0]])
    k = torch.tensor([[1.0, 0.48027342557907104, 1.0], [1.0, 0.0, 1.0]])
    v = torch.tensor([[1.0], [-2.0062639713287354]])
    _refused(q, k, v, 1.0, 1.5)


def test_certificate_fp64_large_scores():
    """fp64, scores ~ 2^30: the same construction as the fp32 case one binary exponent range up
    (score_rounding_scan.py: the smallest magnitude with a false certificate was 2^30)."""
    A = 2.0**30
    ulp = A * 2.0**-52
    m = int(0.48 / ulp)
    tstar = mp.mpf((m + 0.75) * ulp)
    p1 = ((tstar + mp.sqrt(8 - tstar * tstar)) / 4) ** 2
    b = float(p1 / (1 - p1))
    x1 = (m + 0.6) * ulp
    q = T([A, 1.0])
    k = T([1.0, x1], [1.0, 0.0])
    v = T([1.0], [-b])
    _refused(q, k, v, 1.0, 1.5)


def test_certificate_alpha3_boundary():
    """fp64, alpha = 3, exactly representable scores z = (0, -1/4, -9/32): the third key sits exactly on the
    support boundary (exact weights (3/4, 1/4, 0)); the computed third weight was 2.1e-8 (entmax is only
    Hoelder-1/2 there). v = (a, 0, 1) with a making the exact <Delta, s> = -4e-9 s. The weights' enclosure
    is sqrt(eps) wide at the boundary, so the certificate refuses."""
    q = T([1.0])
    k = T([0.0], [-0.25], [-0.28125])
    v = T([0.8384961062180816], [0.0], [1.0])
    t, b = _refused(q, k, v, 1.0, 3.0)
    assert float(b.allowance[0]) > 1e-8  # the Hoelder term, not a few ulps


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
    cert = _flat(perturbative_parallel_certificate(a.q, a.k, v, a.scale, 1.5, a.mask))
    rows = [i for i, x in enumerate(cert) if x >= 0][:6] + [0]  # certified rows, and one lower-bound check
    truths = _truth.truth(a.q, a.k, v, a.scale, 1.5, a.mask, rows=rows)
    for i in rows:
        if math.isfinite(cert[i]):
            assert mp.mpf(cert[i]) <= truths[i].inner, f"perturbative bound {cert[i]} above the exact {truths[i].inner}"
    if noise == 0.0:  # exactly equiangular: eps is rounding, the theorem is T5b
        assert bool((fit.eps <= 1e-12 * (1 + fit.a.abs() + fit.b.abs())).all())


def test_certificates_refuse_the_pinned_counterexamples():
    _, a = COLLINEAR
    assert float(parallel_margin(a.q, a.k, a.v, a.scale, 1.5)) < -0.1
    b = parallel_bounds(a.q, a.k, a.v, a.scale, 1.5)
    assert float(b.sharp) < 0 and float(b.norm) < 0


def test_sharp_certificate_coverage_on_random_attention_proxy():
    """Coverage on a random attention proxy (d = dv = 64, Lk = 77, beta = 1/sqrt d, centred and non-centred
    values): the sound sharp certificate (a-posteriori: it needs s and d) proves c >= 0 for >= 99% of the
    tokens with c >= 0 -- it is the computed c minus a rigorous error bound, so it misses only tokens with
    |c| at rounding level -- and never certifies a token with c < 0; the transport mechanism bound covers far
    fewer. (Measured: THEORY.md summary table.)"""
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
    assert hits >= 0.99 * total
    assert hits_old < 0.8 * hits


# ------------------------------------------------------------------------------------------------
# the sign flip
# ------------------------------------------------------------------------------------------------
@given(st.one_of(adversarial_attention(), attention_inputs().map(lambda a: ("random", a))),
       st.floats(0.0, 30.0), st.one_of(st.none(), st.floats(0.01, 100.0)))
@example(COLLINEAR, 10.0, 15.0)
def test_sign_flip_criterion_zeta0(case, lam, eta):
    """zeta = 0: o = m s with m = 1 + lam c min(1, eta / (|c| ||s||)); m < 0 iff c < -1/lam and
    ||s|| < lam eta (uncapped: iff c < -1/lam). The margin's sign is checked against the exact m* of the
    inputs (truth oracle): m > 0 proves m* > 0, m < 0 proves m* < 0 (0 = rounding could decide)."""
    _, a = case
    r = sparse_dense_discrepancy(a.q, a.k, a.v, a.scale, 1.5, a.mask)
    m = sign_flip_margin(a.q, a.k, a.v, lam, eta, 0.0, a.scale, 1.5, a.mask)
    c = r.parallel_coef
    sn = r.sparse.norm(dim=-1)
    crit = (c < -1.0 / lam) if lam > 0 else torch.zeros_like(c, dtype=torch.bool)
    if eta is not None:
        crit = crit & (sn < lam * eta)
    # where decided and away from the boundary m = 0 (rounding ~ lam * ulps) the computed criterion agrees
    clear = (m != 0) & (m.abs() > 1e-9 * (1 + lam))
    assert bool(((m < 0) == crit)[clear].all())
    assert bool((flipped_tokens(a.q, a.k, a.v, lam, eta, 0.0, a.scale, 1.5, a.mask) == (m < 0)).all())
    mf = _flat(m)
    if any(x != 0 for x in mf):
        truths = _truth.truth(a.q, a.k, a.v, a.scale, 1.5, a.mask, rows=[i for i, x in enumerate(mf) if x != 0])
        for i, x in enumerate(mf):
            if x != 0:
                exact_m = truths[i].flip_margin(lam, eta)
                assert (exact_m > 0) if x > 0 else (exact_m < 0), f"flip margin {x} vs exact {exact_m} (row {i})"


@given(false_certificate_hunt(), st.floats(1.0, 1e4), st.one_of(st.none(), st.floats(0.01, 100.0)),
       st.sampled_from([0.0, 0.5, 1.0]))
def test_sign_flip_margin_is_sound_where_rounding_decides(case, lam, eta, zeta):
    """The flip predicate never claims a sign the exact inputs do not have, also for zeta > 0 and in the
    regimes aimed at rounding (where c* is near 0 and lam large makes m* near 0 for c* ~ -1/lam)."""
    _, a, alpha, _ = case
    m = _flat(sign_flip_margin(a.q, a.k, a.v, lam, eta, zeta, a.scale, alpha))
    if any(x != 0 for x in m):
        truths = _truth.truth(a.q, a.k, a.v, a.scale, alpha, rows=[i for i, x in enumerate(m) if x != 0])
        for i, x in enumerate(m):
            if x != 0:
                exact_m = truths[i].flip_margin(lam, eta, zeta)
                assert (exact_m > 0) if x > 0 else (exact_m < 0), f"flip margin {x} vs exact {exact_m} (row {i})"


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


def test_cert_sweep_slice_has_no_failures():
    """A slice of experiments/theory_cert_sweep.py (the 50,000-row soundness sweep): 66 rows over its 11 regimes,
    fp32, every certificate, margin sign and flip sign against the truth oracle."""
    from _experiments import load_experiment

    mod = load_experiment("theory_cert_sweep")
    stats, failures, _ = mod.run(66, seed=5, dtypes=("float32",))
    assert failures == []
    tot = mod.summarize(stats)
    assert tot["rows"] == 66 and tot.get("cert_sharp", 0) > 0
