r"""``ActivationStore``: captured attention tensors on disk, safe against crashes, readable shard by shard.

Layout of a store directory::

    DIR/manifest.json              versioned index (written last, atomically)
    DIR/shard-000000.safetensors   tensors of some records + their own metadata (self-contained)
    DIR/shard-000001.safetensors
    ...

A *record* is one attention call (or one CFG branch of it): a mapping with the tensors ``q`` (B, H, Lq, D),
``k`` (B, H, Lk, D), ``v`` (B, H, Lk, Dv), optionally ``mask``, ``dense``/``sparse`` outputs and theory
margins, and the facts ``layer``, ``step``, ``branch``, ``timestep``, ``num_steps``, ``kind``, ``scale``,
``text_keys``/``image_queries`` (slices: the key partition), ``heads`` / ``query_index`` (the head and query
subsample kept, ``None`` = all), ``call`` (occurrence of this layer at this step and branch).

Crash safety. A shard is serialized in memory, written to ``.<name>.tmp``, fsync'ed and renamed into place
(``os.replace`` is atomic on POSIX), then the directory is fsync'ed; only then is the manifest rewritten the
same way. A crash at any point leaves the manifest listing only shards whose bytes (and SHA-256) are
complete; a shard renamed but not yet in the manifest is an orphan that a resumed capture overwrites.

A shard is self-contained: its safetensors metadata holds the records' facts and the store's model id and
config hash, so a study can map :func:`read_shard_file` over shard paths on a Dask cluster.
"""
from __future__ import annotations

import hashlib
import json
import os
import re
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Iterator, Mapping, Optional

import torch

__all__ = [
    "ActivationStore",
    "StoreError",
    "ShardError",
    "StoreMismatchError",
    "FORMAT",
    "FORMAT_VERSION",
    "read_shard_file",
]

FORMAT = "hopfield-gag.activation-store"
FORMAT_VERSION = 1
MANIFEST = "manifest.json"
_SHARD_RE = re.compile(r"^shard-(\d{6})\.safetensors$")
_META_KEY = "hopfield_gag"

_DTYPES = {
    "float64": torch.float64, "float32": torch.float32, "float16": torch.float16, "bfloat16": torch.bfloat16,
    "int64": torch.int64, "int32": torch.int32, "int16": torch.int16, "int8": torch.int8, "uint8": torch.uint8,
    "bool": torch.bool,
}
# record keys that are facts (JSON), not tensors
_FACTS = ("layer", "step", "branch", "call", "timestep", "num_steps", "kind", "scale", "text_keys",
          "image_queries", "heads", "source", "extra")


class StoreError(Exception):
    """A store directory that cannot be opened, created or written as asked."""


class ShardError(StoreError):
    """A shard that is missing, corrupt or inconsistent with the manifest; ``.shard`` names it."""

    def __init__(self, shard: str, message: str, *, bad: Optional[dict] = None):
        super().__init__(message if bad else f"shard {shard!r}: {message}")
        self.shard = shard
        self.bad = bad or {shard: str(self)}  # every bad shard -> its message (verify reports all of them)


class StoreMismatchError(StoreError):
    """The directory holds another model's (or another configuration's) capture."""


def _dtype_name(dt: torch.dtype) -> str:
    return str(dt).replace("torch.", "")


def _slice_to_json(s) -> Optional[list]:
    if s is None:
        return None
    if isinstance(s, slice):
        if s.step not in (None, 1):
            raise ValueError(f"key/query partitions must be contiguous slices, got {s}")
        return [s.start, s.stop]
    a, b = s
    return [int(a), int(b)]


def _json_to_slice(x) -> Optional[slice]:
    return None if x is None else slice(x[0], x[1])


def _fsync_dir(path: Path) -> None:
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def _atomic_write(path: Path, data: bytes) -> None:
    """Write ``data`` to ``path`` so that a crash leaves either the old file or the new one, never a mix."""
    tmp = path.with_name("." + path.name + ".tmp")
    with open(tmp, "wb") as fh:
        fh.write(data)
        fh.flush()
        os.fsync(fh.fileno())
    os.replace(tmp, path)
    _fsync_dir(path.parent)


def _facts_of(rec: Mapping[str, Any]) -> dict:
    facts = {}
    for key in _FACTS:
        val = rec.get(key)
        if key in ("text_keys", "image_queries"):
            val = _slice_to_json(val)
        elif key == "heads" and val is not None:
            val = [int(h) for h in val]
        elif key == "scale" and val is not None:
            val = float(val)
        elif key == "timestep" and val is not None:
            val = float(val)
        facts[key] = val
    return facts


def _tensors_of(rec: Mapping[str, Any]) -> dict:
    return {k: v for k, v in rec.items() if isinstance(v, torch.Tensor)}


def _record_from(facts: dict, tensors: dict) -> dict:
    rec = {k: v for k, v in facts.items() if k not in ("shapes", "dtypes")}
    rec["text_keys"] = _json_to_slice(facts.get("text_keys"))
    rec["image_queries"] = _json_to_slice(facts.get("image_queries"))
    rec.setdefault("extra", None)
    if rec["extra"] is None:
        rec["extra"] = {}
    rec.update(tensors)
    rec.setdefault("query_index", None)
    rec.setdefault("mask", None)
    return rec


def _parse_shard_bytes(name: str, data: bytes) -> tuple[dict, list[dict]]:
    from safetensors.torch import load

    try:
        tensors = load(data)
    except Exception as exc:  # safetensors raises its own error types for truncated/garbled headers
        raise ShardError(name, f"cannot be parsed as safetensors ({exc}); the file is corrupt") from None
    try:
        header_len = int.from_bytes(data[:8], "little")
        meta = json.loads(data[8:8 + header_len]).get("__metadata__", {})
        shard_meta = json.loads(meta[_META_KEY])
    except Exception:
        raise ShardError(name, "has no hopfield_gag metadata; not a shard of an activation store") from None
    records = []
    for i, facts in enumerate(shard_meta["records"]):
        prefix = f"{i:05d}."
        ts = {key[len(prefix):]: t for key, t in tensors.items() if key.startswith(prefix)}
        records.append(_record_from(facts, ts))
    return shard_meta, records


def read_shard_file(path: str | os.PathLike, sha256: Optional[str] = None) -> list[dict]:
    """Read every record of one shard file (a self-contained unit: no manifest needed).

    Parameters
    ----------
    path : path of a ``shard-NNNNNN.safetensors`` file.
    sha256 : expected checksum; when given, a mismatch raises :class:`ShardError`.

    Returns
    -------
    list of record dicts (tensors on CPU, in their stored dtypes).
    """
    path = Path(path)
    try:
        data = path.read_bytes()
    except FileNotFoundError:
        raise ShardError(path.name, f"is missing (expected at {path})") from None
    if sha256 is not None:
        got = hashlib.sha256(data).hexdigest()
        if got != sha256:
            raise ShardError(path.name, f"checksum mismatch (manifest sha256 {sha256[:12]}..., file {got[:12]}...); "
                                        "the file is corrupt")
    return _parse_shard_bytes(path.name, data)[1]


@dataclass(frozen=True)
class VerifyReport:
    """Result of :meth:`ActivationStore.verify`: shards checked, records, bytes."""

    shards: int
    records: int
    bytes: int


class ActivationStore:
    r"""A directory of safetensors shards plus a versioned JSON manifest (see the module docstring).

    ``ActivationStore(path)`` opens an existing store for reading; :meth:`create` opens one for writing.

    Reading
    -------
    ``store.shards`` : list of shard names (manifest order); ``store.read_shard(name)`` : its records;
    ``store.records(layer=, step=, branch=)`` / ``iter(store)`` : lazy iteration, one shard in memory at a
    time, shards holding no matching record are not read; ``store.verify()`` : checksums of every shard.
    ``store.layers``, ``store.steps``, ``store.branches``, ``store.model_id``, ``store.config_hash``,
    ``store.complete``, ``store.nbytes``, ``store.info()``.

    The object holds only the path and the parsed manifest, so it pickles cheaply to Dask workers.
    """

    def __init__(self, path: str | os.PathLike):
        self.path = Path(path)
        mpath = self.path / MANIFEST
        if not mpath.is_file():
            raise StoreError(f"{self.path} is not an activation store: no {MANIFEST} "
                             "(create one with capture(...) or import_tensors(...))")
        try:
            manifest = json.loads(mpath.read_text())
        except json.JSONDecodeError as exc:
            raise StoreError(f"{mpath} is not valid JSON ({exc})") from None
        if manifest.get("format") != FORMAT:
            raise StoreError(f"{mpath}: format {manifest.get('format')!r} is not {FORMAT!r}")
        if manifest.get("version") != FORMAT_VERSION:
            raise StoreError(f"{mpath}: format version {manifest.get('version')} is not supported "
                             f"(this hopfield-gag reads version {FORMAT_VERSION})")
        self.manifest = manifest
        self._writable = False

    # ------------------------------------------------------------------------------------------------
    # creation
    # ------------------------------------------------------------------------------------------------
    @classmethod
    def create(cls, path: str | os.PathLike, *, model_id: str, config_hash: str, resume: bool = False,
               settings: Optional[dict] = None) -> "ActivationStore":
        """Open ``path`` for writing.

        An empty or missing directory gets a fresh store. A directory holding a store requires
        ``resume=True`` *and* the same ``model_id`` and ``config_hash`` (else :class:`StoreMismatchError`);
        a non-empty directory that is not a store is refused. Nothing is written or deleted before these
        checks pass.
        """
        path = Path(path)
        if not isinstance(model_id, str) or not model_id:
            raise ValueError(f"model_id must be a non-empty string, got {model_id!r}")
        if path.exists() and not path.is_dir():
            raise StoreError(f"out_dir {path} exists and is not a directory")
        if (path / MANIFEST).is_file():
            store = cls(path)
            m = store.manifest
            if m["model_id"] != model_id or m["config_hash"] != config_hash:
                raise StoreMismatchError(
                    f"out_dir {path} holds a capture of another model (model_id={m['model_id']!r}, "
                    f"config_hash={m['config_hash'][:12]}...; this one: model_id={model_id!r}, "
                    f"config_hash={config_hash[:12]}...); nothing was overwritten. Choose another directory.")
            if not resume:
                raise StoreError(
                    f"out_dir {path} already holds a capture of this model ({len(m['shards'])} shards); "
                    "pass resume=True to continue it, or choose another directory; nothing was overwritten.")
            if settings is not None and m.get("settings") not in (None, settings):
                raise StoreMismatchError(
                    f"out_dir {path} was captured with other settings ({m.get('settings')}); resume needs the "
                    f"same ones ({settings}); nothing was overwritten.")
            # orphans (renamed but never listed) and temp files of the crashed run
            listed = {s["name"] for s in m["shards"]}
            for f in path.iterdir():
                if (f.name.startswith(".") and f.name.endswith(".tmp")) or (
                        _SHARD_RE.match(f.name) and f.name not in listed):
                    f.unlink()
            m["complete"] = False
            store._writable = True
            store._write_manifest()
            return store
        if path.exists() and any(path.iterdir()):
            raise StoreError(f"out_dir {path} is not empty and holds no activation store; "
                             "refusing to write into it (nothing was overwritten)")
        path.mkdir(parents=True, exist_ok=True)
        store = cls.__new__(cls)
        store.path = path
        now = time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime())
        store.manifest = {
            "format": FORMAT, "version": FORMAT_VERSION, "model_id": model_id, "config_hash": config_hash,
            "settings": settings, "created": now, "updated": now, "complete": False,
            "layers": [], "steps": [], "branches": [], "shards": [],
        }
        store._writable = True
        store._write_manifest()
        return store

    def _write_manifest(self) -> None:
        self.manifest["updated"] = time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime())
        _atomic_write(self.path / MANIFEST, json.dumps(self.manifest, indent=1).encode())

    def _check_writable(self):
        if not getattr(self, "_writable", False):
            raise StoreError(f"store {self.path} was opened for reading; use ActivationStore.create to write")

    def append_shard(self, records: list[Mapping[str, Any]]) -> str:
        """Write ``records`` as one new shard (atomically), then list it in the manifest; returns its name.

        Each record needs the tensors ``q``, ``k``, ``v`` (or at least one tensor) and the fact ``layer``;
        other facts default to ``None``.
        """
        self._check_writable()
        from safetensors.torch import save

        if not records:
            raise ValueError("records must be a non-empty list")
        m = self.manifest
        name = f"shard-{len(m['shards']):06d}.safetensors"
        tensors, facts_list = {}, []
        for i, rec in enumerate(records):
            if not isinstance(rec.get("layer"), str):
                raise ValueError(f"record {i}: 'layer' must be a string, got {rec.get('layer')!r}")
            ts = _tensors_of(rec)
            if not ts:
                raise ValueError(f"record {i} of layer {rec['layer']!r} holds no tensor")
            facts = _facts_of(rec)
            facts["shapes"] = {k: list(t.shape) for k, t in ts.items()}
            facts["dtypes"] = {k: _dtype_name(t.dtype) for k, t in ts.items()}
            facts_list.append(facts)
            for key, t in ts.items():
                tensors[f"{i:05d}.{key}"] = t.detach().to("cpu").contiguous()
        shard_meta = {"format": FORMAT, "version": FORMAT_VERSION, "model_id": m["model_id"],
                      "config_hash": m["config_hash"], "shard": name, "records": facts_list}
        data = save(tensors, metadata={_META_KEY: json.dumps(shard_meta)})
        _atomic_write(self.path / name, data)
        # the manifest goes last: until it is replaced, the shard does not exist for readers
        m["shards"].append({"name": name, "sha256": hashlib.sha256(data).hexdigest(), "bytes": len(data),
                            "records": facts_list})
        for f in facts_list:
            if f["layer"] not in m["layers"]:
                m["layers"].append(f["layer"])
            if f["step"] is not None and f["step"] not in m["steps"]:
                m["steps"].append(f["step"])
                m["steps"].sort()
            if f["branch"] is not None and f["branch"] not in m["branches"]:
                m["branches"].append(f["branch"])
        self._write_manifest()
        return name

    def mark_complete(self, complete: bool = True) -> None:
        """Record in the manifest that the capture finished (``store.complete``)."""
        self._check_writable()
        self.manifest["complete"] = bool(complete)
        self._write_manifest()

    # ------------------------------------------------------------------------------------------------
    # reading
    # ------------------------------------------------------------------------------------------------
    @property
    def shards(self) -> list[str]:
        """Shard names in write order (stable API for studies)."""
        return [s["name"] for s in self.manifest["shards"]]

    def shard_path(self, name: str) -> Path:
        """Absolute path of shard ``name`` (for workers that read it with :func:`read_shard_file`)."""
        self._shard_entry(name)
        return (self.path / name).resolve()

    def shard_info(self, name: str) -> dict:
        """Manifest entry of shard ``name``: ``sha256``, ``bytes`` and the records' facts/shapes/dtypes."""
        return self._shard_entry(name)

    def _shard_entry(self, name: str) -> dict:
        for s in self.manifest["shards"]:
            if s["name"] == name:
                return s
        raise KeyError(f"no shard named {name!r} in {self.path} (shards: {self.shards[:5]}"
                       f"{'...' if len(self.shards) > 5 else ''})")

    def read_shard(self, name: str, verify: bool = False) -> list[dict]:
        """All records of shard ``name``; ``verify=True`` also checks its SHA-256 against the manifest.

        Raises :class:`ShardError` naming the shard when it is missing or unreadable; other shards are
        unaffected.
        """
        entry = self._shard_entry(name)
        return read_shard_file(self.path / name, entry["sha256"] if verify else None)

    def records(self, layer=None, step=None, branch=None) -> Iterator[dict]:
        """Lazily iterate records, filtered by ``layer`` (name or list of names), ``step`` (int or list)
        and ``branch`` (``"cond"``, ``"uncond"``, or a list); ``None`` = no filter.

        Only shards with a matching record (per the manifest) are read, one at a time, and only the
        matching records' tensors are materialized.
        """
        def as_set(x):
            if x is None:
                return None
            return {x} if isinstance(x, (str, int)) else set(x)

        layers, steps, branches = as_set(layer), as_set(step), as_set(branch)
        if layers is not None:
            unknown = layers - set(self.layers)
            if unknown:
                raise KeyError(f"layer(s) {sorted(unknown)} not in this store; its layers: {self.layers}")

        def keep(f):
            return ((layers is None or f["layer"] in layers) and (steps is None or f["step"] in steps)
                    and (branches is None or f["branch"] in branches))

        from safetensors import safe_open

        for entry in self.manifest["shards"]:
            idx = [i for i, f in enumerate(entry["records"]) if keep(f)]
            if not idx:
                continue
            path = self.path / entry["name"]
            if not path.is_file():
                raise ShardError(entry["name"], f"is missing (expected at {path})")
            try:
                with safe_open(str(path), framework="pt") as fh:
                    for i in idx:
                        facts = entry["records"][i]
                        ts = {key: fh.get_tensor(f"{i:05d}.{key}") for key in facts["shapes"]}
                        yield _record_from(facts, ts)
            except ShardError:
                raise
            except Exception as exc:
                raise ShardError(entry["name"], f"cannot be read ({exc}); the file is corrupt") from None

    def __iter__(self) -> Iterator[dict]:
        return self.records()

    def __len__(self) -> int:
        return sum(len(s["records"]) for s in self.manifest["shards"])

    def verify(self, raise_on_error: bool = True):
        """Check every shard's presence, SHA-256 and parse against the manifest.

        Returns a :class:`VerifyReport` when all pass. Otherwise raises :class:`ShardError` naming every bad
        shard (or, with ``raise_on_error=False``, returns ``{name: message}`` of the bad ones).
        """
        bad = {}
        n_rec = n_bytes = 0
        for entry in self.manifest["shards"]:
            try:
                recs = self.read_shard(entry["name"], verify=True)
                if len(recs) != len(entry["records"]):
                    raise ShardError(entry["name"], f"holds {len(recs)} records, manifest says "
                                                    f"{len(entry['records'])}")
                n_rec += len(recs)
                n_bytes += entry["bytes"]
            except ShardError as exc:
                bad[entry["name"]] = str(exc)
        if bad and raise_on_error:
            names = sorted(bad)
            if len(names) == 1:
                raise ShardError(names[0], bad[names[0]].split(": ", 1)[1])
            raise ShardError(names[0], f"{len(names)} of {len(self.shards)} shards are bad (the others are "
                                       "readable): " + "; ".join(bad[n] for n in names), bad=bad)
        if bad:
            return bad
        return VerifyReport(shards=len(self.manifest["shards"]), records=n_rec, bytes=n_bytes)

    # ------------------------------------------------------------------------------------------------
    # facts
    # ------------------------------------------------------------------------------------------------
    model_id = property(lambda self: self.manifest["model_id"])
    config_hash = property(lambda self: self.manifest["config_hash"])
    complete = property(lambda self: bool(self.manifest["complete"]))
    layers = property(lambda self: list(self.manifest["layers"]))
    steps = property(lambda self: list(self.manifest["steps"]))
    branches = property(lambda self: list(self.manifest["branches"]))
    nbytes = property(lambda self: sum(s["bytes"] for s in self.manifest["shards"]))

    def keys_written(self) -> set:
        """``(layer, step, branch, call)`` of every stored record (used by resume to skip them)."""
        return {(f["layer"], f["step"], f["branch"], f["call"])
                for s in self.manifest["shards"] for f in s["records"]}

    def info(self) -> dict:
        """Summary: model id, config hash, complete, shards, records, bytes, layers, steps, branches, dtypes."""
        dtypes = sorted({d for s in self.manifest["shards"] for f in s["records"] for d in f["dtypes"].values()})
        return {"path": str(self.path), "model_id": self.model_id, "config_hash": self.config_hash,
                "complete": self.complete, "shards": len(self.shards), "records": len(self), "bytes": self.nbytes,
                "layers": self.layers, "steps": self.steps, "branches": self.branches, "dtypes": dtypes,
                "settings": self.manifest.get("settings")}

    def __repr__(self) -> str:
        return (f"ActivationStore({str(self.path)!r}, model_id={self.model_id!r}, shards={len(self.shards)}, "
                f"records={len(self)}, complete={self.complete})")
