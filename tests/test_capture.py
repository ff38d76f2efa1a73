"""capture() through torch hooks on a plain nn.Module: exactness, selection, crash/resume, bad input.

Tolerances: the recomputation softmax(q k^T scale) v in float64 from fp32 tensors is compared with the
model's fp32 SDPA output; both are O(L * u32) away from the exact value (u32 = 6e-8, L <= 8 keys), so 1e-5
is a wide but meaningful bound.
"""
import os
import re
import subprocess
import sys
import textwrap

import pytest
import torch
import torch.nn.functional as F
from torch import nn

import hopfield_gag as hg
from hopfield_gag.capture import ActivationStore, StoreError, StoreMismatchError, capture


class Attn(nn.Module):
    def __init__(self, dim=16, heads=2):
        super().__init__()
        self.heads = heads
        self.to_q, self.to_k, self.to_v = nn.Linear(dim, dim), nn.Linear(dim, dim), nn.Linear(dim, dim)
        self.to_out = nn.Linear(dim, dim)

    def forward(self, x, encoder_hidden_states=None):
        c = x if encoder_hidden_states is None else encoder_hidden_states
        q, k, v = (t.unflatten(-1, (self.heads, -1)).transpose(1, 2) for t in (self.to_q(x), self.to_k(c), self.to_v(c)))
        o = F.scaled_dot_product_attention(q, k, v)
        return self.to_out(o.transpose(1, 2).flatten(2))


class Net(nn.Module):
    def __init__(self, seed=0):
        super().__init__()
        torch.manual_seed(seed)
        self.blocks = nn.ModuleList([Attn(), Attn()])
        self.proj = nn.Linear(16, 16)

    def forward(self, x, ctx):
        return self.proj(self.blocks[1](self.blocks[0](x), encoder_hidden_states=ctx))


def _inputs(b=2):
    g = torch.Generator().manual_seed(1)
    return torch.randn(b, 6, 16, generator=g), torch.randn(b, 3, 16, generator=g)


def _snapshot(path):
    return {f: (path / f).read_bytes() for f in sorted(os.listdir(path))}


def test_outputs_identical_and_recomputed_attention_matches(tmp_path):
    net, (x, c) = Net(), _inputs()
    ref = [net(x, c) for _ in range(2)]
    pre_out = {}
    hooks = [blk.to_out.register_forward_pre_hook(lambda m, a, i=i: pre_out.__setitem__(i, a[0].detach()))
             for i, blk in enumerate(net.blocks)]
    with capture(net, tmp_path / "s", compute=("dense",)) as cap:
        outs = [net(x, c) for _ in range(2)]
    for h in hooks:
        h.remove()
    assert all(torch.equal(a, b) for a, b in zip(outs, ref))
    assert cap.layers == ["blocks.0", "blocks.1"]
    store = ActivationStore(tmp_path / "s")
    assert store.complete and store.steps == [0, 1] and len(store) == 4
    for i, layer in enumerate(cap.layers):
        rec = next(store.records(layer=layer, step=1))
        q, k, v = (rec[n].double() for n in "qkv")
        scale = rec["scale"] or q.shape[-1] ** -0.5
        o = torch.softmax(q @ k.transpose(-1, -2) * scale, -1) @ v
        assert torch.allclose(o.transpose(1, 2).flatten(2), pre_out[i].double(), atol=1e-5, rtol=0)
        assert torch.allclose(rec["dense"].double(), o, atol=1e-5, rtol=0)
    rec = next(store.records(layer="blocks.1"))
    assert rec["kind"] == "cross" and rec["text_keys"] == slice(0, 3) and rec["source"] == "hooks"


def test_selection_heads_tokens_steps_dtype_and_branches(tmp_path):
    net, (x, c) = Net(), _inputs(4)
    with capture(net, tmp_path / "full") as _:
        for _ in range(4):
            net(x, c)
    with capture(net, tmp_path / "sel", layers=r"blocks\.1", steps=[1, 3], heads=[1], tokens=4,
                 dtype=torch.float16, cfg_batch=True) as cap:
        for _ in range(4):
            net(x, c)
    full, sel = ActivationStore(tmp_path / "full"), ActivationStore(tmp_path / "sel")
    assert sel.layers == ["blocks.1"] and sel.steps == [1, 3] and sel.branches == ["uncond", "cond"]
    for rec in sel:
        ref = next(full.records(layer="blocks.1", step=rec["step"]))
        rows = slice(0, 2) if rec["branch"] == "uncond" else slice(2, 4)
        idx = rec["query_index"]
        assert idx.shape == (4,) and rec["q"].shape == (2, 1, 4, 8) and rec["q"].dtype == torch.float16
        assert torch.equal(rec["q"], ref["q"][rows, 1:2, idx].half())
        assert torch.equal(rec["k"], ref["k"][rows, 1:2].half())  # keys stay complete
    assert cap.summary()["records"] == 4
    # a fractional window: 4 steps, (0.5, 1.0) keeps steps 2 and 3
    with capture(net, tmp_path / "win", steps=(0.5, 1.0), num_steps=4, layers=["blocks.0"]):
        for _ in range(4):
            net(x, c)
    assert ActivationStore(tmp_path / "win").steps == [2, 3]


def test_on_the_fly_outputs_and_margins_are_the_library_functions(tmp_path):
    net, (x, c) = Net(), _inputs()
    with capture(net, tmp_path / "s", compute=("sparse", "sharpening", "query_alignment", "parallel")):
        net(x, c)
    with capture(net, tmp_path / "m", compute=("sparse", "parallel"), keep_qkv=False):
        net(x, c)
    for rec, lean in zip(ActivationStore(tmp_path / "s"), ActivationStore(tmp_path / "m")):
        q, k, v = rec["q"], rec["k"], rec["v"]
        assert torch.equal(rec["sparse"], hg.sparse_dense_discrepancy(q, k, v).sparse)
        assert torch.equal(rec["margin_sharpening"], hg.sharpening_margin(q, k).float())
        assert torch.equal(rec["margin_query_alignment"], hg.query_alignment_margin(q, k).float())
        assert torch.equal(rec["margin_parallel"], hg.parallel_margin(q, k, v).float())
        assert "q" not in lean and torch.equal(lean["sparse"], rec["sparse"])
        assert torch.equal(lean["margin_parallel"], rec["margin_parallel"])


def test_memory_budget_bounds_ram(tmp_path):
    net, (x, c) = Net(), _inputs()
    budget = 1 << 16
    with capture(net, tmp_path / "s", memory_budget=budget) as cap:
        for _ in range(40):
            net(x, c)
    assert 0 < cap.peak_pending <= budget
    assert ActivationStore(tmp_path / "s").verify().records == 80 and len(cap.store.shards) > 1


def test_custom_extractor_on_a_named_module(tmp_path):
    net, (x, c) = Net(), _inputs()
    seen = {}

    def extractor(module, args, kwargs, output):
        # reads the inputs the hooks can see; a real extractor would recompute q/k/v from them
        h = args[0]
        q = module.to_q(h).unflatten(-1, (2, -1)).transpose(1, 2)
        k = module.to_k(h).unflatten(-1, (2, -1)).transpose(1, 2)
        seen["q"] = q
        return {"q": q, "k": k, "v": k, "scale": 0.5}

    with capture(net, tmp_path / "s", layers="blocks.0", extractor=extractor):
        net(x, c)
    (rec,) = list(ActivationStore(tmp_path / "s"))
    assert rec["layer"] == "blocks.0" and rec["scale"] == 0.5 and torch.equal(rec["q"], seen["q"].detach())


def test_interrupted_capture_then_resume_completes(tmp_path):
    net, (x, c) = Net(), _inputs()
    with capture(net, tmp_path / "ref"):
        for _ in range(4):
            net(x, c)
    path = tmp_path / "s"
    with pytest.raises(KeyboardInterrupt):
        with capture(net, path, shard_bytes=1):
            for step in range(4):
                net(x, c)
                if step == 1:
                    raise KeyboardInterrupt("simulated crash")
    half = ActivationStore(path)
    assert not half.complete and half.verify().records == 4 and half.steps == [0, 1]
    with capture(net, path, resume=True) as cap:
        for _ in range(4):
            net(x, c)
    assert cap.skipped == 4 and cap.records == 4
    done, ref = ActivationStore(path), ActivationStore(tmp_path / "ref")
    assert done.complete and done.verify().records == 8
    for a in ref:
        b = next(done.records(layer=a["layer"], step=a["step"]))
        assert all(torch.equal(a[n], b[n]) for n in "qkv")


def test_killed_process_leaves_valid_shards(tmp_path):
    """A hard kill (os._exit: no finally, no flush) mid-capture: every listed shard verifies."""
    code = textwrap.dedent(f"""
        import os, sys, time, torch
        sys.path.insert(0, {os.path.dirname(__file__)!r})
        from test_capture import Net, _inputs
        from hopfield_gag.capture import capture
        net, (x, c) = Net(), _inputs()
        with capture(net, {str(tmp_path / 's')!r}, shard_bytes=1) as cap:
            for step in range(6):
                net(x, c)
                if step == 3:
                    while cap.records < 4:  # let a few shards land, then die without cleanup
                        time.sleep(0.01)
                    os._exit(3)
    """)
    res = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    assert res.returncode == 3, res.stderr
    store = ActivationStore(tmp_path / "s")
    assert not store.complete and store.verify().records >= 4


def test_bad_input_is_named_and_nothing_is_overwritten(tmp_path):
    net, other, (x, c) = Net(), Net(seed=1), _inputs()
    with pytest.raises(ValueError, match=re.escape("'blocks\\.7' matches no attention layer") + ".*blocks\\.0"):
        with capture(net, tmp_path / "a", layers=["blocks\\.7"]):
            pass
    for window in [(-0.1, 0.5), (0.2, 1.5)]:
        with pytest.raises(ValueError, match="must be a fraction in \\[0, 1\\]"):
            with capture(net, tmp_path / "a", steps=window):
                pass
    with pytest.raises(ValueError, match="start=0.8 must be <= stop=0.2"):
        with capture(net, tmp_path / "a", steps=(0.8, 0.2)):
            pass
    assert not (tmp_path / "a").exists() or not os.listdir(tmp_path / "a")
    with capture(other, tmp_path / "b"):
        other(x, c)
    before = _snapshot(tmp_path / "b")
    with pytest.raises(StoreMismatchError, match="another model.*nothing was overwritten"):
        with capture(net, tmp_path / "b"):
            net(x, c)
    with pytest.raises(StoreError, match="resume=True"):
        with capture(other, tmp_path / "b"):
            other(x, c)
    assert _snapshot(tmp_path / "b") == before
    with pytest.raises(ValueError, match="compute: unknown"):
        with capture(net, tmp_path / "c", compute=("entropy",)):
            pass
    with pytest.raises(ValueError, match="heads=\\[5\\] out of range"):
        with capture(net, tmp_path / "d", heads=[5]):
            net(x, c)
