"""diffusers adapters, part 1: the installer, the joint rule and UNet models (SD1.5- and SDXL-style).

Tiny random-weight configs from diffusers' own tests (ecosystem.md section 5), CPU, offline.
Exactness claims use torch.equal (the off switch must be bit-identical); the joint-rule check compares the
fp64 op against an explicit fp64 weight matrix at 1e-12 (a few hundred ulps of 2**-52 for sums of <= 32
terms of magnitude <= 10).
"""
import pytest
import torch

diffusers = pytest.importorskip("diffusers")

from diffusers import UNet2DConditionModel  # noqa: E402

from hopfield_gag import entmax  # noqa: E402
from hopfield_gag.adapters import (  # noqa: E402
    AttentionCall,
    apply_gag,
    install_attention_fn,
    list_attention_layers,
)
from hopfield_gag.adapters.processors import ADAPTERS  # noqa: E402
from hopfield_gag.guidance.joint import joint_text_guidance, text_mass  # noqa: E402
from _tiny_configs import SD15_UNET, SDXL_UNET  # noqa: E402


def _seeded(cls, cfg, seed=0):
    torch.manual_seed(seed)
    return cls(**cfg).eval()


@pytest.fixture(scope="module")
def sd15():
    unet = _seeded(UNet2DConditionModel, SD15_UNET)
    g = torch.Generator().manual_seed(1)
    inputs = dict(sample=torch.randn(2, 4, 8, 8, generator=g), timestep=torch.tensor([10]),
                  encoder_hidden_states=torch.randn(2, 4, 8, generator=g))
    return unet, inputs


@pytest.fixture(scope="module")
def sdxl():
    unet = _seeded(UNet2DConditionModel, SDXL_UNET)
    g = torch.Generator().manual_seed(2)
    inputs = dict(sample=torch.randn(2, 4, 8, 8, generator=g), timestep=torch.tensor([10]),
                  encoder_hidden_states=torch.randn(2, 7, 64, generator=g),
                  added_cond_kwargs={"text_embeds": torch.randn(2, 32, generator=g), "time_ids": torch.randn(2, 6, generator=g)})
    return unet, inputs


def _out(model, inputs):
    with torch.no_grad():
        return model(**inputs)[0]


def _processors(model):
    return {n: m.processor for n, m in model.named_modules() if hasattr(m, "set_processor")}


# ------------------------------------------------------------------------------------------------ the joint rule


def test_joint_rule_pladis_equals_explicit_mass_preserving_row():
    """pladis in a joint layer = the row [m((1-l) softmax + l entmax)(z_T), softmax(z)_I] times v."""
    g = torch.Generator().manual_seed(0)
    B, H, Lt, Li, D = 2, 3, 5, 7, 4
    q, k, v = (torch.randn(B, H, Lt + Li, D, generator=g, dtype=torch.float64) * 2 for _ in range(3))
    text, img = slice(0, Lt), slice(Lt, Lt + Li)  # Flux/Qwen order [text, image]
    mask = torch.ones(B, 1, 1, Lt + Li, dtype=torch.bool)
    mask[1, ..., 3:Lt] = False  # a padded prompt
    dense = torch.nn.functional.scaled_dot_product_attention(q, k, v, attn_mask=mask)
    lam = 2.0
    out = joint_text_guidance(q, k, v, dense, text_keys=text, image_queries=img, mask=mask, method="pladis", lam=lam)

    z = (q @ k.transpose(-1, -2)) / D**0.5
    z = z.masked_fill(~mask, float("-inf"))
    p = torch.softmax(z, -1)
    m = p[..., text].sum(-1, keepdim=True)
    zt = z[..., text]
    block = m * ((1 - lam) * torch.softmax(zt, -1) + lam * entmax(zt, 1.5))
    w = torch.cat([block, p[..., img]], -1)
    expect = w @ v
    assert torch.allclose(w.sum(-1), torch.ones(()).double(), atol=1e-12)  # mass preserved
    assert torch.allclose(out[..., img, :], expect[..., img, :], atol=1e-12, rtol=0)
    assert torch.equal(out[..., text, :], dense[..., text, :])  # text queries stay dense
    assert torch.allclose(text_mass(q, k, text, mask=mask), m.squeeze(-1), atol=1e-12)
    # padded text keys receive no weight: changing their values changes nothing
    v2 = v.clone()
    v2[1, :, 3:Lt] += 100.0
    dense2 = torch.nn.functional.scaled_dot_product_attention(q, k, v2, attn_mask=mask)
    out2 = joint_text_guidance(q, k, v2, dense2, text_keys=text, image_queries=img, mask=mask, method="pladis", lam=lam)
    assert torch.allclose(out2, out, atol=1e-12)


def test_joint_rule_strength_zero_is_dense_and_gag_is_finite():
    g = torch.Generator().manual_seed(1)
    q, k, v = (torch.randn(1, 2, 12, 8, generator=g) for _ in range(3))
    dense = torch.nn.functional.scaled_dot_product_attention(q, k, v)
    kw = dict(text_keys=slice(8, 12), image_queries=slice(0, 8))  # SD3 order [image, text]
    assert joint_text_guidance(q, k, v, dense, strength=0.0, **kw) is dense
    out = joint_text_guidance(q, k, v, dense, method="gag", lam=10.0, **kw)
    assert torch.isfinite(out).all() and not torch.equal(out, dense)
    assert torch.equal(out[..., 8:, :], dense[..., 8:, :])


def test_joint_rule_raises_on_nonfinite_scores():
    q, k, v = (torch.randn(1, 1, 6, 4) for _ in range(3))
    k[..., 0, 0] = float("nan")
    dense = torch.zeros(1, 1, 6, 4)
    with pytest.raises(ValueError, match="finite|NaN"):
        joint_text_guidance(q, k, v, dense, text_keys=slice(0, 2), image_queries=slice(2, 6))


# ------------------------------------------------------------------------------------------------ UNet models


@pytest.mark.parametrize("which", ["sd15", "sdxl"])
def test_unet_dense_is_bit_identical_and_gag_changes(which, request):
    unet, inputs = request.getfixturevalue(which)
    ref = _out(unet, inputs)
    before = _processors(unet)
    n_cross = sum(1 for i in list_attention_layers(unet) if i.kind == "cross" and not i.name.startswith("mid_block"))
    for off in (dict(method="dense"), dict(strength=0.0)):
        with apply_gag(unet, **off) as h:
            assert torch.equal(_out(unet, inputs), ref), off
    with apply_gag(unet, method="gag", lam=10.0) as h:
        after = _processors(unet)
        touched = [n for n in before if after[n] is not before[n]]
        assert touched == h.layers and len(touched) == n_cross > 0
        assert all(isinstance(after[n], tuple(ADAPTERS.values())) for n in touched)
        assert all(n.endswith("attn2") and not n.startswith("mid_block") for n in touched)
        out = _out(unet, inputs)
    assert torch.isfinite(out).all() and not torch.equal(out, ref)
    assert all(after is before[n] for n, after in _processors(unet).items())
    assert torch.equal(_out(unet, inputs), ref)


def test_pladis_on_unet_matches_its_formula_per_layer(sd15):
    """The call the function sees is the stock kernel's input: pladis = dense + lam (sparse - dense)."""
    unet, inputs = sd15
    seen = []

    def fn(call: AttentionCall):
        d = call.dense()
        assert torch.equal(d, torch.nn.functional.scaled_dot_product_attention(call.q, call.k, call.v, attn_mask=call.mask))
        s = torch.softmax((call.q @ call.k.transpose(-1, -2)) / call.q.shape[-1] ** 0.5, -1)
        assert torch.allclose(s @ call.v, d, atol=1e-6)  # fp32: ~8 ulps of 2**-23 over 4 keys
        seen.append((call.layer, call.kind, call.text_keys, tuple(call.q.shape), tuple(call.k.shape)))
        return d

    with install_attention_fn(unet, fn, layers=r".*attn\d") as h:
        _out(unet, inputs)
    assert len(seen) == len(h.layers) == 8
    kinds = {layer: kind for layer, kind, *_ in seen}
    assert {k for n, k in kinds.items() if n.endswith("attn2")} == {"cross"}
    assert {k for n, k in kinds.items() if n.endswith("attn1")} == {"self"}
    for layer, kind, text_keys, qs, ks in seen:
        assert (text_keys == slice(0, ks[2])) if kind == "cross" else text_keys is None


# ------------------------------------------------------------------------------------------------ handle


def test_remove_and_context_manager_restore_originals_even_after_exception(sd15):
    unet, inputs = sd15
    before = _processors(unet)
    h = apply_gag(unet)
    assert any(_processors(unet)[n] is not before[n] for n in before)
    h.remove()
    h.remove()  # idempotent
    assert all(p is before[n] for n, p in _processors(unet).items())
    with pytest.raises(KeyError):
        with apply_gag(unet, layers="up_blocks"):
            raise KeyError("boom")
    assert all(p is before[n] for n, p in _processors(unet).items())
    with pytest.raises(ValueError, match="finite|NaN"):  # a non-finite score row raises inside the model
        with apply_gag(unet):
            bad = dict(inputs, encoder_hidden_states=inputs["encoder_hidden_states"].clone())
            bad["encoder_hidden_states"][0, 0, 0] = float("inf")
            _out(unet, bad)
    assert all(p is before[n] for n, p in _processors(unet).items())
    assert not hasattr(unet, "_diffusers_hook") or "hopfield_gag_state" not in unet._diffusers_hook.hooks


def test_applying_twice_is_an_error(sd15):
    unet, _ = sd15
    with apply_gag(unet):
        with pytest.raises(RuntimeError, match="already has an attention function"):
            apply_gag(unet, method="pladis")
    apply_gag(unet).remove()  # after removal it can be applied again


def test_layer_selection(sd15):
    unet, _ = sd15
    sel = lambda layers, **kw: install_attention_fn(unet, lambda c: c.dense(), layers, **kw)  # noqa: E731
    info = {i.name: i for i in list_attention_layers(unet)}
    a2 = info["down_blocks.0.attentions.0.transformer_blocks.0.attn2"]
    assert (a2.kind, a2.processor, a2.supported, a2.heads, a2.head_dim, a2.query_dim, a2.key_dim) == \
        ("cross", "AttnProcessor2_0", True, 2, 2, 4, 8)
    assert info["mid_block.attentions.0.transformer_blocks.0.attn1"].kind == "self"
    with sel("down_blocks") as h:
        assert h.layers == ["down_blocks.0.attentions.0.transformer_blocks.0.attn1",
                            "down_blocks.0.attentions.0.transformer_blocks.0.attn2"]
    with sel("up_blocks.1.attentions.1.transformer_blocks.0.attn2.processor") as h:
        assert h.layers == ["up_blocks.1.attentions.1.transformer_blocks.0.attn2"]
    with sel(lambda name, m: name.startswith("mid_block")) as h:
        assert len(h.layers) == 2
    with sel(["mid_block", r"up_blocks\.1\.attentions\.0.*"], kinds=("cross",)) as h:
        assert h.layers == ["up_blocks.1.attentions.0.transformer_blocks.0.attn2",
                            "mid_block.attentions.0.transformer_blocks.0.attn2"]
    with pytest.raises(ValueError, match="close matches.*up_blocks.1"):
        sel("up_blocks.10")  # dot-bounded: blocks.1 never matches blocks.10 and vice versa
    with pytest.raises(ValueError, match="transformer_blocks"):
        sel(0)  # a UNet has no top-level transformer_blocks
    with pytest.raises(ValueError, match="kind.*self"):
        apply_gag(unet, layers="down_blocks.0.attentions.0.transformer_blocks.0.attn1")
    with pytest.raises(TypeError, match="layers"):
        sel(3.5)
    assert not hasattr(unet, "_hopfield_gag_handle")


def test_unknown_architecture_and_processor_are_named():
    from diffusers import DiTTransformer2DModel
    from diffusers.models.attention_processor import AttnProcessor

    dit = _seeded(DiTTransformer2DModel, dict(in_channels=4, out_channels=8, activation_fn="gelu-approximate",
                                              num_attention_heads=2, attention_head_dim=4, attention_bias=True,
                                              num_layers=1, norm_type="ada_norm_zero", num_embeds_ada_norm=8,
                                              patch_size=2, sample_size=8))
    with pytest.raises(ValueError, match="DiTTransformer2DModel"):
        apply_gag(dit)
    unet = _seeded(UNet2DConditionModel, SD15_UNET)
    unet.set_attn_processor(AttnProcessor())
    with pytest.raises(ValueError, match="AttnProcessor'?\\].*via='hooks'"):
        install_attention_fn(unet, lambda c: c.dense(), via="processors")
    # via="auto" reaches it through the hook path, which refuses at the first call: AttnProcessor computes
    # attention with bmm, not scaled_dot_product_attention, so nothing could be guided
    g = torch.Generator().manual_seed(0)
    with install_attention_fn(unet, lambda c: c.dense()) as h:
        assert set(h.paths.values()) == {"hooks"}
        with pytest.raises(RuntimeError, match="made no torch.nn.functional.scaled_dot_product_attention call"):
            _out(unet, dict(sample=torch.randn(1, 4, 8, 8, generator=g), timestep=torch.tensor([10]),
                            encoder_hidden_states=torch.randn(1, 4, 8, generator=g)))
    with pytest.raises(TypeError, match="pipeline"):
        apply_gag(object())


def test_processor_signatures_match_stock():
    """Attention.forward drops kwargs the processor does not declare: the adapters must declare the same."""
    import inspect

    for stock, adapted in ADAPTERS.items():
        assert list(inspect.signature(stock.__call__).parameters) == list(inspect.signature(adapted.__call__).parameters)


def test_parameters_change_without_reinstall_or_recompile(sd15):
    """handle.update(lam=...) changes the output of a torch.compile'd attention module without recompiling."""
    from torch._dynamo.testing import CompileCounter

    unet, inputs = sd15
    torch._dynamo.reset()
    with apply_gag(unet, layers="up_blocks.1.attentions.0.transformer_blocks.0.attn2", lam=2.0, method="pladis") as h:
        attn = unet.get_submodule(h.layers[0])
        proc = attn.processor
        cnt = CompileCounter()
        compiled = torch.compile(attn, backend=cnt)
        x, ehs = torch.randn(2, 64, 4), torch.randn(2, 4, 8)
        with torch.no_grad():
            a = compiled(x, encoder_hidden_states=ehs)
            frames = cnt.frame_count
            h.update(lam=4.0)
            b = compiled(x, encoder_hidden_states=ehs)
            h.update(strength=0.0)
            c = compiled(x, encoder_hidden_states=ehs)
        assert frames >= 1 and cnt.frame_count == frames, (frames, cnt.frame_count)
        assert attn.processor is proc
        assert not torch.equal(a, b)
    with torch.no_grad():
        assert torch.equal(c, attn(x, encoder_hidden_states=ehs))
    torch._dynamo.reset()


def test_bad_parameters_are_rejected_and_leave_state_unchanged(sd15):
    unet, _ = sd15
    for bad, match in [(dict(lam=-1.0), "lam"), (dict(method="nope"), "method"), (dict(steps=(0.5, 0.2)), "steps"),
                       (dict(branches="uncond"), "branches"), (dict(alpha=1.0), "alpha")]:
        with pytest.raises(ValueError, match=match):
            apply_gag(unet, **bad)
    with apply_gag(unet, lam=3.0) as h:
        with pytest.raises(ValueError, match="eta"):
            h.update(eta=0.0, lam=5.0)
        assert h.fn.lam == 3.0 and h.fn.eta == 15.0
        with pytest.raises(TypeError, match="unknown"):
            h.update(lamda=1.0)


def test_step_and_sigma_windows_on_a_bare_model(sd15):
    """Without a pipeline the step is set by hand (state.set_step or the pipeline callback)."""
    unet, inputs = sd15
    ref = _out(unet, inputs)
    with apply_gag(unet, steps=(0.5, 1.0)) as h:
        with pytest.raises(RuntimeError, match="needs the denoising step"):
            _out(unet, inputs)
        h.state.set_step(0, 4)
        assert torch.equal(_out(unet, inputs), ref)  # outside the window: stock output
        h.step_callback(None, 1, None, {})  # end of step 1 -> step 2 of 4 = 0.5: inside
        assert h.state.step == 2 and not torch.equal(_out(unet, inputs), ref)
        with pytest.raises(ValueError, match="num_steps"):
            h.state.set_step(3, 2)
    with apply_gag(unet, sigmas=(0.5, 2.0)) as h:
        h.state.sigma = 3.0
        assert torch.equal(_out(unet, inputs), ref)
        h.state.sigma = 1.0
        assert not torch.equal(_out(unet, inputs), ref)


def test_a_function_returning_the_wrong_shape_is_named(sd15):
    unet, inputs = sd15
    with install_attention_fn(unet, lambda c: c.dense()[..., :1, :], layers="mid_block"):
        with pytest.raises(ValueError, match="mid_block.*expected a tensor"):
            _out(unet, inputs)


def test_one_sided_rule_reaches_gag_attention(sd15, monkeypatch):
    """parallel="positive" is passed through to gag_attention: every guided call's output equals
    gag_attention(..., parallel="positive") on the recorded inputs, and differs from the paper's rule where
    some token has c < 0; a bad value is rejected by name."""
    from hopfield_gag import gag_attention

    unet, inputs = sd15
    seen = []

    def spy(call):
        seen.append((call.q, call.k, call.v, call.mask, call.scale))
        return call.dense()

    with install_attention_fn(unet, spy):
        _out(unet, inputs)
    assert seen
    # values made non-centred so that c < 0 occurs (THEORY.md T5: c >= 0 can fail for non-centred values)
    q, k, v, mask, scale = seen[0]
    v_shift = v + 3.0 * v.abs().amax()
    paper = gag_attention(q, k, v_shift, mask=mask, scale=scale, lam=10.0)
    positive = gag_attention(q, k, v_shift, mask=mask, scale=scale, lam=10.0, parallel="positive")
    _, parts = gag_attention(q, k, v_shift, mask=mask, scale=scale, lam=10.0, return_parts=True)
    assert bool((parts.parallel_coef < 0).any()) == (not torch.equal(paper, positive))

    import hopfield_gag.adapters.gag as adapter_gag

    rules = []
    real = adapter_gag.gag_attention

    def recording(*args, **kw):
        rules.append(kw.get("parallel"))
        return real(*args, **kw)

    monkeypatch.setattr(adapter_gag, "gag_attention", recording)
    with apply_gag(unet, lam=10.0, parallel="positive") as h:
        assert h.fn.parallel == "positive"
        guided = _out(unet, inputs)
    assert rules and set(rules) == {"positive"} and torch.isfinite(guided).all()
    rules.clear()
    with apply_gag(unet, lam=10.0):
        _out(unet, inputs)
    assert rules and set(rules) == {"paper"}
    with pytest.raises(ValueError, match="parallel"):
        apply_gag(unet, parallel="both")
