"""The argument-check helpers of hopfield_gag._validation that re-implement a torch utility for speed."""
from __future__ import annotations

import pytest
import torch
from hypothesis import given
from hypothesis import strategies as st

from hopfield_gag._validation import broadcast_shapes

dims = st.lists(st.sampled_from([0, 1, 2, 3]), max_size=4).map(tuple)


@given(st.lists(dims, min_size=1, max_size=4))
def test_broadcast_shapes_agrees_with_torch(shapes):
    try:
        want = torch.broadcast_shapes(*shapes)
    except RuntimeError:
        with pytest.raises(RuntimeError):
            broadcast_shapes(*shapes)
        return
    assert broadcast_shapes(*shapes) == want


# ------------------------------------------------------------------ scalars and GagParams (issue 21 item 9)

import dataclasses  # noqa: E402
import math  # noqa: E402

import numpy as np  # noqa: E402

import hopfield_gag as H  # noqa: E402
from hopfield_gag._validation import check_scalar  # noqa: E402
from hopfield_gag.ops.params import PARAM_NAMES, GagParams  # noqa: E402

NOT_REAL = ["10", True, False, np.bool_(True), 1 + 2j, None, [1.0], torch.tensor(True), b"1"]


@pytest.mark.parametrize("value", NOT_REAL, ids=repr)
def test_check_scalar_rejects_non_real_values(value):
    with pytest.raises((TypeError, ValueError), match="lam must be"):
        check_scalar("lam", value)


@given(st.one_of(st.integers(-10**6, 10**6), st.floats(allow_nan=False, allow_infinity=False)))
def test_check_scalar_accepts_real_numbers_of_every_kind(x):
    for value in (x, np.float64(x), torch.tensor(float(x), dtype=torch.float64)):
        assert check_scalar("x", value) == float(x)


def _qkv():
    g = torch.Generator().manual_seed(0)
    return torch.randn(1, 1, 3, 4, generator=g), torch.randn(1, 1, 5, 4, generator=g), torch.randn(1, 1, 5, 4, generator=g)


@pytest.mark.parametrize("name,value", [("lam", "10"), ("lam", True), ("eta", "15"), ("zeta", False), ("alpha", True),
                                        ("strength", "1"), ("scale", True), ("aa_range", (0, True)),
                                        ("aa_range", "03")])
def test_every_public_entry_rejects_str_and_bool_options(name, value):
    q, k, v = _qkv()
    entries = [
        lambda: H.gag_attention(q, k, v, **{name: value}),
        lambda: H.reference_gag_attention(q, k, v, **{name: value}),
        lambda: H.GAGAttention(**{name: value}),
        lambda: GagParams(**{name: value}),
    ]
    for entry in entries:
        with pytest.raises((TypeError, ValueError), match=name.split("[")[0]):
            entry()


@pytest.mark.parametrize("budget", [0, -1, 1.5, True, "256"])
def test_memory_budget_must_be_a_positive_int(budget):
    q, k, v = _qkv()
    with pytest.raises(ValueError, match="memory_budget must be an int >= 1"):
        H.gag_attention(q, k, v, memory_budget=budget)


def test_scalar_checks_elsewhere_use_the_same_rule():
    x = torch.randn(3, 5)
    with pytest.raises(TypeError, match="alpha must be a real number"):
        H.entmax(x, alpha=True)
    with pytest.raises(TypeError, match="alpha must be a real number"):
        H.normalize(x, alpha="1.5")
    with pytest.raises(TypeError, match="lam must be a real number"):
        H.gag_output(x, x, "10", 15.0)


def test_gag_params_defaults_validation_and_replace():
    p = GagParams()
    assert (p.method, p.lam, p.eta, p.zeta, p.alpha, p.strength, p.parallel, p.aa_range, p.scale) == (
        "gag", 10.0, 15.0, 0.0, 1.5, 1.0, "paper", (0.0, 3.0), None)
    with pytest.raises(dataclasses.FrozenInstanceError):
        p.lam = 3.0
    r = p.replace(lam=np.float32(2), aa_range=[0, 1])
    assert r.lam == 2.0 and type(r.lam) is float and r.aa_range == (0.0, 1.0) and p.lam == 10.0
    for bad in (dict(lam=-1), dict(eta=0), dict(zeta=1.5), dict(alpha=1.0), dict(strength=-0.1), dict(scale=0),
                dict(aa_range=(3, 0)), dict(aa_range=(0, 1, 2)), dict(chunk_size=0), dict(method="nope"),
                dict(parallel="both"), dict(lam=math.inf)):
        with pytest.raises(ValueError, match=next(iter(bad))):
            p.replace(**bad)
    assert GagParams.from_kwargs(lam=None).lam == 10.0  # None = the default (adapters pass it so)
    assert GagParams.from_kwargs(eta=None).eta is None and GagParams().replace(eta=None).eta_value == math.inf
    with pytest.raises(TypeError, match="unknown guidance parameter"):
        GagParams.from_kwargs(lamda=3.0)
    assert set(PARAM_NAMES) >= {"method", "lam", "eta", "zeta", "alpha", "strength", "parallel", "aa_range", "scale"}


def test_params_object_and_keywords_give_the_same_call():
    q, k, v = _qkv()
    p = GagParams(method="pladis", lam=2.0, alpha=2.0, strength=0.7)
    want = H.gag_attention(q, k, v, method="pladis", lam=2.0, alpha=2.0, strength=0.7)
    assert torch.equal(H.gag_attention(q, k, v, params=p), want)
    assert torch.equal(H.gag_attention(q, k, v, params=p.replace(lam=5.0), lam=2.0), want)  # keywords win
    assert torch.equal(H.GAGAttention(p)(q, k, v), want)
    assert torch.equal(H.reference_gag_attention(q, k, v, params=p), H.reference_gag_attention(q, k, v, **{
        "method": "pladis", "lam": 2.0, "alpha": 2.0, "strength": 0.7}))
    # the theory's gag_output takes the same object (its method is not read: it is the gag rule)
    d, s = q[0, 0].double(), v[0, 0, :3].double()
    g = GagParams(lam=3.0, eta=0.5, zeta=0.3, parallel="positive")
    assert torch.equal(H.gag_output(d, s, params=g), H.gag_output(d, s, 3.0, 0.5, 0.3, "positive"))
    with pytest.raises(TypeError, match="either params or"):
        H.gag_output(d, s, 3.0, params=g)


def test_eta_none_is_the_uncapped_rule_on_every_path():
    q, k, v = _qkv()
    q = q * 3
    with torch.no_grad():
        fused_out = H.gag_attention(q, k, v, eta=None, lam=50.0)
    torch_out = H.gag_attention(q.requires_grad_(), k, v, eta=None, lam=50.0)
    ref = H.reference_gag_attention(q.detach().double(), k.double(), v.double(), eta=None, lam=50.0)
    huge = H.gag_attention(q.detach().double(), k.double(), v.double(), eta=1e300, lam=50.0)
    torch.testing.assert_close(huge, ref, rtol=1e-10, atol=1e-10)
    torch.testing.assert_close(fused_out.double(), ref, rtol=1e-4, atol=1e-4)
    torch.testing.assert_close(torch_out.detach().double(), ref, rtol=1e-4, atol=1e-4)
