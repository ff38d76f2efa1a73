"""capture() through the diffusers adapters on tiny UNet, SD3, Flux and Qwen-Image models (ecosystem.md §5).

The reference is the *stock* model (no capture installed): forward pre-hooks on ``to_out[0]`` / ``to_add_out``
(or, for Flux single blocks that have no output projection, the attention module's output) record the
attention output before the output projection. From the captured q, k, v (after q/k norms and RoPE) we
recompute softmax(q k^T scale + mask) v in float64 and compare at 1e-5: the stock fp32 SDPA result is within
O(Lk * u32) (u32 = 6e-8, Lk <= 160 keys, outputs O(1)) of the exact value, far below 1e-5.
"""
import pytest
import torch

diffusers = pytest.importorskip("diffusers")

from diffusers import (  # noqa: E402
    FluxTransformer2DModel,
    QwenImageTransformer2DModel,
    SD3Transformer2DModel,
    UNet2DConditionModel,
)

from hopfield_gag.capture import ActivationStore, capture  # noqa: E402


def _seeded(cls, cfg):
    torch.manual_seed(0)
    return cls(**cfg).eval()


def _unet():
    m = _seeded(UNet2DConditionModel, dict(
        block_out_channels=(4, 8), norm_num_groups=4, down_block_types=("CrossAttnDownBlock2D", "DownBlock2D"),
        up_block_types=("UpBlock2D", "CrossAttnUpBlock2D"), cross_attention_dim=8, attention_head_dim=2,
        out_channels=4, in_channels=4, layers_per_block=1, sample_size=16))
    g = torch.Generator().manual_seed(1)
    return m, dict(sample=torch.randn(2, 4, 16, 16, generator=g), timestep=torch.tensor([10]),
                   encoder_hidden_states=torch.randn(2, 4, 8, generator=g))


def _sd3():
    m = _seeded(SD3Transformer2DModel, dict(
        sample_size=8, patch_size=1, in_channels=4, num_layers=2, attention_head_dim=8, num_attention_heads=2,
        caption_projection_dim=16, joint_attention_dim=16, pooled_projection_dim=16, out_channels=4,
        pos_embed_max_size=16, dual_attention_layers=(0,), qk_norm="rms_norm"))
    g = torch.Generator().manual_seed(1)
    return m, dict(hidden_states=torch.randn(2, 4, 8, 8, generator=g), encoder_hidden_states=torch.randn(2, 6, 16, generator=g),
                   pooled_projections=torch.randn(2, 16, generator=g), timestep=torch.tensor([3, 500]))


def _flux():
    m = _seeded(FluxTransformer2DModel, dict(
        patch_size=1, in_channels=4, num_layers=1, num_single_layers=1, attention_head_dim=16, num_attention_heads=2,
        joint_attention_dim=32, pooled_projection_dim=32, axes_dims_rope=[4, 4, 8]))
    g = torch.Generator().manual_seed(1)
    return m, dict(hidden_states=torch.randn(1, 16, 4, generator=g), encoder_hidden_states=torch.randn(1, 8, 32, generator=g),
                   pooled_projections=torch.randn(1, 32, generator=g), img_ids=torch.randn(16, 3, generator=g),
                   txt_ids=torch.randn(8, 3, generator=g), timestep=torch.tensor([1.0]))


def _qwen():
    m = _seeded(QwenImageTransformer2DModel, dict(
        patch_size=2, in_channels=16, out_channels=4, num_layers=2, attention_head_dim=16, num_attention_heads=4,
        joint_attention_dim=16, guidance_embeds=False, axes_dims_rope=(8, 4, 4)))
    g = torch.Generator().manual_seed(1)
    mask = torch.ones(1, 8, dtype=torch.long)
    mask[:, 6:] = 0  # padded text tokens: the mask must be captured for the recomputation to match
    return m, dict(hidden_states=torch.randn(1, 16, 16, generator=g), encoder_hidden_states=torch.randn(1, 8, 16, generator=g),
                   encoder_hidden_states_mask=mask, timestep=torch.tensor([1.0]), img_shapes=[(1, 4, 4)])


def _wan():
    # no processor copy: capture reaches it through the hook path (q/k/v after its q/k RMS norms and RoPE)
    from diffusers import WanTransformer3DModel

    m = _seeded(WanTransformer3DModel, dict(
        patch_size=(1, 2, 2), num_attention_heads=2, attention_head_dim=12, in_channels=4, out_channels=4, text_dim=16,
        freq_dim=256, ffn_dim=32, num_layers=1, cross_attn_norm=True, qk_norm="rms_norm_across_heads",
        rope_max_seq_len=32))
    g = torch.Generator().manual_seed(1)
    return m, dict(hidden_states=torch.randn(1, 4, 2, 8, 8, generator=g),
                   encoder_hidden_states=torch.randn(1, 6, 16, generator=g), timestep=torch.tensor([1]))


def _pixart():
    # AttnProcessor2_0, so the processor path; a padded prompt's additive mask
    from diffusers import PixArtTransformer2DModel

    m = _seeded(PixArtTransformer2DModel, dict(
        sample_size=8, num_layers=1, patch_size=2, attention_head_dim=8, num_attention_heads=3, caption_channels=32,
        in_channels=4, cross_attention_dim=24, out_channels=8, attention_bias=True, activation_fn="gelu-approximate",
        num_embeds_ada_norm=1000, norm_type="ada_norm_single", norm_elementwise_affine=False, norm_eps=1e-6))
    g = torch.Generator().manual_seed(1)
    return m, dict(hidden_states=torch.randn(2, 4, 8, 8, generator=g), encoder_hidden_states=torch.randn(2, 5, 32, generator=g),
                   timestep=torch.tensor([1, 1]), added_cond_kwargs={"aspect_ratio": None, "resolution": None},
                   encoder_attention_mask=torch.tensor([[1, 1, 1, 1, 1], [1, 1, 1, 0, 0]]))


MODELS = {"unet": _unet, "sd3": _sd3, "flux": _flux, "qwen": _qwen, "wan": _wan, "pixart": _pixart}


def _attention_modules(model):
    return {n: m for n, m in model.named_modules() if n and hasattr(m, "processor") and hasattr(m, "set_processor")}


def _stock_outputs(model, inputs):
    """{layer: (image part, text part or None)} of the stock attention output before the output projection."""
    seen, hooks = {}, []
    for name, mod in _attention_modules(model).items():
        to_out = getattr(mod, "to_out", None)
        if to_out is not None:
            hooks.append(to_out[0].register_forward_pre_hook(
                lambda m, a, n=name: seen.setdefault(n, {}).__setitem__("img", a[0].detach())))
            if getattr(mod, "to_add_out", None) is not None:
                hooks.append(mod.to_add_out.register_forward_pre_hook(
                    lambda m, a, n=name: seen.setdefault(n, {}).__setitem__("txt", a[0].detach())))
        else:  # Flux single block: the processor's output is the merged attention itself
            hooks.append(mod.register_forward_hook(
                lambda m, a, o, n=name: seen.setdefault(n, {}).__setitem__("all", o.detach())))
    with torch.no_grad():
        out = model(**inputs)[0]
    for h in hooks:
        h.remove()
    return out, seen


def _recompute(rec):
    q, k, v = (rec[n].double() for n in "qkv")
    scale = rec["scale"] if rec["scale"] is not None else q.shape[-1] ** -0.5
    z = q @ k.transpose(-1, -2) * scale
    mask = rec["mask"]
    if mask is not None:
        z = z.masked_fill(~mask, float("-inf")) if mask.dtype == torch.bool else z + mask.double()
    return (torch.softmax(z, -1) @ v).transpose(1, 2).flatten(2)  # (B, Lq, H*Dv), the merged layout


@pytest.mark.parametrize("arch", list(MODELS))
def test_capture_is_exact_and_recomputes_stock_attention(tmp_path, arch):
    model, inputs = MODELS[arch]()
    ref, stock = _stock_outputs(model, inputs)
    with capture(model, tmp_path / "s") as cap, torch.no_grad():
        out = model(**inputs)[0]
    assert torch.equal(out, ref), "capture changed the model's output"
    assert sorted(cap.layers) == sorted(_attention_modules(model))
    store = ActivationStore(tmp_path / "s")
    assert store.verify().records == len(cap.layers) and store.complete
    for rec in store:
        o = _recompute(rec)
        parts = stock[rec["layer"]]
        if "all" in parts:
            torch.testing.assert_close(o, parts["all"].double(), atol=1e-5, rtol=0)
            continue
        img = rec["image_queries"]
        torch.testing.assert_close(o[:, img], parts["img"].double(), atol=1e-5, rtol=0)
        if "txt" in parts:  # joint attention: the other query rows are the text stream
            rows = torch.ones(o.shape[1], dtype=torch.bool)
            rows[img] = False
            torch.testing.assert_close(o[:, rows], parts["txt"].double(), atol=1e-5, rtol=0)
        if rec["kind"] == "joint":
            assert rec["text_keys"] is not None and rec["text_keys"].stop - rec["text_keys"].start == \
                inputs["encoder_hidden_states"].shape[1]


def test_selected_layers_and_cfg_branches_on_unet(tmp_path):
    model, inputs = _unet()
    ref, _ = _stock_outputs(model, inputs)
    with capture(model, tmp_path / "s", layers=r".*attn2", heads=[0], cfg_batch=True,
                 compute=("dense",)) as cap, torch.no_grad():
        assert torch.equal(model(**inputs)[0], ref)
    store = ActivationStore(tmp_path / "s")
    assert all(n.endswith("attn2") for n in cap.layers) and len(cap.layers) == 4  # down, mid, up x2
    assert set(store.branches) == {"uncond", "cond"} and len(store) == 8
    rec = next(store.records(branch="cond"))
    assert rec["q"].shape[:2] == (1, 1) and rec["kind"] == "cross"
    torch.testing.assert_close(rec["dense"].double(), torch.softmax(
        rec["q"].double() @ rec["k"].double().transpose(-1, -2) * rec["q"].shape[-1] ** -0.5, -1) @ rec["v"].double(),
        atol=1e-5, rtol=0)


def test_layer_matching_nothing_is_a_clear_error(tmp_path):
    model, _ = _unet()
    before = {n: type(m.processor) for n, m in _attention_modules(model).items()}
    with pytest.raises(ValueError, match="matches no attention layer"):
        with capture(model, tmp_path / "s", layers="mid_block.nope"):
            pass
    assert not (tmp_path / "s").exists()
    assert {n: type(m.processor) for n, m in _attention_modules(model).items()} == before


def test_pipeline_steps_and_branches(tmp_path):
    """A custom loop over a pipeline-shaped object (denoiser + scheduler, CFG batch [uncond; cond]): the
    adapters' state hook gives each call its step index, timestep and branches."""
    from types import SimpleNamespace

    from diffusers import DDIMScheduler

    unet, inputs = _unet()
    sched = DDIMScheduler()
    sched.set_timesteps(4)
    pipe = SimpleNamespace(unet=unet, scheduler=sched, do_classifier_free_guidance=True)

    def loop():
        x = inputs["sample"][:1]
        for t in sched.timesteps:
            with torch.no_grad():
                eps = unet(torch.cat([x, x]), t, encoder_hidden_states=inputs["encoder_hidden_states"])[0]
            x = sched.step(eps[:1] + 2.0 * (eps[1:] - eps[:1]), t, x).prev_sample
        return x

    ref = loop()
    with capture(pipe, tmp_path / "s", layers=r".*attn2", steps=(0.5, 1.0)):
        out = loop()
    assert torch.equal(out, ref)
    store = ActivationStore(tmp_path / "s")
    assert store.steps == [2, 3] and set(store.branches) == {"uncond", "cond"}
    rec = next(store.records(step=3, branch="cond"))
    assert rec["num_steps"] == 4 and rec["timestep"] == float(sched.timesteps[3]) and rec["q"].shape[0] == 1


def test_hooks_route_sees_pre_rope_projections(tmp_path):
    """What hooks can and cannot see: on the UNet (no q/k norm, no RoPE) the hooked projections are exactly
    the kernel's q/k/v; on Flux the hooked q is pre-norm/pre-RoPE and image-only, so it differs from the
    kernel's (which the adapters route records)."""
    model, inputs = _unet()
    layer = "down_blocks.0.attentions.0.transformer_blocks.0.attn1"
    with capture(model, tmp_path / "a", layers=layer), torch.no_grad():
        model(**inputs)
    with capture(model, tmp_path / "h", layers=layer, via="hooks"), torch.no_grad():
        model(**inputs)
    a, h = next(iter(ActivationStore(tmp_path / "a"))), next(iter(ActivationStore(tmp_path / "h")))
    assert h["source"] == "hooks" and all(torch.equal(a[n], h[n]) for n in "qkv")

    model, inputs = _flux()
    layer = "transformer_blocks.0.attn"
    with capture(model, tmp_path / "fa", layers=layer), torch.no_grad():
        model(**inputs)
    with capture(model, tmp_path / "fh", layers=layer, via="hooks"), torch.no_grad():
        model(**inputs)
    a, h = next(iter(ActivationStore(tmp_path / "fa"))), next(iter(ActivationStore(tmp_path / "fh")))
    img = a["image_queries"]
    assert h["q"].shape[2] == img.stop - img.start < a["q"].shape[2]  # hooks: image stream only
    assert not torch.allclose(h["q"], a["q"][:, :, img], atol=1e-3)  # hooks: before q-norm and RoPE


def test_stable_diffusion_pipeline_steps_and_branches(tmp_path):
    """The real StableDiffusionPipeline loop (no text encoder: precomputed embeddings, CFG batch)."""
    pytest.importorskip("transformers")  # diffusers refuses to build pipelines without it
    from diffusers import AutoencoderKL, DDIMScheduler, StableDiffusionPipeline

    unet, _ = _unet()
    torch.manual_seed(0)
    vae = AutoencoderKL(block_out_channels=[4, 8], in_channels=3, out_channels=3,
                        down_block_types=["DownEncoderBlock2D"] * 2, up_block_types=["UpDecoderBlock2D"] * 2,
                        latent_channels=4, norm_num_groups=2)
    pipe = StableDiffusionPipeline(vae=vae, text_encoder=None, tokenizer=None, unet=unet, scheduler=DDIMScheduler(clip_sample=False),
                                   safety_checker=None, feature_extractor=None, image_encoder=None,
                                   requires_safety_checker=False)
    pipe.set_progress_bar_config(disable=True)
    g = torch.Generator().manual_seed(3)
    kw = dict(prompt_embeds=torch.randn(1, 4, 8, generator=g), negative_prompt_embeds=torch.randn(1, 4, 8, generator=g),
              num_inference_steps=3, guidance_scale=2.0, height=32, width=32, output_type="latent")
    ref = pipe(**kw, generator=torch.Generator().manual_seed(0)).images
    with capture(pipe, tmp_path / "s", layers=r".*attn2", steps=(0.3, 1.0)):
        out = pipe(**kw, generator=torch.Generator().manual_seed(0)).images
    assert torch.equal(out, ref)
    store = ActivationStore(tmp_path / "s")
    assert store.steps == [1, 2] and set(store.branches) == {"uncond", "cond"}
    rec = next(store.records(step=2, branch="uncond"))
    assert rec["num_steps"] == 3 and rec["timestep"] == float(pipe.scheduler.timesteps[2])
