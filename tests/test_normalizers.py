"""Tests of hopfield_gag.normalizers: simplex, invariances, limits, masks, agreement between our own
algorithms and with the ``entmax`` package (reference oracle), closed-form gradients, dtypes, errors."""
from __future__ import annotations

import math
import os

import entmax as entmax_pkg
import numpy as np
import pytest
import torch
from hypothesis import assume, example, given, settings
from hypothesis import strategies as st
from hypothesis.extra.numpy import arrays

from hopfield_gag.ops import normalizers as N

ALPHAS = [1.1, 1.25, 1.5, 2.0, 3.0]
HALF_TYPES = [torch.float16, torch.bfloat16]


def scores(max_len=40, max_rows=4, bound=60.0):
    """Small float64 score matrices, shrinkable by hypothesis (rows x len)."""
    return st.tuples(st.integers(1, max_rows), st.integers(1, max_len)).flatmap(
        lambda s: arrays(
            np.float64,
            s,
            elements=st.floats(-bound, bound, allow_nan=False, allow_infinity=False, width=64),
        )
    ).map(torch.from_numpy)


def random_scores(seed, rows, n, scale, dtype=torch.float64, ties=False):
    g = torch.Generator().manual_seed(seed)
    x = torch.randn(rows, n, generator=g, dtype=torch.float64) * scale
    if ties and n > 2:
        x[:, : n // 2] = x[:, :1]
    return x.to(dtype)


alpha_st = st.sampled_from(ALPHAS)


# ---------------------------------------------------------------------------------------------- simplex


@given(x=scores(), alpha=alpha_st)
@example(x=torch.tensor([[0.0, 0.0, 0.0]], dtype=torch.float64), alpha=1.5)  # all ties
@example(x=torch.tensor([[1e-300, -1e-300]], dtype=torch.float64), alpha=2.0)  # denormal-scale gaps
def test_output_on_simplex(x, alpha):
    p = N.entmax(x, alpha)
    assert p.dtype == x.dtype and p.shape == x.shape
    assert bool((p >= 0).all())
    # float64: each of n terms is computed to ~eps relative, so the sum is within n*eps of 1
    torch.testing.assert_close(p.sum(-1), torch.ones(x.shape[0], dtype=x.dtype), rtol=0, atol=x.shape[1] * 1e-15)


@given(x=scores())
def test_softmax_on_simplex_and_matches_torch(x):
    p = N.softmax(x)
    torch.testing.assert_close(p, torch.softmax(x, -1), rtol=0, atol=0)


@given(x=scores(), alpha=alpha_st, shift=st.floats(-1e3, 1e3))
def test_shift_invariance(x, alpha, shift):
    p = N.entmax(x, alpha)
    q = N.entmax(x + shift, alpha)
    # adding `shift` rounds each score by ~eps*|x+shift|; p moves by that times the Jacobian (norm <= 1
    # in the scores' units times (alpha-1)^... bounded by 1/(alpha-1) for the threshold form)
    atol = 8 * 2.2e-16 * (float(x.abs().max()) + abs(shift) + 1) * max(1.0, 1 / (alpha - 1)) * x.shape[1]
    torch.testing.assert_close(p, q, rtol=0, atol=atol)


@given(x=scores(), alpha=alpha_st, data=st.data())
def test_permutation_equivariance(x, alpha, data):
    perm = torch.tensor(data.draw(st.permutations(range(x.shape[1]))), dtype=torch.long)
    p = N.entmax(x, alpha)
    q = N.entmax(x[:, perm], alpha)
    torch.testing.assert_close(q, p[:, perm], rtol=0, atol=1e-14)


@given(x=scores(), alpha=alpha_st)
def test_order_preserving(x, alpha):
    # z_i >= z_j  =>  p_i >= p_j  (the threshold map is monotone)
    p = N.entmax(x, alpha)
    zi, zj = x.unsqueeze(-1), x.unsqueeze(-2)
    pi, pj = p.unsqueeze(-1), p.unsqueeze(-2)
    assert bool(((zi >= zj) <= (pi >= pj - 1e-15)).all())


def test_not_scale_invariant():
    x = torch.tensor([[1.0, 0.5, 0.0]], dtype=torch.float64)
    assert not torch.allclose(N.entmax(x, 1.5), N.entmax(10 * x, 1.5))


# ---------------------------------------------------------------------------------------------- limits


@given(x=scores(max_len=20, bound=8.0))
def test_alpha_to_one_limit_is_softmax(x):
    # log p_i = (1/eps) log(1 + eps (z_i - t)) = (z_i - t) - eps (z_i - t)^2 / 2 + O(eps^2): the error of
    # (1+eps)-entmax against softmax is O(eps * R^2), R = range of the scores (+1 for the threshold).
    soft = N.softmax(x)
    r = float(x.max() - x.min()) + 1.0
    errors = []
    for eps in (1e-2, 1e-3, 1e-4):
        err = float((N.entmax(x, 1 + eps) - soft).abs().max())
        assert err <= eps * r * r
        errors.append(err)
    assert errors[2] <= errors[0] + 1e-12


@given(x=scores(max_len=12), alpha=st.sampled_from([1.25, 1.5, 2.0, 3.0]))
@example(x=torch.tensor([[1e-8, 2.0]], dtype=torch.float64), alpha=1.5)
def test_one_hot_iff_top_gap_at_least_margin(x, alpha):
    # alpha-entmax(z) = e_k  iff  z_k - max_{j != k} z_j >= 1/(alpha - 1)  (Blondel et al. 2020, margin)
    assume(x.shape[1] >= 2)
    top2 = x.topk(2, dim=-1).values
    gap = top2[:, 0] - top2[:, 1]
    margin = 1 / (alpha - 1)
    assume(bool(((gap - margin).abs() > 1e-9).all()))  # stay off the boundary itself
    p = N.entmax(x, alpha)
    # One-hot = a support of one entry (entmax's zeros are exact). Not p.max() == 1: 1e-8 inside the margin at
    # alpha = 1.5 the runner-up gets (a (u - tau))^2 = 2.5e-17, and 1 - 2.5e-17 rounds to 1.0 in float64.
    one_hot = (p > 0).sum(-1) == 1
    assert torch.equal(one_hot, gap >= margin)


@pytest.mark.parametrize("t", [-2.5, -2.0, -1.3, -0.4, 0.0, 0.7, 1.9, 2.0, 2.4])
def test_two_key_closed_forms(t):
    x = torch.tensor([[t, 0.0]], dtype=torch.float64)
    sparse = N.sparsemax(x)[0, 0].item()
    assert sparse == pytest.approx(min(max((t + 1) / 2, 0.0), 1.0), abs=1e-15)
    expected = ((t + math.sqrt(8 - t * t)) / 4) ** 2 if abs(t) <= 2 else (1.0 if t > 0 else 0.0)
    assert N.entmax(x, 1.5)[0, 0].item() == pytest.approx(expected, abs=1e-14)


# ---------------------------------------------------------------------------------------------- agreement


@given(
    seed=st.integers(0, 2**31 - 1),
    n=st.integers(1, 300),
    scale=st.floats(1e-3, 300.0),
    ties=st.booleans(),
    alpha=st.sampled_from([1.5, 2.0]),
)
@example(
    seed=209,
    n=189,
    scale=2.5,
    ties=True,
    alpha=1.5,
).via('discovered failure')
@example(seed=1_490_484_511, n=190, scale=1.0, ties=True, alpha=2.0).via('discovered failure')
def test_newton_agrees_with_sort_and_bisect(seed, n, scale, ties, alpha):
    x = random_scores(seed, 6, n, scale, ties=ties)
    ref = N.entmax(x, alpha, method="sort")
    # both exact algorithms: agreement to float64 rounding. Each computes tau in closed form from sums over the
    # support (up to n terms), whose rounding is bounded by ~n * eps * max|x| (recursive summation of entries up
    # to max|x|), so the allowance grows with n and with the largest score, not with the draw's scale: the kept
    # examples (n = 189 and 190, ties) differ by 1.0e-13 > 64 * eps * scale * 2 and by 6.1e-14 > (64 + n) eps
    # scale at scale 1 (max|x| = 3.2 there).
    tol = (64 + n) * 2.2e-16 * max(float(x.abs().max()), 1.0) * max(1.0, 1 / (alpha - 1))
    torch.testing.assert_close(N.entmax(x, alpha, method="newton"), ref, rtol=0, atol=tol)
    torch.testing.assert_close(N._entmax_torch(x, alpha)[0], ref, rtol=0, atol=tol)
    torch.testing.assert_close(N.entmax(x, alpha, method="bisect"), ref, rtol=0, atol=tol)


@given(
    seed=st.integers(0, 2**31 - 1),
    n=st.integers(1, 200),
    scale=st.floats(1e-2, 100.0),
    alpha=st.sampled_from([1.1, 1.25, 1.75, 2.5, 3.0]),
)
def test_newton_agrees_with_bisect_any_alpha(seed, n, scale, alpha):
    x = random_scores(seed, 6, n, scale)
    ref = N.entmax(x, alpha, method="bisect")
    # for alpha > 2 the map p = y^(1/(alpha-1)) has unbounded slope at the threshold, so a rounding-level
    # difference in tau (~eps * scale) moves a near-threshold entry by up to (eps*scale)^(1/(alpha-1))
    tau_err = 64 * 2.2e-16 * max(scale, 1.0)
    tol = tau_err if alpha <= 2 else tau_err ** (1 / (alpha - 1))
    torch.testing.assert_close(N.entmax(x, alpha), ref, rtol=0, atol=max(tol, 1e-13))
    torch.testing.assert_close(N._entmax_torch(x, alpha)[0], ref, rtol=0, atol=max(tol, 1e-13))


@given(seed=st.integers(0, 2**31 - 1), n=st.integers(1, 200), scale=st.floats(1e-2, 50.0))
def test_agrees_with_entmax_package(seed, n, scale):
    x = random_scores(seed, 5, n, scale)
    tol = 64 * 2.2e-16 * max(scale, 1.0)
    torch.testing.assert_close(N.entmax(x, 1.5), entmax_pkg.entmax15(x, dim=-1), rtol=0, atol=tol)
    torch.testing.assert_close(N.sparsemax(x), entmax_pkg.sparsemax(x, dim=-1), rtol=0, atol=tol)
    for alpha in (1.25, 1.75):
        ref = entmax_pkg.entmax_bisect(x, alpha, dim=-1, n_iter=100)
        torch.testing.assert_close(N.entmax(x, alpha), ref, rtol=0, atol=max(tol, 1e-12))


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
@pytest.mark.parametrize("alpha", [1.5, 2.0, 1.25])
def test_kernel_rows_do_not_depend_on_their_neighbours(dtype, alpha):
    # the C kernel normalizes rows in sets of 8 (alpha = 1.5: the searches share vector lanes, and run as
    # long as the set's slowest row); each row must still come out exactly as when it is computed alone
    from hopfield_gag.ops import _kernel

    if _kernel.load() is None:
        pytest.skip("no C compiler here: the kernel does not exist; the torch path is tested")
    g = torch.Generator().manual_seed(3)
    z = (torch.randn(21, 77, generator=g) * torch.linspace(0.1, 8.0, 21)[:, None]).to(dtype)
    z[2, :] = 5.0  # a tie: every entry in the support
    z[4, 7] = float("nan")  # no distribution
    z[9, :] = float("-inf")  # fully masked
    z[11, :70] = float("-inf")
    z[13, 0] = 60.0  # one entry far above the rest
    p, flags = N._kernel_entmax(z, alpha)
    for i in range(z.shape[0]):
        alone, _ = N._kernel_entmax(z[i:i + 1].clone(), alpha)
        assert torch.equal(p[i:i + 1].isnan(), alone.isnan())
        assert torch.equal(p[i:i + 1].nan_to_num(), alone.nan_to_num()), i
    assert flags & N._FLAG_NONFINITE and flags & N._FLAG_EMPTY


@pytest.mark.parametrize("rows", [450, 1000, 4099])
def test_kernel_writes_every_row_the_same_at_any_thread_count(rows):
    # rows are dealt in chunks of 64: each thread takes its own contiguous share first, then steals what is
    # left of the others'. 450 rows are 8 chunks (fewer than 13 threads: some shares are empty), 4099 end in
    # a partial set. The output starts as NaN: a chunk no thread took would stay NaN.
    import ctypes

    from hopfield_gag.ops import _kernel

    lib = _kernel.load()
    if lib is None:
        pytest.skip("no C compiler here: the kernel does not exist; the torch path is tested")
    z = random_scores(5, rows, 77, 3.0, dtype=torch.float32)
    ptr = ctypes.POINTER(ctypes.c_float)
    outs = []
    for threads in (1, 2, 3, 13):
        p = torch.full_like(z, float("nan"))
        flags = lib.entmax_rows_f32(ctypes.cast(z.data_ptr(), ptr), ctypes.cast(p.data_ptr(), ptr), rows, 77,
                                    *N._c_setup(1.5, 77), threads)
        assert flags == 0 and not p.isnan().any(), threads
        outs.append(p)
    for p in outs[1:]:
        assert torch.equal(p, outs[0])


def test_kernel_writes_every_row_when_the_runtime_gives_fewer_threads_than_asked():
    # The chunks' ranges are set up before the parallel region for the threads asked for; a team the OpenMP
    # runtime makes smaller (here OMP_THREAD_LIMIT=1, as in a nested region) must take the absent threads'
    # ranges too. Own process: the limit is read when the runtime starts.
    import subprocess
    import sys

    from hopfield_gag.ops import _kernel

    if _kernel.load() is None:
        pytest.skip("no C compiler here: the kernel does not exist; the torch path is tested")
    code = (
        "import ctypes, torch\n"
        "from hopfield_gag.ops import _kernel, normalizers as N\n"
        "lib = _kernel.load(); ptr = ctypes.POINTER(ctypes.c_float)\n"
        "z = torch.randn(4099, 77, generator=torch.Generator().manual_seed(5)) * 3\n"
        "outs = []\n"
        "for threads in (1, 4):\n"
        "    p = torch.full_like(z, float('nan'))\n"
        "    f = lib.entmax_rows_f32(ctypes.cast(z.data_ptr(), ptr), ctypes.cast(p.data_ptr(), ptr), 4099, 77,\n"
        "                            *N._c_setup(1.5, 77), threads)\n"
        "    outs.append((f, bool(p.isnan().any()), p))\n"
        "print(outs[1][0], outs[1][1], torch.equal(outs[0][2], outs[1][2]))\n"
    )
    env = dict(os.environ, OMP_THREAD_LIMIT="1")
    res = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, env=env, timeout=300)
    assert res.returncode == 0, res.stderr
    assert res.stdout.split() == ["0", "False", "True"], res.stdout


def test_fp32_kernel_agrees_with_float64_reference_on_attention_shapes():
    g = torch.Generator().manual_seed(0)
    for lk in (1, 2, 77, 1024):
        q = torch.randn(2, 4, 64, 64, generator=g)
        k = torch.randn(2, 4, lk, 64, generator=g)
        x = q @ k.transpose(-1, -2) / 8
        for alpha in (1.5, 2.0):
            p = N.entmax(x, alpha)
            ref = N.entmax(x.double(), alpha, method="sort")
            # same fp32 scores; only the final rounding of p to fp32 differs (half an ulp of p <= 1)
            torch.testing.assert_close(p.double(), ref, rtol=0, atol=6e-8)
            assert float((p.sum(-1) - 1).abs().max()) <= 1e-6


@pytest.mark.parametrize("dim", [0, 1, 2, -1])
def test_any_dim(dim):
    x = random_scores(3, 12, 60, 2.0).view(3, 4, 60)
    p = N.entmax(x, 1.5, dim=dim)
    q = N.entmax(x.movedim(dim, -1), 1.5).movedim(-1, dim)
    torch.testing.assert_close(p, q, rtol=0, atol=0)
    torch.testing.assert_close(p.sum(dim), torch.ones_like(p.sum(dim)), rtol=0, atol=1e-14)


# ---------------------------------------------------------------------------------------------- masks


@given(x=scores(max_len=20), alpha=st.sampled_from([1.0, 1.5, 2.0, 3.0]), data=st.data())
def test_mask_invariance(x, alpha, data):
    keep = torch.tensor(data.draw(st.lists(st.booleans(), min_size=x.shape[1], max_size=x.shape[1])))
    assume(bool(keep.any()))
    p_bool = N.normalize(x, alpha, mask=keep)
    additive = torch.where(keep, 0.0, -math.inf).to(x.dtype)
    p_add = N.normalize(x, alpha, mask=additive)
    p_inf = N.normalize(x.masked_fill(~keep, -math.inf), alpha)
    sub = N.normalize(x[:, keep], alpha)
    assert bool((p_bool[:, ~keep] == 0).all())
    torch.testing.assert_close(p_bool[:, keep], sub, rtol=0, atol=1e-14)
    torch.testing.assert_close(p_add, p_bool, rtol=0, atol=1e-14)
    torch.testing.assert_close(p_inf, p_bool, rtol=0, atol=1e-14)


@pytest.mark.parametrize("alpha", [1.5, 2.0, 3.0, 1.25])
def test_mask_invariance_is_bitwise_on_a_near_tie(alpha):
    # Found by test_mask_invariance (its data() draw cannot be an @example): alpha = 3 (bisection), 15 entries
    # with 14 tied just below the max, 6 kept. The masked row and the 6-entry row differed by 1.1e-14 because
    # the bisection's bracket came from the row length (15 vs 6) and the tied entries sit 0.0025 above the
    # threshold, where dp/dtau ~ p / (2 y) turns a 3.5e-16 bracket into 7e-14 p. The bracket now comes from
    # the candidate count, so the two rows take the same steps: equal bits, not a tolerance.
    x = torch.full((1, 15), 31.0, dtype=torch.float64)
    x[0, 2] = 31.1875
    keep = torch.zeros(15, dtype=torch.bool)
    keep[[2, 10, 11, 12, 13, 14]] = True
    sub = N.normalize(x[:, keep], alpha)
    for p in (N.normalize(x, alpha, mask=keep), N.normalize(x.masked_fill(~keep, -math.inf), alpha)):
        assert bool((p[:, ~keep] == 0).all())
        assert torch.equal(p[:, keep], sub)


def test_mask_broadcasts_over_rows():
    x = random_scores(0, 4, 10, 1.0).view(2, 2, 10)
    mask = torch.ones(1, 1, 10, dtype=torch.bool)
    mask[..., 3:] = False
    p = N.entmax(x, 1.5, mask=mask)
    assert bool((p[..., 3:] == 0).all())


def test_additive_mask_is_differentiable_and_masked_grads_vanish():
    x = random_scores(1, 3, 8, 2.0).requires_grad_()
    mask = torch.zeros(8, dtype=torch.float64)
    mask[5:] = -math.inf
    (N.entmax(x, 1.5, mask=mask) * torch.arange(8.0, dtype=torch.float64)).sum().backward()
    assert torch.isfinite(x.grad).all()
    assert bool((x.grad[:, 5:] == 0).all())


# ---------------------------------------------------------------------------------------------- gradients


@pytest.mark.parametrize("alpha", [1.0, 1.25, 1.5, 2.0, 3.0])
@pytest.mark.parametrize("method", ["newton", "bisect"])
def test_gradcheck(alpha, method):
    g = torch.Generator().manual_seed(7)
    # distinct, well-spread scores so the finite-difference stencil (eps 1e-6) never crosses a support
    # boundary, where entmax is not differentiable
    x = (torch.randperm(12, generator=g).to(torch.float64).view(2, 6) * 0.37).requires_grad_()
    if alpha == 1.0:
        fn = lambda t: N.softmax(t)  # noqa: E731
    else:
        fn = lambda t: N.entmax(t, alpha, method=method)  # noqa: E731
    assert torch.autograd.gradcheck(fn, (x,), eps=1e-6, atol=1e-7)


def test_softmax_backward_is_differentiable():
    # the closed-form backward is built from differentiable ops, so second derivatives are right too
    x = (torch.arange(12, dtype=torch.float64).view(2, 6) * 0.37).requires_grad_()
    assert torch.autograd.gradgradcheck(N.softmax, (x,), eps=1e-6, atol=1e-6)


@given(seed=st.integers(0, 2**31 - 1), n=st.integers(2, 30), alpha=st.sampled_from([1.5, 2.0]))
def test_closed_form_backward_matches_autograd_through_sort(seed, n, alpha):
    # the sort algorithm is a composition of differentiable torch ops on each piece: autograd through
    # it is an independent derivation of the Jacobian
    x = random_scores(seed, 3, n, 2.0)
    g = random_scores(seed + 1, 3, n, 1.0)
    x1 = x.clone().requires_grad_()
    (N.entmax(x1, alpha) * g).sum().backward()
    x2 = x.clone().requires_grad_()
    (N._entmax_sort(x2, alpha, -1) * g).sum().backward()
    torch.testing.assert_close(x1.grad, x2.grad, rtol=0, atol=1e-12)


@given(x=scores(max_len=10), alpha=st.sampled_from([1.0, 1.5, 2.0, 2.5]))
def test_jacobian_vector_product_matches_explicit_jacobian(x, alpha):
    p = N.normalize(x, alpha)
    s = N.jacobian_weights(p, alpha)
    jac = torch.diag_embed(s) - s.unsqueeze(-1) * s.unsqueeze(-2) / s.sum(-1, keepdim=True).unsqueeze(-1)
    g = torch.linspace(-1, 1, x.shape[1], dtype=x.dtype).expand_as(x)
    torch.testing.assert_close(N.jacobian_vector_product(p, g, alpha), (jac @ g.unsqueeze(-1)).squeeze(-1))
    # rows of the Jacobian sum to zero: shifting all scores does not move p
    torch.testing.assert_close(jac.sum(-1), torch.zeros_like(p), rtol=0, atol=1e-12)


def test_jacobian_weights_special_cases():
    p = torch.tensor([0.0, 0.25, 0.75], dtype=torch.float64)
    torch.testing.assert_close(N.jacobian_weights(p, 1.0), p)
    torch.testing.assert_close(N.jacobian_weights(p, 2.0), torch.tensor([0.0, 1.0, 1.0], dtype=torch.float64))
    torch.testing.assert_close(N.jacobian_weights(p, 1.5), p.sqrt())
    torch.testing.assert_close(N.jacobian_weights(p, 1.25), torch.tensor([0.0, 0.25**0.75, 0.75**0.75], dtype=torch.float64))


# ---------------------------------------------------------------------------------------------- dtypes


@pytest.mark.parametrize("dtype", HALF_TYPES)
@pytest.mark.parametrize("alpha", [1.0, 1.5, 2.0, 1.25])
def test_half_types_computed_in_fp32_and_cast_back(dtype, alpha):
    x = random_scores(5, 16, 77, 3.0, dtype=dtype)
    p = N.normalize(x, alpha)
    assert p.dtype == dtype
    assert torch.equal(p, N.normalize(x.float(), alpha).to(dtype))
    # each entry is rounded once to the half type: relative error 2^-11 (fp16) / 2^-8 (bf16) per entry,
    # so the row sum is within that of 1
    unit = 2.0**-11 if dtype == torch.float16 else 2.0**-8
    assert float((p.float().sum(-1) - 1).abs().max()) <= unit


@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16, torch.float32, torch.float64])
@pytest.mark.parametrize("alpha", [1.0, 1.5, 2.0, 3.0])
def test_finite_output_for_extreme_finite_input(dtype, alpha):
    big = torch.finfo(dtype).max
    x = torch.tensor([[big, -big, 0.0, big], [-big, -big, -big, -big], [1e-3, 0, 0, 0]], dtype=dtype)
    p = N.normalize(x, alpha)
    assert torch.isfinite(p).all()
    torch.testing.assert_close(p.double().sum(-1), torch.ones(3, dtype=torch.float64), rtol=0, atol=4e-3)


@pytest.mark.parametrize("alpha", [1.25, 1.5, 2.0, 3.0])
@pytest.mark.parametrize("scale", [1e30, 1e20, 3e17, 1e8])
def test_rows_whose_max_absorbs_the_bracket(scale, alpha):
    # max z - 1/(alpha-1) rounds back to max z in double once |z| >~ 1e16: the fp32 candidate bound must
    # still lie strictly below the max (found by the kernel's row sets: a bound equal to the max dropped every
    # entry and gave NaN rows with no status bit). Tied maxima share the mass; the rest is 0 (a gap of `scale`).
    x = torch.tensor([[scale, 0.0, 0.0, scale], [scale, -scale, scale, scale], [0.0, -scale, -scale, scale]])
    want = torch.tensor([[0.5, 0, 0, 0.5], [1 / 3, 0, 1 / 3, 1 / 3], [0, 0, 0, 1.0]], dtype=torch.float64)
    torch.testing.assert_close(N.entmax(x, alpha).double(), want, rtol=0, atol=1e-7)
    torch.testing.assert_close(N.entmax(x.double(), alpha), want, rtol=0, atol=1e-15)


def test_fp32_rows_sum_to_one_before_cast():
    x = random_scores(11, 64, 1024, 4.0, dtype=torch.float32)
    for alpha in (1.5, 2.0, 1.25):
        p = N.entmax(x, alpha)
        assert float((p.double().sum(-1) - 1).abs().max()) <= 1e-6


# ---------------------------------------------------------------------------------------------- errors


@pytest.mark.parametrize("bad", [math.nan, math.inf])
@pytest.mark.parametrize("fn", ["softmax", "entmax", "sparsemax"])
@pytest.mark.parametrize("method", ["newton", "sort", "bisect"])
def test_nonfinite_input_raises(bad, fn, method):
    x = torch.zeros(2, 5)
    x[1, 2] = bad
    call = {
        "softmax": lambda: N.softmax(x),
        "entmax": lambda: N.entmax(x, 1.5, method=method),
        "sparsemax": lambda: N.sparsemax(x, method=method),
    }[fn]
    with pytest.raises(ValueError, match="x must not contain"):
        call()


@pytest.mark.parametrize("alpha", [1.0, 1.5, 2.0, 3.0])
def test_fully_masked_row_raises(alpha):
    x = torch.zeros(2, 4)
    mask = torch.ones(2, 4, dtype=torch.bool)
    mask[0] = False
    with pytest.raises(ValueError, match="fully masked"):
        N.normalize(x, alpha, mask=mask)
    with pytest.raises(ValueError, match="fully masked"):
        N.normalize(torch.full((1, 3), -math.inf), alpha)


def test_argument_errors():
    x = torch.zeros(2, 4)
    with pytest.raises(ValueError, match="alpha must be > 1"):
        N.entmax(x, 1.0)
    with pytest.raises(ValueError, match="alpha must be >= 1"):
        N.normalize(x, 0.5)
    with pytest.raises(ValueError, match="method must be one of"):
        N.entmax(x, 1.5, method="fast")
    with pytest.raises(ValueError, match="method='sort' is exact only"):
        N.entmax(x, 1.7, method="sort")
    with pytest.raises(ValueError, match="mask of shape"):
        N.entmax(x, 1.5, mask=torch.ones(3, dtype=torch.bool))
    with pytest.raises(ValueError, match="mask must have dtype bool"):
        N.entmax(x, 1.5, mask=torch.ones(4, dtype=torch.int64))
    with pytest.raises(ValueError, match="must not contain NaN or \\+inf"):
        N.entmax(x, 1.5, mask=torch.full((4,), math.inf))
    with pytest.raises(ValueError, match="floating dtype"):
        N.entmax(torch.zeros(2, 4, dtype=torch.int64), 1.5)
    with pytest.raises(TypeError, match="x must be a torch.Tensor"):
        N.entmax([1.0, 2.0], 1.5)
    with pytest.raises(ValueError, match="dim=3 is out of range"):
        N.entmax(x, 1.5, dim=3)
    with pytest.raises(ValueError, match="at least one entry"):
        N.entmax(torch.zeros(2, 0), 1.5)


def test_modules_match_functional():
    x = random_scores(2, 3, 9, 2.0)
    assert torch.equal(N.Entmax(1.25)(x), N.entmax(x, 1.25))
    assert torch.equal(N.Sparsemax()(x), N.sparsemax(x))
    assert torch.equal(N.Softmax()(x), N.softmax(x))
    assert torch.equal(N.Normalize(1.5)(x), N.entmax(x, 1.5))
    assert "alpha=1.25" in repr(N.Entmax(1.25))


def test_torch_path_used_when_kernel_disabled(monkeypatch):
    # the PyTorch implementation is the path on non-CPU devices; force it on CPU and compare
    monkeypatch.setattr(N, "_kernel_applies", lambda z: False)
    x = random_scores(4, 8, 50, 3.0, dtype=torch.float32)
    p = N.entmax(x, 1.5)
    monkeypatch.undo()
    torch.testing.assert_close(p, N.entmax(x, 1.5), rtol=0, atol=1e-7)


# ----------------------------------------------------------------------------------------------------------
# alpha just above 1 (ops/threshold.NEAR_ONE): the offset search of _entmax_near_one


def _entmax_truth(z: torch.Tensor, alpha: float) -> torch.Tensor:
    import _truth

    return torch.tensor([[float(p) for p in _truth.entmax([_truth.exact(x) if x > -math.inf else None
                                                             for x in row.tolist()], alpha)] for row in z],
                        dtype=torch.float64)


@given(st.integers(0, 2**31 - 1), st.integers(1, 16), st.floats(0.1, 30.0),
       st.sampled_from([2.0**-52, 1e-15, 1e-12, 1e-9, 1e-6, 1e-4, 9.9e-4]))
@settings(max_examples=12)  # the 60-digit oracle takes ~0.1 s a row at alpha = 1 + 2^-52
@example(0, 2, 1.0, 2.0**-52)  # alpha = 1 + 2^-52: the old coordinates returned softmax(z / 0.75) for z = [0, 0.75]
@example(127, 19, 7.0, 2.0**-52)  # fp32: compared with the truth of the fp64 rows, not of their fp32 rounding
@example(0, 3, 24.0, 2.0**-52)  # an fp32 weight of 1.7e-39, a subnormal
def test_entmax_near_one_matches_60_digits(seed, n, spread, a):
    # the old search lost eps/a here (3e-2 at a = 1e-15, 2e-8 at 1e-9, 3e-13 at 1e-4 on such rows); the offset
    # search is at fp64 rounding: 8 ulps of the row's largest weight (1) on every path
    alpha = 1.0 + a
    assert alpha > 1.0
    z = torch.randn(3, n, generator=torch.Generator().manual_seed(seed), dtype=torch.float64) * spread
    z[1, : n // 2] = -math.inf  # masked entries
    want = _entmax_truth(z, alpha)
    for p in (N.entmax(z, alpha), N.entmax(z, alpha, method="bisect"), N._entmax_torch(z, alpha)[0],
              N.normalize(z, alpha)):
        torch.testing.assert_close(p, want, rtol=0, atol=8 * 2.0**-52)
    # fp32 rows: computed in float64 and rounded once, so within half an fp32 ulp of the fp64 result of the
    # same (fp32) scores, which the assertions above hold to fp64 rounding (half an ulp: 2^-24 relative, or
    # 2^-150 absolute among the subnormals, which a weight of e^(-24 * 4) reaches)
    z32 = z.float()
    torch.testing.assert_close(N.entmax(z32, alpha).double(), N.entmax(z32.double(), alpha), rtol=2.0**-24,
                               atol=2.0**-150)


def test_entmax_near_one_keeps_gradient_flags_and_errors():
    z = torch.tensor([[0.0, 0.75, -1.0]], dtype=torch.float64, requires_grad=True)
    alpha = 1.0 + 1e-9
    p = N.entmax(z, alpha)
    g = torch.tensor([[1.0, -2.0, 0.5]], dtype=torch.float64)
    (grad,) = torch.autograd.grad(p, z, g)
    # the closed-form backward (not autograd through the bisection, whose gradient would be 0): at alpha - 1 =
    # 1e-9 within ~1e-9 of softmax's gradient, as the weights are within 0.45 (alpha - 1) of softmax's
    zs = z.detach().clone().requires_grad_(True)
    (want,) = torch.autograd.grad(torch.softmax(zs, -1), zs, g)
    torch.testing.assert_close(grad, want, rtol=0, atol=1e-8)
    assert float((grad - want).abs().max()) > 0  # and it is entmax's, not softmax's taken instead
    with pytest.raises(ValueError, match="NaN"):
        N.entmax(torch.tensor([[0.0, float("nan")]]), alpha)
    with pytest.raises(ValueError, match="fully masked"):
        N.entmax(torch.full((1, 3), -math.inf), alpha)
    _, flags = N._entmax_near_one(torch.tensor([[0.0, float("inf")]], dtype=torch.float64), alpha)
    assert int(flags) & int(N.Status.NONFINITE_SCORES)
