"""GAGGuidance / PLADISGuidance in a diffusers modular pipeline (SDXL core denoise blocks from tiny random
components, precomputed prompt embeddings, 2 steps, offline; issue 19 item 3). Exactness claims use
torch.equal: strength 0 must reproduce CFG bit for bit."""
import pytest
import torch

pytest.importorskip("diffusers")

from diffusers.guiders import ClassifierFreeGuidance  # noqa: E402

from hopfield_gag.adapters import installed, list_attention_layers  # noqa: E402
from hopfield_gag.adapters.guiders import GAGGuidance, PLADISGuidance  # noqa: E402
from _tiny_configs import tiny_sdxl_modular_pipeline  # noqa: E402

N_AUTO = 10  # "auto" on this UNet: its 10 down + up cross-attention layers (not mid)


@pytest.fixture(scope="module")
def modular():
    return tiny_sdxl_modular_pipeline()


def _run(pipe, embeds, guider=None):
    if guider is not None:
        pipe.update_components(guider=guider)
    try:
        return pipe(**embeds, num_inference_steps=2, height=64, width=64, generator=torch.Generator().manual_seed(0),
                    output="latents")
    finally:
        pipe.update_components(guider=ClassifierFreeGuidance(guidance_scale=5.0))


def test_gag_guider_in_a_modular_pipeline(modular):
    pipe, embeds = modular
    unet = pipe.unet
    procs = {n: m.processor for n, m in unet.named_modules() if hasattr(m, "set_processor")}
    assert len([i for i in list_attention_layers(unet) if i.kind == "cross" and not i.name.startswith("mid")]) == N_AUTO
    cfg = _run(pipe, embeds)
    assert torch.equal(_run(pipe, embeds, GAGGuidance(guidance_scale=5.0, strength=0.0)), cfg)
    guider = GAGGuidance(guidance_scale=5.0, lam=10.0, eta=15.0)
    guider.attention.update(record=True)
    out = _run(pipe, embeds, guider)
    assert torch.isfinite(out).all() and not torch.equal(out, cfg)
    # branches="cond": only the conditional pass of each step is guided, every row of it, at its step
    log = guider.attention.log
    assert len(log) == N_AUTO * 2 and sorted(step for _, _, step, _, _ in log) == [0] * N_AUTO + [1] * N_AUTO
    assert all(rows == total == 1 for *_, rows, total in log)
    assert installed(unet) == () and all(m.processor is procs[n] for n, m in unet.named_modules() if n in procs)
    # both passes, second half of the schedule only
    both = GAGGuidance(guidance_scale=5.0, branches="all", gag_start=0.5)
    both.attention.update(record=True)
    _run(pipe, embeds, both)
    assert [step for _, _, step, _, _ in both.attention.log] == [1] * (2 * N_AUTO)
    # without CFG (guidance_scale 1) one conditional pass per step, still guided
    single = GAGGuidance(guidance_scale=1.0)
    _run(pipe, embeds, single)
    assert single.attention.guided_calls == 2 * N_AUTO


def _public(config):
    return {k: v for k, v in config.items() if not k.startswith("_")}  # diffusers' bookkeeping keys aside


def test_guider_config_round_trip_and_pladis_defaults(tmp_path):
    g = GAGGuidance(guidance_scale=4.0, lam=5.0, eta=20.0, zeta=0.3, strength=0.5, gag_start=0.2, gag_stop=0.8,
                    layers=["up_blocks", 0], branches="all", via="hooks")
    g.save_pretrained(tmp_path / "gag")
    h = GAGGuidance.from_pretrained(tmp_path / "gag")
    assert type(h) is GAGGuidance and _public(h.config) == _public(g.config)
    assert h.guidance_scale == 4.0 and h.attention.options == g.attention.options and h.attention.steps == g.attention.steps
    assert h.new(lam=7.0).attention.lam == 7.0
    p = PLADISGuidance(guidance_scale=3.0)
    assert (p.attention.method, p.attention.lam) == ("pladis", 2.0)
    p.save_pretrained(tmp_path / "pladis")
    q = PLADISGuidance.from_pretrained(tmp_path / "pladis")
    assert type(q) is PLADISGuidance and _public(q.config) == _public(p.config) and q.attention.lam == 2.0
    assert GAGGuidance(preset="pladis").attention.method == "pladis"
    assert GAGGuidance(preset="paper", lam=3.0).attention.lam == 3.0
    for bad, match in [(dict(lam=-1.0), "lam"), (dict(branches="uncond"), "branches"), (dict(via="x"), "via"),
                       (dict(preset="nope"), "preset"), (dict(preset="conservative"), "sigmas"),
                       (dict(gag_start=0.9, gag_stop=0.1), "start")]:
        with pytest.raises(ValueError, match=match):
            GAGGuidance(**bad)
