"""The UNet block string of layers= (ComfyUI PLADIS/PAG node convention, issue 19 item 5): d/m/u + the index of
a cross-attention transformer counted along the down / mid / up path + optional transformer_blocks range."""
import pytest
import torch

pytest.importorskip("diffusers")

from diffusers import UNet2DConditionModel  # noqa: E402

from hopfield_gag.adapters import install_attention_fn  # noqa: E402
from hopfield_gag.adapters.selection import is_block_string, parse_block_string  # noqa: E402
from _tiny_configs import SDXL_UNET  # noqa: E402


@pytest.fixture(scope="module")
def unet():
    torch.manual_seed(0)
    return UNet2DConditionModel(**SDXL_UNET).eval()


def test_block_string_selects_transformer_blocks(unet):
    # this UNet: down transformers d0, d1 (down_blocks.1.attentions.0/1), m0, up u0-u2 (up_blocks.0.attentions.0-2),
    # two transformer blocks each
    assert parse_block_string("d1.1,m0,u2.0-1", unet) == [
        "down_blocks.1.attentions.1.transformer_blocks.1", "mid_block.attentions.0.transformer_blocks.0",
        "mid_block.attentions.0.transformer_blocks.1", "up_blocks.0.attentions.2.transformer_blocks.0",
        "up_blocks.0.attentions.2.transformer_blocks.1"]
    assert parse_block_string("d0-1", unet) == [f"down_blocks.1.attentions.{a}.transformer_blocks.{t}"
                                                 for a in (0, 1) for t in (0, 1)]
    fn = lambda c: c.dense()  # noqa: E731
    with install_attention_fn(unet, fn, layers="d1.1,m0,u2.0-1", kinds=("cross",)) as h:
        assert h.layers == ["down_blocks.1.attentions.1.transformer_blocks.1.attn2",
                            "up_blocks.0.attentions.2.transformer_blocks.0.attn2",
                            "up_blocks.0.attentions.2.transformer_blocks.1.attn2",
                            "mid_block.attentions.0.transformer_blocks.0.attn2",
                            "mid_block.attentions.0.transformer_blocks.1.attn2"]
    with install_attention_fn(unet, fn, layers="u0.1") as h:  # without a kinds filter: self and cross
        assert h.layers == ["up_blocks.0.attentions.0.transformer_blocks.1.attn1",
                            "up_blocks.0.attentions.0.transformer_blocks.1.attn2"]
    with pytest.raises(ValueError, match=r"down transformer 2 is out of range \(this model has 2: 0..1\)"):
        parse_block_string("d2", unet)
    with pytest.raises(ValueError, match="transformer_blocks of up_blocks.0.attentions.0 3-9 is out of range"):
        parse_block_string("u0.3-9", unet)
    assert is_block_string("d2.2-9, m0,u0.4") and not is_block_string("down_blocks") and not is_block_string("d2.x")


def test_block_string_needs_a_unet():
    from hopfield_gag.models import load_model

    with pytest.raises(ValueError, match="block string 'd0'.*no down_blocks"):
        install_attention_fn(load_model("dit-digits"), lambda c: c.dense(), layers="d0")
