"""ActivationStore and import_tensors: bit-exact round trips, crash safety, clear errors."""
import json
import os
import pickle

import numpy as np
import pytest
import torch
from hypothesis import given, strategies as st

from hopfield_gag.capture import (
    ActivationStore,
    ShardError,
    StoreError,
    StoreMismatchError,
    import_tensors,
    read_shard_file,
)

DTYPES = [torch.float32, torch.float16, torch.bfloat16, torch.float64]


def _rec(step, layer="blk.0.attn", dtype=torch.float32, b=1, h=2, lq=5, lk=7, d=4, branch="cond", seed=0):
    g = torch.Generator().manual_seed(seed + 1000 * step)
    return {"q": torch.randn(b, h, lq, d, generator=g).to(dtype), "k": torch.randn(b, h, lk, d, generator=g).to(dtype),
            "v": torch.randn(b, h, lk, d, generator=g).to(dtype), "layer": layer, "step": step, "branch": branch,
            "call": 0, "text_keys": slice(0, 3), "timestep": 999.0 - step, "scale": 0.5}


def _snapshot(path):
    return {f: (path / f).read_bytes() for f in sorted(os.listdir(path))}


@given(dtype=st.sampled_from(DTYPES), b=st.integers(1, 2), h=st.integers(1, 3), lq=st.integers(1, 6),
       lk=st.integers(1, 6), d=st.integers(1, 5))
def test_round_trip_is_bit_exact_in_every_dtype(tmp_path_factory, dtype, b, h, lq, lk, d):
    path = tmp_path_factory.mktemp("rt") / "store"
    rec = _rec(0, dtype=dtype, b=b, h=h, lq=lq, lk=lk, d=d)
    rec["mask"] = torch.rand(b, 1, lq, lk) > 0.3
    w = ActivationStore.create(path, model_id="m", config_hash="c")
    w.append_shard([rec])
    w.mark_complete()
    store = ActivationStore(path)
    (got,) = list(store)
    for key in ("q", "k", "v", "mask"):
        assert got[key].dtype == rec[key].dtype and torch.equal(got[key], rec[key]), key
    assert got["layer"] == rec["layer"] and got["step"] == 0 and got["branch"] == "cond"
    assert got["text_keys"] == slice(0, 3) and got["scale"] == 0.5 and got["timestep"] == 999.0
    assert store.complete and store.verify().records == 1


def test_lazy_filters_and_shard_api(tmp_path):
    w = ActivationStore.create(tmp_path / "s", model_id="m", config_hash="c")
    for step in range(3):
        w.append_shard([_rec(step, "a"), _rec(step, "b", branch="uncond")])
    store = ActivationStore(tmp_path / "s")
    assert store.layers == ["a", "b"] and store.steps == [0, 1, 2] and set(store.branches) == {"cond", "uncond"}
    assert [(r["layer"], r["step"]) for r in store.records(layer="b", step=[0, 2])] == [("b", 0), ("b", 2)]
    assert [r["step"] for r in store.records(branch="cond")] == [0, 1, 2]
    assert len(store.shards) == 3 and len(store) == 6
    # a shard alone (as a Dask worker sees it) carries its records' facts
    recs = read_shard_file(store.shard_path(store.shards[1]))
    assert [(r["layer"], r["step"], r["branch"]) for r in recs] == [("a", 1, "cond"), ("b", 1, "uncond")]
    assert torch.equal(recs[0]["q"], _rec(1, "a")["q"])
    # the store pickles to workers and reads there
    clone = pickle.loads(pickle.dumps(store))
    assert torch.equal(clone.read_shard(store.shards[2])[1]["k"], _rec(2, "b")["k"])
    with pytest.raises(KeyError, match="not in this store"):
        list(store.records(layer="nope"))


def test_crash_between_shard_and_manifest_then_resume(tmp_path, monkeypatch):
    path = tmp_path / "s"
    w = ActivationStore.create(path, model_id="m", config_hash="c")
    w.append_shard([_rec(0)])
    w.append_shard([_rec(1)])
    real_replace = os.replace

    def crash_on_manifest(src, dst):
        if str(dst).endswith("manifest.json"):
            raise KeyboardInterrupt("simulated crash")
        return real_replace(src, dst)

    monkeypatch.setattr(os, "replace", crash_on_manifest)
    with pytest.raises(KeyboardInterrupt):
        w.append_shard([_rec(2)])  # shard file renamed into place, manifest never updated
    monkeypatch.setattr(os, "replace", real_replace)
    assert (path / "shard-000002.safetensors").exists()
    store = ActivationStore(path)
    assert store.shards == ["shard-000000.safetensors", "shard-000001.safetensors"] and not store.complete
    assert store.verify().records == 2
    with pytest.raises(StoreError, match="resume=True"):
        ActivationStore.create(path, model_id="m", config_hash="c")
    r = ActivationStore.create(path, model_id="m", config_hash="c", resume=True)
    assert r.keys_written() == {("blk.0.attn", 0, "cond", 0), ("blk.0.attn", 1, "cond", 0)}
    r.append_shard([_rec(2)])
    r.mark_complete()
    done = ActivationStore(path)
    assert done.complete and done.steps == [0, 1, 2] and done.verify().records == 3
    assert torch.equal(next(done.records(step=2))["v"], _rec(2)["v"])
    assert not [f for f in os.listdir(path) if f.endswith(".tmp")]


def test_corrupt_and_missing_shards_are_named_and_others_stay_readable(tmp_path):
    path = tmp_path / "s"
    w = ActivationStore.create(path, model_id="m", config_hash="c")
    for step in range(3):
        w.append_shard([_rec(step)])
    store = ActivationStore(path)
    bad = path / store.shards[1]
    data = bytearray(bad.read_bytes())
    data[-3] ^= 0xFF  # flip a tensor byte: still parses, checksum catches it
    bad.write_bytes(bytes(data))
    with pytest.raises(ShardError, match="shard-000001.*checksum mismatch") as exc:
        store.verify()
    assert exc.value.shard == "shard-000001.safetensors"
    assert torch.equal(store.read_shard(store.shards[0], verify=True)[0]["q"], _rec(0)["q"])
    assert torch.equal(store.read_shard(store.shards[2], verify=True)[0]["q"], _rec(2)["q"])
    bad.write_bytes(b"\x00garbage")  # truncated header: unparseable
    with pytest.raises(ShardError, match="shard-000001.*corrupt"):
        store.read_shard(store.shards[1])
    with pytest.raises(ShardError, match="shard-000001"):
        list(store.records())
    (path / store.shards[2]).unlink()
    with pytest.raises(ShardError, match="2 of 3 shards are bad") as exc:
        store.verify()
    assert set(exc.value.bad) == {"shard-000001.safetensors", "shard-000002.safetensors"}
    report = store.verify(raise_on_error=False)
    assert set(report) == {"shard-000001.safetensors", "shard-000002.safetensors"}
    assert "missing" in report["shard-000002.safetensors"]
    assert [r["step"] for r in store.records(step=0)] == [0]


def test_other_models_capture_is_never_overwritten(tmp_path):
    path = tmp_path / "s"
    w = ActivationStore.create(path, model_id="model-a", config_hash="aaaa")
    w.append_shard([_rec(0)])
    before = _snapshot(path)
    for resume in (False, True):
        with pytest.raises(StoreMismatchError, match="another model.*model-a.*nothing was overwritten"):
            ActivationStore.create(path, model_id="model-b", config_hash="bbbb", resume=resume)
    with pytest.raises(StoreMismatchError, match="another model"):
        ActivationStore.create(path, model_id="model-a", config_hash="other", resume=True)
    assert _snapshot(path) == before
    (tmp_path / "junk").mkdir()
    (tmp_path / "junk" / "notes.txt").write_text("mine")
    with pytest.raises(StoreError, match="not empty and holds no activation store"):
        ActivationStore.create(tmp_path / "junk", model_id="m", config_hash="c")
    assert os.listdir(tmp_path / "junk") == ["notes.txt"]
    with pytest.raises(StoreError, match="no manifest.json"):
        ActivationStore(tmp_path / "junk")


def test_manifest_is_versioned_and_lists_checksums(tmp_path):
    w = ActivationStore.create(tmp_path / "s", model_id="m", config_hash="c")
    w.append_shard([_rec(0, dtype=torch.float16)])
    m = json.loads((tmp_path / "s" / "manifest.json").read_text())
    assert m["format"] == "hopfield-gag.activation-store" and m["version"] == 1
    (entry,) = m["shards"]
    assert len(entry["sha256"]) == 64 and entry["bytes"] == (tmp_path / "s" / entry["name"]).stat().st_size
    assert entry["records"][0]["dtypes"]["q"] == "float16" and entry["records"][0]["shapes"]["k"] == [1, 2, 7, 4]
    m["version"] = 99
    (tmp_path / "s" / "manifest.json").write_text(json.dumps(m))
    with pytest.raises(StoreError, match="version 99 is not supported"):
        ActivationStore(tmp_path / "s")


# ---------------------------------------------------------------------------------------------------
# import_tensors
# ---------------------------------------------------------------------------------------------------
def _bhld(seed, b=2, h=3, lq=5, lk=6, d=4):
    g = torch.Generator().manual_seed(seed)
    return {f: torch.randn(b, h, lq if f == "q" else lk, d, generator=g) for f in "qkv"}


@pytest.mark.parametrize("layout", ["(BH)LD", "BLHD"])
def test_import_npz_of_another_layout(tmp_path, layout):
    calls = {"down.0.attn2": _bhld(0), "up.1.attn1": _bhld(1, lq=6)}
    arrays = {}
    for name, t in calls.items():
        for f, x in t.items():
            y = x.reshape(-1, *x.shape[2:]) if layout == "(BH)LD" else x.transpose(1, 2)
            arrays[f"{name}/{f}"] = y.numpy()
        arrays[f"{name}/step"] = np.array(4)
    np.savez(tmp_path / "cap.npz", **arrays)
    store = import_tensors(tmp_path / "cap.npz", tmp_path / "st", layout=layout, heads=3, scale=0.25)
    got = {r["layer"]: r for r in store}
    assert set(got) == set(calls)
    for name, t in calls.items():
        for f in "qkv":
            assert torch.equal(got[name][f], t[f]), (name, f)
        assert got[name]["step"] == 4 and got[name]["scale"] == 0.25 and got[name]["source"] == "import"
    assert store.verify().records == 2


def test_import_dict_safetensors_and_pt(tmp_path):
    from safetensors.torch import save_file

    t = _bhld(2)
    s1 = import_tensors({"blk": {**t, "text_keys": (0, 2)}}, tmp_path / "a")
    flat = {f"blk/{f}": x for f, x in t.items()}
    save_file(flat, str(tmp_path / "c.safetensors"))
    torch.save({"blk": t}, tmp_path / "c.pt")
    s2 = import_tensors(tmp_path / "c.safetensors", tmp_path / "b")
    s3 = import_tensors(tmp_path / "c.pt", tmp_path / "c")
    for s in (s1, s2, s3):
        (r,) = list(s)
        assert r["layer"] == "blk" and all(torch.equal(r[f], t[f]) for f in "qkv")
    assert next(iter(s1))["text_keys"] == slice(0, 2)


def test_import_bad_input_is_named(tmp_path):
    t = _bhld(3)
    with pytest.raises(ValueError, match="layout must be one of"):
        import_tensors({"a": t}, tmp_path / "x", layout="LBD")
    with pytest.raises(ValueError, match="needs heads="):
        import_tensors({"a": {f: x.flatten(0, 1) for f, x in t.items()}}, tmp_path / "x", layout="(BH)LD")
    with pytest.raises(ValueError, match="not a multiple of heads=4"):
        import_tensors({"a": {f: x.flatten(0, 1) for f, x in t.items()}}, tmp_path / "x", layout="(BH)LD", heads=4)
    with pytest.raises(ValueError, match="lacks \\['v'\\]"):
        import_tensors({"a": {"q": t["q"], "k": t["k"]}}, tmp_path / "x")
    with pytest.raises(ValueError, match="do not form attention"):
        import_tensors({"a": {"q": t["q"], "k": t["k"][..., :3], "v": t["v"]}}, tmp_path / "x")
    with pytest.raises(FileNotFoundError, match="does not exist"):
        import_tensors(tmp_path / "none.npz", tmp_path / "x")
    assert not (tmp_path / "x").exists()
