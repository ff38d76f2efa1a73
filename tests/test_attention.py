"""Oracle and invariant tests of hopfield_gag.attention.gag_attention."""
from __future__ import annotations

import contextlib
import math

import pytest
import torch
import torch.nn.functional as F
from hypothesis import example, given, settings
from hypothesis import strategies as st

from hopfield_gag import theory
from hopfield_gag import GAGAttention, gag_attention, reference_gag_attention
from hopfield_gag import GagParams
from hopfield_gag.guidance.attention import _combine
from hopfield_gag.ops import fused

METHODS = ["dense", "sparse", "pladis", "gag", "aa"]


def make_qkv(seed, b, h, lq, lk, d, dv, dtype=torch.float64, scale=1.0):
    g = torch.Generator().manual_seed(seed)
    q = torch.randn(b, h, lq, d, generator=g, dtype=torch.float64) * scale
    k = torch.randn(b, h, lk, d, generator=g, dtype=torch.float64) * scale
    v = torch.randn(b, h, lk, dv, generator=g, dtype=torch.float64)
    return q.to(dtype), k.to(dtype), v.to(dtype)


shapes = st.tuples(
    st.integers(1, 2),  # B
    st.integers(1, 2),  # H
    st.integers(1, 6),  # Lq
    st.integers(1, 7),  # Lk
    st.integers(1, 5),  # D
    st.integers(1, 4),  # Dv
)


@given(
    seed=st.integers(0, 2**31 - 1),
    shape=shapes,
    method=st.sampled_from(METHODS),
    lam=st.floats(0.0, 12.0),
    eta=st.floats(0.05, 20.0),
    zeta=st.floats(0.0, 1.0),
    strength=st.floats(0.0, 2.0),
    alpha=st.sampled_from([1.5, 2.0, 1.25]),
    chunk=st.one_of(st.none(), st.integers(1, 4)),
    masked=st.booleans(),
    qscale=st.floats(0.1, 4.0),
)
@settings(max_examples=60)
@example(seed=0, shape=(1, 1, 1, 1, 1, 1), method="gag", lam=10.0, eta=15.0, zeta=0.0, strength=1.0, alpha=1.5,
         chunk=None, masked=False, qscale=1.0)  # Lq = Lk = 1: s = d, Delta = 0
def test_fast_op_matches_loop_oracle(seed, shape, method, lam, eta, zeta, strength, alpha, chunk, masked, qscale):
    b, h, lq, lk, d, dv = shape
    q, k, v = make_qkv(seed, b, h, lq, lk, d, dv, scale=qscale)
    mask = None
    if masked:
        g = torch.Generator().manual_seed(seed + 1)
        mask = torch.rand(b, 1, lq, lk, generator=g) > 0.4
        mask[..., 0] = True  # no fully masked row
    kw = dict(mask=mask, method=method, lam=lam, eta=eta, zeta=zeta, strength=strength, alpha=alpha)
    fast = gag_attention(q, k, v, chunk_size=chunk, **kw)
    ref = reference_gag_attention(q, k, v, **kw)
    # float64 both ways; the fast op reassociates sums (matmul) and, for gag, scales s by 1 + lam*c
    # instead of adding lam*c*s: rounding ~ eps * (1 + lam) * (norms of order 1..10)
    torch.testing.assert_close(fast, ref, rtol=1e-10, atol=1e-10 * (1 + lam))


@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16, torch.float32, torch.float64])
@pytest.mark.parametrize("method", METHODS)
def test_strength_zero_is_bit_identical_to_sdpa(dtype, method):
    q, k, v = make_qkv(3, 2, 3, 9, 6, 8, 5, dtype=dtype)
    mask = torch.ones(9, 6, dtype=torch.bool)
    mask[:, 4:] = False
    for m in (None, mask, torch.where(mask, 0.0, -math.inf).to(dtype)):
        out = gag_attention(q, k, v, mask=m, method=method, strength=0.0)
        assert torch.equal(out, F.scaled_dot_product_attention(q, k, v, attn_mask=m))
        out_p, parts = gag_attention(q, k, v, mask=m, method=method, strength=0.0, return_parts=True)
        assert torch.equal(out_p, F.scaled_dot_product_attention(q, k, v, attn_mask=m))


def test_dense_method_is_sdpa_with_scale():
    q, k, v = make_qkv(4, 1, 2, 5, 7, 4, 3, dtype=torch.float32)
    assert torch.equal(gag_attention(q, k, v, method="dense", scale=0.3), F.scaled_dot_product_attention(q, k, v, scale=0.3))


@given(seed=st.integers(0, 2**31 - 1), lam=st.floats(0.0, 10.0))
def test_uncapped_zeta_one_is_pladis_with_lam_plus_one(seed, lam):
    q, k, v = make_qkv(seed, 1, 2, 5, 6, 4, 3)
    gag = gag_attention(q, k, v, method="gag", lam=lam, eta=1e12, zeta=1.0)
    pladis = gag_attention(q, k, v, method="pladis", lam=lam + 1.0)
    torch.testing.assert_close(gag, pladis, rtol=1e-12, atol=1e-12 * (1 + lam))


@given(seed=st.integers(0, 2**31 - 1), lam=st.floats(0.0, 10.0))
def test_uncapped_zeta_zero_is_radial_rescaling(seed, lam):
    q, k, v = make_qkv(seed, 1, 2, 5, 6, 4, 3)
    out, parts = gag_attention(q, k, v, method="gag", lam=lam, eta=1e12, zeta=0.0, return_parts=True)
    torch.testing.assert_close(out, (1 + lam * parts.parallel_coef).unsqueeze(-1) * parts.sparse)
    assert not bool(parts.cap_active.any())


@given(seed=st.integers(0, 2**31 - 1), lam=st.floats(0.0, 20.0), eta=st.floats(0.01, 5.0), zeta=st.floats(0, 1),
       qscale=st.floats(0.1, 5.0))
def test_deviation_from_sparse_is_capped(seed, lam, eta, zeta, qscale):
    q, k, v = make_qkv(seed, 2, 2, 6, 8, 4, 3, scale=qscale)
    v = v * 30  # large values so the cap binds
    out, parts = gag_attention(q, k, v, method="gag", lam=lam, eta=eta, zeta=zeta, return_parts=True)
    dev = torch.linalg.vector_norm(out - parts.sparse, dim=-1)
    assert bool((dev <= lam * eta * (1 + 1e-12) + 1e-12).all())


def test_lam_zero_gag_is_sparse_attention():
    q, k, v = make_qkv(5, 1, 2, 4, 9, 4, 4)
    out, parts = gag_attention(q, k, v, method="gag", lam=0.0, return_parts=True)
    assert torch.equal(out, gag_attention(q, k, v, method="sparse"))
    torch.testing.assert_close(out, parts.sparse)


@given(seed=st.integers(0, 2**31 - 1), method=st.sampled_from(METHODS), data=st.data())
def test_key_permutation_equivariance(seed, method, data):
    q, k, v = make_qkv(seed, 1, 2, 4, 6, 3, 2)
    perm = torch.tensor(data.draw(st.permutations(range(6))))
    a = gag_attention(q, k, v, method=method, lam=3.0, eta=2.0)
    b = gag_attention(q, k[..., perm, :], v[..., perm, :], method=method, lam=3.0, eta=2.0)
    torch.testing.assert_close(a, b, rtol=1e-12, atol=1e-12)


@given(seed=st.integers(0, 2**31 - 1), method=st.sampled_from(METHODS), chunk=st.integers(1, 9))
def test_chunking_invariance(seed, method, chunk):
    q, k, v = make_qkv(seed, 2, 2, 9, 5, 4, 3)
    mask = torch.rand(9, 5, generator=torch.Generator().manual_seed(seed)) > 0.3
    mask[:, 2] = True
    full = gag_attention(q, k, v, mask=mask, method=method)
    chunked = gag_attention(q, k, v, mask=mask, method=method, chunk_size=chunk)
    # each query row is computed by the same ops whatever the chunk: equal up to matmul blocking
    torch.testing.assert_close(chunked, full, rtol=1e-13, atol=1e-13)


def test_auto_chunk_respects_memory_budget():
    q, k, v = make_qkv(6, 1, 2, 40, 30, 4, 4)
    small = gag_attention(q, k, v, memory_budget=2 * 30 * 8 * 5 * 3)  # room for 3 query rows per chunk
    torch.testing.assert_close(small, gag_attention(q, k, v), rtol=1e-13, atol=1e-13)


@given(seed=st.integers(0, 2**31 - 1), alpha=st.sampled_from([1.5, 2.0]))
def test_parts_agree_with_theory(seed, alpha):
    q, k, v = make_qkv(seed, 2, 2, 5, 7, 4, 3)
    _, parts = gag_attention(q, k, v, alpha=alpha, return_parts=True)
    ref = theory.sparse_dense_discrepancy(q, k, v, alpha=alpha)
    torch.testing.assert_close(parts.dense, ref.dense)
    torch.testing.assert_close(parts.sparse, ref.sparse)
    torch.testing.assert_close(parts.delta, ref.delta)
    torch.testing.assert_close(parts.parallel_coef, ref.parallel_coef)
    # the margins evaluated from the parts equal the theory predicate
    torch.testing.assert_close(
        F.cosine_similarity(parts.delta, parts.sparse, dim=-1), theory.parallel_margin(q, k, v, alpha=alpha),
        rtol=1e-9, atol=1e-12,
    )
    # and the GAG output equals the theory's reference formula
    torch.testing.assert_close(parts.output, theory.gag_output(parts.dense, parts.sparse, 10.0, 15.0, 0.0))


@pytest.mark.parametrize("dtype,tol", [(torch.float32, 1e-5), (torch.float16, 2e-2), (torch.bfloat16, 1.2e-1)])
@pytest.mark.parametrize("method", METHODS)
def test_low_precision_close_to_float64(dtype, tol, method):
    # inputs rounded to the dtype, computed in fp32, output rounded once: error ~ unit roundoff of the
    # dtype (2^-11 fp16, 2^-8 bf16) times the output magnitude (|o| up to ~ (1 + lam) |v| for gag)
    q, k, v = make_qkv(8, 2, 2, 16, 12, 8, 8, dtype=dtype)
    out = gag_attention(q, k, v, method=method, lam=2.0, eta=3.0)
    assert out.dtype == dtype and torch.isfinite(out).all()
    ref = gag_attention(q.double(), k.double(), v.double(), method=method, lam=2.0, eta=3.0)
    torch.testing.assert_close(out.double(), ref, rtol=tol, atol=tol * (1 + float(ref.abs().max())))


@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16, torch.float32])
def test_finite_output_for_extreme_finite_input(dtype):
    big = torch.finfo(dtype).max ** 0.5 / 4  # q.k stays finite in the input dtype's range
    q, k, v = make_qkv(9, 1, 1, 4, 5, 2, 2, dtype=dtype)
    q = q.sign() * big
    out = gag_attention(q, k, v)
    assert torch.isfinite(out).all()


@pytest.mark.parametrize("method", ["sparse", "pladis", "gag", "aa"])
@pytest.mark.parametrize("zeta", [0.0, 0.5])
def test_gradcheck(method, zeta):
    q, k, v = make_qkv(10, 1, 1, 3, 4, 2, 2, scale=0.7)
    q, k, v = (t.requires_grad_() for t in (q, k, v))
    fn = lambda a, b, c: gag_attention(a, b, c, method=method, lam=1.5, eta=0.8, zeta=zeta, strength=0.9)  # noqa: E731
    assert torch.autograd.gradcheck(fn, (q, k, v), eps=1e-6, atol=1e-6)


def test_broadcasting_over_batch_and_heads():
    q, _, _ = make_qkv(11, 2, 3, 4, 5, 4, 3)
    _, k, v = make_qkv(12, 1, 1, 4, 5, 4, 3)
    out = gag_attention(q, k, v)
    ref = gag_attention(q, k.expand(2, 3, 5, 4), v.expand(2, 3, 5, 3))
    torch.testing.assert_close(out, ref, rtol=0, atol=0)
    assert out.shape == (2, 3, 4, 3)


def test_torch_compile_agrees_with_eager():
    q, k, v = make_qkv(13, 1, 2, 16, 9, 8, 8, dtype=torch.float32)
    fn = torch.compile(lambda a, b, c: gag_attention(a, b, c, lam=4.0, eta=2.0), dynamic=False)
    torch.testing.assert_close(fn(q, k, v), gag_attention(q, k, v, lam=4.0, eta=2.0), rtol=1e-5, atol=1e-5)


def test_module_wrapper():
    q, k, v = make_qkv(14, 1, 1, 3, 4, 2, 2)
    m = GAGAttention(method="pladis", lam=2.0)
    assert torch.equal(m(q, k, v), gag_attention(q, k, v, method="pladis", lam=2.0))
    assert "pladis" in repr(m)


@pytest.mark.parametrize(
    "kwargs,match",
    [
        (dict(lam=-1.0), "lam must be >= 0"),
        (dict(eta=0.0), "eta must be > 0"),
        (dict(zeta=1.5), "zeta must be >= 0.0 and <= 1.0"),
        (dict(alpha=1.0), "alpha must be > 1"),
        (dict(strength=-0.1), "strength must be >= 0"),
        (dict(method="cfg"), "method must be one of"),
        (dict(chunk_size=0), r"chunk_size must be an int >= 1 or None"),
        (dict(scale=-1.0), "scale must be > 0"),
        (dict(mask=torch.ones(3, 3, dtype=torch.bool)), "mask of shape"),
        (dict(mask=torch.ones(4, 5, dtype=torch.int32)), "mask must have dtype bool"),
    ],
)
def test_bad_options_raise(kwargs, match):
    q, k, v = make_qkv(15, 1, 1, 4, 5, 2, 2)
    with pytest.raises(ValueError, match=match):
        gag_attention(q, k, v, **kwargs)


def test_bad_tensors_raise():
    q, k, v = make_qkv(16, 1, 1, 4, 5, 2, 2)
    with pytest.raises(ValueError, match="k must have shape \\(..., Lk, d\\)"):
        gag_attention(q, k[..., :1], v)
    with pytest.raises(ValueError, match="v must have shape \\(..., Lk, dv\\)"):
        gag_attention(q, k, v[..., :3, :])
    with pytest.raises(ValueError, match="k must have the dtype of q"):
        gag_attention(q.float(), k, v)
    with pytest.raises(ValueError, match="must broadcast"):
        gag_attention(q.expand(2, 1, 4, 2), k.expand(3, 1, 5, 2), v)
    bad = q.clone()
    bad[0, 0, 1, 1] = math.nan
    with pytest.raises(ValueError, match="q must be finite"):
        gag_attention(bad, k, v)
    badv = v.clone()
    badv[0, 0, 0, 0] = math.inf
    with pytest.raises(ValueError, match="v must be finite"):
        gag_attention(q, k, badv)
    mask = torch.ones(4, 5, dtype=torch.bool)
    mask[2] = False
    with pytest.raises(ValueError, match="fully masked"):
        gag_attention(q, k, v, mask=mask)


# ------------------------------------------------------------------------------------ fused CPU path


@contextlib.contextmanager
def fused_path(enabled: bool):
    """Run gag_attention with the fused CPU kernels on or off (off = the portable torch path)."""
    original = fused.available
    fused.available = original if enabled else (lambda device, dtype: False)
    try:
        yield
    finally:
        fused.available = original


@given(
    seed=st.integers(0, 2**31 - 1),
    shape=shapes,
    method=st.sampled_from(["sparse", "pladis", "gag", "aa"]),
    lam=st.floats(0.0, 12.0),
    eta=st.floats(0.05, 20.0),
    zeta=st.floats(0.0, 1.0),
    strength=st.floats(0.0, 2.0),
    alpha=st.sampled_from([1.5, 2.0, 1.25]),
    masked=st.booleans(),
    fused_on=st.booleans(),
)
@settings(max_examples=40)
def test_both_cpu_paths_match_loop_oracle(seed, shape, method, lam, eta, zeta, strength, alpha, masked, fused_on):
    b, h, lq, lk, d, dv = shape
    q, k, v = make_qkv(seed, b, h, lq, lk, d, dv)
    mask = None
    if masked:
        mask = torch.rand(b, 1, lq, lk, generator=torch.Generator().manual_seed(seed + 1)) > 0.4
        mask[..., 0] = True
    kw = dict(mask=mask, method=method, lam=lam, eta=eta, zeta=zeta, strength=strength, alpha=alpha)
    with fused_path(fused_on):
        out = gag_attention(q, k, v, **kw)
    # float64 both ways; reassociated sums (GEMM, the kernel's combination weights): ~ eps (1 + lam) |o|
    torch.testing.assert_close(out, reference_gag_attention(q, k, v, **kw), rtol=1e-10, atol=1e-10 * (1 + lam))


@pytest.mark.parametrize("dtype,tol", [(torch.float32, 2e-6), (torch.float16, 2e-3), (torch.bfloat16, 1.6e-2)])
@pytest.mark.parametrize("method", ["sparse", "pladis", "gag", "aa"])
def test_fused_matches_torch_path_in_low_precision(dtype, tol, method):
    # both compute in fp32 and round once to the dtype: they differ by at most ~1 rounding of the output
    # (the dtype's unit roundoff: 2^-11 fp16, 2^-8 bf16) plus fp32 reassociation (~1e-6 relative)
    q, k, v = make_qkv(21, 2, 3, 40, 33, 16, 8, dtype=dtype)
    for kw in (dict(), dict(zeta=0.4, eta=0.5, strength=0.6), dict(alpha=2.0, chunk_size=9)):
        with torch.no_grad():
            with fused_path(True):
                a = gag_attention(q, k, v, method=method, **kw)
            with fused_path(False):
                b = gag_attention(q, k, v, method=method, **kw)
        assert a.dtype == dtype
        torch.testing.assert_close(a.double(), b.double(), rtol=tol, atol=tol * float(b.abs().max().double()))


@pytest.mark.parametrize("method", ["sparse", "pladis", "gag"])
@pytest.mark.parametrize("zeta", [0.0, 0.3, 1.0])
@pytest.mark.parametrize("strength", [1.0, 0.35])
@pytest.mark.parametrize("parallel", ["paper", "positive"])
def test_kernel_combine_matches_combine(method, zeta, strength, parallel):
    if not fused.available(torch.device("cpu"), torch.float64):
        pytest.skip("no C compiler here: there is no kernel combine to compare")
    g = torch.Generator().manual_seed(22)
    d = torch.randn(3, 2, 7, 5, generator=g, dtype=torch.float64)
    s = torch.randn(3, 2, 7, 5, generator=g, dtype=torch.float64) * torch.rand(3, 2, 7, 1, generator=g, dtype=torch.float64) * 4
    s[0, 0, 0] = 0.0  # the zero convention: c = 0 where s = 0
    s[1, 1, 2] = d[1, 1, 2]  # Delta = 0
    params = GagParams(method=method, lam=3.0, eta=1.5, zeta=zeta, strength=strength, parallel=parallel)
    o = _combine(params.replace(strength=1.0), d, s)[0]
    want = o if strength == 1.0 else torch.lerp(d, o, strength)
    out = torch.full((3, 2, 9, 5), math.nan, dtype=torch.float64)
    fused.combine_rows(torch.stack([d, s], dim=-3), out[..., 1:8, :], params)
    torch.testing.assert_close(out[..., 1:8, :], want, rtol=1e-13, atol=1e-13)
    assert torch.isnan(out[..., 0, :]).all() and torch.isnan(out[..., 8, :]).all()  # rows outside untouched


@pytest.mark.parametrize("dtype,entry", [(torch.float32, "attention_forward"), (torch.float16, "attention_forward"),
                                         (torch.float64, "dual_normalize")])
def test_fused_path_is_used_without_grad_and_not_with_grad(monkeypatch, dtype, entry):
    # fp32 compute (fp32 and half inputs): the one-call kernel; fp64: the chunked kernels; grad: neither
    calls = []
    original = getattr(fused, entry)
    monkeypatch.setattr(fused, entry, lambda *a: calls.append(1) or original(*a))
    q, k, v = make_qkv(23, 1, 1, 4, 5, 3, 3, dtype=dtype)
    want = int(fused.available(q.device, torch.promote_types(dtype, torch.float32)))
    gag_attention(q, k, v)
    assert len(calls) == want
    gag_attention(q.requires_grad_(), k, v).sum().backward()  # the differentiable path
    assert len(calls) == want
    assert q.grad is not None and torch.isfinite(q.grad).all()
