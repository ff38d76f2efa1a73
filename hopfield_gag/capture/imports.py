r"""``import_tensors``: attention tensors captured elsewhere become an :class:`ActivationStore`."""
from __future__ import annotations

import hashlib
import os
from pathlib import Path
from typing import Any, Mapping, Optional

import torch

from .store import ActivationStore

__all__ = ["import_tensors", "LAYOUTS"]

# canonical layout names and their accepted spellings
LAYOUTS = {
    "BHLD": ("BHLD", "B,H,L,D"),
    "BLHD": ("BLHD", "B,L,H,D"),
    "(BH)LD": ("(BH)LD", "BH,L,D", "B*H,L,D", "(B*H)LD", "B·H,L,D", "(B·H)LD"),
    "HLD": ("HLD", "H,L,D"),
}
_ALIASES = {alias.upper(): canon for canon, aliases in LAYOUTS.items() for alias in aliases}


def _to_bhld(name: str, x, layout: str, heads: Optional[int]) -> torch.Tensor:
    if not isinstance(x, torch.Tensor):
        try:
            x = torch.as_tensor(x)
        except Exception:
            raise TypeError(f"{name} must be an array or tensor, got {type(x).__name__}") from None
    if not x.is_floating_point():
        raise ValueError(f"{name} must be floating point, got dtype {x.dtype}")
    want = {"BHLD": 4, "BLHD": 4, "(BH)LD": 3, "HLD": 3}[layout]
    if x.dim() != want:
        raise ValueError(f"{name} has shape {tuple(x.shape)}; layout {layout!r} expects {want} dimensions")
    if layout == "BLHD":
        return x.transpose(1, 2).contiguous()
    if layout == "HLD":
        return x.unsqueeze(0)
    if layout == "(BH)LD":
        if heads is None:
            raise ValueError("layout '(BH)LD' needs heads=<number of heads> to split the leading B*H dimension")
        if x.shape[0] % heads:
            raise ValueError(f"{name}: leading dimension {x.shape[0]} is not a multiple of heads={heads}")
        return x.reshape(x.shape[0] // heads, heads, *x.shape[1:])
    return x


def _load_source(source) -> dict[str, dict[str, Any]]:
    """``{call_name: {"q", "k", "v", ...}}`` from a dict or a file (npz, safetensors, pt)."""
    if isinstance(source, Mapping):
        flat = dict(source)
    else:
        path = Path(source)
        if not path.is_file():
            raise FileNotFoundError(f"source {path} does not exist (expected an .npz, .safetensors or .pt file, "
                                    "or a dict {call_name: {'q', 'k', 'v'}})")
        suffix = path.suffix.lower()
        if suffix == ".npz":
            import numpy as np

            with np.load(path, allow_pickle=False) as z:
                # numeric arrays become tensors; a string entry (e.g. "<call>/layer") stays a str
                flat = {k: (torch.from_numpy(z[k].copy()) if z[k].dtype.kind in "fiub" else str(z[k].item()))
                        for k in z.files}
        elif suffix == ".safetensors":
            from safetensors.torch import load_file

            flat = load_file(str(path))
        elif suffix in (".pt", ".pth"):
            flat = torch.load(path, map_location="cpu", weights_only=True)
            if not isinstance(flat, Mapping):
                raise ValueError(f"{path} must hold a dict, got {type(flat).__name__}")
        else:
            raise ValueError(f"source {path}: unsupported suffix {suffix!r} (use .npz, .safetensors, .pt)")
    # nested {call: {q, k, v}} or flat {"call/q": ...}; a bare {"q","k","v"} is one call named "call"
    calls: dict[str, dict[str, Any]] = {}
    for key, val in flat.items():
        if isinstance(val, Mapping):
            calls.setdefault(str(key), {}).update(val)
        elif "/" in str(key):
            call, _, field = str(key).rpartition("/")
            calls.setdefault(call, {})[field] = val
        else:
            calls.setdefault("call", {})[str(key)] = val
    return calls


def import_tensors(source, out_dir: str | os.PathLike, layout: str = "BHLD", scale: Optional[float] = None,
                   heads: Optional[int] = None, model_id: str = "imported",
                   shard_bytes: int = 256 << 20) -> ActivationStore:
    r"""Turn attention tensors captured elsewhere into an :class:`ActivationStore` (one record per call).

    Parameters
    ----------
    source : path or dict
        ``{call_name: {"q": ..., "k": ..., "v": ...}}`` (arrays or tensors; optional per call: ``"mask"``,
        ``"step"``, ``"text_keys"`` as ``(start, stop)``, ``"layer"``), or a file holding the same: an
        ``.npz`` / ``.safetensors`` with flat keys ``"<call>/q"``, ``"<call>/k"``, ``"<call>/v"`` (bare
        ``q``, ``k``, ``v`` = one call named ``"call"``), or a ``.pt`` dict (nested or flat).
    out_dir : directory of the new store (must be empty or absent).
    layout : ``"BHLD"`` (default), ``"BLHD"``, ``"(BH)LD"`` (``B·H`` fused, as in diffusers'
        ``head_to_batch_dim``; needs ``heads``) or ``"HLD"`` (one batch row).
    scale : score scale :math:`\beta` of these calls (``None`` = :math:`1/\sqrt D`).
    heads : number of heads, required for ``"(BH)LD"``.
    model_id : recorded in the manifest.
    shard_bytes : calls are grouped into shards of about this many tensor bytes.

    Returns
    -------
    ActivationStore with records q, k, v in (B, H, L, D), ``layer`` = the call name (or its ``"layer"``),
    ``step`` = its ``"step"`` (or ``None``), ``source = "import"``.
    """
    if not isinstance(layout, str) or layout.replace(" ", "").upper() not in _ALIASES:
        raise ValueError(f"layout must be one of {list(LAYOUTS)}, got {layout!r}")
    layout = _ALIASES[layout.replace(" ", "").upper()]
    if heads is not None and (not isinstance(heads, int) or heads < 1):
        raise ValueError(f"heads must be a positive int, got {heads!r}")
    if scale is not None and not (isinstance(scale, (int, float)) and scale > 0):
        raise ValueError(f"scale must be a positive float or None, got {scale!r}")
    calls = _load_source(source)
    if not calls:
        raise ValueError("source holds no tensors")
    records = []
    digest = hashlib.sha256(layout.encode())
    for name in sorted(calls):
        entry = calls[name]
        missing = [f for f in ("q", "k", "v") if f not in entry]
        if missing:
            raise ValueError(f"call {name!r} lacks {missing}; each call needs 'q', 'k' and 'v'")
        q, k, v = (_to_bhld(f"{name}/{f}", entry[f], layout, heads) for f in ("q", "k", "v"))
        if q.shape[:2] != k.shape[:2] or k.shape[:3] != v.shape[:3] or q.shape[-1] != k.shape[-1]:
            raise ValueError(f"call {name!r}: shapes q {tuple(q.shape)}, k {tuple(k.shape)}, v {tuple(v.shape)} "
                             "do not form attention (B, H, Lq, D), (B, H, Lk, D), (B, H, Lk, Dv)")
        step = entry.get("step")
        tk = entry.get("text_keys")
        rec = {"q": q, "k": k, "v": v, "layer": str(entry.get("layer", name)),
               "step": None if step is None else int(torch.as_tensor(step).item()),
               "branch": None, "call": 0, "scale": scale, "source": "import", "kind": None,
               "text_keys": None if tk is None else tuple(int(t) for t in torch.as_tensor(tk).tolist()),
               "extra": {"call_name": name, "layout": layout}}
        if entry.get("mask") is not None:
            rec["mask"] = torch.as_tensor(entry["mask"])
        records.append(rec)
        for t in (q, k, v):
            digest.update(str((name, tuple(t.shape), str(t.dtype))).encode())
    store = ActivationStore.create(out_dir, model_id=model_id, config_hash=digest.hexdigest(),
                                   settings={"source": "import", "layout": layout, "scale": scale})
    # shards of at most ~shard_bytes each, so a study can spread them over workers
    batch, size = [], 0
    for rec in records:
        batch.append(rec)
        size += sum(t.numel() * t.element_size() for t in rec.values() if isinstance(t, torch.Tensor))
        if size >= shard_bytes:
            store.append_shard(batch)
            batch, size = [], 0
    if batch:
        store.append_shard(batch)
    store.mark_complete()
    return ActivationStore(out_dir)
