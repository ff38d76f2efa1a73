"""hopfield-gag capture / store info / store verify on saved tiny diffusers denoisers (offline)."""
import json
import re

import pytest
import torch

pytest.importorskip("diffusers")

from diffusers import FluxTransformer2DModel, UNet2DConditionModel  # noqa: E402

from hopfield_gag.capture import ActivationStore  # noqa: E402
from hopfield_gag.cli import main  # noqa: E402


@pytest.fixture(scope="module")
def unet_dir(tmp_path_factory):
    torch.manual_seed(0)
    m = UNet2DConditionModel(block_out_channels=(4, 8), norm_num_groups=4, down_block_types=("CrossAttnDownBlock2D", "DownBlock2D"),
                             up_block_types=("UpBlock2D", "CrossAttnUpBlock2D"), cross_attention_dim=8, attention_head_dim=2,
                             out_channels=4, in_channels=4, layers_per_block=1, sample_size=8)
    path = tmp_path_factory.mktemp("models") / "unet"
    m.save_pretrained(path)
    return path


def test_capture_cli_with_cfg_then_info_and_verify(unet_dir, tmp_path, capsys):
    out = tmp_path / "acts"
    rc = main(["capture", "--model", str(unet_dir), "--steps", "3", "--out", str(out), "--layers", ".*attn2",
               "--cfg", "2.0", "--quiet"])
    assert rc == 0
    summary = capsys.readouterr().out
    assert "captured 24 records" in summary and "4 layers x 3 steps" in summary
    store = ActivationStore(out)
    assert store.complete and store.steps == [0, 1, 2] and set(store.branches) == {"uncond", "cond"}
    rec = next(store.records(step=1, branch="cond"))
    assert rec["num_steps"] == 3 and rec["q"].shape[0] == 1 and rec["kind"] == "cross"

    assert main(["store", "info", str(out), "--json"]) == 0
    info = json.loads(capsys.readouterr().out)
    assert info["records"] == 24 and info["complete"] and len(info["layers"]) == 4
    assert main(["store", "info", str(out)]) == 0
    assert re.search(r"complete\s+yes", capsys.readouterr().out)
    assert main(["store", "verify", str(out)]) == 0
    assert capsys.readouterr().out.startswith("ok: ")
    # corrupt one shard: verify names it and fails
    shard = out / store.shards[0]
    data = bytearray(shard.read_bytes())
    data[-1] ^= 0xFF
    shard.write_bytes(bytes(data))
    assert main(["store", "verify", str(out)]) == 2
    assert store.shards[0] in capsys.readouterr().out
    # another run into the same directory without --resume is refused
    before = {f.name: f.read_bytes() for f in out.iterdir()}
    assert main(["capture", "--model", str(unet_dir), "--steps", "3", "--out", str(out), "--quiet"]) == 2
    assert "resume=True" in capsys.readouterr().err
    assert {f.name: f.read_bytes() for f in out.iterdir()} == before


def test_capture_cli_flux_dir_window_and_bad_paths(tmp_path, capsys):
    torch.manual_seed(0)
    FluxTransformer2DModel(patch_size=1, in_channels=4, num_layers=1, num_single_layers=1, attention_head_dim=16,
                           num_attention_heads=2, joint_attention_dim=32, pooled_projection_dim=32,
                           axes_dims_rope=[4, 4, 8]).save_pretrained(tmp_path / "flux")
    rc = main(["capture", "--model", str(tmp_path / "flux"), "--steps", "4", "--window", "0.5,1.0",
               "--out", str(tmp_path / "a"), "--dtype", "bfloat16", "--quiet"])
    assert rc == 0
    store = ActivationStore(tmp_path / "a")
    assert store.steps == [2, 3] and len(store.layers) == 2
    assert next(iter(store))["q"].dtype == torch.bfloat16
    assert main(["capture", "--model", str(tmp_path / "flux"), "--steps", "4", "--window", "0.5,1.5",
                 "--out", str(tmp_path / "c"), "--quiet"]) == 2
    assert "must be a fraction in [0, 1]" in capsys.readouterr().err and not (tmp_path / "c").exists()
    assert main(["store", "info", str(tmp_path / "nothing")]) == 2
    assert "no manifest.json" in capsys.readouterr().err
    assert main(["capture", "--model", str(tmp_path), "--steps", "2", "--out", str(tmp_path / "b")]) == 2
    assert "no config.json" in capsys.readouterr().err and not (tmp_path / "b").exists()


def test_capture_shipped_model_route(tmp_path, capsys, monkeypatch):
    """--model dit-digits goes through hopfield_gag.models (load_model + sample). The shipped weights may not
    be built yet, so load_model is replaced by the same architecture with fresh weights."""
    import hopfield_gag.models as models
    from hopfield_gag.models.registry import build

    monkeypatch.setattr(models, "load_model", lambda name: build(name).eval())
    ref = models.sample(build("dit-digits").eval(), [3], steps=2, cfg_scale=2.0)
    assert main(["capture", "--model", "dit-digits", "--steps", "2", "--cfg", "2", "--labels", "3",
                 "--layers", r"blocks\.0\..*", "--out", str(tmp_path / "d"), "--quiet"]) == 0
    assert "records" in capsys.readouterr().out
    store = ActivationStore(tmp_path / "d")
    assert store.steps == [0, 1] and set(store.branches) == {"uncond", "cond"}
    assert all(name.startswith("blocks.0.") for name in store.layers)
    # capture leaves the sampler's output untouched
    from hopfield_gag.capture import capture

    model = build("dit-digits").eval()
    with capture(model, tmp_path / "e", layers=r"blocks\.1\.attn2"):
        out = models.sample(model, [3], steps=2, cfg_scale=2.0)
    assert torch.equal(out, ref)
    rec = next(ActivationStore(tmp_path / "e").records(step=1, branch="cond"))
    assert rec["kind"] == "cross" and rec["num_steps"] == 2 and rec["q"].shape[0] == 1
