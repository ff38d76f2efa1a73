"""Configs of tiny diffusers models that build offline in milliseconds: one home for the adapter, hook, guider and
capture tests (SD1.5- and SDXL-style UNets, SD3, SD3.5, Flux, Qwen-Image)."""

SD15_UNET = dict(block_out_channels=(4, 8), norm_num_groups=4, down_block_types=("CrossAttnDownBlock2D", "DownBlock2D"),
                 up_block_types=("UpBlock2D", "CrossAttnUpBlock2D"), cross_attention_dim=8, attention_head_dim=2,
                 out_channels=4, in_channels=4, layers_per_block=1, sample_size=16)
SDXL_UNET = dict(block_out_channels=(2, 4), layers_per_block=2, sample_size=32, in_channels=4, out_channels=4,
                 down_block_types=("DownBlock2D", "CrossAttnDownBlock2D"), up_block_types=("CrossAttnUpBlock2D", "UpBlock2D"),
                 attention_head_dim=(2, 4), use_linear_projection=True, addition_embed_type="text_time",
                 addition_time_embed_dim=8, transformer_layers_per_block=(1, 2), projection_class_embeddings_input_dim=80,
                 cross_attention_dim=64, norm_num_groups=1)
SD3 = dict(sample_size=32, patch_size=1, in_channels=4, num_layers=2, attention_head_dim=8, num_attention_heads=4,
           caption_projection_dim=32, joint_attention_dim=32, pooled_projection_dim=64, out_channels=4,
           pos_embed_max_size=96, dual_attention_layers=(), qk_norm=None)
SD35 = dict(SD3, dual_attention_layers=(0,), qk_norm="rms_norm")
FLUX = dict(patch_size=1, in_channels=4, num_layers=1, num_single_layers=1, attention_head_dim=16, num_attention_heads=2,
            joint_attention_dim=32, pooled_projection_dim=32, axes_dims_rope=[4, 4, 8])
QWEN = dict(patch_size=2, in_channels=16, out_channels=4, num_layers=2, attention_head_dim=16, num_attention_heads=4,
            joint_attention_dim=16, guidance_embeds=False, axes_dims_rope=(8, 4, 4))


def tiny_sdxl_modular_pipeline():
    """A diffusers modular SDXL core-denoise pipeline on the tiny SDXL UNet (Euler, classifier-free guidance 5,
    no progress bar) and random prompt embeddings for it: ``(pipe, embeds)``. Imports diffusers when called."""
    import torch
    from diffusers import EulerDiscreteScheduler, UNet2DConditionModel
    from diffusers.guiders import ClassifierFreeGuidance
    from diffusers.modular_pipelines.stable_diffusion_xl.modular_blocks_stable_diffusion_xl import (
        StableDiffusionXLCoreDenoiseStep,
    )

    torch.manual_seed(0)
    unet = UNet2DConditionModel(**SDXL_UNET).eval()
    sched = EulerDiscreteScheduler(beta_start=0.00085, beta_end=0.012, steps_offset=1, beta_schedule="scaled_linear",
                                   timestep_spacing="leading")
    pipe = StableDiffusionXLCoreDenoiseStep().init_pipeline()
    pipe.update_components(unet=unet, scheduler=sched, guider=ClassifierFreeGuidance(guidance_scale=5.0))
    pipe.set_progress_bar_config(disable=True)
    g = torch.Generator().manual_seed(1)
    embeds = dict(prompt_embeds=torch.randn(1, 7, 64, generator=g), negative_prompt_embeds=torch.randn(1, 7, 64, generator=g),
                  pooled_prompt_embeds=torch.randn(1, 32, generator=g),
                  negative_pooled_prompt_embeds=torch.randn(1, 32, generator=g))
    return pipe, embeds
