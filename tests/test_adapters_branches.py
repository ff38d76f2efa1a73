"""apply_gag after the seam work (issue 19 items 2, 4, 5): branch labelling that never guesses (confirmed bug: a
modular pipeline or a hand-written loop used to label every row "cond", so branches="cond" silently guided the
unconditional pass too), via= and preset=, and the one meaning of steps= in apply_gag."""
import types

import pytest
import torch

pytest.importorskip("diffusers")

from diffusers import EulerDiscreteScheduler, UNet2DConditionModel  # noqa: E402

from hopfield_gag.adapters import apply_gag, installed  # noqa: E402
from hopfield_gag.adapters.presets import PRESETS  # noqa: E402
from _tiny_configs import SD15_UNET, tiny_sdxl_modular_pipeline  # noqa: E402

FIX = "branches='cond'.*GAGGuidance.*cache_context.*batch_branches"


@pytest.fixture(scope="module")
def modular():
    return tiny_sdxl_modular_pipeline()


def _run(pipe, embeds):
    return pipe(**embeds, num_inference_steps=2, height=64, width=64, generator=torch.Generator().manual_seed(0),
                output="latents")


@pytest.fixture(scope="module")
def sd15():
    torch.manual_seed(0)
    return UNet2DConditionModel(**SD15_UNET).eval()


def test_branches_cond_raises_in_a_modular_pipeline_instead_of_guiding_both_passes(modular):
    """A modular pipeline runs cond and uncond as separate batch-1 passes and says nothing about it: the rows
    are unknown, so branches='cond' raises naming the fixes (it used to label every row "cond" and guide the
    unconditional pass too)."""
    pipe, embeds = modular
    with apply_gag(pipe, branches="cond") as h:
        with pytest.raises(RuntimeError, match=FIX):
            _run(pipe, embeds)
        assert h.state.batch_branches is None
    with apply_gag(pipe, branches="all") as h:  # guiding every row needs no labels
        _run(pipe, embeds)
    assert installed(pipe.unet) == ()


def test_branches_cond_raises_in_a_hand_written_loop():
    """A loop over the model that calls it once for uncond and once for cond: neither a pipeline object
    without do_classifier_free_guidance nor a classic pipeline outside its __call__ tells the rows."""
    from diffusers import StableDiffusionPipeline

    torch.manual_seed(0)
    unet = UNet2DConditionModel(block_out_channels=(4, 8), norm_num_groups=4, cross_attention_dim=8,
                                down_block_types=("CrossAttnDownBlock2D", "DownBlock2D"), attention_head_dim=2,
                                up_block_types=("UpBlock2D", "CrossAttnUpBlock2D"), layers_per_block=1,
                                sample_size=16).eval()
    sched = EulerDiscreteScheduler()
    sched.set_timesteps(2)
    classic = StableDiffusionPipeline(unet=unet, vae=None, scheduler=sched, text_encoder=None, tokenizer=None,
                                      safety_checker=None, feature_extractor=None, requires_safety_checker=False)
    g = torch.Generator().manual_seed(0)
    x, cond, uncond = torch.randn(1, 4, 8, 8, generator=g), torch.randn(1, 4, 8, generator=g), torch.randn(1, 4, 8, generator=g)
    for owner in (types.SimpleNamespace(unet=unet, scheduler=sched), classic, unet):
        with apply_gag(owner, branches="cond") as h, torch.no_grad():
            with pytest.raises(RuntimeError, match=FIX):
                for t in sched.timesteps:
                    unet(x, t, encoder_hidden_states=uncond)
                    unet(x, t, encoder_hidden_states=cond)
            # the fix the message names: label the rows of each call
            h.fn.update(record=True)
            for t in sched.timesteps:
                for label, text in (("uncond", uncond), ("cond", cond)):
                    h.state.batch_branches = (label,)
                    unet(x, t, encoder_hidden_states=text)
            assert len(h.fn.log) == 2 * len(h.layers) and h.fn.dense_calls == 2 * len(h.layers)


# ------------------------------------------------------------------------------------------------ apply_gag


def _out(unet, t=10, seed=0):
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        return unet(torch.randn(2, 4, 8, 8, generator=g), torch.tensor([t]),
                    encoder_hidden_states=torch.randn(2, 4, 8, generator=g))[0]


def test_apply_gag_via_hooks_matches_processors_and_keeps_processors(sd15):
    ref = _out(sd15)
    procs = {n: m.processor for n, m in sd15.named_modules() if hasattr(m, "set_processor")}
    outs = {}
    for via in ("processors", "hooks"):
        with apply_gag(sd15, via=via, strength=0.0):
            assert torch.equal(_out(sd15), ref)
        with apply_gag(sd15, via=via, lam=10.0) as h:
            assert set(h.paths.values()) == {via}
            if via == "hooks":
                assert all(m.processor is procs[n] for n, m in sd15.named_modules() if n in procs)
            outs[via] = _out(sd15)
    assert not torch.equal(outs["hooks"], ref)
    assert torch.allclose(outs["hooks"], outs["processors"], atol=2e-5, rtol=0)  # fp32 rounding (test_hooks.py)
    with pytest.raises(ValueError, match="via must be one of"):
        apply_gag(sd15, via="both")


def test_presets(sd15):
    assert set(PRESETS) == {"paper", "pladis", "conservative"}
    with apply_gag(sd15, preset="paper") as h:
        assert (h.fn.method, h.fn.lam, h.fn.eta) == ("gag", 10.0, 15.0)
    with apply_gag(sd15, preset="pladis") as h:
        assert (h.fn.method, h.fn.lam) == ("pladis", 2.0)
    with apply_gag(sd15, preset="conservative", lam=4.0) as h:  # explicit arguments win
        assert (h.fn.method, h.fn.lam, h.fn.strength, h.fn.sigmas) == ("gag", 4.0, 0.6, (0.678, 0.881))
        h.state.sigma = 0.5
        ref = _out(sd15)
        h.state.sigma = 0.7
        assert not torch.equal(_out(sd15), ref)  # inside the sigma window
    with apply_gag(sd15, preset="pladis", method="gag") as h:
        assert (h.fn.method, h.fn.lam) == ("gag", 2.0)
    with pytest.raises(ValueError, match="preset must be one of"):
        apply_gag(sd15, preset="strong")
    assert installed(sd15) == ()


def test_apply_gag_steps_have_the_one_meaning(sd15):
    """(0, 1) is the whole schedule, [0, 1] the first two steps, a pair of ints > 1 an error naming lists."""
    for steps, guided in (((0, 1), [0, 1, 2, 3]), ([0, 1], [0, 1]), ((0.25, 0.75), [1, 2]), (range(3, 4), [3])):
        with apply_gag(sd15, steps=steps, record=True, layers="up_blocks") as h:
            for i in range(4):
                h.state.set_step(i, 4)
                _out(sd15)
            assert sorted({step for _, _, step, _, _ in h.fn.log}) == guided, steps
    with pytest.raises(ValueError, match="list or range"):
        apply_gag(sd15, steps=(1, 3))
