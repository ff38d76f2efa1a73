"""The activation store as untrusted input (issue 21, items 1-6).

``DAMAGES`` builds each damaged copy of a valid store: shard names that leave the store (``../``, absolute
paths, ``/dev/zero``, symlinks), unbounded files (a sparse 20 GiB shard), manifests that break the schema
(missing/null/list shards, non-string or ``"."`` names, missing model_id, negative or absurd bytes, a layer list
that disagrees with the records), shards that disagree with the manifest (edited shapes or dtypes, bogus tensor
keys, wrong sizes, garbage) and a flipped bit. For every case, ``store info``, ``store verify``, ``records()``
and ``study_directional`` must fail with a clear error naming the problem (exit status 2 and one line on
stderr from the CLI) or, where the damage is invisible to that reader, succeed -- and never open a file outside
the store (an audit hook records every file Python opens; safetensors' own ``safe_open`` is wrapped).
"""
from __future__ import annotations

import json
import os
import re
import shutil
import sys
from contextlib import contextmanager
from pathlib import Path

import pytest
import torch

from hopfield_gag.capture import ActivationStore, ShardError, StoreError
from hopfield_gag.cli import main

LAYERS = ("blocks.0.attn2", "blocks.1.attn2")


def _rec(layer, step, branch, seed):
    g = torch.Generator().manual_seed(seed)
    return {"q": torch.randn(1, 2, 5, 4, generator=g), "k": torch.randn(1, 2, 6, 4, generator=g),
            "v": torch.randn(1, 2, 6, 4, generator=g), "layer": layer, "step": step, "branch": branch, "call": 0,
            "num_steps": 2, "timestep": 1.0 - step / 2, "scale": 0.5, "kind": "cross", "text_keys": slice(0, 6)}


def build_valid_store(path: Path) -> Path:
    """Two shards: shard 0 holds layer 0 (both branches, step 0), shard 1 layer 1 (step 1)."""
    w = ActivationStore.create(path, model_id="tiny", config_hash="c0ffee")
    w.append_shard([_rec(LAYERS[0], 0, "cond", 1), _rec(LAYERS[0], 0, "uncond", 2)])
    w.append_shard([_rec(LAYERS[1], 1, "cond", 3)])
    w.mark_complete()
    return path


# ------------------------------------------------------------------------------------------------- damages
def _edit(store: Path, fn) -> None:
    m = json.loads((store / "manifest.json").read_text())
    m = fn(m) or m
    (store / "manifest.json").write_text(json.dumps(m))


def _shard(store: Path, i: int = 0) -> Path:
    return store / f"shard-{i:06d}.safetensors"


def _outside_copy(store: Path, outside: Path) -> Path:
    """A valid shard planted outside the store (what a malicious name would point at)."""
    target = outside / "shard-000000.safetensors"
    shutil.copyfile(_shard(store), target)
    return target


def _set(path_fn, value):
    def damage(store, outside):
        def fn(m):
            *head, last = path_fn(m)
            obj = m
            for key in head:
                obj = obj[key]
            obj[last] = value(store, outside) if callable(value) else value
        _edit(store, fn)
    return damage


def _delete(key):
    def damage(store, outside):
        _edit(store, lambda m: m.pop(key) and None)
    return damage


def _symlink_shard(target):
    def damage(store, outside):
        t = target(store, outside)
        _shard(store).unlink()
        os.symlink(t, _shard(store))
    return damage


def _symlink_manifest(store, outside):
    shutil.copyfile(store / "manifest.json", outside / "manifest.json")
    (store / "manifest.json").unlink()
    os.symlink(outside / "manifest.json", store / "manifest.json")


def _sparse_huge(store, outside):
    with open(_shard(store), "r+b") as fh:
        fh.truncate(20 << 30)  # 20 GiB of holes: reading it would exhaust memory


def _bit_flip(store, outside):
    data = bytearray(_shard(store, 1).read_bytes())
    data[-5] ^= 0x10
    _shard(store, 1).write_bytes(bytes(data))


def _garbage(store, outside):
    n = _shard(store).stat().st_size
    _shard(store).write_bytes(b"\xff" * n)


def _directory_shard(store, outside):
    _shard(store).unlink()
    _shard(store).mkdir()


def _fifo_shard(store, outside):
    _shard(store).unlink()
    os.mkfifo(_shard(store))


def _foreign_shard(store, outside):
    """Shard 0 replaced by the same records captured for another model, the manifest's size and checksum
    updated to match: only the shard's own metadata tells."""
    w = ActivationStore.create(outside / "other", model_id="other-model", config_hash="c0ffee")
    w.append_shard([_rec(LAYERS[0], 0, "cond", 1), _rec(LAYERS[0], 0, "uncond", 2)])
    shutil.copyfile(_shard(outside / "other"), _shard(store))
    entry = json.loads((outside / "other" / "manifest.json").read_text())["shards"][0]
    _edit(store, lambda m: m["shards"][0].update(sha256=entry["sha256"], bytes=entry["bytes"]))


S0 = lambda m: ("shards", 0, "name")  # noqa: E731
R0 = ("shards", 0, "records", 0)

# name -> (damage, stage, regex of the error). stage "open": the manifest is rejected when the store is opened
# (every reader fails, info too); "read": the shard is rejected whenever it is read (size/header checks:
# records(), verify, the study; info succeeds: it reads only the manifest); "hash": only a checksum sees it
# (verify, records(verify=True), the study; plain records() returns the flipped data -- documented).
DAMAGES = {
    "dotdot_name": (_set(S0, "../outside/shard-000000.safetensors"), "open",
                    r"'shards\[0\]\.name' must be a plain file name"),
    "absolute_name": (_set(S0, lambda s, o: str(_outside_copy(s, o))), "open",
                      r"'shards\[0\]\.name' must be a plain file name"),
    "etc_passwd_name": (_set(S0, "/etc/passwd"), "open", r"'shards\[0\]\.name' must be a plain file name"),
    "dev_zero_name": (_set(S0, "/dev/zero"), "open", r"'shards\[0\]\.name' must be a plain file name"),
    "dot_name": (_set(S0, "."), "open", r"'shards\[0\]\.name' must be a plain file name.*'\.'"),
    "non_string_name": (_set(S0, 123), "open", r"'shards\[0\]\.name' must be a plain file name.*123"),
    "duplicate_name": (_set(lambda m: ("shards", 1, "name"), "shard-000000.safetensors"), "open",
                       r"'shards\[1\]\.name' repeats"),
    "symlink_shard_outside": (_symlink_shard(_outside_copy), "open", r"'shards\[0\]\.name'.*symbolic link"),
    "symlink_shard_dev_zero": (_symlink_shard(lambda s, o: "/dev/zero"), "open", r"symbolic link"),
    "symlink_manifest": (_symlink_manifest, "open", r"manifest\.json is a symbolic link"),
    "directory_shard": (_directory_shard, "open", r"'shards\[0\]\.name'.*not a regular file"),
    "fifo_shard": (_fifo_shard, "open", r"'shards\[0\]\.name'.*not a regular file"),
    "manifest_not_json": (lambda s, o: (s / "manifest.json").write_text("{oops"), "open", r"is not valid JSON"),
    "manifest_is_list": (lambda s, o: (s / "manifest.json").write_text("[]"), "open", r"must hold a JSON object"),
    "missing_shards": (_delete("shards"), "open", r"field 'shards' is missing"),
    "null_shards": (_set(lambda m: ("shards",), None), "open", r"field 'shards' must be a list.*null"),
    "shards_object": (_set(lambda m: ("shards",), {"shard-000000.safetensors": {}}), "open",
                      r"field 'shards' must be a list.*dict"),
    "shard_entry_list": (_set(lambda m: ("shards", 0), ["shard-000000.safetensors"]), "open",
                         r"field 'shards\[0\]' must be an object"),
    "missing_model_id": (_delete("model_id"), "open", r"field 'model_id' is missing"),
    "wrong_version": (_set(lambda m: ("version",), 2), "open", r"format version 2 is not supported"),
    "negative_bytes": (_set(lambda m: ("shards", 0, "bytes"), -5), "open", r"'shards\[0\]\.bytes' must be an int in"),
    "absurd_bytes": (_set(lambda m: ("shards", 0, "bytes"), 10 ** 30), "open",
                     r"'shards\[0\]\.bytes' must be an int in"),
    "bool_bytes": (_set(lambda m: ("shards", 0, "bytes"), True), "open", r"'shards\[0\]\.bytes' must be an int"),
    "bad_sha": (_set(lambda m: ("shards", 0, "sha256"), "xyz"), "open", r"'shards\[0\]\.sha256' must be 64"),
    "tensor_key_path": (_set(lambda m: R0 + ("shapes", "../q"), [1]), "open", r"tensor key '\.\./q'"),
    "negative_shape": (_set(lambda m: R0 + ("shapes", "q"), [1, -2, 5, 4]), "open",
                       r"'shards\[0\]\.records\[0\]\.shapes\.q' must be a list"),
    "unknown_dtype": (_set(lambda m: R0 + ("dtypes", "q"), "complex64"), "open",
                      r"'shards\[0\]\.records\[0\]\.dtypes\.q' must be one of"),
    # found by the mutation test below: an unhashable dtype raised TypeError
    "dtype_is_list": (_set(lambda m: R0 + ("dtypes", "k"), []), "open",
                      r"'shards\[0\]\.records\[0\]\.dtypes\.k' must be one of"),
    "record_without_layer": (_set(lambda m: R0 + ("layer",), None), "open",
                             r"'shards\[0\]\.records\[0\]\.layer' must be a non-empty string"),
    "layer_list_extra": (_set(lambda m: ("layers",), list(LAYERS) + ["ghost"]), "open",
                         r"'layers' disagrees with the records.*ghost"),
    "layer_list_missing": (_set(lambda m: ("layers",), [LAYERS[0]]), "open",
                           r"'layers' disagrees with the records.*blocks\.1\.attn2"),
    "steps_disagree": (_set(lambda m: ("steps",), [0, 7]), "open", r"'steps' disagrees"),
    "sparse_huge_shard": (_sparse_huge, "read", r"is 21474836480 bytes, the manifest says"),
    "wrong_bytes": (_set(lambda m: ("shards", 0, "bytes"), lambda s, o: _shard(s).stat().st_size + 1), "read",
                    r"bytes, the manifest says"),
    "edited_shape": (_set(lambda m: R0 + ("shapes", "q"), [1, 2, 5, 99]), "read",
                     r"record 0 \(layer 'blocks\.0\.attn2'\): the manifest's shapes"),
    "edited_dtype": (_set(lambda m: R0 + ("dtypes", "q"), "float64"), "read",
                     r"record 0 \(layer 'blocks\.0\.attn2'\): the manifest's dtypes"),
    "bogus_tensor_key": (_set(lambda m: R0 + ("shapes", "zz"), [1]), "read", None),  # + dtypes: set below
    "edited_fact": (_set(lambda m: R0 + ("step",), 1), "read", r"the manifest's step = 1 disagrees"),
    "garbage_shard": (_garbage, "read", r"corrupt"),
    "foreign_shard": (_foreign_shard, "read", r"another capture"),
    "missing_shard": (lambda s, o: _shard(s).unlink(), "read", r"is missing"),
    "bit_flip": (_bit_flip, "hash", r"checksum mismatch"),
}


def _bogus_key(store, outside):
    def fn(m):
        m["shards"][0]["records"][0]["shapes"]["zz"] = [3]
        m["shards"][0]["records"][0]["dtypes"]["zz"] = "float32"
    _edit(store, fn)


DAMAGES["bogus_tensor_key"] = (_bogus_key, "read", r"record 0 \(layer 'blocks\.0\.attn2'\): the manifest's (dtypes|shapes)")
BAD_SHARD = {"bit_flip": "shard-000001.safetensors"}  # every other read-stage case damages shard 0
SHARD_LAYER = {"shard-000000.safetensors": LAYERS[0], "shard-000001.safetensors": LAYERS[1]}


@pytest.fixture(scope="module")
def valid_store(tmp_path_factory):
    return build_valid_store(tmp_path_factory.mktemp("valid") / "store")


@pytest.fixture
def damaged(valid_store, tmp_path, request):
    """``(store dir, outside dir, stage, pattern)`` of the damaged copy named by the test's ``case``."""
    name = request.param
    store, outside = tmp_path / "store", tmp_path / "outside"
    shutil.copytree(valid_store, store)
    outside.mkdir()
    (outside / "sentinel.txt").write_text("never read")
    damage, stage, pattern = DAMAGES[name]
    damage(store, outside)
    return name, store, outside, stage, pattern


# ---------------------------------------------------------------------------------------- opened-file audit
_WATCH: list | None = None


def _audit(event, args):
    if _WATCH is not None and event == "open" and isinstance(args[0], (str, bytes, os.PathLike)):
        path = os.fsdecode(args[0])
        nofollow = isinstance(args[2], int) and args[2] & getattr(os, "O_NOFOLLOW", 0)
        # an O_NOFOLLOW open of a symlink fails (ELOOP) without reading its target: judge the link's own path
        _WATCH.append(os.path.abspath(path) if nofollow else os.path.realpath(path))


sys.addaudithook(_audit)


@contextmanager
def nothing_read_outside(store: Path, root: Path, monkeypatch):
    """Fail if anything under ``root`` but outside ``store`` (or /dev/zero, /etc/passwd) is opened."""
    global _WATCH
    import safetensors

    real = safetensors.safe_open

    def spy(path, *a, **k):
        _WATCH.append(os.path.realpath(os.fsdecode(path)))
        return real(path, *a, **k)

    monkeypatch.setattr(safetensors, "safe_open", spy)
    _WATCH = []
    try:
        yield
    finally:
        opened, _WATCH = _WATCH, None
        inside, top = os.path.realpath(store), os.path.realpath(root)
        leaks = [p for p in opened if (p.startswith(top + os.sep) and not p.startswith(inside + os.sep))
                 or p in ("/dev/zero", "/etc/passwd")]
        assert not leaks, f"opened outside the store: {leaks}"


CASES = pytest.mark.parametrize("damaged", sorted(DAMAGES), indirect=True)


# --------------------------------------------------------------------------------------------------- tests
def test_the_valid_store_passes_every_reader(valid_store, capsys):
    """The control: the fixture's store is fine, so every failure below comes from its damage."""
    assert main(["store", "info", str(valid_store)]) == 0
    assert main(["store", "verify", str(valid_store)]) == 0
    assert capsys.readouterr().out.splitlines()[-1].startswith("ok: 2 shards, 3 records")
    store = ActivationStore(valid_store)
    assert [r["layer"] for r in store.records(verify=True)] == [LAYERS[0], LAYERS[0], LAYERS[1]]
    assert len(list(store.records())) == 3
    from hopfield_gag.studies.directional import study_directional

    rows = study_directional(valid_store)
    assert {r["layer"] for r in rows} == set(LAYERS)


def _one_line_error(capsys, pattern):
    err = capsys.readouterr().err
    assert len(err.strip().splitlines()) == 1, err
    assert err.startswith("hopfield-gag: error: ") and re.search(pattern, err), err
    return err


@CASES
def test_store_info(damaged, tmp_path, capsys, monkeypatch):
    name, store, outside, stage, pattern = damaged
    with nothing_read_outside(store, tmp_path, monkeypatch):
        rc = main(["store", "info", "--json", str(store)])
    if stage == "open":
        assert rc == 2
        _one_line_error(capsys, pattern)
    else:  # info summarizes the manifest, which is valid; it reads no shard
        assert rc == 0 and json.loads(capsys.readouterr().out)["shards"] == 2


@CASES
def test_store_verify(damaged, tmp_path, capsys, monkeypatch):
    name, store, outside, stage, pattern = damaged
    with nothing_read_outside(store, tmp_path, monkeypatch):
        rc = main(["store", "verify", str(store)])
    assert rc == 2
    if stage == "open":
        _one_line_error(capsys, pattern)
    else:  # the report names the bad shard, its layer and the problem; stderr says verification failed
        out = capsys.readouterr()
        shard = BAD_SHARD.get(name, "shard-000000.safetensors")
        bad_line = next(line for line in out.out.splitlines() if shard in line)
        assert bad_line.startswith("BAD ") and SHARD_LAYER[shard] in bad_line and re.search(pattern, bad_line)
        assert len(out.err.strip().splitlines()) == 1 and "1 of 2 shards failed" in out.err, out.err


@CASES
def test_records(damaged, tmp_path, monkeypatch):
    name, store, outside, stage, pattern = damaged
    with nothing_read_outside(store, tmp_path, monkeypatch):
        if stage == "open":
            with pytest.raises(StoreError, match=pattern):
                ActivationStore(store)
            return
        st = ActivationStore(store)
        shard = BAD_SHARD.get(name, "shard-000000.safetensors")
        readers = [True] if stage == "hash" else [True, False]
        for verify in readers:
            with pytest.raises(ShardError, match=pattern) as exc:
                list(st.records(verify=verify))
            assert exc.value.shard == shard and exc.value.layers == [SHARD_LAYER[shard]]
            assert f"shard {shard!r} (layer {SHARD_LAYER[shard]!r})" in str(exc.value)
        if stage == "hash":  # the documented limit of the unhashed read: structure checked, bits trusted
            assert len(list(st.records())) == 3


@CASES
def test_study_directional(damaged, tmp_path, monkeypatch):
    from hopfield_gag.studies.directional import study_directional

    name, store, outside, stage, pattern = damaged
    with nothing_read_outside(store, tmp_path, monkeypatch):
        with pytest.raises(StoreError, match=pattern) as exc:
            study_directional(store)
    if stage != "open":  # the failing study names the shard and its layer
        shard = BAD_SHARD.get(name, "shard-000000.safetensors")
        assert isinstance(exc.value, ShardError) and exc.value.shard == shard
        assert SHARD_LAYER[shard] in str(exc.value)


def test_every_damage_changes_the_store(valid_store, tmp_path):
    """Each damage changes something (the fixture builds a different store), and the audit hook sees a
    planted read outside the store."""
    for name, (damage, _, _) in DAMAGES.items():
        store, outside = tmp_path / name / "store", tmp_path / name / "outside"
        shutil.copytree(valid_store, store)
        outside.mkdir()
        before = {p.name: (p.is_symlink(), p.read_bytes() if p.is_file() and not p.is_symlink() else None)
                  for p in store.iterdir()}
        damage(store, outside)
        after = {p.name: (p.is_symlink(), p.read_bytes() if p.is_file() and not p.is_symlink() and
                          p.stat().st_size < 1 << 20 else "big" if p.is_file() and not p.is_symlink() else None)
                 for p in store.iterdir()}
        assert after != before, name


def test_the_audit_sees_a_read_outside(tmp_path, monkeypatch):
    (tmp_path / "outside.txt").write_text("x")
    with pytest.raises(AssertionError, match="opened outside the store"):
        with nothing_read_outside(tmp_path / "store", tmp_path, monkeypatch):
            (tmp_path / "outside.txt").read_text()


# ------------------------------------------------------------------------------ the class, not the examples
from hypothesis import HealthCheck, example, given, settings, strategies as st  # noqa: E402

_JSON = st.recursive(st.none() | st.booleans() | st.integers(-2 ** 70, 2 ** 70) | st.floats() | st.text(max_size=12),
                     lambda c: st.lists(c, max_size=3) | st.dictionaries(st.text(max_size=6), c, max_size=3),
                     max_leaves=6)


def _paths(obj, prefix=()):
    """Every position in a JSON document (the root excluded)."""
    items = obj.items() if isinstance(obj, dict) else enumerate(obj) if isinstance(obj, list) else ()
    for key, val in items:
        yield prefix + (key,)
        yield from _paths(val, prefix + (key,))


@settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(data=st.data())
@example(data=None)  # the unmutated store: the property's "valid" branch
def test_any_mutation_of_the_manifest_is_a_store_error_or_harmless(valid_store, tmp_path, data):
    """Replace or delete any one field of a valid manifest with any JSON value: opening raises StoreError, or
    the store opens and every reader either works or raises ShardError -- never another exception."""
    import tempfile

    manifest = json.loads((valid_store / "manifest.json").read_text())
    if data is not None:
        where = data.draw(st.sampled_from(sorted(_paths(manifest), key=repr)))
        *head, last = where
        obj = manifest
        for key in head:
            obj = obj[key]
        if isinstance(obj, dict) and data.draw(st.booleans()):
            del obj[last]
        else:
            obj[last] = data.draw(_JSON)
    with tempfile.TemporaryDirectory(dir=tmp_path) as d:
        store = Path(d) / "store"
        shutil.copytree(valid_store, store)
        (store / "manifest.json").write_text(json.dumps(manifest))
        try:
            st_ = ActivationStore(store)
        except StoreError as exc:
            assert "\n" not in str(exc) and ("field" in str(exc) or "version" in str(exc)), str(exc)
            return
        st_.info()
        report = st_.verify(raise_on_error=False)
        for verify in (False, True):
            try:
                n = len(list(st_.records(verify=verify)))
            except ShardError:
                assert isinstance(report, dict)
            else:
                assert verify is False or not isinstance(report, dict)
                assert n == len(st_)


@settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(pos=st.floats(0.0, 1.0, exclude_max=True), header=st.booleans(), value=st.integers(0, 255))
def test_any_changed_byte_of_a_shard_is_a_shard_error_or_harmless(valid_store, tmp_path, pos, header, value):
    """Overwrite one byte of shard 0 (in its header or anywhere): the hashed readers always raise ShardError
    (unless the byte was unchanged); the unhashed read raises ShardError or returns every record."""
    import tempfile

    with tempfile.TemporaryDirectory(dir=tmp_path) as d:
        store = Path(d) / "store"
        shutil.copytree(valid_store, store)
        data = bytearray(_shard(store).read_bytes())
        n_head = 8 + int.from_bytes(data[:8], "little")
        i = int(pos * (n_head if header else len(data)))
        changed = data[i] != value
        data[i] = value
        _shard(store).write_bytes(bytes(data))
        st_ = ActivationStore(store)
        try:
            assert len(list(st_.records())) == 3
        except ShardError as exc:
            assert exc.shard == "shard-000000.safetensors" and exc.layers == [LAYERS[0]]
        if changed:
            with pytest.raises(ShardError, match="checksum mismatch"):
                list(st_.records(verify=True))
            assert set(st_.verify(raise_on_error=False)) == {"shard-000000.safetensors"}
        else:
            assert st_.verify().records == 3
