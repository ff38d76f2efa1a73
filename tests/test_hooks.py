"""The hook path (adapters/hooks.py): a diffusers ModelHook per attention module intercepting the kernel call.

- On the four architectures with processor copies (UNet, SD3/SD3.5, Flux, Qwen-Image) the hook path sees the
  same calls (kind, key partition, q/k/v) and gives the processor path's output. The two paths hand *the same*
  q, k, v values to the same op, but laid out differently in memory (e.g. Flux: a transpose view vs diffusers'
  permute), so the guided outputs agree to fp32 rounding: 2e-5 absolute on outputs of size O(1) after a few
  layers (~100 ulps of 2**-23); strength 0 is bit-identical (torch.equal).
- Models the processors never reached, built from config: PixArt-alpha, Sana, Wan, LTX-Video.
- An IP-Adapter processor stays installed and is guided; flash/xformers/linear attention are refused by name.
"""
import pytest
import torch

pytest.importorskip("diffusers")

from diffusers import (  # noqa: E402
    FluxTransformer2DModel,
    LTXVideoTransformer3DModel,
    PixArtTransformer2DModel,
    QwenImageTransformer2DModel,
    SanaTransformer2DModel,
    SD3Transformer2DModel,
    UNet2DConditionModel,
    WanTransformer3DModel,
)

from hopfield_gag.adapters import install_attention_fn, installed, list_attention_layers  # noqa: E402
from hopfield_gag.adapters.gag import GuidedAttention  # noqa: E402
from _tiny_configs import SD15_UNET, SD3, SD35, FLUX, QWEN  # noqa: E402

PIXART = dict(sample_size=8, num_layers=2, patch_size=2, attention_head_dim=8, num_attention_heads=3, caption_channels=32,
              in_channels=4, cross_attention_dim=24, out_channels=8, attention_bias=True, activation_fn="gelu-approximate",
              num_embeds_ada_norm=1000, norm_type="ada_norm_single", norm_elementwise_affine=False, norm_eps=1e-6)
SANA = dict(patch_size=1, in_channels=4, out_channels=4, num_layers=1, num_attention_heads=2, attention_head_dim=4,
            num_cross_attention_heads=2, cross_attention_head_dim=4, cross_attention_dim=8, caption_channels=8,
            sample_size=32)
WAN = dict(patch_size=(1, 2, 2), num_attention_heads=2, attention_head_dim=12, in_channels=4, out_channels=4, text_dim=16,
           freq_dim=256, ffn_dim=32, num_layers=2, cross_attn_norm=True, qk_norm="rms_norm_across_heads", rope_max_seq_len=32)
LTX = dict(in_channels=8, out_channels=8, patch_size=1, patch_size_t=1, num_attention_heads=4, attention_head_dim=8,
           cross_attention_dim=32, num_layers=1, caption_channels=16)


def _inputs(kind, g):
    r = lambda *s: torch.randn(*s, generator=g)  # noqa: E731
    if kind == "unet":
        return dict(sample=r(2, 4, 8, 8), timestep=torch.tensor([10]), encoder_hidden_states=r(2, 4, 8))
    if kind in ("sd3", "sd35"):
        return dict(hidden_states=r(2, 4, 8, 8), encoder_hidden_states=r(2, 12, 32), pooled_projections=r(2, 64),
                    timestep=torch.tensor([3, 500]))
    if kind == "flux":
        return dict(hidden_states=r(1, 16, 4), encoder_hidden_states=r(1, 12, 32), pooled_projections=r(1, 32),
                    img_ids=r(16, 3), txt_ids=r(12, 3), timestep=torch.tensor([1.0]))
    if kind == "qwen":
        mask = torch.ones(2, 8, dtype=torch.long)
        mask[1, 5:] = 0
        return dict(hidden_states=r(2, 16, 16), encoder_hidden_states=r(2, 8, 16), encoder_hidden_states_mask=mask,
                    timestep=torch.tensor([1.0, 1.0]), img_shapes=[(1, 4, 4)] * 2)
    if kind == "pixart":
        return dict(hidden_states=r(2, 4, 8, 8), encoder_hidden_states=r(2, 5, 32), timestep=torch.tensor([1, 1]),
                    added_cond_kwargs={"aspect_ratio": None, "resolution": None},
                    encoder_attention_mask=torch.tensor([[1, 1, 1, 1, 1], [1, 1, 1, 0, 0]]))
    if kind == "sana":
        return dict(hidden_states=r(2, 4, 8, 8), encoder_hidden_states=r(2, 5, 8), timestep=torch.tensor([1, 1]))
    if kind == "wan":
        return dict(hidden_states=r(1, 4, 2, 8, 8), encoder_hidden_states=r(1, 6, 16), timestep=torch.tensor([1]))
    return dict(hidden_states=r(1, 16, 8), encoder_hidden_states=r(1, 6, 16), timestep=torch.tensor([1]),
                encoder_attention_mask=torch.ones(1, 6), num_frames=1, height=4, width=4)


MODELS = {"unet": (UNet2DConditionModel, SD15_UNET), "sd3": (SD3Transformer2DModel, SD3),
          "sd35": (SD3Transformer2DModel, SD35), "flux": (FluxTransformer2DModel, FLUX),
          "qwen": (QwenImageTransformer2DModel, QWEN), "pixart": (PixArtTransformer2DModel, PIXART),
          "sana": (SanaTransformer2DModel, SANA), "wan": (WanTransformer3DModel, WAN),
          "ltx": (LTXVideoTransformer3DModel, LTX)}


def _model(name):
    cls, cfg = MODELS[name]
    torch.manual_seed(0)
    return cls(**cfg).eval()


def _out(model, inputs):
    with torch.no_grad():
        return model(**inputs)[0]


def _processors(model):
    return {n: m.processor for n, m in model.named_modules() if hasattr(m, "set_processor")}


def _gag(model, via, layers="auto", **kw):
    return install_attention_fn(model, GuidedAttention(**kw), layers, kinds=("cross", "joint"), via=via)


class Spy:
    """Records every call's facts and returns call.inner() (an observer: composes with a guide)."""

    observer = True

    def __init__(self):
        self.seen = []

    def __call__(self, call):
        self.seen.append((call.layer, call.kind, call.text_keys, call.image_queries, call.q.clone(), call.k.clone(),
                          call.v.clone(), None if call.mask is None else call.mask.clone(),
                          {k: v for k, v in call.extra.items() if k == "call_index"}))
        return call.inner()


@pytest.mark.parametrize("name", ["unet", "sd3", "sd35", "flux", "qwen"])
def test_hook_path_equals_processor_path_on_the_four_architectures(name):
    model = _model(name)
    inputs = _inputs(name, torch.Generator().manual_seed(3))
    ref = _out(model, inputs)
    before = _processors(model)
    with install_attention_fn(model, lambda c: c.dense(), layers=lambda n, m: True, via="hooks") as h:
        assert set(h.paths.values()) == {"hooks"} and len(h.layers) == len(before)
        assert torch.equal(_out(model, inputs), ref)  # every layer, self-attention too, passes through exactly
        assert all(p is before[n] for n, p in _processors(model).items())  # the module's own processors
    seen, outs = {}, {}
    for via in ("processors", "hooks"):
        spy = Spy()
        with _gag(model, via, strength=0.0):
            assert torch.equal(_out(model, inputs), ref), via
        with _gag(model, via, method="gag", lam=10.0) as h, install_attention_fn(model, spy, layers=h.layers):
            assert set(h.paths.values()) == {via}
            outs[via] = _out(model, inputs)
        seen[via] = spy.seen
    assert not torch.equal(outs["hooks"], ref) and torch.isfinite(outs["hooks"]).all()
    assert torch.allclose(outs["hooks"], outs["processors"], atol=2e-5, rtol=0)
    assert len(seen["hooks"]) == len(seen["processors"]) > 0
    for a, b in zip(seen["processors"], seen["hooks"]):
        assert a[:4] == b[:4]  # layer, kind, text keys, image queries
        assert all(torch.equal(x, y) for x, y in zip(a[4:7], b[4:7]))  # q, k, v as the kernel sees them
        assert b[8] == {"call_index": 0}
        assert (a[7] is None) == (b[7] is None) and (a[7] is None or torch.equal(a[7], b[7]))
    assert {kind for _, kind, *_ in seen["hooks"]} == ({"cross"} if name == "unet" else {"joint"})
    assert all(p is before[n] for n, p in _processors(model).items()) and installed(model) == ()
    assert torch.equal(_out(model, inputs), ref)


@pytest.mark.parametrize("name,n_cross", [("pixart", 2), ("sana", 1), ("wan", 2), ("ltx", 1)])
def test_models_without_processor_copies_are_guided_through_hooks(name, n_cross):
    model = _model(name)
    inputs = _inputs(name, torch.Generator().manual_seed(4))
    ref = _out(model, inputs)
    before = _processors(model)
    infos = {i.name: i for i in list_attention_layers(model)}
    cross = sorted(n for n, i in infos.items() if i.kind == "cross")
    assert len(cross) == n_cross and all(n.endswith("attn2") for n in cross)
    with _gag(model, "hooks", strength=0.0):
        assert torch.equal(_out(model, inputs), ref)
    spy = Spy()
    with _gag(model, "auto" if name != "pixart" else "hooks", method="pladis", lam=2.0, record=True) as h, \
            install_attention_fn(model, spy, layers=cross):
        assert sorted(h.layers) == cross and set(h.paths.values()) == {"hooks"}
        assert all(p is before[n] for n, p in _processors(model).items())  # nothing replaced
        out = _out(model, inputs)
        assert {(layer, kind) for layer, kind, *_ in h.fn.log} == {(n, "cross") for n in cross}
        for layer, kind, text_keys, image_queries, q, k, v, mask, _ in spy.seen:
            assert text_keys == slice(0, k.shape[2]) and image_queries == slice(0, q.shape[2])
        if name == "pixart":  # the padded prompt's mask reaches the function (additive, -inf-like at padding)
            mask = spy.seen[0][7]
            assert mask is not None and mask.shape[-1] == 5 and bool((mask[1, ..., 3:] < -1e3).all())
    assert installed(model) == ()
    assert torch.isfinite(out).all() and not torch.equal(out, ref)
    assert torch.equal(_out(model, inputs), ref)


def test_an_ip_adapter_processor_stays_installed_and_both_of_its_calls_are_seen():
    from diffusers.models.attention_processor import IPAdapterAttnProcessor2_0

    unet = _model("unet")
    layer = "up_blocks.1.attentions.0.transformer_blocks.0.attn2"
    attn = unet.get_submodule(layer)
    torch.manual_seed(1)
    ip = IPAdapterAttnProcessor2_0(hidden_size=attn.to_q.out_features, cross_attention_dim=8, num_tokens=(4,))
    attn.set_processor(ip)
    g = torch.Generator().manual_seed(5)
    x, text, image = torch.randn(2, 16, 4, generator=g), torch.randn(2, 4, 8, generator=g), torch.randn(2, 4, 8, generator=g)
    with torch.no_grad():
        ref = attn(x, encoder_hidden_states=(text, [image]))
    spy = Spy()
    with install_attention_fn(unet, lambda c: c.dense(), via="processors", layers="down_blocks"):
        pass  # the processor path still works elsewhere in the same model
    with pytest.raises(ValueError, match="IPAdapterAttnProcessor2_0.*via='hooks'"):
        _gag(unet, "processors", layers=layer)
    with _gag(unet, "auto", layers=layer, method="gag") as h, install_attention_fn(unet, spy, layers=layer):
        assert h.paths == {layer: "hooks"} and attn.processor is ip
        with torch.no_grad():
            out = attn(x, encoder_hidden_states=(text, [image]))
    assert [(kind, k.shape[2], extra) for _, kind, _, _, _, k, _, _, extra in spy.seen] == \
        [("cross", 4, {"call_index": 0}), ("cross", 4, {"call_index": 1})]  # text, then the image prompt
    assert attn.processor is ip and not torch.equal(out, ref) and torch.isfinite(out).all()
    with _gag(unet, "hooks", layers=layer, strength=0.0), torch.no_grad():
        assert torch.equal(attn(x, encoder_hidden_states=(text, [image])), ref)


def test_kernels_the_hook_cannot_see_are_refused_by_name():
    from diffusers.models.attention_processor import XFormersAttnProcessor

    flux = _model("flux")
    inputs = _inputs("flux", torch.Generator().manual_seed(6))
    proc = flux.transformer_blocks[0].attn.processor
    proc._attention_backend = "flash"  # as set_attention_backend("flash") leaves it (flash-attn absent here)
    with pytest.raises(ValueError, match="backend 'flash'.*set_attention_backend\\('native'\\)"):
        _gag(flux, "hooks")
    proc._attention_backend = None
    with _gag(flux, "hooks"):
        proc._attention_backend = "sage"  # switched after installing: refused at the call, never skipped
        with pytest.raises(RuntimeError, match="backend 'sage'"):
            _out(flux, inputs)
    proc._attention_backend = None
    unet = _model("unet")
    unet.get_submodule("up_blocks.1.attentions.0.transformer_blocks.0.attn2").set_processor(XFormersAttnProcessor())
    with pytest.raises(ValueError, match="xformers"):
        _gag(unet, "hooks")
    sana = _model("sana")  # attn1 is linear attention: no kernel call to intercept
    with install_attention_fn(sana, lambda c: c.dense(), layers="transformer_blocks.0.attn1", via="hooks"):
        with pytest.raises(RuntimeError, match="made no torch.nn.functional.scaled_dot_product_attention call"):
            _out(sana, _inputs("sana", torch.Generator().manual_seed(0)))


def test_joint_attention_of_an_architecture_outside_the_table_raises():
    class MySD3(SD3Transformer2DModel):
        pass

    torch.manual_seed(0)
    model = MySD3(**SD3).eval()
    with _gag(model, "hooks", layers="transformer_blocks.0.attn"):
        with pytest.raises(RuntimeError, match="text order of this architecture is unknown.*JOINT_LAYOUTS"):
            _out(model, _inputs("sd3", torch.Generator().manual_seed(0)))


def test_list_attention_layers_shows_the_path_each_layer_would_take():
    from diffusers.models.attention_processor import IPAdapterAttnProcessor2_0

    unet = _model("unet")
    layer = "up_blocks.1.attentions.0.transformer_blocks.0.attn2"
    unet.get_submodule(layer).set_processor(IPAdapterAttnProcessor2_0(hidden_size=8, cross_attention_dim=8))
    paths = {i.name: i.path for i in list_attention_layers(unet)}
    assert paths[layer] == "hooks" and paths["down_blocks.0.attentions.0.transformer_blocks.0.attn2"] == "processors"
    wan = {i.name: (i.kind, i.path) for i in list_attention_layers(_model("wan"))}
    assert wan["blocks.0.attn2"] == ("cross", "hooks") and wan["blocks.0.attn1"] == ("self", "hooks")
    with _gag(unet, "hooks", layers="down_blocks"):  # an installed layer shows the path it runs on
        assert {i.name: i.path for i in list_attention_layers(unet)}["down_blocks.0.attentions.0.transformer_blocks.0.attn2"] == "hooks"
