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
config hash, so a study can map :func:`read_shard_file` over :meth:`ActivationStore.shard_ref` handles on a
Dask cluster.

Trust model
-----------
A store is data people share, so everything in it is untrusted input:

- **Opening** (``ActivationStore(path)``) reads only ``DIR/manifest.json`` (a regular file, not a symlink, at
  most 1 GiB) and validates it against the schema below; any violation raises :class:`StoreError` naming the
  field (``shards[2].bytes``). Shard names must be plain ``shard-NNNNNN.safetensors`` names of regular files
  inside ``DIR``; a symlink (or a directory, a device...) under a listed name rejects the store. Nothing
  outside ``DIR`` is ever opened.
- **Every read** of a shard (``records()``, ``read_shard()``, ``verify()``, :func:`read_shard_file`) opens it
  without following symlinks, refuses anything but a regular file, compares its size with the manifest's
  ``bytes`` *before* reading, and checks the safetensors header against the records' facts: exactly the
  tensor keys listed, with the listed shapes and dtypes, and the shard's own metadata equal to the
  manifest's. A failure raises :class:`ShardError` naming the shard and its layer(s).
- **Integrity** (``verify()``, ``records(verify=True)``, ``read_shard(verify=True)``, :func:`read_shard_file`
  of a :class:`ShardRef`) additionally hashes the shard (SHA-256, in 1 MiB chunks, over the very bytes that are
  then parsed) against the manifest, so the tensors returned are bit for bit those the capture wrote.
  ``records()`` without it trusts the tensor bytes (a flipped bit goes unnoticed); the studies verify.

Manifest schema (format version 1)::

    format       "hopfield-gag.activation-store"
    version      1
    model_id     non-empty string
    config_hash  string
    settings     object or null
    created, updated   strings (optional)
    complete     bool
    layers       list of distinct strings  == the set of the records' layers
    steps        list of distinct ints >= 0 == the set of the records' non-null steps
    branches     list of distinct strings  == the set of the records' non-null branches
    shards       list of {name, sha256, bytes, records}:
        name     "shard-NNNNNN.safetensors" (6 digits), distinct
        sha256   64 lowercase hex digits
        bytes    int in [8, 2**48]: the file's size
        records  non-empty list of facts, each with exactly the keys
            layer          non-empty string
            step, call     int >= 0 or null
            num_steps      int >= 1 or null
            branch, kind, source   string or null
            timestep, scale        finite number or null
            text_keys, image_queries   [start, stop] (ints >= 0 or null) or null
            heads          list of ints >= 0 or null
            extra          object or null
            shapes         {tensor key: list of <= 8 ints >= 0}, non-empty; tensor keys match [A-Za-z_][A-Za-z0-9_]*
            dtypes         {the same keys: one of float64 float32 float16 bfloat16 int64 int32 int16 int8 uint8 bool}

Record ``i`` of a shard holds the tensors ``"<i:05d>.<key>"`` for the keys of its ``shapes``, and nothing else.
"""
from __future__ import annotations

import errno
import hashlib
import json
import math
import os
import re
import stat
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Iterator, Mapping, NamedTuple, Optional

import torch

__all__ = [
    "ActivationStore",
    "StoreError",
    "ShardError",
    "StoreMismatchError",
    "ShardRef",
    "FORMAT",
    "FORMAT_VERSION",
    "read_shard_file",
]

FORMAT = "hopfield-gag.activation-store"
FORMAT_VERSION = 1
MANIFEST = "manifest.json"
_SHARD_RE = re.compile(r"^shard-(\d{6})\.safetensors$")
_TENSOR_KEY_RE = re.compile(r"^[A-Za-z_][A-Za-z0-9_]{0,63}$")
_SHA_RE = re.compile(r"^[0-9a-f]{64}$")
_META_KEY = "hopfield_gag"
_CHUNK = 1 << 20  # hash and read in 1 MiB pieces: memory stays bounded whatever the file claims to be
_MAX_MANIFEST = 1 << 30
_MAX_HEADER = 100 << 20  # safetensors' own header limit
_MIN_BYTES, _MAX_BYTES = 8, 1 << 48
_MAX_NDIM = 8

_DTYPES = {
    "float64": torch.float64, "float32": torch.float32, "float16": torch.float16, "bfloat16": torch.bfloat16,
    "int64": torch.int64, "int32": torch.int32, "int16": torch.int16, "int8": torch.int8, "uint8": torch.uint8,
    "bool": torch.bool,
}
# safetensors header dtype codes -> our names
_ST_DTYPES = {"F64": "float64", "F32": "float32", "F16": "float16", "BF16": "bfloat16", "I64": "int64",
              "I32": "int32", "I16": "int16", "I8": "int8", "U8": "uint8", "BOOL": "bool"}
# record keys that are facts (JSON), not tensors
_FACTS = ("layer", "step", "branch", "call", "timestep", "num_steps", "kind", "scale", "text_keys",
          "image_queries", "heads", "source", "extra")


class StoreError(ValueError):
    """A store that cannot be opened, trusted, created or written as asked; the message names the problem
    (the manifest field, the shard, the directory). The one exception class of the store: the others
    below are its subclasses."""


class ShardError(StoreError):
    """A shard that is missing, corrupt or inconsistent with the manifest; ``.shard`` names it and
    ``.layers`` the layers of its records (per the manifest, when known)."""

    def __init__(self, shard: str, message: str, *, bad: Optional[dict] = None, layers=()):
        layers = list(dict.fromkeys(layers))
        where = f"shard {shard!r}"
        if layers:
            shown = ", ".join(repr(x) for x in layers[:4]) + (", ..." if len(layers) > 4 else "")
            where += f" (layer{'s' if len(layers) > 1 else ''} {shown})"
        super().__init__(message if bad else f"{where}: {message}")
        self.shard = shard
        self.layers = layers
        self.problem = message
        self.bad = bad or {shard: str(self)}  # every bad shard -> its message (verify reports all of them)


class StoreMismatchError(StoreError):
    """The directory holds another model's (or another configuration's) capture."""


class ShardRef(NamedTuple):
    """Everything needed to read and check one shard without the store object (picklable for workers):
    the shard ``name``, its absolute ``path``, and the manifest's ``sha256`` (``None``: do not hash),
    ``bytes`` and ``records`` (the facts list)."""

    name: str
    path: str
    sha256: Optional[str]
    bytes: Optional[int]
    records: Optional[list]
    model_id: Optional[str] = None
    config_hash: Optional[str] = None

    @property
    def layers(self) -> list:
        return list(dict.fromkeys(f["layer"] for f in self.records)) if self.records else []


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


# ---------------------------------------------------------------------------------------------------- schema
def _is_int(x) -> bool:
    return isinstance(x, int) and not isinstance(x, bool)


def _is_num(x) -> bool:
    return isinstance(x, (int, float)) and not isinstance(x, bool) and math.isfinite(x)


def _check_record_facts(f, at: str, err) -> None:
    """Validate one record's facts (``at`` is its field path; ``err(field, problem)`` builds the exception)."""
    if not isinstance(f, dict):
        raise err(at, f"must be an object (a record's facts), got {type(f).__name__}")
    allowed = set(_FACTS) | {"shapes", "dtypes"}
    for key in f:
        if key not in allowed:
            raise err(f"{at}.{key}", "is not a record field of format version 1")
    for key in allowed:
        if key not in f:
            raise err(f"{at}.{key}", "is missing")
    if not isinstance(f["layer"], str) or not f["layer"]:
        raise err(f"{at}.layer", f"must be a non-empty string, got {f['layer']!r}")
    for key, lo in (("step", 0), ("call", 0), ("num_steps", 1)):
        if f[key] is not None and not (_is_int(f[key]) and f[key] >= lo):
            raise err(f"{at}.{key}", f"must be an int >= {lo} or null, got {f[key]!r}")
    for key in ("branch", "kind", "source"):
        if f[key] is not None and not isinstance(f[key], str):
            raise err(f"{at}.{key}", f"must be a string or null, got {f[key]!r}")
    for key in ("timestep", "scale"):
        if f[key] is not None and not _is_num(f[key]):
            raise err(f"{at}.{key}", f"must be a finite number or null, got {f[key]!r}")
    for key in ("text_keys", "image_queries"):
        x = f[key]
        if x is not None and not (isinstance(x, list) and len(x) == 2
                                  and all(e is None or (_is_int(e) and e >= 0) for e in x)):
            raise err(f"{at}.{key}", f"must be [start, stop] (ints >= 0 or null) or null, got {x!r}")
    if f["heads"] is not None and not (isinstance(f["heads"], list)
                                       and all(_is_int(h) and h >= 0 for h in f["heads"])):
        raise err(f"{at}.heads", f"must be a list of ints >= 0 or null, got {f['heads']!r}")
    if f["extra"] is not None and not isinstance(f["extra"], dict):
        raise err(f"{at}.extra", f"must be an object or null, got {type(f['extra']).__name__}")
    shapes, dtypes = f["shapes"], f["dtypes"]
    if not isinstance(shapes, dict) or not shapes:
        raise err(f"{at}.shapes", "must be a non-empty object {tensor key: shape}")
    if not isinstance(dtypes, dict):
        raise err(f"{at}.dtypes", "must be an object {tensor key: dtype}")
    for key, shape in shapes.items():
        if not _TENSOR_KEY_RE.match(key):
            raise err(f"{at}.shapes", f"has the tensor key {key!r}; keys must match [A-Za-z_][A-Za-z0-9_]*")
        if not (isinstance(shape, list) and len(shape) <= _MAX_NDIM and all(_is_int(n) and n >= 0 for n in shape)):
            raise err(f"{at}.shapes.{key}", f"must be a list of at most {_MAX_NDIM} ints >= 0, got {shape!r}")
    if set(dtypes) != set(shapes):
        raise err(f"{at}.dtypes", f"must have the same keys as shapes ({sorted(shapes)}), got {sorted(dtypes)}")
    for key, dt in dtypes.items():
        if not isinstance(dt, str) or dt not in _DTYPES:
            raise err(f"{at}.dtypes.{key}", f"must be one of {sorted(_DTYPES)}, got {dt!r}")


def validate_manifest(m, where: str = MANIFEST) -> dict:
    """Check a parsed manifest against the schema of the module docstring; return it or raise one
    :class:`StoreError` naming the first bad field."""
    def err(field, problem):
        return StoreError(f"{where}: field {field!r} {problem}")

    if not isinstance(m, dict):
        raise StoreError(f"{where}: must hold a JSON object, got {type(m).__name__}")
    if m.get("format") != FORMAT:
        raise err("format", f"is {m.get('format')!r}, not {FORMAT!r}")
    if m.get("version") != FORMAT_VERSION or not _is_int(m.get("version")):
        raise StoreError(f"{where}: format version {m.get('version')!r} is not supported "
                         f"(this hopfield-gag reads version {FORMAT_VERSION})")
    for key in ("model_id", "config_hash", "complete", "layers", "steps", "branches", "shards"):
        if key not in m:
            raise err(key, "is missing")
    if not isinstance(m["model_id"], str) or not m["model_id"]:
        raise err("model_id", f"must be a non-empty string, got {m['model_id']!r}")
    if not isinstance(m["config_hash"], str):
        raise err("config_hash", f"must be a string, got {m['config_hash']!r}")
    if m.get("settings") is not None and not isinstance(m["settings"], dict):
        raise err("settings", f"must be an object or null, got {type(m['settings']).__name__}")
    for key in ("created", "updated"):
        if key in m and not isinstance(m[key], str):
            raise err(key, f"must be a string, got {m[key]!r}")
    if not isinstance(m["complete"], bool):
        raise err("complete", f"must be true or false, got {m['complete']!r}")
    for key, ok, what in (("layers", lambda x: isinstance(x, str), "strings"),
                          ("steps", lambda x: _is_int(x) and x >= 0, "ints >= 0"),
                          ("branches", lambda x: isinstance(x, str), "strings")):
        val = m[key]
        if not isinstance(val, list) or not all(ok(x) for x in val) or len(set(val)) != len(val):
            raise err(key, f"must be a list of distinct {what}, got {val!r}"[:300])
    shards = m["shards"]
    if not isinstance(shards, list):
        raise err("shards", f"must be a list of shard entries, got {type(shards).__name__ if shards is not None else 'null'}")
    names = set()
    layers, steps, branches = set(), set(), set()
    for j, s in enumerate(shards):
        at = f"shards[{j}]"
        if not isinstance(s, dict):
            raise err(at, f"must be an object {{name, sha256, bytes, records}}, got {type(s).__name__}")
        for key in ("name", "sha256", "bytes", "records"):
            if key not in s:
                raise err(f"{at}.{key}", "is missing")
        name = s["name"]
        if not isinstance(name, str) or not _SHARD_RE.match(name):
            raise err(f"{at}.name", "must be a plain file name shard-NNNNNN.safetensors inside the store, got "
                      f"{name!r}"[:300])
        if name in names:
            raise err(f"{at}.name", f"repeats {name!r}")
        names.add(name)
        if not isinstance(s["sha256"], str) or not _SHA_RE.match(s["sha256"]):
            raise err(f"{at}.sha256", f"must be 64 lowercase hex digits, got {s['sha256']!r}"[:300])
        if not (_is_int(s["bytes"]) and _MIN_BYTES <= s["bytes"] <= _MAX_BYTES):
            raise err(f"{at}.bytes", f"must be an int in [{_MIN_BYTES}, 2**48], got {s['bytes']!r}")
        recs = s["records"]
        if not isinstance(recs, list) or not recs:
            raise err(f"{at}.records", "must be a non-empty list of record facts")
        for i, f in enumerate(recs):
            _check_record_facts(f, f"{at}.records[{i}]", err)
            layers.add(f["layer"])
            if f["step"] is not None:
                steps.add(f["step"])
            if f["branch"] is not None:
                branches.add(f["branch"])
    for key, seen in (("layers", layers), ("steps", steps), ("branches", branches)):
        if set(m[key]) != seen:
            extra, missing = sorted(set(m[key]) - seen, key=str), sorted(seen - set(m[key]), key=str)
            raise err(key, "disagrees with the records: " + "; ".join(
                p for p in (f"lists {extra[:5]} that no record has" if extra else "",
                            f"lacks {missing[:5]} that records have" if missing else "") if p))
    return m


# ---------------------------------------------------------------------------------------------------- reading
def _open_regular(path: Path, fail):
    """Open ``path`` read-only without following a symlink (and without blocking on a FIFO); refuse anything
    that is not a regular file. Returns ``(fd, size)``; ``fail(problem)`` builds the exception."""
    flags = os.O_RDONLY | getattr(os, "O_NOFOLLOW", 0) | getattr(os, "O_NONBLOCK", 0) | getattr(os, "O_CLOEXEC", 0)
    try:
        fd = os.open(path, flags)
    except FileNotFoundError:
        raise fail(f"is missing (expected at {path})") from None
    except OSError as exc:
        if exc.errno == errno.ELOOP:
            raise fail("is a symbolic link; a store's files must be regular files inside it") from None
        raise fail(f"cannot be opened ({exc.strerror})") from None
    st = os.fstat(fd)
    if not stat.S_ISREG(st.st_mode):
        os.close(fd)
        raise fail("is not a regular file")
    return fd, st.st_size


def _read_exact(fd: int, n: int, fail, hasher=None) -> bytes:
    """Read exactly ``n`` bytes in chunks (feeding ``hasher``); a short file raises."""
    buf = bytearray()
    while len(buf) < n:
        piece = os.read(fd, min(_CHUNK, n - len(buf)))
        if not piece:
            raise fail(f"ended after {len(buf)} of {n} bytes (the file changed while being read)")
        if hasher is not None:
            hasher.update(piece)
        buf += piece
    return bytes(buf)


def _check_size(size: int, expected: Optional[int], fail) -> None:
    if expected is not None and size != expected:
        raise fail(f"is {size} bytes, the manifest says {expected}; the file is corrupt or not the one the "
                   "capture wrote")


def _header_of(data: bytes, size: int, fail) -> dict:
    """The safetensors JSON header of a file of ``size`` bytes whose first bytes are ``data``."""
    if size < 8 or len(data) < 8:
        raise fail("is too short to be a safetensors file; the file is corrupt")
    n = int.from_bytes(data[:8], "little")
    if not 2 <= n <= min(_MAX_HEADER, size - 8) or len(data) < 8 + n:
        raise fail(f"has a safetensors header length of {n} bytes that does not fit the file; the file is corrupt")
    try:
        header = json.loads(data[8:8 + n])
    except (ValueError, RecursionError):
        raise fail("has a safetensors header that is not JSON; the file is corrupt") from None
    if not isinstance(header, dict):
        raise fail("has a safetensors header that is not an object; the file is corrupt")
    return header


def _check_header(header: dict, fail, ref_records: Optional[list], manifest_meta: Optional[dict]) -> list:
    """Check a shard's header: its own metadata is a valid facts list (equal to the manifest's
    ``ref_records`` when given), and the tensors are exactly the listed keys with the listed shapes and
    dtypes. Returns the shard's facts list."""
    meta = header.get("__metadata__")
    try:
        shard_meta = json.loads(meta[_META_KEY])
    except Exception:
        raise fail("has no hopfield_gag metadata; not a shard of an activation store") from None
    if not isinstance(shard_meta, dict) or not isinstance(shard_meta.get("records"), list):
        raise fail("has hopfield_gag metadata without a records list; the file is corrupt")
    facts_list = shard_meta["records"]

    def err(field, problem):
        return fail(f"metadata field {field!r} {problem}")

    for i, f in enumerate(facts_list):
        _check_record_facts(f, f"records[{i}]", err)
    if manifest_meta is not None:
        for key, want in manifest_meta.items():
            if shard_meta.get(key) != want:
                raise fail(f"metadata says {key} = {shard_meta.get(key)!r}, the manifest {want!r}; "
                           "the shard belongs to another capture")
    if ref_records is not None:
        if len(facts_list) != len(ref_records):
            raise fail(f"holds {len(facts_list)} records, the manifest says {len(ref_records)}")
        for i, (got, want) in enumerate(zip(facts_list, ref_records)):
            if got != want:
                field = next(k for k in sorted(set(got) | set(want)) if got.get(k) != want.get(k))
                raise fail(f"record {i} (layer {want['layer']!r}): the manifest's {field} = {want.get(field)!r} "
                           f"disagrees with the shard's {got.get(field)!r}")
    listed = set()
    for i, f in enumerate(facts_list):
        for key, shape in f["shapes"].items():
            name = f"{i:05d}.{key}"
            listed.add(name)
            t = header.get(name)
            where = f"record {i} (layer {f['layer']!r}): tensor {key!r}"
            if not isinstance(t, dict):
                raise fail(f"{where} is listed but not in the file")
            code = t.get("dtype")
            if not isinstance(code, str) or _ST_DTYPES.get(code) != f["dtypes"][key]:
                raise fail(f"{where} has dtype {t.get('dtype')!r} in the file, the facts say {f['dtypes'][key]!r}")
            if t.get("shape") != shape:
                raise fail(f"{where} has shape {t.get('shape')!r} in the file, the facts say {shape!r}")
    extra = sorted(k for k in header if k != "__metadata__" and k not in listed)
    if extra:
        raise fail(f"holds tensors no record lists: {extra[:5]}")
    return facts_list


def _load_tensors(data: bytes, fail) -> dict:
    from safetensors.torch import load

    try:
        return load(data)
    except Exception as exc:  # safetensors raises its own error types for garbled headers and offsets
        raise fail(f"cannot be parsed as safetensors ({exc}); the file is corrupt") from None


def read_shard_file(path, sha256: Optional[str] = None) -> list[dict]:
    """Read every record of one shard file, checked (a self-contained unit: no manifest needed).

    Parameters
    ----------
    path : a :class:`ShardRef` (from :meth:`ActivationStore.shard_ref`: the file's size, SHA-256 and facts
        are then checked against the manifest's, and errors name the shard's layers), or the path of a
        ``shard-NNNNNN.safetensors`` file (checked against its own metadata only).
    sha256 : expected checksum for a plain path; a mismatch raises :class:`ShardError`.

    The file is opened without following symlinks, must be a regular file, is read in 1 MiB chunks and
    hashed over the same bytes that are parsed; its header must list exactly the records' tensors with
    their shapes and dtypes (see the module docstring's trust model).

    Returns
    -------
    list of record dicts (tensors on CPU, in their stored dtypes).
    """
    if isinstance(path, ShardRef):
        if sha256 is not None:
            raise ValueError("sha256: pass it inside the ShardRef, not next to it")
        ref = path
    else:
        p = Path(path)
        ref = ShardRef(p.name, str(p), sha256, None, None)
    fail = _failer(ref)
    fd, size = _open_regular(Path(ref.path), fail)
    try:
        _check_size(size, ref.bytes, fail)
        hasher = hashlib.sha256() if ref.sha256 is not None else None
        data = _read_exact(fd, size, fail, hasher)
    finally:
        os.close(fd)
    if hasher is not None and hasher.hexdigest() != ref.sha256:
        raise fail(f"checksum mismatch (manifest sha256 {ref.sha256[:12]}..., file {hasher.hexdigest()[:12]}...); "
                   "the file is corrupt")
    meta = None if ref.model_id is None else {"model_id": ref.model_id, "config_hash": ref.config_hash}
    facts_list = _check_header(_header_of(data, size, fail), fail, ref.records, meta)
    tensors = _load_tensors(data, fail)
    return [_record_from(f, {k: tensors[f"{i:05d}.{k}"] for k in f["shapes"]}) for i, f in enumerate(facts_list)]


def _failer(ref: ShardRef):
    layers = ref.layers

    def fail(problem):
        return ShardError(ref.name, problem, layers=layers)
    return fail


@dataclass(frozen=True)
class VerifyReport:
    """Result of :meth:`ActivationStore.verify`: shards checked, records, bytes."""

    shards: int
    records: int
    bytes: int


class ActivationStore:
    r"""A directory of safetensors shards plus a versioned JSON manifest (see the module docstring, whose
    *trust model* says what opening, reading and verifying check).

    ``ActivationStore(path)`` opens an existing store for reading (validating its manifest: :class:`StoreError`
    naming the field otherwise); :meth:`create` opens one for writing.

    Reading
    -------
    ``store.shards`` : list of shard names (manifest order); ``store.read_shard(name, verify=)`` : its records;
    ``store.records(layer=, step=, branch=, verify=)`` / ``iter(store)`` : lazy iteration, one shard in memory
    at a time, shards holding no matching record are not read; ``store.verify()`` : every shard's size,
    header and SHA-256; ``store.shard_ref(name)`` : a picklable handle for :func:`read_shard_file` on a worker.
    ``store.layers``, ``store.steps``, ``store.branches``, ``store.model_id``, ``store.config_hash``,
    ``store.complete``, ``store.nbytes``, ``store.info()``.

    The object holds only the path and the parsed manifest, so it pickles cheaply to Dask workers.
    """

    def __init__(self, path: str | os.PathLike):
        self.path = Path(path)
        mpath = self.path / MANIFEST
        if not self.path.is_dir() or not (mpath.exists() or mpath.is_symlink()):
            raise StoreError(f"{self.path} is not an activation store: no {MANIFEST} "
                             "(create one with capture(...) or import_tensors(...))")

        def fail(problem):
            return StoreError(f"{mpath} {problem}")

        fd, size = _open_regular(mpath, fail)
        try:
            if size > _MAX_MANIFEST:
                raise fail(f"is {size} bytes; a manifest is at most {_MAX_MANIFEST} bytes")
            raw = _read_exact(fd, size, fail)
        finally:
            os.close(fd)
        try:
            manifest = json.loads(raw)
        except (ValueError, RecursionError) as exc:
            raise StoreError(f"{mpath} is not valid JSON ({str(exc)[:200]})") from None
        self.manifest = validate_manifest(manifest, str(mpath))
        self._writable = False
        # placement: a listed name must be a regular file in this directory (or absent: a missing shard is
        # reported by reads and verify); a symlink or a directory under a shard's name rejects the store
        for j, s in enumerate(self.manifest["shards"]):
            try:
                st = os.lstat(self.path / s["name"])
            except FileNotFoundError:
                continue
            if stat.S_ISLNK(st.st_mode):
                raise StoreError(f"{mpath}: field 'shards[{j}].name' ({s['name']!r}) is a symbolic link; a store's "
                                 "shards must be regular files inside it (nothing outside the store is read)")
            if not stat.S_ISREG(st.st_mode):
                raise StoreError(f"{mpath}: field 'shards[{j}].name' ({s['name']!r}) is not a regular file")

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
    # ------------------------------------------------------------------------------------------------
    # reading
    # ------------------------------------------------------------------------------------------------
    @property
    def shards(self) -> list[str]:
        """Shard names in write order (stable API for studies)."""
        return [s["name"] for s in self.manifest["shards"]]

    def shard_path(self, name: str) -> Path:
        """Absolute path of shard ``name`` inside the store (names are validated plain file names)."""
        self._shard_entry(name)
        return self.path.resolve() / name

    def shard_info(self, name: str) -> dict:
        """Manifest entry of shard ``name``: ``sha256``, ``bytes`` and the records' facts/shapes/dtypes."""
        return self._shard_entry(name)

    def shard_ref(self, name: str, verify: bool = True) -> ShardRef:
        """A picklable :class:`ShardRef` of shard ``name`` for :func:`read_shard_file` (e.g. on a Dask
        worker): path, size, facts and, with ``verify``, the SHA-256 to check."""
        e = self._shard_entry(name)
        return ShardRef(name, str(self.shard_path(name)), e["sha256"] if verify else None, e["bytes"],
                        e["records"], self.model_id, self.config_hash)

    def _shard_entry(self, name: str) -> dict:
        for s in self.manifest["shards"]:
            if s["name"] == name:
                return s
        raise KeyError(f"no shard named {name!r} in {self.path} (shards: {self.shards[:5]}"
                       f"{'...' if len(self.shards) > 5 else ''})")

    def read_shard(self, name: str, verify: bool = False) -> list[dict]:
        """All records of shard ``name``, size and header checked against the manifest; ``verify=True``
        also checks its SHA-256.

        Raises :class:`ShardError` naming the shard and its layers when it is missing, unreadable or
        inconsistent; other shards are unaffected.
        """
        return read_shard_file(self.shard_ref(name, verify=verify))

    def records(self, layer=None, step=None, branch=None, verify: bool = False) -> Iterator[dict]:
        """Lazily iterate records, filtered by ``layer`` (name or list of names), ``step`` (int or list)
        and ``branch`` (``"cond"``, ``"uncond"``, or a list); ``None`` = no filter.

        Only shards with a matching record (per the manifest) are read, one at a time. Every shard read is
        size- and header-checked against the manifest (a :class:`ShardError` names the shard and layer).
        ``verify=False`` maps the file and materializes only the matching records' tensors; ``verify=True``
        reads each shard whole and checks its SHA-256 first, so no record of a corrupt shard is returned
        (the studies use it).
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

        for entry in self.manifest["shards"]:
            idx = [i for i, f in enumerate(entry["records"]) if keep(f)]
            if not idx:
                continue
            ref = self.shard_ref(entry["name"], verify=verify)
            if verify:
                recs = read_shard_file(ref)
                for i in idx:
                    yield recs[i]
            else:
                yield from self._mapped_records(ref, idx)

    def _mapped_records(self, ref: ShardRef, idx: list) -> Iterator[dict]:
        """Records ``idx`` of a shard through safetensors' memory map, after the size and header checks."""
        from safetensors import safe_open

        fail = _failer(ref)
        fd, size = _open_regular(Path(ref.path), fail)
        try:
            _check_size(size, ref.bytes, fail)
            head = _read_exact(fd, min(size, 8), fail)
            n = int.from_bytes(head, "little") if len(head) == 8 else 0
            if 2 <= n <= min(_MAX_HEADER, size - 8):
                head += _read_exact(fd, n, fail)
        finally:
            os.close(fd)
        meta = {"model_id": ref.model_id, "config_hash": ref.config_hash}
        _check_header(_header_of(head, size, fail), fail, ref.records, meta)
        try:
            with safe_open(ref.path, framework="pt") as fh:
                for i in idx:
                    facts = ref.records[i]
                    ts = {key: fh.get_tensor(f"{i:05d}.{key}") for key in facts["shapes"]}
                    yield _record_from(facts, ts)
        except ShardError:
            raise
        except Exception as exc:
            raise fail(f"cannot be read ({exc}); the file is corrupt") from None

    def __iter__(self) -> Iterator[dict]:
        return self.records()

    def __len__(self) -> int:
        return sum(len(s["records"]) for s in self.manifest["shards"])

    def verify(self, raise_on_error: bool = True):
        """Check every shard against the manifest: a regular file inside the store, its size, its SHA-256
        (hashed in chunks), and its safetensors header (every record's tensor keys, shapes and dtypes, and
        the shard's own metadata). The manifest's schema, names and layer/step/branch lists were checked
        when the store was opened.

        Returns a :class:`VerifyReport` when all pass. Otherwise raises :class:`ShardError` naming every bad
        shard (or, with ``raise_on_error=False``, returns ``{name: message}`` of the bad ones).
        """
        errors: dict[str, ShardError] = {}
        n_rec = n_bytes = 0
        for entry in self.manifest["shards"]:
            try:
                recs = self.read_shard(entry["name"], verify=True)
                n_rec += len(recs)
                n_bytes += entry["bytes"]
            except ShardError as exc:
                errors[entry["name"]] = exc
        bad = {name: str(exc) for name, exc in errors.items()}
        if bad and raise_on_error:
            names = sorted(bad)
            if len(names) == 1:
                raise errors[names[0]]
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
