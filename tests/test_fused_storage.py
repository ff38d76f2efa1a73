"""The one-call CPU kernel on bf16 / fp16 storage and its scheduling (issue 22).

The kernel reads bf16/fp16 q, k, v and writes the output in that type itself (no conversion pass). Its
compute is fp32 and its roundings are torch's (to nearest, ties to even), so the result must equal, bit
for bit, the fp32 kernel on the upcast inputs converted with ``.to()`` — except bf16 where the kernel
multiplies on AMX tiles (``fused.bf16_uses_tiles()``): there the products' sums run in another order and P
is split into two bf16 matrices, so the output is within one bf16 ulp of that (subnormals flushed), and a
build without the tiles (``-DHG_NO_AMX``) must still be bit-exact. That is the test, on shapes whose
head dims are not multiples of the micro-kernel's 16 columns, several query blocks, masks, every method,
outputs that reach the half types' subnormal and overflow ranges, and a build with the portable fp16
conversions. Blocks are dealt to threads dynamically; a block's arithmetic does not depend on the thread
that runs it, so 1, 2 and 3 threads agree bit for bit.
"""
from __future__ import annotations

import ctypes

import pytest
import torch

from hopfield_gag import GagParams
from hopfield_gag.ops import _kernel, fused
from hopfield_gag.ops.codes import Status

needs_kernel = pytest.mark.skipif(_kernel.load() is None, reason="no C compiler here: the fused kernel does not exist")

PARAMS = [GagParams(method="gag"), GagParams(method="gag", parallel="positive"), GagParams(method="pladis", lam=2.0),
          GagParams(method="sparse"), GagParams(method="aa")]


def make(seed, b, h, lq, lk, d, dv, vscale=1.0):
    g = torch.Generator().manual_seed(seed)
    return (torch.randn(b, h, lq, d, generator=g), torch.randn(b, h, lk, d, generator=g),
            torch.randn(b, h, lk, dv, generator=g) * vscale)


def run(q, k, v, params, mask=None):
    return fused.attention_forward(q, k, v, mask, q.shape[:-2], q.shape[-1] ** -0.5, params)


BF16_TINY = torch.finfo(torch.bfloat16).tiny  # the tiles flush results below it to 0


def assert_storage_result(out, ref, dtype, v):
    """out (half storage) against ref (the fp32 kernel on the upcast inputs): bit for bit, or for bf16 on AMX
    tiles within one bf16 ulp of the value (2^-7 of it) plus the pre-rounding difference: the tiles sum the
    products in another order and split P into two bf16 matrices (~2^-17 of P each), so d and s move by
    <= ~2^-16 of the largest |v| of the column, which gag's (1 + lam) <= 11 raises to < 2^-12; and the
    tiles' flush to zero of products below bf16's smallest normal number (two per key: P_hi v and P_lo v), at
    most 2 Lk such products, raised by the same (1 + lam) <= 11."""
    want = ref.to(dtype)
    assert torch.equal(out.isinf(), want.isinf()) and torch.equal(out.isnan(), want.isnan())
    if dtype == torch.bfloat16 and fused.bf16_uses_tiles():
        col = v.float().abs().amax(dim=-2, keepdim=True).expand_as(want)  # max |v| over the keys, per column
        fin = want.isfinite()
        err = (out.float() - want.float())[fin].abs()
        tol = 2.0**-7 * want.float()[fin].abs() + 2.0**-12 * col[fin] + 22 * v.shape[-2] * BF16_TINY
        assert bool((err <= tol).all()), float((err / tol).max())
    else:
        assert torch.equal(out, want)


@needs_kernel
@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float16])
@pytest.mark.parametrize("params", PARAMS, ids=lambda p: f"{p.method}-{p.parallel}")
def test_half_storage_equals_fp32_compute_converted(dtype, params):
    # D = 40, Dv = 24: neither a multiple of 16; Lq = 130: several blocks and a partial one
    q, k, v = (t.to(dtype) for t in make(1, 2, 3, 130, 77, 40, 24))
    mask = torch.zeros(2, 1, 130, 77)
    mask[..., 60:] = float("-inf")
    mask[1, 0, :5, 1:] = float("-inf")  # rows with a single key
    for m in (None, mask):
        out, flags = run(q, k, v, params, m)
        ref, ref_flags = run(q.float(), k.float(), v.float(), params, m)
        assert out.dtype == dtype and flags == ref_flags == 0
        assert_storage_result(out, ref, dtype, v)


@needs_kernel
@pytest.mark.parametrize("lk", [300, 512, 700])  # query blocks of 48, 24 and 12 rows: not all multiples of 16
def test_bf16_long_rows_every_method(lk):
    # the bf16 tiles work on 16-row tiles of blocks of 12..48 rows: the padding rows must not reach any output
    q, k, v = (t.bfloat16() for t in make(5, 1, 2, 53, lk, 40, 24))
    for params in PARAMS:
        out, flags = run(q, k, v, params)
        ref, _ = run(q.float(), k.float(), v.float(), params)
        assert flags == 0
        assert_storage_result(out, ref, torch.bfloat16, v)


def _extremes(dtype):
    """Values whose outputs cross the half type's subnormal range and its overflow (fp16 only)."""
    q, k, v = make(2, 1, 2, 40, 19, 16, 20)
    if dtype == torch.float16:
        # columns down to 1e-10 (below fp16's 6e-8) and up to fp16's max 65504 (finite inputs whose outputs
        # overflow: pladis's d + 2 (s - d) reaches 3x the largest value)
        v = (v * torch.logspace(-10, 5, 20)).clamp(-65504, 65504)
    else:
        v = v * torch.logspace(-42, 37, 20)  # bf16 shares fp32's range: subnormals and near-max values
    return q.to(dtype), k.to(dtype), v.to(dtype)


@needs_kernel
@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float16])
def test_half_rounding_at_the_range_ends(dtype):
    q, k, v = _extremes(dtype)
    assert v.isfinite().all()
    for params in (GagParams(method="pladis", lam=2.0), GagParams(method="sparse")):
        out, _ = run(q, k, v, params)
        ref, _ = run(q.float(), k.float(), v.float(), params)
        assert_storage_result(out, ref, dtype, v)


@needs_kernel
def test_portable_fp16_conversions_agree(tmp_path, monkeypatch):
    # compilers without _Float16 take the bit-level fp16 conversions: build them (-DHG_NO_FLOAT16, no
    # -march=native) and compare with the native build, including subnormal and overflowing outputs
    flags = tuple(f for f in _kernel._FLAGS if f != "-march=native") + ("-DHG_NO_FLOAT16",)
    target = tmp_path / "kernel-portable-f16.so"
    _kernel._compile(target, flags)
    portable = _kernel._bind(ctypes.CDLL(str(target)))
    cases = [_extremes(torch.float16), tuple(t.half() for t in make(3, 2, 2, 50, 77, 40, 24))]
    params = GagParams(method="pladis", lam=2.0)
    native = [run(*c, params)[0] for c in cases]
    monkeypatch.setattr(_kernel, "_lib", portable)
    for c, a in zip(cases, native):
        b = run(*c, params)[0]
        # the portable build has no FMA contraction: fp32 rounding differences before the final rounding
        # are possible, so compare to the fp32 result of the same build converted (bit for bit) ...
        assert torch.equal(b, run(*(t.float() for t in c), params)[0].half())
        # ... and to the native build within one fp16 ulp
        torch.testing.assert_close(b.float(), a.float(), rtol=2.0**-10, atol=2.0**-24)


@needs_kernel
@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16, torch.float16])
def test_nonfinite_k_or_v_flagged_in_every_storage_type(dtype):
    q, k, v = (t.to(dtype) for t in make(4, 1, 2, 30, 20, 8, 8))
    for t, where in ((k, (0, 1, 3, 2)), (v, (0, 0, 7, 5))):
        saved = t[where].clone()
        t[where] = float("inf")
        assert run(q, k, v, GagParams(method="gag"))[1] & Status.KV_NONFINITE
        t[where] = saved
    assert run(q, k, v, GagParams(method="gag"))[1] == 0


@needs_kernel
@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
def test_dynamic_blocks_give_the_same_bits_at_any_thread_count(dtype):
    q, k, v = (t.to(dtype) for t in make(5, 2, 4, 300, 77, 64, 64))  # large enough to run in parallel
    old = torch.get_num_threads()
    try:
        outs = []
        for n in (1, 2, 3):  # 3 threads on 2 cores: shares of uneven size, one thread often descheduled
            torch.set_num_threads(n)
            outs.append([run(q, k, v, p)[0] for p in (GagParams(method="gag"), GagParams(method="aa"))])
    finally:
        torch.set_num_threads(old)
    for other in outs[1:]:
        for a, b in zip(outs[0], other):
            assert torch.equal(a, b)


@needs_kernel
@pytest.mark.parametrize("params", [GagParams(method="gag"), GagParams(method="aa")], ids=lambda p: p.method)
def test_long_rows_take_the_wide_tiles_and_match_the_oracle(params):
    # Lk >= 256 takes the 12x32 / 12x16 AVX-512 tiles where the machine has them: Lk = 300 (an odd number of
    # 16-key panels and a partial one), D = 40, Dv = 80 (two 32-column tiles and a 16-column one), Lq = 61
    from hopfield_gag import reference_gag_attention

    q, k, v = make(6, 1, 2, 61, 300, 40, 80)
    mask = torch.zeros(1, 2, 61, 300)
    mask[0, 1, :, 150:] = float("-inf")
    for m in (None, mask):
        out, flags = run(q, k, v, params, m)
        want = reference_gag_attention(q.double(), k.double(), v.double(), mask=m, method=params.method,
                                       scale=40**-0.5)
        assert flags == 0
        # fp32 scores and sums over D + Lk terms, amplified by 1 + lam (the module-wide allowance of
        # tests/test_fused_attention.py)
        tol = 8 * 2.0**-24 * (1 + 10.0) * (40 + 300) * float(v.abs().max())
        torch.testing.assert_close(out.double(), want, rtol=0, atol=tol)


@needs_kernel
def test_bf16_without_tiles_is_bit_exact_and_tiles_agree(tmp_path, monkeypatch):
    # the AMX path is one of two bf16 paths: a build without it (-DHG_NO_AMX, what CPUs without AMX-BF16 run)
    # must keep the fp32-compute-converted contract bit for bit, and the tiles must agree with it to one ulp
    flags = _kernel._FLAGS + ("-DHG_NO_AMX",)
    target = tmp_path / "kernel-no-amx.so"
    _kernel._compile(target, flags)
    plain = _kernel._bind(ctypes.CDLL(str(target)))
    assert plain.hg_bf16_tiles() == 0
    q, k, v = (t.bfloat16() for t in make(4, 2, 2, 70, 77, 40, 24))
    tiles = [run(q, k, v, p)[0] for p in PARAMS]
    tiles_lib = _kernel.load()
    monkeypatch.setattr(_kernel, "_lib", plain)
    assert not fused.bf16_uses_tiles()
    for p, a in zip(PARAMS, tiles):
        b, fl = run(q, k, v, p)
        ref, _ = run(q.float(), k.float(), v.float(), p)
        assert fl == 0 and torch.equal(b, ref.to(torch.bfloat16))
        monkeypatch.setattr(_kernel, "_lib", tiles_lib)
        assert_storage_result(a, b.float(), torch.bfloat16, v)  # tiles against the bit-exact plain path
        monkeypatch.setattr(_kernel, "_lib", plain)
