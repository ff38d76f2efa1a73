"""experiments/run_pipeline_gag.py: absent weights are a clear error with no download attempt; a pipeline saved
on disk (tiny, with a tiny CLIP text encoder and a hand-written tokenizer vocabulary) runs off/on and the pair
is saved side by side. The network is blocked in-process (socket.connect raises) for both."""
import json
import os
import socket
import subprocess
import sys
from pathlib import Path

import pytest
import torch

pytest.importorskip("diffusers")
pytest.importorskip("transformers")

from _experiments import load_experiment  # noqa: E402

ROOT = Path(__file__).resolve().parents[1]
SCRIPT = ROOT / "experiments" / "run_pipeline_gag.py"


@pytest.fixture
def no_network(monkeypatch):
    def refuse(*a, **k):
        raise AssertionError(f"network access attempted: {a}")

    monkeypatch.setattr(socket.socket, "connect", refuse)
    monkeypatch.setattr(socket, "create_connection", refuse)
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")


def test_absent_weights_is_a_clear_error_without_download(tmp_path, monkeypatch, no_network):
    monkeypatch.setenv("HF_HOME", str(tmp_path / "hf"))
    mod = load_experiment("run_pipeline_gag")
    with pytest.raises(SystemExit) as e:
        mod.main(["no-such-org/no-such-model", "--prompt", "x"])
    assert e.value.code == 2
    assert "weights not found" in str(e.value) and "no-such-org/no-such-model" in str(e.value) and "never downloads" in str(e.value)
    (tmp_path / "empty").mkdir()
    with pytest.raises(SystemExit, match="model_index.json"):
        mod.main([str(tmp_path / "empty"), "--prompt", "x"])
    # as a program: exit code 2 and the message on stderr
    env = dict(os.environ, HF_HOME=str(tmp_path / "hf"), PYTHONPATH=str(ROOT))
    r = subprocess.run([sys.executable, str(SCRIPT), "no-such-org/no-such-model", "--prompt", "x"], capture_output=True,
                       text=True, env=env, timeout=120)
    assert r.returncode == 2 and "weights not found" in r.stderr


def _tiny_sd_pipeline(path: Path):
    from diffusers import AutoencoderKL, DDIMScheduler, StableDiffusionPipeline, UNet2DConditionModel
    from transformers import CLIPTextConfig, CLIPTextModel, CLIPTokenizer

    vocab = {"<|startoftext|>": 0, "<|endoftext|>": 1}
    for c in "abcdefghijklmnopqrstuvwxyz":
        vocab.setdefault(c, len(vocab))
        vocab.setdefault(c + "</w>", len(vocab))
    (path / "tok").mkdir(parents=True)
    (path / "tok" / "vocab.json").write_text(json.dumps(vocab))
    (path / "tok" / "merges.txt").write_text("#version: 0.2\n")
    tokenizer = CLIPTokenizer(str(path / "tok" / "vocab.json"), str(path / "tok" / "merges.txt"), model_max_length=16)
    torch.manual_seed(0)
    text_encoder = CLIPTextModel(CLIPTextConfig(bos_token_id=0, eos_token_id=1, pad_token_id=1, hidden_size=8, intermediate_size=16,
                                                num_attention_heads=2, num_hidden_layers=2, vocab_size=len(vocab),
                                                max_position_embeddings=16))
    unet = UNet2DConditionModel(block_out_channels=(4, 8), layers_per_block=1, sample_size=16, in_channels=4, out_channels=4,
                                down_block_types=("DownBlock2D", "CrossAttnDownBlock2D"),
                                up_block_types=("CrossAttnUpBlock2D", "UpBlock2D"), cross_attention_dim=8, norm_num_groups=2)
    vae = AutoencoderKL(block_out_channels=[4, 8], in_channels=3, out_channels=3, down_block_types=["DownEncoderBlock2D"] * 2,
                        up_block_types=["UpDecoderBlock2D"] * 2, latent_channels=4, norm_num_groups=2)
    sched = DDIMScheduler(beta_start=0.00085, beta_end=0.012, beta_schedule="scaled_linear", clip_sample=False,
                          set_alpha_to_one=False, steps_offset=1)
    pipe = StableDiffusionPipeline(unet=unet, vae=vae, scheduler=sched, text_encoder=text_encoder, tokenizer=tokenizer,
                                   safety_checker=None, feature_extractor=None, image_encoder=None, requires_safety_checker=False)
    pipe.save_pretrained(path / "pipe")
    return path / "pipe"


def test_pipeline_on_disk_runs_and_saves_the_pair(tmp_path, no_network):
    from PIL import Image

    pipe_dir = _tiny_sd_pipeline(tmp_path)
    out = tmp_path / "pair.png"
    mod = load_experiment("run_pipeline_gag")
    assert mod.main([str(pipe_dir), "--prompt", "a red fox", "--method", "gag", "--lam", "10", "--steps", "2",
                     "--height", "32", "--width", "32", "--device", "cpu", "--out", str(out)]) == 0
    img = Image.open(out)
    assert img.size == (64, 32)
    px = torch.from_numpy(__import__("numpy").asarray(img.convert("RGB")).copy())
    assert not torch.equal(px[:, :32], px[:, 32:])  # guidance changed the image
