"""Tests of hopfield_gag.ops.combine: the one home of the guidance rules, its small-norm convention, the
one-sided parallel rule, and that every caller goes through it."""
from __future__ import annotations

import math

import pytest
import torch
from hypothesis import example, given, settings
from hypothesis import strategies as st

import hopfield_gag as H
from hopfield_gag.ops.combine import Combined, aa_token_scale, combine, gag_difference, parallel_coefficient

F64 = torch.float64
UNIT_ROUNDOFF = {torch.float64: 2.0**-53, torch.float32: 2.0**-24}


def _pair(seed, n, dv, dtype=F64, scale=1.0):
    g = torch.Generator().manual_seed(seed)
    d = torch.randn(n, dv, generator=g, dtype=F64) * scale
    s = torch.randn(n, dv, generator=g, dtype=F64) * scale
    return d.to(dtype), s.to(dtype)


def _formula(d, s, lam, eta, zeta, parallel):
    """The GAG rule written out one token at a time in float64 (independent of the library)."""
    out = torch.empty_like(d, dtype=F64)
    for i in range(d.shape[0]):
        di, si = d[i].double(), s[i].double()
        delta = si - di
        ss = float(si @ si)
        c = float(delta @ si) / ss if ss > torch.finfo(F64).tiny else 0.0
        par = c * si if (parallel == "paper" or c >= 0) else torch.zeros_like(si)
        g = par + zeta * (delta - c * si)
        gn = float(torch.linalg.vector_norm(g))
        factor = 1.0 if eta is None or gn <= eta else eta / gn
        out[i] = si + lam * factor * g
    return out


# ---------------------------------------------------------------------------------------------- the formulas


@given(
    seed=st.integers(0, 2**31 - 1),
    dv=st.integers(1, 6),
    lam=st.floats(0.0, 12.0),
    eta=st.one_of(st.none(), st.floats(0.05, 20.0)),
    zeta=st.floats(0.0, 1.0),
    parallel=st.sampled_from(["paper", "positive"]),
)
@example(seed=0, dv=1, lam=10.0, eta=15.0, zeta=0.0, parallel="positive")  # dv = 1: Delta_perp = 0
def test_gag_matches_tokenwise_float64_formula(seed, dv, lam, eta, zeta, parallel):
    d, s = _pair(seed, 8, dv)
    r = combine("gag", d, s, lam=lam, eta=eta, zeta=zeta, parallel=parallel)
    # float64 both ways; the library reassociates (c from |s|^2 - <d, s>, radial form for zeta = 0):
    # a few ulps of the O(1 + lam) * |s| terms
    torch.testing.assert_close(r.output, _formula(d, s, lam, eta, zeta, parallel), rtol=1e-12, atol=1e-12 * (1 + lam))
    assert isinstance(r, Combined) and r.output.dtype == F64


def test_linear_methods_and_token_scales():
    d, s = _pair(1, 5, 4)
    lam = torch.linspace(-1.0, 3.0, 5, dtype=F64)  # per-token pladis scale (extrapolation_as_aa passes tensors)
    assert torch.equal(combine("dense", d, s).output, d)
    assert torch.equal(combine("sparse", d, s).output, s)
    r = combine("pladis", d, s, lam=lam)
    torch.testing.assert_close(r.output, d + lam[:, None] * (s - d), rtol=0, atol=1e-14)
    assert torch.equal(r.token_scale, lam)
    assert torch.equal(combine("dense", d, s).token_scale, torch.zeros(5, dtype=F64))
    assert torch.equal(combine("sparse", d, s).token_scale, torch.ones(5, dtype=F64))


def test_aa_uses_the_one_token_scale():
    g = torch.Generator().manual_seed(2)
    q, kd, ks = (torch.randn(6, 3, generator=g, dtype=F64) for _ in range(3))
    d, s = _pair(3, 6, 2)
    r = combine("aa", d, s, q_key=q, dense_key=kd, sparse_key=ks, aa_range=(0.0, 3.0))
    lam = aa_token_scale(q, kd, ks, 0.0, 3.0)[0]
    torch.testing.assert_close(r.output, d + lam[:, None] * (s - d), rtol=0, atol=1e-14)
    # independently: lam* = clamp(1 - <f_k, f_k - f_{k-1}>/|f_k - f_{k-1}|^2, 0, 3)
    fp, fc = kd - q, ks - q
    gamma = ((fc * (fc - fp)).sum(-1)) / ((fc - fp) ** 2).sum(-1)
    torch.testing.assert_close(lam, (1 - gamma).clamp(0.0, 3.0), rtol=1e-12, atol=1e-12)
    with pytest.raises(ValueError, match="method='aa' needs q_key"):
        combine("aa", d, s)


@pytest.mark.parametrize(
    "kwargs, match",
    [
        (dict(method="cfg"), r"method must be one of \('dense', 'sparse', 'pladis', 'gag', 'aa'\)"),
        (dict(parallel="negative"), r"parallel must be one of \('paper', 'positive'\)"),
        (dict(eta=0.0), "eta must be > 0"),
        (dict(zeta=1.5), "zeta must be >= 0.0 and <= 1.0"),
        (dict(lam=math.nan), "lam must be finite"),
    ],
)
def test_bad_options_raise(kwargs, match):
    d, s = _pair(0, 2, 3)
    kw = dict(method="gag") | kwargs
    method = kw.pop("method")
    with pytest.raises(ValueError, match=match):
        combine(method, d, s, **kw)


# ---------------------------------------------------------------------------------------- small-norm rule


@pytest.mark.parametrize("dtype", [torch.float64, torch.float32, torch.float16])
def test_parallel_coefficient_is_scale_invariant_down_to_the_normal_range(dtype):
    """c(t d, t s) = c(d, s) for every t whose |t s|^2 is a normal number of the compute dtype; below it
    c is exactly 0. Checked against c computed in float64 from the very same (rounded) input values."""
    cd = torch.float32 if dtype == torch.float16 else dtype
    tiny = torch.finfo(cd).tiny
    u = UNIT_ROUNDOFF[cd]
    d0, s0 = _pair(4, 16, 6)
    # fp16 inputs: powers of two down into fp16's subnormal range keep the values representable to 2^-24
    exps = range(0, 25, 4) if dtype == torch.float16 else range(0, (120 if cd == torch.float32 else 1000), 20)
    seen_below = False
    for e in exps:
        t = 2.0**-e
        d, s = (d0 * t).to(dtype), (s0 * t).to(dtype)
        c = parallel_coefficient(d.to(cd), s.to(cd))
        dd, ss_ = d.double(), s.double()
        ss = (ss_ * ss_).sum(-1)
        c_ref = ((ss_ - dd) * ss_).sum(-1) / ss
        normal = ss > tiny * 4  # margin of a few ulps around the threshold
        below = ss < tiny / 4
        seen_below |= bool(below.any())
        # (|s|^2 - <d, s>)/|s|^2 with each sum carrying <= dv*u relative error: |err| <= 4 dv u (1 + |d|/|s|)
        bound = 4 * 6 * u * (1 + dd.norm(dim=-1) / ss.sqrt())
        assert bool(((c.double() - c_ref).abs() <= bound)[normal].all()), (dtype, e)
        assert bool((c[below] == 0).all()), (dtype, e)
    if cd == torch.float32 and dtype == torch.float32:
        assert seen_below  # the sweep did reach the rule's threshold


@pytest.mark.parametrize("dtype", [torch.float64, torch.float32, torch.float16])
def test_extrapolation_as_aa_agrees_with_the_rule_at_small_norms(dtype):
    """Regression: at |s| ~ 1e-7 extrapolation_as_aa used to clamp |s|^2 at 1e-12 and differed from the GAG
    formula by 94% of |s|. Now both are combine; compare with the float64 token loop."""
    d, s = _pair(5, 12, 4, scale=1e-7 if dtype != torch.float16 else 2.0**-12)
    d, s = d.to(dtype), s.to(dtype)
    lam, eta, zeta = 10.0, 15.0, 0.0
    ref = _formula(d.double(), s.double(), lam, eta, zeta, "paper")
    ours = H.extrapolation_as_aa(d, s, "gag", lam=lam, eta=eta, zeta=zeta).output.double()
    theory = H.gag_output(d, s, lam, eta, zeta).double()
    # relative to |s|: fp64 and fp32-computed results rounded to the input dtype; 2 (1 + lam |c|) ulps
    u_out = {torch.float64: 2.0**-53, torch.float32: 2.0**-24, torch.float16: 2.0**-11}[dtype]
    c = parallel_coefficient(d.double(), s.double())
    tol = (8 * (1 + lam * c.abs()) * u_out * s.double().norm(dim=-1))[:, None]
    assert bool(((ours - ref).abs() <= tol).all())
    assert bool(((theory - ref).abs() <= tol).all())
    # the old clamp would have shrunk c by |s|^2/1e-12 ~ 1e-2: its output lies far outside the tolerance
    old = (s.double() * (1 + lam * c * (s.double() ** 2).sum(-1) / 1e-12)[:, None]) if dtype != torch.float16 else None
    if old is not None:
        assert float((old - ref).abs().max()) > 100 * float(tol.max())


def test_zero_vectors_give_finite_values_and_gradients():
    for dt in (torch.float16, torch.bfloat16, torch.float32, torch.float64):
        d = torch.zeros(3, 4, dtype=dt, requires_grad=True)
        s = torch.zeros(3, 4, dtype=dt, requires_grad=True)
        for method in ("pladis", "gag"):
            for zeta in (0.0, 0.5):
                r = combine(method, d, s, lam=10.0, eta=15.0, zeta=zeta)
                assert r.output.dtype == (torch.float32 if dt in (torch.float16, torch.bfloat16) else dt)
                assert torch.equal(r.output, torch.zeros_like(r.output))
                assert torch.equal(r.parallel_coef, torch.zeros_like(r.parallel_coef))
                assert not bool(r.cap_active.any())
                gd, gs = torch.autograd.grad(r.output.sum(), (d, s))
                assert bool(torch.isfinite(gd).all() and torch.isfinite(gs).all())


def test_g_zero_means_output_is_s():
    """|g| -> 0 needs no threshold: d = s gives g = 0 up to rounding, factor 1, o = s, in every dtype."""
    for dt in (torch.float16, torch.bfloat16, torch.float32, torch.float64):
        _, s = _pair(6, 5, 3, dtype=dt)
        for zeta in (0.0, 0.3):
            r = combine("gag", s, s, lam=10.0, eta=1e-6, zeta=zeta)
            sc = s.to(r.output.dtype)
            # c = (|s|^2 - <s, s>)/|s|^2 from two differently rounded sums: |c| <= 2 (dv + 1) u, so
            # |o - s| = lam |c| |s| <= lam * 8 u |s| (dv = 3)
            u = UNIT_ROUNDOFF[r.output.dtype]
            assert bool(((r.output - sc).norm(dim=-1) <= 10.0 * 8 * u * sc.norm(dim=-1)).all())
            assert not bool(r.cap_active.any())  # |g| ~ u |s| < eta: the cap never divides by a tiny norm
            assert torch.equal(r.cap_factor, torch.ones_like(r.cap_factor))


def test_subnormal_sparse_counts_as_zero():
    s = torch.full((1, 4), 1e-20)  # |s|^2 = 4e-40 < fp32 tiny (1.2e-38)
    d = torch.full((1, 4), -1.0)
    r = combine("gag", d, s, lam=10.0, eta=15.0, zeta=0.5)
    assert float(r.parallel_coef) == 0.0
    # c = 0: g = zeta * Delta, o = s + lam * cap(g)
    g = 0.5 * (s - d)
    torch.testing.assert_close(r.output, s + 10.0 * g * min(1.0, 15.0 / float(g.norm())), rtol=1e-6, atol=0)


# ---------------------------------------------------------------------------------------- parallel="positive"


def _negative_c_pair(n, dv, lam, seed):
    """Pairs with c = <s - d, s>/|s|^2 < -1/lam: d = (1 + a) s + w, w ⟂ s, a > 1/lam."""
    g = torch.Generator().manual_seed(seed)
    s = torch.randn(n, dv, generator=g, dtype=F64)
    w = torch.randn(n, dv, generator=g, dtype=F64)
    w = w - ((w * s).sum(-1, keepdim=True) / (s * s).sum(-1, keepdim=True)) * s
    a = 1.0 / lam + torch.rand(n, 1, generator=g, dtype=F64) * 2.0 + 1e-3
    return (1 + a) * s + w, s


@given(seed=st.integers(0, 2**31 - 1), dv=st.integers(1, 6), lam=st.floats(0.1, 12.0), eta=st.floats(0.05, 20.0))
def test_positive_rule_never_flips_the_output_sign(seed, dv, lam, eta):
    """zeta = 0, parallel="positive": o = (1 + lam f c+) s with f in (0, 1], so <o, s> >= |s|^2 always."""
    d, s = _pair(seed, 16, dv)
    o = combine("gag", d, s, lam=lam, eta=eta, zeta=0.0, parallel="positive").output
    ss = (s * s).sum(-1)
    assert bool(((o * s).sum(-1) >= ss * (1 - 1e-12)).all())


@given(seed=st.integers(0, 2**31 - 1), dv=st.integers(1, 6), lam=st.floats(0.1, 12.0))
def test_paper_rule_flips_the_output_where_c_below_minus_one_over_lam(seed, dv, lam):
    """The failing regime of the claim above for the paper's rule: uncapped, c < -1/lam gives <o, s> < 0."""
    d, s = _negative_c_pair(8, dv, lam, seed)
    r = combine("gag", d, s, lam=lam, eta=None, zeta=0.0)
    assert bool((r.parallel_coef < -1.0 / lam).all())
    assert bool(((r.output * s).sum(-1) < 0).all())
    pos = combine("gag", d, s, lam=lam, eta=None, zeta=0.0, parallel="positive")
    assert torch.equal(pos.output, s)  # c < 0: the parallel part is dropped, zeta = 0: o = s


def test_positive_equals_paper_where_c_nonnegative():
    d, s = _pair(7, 64, 5)
    zeta = 0.4
    paper = combine("gag", d, s, lam=3.0, eta=2.0, zeta=zeta)
    pos = combine("gag", d, s, lam=3.0, eta=2.0, zeta=zeta, parallel="positive")
    c = paper.parallel_coef
    assert bool((c >= 0).any()) and bool((c < 0).any())  # both regimes present
    assert torch.equal(pos.output[c >= 0], paper.output[c >= 0])
    g = gag_difference(d, s, c, zeta, "positive")
    perp = (s - d) - c[:, None] * s
    torch.testing.assert_close(g[c < 0], zeta * perp[c < 0], rtol=0, atol=1e-14)


def _qkv(seed, b, h, lq, lk, dd, dv):
    g = torch.Generator().manual_seed(seed)
    return (torch.randn(b, h, lq, dd, generator=g, dtype=F64) * 2, torch.randn(b, h, lk, dd, generator=g, dtype=F64) * 2,
            torch.randn(b, h, lk, dv, generator=g, dtype=F64))


@given(
    seed=st.integers(0, 2**31 - 1),
    shape=st.tuples(st.integers(1, 2), st.integers(1, 2), st.integers(1, 5), st.integers(2, 6), st.integers(1, 4),
                    st.integers(1, 4)),
    lam=st.floats(0.0, 12.0),
    eta=st.floats(0.05, 20.0),
    zeta=st.floats(0.0, 1.0),
    chunk=st.one_of(st.none(), st.integers(1, 3)),
)
@settings(max_examples=25)
def test_gag_attention_positive_matches_oracle(seed, shape, lam, eta, zeta, chunk):
    q, k, v = _qkv(seed, *shape)
    kw = dict(method="gag", lam=lam, eta=eta, zeta=zeta, parallel="positive")
    fast = H.gag_attention(q, k, v, chunk_size=chunk, **kw)
    ref = H.reference_gag_attention(q, k, v, **kw)
    # as test_attention's oracle test: float64, reassociated sums, rounding ~ eps (1 + lam)
    torch.testing.assert_close(fast, ref, rtol=1e-10, atol=1e-10 * (1 + lam))


def test_gag_attention_positive_exercises_negative_c_and_module():
    q, k, v = _qkv(11, 2, 2, 12, 9, 4, 3)
    out, parts = H.gag_attention(q, k, v, parallel="positive", return_parts=True)
    paper = H.gag_attention(q, k, v)
    neg = parts.parallel_coef < 0
    assert bool(neg.any()) and bool((~neg).any())
    assert not torch.equal(out, paper)
    torch.testing.assert_close(out, H.reference_gag_attention(q, k, v, parallel="positive"), rtol=1e-10, atol=1e-9)
    mod = H.GAGAttention(parallel="positive")
    # the module is the function (return_parts takes the torch path, the plain call the fused kernel)
    assert torch.equal(mod(q, k, v), H.gag_attention(q, k, v, parallel="positive"))
    assert "parallel='positive'" in mod.extra_repr()
    for bad in (lambda: H.gag_attention(q, k, v, parallel="one-sided"),
                lambda: H.GAGAttention(parallel="one-sided"),
                lambda: H.reference_gag_attention(q, k, v, parallel="one-sided")):
        with pytest.raises(ValueError, match=r"parallel must be one of \('paper', 'positive'\), got 'one-sided'"):
            bad()


# ------------------------------------------------------------------------------------------ one home: callers


def test_every_caller_goes_through_combine(monkeypatch):
    """gag_attention, extrapolation_as_aa, gag_output/gag_update/gag_map and the symbolic library check
    all call ops.combine.combine (patched to count calls)."""
    import hopfield_gag.ops.combine as C
    from hopfield_gag.guidance import aa1, attention
    from hopfield_gag.theory import contraction

    calls = []
    real = C.combine

    def spy(*a, **kw):
        calls.append(a[0])
        return real(*a, **kw)

    for mod in (C, attention, aa1, contraction):
        monkeypatch.setattr(mod, "combine", spy)
    q, k, v = _qkv(0, 1, 1, 3, 4, 2, 2)
    d, s = _pair(0, 3, 2)
    users = [
        # the portable torch path (autograd, return_parts, compile, non-CPU devices); the eager CPU path of
        # the paper's rules runs the C twin of combine (ops.fused.combine_rows, tested against _combine)
        lambda: H.gag_attention(q, k, v, method="pladis", return_parts=True),
        # autograd takes the combine path, with either parallel rule
        lambda: H.gag_attention(q.detach().requires_grad_(), k, v, method="gag", parallel="positive"),
        lambda: H.gag_attention(q, k, v, method="aa"),
        lambda: H.extrapolation_as_aa(d, s, "gag"),
        lambda: H.extrapolation_as_aa(d, s, "pladis"),
        lambda: H.gag_output(d, s, 1.0, 1.0),
        lambda: H.gag_update(q, k, v),
        lambda: H.gag_map(q[0, 0], k[0, 0], beta=1.0),
    ]
    for use in users:
        calls.clear()
        use()
        assert calls, use
    pytest.importorskip("sympy")
    from hopfield_gag.theory import symbolic

    calls.clear()
    assert symbolic.gag_zeta0_is_radial().numeric_max_error < 1e-12
    assert calls == ["gag"] * len(calls) and len(calls) == 2


def test_extrapolation_as_aa_eps_is_deprecated():
    d, s = _pair(0, 3, 2)
    with pytest.warns(DeprecationWarning, match="eps"):
        r = H.extrapolation_as_aa(d, s, "gag", eps=1e-12)
    assert torch.equal(r.output, H.extrapolation_as_aa(d, s, "gag").output)


@given(seed=st.integers(0, 2**31 - 1), dv=st.integers(1, 5), lam=st.floats(0.0, 10.0), eta=st.floats(0.05, 20.0),
       zeta=st.floats(0.0, 1.0))
def test_positive_rule_as_aa1_step(seed, dv, lam, eta, zeta):
    """extrapolation_as_aa(parallel="positive"): output = s - gamma D = s - Gamma (s - d) = the combine rule."""
    d, s = _pair(seed, 12, dv)
    r = H.extrapolation_as_aa(d, s, "gag", lam=lam, eta=eta, zeta=zeta, parallel="positive")
    ref = _formula(d, s, lam, eta, zeta, "positive")
    atol = 1e-12 * (1 + lam)
    torch.testing.assert_close(r.output, ref, rtol=1e-12, atol=atol)
    torch.testing.assert_close(s - r.gamma[:, None] * r.difference, ref, rtol=1e-12, atol=atol)
    gam = r.mixing_operator()
    torch.testing.assert_close(s - (gam @ (s - d).unsqueeze(-1)).squeeze(-1), ref, rtol=1e-10, atol=1e-10 * (1 + lam))


@given(seed=st.integers(0, 2**31 - 1), method=st.sampled_from(["dense", "sparse", "pladis", "gag"]),
       lam=st.floats(0.0, 12.0), eta=st.one_of(st.none(), st.floats(0.05, 20.0)), zeta=st.floats(0.0, 1.0),
       parallel=st.sampled_from(["paper", "positive"]))
def test_combine_takes_a_gag_params_with_the_same_result(seed, method, lam, eta, zeta, parallel):
    d, s = _pair(seed, 6, 5)
    p = H.GagParams(method=method, lam=lam, eta=eta, zeta=zeta, parallel=parallel)
    a = combine(p, d, s)
    b = combine(method, d, s, lam=lam, eta=eta, zeta=zeta, parallel=parallel)
    for x, y in zip((a.output, a.parallel_coef, a.cap_active, a.token_scale, a.cap_factor),
                    (b.output, b.parallel_coef, b.cap_active, b.token_scale, b.cap_factor)):
        assert torch.equal(x, y)
