"""The diffusers-free seam of the adapters: one selection (layers=, steps=) for apply_gag and capture, attention
functions that compose (capture around GAG, in a defined order), the public installed() registry, and the
shipped DiT guided and captured with diffusers hidden.

The shipped DiT (pure torch) is the model here, so nothing in this file needs diffusers. Exactness claims use
torch.equal: every path under test returns the stock kernel's own tensor when nothing guides.
"""
import subprocess
import sys
import textwrap

import pytest
import torch
from hypothesis import example, given, settings
from hypothesis import strategies as st

from hopfield_gag.adapters import AttentionCall, installed, install_attention_fn
from hopfield_gag.adapters.core import LayerSlot
from hopfield_gag.adapters.selection import StepSelection, parse_steps
from hopfield_gag.capture import ActivationStore, capture
from hopfield_gag.models import load_model


@pytest.fixture(scope="module")
def dit():
    return load_model("dit-digits")


def _call(model, b=2, t=0.5, seed=0):
    g = torch.Generator().manual_seed(seed)
    x = torch.randn(b, 1, 8, 8, generator=g)
    y = torch.arange(b) % 10
    with torch.no_grad():
        return model(x, torch.full((b,), t), y)


# ------------------------------------------------------------------------------------------------ selection


def test_layers_has_one_meaning_for_adapters_and_both_capture_routes(dit, tmp_path):
    """layers="blocks.1" selects every attention layer inside block 1, through the installer and through
    capture's adapters and hooks routes alike (it used to select two layers one way and raise the other)."""
    want = ["blocks.1.attn1", "blocks.1.attn2"]
    with install_attention_fn(dit, lambda c: c.dense(), layers="blocks.1") as h:
        assert h.layers == want
    for via in ("adapters", "hooks"):
        with capture(dit, tmp_path / via, layers="blocks.1", via=via) as cap:
            _call(dit)
        assert cap.layers == want, via
        assert ActivationStore(tmp_path / via).layers == want
    # never a longer index (blocks.1 is not blocks.10), and no match is a clear error on both routes
    for via in ("adapters", "hooks"):
        with pytest.raises(ValueError, match="'blocks.7' matches no attention layer.*close matches"):
            with capture(dit, tmp_path / f"bad-{via}", layers="blocks.7", via=via):
                pass


@given(n=st.integers(1, 60), a=st.integers(0, 100), b=st.integers(0, 100), c=st.integers(0, 100))
@settings(max_examples=200, deadline=None)
@example(n=4, a=25, b=75, c=100)
@example(n=3, a=0, b=33, c=34)
def test_step_windows_are_half_open_and_partition_the_schedule(n, a, b, c):
    """steps=(start, stop) keeps step i of n iff start <= i/n < stop: adjacent windows split the schedule
    into disjoint parts that cover it, and (0, 1) is every step."""
    a, b, c = sorted((a / 100, b / 100, c / 100))
    left, right, whole = (parse_steps(w) for w in ((a, b), (b, c), (0, 1)))
    sel = lambda s: {i for i in range(n) if s.selects(i, n)}  # noqa: E731
    assert sel(whole) == set(range(n))
    assert sel(left) & sel(right) == set()
    assert sel(left) | sel(right) == {i for i in range(n) if a <= i / n < c}
    assert sel(left) == {i for i in range(n) if a <= i / n < b}


def test_steps_tuple_is_a_window_and_indices_are_lists():
    assert parse_steps((0, 1)) == StepSelection(window=(0.0, 1.0))
    assert parse_steps([0, 1]) == parse_steps(range(2)) == parse_steps({0, 1}) == StepSelection(indices=frozenset({0, 1}))
    assert parse_steps(3) == StepSelection(indices=frozenset({3}))
    with pytest.raises(ValueError, match=r"fraction in \[0, 1\].*list or range"):
        parse_steps((2, 5))  # a pair is a window; indices go in a list
    with pytest.raises(ValueError, match="start=0.8 must be <= stop=0.2"):
        parse_steps((0.8, 0.2))
    for bad in ([0.5, 1.0], [-1], [], "0,1", [True]):
        with pytest.raises(ValueError, match="steps must be"):
            parse_steps(bad)
    with pytest.raises(RuntimeError, match="needs the number of steps"):
        parse_steps((0.0, 0.5)).selects(1, None)
    with pytest.raises(RuntimeError, match="needs the denoising step"):
        parse_steps([1]).selects(None, 4)


def test_capture_steps_window_and_indices_agree_with_the_rule(dit, tmp_path):
    """capture(steps=(0, 1)) records every step (it used to mean indices 0 and 1); [0, 1] the first two;
    (0.25, 0.75) of 4 steps keeps 1 and 2 (3/4 is excluded: half-open, as the docstring now says)."""
    for steps, want in (((0, 1), [0, 1, 2, 3]), ([0, 1], [0, 1]), ((0.25, 0.75), [1, 2])):
        path = tmp_path / str(len(want)) / str(hash(str(steps)))
        with capture(dit, path, layers="blocks.0.attn2", steps=steps, num_steps=4) as cap:
            for i in range(4):
                cap.set_step(i, 4)
                _call(dit)
        assert ActivationStore(path).steps == want, steps


# ------------------------------------------------------------------------------------------------ composition


def test_chain_order_is_observers_last_installed_outermost_then_the_replacing_one(dit):
    order = []

    class Observer:
        observer = True

        def __init__(self, name):
            self.name = name

        def __call__(self, call):
            order.append(self.name)
            return call.inner()

    def replacing(call):
        order.append("R")
        return call.dense() * 0.5

    layer = "blocks.0.attn2"
    ref = _call(dit)
    a = install_attention_fn(dit, Observer("A"), layers=layer)
    r = install_attention_fn(dit, replacing, layers=layer)  # installed between the two observers
    b = install_attention_fn(dit, Observer("B"), layers=layer)
    try:
        assert installed(dit) == (a, r, b) and a.state is r.state is b.state
        halved = _call(dit)
        assert order == ["B", "A", "R"]
        with pytest.raises(RuntimeError, match="already has an attention function"):
            install_attention_fn(dit, lambda c: c.dense(), layers=layer)  # a second replacing function
        r.remove()
        order.clear()
        assert torch.equal(_call(dit), ref) and order == ["B", "A"]  # observers alone: the stock output
    finally:
        for h in (a, r, b):
            h.remove()
    assert installed(dit) == () and not torch.equal(halved, ref)
    assert all(type(m.processor).__name__ == "DiTAttnProcessor" for n, m in dit.named_modules() if hasattr(m, "processor"))


@pytest.mark.parametrize("capture_first", [False, True])
def test_a_guided_run_is_captured_whichever_is_installed_first(dit, tmp_path, capture_first):
    """capture inside apply_gag (or around it): the model output is the guided one, and the store holds the
    stock inputs, the stock output (dense) and the guided output (output) of each call."""
    from hopfield_gag.adapters import apply_gag

    ref = _call(dit)
    with apply_gag(dit, method="pladis", lam=2.0):
        guided = _call(dit)
    layer = "blocks.0.attn2"
    path = tmp_path / "s"
    if capture_first:
        with capture(dit, path, layers=layer, compute=("dense", "output")):
            with apply_gag(dit, method="pladis", lam=2.0):
                out = _call(dit)
    else:
        with apply_gag(dit, method="pladis", lam=2.0):
            with capture(dit, path, layers=layer, compute=("dense", "output")):
                out = _call(dit)
    assert torch.equal(out, guided) and not torch.equal(out, ref)
    (rec,) = list(ActivationStore(path))
    q, k, v = rec["q"].double(), rec["k"].double(), rec["v"].double()
    p = torch.softmax(q @ k.transpose(-1, -2) * q.shape[-1] ** -0.5, -1)
    assert torch.allclose(rec["dense"].double(), p @ v, atol=1e-5)  # fp32 SDPA vs fp64, 8 keys
    assert not torch.allclose(rec["output"], rec["dense"], atol=1e-3)  # what GAG made of it
    from hopfield_gag import gag_attention

    assert torch.allclose(rec["output"], gag_attention(rec["q"], rec["k"], rec["v"], method="pladis", lam=2.0),
                          atol=1e-6)  # the same op on the same fp32 inputs
    assert installed(dit) == ()


def test_layer_slot_runs_dense_when_nothing_is_installed():
    slot = LayerSlot("x", None, "processors")
    q = torch.randn(1, 1, 3, 2)
    call = AttentionCall(q=q, k=q, v=q, mask=None, scale=None, dense=lambda: q + 1, layer="x", kind="self")
    assert call.inner is call.dense and torch.equal(slot(call), q + 1)


# ------------------------------------------------------------------------------------------------ no diffusers


def test_the_dit_is_guided_and_captured_with_diffusers_hidden(tmp_path):
    code = textwrap.dedent(f"""
        import importlib.abc, sys
        class Hide(importlib.abc.MetaPathFinder):
            def find_spec(self, name, path, target=None):
                if name == "diffusers" or name.startswith("diffusers."):
                    raise ImportError("diffusers is hidden for this test")
        sys.meta_path.insert(0, Hide())
        import torch
        from hopfield_gag.adapters import apply_gag, installed
        from hopfield_gag.capture import ActivationStore, capture
        from hopfield_gag.models import load_model, sample
        m = load_model("dit-digits")
        dense = sample(m, [3, 7], steps=2)
        off = sample(m, [3, 7], steps=2, method="gag", strength=0.0)
        gag = sample(m, [3, 7], steps=2, method="gag")
        with apply_gag(m, steps=(0.5, 1.0), record=True) as h:
            with capture(m, {str(tmp_path / 's')!r}, layers="blocks.0", compute=("output",)):
                sample(m, [3, 7], steps=2)
            log = list(h.fn.log)
        recs = list(ActivationStore({str(tmp_path / 's')!r}))
        assert torch.equal(dense, off) and not torch.equal(dense, gag), "guidance"
        assert sorted({{r["step"] for r in recs}}) == [0, 1] and all("output" in r for r in recs)
        assert {{step for _, _, step, _, _ in log}} == {{1}}, log
        assert installed(m) == () and "diffusers" not in sys.modules
        print("ok")
    """)
    res = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=300)
    assert res.returncode == 0 and res.stdout.strip().endswith("ok"), res.stderr[-3000:]
