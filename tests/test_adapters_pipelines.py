"""diffusers adapters, part 3: whole pipelines from tiny components (text_encoder=None, precomputed prompt
embeddings, 2 steps, offline): GAG off/on, the step window and branches="cond" counted per guided call."""
import pytest
import torch

pytest.importorskip("diffusers")

from diffusers import (  # noqa: E402
    AutoencoderKL,
    DDIMScheduler,
    FlowMatchEulerDiscreteScheduler,
    FluxPipeline,
    FluxTransformer2DModel,
    StableDiffusionPipeline,
    UNet2DConditionModel,
)

from hopfield_gag.adapters import apply_gag  # noqa: E402


@pytest.fixture(scope="module")
def sd_pipe():
    torch.manual_seed(0)
    unet = UNet2DConditionModel(block_out_channels=(4, 8), layers_per_block=1, sample_size=32, time_cond_proj_dim=None,
                                in_channels=4, out_channels=4, down_block_types=("DownBlock2D", "CrossAttnDownBlock2D"),
                                up_block_types=("CrossAttnUpBlock2D", "UpBlock2D"), cross_attention_dim=8, norm_num_groups=2)
    vae = AutoencoderKL(block_out_channels=[4, 8], in_channels=3, out_channels=3, down_block_types=["DownEncoderBlock2D"] * 2,
                        up_block_types=["UpDecoderBlock2D"] * 2, latent_channels=4, norm_num_groups=2)
    sched = DDIMScheduler(beta_start=0.00085, beta_end=0.012, beta_schedule="scaled_linear", clip_sample=False, set_alpha_to_one=False, steps_offset=1)
    pipe = StableDiffusionPipeline(unet=unet, vae=vae, scheduler=sched, text_encoder=None, tokenizer=None, safety_checker=None,
                                   feature_extractor=None, image_encoder=None, requires_safety_checker=False)
    pipe.set_progress_bar_config(disable=True)
    g = torch.Generator().manual_seed(1)
    embeds = dict(prompt_embeds=torch.randn(1, 7, 8, generator=g), negative_prompt_embeds=torch.randn(1, 7, 8, generator=g))
    return pipe, embeds


def _sd(pipe, embeds):
    return pipe(**embeds, num_inference_steps=2, guidance_scale=5.0, height=32, width=32, output_type="np",
                generator=torch.Generator().manual_seed(0)).images


@pytest.fixture(scope="module")
def flux_pipe():
    torch.manual_seed(0)
    transformer = FluxTransformer2DModel(patch_size=1, in_channels=4, num_layers=1, num_single_layers=1, attention_head_dim=16,
                                         num_attention_heads=2, joint_attention_dim=32, pooled_projection_dim=32,
                                         axes_dims_rope=[4, 4, 8])
    vae = AutoencoderKL(sample_size=32, in_channels=3, out_channels=3, block_out_channels=(4,), layers_per_block=1,
                        latent_channels=1, norm_num_groups=1, use_quant_conv=False, use_post_quant_conv=False,
                        shift_factor=0.0609, scaling_factor=1.5035)
    pipe = FluxPipeline(scheduler=FlowMatchEulerDiscreteScheduler(), vae=vae, transformer=transformer, text_encoder=None,
                        tokenizer=None, text_encoder_2=None, tokenizer_2=None)
    pipe.set_progress_bar_config(disable=True)
    g = torch.Generator().manual_seed(2)
    embeds = dict(prompt_embeds=torch.randn(1, 8, 32, generator=g), pooled_prompt_embeds=torch.randn(1, 32, generator=g),
                  negative_prompt_embeds=torch.randn(1, 8, 32, generator=g),
                  negative_pooled_prompt_embeds=torch.randn(1, 32, generator=g))
    return pipe, embeds


def _flux(pipe, embeds):
    return pipe(**embeds, true_cfg_scale=2.0, num_inference_steps=2, height=8, width=8, output_type="np",
                generator=torch.Generator().manual_seed(0)).images


@pytest.mark.parametrize("via", ["processors", "hooks"])
def test_sd_pipeline_gag_on_off_steps_and_branches(sd_pipe, via):
    """The same on both paths: the hook path follows the pipeline's steps and [uncond, cond] batch too."""
    pipe, embeds = sd_pipe
    base = _sd(pipe, embeds)
    with apply_gag(pipe, strength=0.0, via=via):
        assert (_sd(pipe, embeds) == base).all()
    with apply_gag(pipe, method="gag", record=True, via=via) as h:
        assert set(h.paths.values()) == {via}
        on = _sd(pipe, embeds)
        n = len(h.layers)
        # every selected layer guided at both steps, both CFG rows
        assert n == 3 and sorted(step for _, _, step, _, _ in h.fn.log) == [0] * n + [1] * n
        assert all(rows == 2 and total == 2 for *_, rows, total in h.fn.log)
        assert h.state.num_steps == 2
    assert pytest.approx(0.0) != float(abs(on - base).max()) and (on == on).all()
    with apply_gag(pipe, steps=(0.5, 1.0), branches="cond", record=True, via=via) as h:
        _sd(pipe, embeds)
        assert [step for _, _, step, _, _ in h.fn.log] == [1] * len(h.layers)  # second step only
        assert all(rows == 1 and total == 2 for *_, rows, total in h.fn.log)  # [uncond, cond]: cond row only
        assert h.fn.dense_calls == len(h.layers)  # the first step passed through
    assert (_sd(pipe, embeds) == base).all()


def test_flux_pipeline_gag_on_off_steps_and_branches(flux_pipe):
    pipe, embeds = flux_pipe
    base = _flux(pipe, embeds)
    with apply_gag(pipe, method="dense"):
        assert (_flux(pipe, embeds) == base).all()
    with apply_gag(pipe, record=True) as h:
        on = _flux(pipe, embeds)
        # double + single block, cond and uncond calls, 2 steps
        assert len(h.layers) == 2 and len(h.fn.log) == 2 * 2 * 2
        assert sorted({step for _, _, step, _, _ in h.fn.log}) == [0, 1]
    assert not (on == base).all() and (on == on).all()
    with apply_gag(pipe, steps=(0.0, 0.5), branches="cond", record=True) as h:
        _flux(pipe, embeds)
        assert [step for _, _, step, _, _ in h.fn.log] == [0, 0]  # step 0, cond call, both layers
        assert h.fn.dense_calls == 2 * 2 * 2 - 2
    assert (_flux(pipe, embeds) == base).all()
