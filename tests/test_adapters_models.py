"""diffusers adapters, part 2: the MMDiT models (SD3, SD3.5 dual attention, Flux double + single, Qwen-Image).

Tiny random-weight configs from diffusers' own tests (ecosystem.md section 5; fewer layers and tokens where
the architecture stays the same), CPU, offline. The off switch is checked with torch.equal.
"""
import pytest
import torch

pytest.importorskip("diffusers")

from diffusers import FluxTransformer2DModel, QwenImageTransformer2DModel, SD3Transformer2DModel  # noqa: E402

from hopfield_gag.adapters import apply_gag, install_attention_fn, list_attention_layers  # noqa: E402
from hopfield_gag.adapters.processors import ADAPTERS  # noqa: E402
from _tiny_configs import SD3, SD35, FLUX, QWEN  # noqa: E402


def _model(cls, cfg):
    torch.manual_seed(0)
    return cls(**cfg).eval()


def _inputs(kind, g):
    if kind in ("sd3", "sd35"):
        return dict(hidden_states=torch.randn(2, 4, 8, 8, generator=g), encoder_hidden_states=torch.randn(2, 12, 32, generator=g),
                    pooled_projections=torch.randn(2, 64, generator=g), timestep=torch.tensor([3, 500]))
    if kind == "flux":
        return dict(hidden_states=torch.randn(1, 16, 4, generator=g), encoder_hidden_states=torch.randn(1, 12, 32, generator=g),
                    pooled_projections=torch.randn(1, 32, generator=g), img_ids=torch.randn(16, 3, generator=g),
                    txt_ids=torch.randn(12, 3, generator=g), timestep=torch.tensor([1.0]))
    mask = torch.ones(2, 8, dtype=torch.long)
    mask[1, 5:] = 0  # the second prompt is padded
    return dict(hidden_states=torch.randn(2, 16, 16, generator=g), encoder_hidden_states=torch.randn(2, 8, 16, generator=g),
                encoder_hidden_states_mask=mask, timestep=torch.tensor([1.0, 1.0]), img_shapes=[(1, 4, 4)] * 2)


MODELS = {"sd3": (SD3Transformer2DModel, SD3, 2), "sd35": (SD3Transformer2DModel, SD35, 2),
          "flux": (FluxTransformer2DModel, FLUX, 2), "qwen": (QwenImageTransformer2DModel, QWEN, 2)}


@pytest.fixture(scope="module", params=list(MODELS))
def arch(request):
    cls, cfg, n_joint = MODELS[request.param]
    model = _model(cls, cfg)
    inputs = _inputs(request.param, torch.Generator().manual_seed(3))
    with torch.no_grad():
        ref = model(**inputs)[0]
    return request.param, model, inputs, ref, n_joint


def _out(model, inputs):
    with torch.no_grad():
        return model(**inputs)[0]


def _processors(model):
    return {n: m.processor for n, m in model.named_modules() if hasattr(m, "set_processor")}


def test_dense_is_bit_identical_gag_changes_and_only_joint_layers_are_touched(arch):
    name, model, inputs, ref, n_joint = arch
    before = _processors(model)
    for off in (dict(method="dense"), dict(strength=0.0)):
        with apply_gag(model, **off):
            assert torch.equal(_out(model, inputs), ref), off
    with install_attention_fn(model, lambda call: call.dense(), layers=lambda n, m: True) as h:
        assert len(h.layers) == len(before)  # every layer, self-attention included, passes through exactly
        assert torch.equal(_out(model, inputs), ref)
    for method in ("gag", "pladis"):
        with apply_gag(model, method=method, record=True) as h:
            after = _processors(model)
            touched = [n for n in before if after[n] is not before[n]]
            assert touched == h.layers and len(touched) == n_joint
            assert all(isinstance(after[n], tuple(ADAPTERS.values())) for n in touched)
            out = _out(model, inputs)
            assert {kind for _, kind, *_ in h.fn.log} == {"joint"} and len(h.fn.log) == n_joint
        assert torch.isfinite(out).all() and not torch.equal(out, ref), method
    assert all(p is before[n] for n, p in _processors(model).items())
    assert torch.equal(_out(model, inputs), ref)


def test_sd35_image_only_attn2_is_not_joint():
    model = _model(SD3Transformer2DModel, SD35)
    kinds = {i.name: i.kind for i in list_attention_layers(model)}
    assert kinds["transformer_blocks.0.attn2"] == "self" and kinds["transformer_blocks.0.attn"] == "joint"
    with pytest.raises(ValueError, match="attn2.*no text keys|kind.*self"):
        apply_gag(model, layers="transformer_blocks.0.attn2")
    with apply_gag(model, layers=0) as h:  # block 0 holds attn (joint) and attn2 (image only): attn only
        assert h.layers == ["transformer_blocks.0.attn"]
    with apply_gag(model, layers="transformer_blocks.0.attn2", guide_self=True, record=True) as h:
        _out(model, _inputs("sd35", torch.Generator().manual_seed(0)))
        assert [(layer, kind) for layer, kind, *_ in h.fn.log] == [("transformer_blocks.0.attn2", "self")]


def test_flux_single_block_sees_text_positions_and_index_selection():
    model = _model(FluxTransformer2DModel, FLUX)
    inputs = _inputs("flux", torch.Generator().manual_seed(4))
    seen = {}

    def fn(call):
        seen[call.layer] = (call.kind, call.text_keys, call.image_queries, tuple(call.q.shape))
        return call.dense()

    with install_attention_fn(model, fn, layers={"single_transformer_blocks": [0], "transformer_blocks": [-1]}) as h:
        assert h.layers == ["transformer_blocks.0.attn", "single_transformer_blocks.0.attn"]
        _out(model, inputs)
    for layer in h.layers:
        kind, text, img, shape = seen[layer]
        assert kind == "joint" and text == slice(0, 12) and img == slice(12, 28) and shape == (1, 2, 28, 16)
    with pytest.raises(ValueError, match="out of range"):
        install_attention_fn(model, fn, layers={"single_transformer_blocks": [1]})


def test_qwen_mask_and_rope_reach_the_function_and_padded_prompt_works():
    model = _model(QwenImageTransformer2DModel, QWEN)
    inputs = _inputs("qwen", torch.Generator().manual_seed(5))
    ref = _out(model, inputs)
    seen = []

    def fn(call):
        seen.append(call)
        return call.dense()

    with install_attention_fn(model, fn):
        assert torch.equal(_out(model, inputs), ref)
    call = seen[0]
    assert call.mask.dtype == torch.bool and call.mask.shape == (2, 1, 1, 24)
    assert call.mask[0].all() and not call.mask[1, ..., 5:8].any() and call.mask[1, ..., :5].all()
    assert call.extra["image_rotary_emb"] is not None and call.text_keys == slice(0, 8)
    with apply_gag(model, method="pladis", lam=2.0):
        out = _out(model, inputs)
        # the padded text tokens get no weight: changing them changes nothing in the image output
        moved = dict(inputs, encoder_hidden_states=inputs["encoder_hidden_states"].clone())
        moved["encoder_hidden_states"][1, 5:] += 50.0
        out_moved = _out(model, moved)
    assert torch.isfinite(out).all() and not torch.equal(out, ref)
    assert torch.allclose(out_moved[1], out[1], atol=1e-5)  # fp32 (layer norms reduce over moved text rows)


def test_branches_cond_uses_the_cache_context():
    model = _model(FluxTransformer2DModel, FLUX)
    inputs = _inputs("flux", torch.Generator().manual_seed(6))
    ref = _out(model, inputs)
    with apply_gag(model, branches="cond", record=True) as h:
        with model.cache_context("uncond"):
            assert torch.equal(_out(model, inputs), ref)
        assert h.fn.log == []
        with model.cache_context("cond"):
            assert not torch.equal(_out(model, inputs), ref)
        assert len(h.fn.log) == 2
        with pytest.raises(RuntimeError, match="branches='cond'"):
            _out(model, inputs)  # no context, no pipeline: which rows are conditional is unknown


def test_attention_backend_is_kept_and_honoured():
    """A backend chosen on the stock processors carries over to the adapters, and set_attention_backend after
    installing reaches them (the dense branch goes through dispatch_attention_fn with it)."""
    model = _model(FluxTransformer2DModel, FLUX)
    inputs = _inputs("flux", torch.Generator().manual_seed(7))
    model.set_attention_backend("_native_math")
    ref = _out(model, inputs)
    stock = model.transformer_blocks[0].attn.processor
    with apply_gag(model, strength=0.0) as h:
        proc = h.processors["transformer_blocks.0.attn"]
        assert proc._attention_backend == stock._attention_backend is not None
        assert torch.equal(_out(model, inputs), ref)
        model.set_attention_backend("native")
        assert proc._attention_backend == "native"
    model.reset_attention_backend()


@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float16])
def test_half_precision_models_stay_finite_and_keep_their_dtype(dtype):
    """gag_attention computes in fp32 and the joint rule combines in fp32; outputs come back in the model dtype."""
    model = _model(FluxTransformer2DModel, FLUX).to(dtype)
    inputs = {k: (v.to(dtype) if isinstance(v, torch.Tensor) and k not in ("img_ids", "txt_ids") else v)
              for k, v in _inputs("flux", torch.Generator().manual_seed(8)).items()}
    ref = _out(model, inputs)
    for method in ("gag", "pladis", "aa"):
        with apply_gag(model, method=method):
            out = _out(model, inputs)
        assert out.dtype == dtype and torch.isfinite(out).all() and not torch.equal(out, ref), method
    with apply_gag(model, strength=0.0):
        assert torch.equal(_out(model, inputs), ref)
