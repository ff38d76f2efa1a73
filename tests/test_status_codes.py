"""One status word on every path of gag_attention: the same condition sets the same Status bit.

The paths of ``hopfield_gag.guidance.attention.PATHS`` (torch, chunked C, one-call C, Triton under the
interpreter, and the stock off switch) each report a status word that gag_attention reads once. Each
condition below is produced on each path and the word is compared with the expected bits:

* NaN in q, and q.k overflowing to +inf: ``NONFINITE_SCORES``;
* NaN/+inf in an additive mask: ``NONFINITE_SCORES``;
* a query row with every key masked: ``FULLY_MASKED``;
* NaN in v (it never shows in the scores): ``KV_NONFINITE``; NaN in k: ``KV_NONFINITE`` and, through the
  scores, ``NONFINITE_SCORES``;
* the entmax iteration limit, where a path can reach it (the kernels' test hooks): ``ITER_LIMIT``.

The codes themselves are defined once (ops/codes.py); the C kernel and the Triton kernel are checked to have
no literal of their own.
"""
from __future__ import annotations

import math
import re
from pathlib import Path

import pytest
import torch

from hopfield_gag import GagParams, Status, gag_attention
from hopfield_gag.guidance import attention as A
from hopfield_gag.ops import _kernel, codes, fused

OPS = Path(A.__file__).parents[1] / "ops"
needs_kernel = pytest.mark.skipif(_kernel.load() is None, reason="no C compiler: the C paths do not exist here")

# path -> (dtype it takes, extra requirement)
PATH_DTYPES = {"torch": torch.float64, "chunked C": torch.float64, "one-call C": torch.float32,
               "triton": torch.float32, "stock": torch.float32}


def _inputs(dtype, seed=0):
    g = torch.Generator().manual_seed(seed)
    q = torch.randn(1, 2, 5, 8, generator=g).to(dtype)
    k = torch.randn(1, 2, 9, 8, generator=g).to(dtype)
    v = torch.randn(1, 2, 9, 6, generator=g).to(dtype)
    return q, k, v


def _case(condition, dtype):
    """(q, k, v, mask) exhibiting ``condition`` in row (0, 1, 3)."""
    q, k, v = _inputs(dtype)
    mask = None
    if condition == "nan q":
        q[0, 1, 3, 2] = math.nan
    elif condition == "overflow":
        q[0, 1, 3] = torch.finfo(dtype).max / 4
        k[0, 1, 4] = torch.finfo(dtype).max / 4
    elif condition == "nan mask":
        mask = torch.zeros(5, 9, dtype=dtype)
        mask[3, 4] = math.nan
    elif condition == "+inf mask":
        mask = torch.zeros(5, 9, dtype=dtype)
        mask[3, 4] = math.inf
    elif condition == "masked row":
        mask = torch.ones(5, 9, dtype=torch.bool)
        mask[3] = False
    elif condition == "masked row (additive)":
        mask = torch.zeros(5, 9, dtype=dtype)
        mask[3] = -math.inf
    elif condition == "nan v":
        v[0, 1, 4, 0] = math.nan
    elif condition == "inf v":
        v[0, 1, 4, 0] = -math.inf
    elif condition == "nan k":
        k[0, 1, 4, 0] = math.nan
    elif condition != "good":
        raise AssertionError(condition)
    return q, k, v, mask


S = Status
EXPECTED = {
    "good": S.OK,
    "nan q": S.NONFINITE_SCORES,
    "overflow": S.NONFINITE_SCORES,
    "nan mask": S.NONFINITE_SCORES,
    "+inf mask": S.NONFINITE_SCORES,
    "masked row": S.FULLY_MASKED,
    "masked row (additive)": S.FULLY_MASKED,
    "nan v": S.KV_NONFINITE,
    "inf v": S.KV_NONFINITE,
    "nan k": S.KV_NONFINITE | S.NONFINITE_SCORES,
}


@pytest.fixture(autouse=True)
def no_interpreter(monkeypatch):
    """CPU tensors take the C and torch paths unless a test asks for the interpreter (fixture below)."""
    monkeypatch.delenv("TRITON_INTERPRET", raising=False)


@pytest.fixture
def interpreter(no_interpreter):
    pytest.importorskip("triton", reason="triton is not installed: the Triton path is untestable")
    with pytest.MonkeyPatch.context() as mp:
        mp.setenv("TRITON_INTERPRET", "1")
        yield


def _status(path_name, q, k, v, mask, params=None):
    """The status word gag_attention reads when ``path_name`` serves the call (the path must take it)."""
    params = params or GagParams(strength=0.0 if path_name == "stock" else 1.0)
    path = A._BY_NAME[path_name]
    scores_shape = A._check_inputs(q, k, v, mask)
    call = A._Call(q, k, v, mask, params, scores_shape, params.beta(q.shape[-1]), False)
    with torch.no_grad():
        assert path.takes(call), f"{path_name} does not take this call"
        assert A._pick(call).name == path_name  # and it is the path gag_attention picks
        _, status, _ = A._forward(call, path, checks=True)
    return Status(int(status))


@pytest.mark.parametrize("condition", list(EXPECTED))
@pytest.mark.parametrize("path_name", ["torch", "stock", "chunked C", "one-call C", "triton"])
def test_every_path_reports_each_condition_with_the_same_bit(request, path_name, condition):
    if path_name in ("chunked C", "one-call C") and _kernel.load() is None:
        pytest.skip("no C compiler: the C paths do not exist here")
    if path_name == "triton":
        request.getfixturevalue("interpreter")
    dtype = PATH_DTYPES[path_name]
    q, k, v, mask = _case(condition, dtype)
    if path_name == "torch":
        q.requires_grad_(True)  # autograd: only the torch path takes it
        with torch.enable_grad():
            scores_shape = A._check_inputs(q, k, v, mask)
            params = GagParams()
            call = A._Call(q, k, v, mask, params, scores_shape, params.beta(8), False)
            assert A._pick(call).name == "torch"
            _, status, _ = A._forward(call, A._BY_NAME["torch"], checks=True)
        got = Status(int(status))
    else:
        got = _status(path_name, q, k, v, mask)
    assert got == EXPECTED[condition], f"{path_name}, {condition}: {got!r}"
    # and gag_attention turns any error bit into a ValueError naming the problem
    if EXPECTED[condition]:
        with pytest.raises(ValueError):
            gag_attention(q, k, v, mask=mask, strength=0.0 if path_name == "stock" else 1.0)


@needs_kernel
def test_iteration_limit_bit_in_the_c_kernels():
    q, k, v, _ = _case("good", torch.float32)
    q = q * 4
    with _kernel.iteration_limit(1):
        _, flags = fused.attention_forward(q, k, v, None, torch.Size([1, 2]), 8**-0.5, GagParams())
        assert flags & Status.ITER_LIMIT and not flags & ~Status.ITER_LIMIT
        z = torch.randn(6, 40, dtype=torch.float64) * 4
        _, flags = fused.dual_normalize(z, 1.5)
        assert flags == Status.ITER_LIMIT
        # the paths that hit it recompute exactly: gag_attention's word no longer holds it
        assert _status("one-call C", q, k, v, None) == Status.OK
        assert _status("chunked C", q.double(), k.double(), v.double(), None) == Status.OK


def test_iteration_limit_bit_in_triton(interpreter, monkeypatch):
    from hopfield_gag.ops import triton_attention as ta

    q, k, v, _ = _case("good", torch.float32)
    monkeypatch.setattr(ta, "_MAXIT", 1)
    scores_shape = A._check_inputs(q, k, v, None)
    _, _, status = ta.launch(q * 4, k, v, None, scores_shape, 8**-0.5, GagParams())
    assert int(status) == Status.ITER_LIMIT
    # not an error: the Triton path keeps the bracketed iterate (module docstring)
    ta.fused_forward(q * 4, k, v, None, scores_shape, 8**-0.5, GagParams())


# ------------------------------------------------------------------------------------------ one definition


def test_codes_are_distinct_powers_of_two():
    bits = [int(s) for s in Status if s]
    assert all(b & (b - 1) == 0 for b in bits) and len(set(bits)) == len(bits)
    assert [m.name.lower() for m in codes.Method] == list(codes.METHOD_NAMES)


def test_c_sources_take_the_codes_from_codes_py():
    defines = dict(d[2:].split("=") for d in codes.c_defines())
    assert defines["HG_STATUS_KV_NONFINITE"] == str(int(Status.KV_NONFINITE))
    assert defines["HG_METHOD_AA"] == str(int(codes.Method.AA))
    assert set(_kernel._DEFINES) == set(codes.c_defines())
    for name in ("entmax_rows.c", "gag_forward.c"):
        src = (OPS / name).read_text()
        # no status literal: flags are OR-ed and compared only through HG_STATUS_* names
        assert not re.search(r"(flags|status|st)\s*(\|=|&)\s*\d", src), name
        assert not re.search(r"method\s*==\s*\d", src), name
        assert not re.search(r"kind\s*==\s*\d", src), name
    for name in ("_triton_kernel.py", "triton_attention.py", "fused.py"):
        src = (OPS / name).read_text()
        assert not re.search(r"\b(METHOD|KIND)\s*==\s*\d", src), name
        assert not re.search(r"status\s*&\s*\(?\d", src), name


def test_kernel_cache_key_covers_both_sources_and_the_codes(monkeypatch):
    key = _kernel._build_key()
    monkeypatch.setattr(_kernel, "_DEFINES", _kernel._DEFINES + ("-DHG_STATUS_EXTRA=32",))
    assert _kernel._build_key() != key
    monkeypatch.undo()
    assert _kernel._build_key() == key
    assert [p.name for p in _kernel._SOURCES] == ["entmax_rows.c", "gag_forward.c"]
