"""The device-ready op boundary: the entmax op (CPU kernel, sync-free default, autograd, fake), host
synchronizations of gag_attention, the kernel's iteration-limit flag, and torch.compile(fullgraph=True)."""
from __future__ import annotations

import contextlib
import math

import pytest
import torch
import torch.nn.functional as F
from hypothesis import given
from hypothesis import strategies as st
from torch.profiler import ProfilerActivity, profile

from hopfield_gag import gag_attention
from hopfield_gag.guidance.attention import METHODS
from hopfield_gag.ops import _kernel, fused
from hopfield_gag.ops import normalizers as N

_SYNC_OPS = ("aten::_local_scalar_dense", "aten::item", "aten::is_nonzero")


def host_syncs(fn) -> int:
    """Number of device-to-host reads (``.item()``, ``bool(tensor)``) in one call of ``fn``."""
    with profile(activities=[ProfilerActivity.CPU]) as prof:
        fn()
    return sum(1 for e in prof.events() if e.name == "aten::_local_scalar_dense")


def qkv(seed, b=1, h=2, lq=12, lk=7, d=4, dtype=torch.float32):
    g = torch.Generator().manual_seed(seed)
    return tuple(torch.randn(b, h, n, d, generator=g, dtype=dtype) for n in (lq, lk, lk))


@pytest.fixture
def torch_path(monkeypatch):
    """Force the path CUDA tensors take (the sync-free PyTorch entmax) on CPU."""
    monkeypatch.setattr(N, "_kernel_applies", lambda z: False)
    monkeypatch.setattr(fused, "available", lambda device, dtype: False)


# ---------------------------------------------------------------------------------------------- syncs


def test_sync_counter_counts_item():
    # the counter must be able to fail: a bool() of a tensor is one host read
    x = torch.ones(3)
    assert host_syncs(lambda: bool(x.sum() > 0)) == 1
    assert host_syncs(lambda: x.sum() + 1) == 0


@pytest.mark.parametrize("method", METHODS)
def test_gag_attention_one_sync_with_checks_none_without(torch_path, monkeypatch, method):
    q, k, v = qkv(0)
    mask = torch.rand(1, 1, 12, 7, generator=torch.Generator().manual_seed(1)) > 0.3
    mask[..., 0] = True
    for kwargs in (dict(), dict(mask=mask), dict(strength=0.5), dict(strength=0.0)):
        assert host_syncs(lambda: gag_attention(q, k, v, method=method, **kwargs)) == 1
        assert host_syncs(lambda: gag_attention(q, k, v, method=method, checks=False, **kwargs)) == 0
    monkeypatch.setenv("HOPFIELD_GAG_CHECKS", "0")
    assert host_syncs(lambda: gag_attention(q, k, v, method=method)) == 0
    # an explicit argument wins over the environment
    assert host_syncs(lambda: gag_attention(q, k, v, method=method, checks=True)) == 1


def test_entmax_op_is_sync_free(torch_path):
    z = torch.randn(5, 9)
    assert host_syncs(lambda: N.entmax_op(z, 1.5)) == 0
    assert host_syncs(lambda: N.entmax_op(z, 1.25)) == 0
    # the public function reads the status word once
    assert host_syncs(lambda: N.entmax(z, 1.5)) == 1


@pytest.mark.parametrize("use_kernel", [True, False])
def test_value_errors_still_name_the_argument(monkeypatch, use_kernel):
    if not use_kernel:
        monkeypatch.setattr(N, "_kernel_applies", lambda z: False)
        monkeypatch.setattr(fused, "available", lambda device, dtype: False)
    q, k, v = qkv(2)
    for name, idx in (("q", 0), ("k", 1), ("v", 2)):
        for bad_value in (math.nan, math.inf, -math.inf):
            bad = [q, k, v]
            bad[idx] = bad[idx].clone()
            bad[idx][0, 1, 2, 3] = bad_value
            for method in ("gag", "aa", "dense"):
                with pytest.raises(ValueError, match=f"{name} must be finite"):
                    gag_attention(*bad, method=method)
    mask = torch.ones(12, 7, dtype=torch.bool)
    mask[3] = False
    with pytest.raises(ValueError, match="fully masked"):
        gag_attention(q, k, v, mask=mask)
    add = torch.zeros(12, 7)
    add[1, 1] = math.nan
    with pytest.raises(ValueError, match="mask \\(additive\\) must not contain NaN"):
        gag_attention(q, k, v, mask=add)
    # finite inputs whose scores overflow are reported as such
    with pytest.raises(ValueError, match="the scores .* must not contain NaN or \\+inf"):
        gag_attention(q * 1e30, k * 1e30, v, checks=True)


def test_checks_off_gives_nan_not_error(torch_path):
    q, k, v = qkv(3)
    q[0, 0, 0, 0] = math.nan
    out = gag_attention(q, k, v, checks=False)
    assert torch.isnan(out[0, 0, 0]).all()
    assert torch.isfinite(out[0, 1]).all()  # the other head is untouched


# ---------------------------------------------------------------------------------------------- the op


@pytest.mark.parametrize("alpha", [1.5, 2.0, 1.25, 3.0])
def test_opcheck(alpha):
    # fake/meta implementation, autograd registration, schema: torch's own consistency checks
    z = torch.randn(3, 6, dtype=torch.float64, requires_grad=True)
    torch.library.opcheck(N.entmax_op, (z, alpha))


@pytest.mark.parametrize("kernel", [True, False])
@pytest.mark.parametrize("alpha", [1.5, 2.0, 1.3])
def test_gradcheck_through_the_op(monkeypatch, kernel, alpha):
    if not kernel:
        monkeypatch.setattr(N, "_kernel_applies", lambda z: False)
    # distinct, well separated scores: entmax is differentiable away from support changes
    z = (torch.randperm(8, generator=torch.Generator().manual_seed(4)).double() * 0.3).reshape(1, 8).requires_grad_()
    torch.autograd.gradcheck(lambda x: N.entmax_op(x, alpha)[0], (z,))


def test_meta_tensors():
    p, flags = N.entmax_op(torch.empty(4, 5, device="meta"), 1.5)
    assert p.shape == (4, 5) and p.device.type == "meta" and flags.shape == () and flags.dtype == torch.int64


def test_flags_and_nan_rows(torch_path):
    z = torch.randn(4, 6)
    z[1, 2] = math.nan
    z[2] = -math.inf
    p, flags = N.entmax_op(z, 1.5)
    assert int(flags) == N._FLAG_NONFINITE | N._FLAG_EMPTY
    assert torch.isnan(p[1]).all() and torch.isnan(p[2]).all()
    assert torch.isfinite(p[0]).all() and torch.isfinite(p[3]).all()
    if _kernel.load() is None:
        return  # no C compiler here: the torch path above is the whole op
    pk, fk = N._kernel_entmax(z, 1.5)
    assert fk == int(flags)
    assert torch.isnan(pk[1]).all() and torch.isnan(pk[2]).all()


# ------------------------------------------------------------------------- sync-free default implementation


@contextlib.contextmanager
def budget_shift(extra):
    """Run with ``extra`` more (or, negative, fewer; at least 0) bisection steps than the proven budget."""
    original = N.bisection_budget
    N.bisection_budget = lambda n, a, dt: max(0, original(n, a, dt) + extra)
    try:
        yield
    finally:
        N.bisection_budget = original


@given(
    seed=st.integers(0, 2**31 - 1),
    n=st.integers(1, 300),
    scale=st.floats(1e-3, 100.0),
    alpha=st.sampled_from([1.5, 2.0]),
    dtype=st.sampled_from([torch.float32, torch.float64]),
)
def test_budget_path_matches_sort_reference(seed, n, scale, alpha, dtype):
    g = torch.Generator().manual_seed(seed)
    x = (torch.randn(4, n, generator=g, dtype=torch.float64) * scale)
    ref = N.entmax(x, alpha, method="sort")
    p, flags = N._entmax_torch(x.to(dtype), alpha)
    assert int(flags) == 0
    # exact support, threshold to the rounding of the scores: eps * scale per entry, times 1/(alpha-1)
    eps = torch.finfo(dtype).eps
    tol = 64 * eps * max(scale, 1.0) * (1.0 / (alpha - 1.0))
    torch.testing.assert_close(p.double(), ref, rtol=0, atol=tol)


@given(seed=st.integers(0, 2**31 - 1), n=st.integers(2, 200), alpha=st.sampled_from([1.5, 2.0]))
def test_budget_is_enough(seed, n, alpha):
    # the bracket is already below the threshold's rounding: 20 more bisection steps change nothing
    x = torch.randn(5, n, generator=torch.Generator().manual_seed(seed))
    p = N._entmax_torch(x, alpha)[0]
    with budget_shift(20):
        p_more = N._entmax_torch(x, alpha)[0]
    torch.testing.assert_close(p_more, p, rtol=0, atol=4 * torch.finfo(torch.float32).eps)


def test_too_small_budget_fails():
    # the regime where the claim does not hold: with no bisection step the candidate set {x > -1} is far
    # larger than the support and the closed form on it is not the threshold
    x = torch.randn(6, 50, generator=torch.Generator().manual_seed(7), dtype=torch.float64)
    ref = N.entmax(x, 1.5, method="sort")
    with budget_shift(-1000):
        p = N._entmax_torch(x, 1.5)[0]
    assert (p - ref).abs().max() > 1e-3
    torch.testing.assert_close(N._entmax_torch(x, 1.5)[0], ref, rtol=0, atol=1e-13)


# ---------------------------------------------------------------------------------------------- iteration limit


def test_kernel_iteration_limit_falls_back_to_exact():
    if _kernel.load() is None:
        pytest.skip("no C compiler here: the kernel (and its limit) does not exist; the torch path is tested")
    x = torch.randn(64, 300, generator=torch.Generator().manual_seed(5), dtype=torch.float64) * 4
    ref = N.entmax(x, 1.5, method="sort")
    with _kernel.iteration_limit(1):
        raw, flags = N._kernel_entmax(x, 1.5)
        p = N.entmax(x, 1.5)
    assert flags & N._FLAG_MAXIT  # the limit was hit ...
    assert (raw - ref).abs().max() > 1e-3  # ... the kernel's own estimate is wrong ...
    torch.testing.assert_close(p, ref, rtol=0, atol=1e-13)  # ... and the op fell back to an exact method
    raw, flags = N._kernel_entmax(x, 1.5)
    assert flags == 0  # the limit is restored after the block


# ---------------------------------------------------------------------------------------------- compile


def test_compile_fullgraph_every_method():
    torch._dynamo.reset()
    q, k, v = qkv(6, lq=5, lk=6, d=4)
    mask = torch.ones(5, 6, dtype=torch.bool)
    mask[2, :3] = False

    def every_method(q, k, v, mask):
        return [gag_attention(q, k, v, method=m, mask=mask, checks=False, strength=0.7) for m in METHODS]

    compiled = torch.compile(every_method, fullgraph=True, dynamic=False)  # one compile for all methods
    for got, want in zip(compiled(q, k, v, mask), every_method(q, k, v, mask)):
        # same ops in the same order up to Inductor's fusion: fp32 rounding, ~1e2 ulps of an O(1) output
        torch.testing.assert_close(got, want, rtol=0, atol=1e-5)


# ------------------------------------------------------------------------------ one mask rule (issue 21 item 7)


def _paths_in_play():
    """(label, dtype, grad): the CPU paths of gag_attention — one-call C (fp32), chunked C (fp64), torch (grad)."""
    return [("one-call C", torch.float32, False), ("chunked C", torch.float64, False), ("torch", torch.float32, True)]


@pytest.mark.parametrize("label,dtype,grad", _paths_in_play())
@pytest.mark.parametrize("strength", [0.0, 0.5, 1.0])
@pytest.mark.parametrize("bad_dtype", [torch.int64, torch.uint8, torch.int32, torch.complex64])
def test_integer_and_complex_masks_raise_on_every_path_and_strength(label, dtype, grad, strength, bad_dtype):
    # reported: mask=m.long() was taken as an additive bias on fp32 CPU (a different output from m.bool()),
    # rejected on fp64, and a raw SDPA error at strength 0
    q, k, v = qkv(31, dtype=dtype)
    m = torch.rand(12, 7, generator=torch.Generator().manual_seed(2)) > 0.3
    m[:, 0] = True
    if grad:
        q.requires_grad_(True)
    with pytest.raises(ValueError, match=r"mask must have dtype bool .* or a floating dtype.*got torch\.(int|uint|complex)"):
        gag_attention(q, k, v, mask=m.to(bad_dtype), strength=strength)


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64, torch.float16])
@pytest.mark.parametrize("kind", ["1-D bool", "1-D additive", "other float dtype", "0-D bool"])
def test_masks_sdpa_rejects_mean_the_same_at_strength_0_and_1(dtype, kind):
    q, k, v = qkv(32, dtype=dtype)
    g = torch.Generator().manual_seed(3)
    keep = torch.rand(7, generator=g) > 0.4
    keep[0] = True
    other = torch.float64 if dtype != torch.float64 else torch.float32
    mask = {
        "1-D bool": keep,
        "1-D additive": torch.where(keep, 0.0, -math.inf).to(dtype),
        "other float dtype": torch.where(keep, 0.0, -1e4).to(other).expand(12, 7),
        "0-D bool": torch.tensor(True),
    }[kind]
    off = gag_attention(q, k, v, mask=mask, strength=0.0)
    # strength 0 is SDPA itself, with the mask in the form SDPA takes: (1, Lk), in q's dtype
    mask2 = mask.reshape((1,) * (2 - mask.dim()) + tuple(mask.shape)) if mask.dim() < 2 else mask
    mask2 = mask2 if mask2.dtype == torch.bool else mask2.to(dtype)
    assert torch.equal(off, F.scaled_dot_product_attention(q, k, v, attn_mask=mask2))
    # strength 1 takes the same mask, with the same meaning: its dense branch is the strength-0 output
    on, parts = gag_attention(q, k, v, mask=mask, return_parts=True)
    tol = {torch.float64: 1e-12, torch.float32: 1e-5, torch.float16: 2e-3}[dtype]
    torch.testing.assert_close(parts.dense.to(dtype), off, rtol=tol, atol=tol)
    with torch.no_grad():  # and the fused CPU paths agree with the torch path on it
        torch.testing.assert_close(gag_attention(q, k, v, mask=mask), on, rtol=tol, atol=tol * 30)


def test_a_mask_on_another_device_is_named():
    q, k, v = qkv(33)
    with pytest.raises(ValueError, match="mask must be on the device of q"):
        gag_attention(q, k, v, mask=torch.ones(12, 7, dtype=torch.bool, device="meta"))


@pytest.mark.parametrize("strength", [0.0, 1.0])
def test_nan_mask_and_fully_masked_rows_raise_at_every_strength(strength):
    # the off switch rejects what the guided paths reject (one status word on every path)
    q, k, v = qkv(34)
    add = torch.zeros(12, 7)
    add[2, 3] = math.nan
    with pytest.raises(ValueError, match=r"mask \(additive\) must not contain NaN"):
        gag_attention(q, k, v, mask=add, strength=strength)
    rows = torch.ones(12, 7, dtype=torch.bool)
    rows[5] = False
    with pytest.raises(ValueError, match="fully masked"):
        gag_attention(q, k, v, mask=rows, strength=strength)
