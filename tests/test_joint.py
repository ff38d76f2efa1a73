"""hopfield_gag.guidance.joint: the mass-preserving guidance of joint (MMDiT) attention, without diffusers.

The rule is pure torch, so it is tested here on its own: against an explicit float64 weight matrix (the
row [m((1-l) softmax + l entmax)(z_T), softmax(z)_I] for pladis), for both token orders ([text, image] as
in Flux/Qwen, [image, text] as in SD3), with padded prompts; strength is linear and 0 returns ``dense``
itself; the text mass is the dense row's text share, whatever the chunking. float64 tolerances: 1e-12 for
sums of <= 40 terms of magnitude <= ~10 (a few hundred ulps of 2^-52).
"""
from __future__ import annotations

import torch
import torch.nn.functional as F
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from hopfield_gag import entmax
from hopfield_gag.guidance.joint import joint_text_guidance, text_mass

F64 = torch.float64


def _problem(seed, b, h, lt, li, d, text_first, pad):
    g = torch.Generator().manual_seed(seed)
    n = lt + li
    q, k, v = (torch.randn(b, h, n, d, generator=g, dtype=F64) * 2 for _ in range(3))
    text = slice(0, lt) if text_first else slice(li, n)
    img = slice(lt, n) if text_first else slice(0, li)
    mask = torch.ones(b, 1, 1, n, dtype=torch.bool)
    if pad:  # the last text keys of the last prompt are padding (at least one text key stays)
        mask[-1, ..., text.start + 1:text.stop] = False
    return q, k, v, text, img, mask


@settings(max_examples=10, deadline=None)
@given(seed=st.integers(0, 2**31 - 1), b=st.integers(1, 2), h=st.integers(1, 3), lt=st.integers(1, 6),
       li=st.integers(1, 8), d=st.integers(1, 6), text_first=st.booleans(), pad=st.booleans(),
       lam=st.floats(0.0, 4.0))
def test_pladis_in_a_joint_layer_is_the_explicit_mass_preserving_row(seed, b, h, lt, li, d, text_first, pad, lam):
    q, k, v, text, img, mask = _problem(seed, b, h, lt, li, d, text_first, pad)
    dense = F.scaled_dot_product_attention(q, k, v, attn_mask=mask)
    out = joint_text_guidance(q, k, v, dense, text_keys=text, image_queries=img, mask=mask, method="pladis", lam=lam)
    z = (q @ k.transpose(-1, -2)) / d**0.5
    z = z.masked_fill(~mask, float("-inf"))
    p = torch.softmax(z, -1)
    m = p[..., text].sum(-1, keepdim=True)
    zt = z[..., text]
    w = p.clone()
    w[..., text] = m * ((1 - lam) * torch.softmax(zt, -1) + lam * entmax(zt, 1.5))
    torch.testing.assert_close(w.sum(-1), torch.ones_like(m.squeeze(-1)), rtol=0, atol=1e-12)  # mass kept
    expect = w @ v
    torch.testing.assert_close(out[..., img, :], expect[..., img, :], rtol=0, atol=1e-12 * (1 + lam))
    assert torch.equal(out[..., text, :], dense[..., text, :])  # text queries stay dense
    torch.testing.assert_close(text_mass(q, k, text, mask=mask), m.squeeze(-1), rtol=0, atol=1e-12)


@settings(max_examples=6, deadline=None)
@given(seed=st.integers(0, 2**31 - 1), t=st.floats(0.0, 3.0), method=st.sampled_from(["gag", "pladis", "aa"]))
def test_strength_scales_the_correction_and_zero_returns_dense_itself(seed, t, method):
    q, k, v, text, img, mask = _problem(seed, 1, 2, 4, 6, 4, False, False)
    dense = F.scaled_dot_product_attention(q, k, v)
    kw = dict(text_keys=text, image_queries=img, method=method)
    assert joint_text_guidance(q, k, v, dense, strength=0.0, **kw) is dense
    one = joint_text_guidance(q, k, v, dense, strength=1.0, **kw)
    got = joint_text_guidance(q, k, v, dense, strength=t, **kw)
    torch.testing.assert_close(got, dense + t * (one - dense), rtol=1e-10, atol=1e-10 * (1 + t))
    assert joint_text_guidance(q, k, v, dense, **{**kw, "method": "dense"}) is dense


def test_text_mass_does_not_depend_on_the_chunking():
    q, k, v, text, img, mask = _problem(3, 2, 2, 5, 9, 4, True, True)
    whole = text_mass(q, k, text, mask=mask)
    chunked = text_mass(q, k, text, mask=mask, memory_budget=2 * 2 * 14 * 8 * 2)  # one query row per chunk
    torch.testing.assert_close(chunked, whole, rtol=0, atol=1e-15)
    assert bool(((whole >= 0) & (whole <= 1)).all())


def test_bad_inputs_raise():
    q, k, v = (torch.randn(1, 1, 6, 4) for _ in range(3))
    dense = torch.zeros(1, 1, 6, 4)
    kw = dict(text_keys=slice(0, 2), image_queries=slice(2, 6))
    bad = k.clone()
    bad[..., 0, 0] = float("nan")
    with pytest.raises(ValueError, match="finite|NaN"):
        joint_text_guidance(q, bad, v, dense, **kw)
    with pytest.raises(ValueError, match="does not match"):
        joint_text_guidance(q, k, v, dense, mask=torch.ones(5, 6, dtype=torch.bool), **kw)
    rows = torch.ones(6, 6, dtype=torch.bool)
    rows[3, :2] = False  # image query 3 sees no text key: its text block has no distribution
    with pytest.raises(ValueError, match="fully masked"):
        joint_text_guidance(q, k, v, dense, mask=rows, **kw)
    with pytest.raises(ValueError, match="lam"):
        joint_text_guidance(q, k, v, dense, lam=-1.0, **kw)
