"""Tests of hopfield_gag.guidance.aa1: the AA(1) readings of PLADIS and GAG (extrapolation_as_aa), the AA(1)
mixing coefficient (aa1_mixing) against its sympy closed form, and the AA-adaptive scale (aa_adaptive_scale),
with the attention op's methods checked against these readings.

float64 throughout; tolerances as in tests/test_anderson.py (1e-10 relative: a few hundred ulps of float64
sums of O(1) terms, orders of magnitude below an algebraic slip).
"""
from __future__ import annotations

import math

import numpy as np
import pytest
import sympy as sp
import torch
from hypothesis import given
from hypothesis import strategies as st

from hopfield_gag import aa1_mixing, aa_adaptive_scale, extrapolation_as_aa
from hopfield_gag.ops import normalizers
from hopfield_gag.theory import symbolic

F64 = torch.float64


def test_aa1_mixing_degenerate_pair_is_zero_and_finite():
    f = torch.tensor([[1.0, 2.0], [0.0, 0.0]], dtype=F64)
    gamma, degenerate = aa1_mixing(f, f.clone())
    assert degenerate.all() and (gamma == 0).all()
    g32, deg32 = aa1_mixing(f.float(), (f + 1e-9).float())  # below fp32 rounding -> degenerate
    assert deg32[0] and torch.isfinite(g32).all()


# ------------------------------------------------------------------------------------------------
# Symbolic identities (hopfield_gag.symbolic, owned by the theory engineer) and their numeric twins


def test_sympy_aa1_closed_form_and_our_coefficient_agree():
    ident = symbolic.aa1_mixing_closed_form()
    assert ident.holds
    gamma_star = ident.expressions["gamma_star"]
    syms = sorted(gamma_star.free_symbols, key=lambda s: s.name)  # f1..f3 (f_k), g1..g3 (f_{k-1})
    f_sym = [s for s in syms if s.name.startswith("f")]
    g_sym = [s for s in syms if s.name.startswith("g")]
    fn = sp.lambdify(f_sym + g_sym, gamma_star, "numpy")
    rng = np.random.default_rng(0)
    for _ in range(20):
        fk, fkm1 = rng.standard_normal(3), rng.standard_normal(3)
        ours, _ = aa1_mixing(torch.from_numpy(fkm1), torch.from_numpy(fk))
        assert float(ours) == pytest.approx(float(fn(*fk, *fkm1)), rel=1e-10, abs=1e-12)


def test_sympy_pladis_identity_and_our_gamma_agree():
    ident = symbolic.pladis_as_aa1()
    assert ident.holds
    lam_sym = next(s for s in ident.expressions["gamma"].free_symbols if s.name == "lam")
    for lam in (0.0, 1.0, 1.5, 2.0, -0.3):
        ours = extrapolation_as_aa(torch.zeros(3, dtype=F64), torch.ones(3, dtype=F64), "pladis", lam=lam)
        assert float(ours.gamma) == pytest.approx(float(ident.expressions["gamma"].subs(lam_sym, lam)), abs=1e-15)


def test_sympy_gag_identity_and_our_gamma_agree():
    ident = symbolic.gag_as_aa1()
    assert ident.holds
    gc = ident.expressions["gamma_capped"]
    syms = {s.name: s for s in gc.free_symbols}
    rng = np.random.default_rng(1)
    for _ in range(20):
        s_v, d_v = rng.standard_normal(3), rng.standard_normal(3)
        lam, eta, zeta = rng.uniform(0, 12), rng.uniform(0.05, 3), rng.uniform(0, 1)
        subs = {syms[f"s{i + 1}"]: s_v[i] for i in range(3) if f"s{i + 1}" in syms}
        subs.update({syms[f"d{i + 1}"]: d_v[i] for i in range(3) if f"d{i + 1}" in syms})
        subs.update({syms[k]: v for k, v in (("lam", lam), ("eta", eta), ("zeta", zeta)) if k in syms})
        ours = extrapolation_as_aa(torch.from_numpy(d_v), torch.from_numpy(s_v), "gag", lam=lam, eta=eta, zeta=zeta)
        assert float(ours.gamma) == pytest.approx(float(gc.subs(subs)), rel=1e-10, abs=1e-12)


# ------------------------------------------------------------------------------------------------
# extrapolation_as_aa: reconstructions equal the methods' direct formulas


def _gag_direct(s, d, lam, eta, zeta, eps=1e-12):
    """GAG as written in the reference implementations (paper.md §3.4 pseudocode)."""
    D = s - d
    dpar = ((D * s).sum(-1, keepdim=True) / (s * s).sum(-1, keepdim=True).clamp_min(eps)) * s
    gg = dpar + zeta * (D - dpar)
    ghat = gg * torch.clamp(eta / torch.linalg.vector_norm(gg, dim=-1, keepdim=True).clamp_min(eps), max=1.0)
    return s + lam * ghat


vec_pairs = st.tuples(st.integers(1, 4), st.integers(1, 8), st.integers(0, 2**31 - 1))


@given(shape=vec_pairs, lam=st.floats(0.0, 20.0), eta=st.floats(0.01, 30.0), zeta=st.floats(0.0, 1.0),
       scale=st.floats(0.01, 10.0))
def test_extrapolation_reconstructions_equal_direct_formulas(shape, lam, eta, zeta, scale):
    L, dv, seed = shape
    gen = torch.Generator().manual_seed(seed)
    s = scale * torch.randn(L, dv, generator=gen, dtype=F64)
    d = scale * torch.randn(L, dv, generator=gen, dtype=F64)
    pl = extrapolation_as_aa(d, s, "pladis", lam=lam)
    torch.testing.assert_close(pl.output, d + lam * (s - d), rtol=1e-12, atol=1e-12 * scale * (1 + lam))
    torch.testing.assert_close(pl.gamma, torch.full((L,), 1 - lam, dtype=F64))
    gag = extrapolation_as_aa(d, s, "gag", lam=lam, eta=eta, zeta=zeta)
    atol = 1e-12 * scale * (1 + lam)
    torch.testing.assert_close(gag.output, _gag_direct(s, d, lam, eta, zeta), rtol=1e-12, atol=atol)
    torch.testing.assert_close(gag.output, s - gag.gamma[:, None] * gag.difference, rtol=1e-12, atol=atol)
    # matrix-valued AA(1) coefficient: o = s - Gamma (s - d)
    Gam = gag.mixing_operator()
    torch.testing.assert_close(gag.output, s - (Gam @ (s - d).unsqueeze(-1)).squeeze(-1), rtol=1e-10,
                               atol=1e-10 * scale * (1 + lam))
    Gp = pl.mixing_operator()
    torch.testing.assert_close(pl.output, s - (Gp @ (s - d).unsqueeze(-1)).squeeze(-1), rtol=1e-10,
                               atol=1e-10 * scale * (1 + lam))
    # the cap bound ||o - s|| <= lam * eta and |gamma| <= lam
    assert (torch.linalg.vector_norm(gag.output - s, dim=-1) <= lam * eta * (1 + 1e-12) + 1e-12).all()
    assert (gag.gamma.abs() <= lam + 1e-12).all()


@given(shape=vec_pairs, lam=st.floats(0.0, 10.0))
def test_gag_special_cases(shape, lam):
    L, dv, seed = shape
    gen = torch.Generator().manual_seed(seed)
    s = torch.randn(L, dv, generator=gen, dtype=F64)
    d = torch.randn(L, dv, generator=gen, dtype=F64)
    # zeta = 1 uncapped: PLADIS with lam_P = 1 + lam, gamma = -lam
    iso = extrapolation_as_aa(d, s, "gag", lam=lam, eta=1e9, zeta=1.0)
    pl = extrapolation_as_aa(d, s, "pladis", lam=1 + lam)
    torch.testing.assert_close(iso.output, pl.output, rtol=1e-12, atol=1e-12 * (1 + lam))
    torch.testing.assert_close(iso.gamma, pl.gamma, rtol=1e-12, atol=1e-12)
    # zeta = 0 uncapped: radial rescaling (1 + lam c) s
    rad = extrapolation_as_aa(d, s, "gag", lam=lam, eta=1e9, zeta=0.0)
    c = ((s - d) * s).sum(-1, keepdim=True) / (s * s).sum(-1, keepdim=True)
    torch.testing.assert_close(rad.output, (1 + lam * c) * s, rtol=1e-12, atol=1e-12 * (1 + lam))


def test_extrapolation_as_aa_errors_dtypes_and_tensor_lam():
    s, d = torch.randn(2, 5, 4), torch.randn(2, 5, 4)
    with pytest.raises(ValueError, match="method"):
        extrapolation_as_aa(d, s, "cfg")
    with pytest.raises(ValueError, match="sparse"):
        extrapolation_as_aa(d, s[..., :3], "gag")
    with pytest.raises(ValueError, match="dense"):
        extrapolation_as_aa(d * math.nan, s, "gag")
    with pytest.raises(ValueError, match="eta"):
        extrapolation_as_aa(d, s, "gag", eta=0.0)
    with pytest.raises(ValueError, match="zeta"):
        extrapolation_as_aa(d, s, "gag", zeta=1.5)
    with pytest.raises(ValueError, match="lam"):
        extrapolation_as_aa(d, s, "pladis", lam=torch.ones(3))
    lam = torch.rand(2, 5) * 3
    r = extrapolation_as_aa(d, s, "pladis", lam=lam)
    torch.testing.assert_close(r.output, d + lam[..., None] * (s - d))
    for dt in (torch.float16, torch.bfloat16):
        r = extrapolation_as_aa(d.to(dt), s.to(dt), "gag")
        assert r.output.dtype == dt and torch.isfinite(r.output.float()).all()
    zero = extrapolation_as_aa(torch.zeros(3), torch.zeros(3), "gag")  # s = 0, Delta = 0: finite, o = s
    assert torch.isfinite(zero.output).all() and (zero.output == 0).all()


# ------------------------------------------------------------------------------------------------
# aa_adaptive_scale


def _qkv(seed, B=2, Lq=5, Lk=7, d=8, dv=None, dtype=F64):
    gen = torch.Generator().manual_seed(seed)
    q = torch.randn(B, Lq, d, generator=gen, dtype=F64)
    k = torch.randn(B, Lk, d, generator=gen, dtype=F64)
    v = None if dv is None else torch.randn(B, Lk, dv, generator=gen, dtype=F64)
    cast = (lambda t: None if t is None else t.to(dtype))
    return cast(q), cast(k), cast(v)


@given(seed=st.integers(0, 2**31 - 1), Lq=st.integers(1, 6), Lk=st.integers(2, 10), d=st.integers(1, 8),
       qscale=st.floats(0.1, 10.0), alpha=st.sampled_from([1.5, 2.0]))
def test_adaptive_scale_hopfield_case_is_aa1_on_query_residuals(seed, Lq, Lk, d, qscale, alpha):
    q, k, _ = _qkv(seed, 1, Lq, Lk, d)
    q = q * qscale
    lo, hi = -50.0, 50.0
    r = aa_adaptive_scale(q, k, None, alpha=alpha, lo=lo, hi=hi)
    z = (q @ k.mT) / math.sqrt(d)
    dn = normalizers.softmax(z) @ k
    sp_ = normalizers.entmax(z, alpha=alpha) @ k
    torch.testing.assert_close(r.dense, dn)
    torch.testing.assert_close(r.sparse, sp_)
    # AA(1) on f_{k-1} = d - xi, f_k = s - xi (the closed form of aa1_mixing / symbolic)
    gamma_ref, degenerate = aa1_mixing(dn - q, sp_ - q)
    lam_ref = (1 - gamma_ref).clamp(lo, hi)
    torch.testing.assert_close(r.pladis_scale, lam_ref, rtol=1e-10, atol=1e-10)
    torch.testing.assert_close(r.gamma, 1 - r.pladis_scale)
    torch.testing.assert_close(r.output, dn + r.pladis_scale[..., None] * (sp_ - dn), rtol=1e-10, atol=1e-10)
    # least-squares property: no point of the dense->sparse line is closer to the state (unclamped tokens)
    free = ~r.clamped & ~r.degenerate
    for t in (-1.0, 0.0, 0.5, 1.0, 2.0):
        other = dn + t * (sp_ - dn)
        dist_ours = torch.linalg.vector_norm(r.output - q, dim=-1)
        dist_other = torch.linalg.vector_norm(other - q, dim=-1)
        assert (dist_ours[free] <= dist_other[free] + 1e-10 * (1 + dist_other[free])).all()


@given(seed=st.integers(0, 2**31 - 1), dv=st.integers(1, 6))
def test_adaptive_scale_with_values_uses_key_space_residuals(seed, dv):
    q, k, v = _qkv(seed, 2, 4, 6, 5, dv=dv)
    rk = aa_adaptive_scale(q, k, None)
    rv = aa_adaptive_scale(q, k, v)
    # the scale is a property of the Hopfield state (key space), read out linearly through v
    torch.testing.assert_close(rv.pladis_scale, rk.pladis_scale)
    z = (q @ k.mT) / math.sqrt(5)
    pd, ps = normalizers.softmax(z), normalizers.entmax(z, alpha=1.5)
    lam = rv.pladis_scale[..., None]
    torch.testing.assert_close(rv.output, ((1 - lam) * pd + lam * ps) @ v)
    assert rv.output.shape == (2, 4, dv) and rv.gamma.shape == (2, 4)


def test_adaptive_scale_guards_degenerate_and_clamp():
    # a single key: dense == sparse == that key: degenerate -> gamma 0, lambda 1, finite
    q = torch.randn(1, 3, 4, dtype=F64)
    k = torch.randn(1, 1, 4, dtype=F64)
    r = aa_adaptive_scale(q, k, None)
    assert r.degenerate.all() and (r.gamma == 0).all() and (r.pladis_scale == 1).all()
    assert torch.isfinite(r.output).all()
    # identical keys: p_d = p_s = uniform -> degenerate too
    k2 = torch.ones(1, 5, 4, dtype=F64)
    r2 = aa_adaptive_scale(q, k2, torch.randn(1, 5, 2, dtype=F64))
    assert r2.degenerate.all() and torch.isfinite(r2.output).all()
    # a degenerate token whose lambda = 1 is outside [lo, hi] is clamped into range
    r3 = aa_adaptive_scale(q, k, None, lo=1.5, hi=2.0)
    assert (r3.pladis_scale == 1.5).all()
    # clamping: wide range vs default range on random problems; hits are flagged
    q4, k4, _ = _qkv(0, 4, 16, 9, 6)
    wide = aa_adaptive_scale(q4 * 5, k4, None, lo=-1e6, hi=1e6)
    narrow = aa_adaptive_scale(q4 * 5, k4, None)
    lam_w = wide.pladis_scale
    torch.testing.assert_close(narrow.pladis_scale, lam_w.clamp(0.0, 3.0))
    assert torch.equal(narrow.clamped, (lam_w < 0) | (lam_w > 3))
    assert bool(narrow.clamped.any()) and bool((~narrow.clamped).any())  # both occur on this table


def test_adaptive_scale_shapes_broadcast_mask_and_dtypes():
    q, k, v = _qkv(3, 2, 5, 7, 8, dv=3)
    r = aa_adaptive_scale(q, k[0], v[0])  # shared keys/values broadcast over the batch
    assert r.gamma.shape == (2, 5) and r.output.shape == (2, 5, 3)
    # masking keys out == removing them
    mask = torch.tensor([True, True, False, True, False, True, True])
    rm = aa_adaptive_scale(q, k, v, mask=mask)
    rr = aa_adaptive_scale(q, k[:, mask], v[:, mask])
    torch.testing.assert_close(rm.output, rr.output)
    torch.testing.assert_close(rm.pladis_scale, rr.pladis_scale)
    ref = aa_adaptive_scale(q, k, v)
    for dt in (torch.float32, torch.float16, torch.bfloat16):
        rd = aa_adaptive_scale(q.to(dt), k.to(dt), v.to(dt))
        assert rd.output.dtype == dt and rd.gamma.dtype == dt and rd.pladis_scale.shape == (2, 5)
        assert torch.isfinite(rd.output.float()).all() and torch.isfinite(rd.gamma.float()).all()
        # fp32 agrees with fp64 to fp32 resolution (lambda can be sensitive where ||Delta|| is small)
        if dt == torch.float32:
            torch.testing.assert_close(rd.output.double(), ref.output, rtol=1e-3, atol=1e-3)


@pytest.mark.parametrize(
    "kwargs,name",
    [
        (dict(q=torch.full((1, 2, 3), math.nan, dtype=F64)), "q"),
        (dict(k=torch.randn(1, 4, 5, dtype=F64)), "k"),
        (dict(v=torch.randn(1, 5, 2, dtype=F64)), "v"),
        (dict(scale=0.0), "scale"),
        (dict(alpha=1.0), "alpha"),
        (dict(lo=2.0, hi=1.0), "lo"),
        (dict(k=torch.randn(1, 4, 3, dtype=torch.float32)), "k"),
    ],
)
def test_adaptive_scale_bad_inputs_raise_value_error_naming_them(kwargs, name):
    args = dict(q=torch.randn(1, 2, 3, dtype=F64), k=torch.randn(1, 4, 3, dtype=F64),
                v=torch.randn(1, 4, 2, dtype=F64))
    args.update(kwargs)
    with pytest.raises(ValueError, match=name):
        aa_adaptive_scale(**args)


@given(seed=st.integers(0, 2**31 - 1), lam=st.floats(0.0, 12.0), eta=st.floats(0.05, 20.0),
       zeta=st.floats(0.0, 1.0))
def test_attention_op_agrees_with_the_aa_readings(seed, lam, eta, zeta):
    # cross-implementation check: gag_attention (chunked, fused blends) vs the AA(1) reconstructions here
    from hopfield_gag import gag_attention

    gen = torch.Generator().manual_seed(seed)
    q = torch.randn(2, 5, 8, generator=gen, dtype=F64)
    k = torch.randn(2, 7, 8, generator=gen, dtype=F64)
    v = torch.randn(2, 7, 4, generator=gen, dtype=F64)
    r = aa_adaptive_scale(q, k, v)
    tol = dict(rtol=1e-10, atol=1e-10 * (1 + lam))  # float64, different association orders
    torch.testing.assert_close(gag_attention(q, k, v, method="aa"), r.output, **tol)
    gag = extrapolation_as_aa(r.dense, r.sparse, "gag", lam=lam, eta=eta, zeta=zeta)
    torch.testing.assert_close(gag_attention(q, k, v, method="gag", lam=lam, eta=eta, zeta=zeta), gag.output, **tol)
    pl = extrapolation_as_aa(r.dense, r.sparse, "pladis", lam=lam)
    torch.testing.assert_close(gag_attention(q, k, v, method="pladis", lam=lam), pl.output, **tol)


def test_adaptive_scale_aa_range_is_the_clamp_of_lo_hi():
    g = torch.Generator().manual_seed(5)
    q, k = torch.randn(2, 6, 4, generator=g, dtype=F64) * 3, torch.randn(2, 9, 4, generator=g, dtype=F64)
    a = aa_adaptive_scale(q, k, None, aa_range=(0.5, 1.2))
    b = aa_adaptive_scale(q, k, None, lo=0.5, hi=1.2)
    assert torch.equal(a.pladis_scale, b.pladis_scale) and torch.equal(a.output, b.output)
    assert bool((a.pladis_scale >= 0.5).all() and (a.pladis_scale <= 1.2).all())
    # one end given separately replaces that end of aa_range
    assert torch.equal(aa_adaptive_scale(q, k, None, aa_range=(0.5, 9.0), hi=1.2).output, a.output)
    with pytest.raises(ValueError, match="aa_range"):
        aa_adaptive_scale(q, k, None, aa_range=(2.0, 1.0))
    with pytest.raises(TypeError, match="aa_range"):
        aa_adaptive_scale(q, k, None, aa_range=(0.0, True))
