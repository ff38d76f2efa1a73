"""The shipped digit-grid models: each loads offline (file <= 10 MB), samples grid prompts in every attention
method through the adapters, and is bit-identical to stock attention at strength 0; the sampling API's
prompt forms agree. Tiny batches and 1-2 steps keep this fast."""
from __future__ import annotations

import json
from importlib import resources

import pytest
import torch

from hopfield_gag.adapters import install_attention_fn, list_attention_layers
from hopfield_gag.models import MODELS, load_model, sample

GRID_MODELS = [m for m in MODELS if "grid" in m]
METHODS = {
    "sparse": {}, "pladis": {"lam": 2.0}, "gag": {"lam": 10.0, "eta": 15.0}, "aa": {},
}
PROMPTS = ["r0c0:3 r1c1:5 r2c2:8", [(0, 2, 7)]]


@pytest.fixture(scope="module", params=GRID_MODELS)
def model(request):
    return request.param, load_model(request.param)


def test_the_grid_models_are_shipped():
    assert {"dit-grid", "unet-grid", "sd3-grid", "dit-grid-undertrained", "dit-grid-student"} <= set(MODELS)


def test_loads_offline_within_the_size_limit(model):
    name, m = model
    root = resources.files("hopfield_gag.models").joinpath("weights")
    with resources.as_file(root.joinpath(f"{name}.safetensors")) as path:
        assert path.stat().st_size <= 10 * 2**20
    rec = json.loads(root.joinpath(f"{name}.json").read_text())["training"]
    assert sum(p.numel() for p in m.parameters()) == rec["parameters"]
    assert root.joinpath(f"{name}.md").is_file()
    assert not m.training


def test_samples_in_every_attention_method(model):
    name, m = model
    dense = sample(m, PROMPTS, steps=1, cfg_scale=2.0, seed=0)
    assert dense.shape == (2, 1, 24, 24) and float(dense.min()) >= 0 and float(dense.max()) <= 1
    for method, params in METHODS.items():
        out = sample(m, PROMPTS, steps=1, cfg_scale=2.0, seed=0, method=method, **params)
        assert out.shape == dense.shape and torch.isfinite(out).all(), (name, method)
        assert float(out.min()) >= 0 and float(out.max()) <= 1
        if method in ("gag", "pladis"):
            assert not torch.equal(out, dense), (name, method)


def test_strength_zero_is_bit_identical_to_stock(model):
    name, m = model
    ref = sample(m, PROMPTS, steps=2, cfg_scale=2.0, seed=1)
    for method, params in METHODS.items():
        out = sample(m, PROMPTS, steps=2, cfg_scale=2.0, seed=1, method=method, strength=0.0, **params)
        assert torch.equal(out, ref), (name, method)
    assert torch.equal(sample(m, PROMPTS, steps=2, cfg_scale=2.0, seed=1), ref)  # uninstalled afterwards


def test_installed_function_sees_steps_and_branches(model):
    name, m = model
    calls = []

    def fn(call):
        calls.append((call.layer, call.step, call.branches))
        return call.dense()

    ref = sample(m, PROMPTS[:1], steps=2, cfg_scale=2.0, seed=2)
    with install_attention_fn(m, fn, layers="auto"):
        out = sample(m, PROMPTS[:1], steps=2, cfg_scale=2.0, seed=2)
    assert torch.equal(out, ref)
    kinds = {i.kind for i in list_attention_layers(m) if i.name in {c[0] for c in calls}}
    assert kinds == ({"joint"} if name.startswith("sd3") else {"cross"})
    assert {c[1] for c in calls} == {0, 1} and {c[2] for c in calls} == {("uncond", "cond")}


def test_prompt_forms_agree_and_bad_prompts_are_named():
    m = load_model(GRID_MODELS[0])
    from hopfield_gag.models.grid_data import layouts_to_tokens, prompts_to_layouts

    a = sample(m, ["r0c0:3 r2c1:7"], steps=1, seed=0)
    b = sample(m, [[(2, 1, 7), (0, 0, 3)]], steps=1, seed=0)
    c = sample(m, "r2c1:7 r0c0:3", steps=1, seed=0)
    d = sample(m, layouts_to_tokens(prompts_to_layouts(["r0c0:3 r2c1:7"])), steps=1, seed=0)
    assert torch.equal(a, b) and torch.equal(a, c) and torch.equal(a, d)
    with pytest.raises(ValueError, match="outside"):
        sample(m, ["r5c0:1"], steps=1)
    with pytest.raises(ValueError, match="tokens"):
        sample(m, torch.zeros(2, 3, dtype=torch.int64), steps=1)
    with pytest.raises(ValueError, match="x must have shape"):
        m(torch.randn(1, 1, 8, 8), torch.zeros(1), torch.zeros(1, 9, dtype=torch.int64))


@pytest.mark.parametrize("name", ["dit-grid", "unet-grid", "sd3-grid"])
def test_bad_denoiser_inputs_name_the_argument(name):
    """Each architecture runs the one input check: a wrong canvas or a mismatched batch names x or t."""
    model = load_model(name)
    ch = getattr(model.config, "channels", 1)
    r = model.config.resolution
    tokens = torch.zeros(2, model.prompt_length, dtype=torch.long)
    with pytest.raises(ValueError, match=rf"x must have shape \(B, {ch}, {r}, {r}\)"):
        model(torch.zeros(2, ch, r - 1, r), torch.zeros(2), tokens)
    with pytest.raises(ValueError, match=r"t must be \(B,\)"):
        model(torch.zeros(2, ch, r, r), torch.zeros(3), tokens)
