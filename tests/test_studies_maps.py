"""studies.maps: the effective GAG weights reproduce gag_attention, the maps' shapes and sums, store_maps on a
real capture, and the errors."""
import pytest
import torch
from hypothesis import example, given, settings, strategies as st

from hopfield_gag import gag_attention
from hopfield_gag.studies.maps import attention_maps, store_maps


def _record(seed, b=2, h=2, side=3, lk=5, d=4, spread=1.0):
    g = torch.Generator().manual_seed(seed)
    q = torch.randn(b, h, side * side, d, generator=g, dtype=torch.float64) * spread
    k = torch.randn(b, h, lk, d, generator=g, dtype=torch.float64) * spread
    v = torch.randn(b, h, lk, d, generator=g, dtype=torch.float64)
    return {"q": q, "k": k, "v": v, "scale": None, "kind": "cross", "layer": "x", "step": 0, "branch": "cond"}


@settings(max_examples=40, deadline=None)
@given(seed=st.integers(0, 2**31 - 1), lam=st.floats(0.0, 12.0), eta=st.floats(0.05, 20.0),
       zeta=st.floats(0.0, 1.0), parallel=st.sampled_from(["paper", "positive"]), spread=st.floats(0.3, 4.0))
@example(seed=0, lam=10.0, eta=0.05, zeta=0.0, parallel="paper", spread=4.0)  # the cap binds everywhere
def test_effective_gag_weights_reproduce_the_output(seed, lam, eta, zeta, parallel, spread):
    rec = _record(seed, spread=spread)
    for row in (0, 1):
        maps = attention_maps(rec, row=row, lam=lam, eta=eta, zeta=zeta, parallel=parallel)
        out = torch.einsum("hqk,hkd->hqd", maps.gag_weights, rec["v"][row])
        ref = gag_attention(rec["q"][row], rec["k"][row], rec["v"][row], method="gag", lam=lam, eta=eta,
                            zeta=zeta, parallel=parallel)
        assert torch.allclose(out, ref, rtol=1e-9, atol=1e-9)


def test_maps_shapes_sums_and_lambda_zero():
    rec = _record(1)
    m = attention_maps(rec, lam=0.0)
    assert m.dense.shape == m.entmax.shape == m.gag.shape == (5, 3, 3) and m.c.shape == (3, 3)
    # weights over tokens sum to one per query for dense and entmax; lam = 0 gives the entmax weights
    assert torch.allclose(m.dense.sum(0), torch.ones(3, 3, dtype=torch.float64))
    assert torch.allclose(m.entmax.sum(0), torch.ones(3, 3, dtype=torch.float64))
    assert torch.equal(m.gag, m.entmax)
    assert float(m.flipped.max()) == 0.0


def test_flipped_map_marks_negative_outputs_along_s():
    rec = _record(2, spread=3.0)
    m = attention_maps(rec, lam=10.0, eta=None)  # no cap, zeta = 0: flipped iff 1 + lam c < 0
    c_heads = (m.gag_weights.sum(-1) - 1.0) / 10.0  # weights sum to 1 + lam c
    assert torch.allclose(m.flipped.flatten(), (c_heads < -0.1).double().mean(0), atol=1e-12)


@pytest.mark.parametrize("change, msg", [({"q": None}, "'q'"), ({"query_index": torch.arange(3)}, "subsample"),
                                         ("nonsquare", "square"), ({"_row": 5}, "row")])
def test_attention_maps_errors(change, msg):
    rec = _record(0)
    row = 0
    if change == "nonsquare":
        rec["q"] = rec["q"][:, :, :8]
    else:
        row = change.pop("_row", 0) if "_row" in change else 0
        rec.update(change)
    with pytest.raises(ValueError, match=msg):
        attention_maps(rec, row=row)


def test_store_maps_on_a_capture(tmp_path):
    from hopfield_gag.capture import capture
    from hopfield_gag.models import load_model, sample

    model = load_model("dit-digits")
    with torch.inference_mode(), capture(model, tmp_path / "store", via="adapters", layers=r"blocks\.[01]\.attn2"):
        sample(model, [3], steps=1, cfg_scale=2.0, seed=0)
    paths = store_maps(tmp_path / "store", tmp_path / "maps")
    assert [p.name for p in paths] == ["maps_blocks.0.attn2_s0_cond.png", "maps_blocks.1.attn2_s0_cond.png"]
    assert all(p.stat().st_size > 5_000 for p in paths)
    with pytest.raises(ValueError, match="branch"):
        store_maps(tmp_path / "store", tmp_path / "maps", branch="nope")
    with pytest.raises(ValueError, match="max_records"):
        store_maps(tmp_path / "store", tmp_path / "maps", max_records=0)


def test_maps_command(tmp_path, capsys):
    from hopfield_gag.capture import capture
    from hopfield_gag.cli import main
    from hopfield_gag.models import load_model, sample

    model = load_model("dit-digits")
    with torch.inference_mode(), capture(model, tmp_path / "store", via="adapters", layers=r"blocks\.0\.attn2"):
        sample(model, [5], steps=2, cfg_scale=2.0, seed=0)
    assert main(["maps", str(tmp_path / "store"), "--out", str(tmp_path / "m"), "--step", "1", "--lam", "5"]) == 0
    printed = capsys.readouterr().out.split()
    assert [p.rsplit("/", 1)[-1] for p in printed] == ["maps_blocks.0.attn2_s1_cond.png"]
    # user errors: one line on stderr, status 2
    assert main(["maps", str(tmp_path / "nothing"), "--out", str(tmp_path / "m")]) == 2
    assert main(["maps", str(tmp_path / "store"), "--out", str(tmp_path / "m"), "--layer", "blocks.9"]) == 2
    assert main(["maps", str(tmp_path / "store"), "--out", str(tmp_path / "m"), "--step", "7"]) == 2
    assert main(["maps", str(tmp_path / "store"), "--out", str(tmp_path / "m"), "--zeta", "2"]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 4 and all(e.startswith("hopfield-gag: error: maps") for e in err)
