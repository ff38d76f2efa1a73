"""experiments/_bench_cuda.py runs AdaSplash only where it is defined (issue 19 item 7): self-attention shapes of a
power-of-two length without a mask (it reads the sequence length from q: on a cross-attention shape it would
read past K and V), labelled forward-only; the realistic SDXL and Flux shapes are in the table. Checked on CPU
with a stand-in ``adasplash`` module that records what it was called with."""
import importlib.machinery
import sys
import types

import pytest
import torch

from _experiments import load_experiment


def test_adasplash_only_on_shapes_it_supports(monkeypatch):
    pytest.importorskip("entmax")
    bench = load_experiment("_bench_cuda")
    assert (2, 20, 1024, 77, 64) in bench.SHAPES and (1, 24, 4096, 512, 128) in bench.SHAPES
    assert [s for s in bench.SHAPES if bench.adasplash_supports(s)[0]] == [(2, 8, 1024, 1024, 64)]
    assert bench.adasplash_supports((1, 1, 48, 48, 8)) == (False, "length 48 is not a power of two")
    assert not bench.adasplash_supports((1, 1, 64, 64, 8), masked=True)[0]
    calls = []
    fake = types.ModuleType("adasplash")
    fake.__spec__ = importlib.machinery.ModuleSpec("adasplash", None)
    fake.adasplash = lambda q, k, v, **kw: calls.append((q.shape, k.shape, kw)) or v
    monkeypatch.setitem(sys.modules, "adasplash", fake)
    g = torch.Generator().manual_seed(0)
    for lq, lk in ((16, 8), (16, 16)):
        q, k, v = torch.randn(1, 2, lq, 4, generator=g), torch.randn(1, 2, lk, 4, generator=g), torch.randn(1, 2, lk, 4, generator=g)
        fns = bench._contenders(q, k, v)
        assert (bench.ADASPLASH_ROW in fns) == (lq == lk), (lq, lk)
        if lq == lk:
            fns[bench.ADASPLASH_ROW]()
    assert calls == [((1, 2, 16, 4), (1, 2, 16, 4), {"alpha": 1.5, "is_causal": False})]
