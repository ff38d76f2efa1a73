"""The fused Triton forward (hopfield_gag.ops.triton_attention) against the float64 oracle.

No GPU here: the kernel runs in the Triton interpreter (TRITON_INTERPRET=1, numpy-backed, CPU tensors). The
variable is set only while these tests run (an autouse fixture restores it), and the kernel module is
built per mode, so the rest of the suite keeps the torch path. Interpreter runs are slow: the shapes are
small, but every branch of the kernel is reached (each method, alpha = 1.5 / 2 / general / > 2, bool and
additive masks, padding of ragged key lengths, half dtypes, parts, strength).

Tolerances (u = unit roundoff of the dtype, 2^-24 fp32, 2^-11 fp16, 2^-8 bf16). The kernel computes in
fp32 whatever the input dtype (half maps are split into two half parts before the value products, so the
products lose < u_half^2). Against the float64 oracle the fp32 error of d and s is a few u32·max|v| (the
threshold and the renormalized maps carry O(u32) relative error, summed over Lk keys with weights that sum
to 1); the combines amplify it by at most (1 + lam)·(1 + |c|) (pladis d + lam (s - d); gag s(1 + lam c)
with |c| <= ~1 on random data — the test built for c < 0 passes its own max|c| —, capped; aa with the
clamp hi = 3 in place of lam). Hence
    fp32:      |o - ref| <= 64 u32 (1 + lam)(1 + max|c|) max|v|        (64: Lk-independent slack for sums)
    fp16/bf16: the same plus the final cast of o: + 2 u_half max|ref|.
The torch production path meets the same bounds (checked alongside, so a failure says which path broke).
"""
from __future__ import annotations

import math
import os

import pytest
import torch
import torch.nn.functional as F
from hypothesis import example, given, settings
from hypothesis import strategies as st

pytest.importorskip("triton", reason="triton is not installed (pip install '.[gpu]'): the fused CUDA path is untestable")

import hopfield_gag.guidance.attention as attention_mod  # noqa: E402
from hopfield_gag import gag_attention, reference_gag_attention  # noqa: E402
from hopfield_gag.ops import triton_attention as ta  # noqa: E402

U = {torch.float32: 2.0**-24, torch.float16: 2.0**-11, torch.bfloat16: 2.0**-8}


@pytest.fixture(autouse=True)
def interpreter():
    with pytest.MonkeyPatch.context() as mp:
        mp.setenv("TRITON_INTERPRET", "1")
        yield


def _inputs(b, h, lq, lk, d, dv, dtype, seed=0, spread=1.0):
    g = torch.Generator().manual_seed(seed)
    q = (spread * torch.randn(b, h, lq, d, generator=g)).to(dtype)
    k = torch.randn(b, h, lk, d, generator=g).to(dtype)
    v = torch.randn(b, h, lk, dv, generator=g).to(dtype)
    return q, k, v


def _bound(ref, v, dtype, lam, method, cmax=1.0):
    amp = 1.0 if method in ("dense", "sparse") else (1.0 + (3.0 if method == "aa" else lam)) * (1.0 + cmax)
    bound = 64 * U[torch.float32] * amp * float(v.double().abs().max())
    if dtype != torch.float32:
        bound += 2 * U[dtype] * float(ref.abs().max())
    return bound


def _check(q, k, v, *, dtype=None, cmax=1.0, **kw):
    dtype = dtype or q.dtype
    ref = reference_gag_attention(q, k, v, **kw)
    out = ta.triton_gag_attention(q, k, v, **kw)
    assert out.dtype == q.dtype and out.shape == ref.shape
    assert torch.isfinite(out).all()
    err = float((out.double() - ref).abs().max())
    bound = _bound(ref, v, dtype, kw.get("lam", 10.0), kw.get("method", "gag"), cmax)
    assert err <= bound, f"triton error {err:.3g} > bound {bound:.3g} ({kw})"
    return out, ref


# every method x dtype, over ragged key lengths (padded to 16, 16, 128, 256 keys)
@pytest.mark.parametrize("dtype", [torch.float32, torch.float16, torch.bfloat16], ids=str)
@pytest.mark.parametrize("method,lk", [("gag", 77), ("pladis", 7), ("sparse", 130), ("aa", 77), ("dense", 1)])
def test_matches_oracle_every_method_and_dtype(method, lk, dtype):
    q, k, v = _inputs(1, 2, 9, lk, 16, 8, dtype, seed=lk, spread=2.0)
    lam = 2.0 if method == "pladis" else 10.0
    _check(q, k, v, method=method, lam=lam, strength=1.0 if method != "gag" else 0.7)


@pytest.mark.parametrize("alpha", [1.5, 2.0, 1.25, 1.7, 3.0])
def test_alpha_branches(alpha):
    # 1.5 and 2: closed-form finish; 1.25/1.7: bracketed Newton on ||w||_r; 3.0: bisection (h not convex)
    q, k, v = _inputs(1, 1, 20, 33, 16, 16, torch.float32, seed=3, spread=3.0)
    out, _ = _check(q, k, v, method="sparse", alpha=alpha)
    _check(q, k, v, method="gag", alpha=alpha, lam=4.0, eta=0.5)  # the cap binds somewhere at eta = 0.5


def test_gag_zeta_and_cap():
    q, k, v = _inputs(2, 1, 16, 40, 16, 16, torch.float32, seed=5, spread=2.0)
    # values along one direction u, the first key's short: queries drawn to that key get c < 0 (random data
    # has c > 0 everywhere), so parallel="positive" differs from "paper" on about half of the tokens
    u = torch.randn(16, generator=torch.Generator().manual_seed(6))
    v = 0.2 * v + u
    v[..., 0, :] *= 0.1
    q[..., ::2, :] = 0.5 * k[..., :1, :] + 0.3 * q[..., ::2, :]
    with pytest.MonkeyPatch.context() as mp:  # c from the torch path
        mp.setenv("TRITON_INTERPRET", "0")
        c = gag_attention(q, k, v, return_parts=True)[1].parallel_coef
    assert (c < 0).any() and (c > 0).any()
    for zeta, eta, parallel in ((0.3, 15.0, "paper"), (1.0, 0.2, "positive"), (0.0, 0.05, "positive")):
        _check(q, k, v, method="gag", zeta=zeta, eta=eta, lam=5.0, parallel=parallel, cmax=float(c.abs().max()))


def test_bool_and_additive_masks():
    q, k, v = _inputs(2, 2, 11, 50, 16, 16, torch.float32, seed=7, spread=2.0)
    g = torch.Generator().manual_seed(1)
    keep = torch.rand(11, 50, generator=g) > 0.4
    keep[:, 0] = True  # every row keeps a key
    _check(q, k, v, mask=keep, method="gag")  # broadcast (Lq, Lk)
    per_batch = torch.rand(2, 1, 1, 50, generator=g) > 0.5
    per_batch[..., 3] = True
    _check(q, k, v, mask=per_batch, method="aa")  # broadcast (B, 1, 1, Lk)
    additive = torch.randn(2, 2, 11, 50, generator=g)
    additive[additive > 0.8] = -math.inf
    additive[..., 5] = 0.0
    _check(q, k, v, mask=additive, method="pladis", lam=2.0)
    _check(q.half(), k.half(), v.half(), mask=additive.half(), method="gag", dtype=torch.float16)


def test_masked_padding_and_lk_one():
    # Lk = 1: both maps are [1], o = the method's combine of d = s = v
    q, k, v = _inputs(1, 2, 5, 1, 16, 16, torch.float32, seed=2)
    out, ref = _check(q, k, v, method="gag")
    torch.testing.assert_close(out, v.expand_as(out), rtol=1e-6, atol=1e-6)


def test_ties_and_one_hot_rows():
    # equal scores (every key the same): both maps uniform, s = d, c = 0; huge scores: both maps one-hot
    q, k, v = _inputs(1, 1, 6, 7, 16, 16, torch.float32, seed=12)
    out, ref = _check(q, k[..., :1, :].expand_as(k).contiguous(), v, method="gag")
    torch.testing.assert_close(out, v.mean(-2, keepdim=True).expand_as(out), rtol=1e-5, atol=1e-5)
    _check(q * 40.0, k, v, method="pladis", lam=2.0)


def test_broadcast_batch_dims_and_no_batch():
    q, _, _ = _inputs(2, 3, 6, 7, 16, 16, torch.float32, seed=9)
    _, k, v = _inputs(1, 3, 6, 7, 16, 16, torch.float32, seed=10)
    _check(q, k, v, method="gag")  # k, v broadcast over the batch
    _check(q[0, 0], k[0, 0], v[0, 0], method="pladis", lam=2.0)  # no batch dims
    _check(q[0], k[0], v[0], method="aa")  # one batch dim


def test_return_parts_match_the_torch_path():
    q, k, v = _inputs(1, 2, 10, 77, 16, 16, torch.float32, seed=11, spread=2.0)

    def torch_path(**kw):  # for the parts the oracle does not return
        with pytest.MonkeyPatch.context() as mp:
            mp.setenv("TRITON_INTERPRET", "0")
            return gag_attention(q, k, v, strength=0.5, return_parts=True, **kw)

    # an eta at the median of |g| = |c| |s| (zeta = 0), so the cap binds for half of the tokens
    _, free = torch_path(method="gag", eta=1e9)
    eta = float((free.parallel_coef.abs() * free.sparse.norm(dim=-1)).median())
    for method, kw in (("gag", dict(eta=eta, lam=5.0)), ("aa", {}), ("pladis", dict(lam=2.0))):
        out, parts = ta.triton_gag_attention(q, k, v, method=method, strength=0.5, return_parts=True, **kw)
        ref_out, ref_parts = torch_path(method=method, **kw)
        oracle = reference_gag_attention(q, k, v, method=method, strength=0.5, **kw)
        assert float((out.double() - oracle).abs().max()) <= _bound(oracle, v, torch.float32, 10.0, method)
        for name in ta.FusedParts._fields:
            mine, theirs = getattr(parts, name), getattr(ref_parts, name)
            assert mine.shape == theirs.shape, name
            if name == "cap_active":  # may differ only for a token at |g| = eta to rounding
                assert int((mine != theirs).sum()) <= 1
            else:
                torch.testing.assert_close(mine, theirs.float(), rtol=1e-4, atol=1e-5, msg=name)
        if method == "gag":
            assert parts.cap_active.any() and not parts.cap_active.all()  # both branches of the cap reached


def test_strength_zero_and_dense_are_sdpa_bit_for_bit():
    q, k, v = _inputs(1, 2, 8, 13, 16, 16, torch.float16, seed=4)
    mask = torch.rand(8, 13, generator=torch.Generator().manual_seed(0)) > 0.3
    mask[:, 0] = True
    sdpa = F.scaled_dot_product_attention(q, k, v, attn_mask=mask)
    assert torch.equal(ta.triton_gag_attention(q, k, v, mask=mask, strength=0.0), sdpa)
    assert torch.equal(ta.triton_gag_attention(q, k, v, mask=mask, method="dense"), sdpa)
    out, parts = ta.triton_gag_attention(q, k, v, mask=mask, strength=0.0, return_parts=True)
    assert torch.equal(out, sdpa)
    assert parts.output.shape == (1, 2, 8, 16)
    # and through the dispatch in gag_attention
    assert torch.equal(gag_attention(q, k, v, mask=mask, strength=0.0), sdpa)


def test_dispatch(monkeypatch):
    calls = []
    real = ta.launch

    def spy(*args, **kw):
        calls.append(1)
        return real(*args, **kw)

    monkeypatch.setattr(ta, "launch", spy)
    q, k, v = _inputs(1, 2, 6, 20, 16, 16, torch.float32, seed=8)
    oracle = reference_gag_attention(q, k, v)
    out = gag_attention(q, k, v)
    assert calls == [1]
    assert float((out.double() - oracle).abs().max()) <= _bound(oracle, v, torch.float32, 10.0, "gag")
    out, parts = gag_attention(q, k, v, return_parts=True)
    assert calls == [1, 1] and isinstance(parts, attention_mod.GAGParts)
    # requires_grad: the differentiable torch path, gradients flow
    qg = q.clone().requires_grad_(True)
    out = gag_attention(qg, k, v)
    assert calls == [1, 1]
    out.sum().backward()
    assert qg.grad is not None and torch.isfinite(qg.grad).all()
    # ... but under no_grad the fused path applies again
    with torch.no_grad():
        gag_attention(qg, k, v)
    assert calls == [1, 1, 1]
    # too many keys (self-attention), float64, or the interpreter off: the torch path
    _, kl, vl = _inputs(1, 2, 6, ta.MAX_KEYS + 1, 16, 16, torch.float32, seed=8)
    gag_attention(q, kl, vl)
    gag_attention(q.double(), k.double(), v.double())
    monkeypatch.setenv("TRITON_INTERPRET", "0")
    gag_attention(q, k, v)
    assert calls == [1, 1, 1]
    assert not ta.triton_applies(q, k, v)


@pytest.mark.filterwarnings("ignore:overflow encountered:RuntimeWarning", "ignore:invalid value encountered:RuntimeWarning")
def test_errors():
    q, k, v = _inputs(1, 1, 4, 9, 16, 16, torch.float32, seed=6)
    mask = torch.ones(4, 9, dtype=torch.bool)
    mask[2] = False
    with pytest.raises(ValueError, match="fully masked"):
        ta.triton_gag_attention(q, k, v, mask=mask)
    with pytest.raises(ValueError, match="NaN or \\+inf"):
        ta.triton_gag_attention(q, k, v, mask=torch.full((4, 9), math.nan))
    with pytest.raises(ValueError, match="NaN or \\+inf"):
        ta.triton_gag_attention(q * 1e30, k * 1e30, v)  # q.k overflows fp32
    with pytest.raises(ValueError, match="Lk <= 512"):
        ta.triton_gag_attention(q, torch.randn(1, 1, 600, 16), torch.randn(1, 1, 600, 16))
    with pytest.raises(ValueError, match="alpha"):
        ta.triton_gag_attention(q, k, v, alpha=1.0)
    with pytest.raises(ValueError, match="method"):
        ta.triton_gag_attention(q, k, v, method="nope")


_BAD = [
    dict(lam=-1.0), dict(eta=0.0), dict(zeta=2.0), dict(alpha=1.0), dict(strength=-0.5), dict(method="nope"),
    dict(scale=0.0), dict(aa_range=(1.0, 0.0)), dict(parallel="both"), dict(mask=torch.ones(3, 9, dtype=torch.bool)), dict(mask=[1]),
    dict(q=torch.full((1, 1, 4, 16), math.nan)), dict(k=torch.zeros(1, 1, 9, 8)), dict(v=torch.zeros(1, 1, 9, 16).half()),
]


@pytest.mark.parametrize("bad", _BAD, ids=lambda b: next(iter(b)))
def test_argument_errors_match_gag_attention(bad):
    """The fused entry checks its arguments with the bounds and messages of gag_attention."""
    q, k, v = _inputs(1, 1, 4, 9, 16, 16, torch.float32)
    args = dict(q=q, k=k, v=v)
    kw = dict(bad)
    for name in ("q", "k", "v"):
        if name in kw:
            args[name] = kw.pop(name)
    errors = []
    for fn in (gag_attention, ta.triton_gag_attention):
        with pytest.raises((ValueError, TypeError)) as info:
            fn(args["q"], args["k"], args["v"], **kw)
        errors.append((info.type, str(info.value)))
    assert errors[0] == errors[1]


def test_applies_only_where_it_should(monkeypatch):
    q, k, v = _inputs(1, 1, 4, 9, 16, 16, torch.float32)
    assert ta.triton_applies(q, k, v)
    assert not ta.triton_applies(q.double(), k.double(), v.double())
    assert not ta.triton_applies(q, torch.zeros(1, 1, 600, 16), torch.zeros(1, 1, 600, 16))
    assert not ta.triton_applies(q.clone().requires_grad_(True), k, v)
    monkeypatch.setenv("TRITON_INTERPRET", "0")
    assert not ta.triton_applies(q, k, v)  # CPU tensors need the interpreter


@settings(max_examples=4, deadline=None)
@given(
    lk=st.integers(1, 140),
    lq=st.integers(1, 20),
    method=st.sampled_from(["gag", "pladis", "sparse", "aa"]),
    alpha=st.sampled_from([1.5, 2.0, 1.4]),
    spread=st.floats(0.1, 6.0),
    seed=st.integers(0, 2**16),
)
@example(lk=130, lq=17, method="gag", alpha=1.5, spread=6.0, seed=0)  # near one-hot rows, two M blocks
@example(lk=2, lq=1, method="aa", alpha=2.0, spread=0.1, seed=1)  # near uniform, tiny
def test_property_matches_oracle(lk, lq, method, alpha, spread, seed):
    """For every finite input with Lk <= 512 the fused output equals the oracle to fp32 precision."""
    q, k, v = _inputs(1, 2, lq, lk, 16, 8, torch.float32, seed=seed, spread=spread)
    _check(q, k, v, method=method, alpha=alpha, lam=2.0 if method == "pladis" else 10.0)


@settings(max_examples=4, deadline=None)
@given(lk=st.integers(ta.MAX_KEYS + 1, 2 * ta.MAX_KEYS))
def test_property_refuses_long_keys(lk):
    """Where the claim does not hold (Lk > 512, no on-chip kernel) the entry refuses instead of guessing."""
    q, k, v = torch.zeros(1, 1, 2, 16), torch.zeros(1, 1, lk, 16), torch.zeros(1, 1, lk, 16)
    assert not ta.triton_applies(q, k, v)
    with pytest.raises(ValueError, match="Lk <= 512"):
        ta.triton_gag_attention(q, k, v)
