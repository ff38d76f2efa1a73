"""The one-call fused CPU forward (hopfield_gag.ops.fused.attention_forward, fp32 compute) against float64.

Tolerance (fp32, u = 2^-24): each score carries a rounding error of at most ~D u |beta q||k| (a length-D
dot product), each retrieval ~Lk u max|v| (a length-Lk sum, or the support's), and the guidance rules
amplify the sparse-dense difference by at most (1 + lam). The allowance 8 u (1 + lam) (D + Lk) max(1, max|v|)
is that first-order bound with a factor of 8; a wrong support, a dropped key or a mis-indexed row moves the
output by O(max|v|), thousands of times more.
"""
from __future__ import annotations

import dataclasses

import pytest
import torch
from hypothesis import example, given, settings
from hypothesis import strategies as st

from hopfield_gag import GagParams, gag_attention, reference_gag_attention
from hopfield_gag.guidance import attention as attention_mod
from hopfield_gag.ops import _kernel, fused

needs_kernel = pytest.mark.skipif(_kernel.load() is None, reason="no C compiler here: the fused kernel does not exist")

U32 = 2.0**-24


def allowance(lam, d, lk, v):
    return 8 * U32 * (1 + lam) * (d + lk) * max(1.0, float(v.abs().max()))


def aa_degenerate_band(q, k, mask, kw):
    """aa: the tokens whose AA(1) step may count as degenerate in fp32 (bool, (b, h, lq)). The rule is relative to
    the compute dtype (ops/combine.aa1_gamma: |f_k - f_(k-1)|^2 <= (64 eps)^2 (|f_(k-1)|^2 + |f_k|^2), then
    gamma := 0): the fp32 kernel applies it with fp32's eps, the float64 oracle with float64's, so between the two
    thresholds they take different branches by definition. Band: the fp32 threshold, from float64 key-space
    retrievals (the oracle with v = k), widened by the fp32 rounding of the difference (twice the retrieval
    allowance, over the d entries)."""
    dense = GagParams(**kw).replace(method="dense", strength=1.0)
    sparse = dense.replace(method="sparse")
    xi = q.double()
    pdk = reference_gag_attention(q.double(), k.double(), k.double(), mask=mask, params=dense)
    psk = reference_gag_attention(q.double(), k.double(), k.double(), mask=mask, params=sparse)
    f_prev, f_curr = pdk - xi, psk - xi
    diff = (f_curr - f_prev).norm(dim=-1)
    scale = (f_prev.square().sum(-1) + f_curr.square().sum(-1)).sqrt()
    rounding = 2 * allowance(0.0, q.shape[-1], k.shape[-2], k) * q.shape[-1] ** 0.5
    return diff <= 64 * 2.0**-23 * scale + rounding


def make(seed, b, h, lq, lk, d, dv, qscale=1.0):
    g = torch.Generator().manual_seed(seed)
    q = torch.randn(b, h, lq, d, generator=g) * qscale
    k = torch.randn(b, h, lk, d, generator=g) * qscale
    v = torch.randn(b, h, lk, dv, generator=g)
    return q, k, v


def make_mask(kind, seed, b, h, lq, lk):
    """Masks of every broadcast shape the adapters produce; column 0 always attends (no empty row)."""
    g = torch.Generator().manual_seed(seed)
    if kind is None:
        return None
    if kind == "bool_b1qk":
        m = torch.rand(b, 1, lq, lk, generator=g) > 0.4
    elif kind == "bool_b11k":
        m = torch.rand(b, 1, 1, lk, generator=g) > 0.4
    elif kind == "add_qk":
        m = torch.where(torch.rand(lq, lk, generator=g) > 0.3, torch.randn(lq, lk, generator=g), float("-inf"))
    else:  # "add_1h1k": one additive row per head, broadcast over batch and queries
        m = torch.randn(1, h, 1, lk, generator=g)
    m[..., 0] = True if m.dtype == torch.bool else 0.0
    return m


@needs_kernel
@given(
    seed=st.integers(0, 2**31 - 1),
    shape=st.tuples(st.integers(1, 2), st.integers(1, 3), st.integers(1, 70), st.integers(1, 40),
                    st.integers(1, 20), st.integers(1, 40)),
    method=st.sampled_from(["sparse", "pladis", "gag", "aa"]),
    lam=st.floats(0.0, 12.0),
    eta=st.floats(0.05, 20.0),
    zeta=st.floats(0.0, 1.0),
    strength=st.floats(0.05, 2.0),
    alpha=st.sampled_from([1.5, 2.0, 1.25]),
    mask_kind=st.sampled_from([None, "bool_b1qk", "bool_b11k", "add_qk", "add_1h1k"]),
    qscale=st.floats(0.1, 4.0),
    parallel=st.sampled_from(["paper", "positive"]),
)
@settings(max_examples=40)
@example(seed=0, shape=(1, 1, 3, 3, 1, 1), method="aa", lam=0.0, eta=1.0, zeta=0.0, strength=1.0, alpha=1.5,
         mask_kind=None, qscale=4.0, parallel="paper")  # |f_k - f_(k-1)| = 2.2e-5 |f|: degenerate in fp32 only
@example(seed=7197, shape=(1, 3, 52, 19, 3, 7), method="aa", lam=0.0, eta=1.0, zeta=0.0, strength=2.0, alpha=1.5,
         mask_kind="bool_b1qk", qscale=1.9375, parallel="paper")
@example(seed=1, shape=(1, 1, 1, 1, 1, 1), method="gag", lam=10.0, eta=15.0, zeta=0.0, strength=1.0, alpha=1.5,
         mask_kind=None, qscale=1.0, parallel="paper")  # Lq = Lk = 1: s = d
@example(seed=2, shape=(2, 3, 49, 17, 16, 17), method="gag", lam=10.0, eta=15.0, zeta=0.5, strength=1.0,
         alpha=1.5, mask_kind="bool_b11k", qscale=2.0, parallel="positive")  # a second row block, a partial
# micro-tile, Dv padding
def test_one_call_kernel_matches_float64_oracle(seed, shape, method, lam, eta, zeta, strength, alpha, mask_kind,
                                                qscale, parallel):
    b, h, lq, lk, d, dv = shape
    q, k, v = make(seed, b, h, lq, lk, d, dv, qscale)
    mask = make_mask(mask_kind, seed + 1, b, h, lq, lk)
    aa_range = (0.0, 3.0) if seed % 2 else (-1.0, 12.0)  # the default clamp, and one that rarely binds
    kw = dict(method=method, lam=lam, eta=eta, zeta=zeta, strength=strength, alpha=alpha, parallel=parallel,
              aa_range=aa_range)
    out, flags = fused.attention_forward(q, k, v, mask, torch.Size([b, h]), d**-0.5, GagParams(**kw))
    assert flags == 0 and out.dtype == torch.float32
    want = reference_gag_attention(q.double(), k.double(), v.double(), mask=mask, **kw)
    # aa: lam* <= max|aa_range| plays the role of lam in the allowance; the output d + t (o_m - d) carries o_m's
    # rounding times t, so strength t > 1 scales it too (found: seed 7197, t = 2, aa_range (-1, 12))
    amp = (lam if method != "aa" else max(abs(aa_range[0]), abs(aa_range[1]))) * max(1.0, strength)
    tol = allowance(amp, d, lk, v)
    if method == "aa":  # in fp32's degeneracy band either branch is the method's answer (aa_degenerate_band)
        lam_degenerate = min(max(1.0, aa_range[0]), aa_range[1])  # gamma := 0: lam* = clamp(1, lo, hi)
        other = reference_gag_attention(q.double(), k.double(), v.double(), mask=mask,
                                        params=GagParams(**kw).replace(method="pladis", lam=lam_degenerate))
        either = aa_degenerate_band(q, k, mask, kw) & ((out.double() - other).abs() <= tol).all(-1)
        want = torch.where(either.unsqueeze(-1), other, want)
    torch.testing.assert_close(out.double(), want, rtol=0, atol=tol)
    with torch.no_grad():  # and gag_attention dispatches to it with the same result
        assert torch.equal(gag_attention(q, k, v, mask=mask, **kw), out)


@needs_kernel
@pytest.mark.parametrize("alpha", [1.0 + 2.0**-52, 1.0 + 1e-9, 1.0005])
def test_alpha_near_one_takes_the_torch_path_and_matches_float64(alpha):
    # the kernels search the threshold in coordinates that lose eps/(alpha - 1) near 1 (at 1 + 2^-52 the
    # sparse branch came out as softmax(z / 0.75)-like rows): such calls go to the torch path, whose offset
    # search is exact there
    q, k, v = make(3, 1, 2, 20, 9, 8, 8, qscale=2.0)
    call = attention_mod._Call(q, k, v, None, GagParams(alpha=alpha), (1, 2, 20, 9), 1.0, False)
    assert attention_mod._pick(call).name == "torch"
    with torch.no_grad():
        out = gag_attention(q, k, v, alpha=alpha)
    want = reference_gag_attention(q.double(), k.double(), v.double(), alpha=alpha)
    torch.testing.assert_close(out.double(), want, rtol=0, atol=allowance(10.0, 8, 9, v))
    with pytest.raises(ValueError, match="within 0.001 of 1"):  # and the kernel's own entry refuses it
        fused.attention_forward(q, k, v, None, torch.Size([1, 2]), 8**-0.5, GagParams(alpha=alpha))


@needs_kernel
@pytest.mark.parametrize("lk", [77, 300, 1024, 2100])  # row blocks of 48, 48, 12 and 6 queries
@pytest.mark.parametrize("dv", [64, 40])
def test_long_keys_and_padded_values_match_float64(lk, dv):
    q, k, v = make(lk + dv, 1, 2, 50, lk, 64, dv, qscale=1.5)
    for method, lam in (("gag", 10.0), ("pladis", 2.0), ("aa", 3.0)):
        out, flags = fused.attention_forward(q, k, v, None, torch.Size([1, 2]), 0.125,
                                             GagParams(method=method, lam=lam))
        assert flags == 0
        # the float64 chunked path (itself tested against the loop oracle in test_attention.py)
        want = gag_attention(q.double(), k.double(), v.double(), method=method, lam=lam)
        torch.testing.assert_close(out.double(), want, rtol=0, atol=allowance(lam, 64, lk, v))


@needs_kernel
def test_broadcast_batch_dims_and_half_inputs():
    q, k, v = make(3, 2, 4, 33, 21, 8, 8)
    k1, v1 = k[:1, :1], v[:1, :1]  # one key/value set shared by every batch and head
    want = reference_gag_attention(q.double(), k1.double(), v1.double())
    with torch.no_grad():
        out = gag_attention(q, k1, v1)
    torch.testing.assert_close(out.double(), want, rtol=0, atol=allowance(10.0, 8, 21, v1))
    for dtype, tol in ((torch.float16, 2.0**-11), (torch.bfloat16, 2.0**-8)):
        qh, kh, vh = q.to(dtype), k1.to(dtype), v1.to(dtype)
        with torch.no_grad():
            out = gag_attention(qh, kh, vh)
        assert out.dtype == dtype
        want = reference_gag_attention(qh.double(), kh.double(), vh.double())
        # computed in fp32, rounded once to the dtype: one unit roundoff of |o| on top of the fp32 allowance
        torch.testing.assert_close(out.double(), want, rtol=tol, atol=tol + allowance(10.0, 8, 21, v1))


@needs_kernel
def test_rows_without_a_distribution_are_nan_and_flagged_alone():
    q, k, v = make(4, 1, 2, 20, 9, 8, 8)
    mask = torch.ones(20, 9, dtype=torch.bool)
    mask[7] = False  # query 7 attends to nothing
    q[0, 1, 3, 2] = float("nan")
    out, flags = fused.attention_forward(q, k, v, mask, torch.Size([1, 2]), 8**-0.5, GagParams())
    assert flags & 1 and flags & 2
    bad = torch.zeros(1, 2, 20, dtype=torch.bool)
    bad[..., 7] = True
    bad[0, 1, 3] = True
    assert torch.isnan(out[bad]).all() and torch.isfinite(out[~bad]).all()
    q2 = q.clone()
    q2[0, 1, 3, 2] = 0.0
    good = reference_gag_attention(q2.double(), k.double(), v.double(), mask=mask.clone().fill_(True))
    torch.testing.assert_close(out[~bad].double(), good[~bad], rtol=0, atol=allowance(10.0, 8, 9, v))
    with pytest.raises(ValueError, match="fully masked"):
        gag_attention(q2, k, v, mask=mask)
    with pytest.raises(ValueError, match="q must be finite"):
        gag_attention(q, k, v)


@needs_kernel
def test_iteration_limit_sends_the_call_to_the_exact_path(monkeypatch):
    q, k, v = make(5, 1, 2, 30, 300, 16, 16, qscale=3.0)
    calls = []
    chunked = attention_mod._BY_NAME["chunked C"]
    monkeypatch.setitem(attention_mod._BY_NAME, "chunked C",
                        dataclasses.replace(chunked, run=lambda *a: calls.append(1) or chunked.run(*a)))
    with torch.no_grad():
        want = gag_attention(q, k, v)
        assert calls == []
        with _kernel.iteration_limit(1):
            _, flags = fused.attention_forward(q, k, v, None, torch.Size([1, 2]), 0.25, GagParams())
            assert flags & 4  # the limit was hit inside the one-call kernel ...
            out = gag_attention(q, k, v)
    assert calls == [1]  # ... so the call went to the chunked path, whose op falls back to an exact method
    torch.testing.assert_close(out, want, rtol=0, atol=allowance(10.0, 16, 300, v))


@needs_kernel
@pytest.mark.parametrize("method", ["gag", "aa"])
def test_a_row_does_not_depend_on_its_block_or_tile(method):
    # Blocks hold 48 queries here (Lk = 77) and the products run in tiles of 12 rows, a head's last 6 rows in the
    # 6-row tile: a query computed in a 6-row tail must equal the same query inside a full tile, bit for bit.
    q, k, v = make(11, 1, 2, 60, 77, 40, 24)
    full = fused.attention_forward(q, k, v, None, torch.Size([1, 2]), 0.15, GagParams(method=method))[0]
    for n in (6, 18, 54):  # 6 = one 6-row tail; 18 = 12 + 6; 54 = a block of 48 + 6
        part = fused.attention_forward(q[..., :n, :], k, v, None, torch.Size([1, 2]), 0.15, GagParams(method=method))[0]
        assert torch.equal(part, full[..., :n, :]), n


@needs_kernel
def test_result_does_not_depend_on_the_thread_count():
    q, k, v = make(6, 2, 4, 200, 77, 64, 64)
    threads = torch.get_num_threads()
    try:
        torch.set_num_threads(1)
        one = fused.attention_forward(q, k, v, None, torch.Size([2, 4]), 0.125, GagParams())[0]
        torch.set_num_threads(2)
        two = fused.attention_forward(q, k, v, None, torch.Size([2, 4]), 0.125, GagParams())[0]
    finally:
        torch.set_num_threads(threads)
    assert torch.equal(one, two)  # each row is computed by one thread, the same way, whichever thread it is


@needs_kernel
@pytest.mark.parametrize("where", ["k", "v"])
@pytest.mark.parametrize("bad", [float("nan"), float("inf"), float("-inf")])
@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
def test_nonfinite_keys_and_values_are_flagged_by_the_packing_pass(where, bad, dtype):
    # fp32 keys are transposed into the panels in place, half ones converted first: both paths check
    q, k, v = (x.to(dtype) for x in make(7, 2, 2, 10, 19, 8, 12))  # Dv = 12: v is padded, and still checked
    t = {"k": k, "v": v}[where]
    t[1, 0, 18, 3] = bad
    _, flags = fused.attention_forward(q, k, v, None, torch.Size([2, 2]), 8**-0.5, GagParams())
    assert flags & fused.FLAG_KV_NONFINITE
    with pytest.raises(ValueError, match=f"{where} must be finite"):
        gag_attention(q, k, v)
    t[1, 0, 18, 3] = 0.0
    assert fused.attention_forward(q, k, v, None, torch.Size([2, 2]), 8**-0.5, GagParams())[1] == 0


def test_ci_builds_the_kernel():
    # in CI a C compiler is installed: a kernel that fails to build must fail the run, not skip these tests
    import os

    if not os.environ.get("CI"):
        pytest.skip("not CI: a machine without a compiler legitimately runs the torch paths")
    assert _kernel.load() is not None


@needs_kernel
def test_strided_inputs_give_the_contiguous_result():
    # diffusers hands over (B, L, H, D).transpose(1, 2): non-contiguous q, k, v
    q, k, v = make(8, 2, 4, 30, 13, 16, 16)
    qt, kt, vt = (x.transpose(1, 2).contiguous().transpose(1, 2) for x in (q, k, v))
    assert not qt.is_contiguous()
    with torch.no_grad():
        assert torch.equal(gag_attention(qt, kt, vt), gag_attention(q, k, v))
        mask = torch.rand(2, 1, 13) > 0.3  # (B, 1, Lk) broadcast over heads and queries, made non-contiguous
        mask[..., 0] = True
        m4 = mask[:, :, None, :].expand(2, 4, 30, 13)
        assert torch.equal(gag_attention(qt, kt, vt, mask=m4), gag_attention(q, k, v, mask=m4.contiguous()))


@needs_kernel
@pytest.mark.parametrize("build", ["portable", "no-avx512"])
def test_portable_build_without_native_simd_agrees(tmp_path, monkeypatch, build):
    # the kernel has AVX-512 paths (row max, gathers, compaction, transposes, softmax, combine), AVX2 paths
    # and generic C twins; machines without AVX-512 (or without AVX2, or another architecture) build the
    # others: build them here (without -march=native; native minus AVX-512) and compare
    import ctypes

    from hopfield_gag.ops import normalizers

    flags = tuple(f for f in _kernel._FLAGS if f != "-march=native")
    if build == "no-avx512":
        flags += ("-march=native", "-mno-avx512f")
    target = tmp_path / f"entmax_kernel-{build}.so"
    _kernel._compile(target, flags)
    portable = _kernel._bind(ctypes.CDLL(str(target)))
    q, k, v = make(9, 2, 3, 61, 45, 24, 20, qscale=2.0)
    z = torch.randn(300, 77, generator=torch.Generator().manual_seed(9)) * 3
    z[5, :40] = float("-inf")
    args = (q, k, v, None, torch.Size([2, 3]), 24**-0.5)
    native = [fused.attention_forward(*args, GagParams(method=m)) for m in ("gag", "aa")]
    native_p = normalizers._kernel_entmax(z, 1.5)
    monkeypatch.setattr(_kernel, "_lib", portable)
    other = [fused.attention_forward(*args, GagParams(method=m)) for m in ("gag", "aa")]
    other_p = normalizers._kernel_entmax(z, 1.5)
    for (a, fa), (b, fb) in zip(native, other):
        assert fa == fb == 0
        # FMA against separate multiply-add, other summation orders: fp32 rounding, the module's allowance
        torch.testing.assert_close(a, b, rtol=0, atol=allowance(10.0, 24, 45, v))
    assert native_p[1] == other_p[1] == 0
    # entmax: only the double-precision summation order of the threshold statistics differs
    torch.testing.assert_close(native_p[0], other_p[0], rtol=4 * U32, atol=4 * U32)


@pytest.mark.parametrize("shape", [((1, 2, 0, 4), (1, 2, 5, 4), (1, 2, 5, 3)),  # no query
                                   ((1, 2, 3, 4), (1, 2, 5, 4), (1, 2, 5, 0)),  # no value column
                                   ((0, 2, 3, 4), (0, 2, 5, 4), (0, 2, 5, 3)),  # empty batch
                                   ((1, 2, 3, 0), (1, 2, 5, 0), (1, 2, 5, 2))])  # d = 0: all scores 0
def test_empty_and_degenerate_shapes(shape):
    q, k, v = (torch.randn(*s) for s in shape)
    with torch.no_grad():
        out = gag_attention(q, k, v, scale=0.5)
    assert out.shape == torch.nn.functional.scaled_dot_product_attention(q, k, v, scale=0.5).shape
    if out.numel():
        want = reference_gag_attention(q.double(), k.double(), v.double(), scale=0.5)
        torch.testing.assert_close(out.double(), want, rtol=0, atol=allowance(10.0, 0, 5, v))
    if shape[0][-1] == 0:  # the default scale 1/sqrt(d) does not exist
        with pytest.raises(ValueError, match="needs a feature dim d >= 1"):
            gag_attention(q, k, v)
