r"""``capture``: record attention tensors of a running model into an :class:`ActivationStore`.

Two routes, one recorder:

* **Adapters** (diffusers models and pipelines — UNet / SD3 / Flux / Qwen through processor copies, PixArt,
  Wan, LTX, ... through the hook path — and the shipped models): capture is an attention function installed
  with :func:`hopfield_gag.adapters.install_attention_fn`; it *observes*, so it composes with
  :func:`~hopfield_gag.adapters.apply_gag` on the same layers and records a guided run. It receives each
  :class:`~hopfield_gag.adapters.AttentionCall` (q, k, v exactly as the kernel sees them: after head split,
  q/k norms and RoPE; the key partition; step, timestep, CFG branches), queues a copy, and returns
  ``call.inner()``: the stock kernel on the same inputs when nothing else is installed (the model's output is
  bit-identical), the guided output when GAG is.
* **Torch hooks** (any other ``nn.Module``): ``register_forward_hook(..., with_kwargs=True)`` on the q/k/v
  projections of each attention module (:class:`ProjectionExtractor`), or on user-named modules with a
  user extractor (:class:`Extractor`). Hooks return ``None``, so the output is untouched.

  What hooks cannot see: anything computed *inside* the attention module's forward. Projections give
  q/k/v **before** q/k norms and RoPE, so in MMDiT models (SD3 with qk-norm, Flux, Qwen) the hooked q/k
  are not what the kernel multiplies, and the text stream (``add_q_proj`` ...) is a separate projection;
  masks and the score scale must come from the module's attributes or the extractor. Use the adapters
  route for those models.

The recorder selects layers / steps / heads / a query-token subsample, copies the selected slices on the
calling thread (the only work on the forward path) and hands them to a background writer thread through a
queue bounded in bytes (``memory_budget``): when the writer falls behind, the forward waits instead of
growing RAM. The writer optionally computes dense/sparse outputs and theory margins
(:func:`hopfield_gag.sharpening_margin`, :func:`~hopfield_gag.query_alignment_margin`,
:func:`~hopfield_gag.parallel_margin`, via :func:`~hopfield_gag.sparse_dense_discrepancy`), downcasts, and
writes shards atomically (:mod:`.store`).
"""
from __future__ import annotations

import contextlib
import hashlib
import json
import queue
import re
import threading
import time
from typing import Any, Callable, Iterable, Mapping, Optional, Protocol, Sequence

import torch
from torch import Tensor, nn

from ..adapters.selection import StepSelection, is_block_string, parse_steps, select_names
from .store import ActivationStore

__all__ = ["capture", "Capture", "Extractor", "ProjectionExtractor", "model_fingerprint", "COMPUTE", "MARGINS"]

MARGINS = ("sharpening", "query_alignment", "parallel")
COMPUTE = ("dense", "output", "sparse") + MARGINS
_PROJ_NAMES = (("to_q", "to_k", "to_v"), ("q_proj", "k_proj", "v_proj"), ("query", "key", "value"))
_HEAD_ATTRS = ("heads", "num_heads", "n_heads", "num_attention_heads")


# ----------------------------------------------------------------------------------------------------
# model identity
# ----------------------------------------------------------------------------------------------------
def _core_module(model) -> nn.Module:
    """The denoiser of a pipeline (``transformer`` / ``unet``), or the module itself."""
    if isinstance(model, nn.Module):
        return model
    for attr in ("transformer", "unet", "model"):
        m = getattr(model, attr, None)
        if isinstance(m, nn.Module):
            return m
    raise TypeError(f"model must be an nn.Module or a pipeline with a .transformer/.unet, got {type(model).__name__}")


def model_fingerprint(model) -> tuple[str, str]:
    """``(model_id, config_hash)`` of a module or pipeline.

    ``model_id`` is the class name; ``config_hash`` is the SHA-256 of the class name, the diffusers config
    without its private ``_`` keys (when present), every
    parameter's name, shape and dtype, and the first 8 values of each parameter: cheap, and different for
    two trainings of one architecture.
    """
    core = _core_module(model)
    h = hashlib.sha256(type(core).__qualname__.encode())
    cfg = getattr(core, "config", None)
    name = type(core).__name__
    if isinstance(cfg, Mapping):
        # private keys (_name_or_path, _diffusers_version, ...) say where the model came from, not what it is
        h.update(json.dumps({k: v for k, v in cfg.items() if not str(k).startswith("_")}, sort_keys=True,
                            default=str).encode())
    with torch.no_grad():
        for pname, p in core.named_parameters():
            h.update(f"{pname}{tuple(p.shape)}{p.dtype}".encode())
            h.update(p.detach().reshape(-1)[:8].to("cpu", torch.float64).numpy().tobytes())
    return name, h.hexdigest()


# ----------------------------------------------------------------------------------------------------
# selection
# ----------------------------------------------------------------------------------------------------
def _compile_layers(layers):
    """Check a ``layers=`` selector early (its meaning: :mod:`hopfield_gag.adapters.selection`)."""
    if layers is None:
        return None
    if isinstance(layers, (list, tuple, set)) and not layers:
        raise ValueError("layers must be None or a selector (name/regex, block string, int, dict, predicate, or a "
                         "non-empty list of these), got an empty list")
    for pat in (layers if isinstance(layers, (list, tuple, set)) else [layers]):
        if isinstance(pat, str) and not is_block_string(pat):
            try:
                re.compile(pat)
            except re.error as exc:
                raise ValueError(f"layers: {pat!r} is not a valid regular expression ({exc})") from None
    return layers


def _layers_json(layers):
    """The selector as the manifest records it (strings kept, anything else by its repr)."""
    if layers is None:
        return None
    items = layers if isinstance(layers, (list, tuple, set)) else [layers]
    return [x if isinstance(x, (str, int)) and not isinstance(x, bool) else repr(x) for x in items]


def _select_layers(patterns, available: Sequence[str], model=None) -> list[str]:
    """Names in ``available`` selected by ``patterns`` (the adapters' one meaning of ``layers=``)."""
    if patterns is None:
        return list(available)
    return select_names(model, available, patterns)


def _step_selected(sel: Optional[StepSelection], step: Optional[int], num_steps: Optional[int]) -> bool:
    return sel is None or sel.selects(step, num_steps, where=" in this capture (pass num_steps= to capture() or "
                                                             "set cap.set_step(i, n))")


# ----------------------------------------------------------------------------------------------------
# the extractor protocol (hooks route)
# ----------------------------------------------------------------------------------------------------
class Extractor(Protocol):
    """Turns one forward call of a named module into attention tensors.

    ``extractor(module, args, kwargs, output) -> mapping or None`` runs as a forward hook
    (``with_kwargs=True``) of the named module; the mapping has ``q`` (B, H, Lq, D), ``k`` (B, H, Lk, D),
    ``v`` (B, H, Lk, Dv) and optionally ``mask``, ``scale``, ``text_keys``, ``image_queries``, ``kind``.
    ``None`` skips the call. An extractor may instead provide ``attach(name, module, emit) -> handles``
    to install its own hooks (as :class:`ProjectionExtractor` does) and call ``emit(mapping)``.
    """

    def __call__(self, module: nn.Module, args: tuple, kwargs: dict, output: Any) -> Optional[Mapping]: ...


def _find_projections(module: nn.Module):
    for names in _PROJ_NAMES:
        mods = [getattr(module, n, None) for n in names]
        if all(isinstance(m, nn.Linear) for m in mods):
            return mods
    return None


class ProjectionExtractor:
    """Hooks the q/k/v projections (``to_q/to_k/to_v``, ``q_proj/k_proj/v_proj`` or ``query/key/value``
    Linears) of an attention module and splits their outputs (B, L, H·D) into (B, H, L, D).

    These are the projections *before* any q/k norm or RoPE the module applies inside its forward (see
    the module docstring). The head count comes from ``num_heads`` or the module's ``heads`` /
    ``num_heads`` / ``n_heads`` / ``num_attention_heads``; the scale from a float ``module.scale`` (else
    ``None`` = 1/sqrt(D)). A call whose keys come from another sequence (Lk != Lq, or a
    ``encoder_hidden_states`` argument) is recorded as cross-attention with all keys text.
    """

    def __init__(self, num_heads: Optional[int] = None):
        self.num_heads = num_heads

    @staticmethod
    def supports(module: nn.Module) -> bool:
        return _find_projections(module) is not None

    def attach(self, name: str, module: nn.Module, emit: Callable[[Mapping], None]) -> list:
        projs = _find_projections(module)
        if projs is None:
            raise ValueError(f"layer {name!r} ({type(module).__name__}) has no q/k/v Linear projections "
                             f"({', '.join('/'.join(n) for n in _PROJ_NAMES)}); pass extractor=")
        heads = self.num_heads
        if heads is None:
            heads = next((getattr(module, a) for a in _HEAD_ATTRS if isinstance(getattr(module, a, None), int)), None)
        if heads is None:
            raise ValueError(f"layer {name!r}: cannot tell its number of heads (no attribute among {_HEAD_ATTRS}); "
                             "pass num_heads= to capture()")
        slot: dict[str, Tensor] = {}

        def proj_hook(key):
            def hook(mod, args, output):
                slot[key] = output
            return hook

        def done_hook(mod, args, kwargs, output):
            if len(slot) < 3:
                slot.clear()
                return None
            q, k, v = (slot.pop(x) for x in "qkv")
            if q.dim() != 3:
                return None
            split = [t.unflatten(-1, (heads, -1)).transpose(1, 2) for t in (q, k, v)]
            cross = split[1].shape[2] != split[0].shape[2] or kwargs.get("encoder_hidden_states") is not None
            scale = getattr(mod, "scale", None)
            emit({"q": split[0], "k": split[1], "v": split[2],
                  "scale": float(scale) if isinstance(scale, (int, float)) else None,
                  "kind": "cross" if cross else "self",
                  "text_keys": slice(0, split[1].shape[2]) if cross else None,
                  "image_queries": slice(0, split[0].shape[2])})
            return None

        handles = [p.register_forward_hook(proj_hook(x)) for p, x in zip(projs, "qkv")]
        handles.append(module.register_forward_hook(done_hook, with_kwargs=True))
        return handles


# ----------------------------------------------------------------------------------------------------
# the byte-bounded queue and the writer
# ----------------------------------------------------------------------------------------------------
def _nbytes(rec: Mapping) -> int:
    return sum(t.numel() * t.element_size() for t in rec.values() if isinstance(t, Tensor))


class Capture:
    """State of one open :func:`capture`: counters, the writer thread, the installed hooks.

    Attributes readable during and after the capture: ``store`` (the :class:`ActivationStore` written),
    ``layers`` (selected layer names), ``records`` (written), ``skipped`` (already in a resumed store),
    ``bytes`` (shard bytes written), ``seconds``; writable: ``step``, ``num_steps``, ``timestep`` (used when
    a call carries none, e.g. the hooks route; ``step`` otherwise counts top-level forward calls).
    """

    def __init__(self, *, steps, heads, tokens, dtype, memory_budget: int,
                 shard_bytes: int, compute: tuple, alpha: float, keep_qkv: bool, cfg_batch: bool,
                 num_steps: Optional[int], seed: int):
        self.store: Optional[ActivationStore] = None
        self.layers: list[str] = []
        self._layer_set: set = set()
        self._steps = steps
        self._heads = heads
        self._tokens = tokens
        self._dtype = dtype
        self._budget = int(memory_budget)
        self._shard_bytes = int(shard_bytes)
        self._compute = compute
        self._alpha = alpha
        self._keep_qkv = keep_qkv
        self._cfg_batch = cfg_batch
        self._seed = seed
        self._done: set = set()
        self._occurrence: dict = {}
        self.step: Optional[int] = None
        self.num_steps = num_steps
        self.timestep: Optional[float] = None
        self._forwards = 0
        self.records = 0
        self.skipped = 0
        self.bytes = 0
        self.seconds = 0.0
        self._t0 = time.perf_counter()
        self._q: queue.Queue = queue.Queue()
        self._pending = 0
        self.peak_pending = 0  # most bytes of copied records held in RAM at once (<= memory_budget)
        self._waiting = False
        self._cv = threading.Condition()
        self._error: Optional[BaseException] = None
        self._writer: Optional[threading.Thread] = None

    def _start(self, store: ActivationStore) -> None:
        # the store exists only once every argument and the layer selection passed their checks
        self.store = store
        self._done = store.keys_written()
        self._t0 = time.perf_counter()
        self._writer = threading.Thread(target=self._run_writer, name="hopfield-gag-capture-writer", daemon=True)
        self._writer.start()

    def set_step(self, step: int, num_steps: Optional[int] = None, timestep: Optional[float] = None) -> None:
        """Step facts for calls that carry none (custom loops over a bare model, the hooks route)."""
        if not isinstance(step, int) or step < 0:
            raise ValueError(f"step must be a non-negative int, got {step!r}")
        self.step, self.timestep = step, None if timestep is None else float(timestep)
        if num_steps is not None:
            self.num_steps = num_steps

    # -------------------------------------------------------------------- forward path (calling thread)
    def _on_forward(self, module, args):
        # a top-level forward = one denoising call; the fallback step counter when calls carry none
        self._forwards += 1
        return None

    #: capture observes: it composes with a replacing function (GAG) installed on the same layers, which runs
    #: inside it (hopfield_gag.adapters.core), so a guided run is recorded
    observer = True

    def __call__(self, call) -> Tensor:
        """Attention function for the adapters: record ``call`` and return ``call.inner()`` — the stock output,
        or the guided output when GAG is installed in the model too (recorded as ``output`` on request)."""
        out = call.inner()
        if call.layer in self._layer_set:
            guided = call.inner is not call.dense
            dense = call.dense() if guided and "dense" in self._compute else out
            self.record(call.layer, {"q": call.q, "k": call.k, "v": call.v, "mask": call.mask, "scale": call.scale,
                                     "kind": call.kind, "text_keys": call.text_keys,
                                     "image_queries": call.image_queries, "dense": dense, "output": out},
                        step=call.step, num_steps=call.num_steps, timestep=call.timestep, branches=call.branches,
                        extra=call.extra)
        return out

    def record(self, layer: str, t: Mapping, *, step=None, num_steps=None, timestep=None, branches=None,
               extra=None) -> None:
        """Select, copy and queue one attention call (``t`` holds q, k, v (B, H, L, D) and facts)."""
        self._raise_writer_error()
        if step is None:
            step = self.step if self.step is not None else max(self._forwards - 1, 0)
        num_steps = num_steps if num_steps is not None else self.num_steps
        timestep = timestep if timestep is not None else self.timestep
        if not _step_selected(self._steps, step, num_steps):
            return
        q = t["q"]
        B, H = q.shape[0], q.shape[1]
        if branches is None and self._cfg_batch:
            if B % 2:
                raise ValueError(f"cfg_batch=True needs an even batch ([uncond; cond]), got batch {B} at {layer!r}")
            branches = ("uncond",) * (B // 2) + ("cond",) * (B // 2)
        if branches is not None and len(branches) != B:
            raise ValueError(f"layer {layer!r}: {len(branches)} branch labels for a batch of {B}")
        heads = self._heads
        if heads is not None and max(heads) >= H:
            raise ValueError(f"heads={list(heads)} out of range for layer {layer!r} with {H} heads")
        qidx = self._query_index(q.shape[2])
        groups = [(None, None)] if branches is None else [
            (b, [i for i, x in enumerate(branches) if x == b]) for b in dict.fromkeys(branches)]
        for branch, rows in groups:
            key0 = (layer, step, branch)
            occ = self._occurrence.get(key0, 0)
            self._occurrence[key0] = occ + 1
            if (layer, step, branch, occ) in self._done:
                self.skipped += 1
                continue
            rec = {"layer": layer, "step": step, "branch": branch, "call": occ, "num_steps": num_steps,
                   "timestep": None if timestep is None else float(timestep), "scale": t.get("scale"),
                   "kind": t.get("kind"), "text_keys": t.get("text_keys"), "image_queries": t.get("image_queries"),
                   "heads": None if heads is None else list(heads), "source": t.get("source", "adapters"),
                   "extra": {k: v for k, v in (extra or {}).items()
                             if isinstance(v, (int, float, str, bool, type(None)))}}
            for name in ("q", "k", "v", "mask", "dense", "output"):
                x = t.get(name)
                if x is None or (name in ("dense", "output") and name not in self._compute):
                    continue
                x0 = x = x.detach()
                if name == "mask":
                    # masks broadcast: index only the dimensions they actually carry
                    if x.dim() == 4 and x.shape[0] == B and rows is not None and len(rows) < B:
                        x = x[rows]
                    if x.dim() == 4 and x.shape[1] == H and heads is not None:
                        x = x[:, heads]
                    if x.dim() >= 2 and x.shape[-2] == q.shape[2] and qidx is not None:
                        x = x[..., qidx, :]
                else:
                    if rows is not None and len(rows) < B:
                        x = x[rows]
                    if heads is not None:
                        x = x[:, heads]
                    if qidx is not None and name in ("q", "dense", "output"):
                        x = x[:, :, qidx]
                # the only forward-path cost: one copy (advanced indexing above already made one), so the
                # model may reuse or mutate its tensors afterwards
                rec[name] = x.clone() if x is x0 else x
            if qidx is not None:
                rec["query_index"] = qidx.clone()
            self._put(rec)

    def _query_index(self, lq: int) -> Optional[Tensor]:
        tok = self._tokens
        if tok is None:
            return None
        if isinstance(tok, int):
            if tok >= lq:
                return None
            g = torch.Generator().manual_seed(self._seed * 1_000_003 + lq)
            return torch.randperm(lq, generator=g)[:tok].sort().values
        idx = tok[tok < lq]
        return idx

    def _put(self, rec: dict) -> None:
        n = _nbytes(rec)
        if n > self._budget:
            raise MemoryError(f"one record of layer {rec['layer']!r} needs {n} bytes, more than memory_budget="
                              f"{self._budget}; raise memory_budget or select fewer heads/tokens")
        with self._cv:
            while self._pending + n > self._budget and self._error is None:
                self._waiting = True
                self._cv.wait(0.05)
            self._waiting = False
            self._pending += n
            self.peak_pending = max(self.peak_pending, self._pending)
        self._raise_writer_error()
        self._q.put((rec, n))

    def _raise_writer_error(self):
        if self._error is not None:
            raise RuntimeError(f"capture writer failed: {self._error!r}") from self._error

    # -------------------------------------------------------------------- writer thread
    def _derive(self, rec: dict) -> dict:
        """On-the-fly outputs and margins (library calls, never re-derived), downcast, move to CPU."""
        need_sparse = "sparse" in self._compute
        # the hooks route has no stock kernel call to copy: its dense output comes from the library too
        need_dense = "dense" in self._compute and "dense" not in rec
        margins = [m for m in MARGINS if m in self._compute]
        if need_sparse or need_dense or margins:
            import hopfield_gag as hg

            q, k, v = rec["q"], rec["k"], rec["v"]
            mask = rec.get("mask")
            kw = dict(scale=rec["scale"], alpha=self._alpha, mask=mask)
            if need_dense:
                # the stock kernel, as the hooked model would call it on these tensors
                rec["dense"] = torch.nn.functional.scaled_dot_product_attention(
                    q, k, v, attn_mask=mask, scale=rec["scale"])
            if need_sparse or margins:
                # one discrepancy for the sparse output and every margin (each margin is one of its methods)
                disc = hg.sparse_dense_discrepancy(q, k, v, **kw)
            if need_sparse:
                rec["sparse"] = disc.sparse.to(q.dtype)
            if "sharpening" in margins:
                rec["margin_sharpening"] = disc.sharpening_margin().float()
            if "query_alignment" in margins:
                rec["margin_query_alignment"] = disc.query_alignment_margin().float()
            if "parallel" in margins:
                rec["margin_parallel"] = disc.parallel_margin().float()
        if not self._keep_qkv:
            for name in ("q", "k", "v", "mask"):
                rec.pop(name, None)
        for name, x in list(rec.items()):
            if isinstance(x, Tensor):
                if self._dtype is not None and x.is_floating_point() and not name.startswith("margin_"):
                    x = x.to(self._dtype)
                rec[name] = x.to("cpu")
        return rec

    def _run_writer(self):
        buf, buf_in, buf_out = [], 0, 0  # records, their queued bytes, their bytes after _derive
        try:
            while True:
                try:
                    item = self._q.get(timeout=0.05)
                except queue.Empty:
                    if buf and self._waiting:  # the forward waits for memory: flush a partial shard
                        self._flush(buf, buf_in)
                        buf, buf_in, buf_out = [], 0, 0
                    continue
                if item is None:
                    break
                rec, n = item
                rec = self._derive(rec)
                buf.append(rec)
                buf_in += n
                buf_out += _nbytes(rec)
                if buf_out >= self._shard_bytes:
                    self._flush(buf, buf_in)
                    buf, buf_in, buf_out = [], 0, 0
            if buf:
                self._flush(buf, buf_in)
        except BaseException as exc:  # surfaced on the calling thread at the next record / exit
            self._error = exc
            with self._cv:
                self._cv.notify_all()

    def _flush(self, buf, n_in):
        name = self.store.append_shard(buf)
        self.records += len(buf)
        self.bytes += self.store.shard_info(name)["bytes"]
        with self._cv:
            self._pending -= n_in
            self._cv.notify_all()

    def close(self, complete: bool) -> None:
        """Drain the queue, stop the writer, mark the store complete (when ``complete``)."""
        self._q.put(None)
        self._writer.join()
        self.seconds = time.perf_counter() - self._t0
        if self._error is not None:
            raise RuntimeError(f"capture writer failed: {self._error!r}") from self._error
        if complete:
            self.store.mark_complete()

    def summary(self) -> dict:
        """layers, steps, records, skipped, bytes, seconds."""
        return {"layers": len(self.store.layers), "steps": len(self.store.steps), "records": self.records,
                "skipped": self.skipped, "bytes": self.bytes, "seconds": round(self.seconds, 3),
                "path": str(self.store.path)}


def _install_adapters(model, cap: Capture, layer_patterns):
    """Models with attention processors: the adapters' installer (processor or hook path per layer), with its
    layer selection (one home for it). Capture observes, so it composes with an installed GAG."""
    from ..adapters import install_attention_fn, list_attention_layers

    if layer_patterns is None:
        layer_patterns = [i.name for i in list_attention_layers(model) if i.path != "none"]
    handle = install_attention_fn(model, cap, layers=layer_patterns)
    cap.layers = list(handle.layers)
    return [handle]


def _install_hooks(model, cap: Capture, layer_patterns, extractor, num_heads):
    core = _core_module(model)
    named = dict(core.named_modules())
    if extractor is None:
        ext = ProjectionExtractor(num_heads)
        available = [n for n, m in named.items() if n and ProjectionExtractor.supports(m)]
        if not available:
            raise ValueError(f"{type(core).__name__} has no module with q/k/v Linear projections; name the attention "
                             "modules with layers= and pass extractor=")
    else:
        ext = extractor
        if layer_patterns is None:
            raise ValueError("extractor= needs layers= naming the modules it reads")
        available = [n for n in named if n]
    chosen = _select_layers(layer_patterns, available, core)
    # a selector also matches the modules inside a selected one (dot-bounded prefixes); the outer module's
    # hook sees the whole call, so the inner ones are not hooked twice
    cap.layers = [n for n in chosen if not any(n.startswith(o + ".") for o in chosen)]
    handles = []
    try:
        for name in cap.layers:
            mod = named[name]

            def emit(t, name=name):
                cap.record(name, {**t, "source": "hooks"})

            if hasattr(ext, "attach"):
                handles += list(ext.attach(name, mod, emit))
            else:
                def hook(m, args, kwargs, output, emit=emit):
                    t = ext(m, args, kwargs, output)
                    if t is not None:
                        emit(dict(t))
                    return None  # a non-None return would replace the module's output

                handles.append(mod.register_forward_hook(hook, with_kwargs=True))
    except BaseException:
        for h in handles:
            h.remove()
        raise
    return handles


@contextlib.contextmanager
def capture(model, out_dir, layers=None, steps=None, heads=None, tokens=None, dtype=None,
            memory_budget: int = 1 << 30, resume: bool = False, compute: Iterable[str] = (),
            *, alpha: float = 1.5, keep_qkv: bool = True, via: str = "auto", extractor=None,
            num_heads: Optional[int] = None, num_steps: Optional[int] = None, cfg_batch: bool = False,
            shard_bytes: Optional[int] = None, model_id: Optional[str] = None, seed: int = 0):
    r"""Record attention calls of ``model`` into an :class:`ActivationStore` at ``out_dir`` while open.

    ``with capture(pipe_or_model, "acts/") as cap: pipe(...)``; on normal exit the store is marked
    complete; on an exception every shard written so far stays valid and ``resume=True`` continues
    (records already stored, keyed by (layer, step, branch, occurrence), are skipped).

    Each record holds q (B, H, Lq', D), k (B, H, Lk, D), v (B, H, Lk, Dv) (Lq' = the token subsample),
    the mask, the key partition ``text_keys`` / ``image_queries``, ``layer``, ``step``, ``timestep``,
    ``branch`` (``"cond"``/``"uncond"`` when the batch carries a CFG pair: the batch is split into one
    record per branch), and the outputs/margins asked for in ``compute``.

    Parameters
    ----------
    model : diffusers model or pipeline (adapters route), or any ``nn.Module`` (hooks route).
    out_dir : store directory; empty/absent, or (with ``resume=True``) a store of the same model.
    layers : None (all attention layers) or a selector with the one meaning of
        :mod:`hopfield_gag.adapters.selection` (as in ``apply_gag``): a name or regex matching a layer's name
        or a dot-bounded leading part of it (``"blocks.1"`` selects every attention layer inside block 1), a
        UNet block string (``"d2.2-9,m0"``), an int / dict index, a predicate, or a list of these; each must
        match a layer (else ``ValueError`` with the close matches).
    steps : None (all); a **tuple** ``(start, stop)`` of fractions in [0, 1]: step ``i`` of ``N`` is kept
        when ``start <= i/N < stop`` (half-open, as in ``apply_gag``); or step indices as an int, list, set
        or range (``[0, 1]``, ``range(2)``).
    heads : head indices to keep (None = all).
    tokens : None (all queries), an int ``n`` (a fixed random subsample of ``n`` query positions, the same
        per sequence length; keys are always complete so attention can be recomputed) or an index tensor.
    dtype : store q/k/v/outputs in this float dtype (downcast after the on-the-fly computations).
    memory_budget : bytes of copied records allowed in RAM before the forward waits for the writer.
    compute : subset of ``("dense", "output", "sparse", "sharpening", "query_alignment", "parallel")``:
        stock output (B, H, Lq', Dv); the output the layer actually returned (``output``: the guided one when
        :func:`~hopfield_gag.adapters.apply_gag` is installed too — capture observes and GAG runs inside it,
        in either order of installation); :math:`\alpha`-entmax output; per-query theory margins
        (B, H, Lq') from :func:`hopfield_gag.sharpening_margin` etc.
    alpha : entmax order of the sparse branch (1.5).
    keep_qkv : False stores only the computed outputs/margins (a study without the full tensors).
    via : ``"auto"`` (adapters for models with attention processors: diffusers and the shipped models;
        else hooks), ``"adapters"`` or ``"hooks"``.
    extractor : hooks route: an :class:`Extractor` for the modules named by ``layers``.
    num_heads : hooks route: head count when the module does not expose one.
    num_steps : number of steps when calls do not carry it (needed by a fractional ``steps`` window).
    cfg_batch : hooks route: the batch is ``[uncond; cond]`` halves (diffusers SD/SD3 convention).
    shard_bytes : target shard size (default ``min(64 MiB, memory_budget // 4)``).
    model_id : manifest model id (default: the class name; the config hash tells models apart).

    Yields
    ------
    Capture (``cap.store``, ``cap.layers``, ``cap.summary()`` ...).
    """
    if via not in ("auto", "adapters", "hooks"):
        raise ValueError(f"via must be 'auto', 'adapters' or 'hooks', got {via!r}")
    layer_patterns = _compile_layers(layers)
    step_sel = parse_steps(steps)
    if heads is not None:
        heads = [heads] if isinstance(heads, int) else list(heads)
        if not heads or not all(isinstance(h, int) and h >= 0 for h in heads):
            raise ValueError(f"heads must be non-negative int indices, got {heads!r}")
    if tokens is not None:
        if isinstance(tokens, bool) or not isinstance(tokens, (int, Tensor, list, tuple)):
            raise ValueError(f"tokens must be None, a positive int or an index list/tensor, got {tokens!r}")
        if isinstance(tokens, int):
            if tokens < 1:
                raise ValueError(f"tokens must be >= 1, got {tokens}")
        else:
            tokens = torch.as_tensor(tokens, dtype=torch.long).reshape(-1).unique()
            if tokens.numel() == 0 or int(tokens.min()) < 0:
                raise ValueError("tokens must be non-negative query positions")
    if dtype is not None and dtype not in (torch.float16, torch.bfloat16, torch.float32, torch.float64):
        raise ValueError(f"dtype must be None or a float dtype (float16, bfloat16, float32, float64), got {dtype!r}")
    compute = tuple(compute)
    unknown = [c for c in compute if c not in COMPUTE]
    if unknown:
        raise ValueError(f"compute: unknown {unknown}; choose from {COMPUTE}")
    if not keep_qkv and not compute:
        raise ValueError("keep_qkv=False with compute=() would store nothing")
    if not isinstance(memory_budget, int) or memory_budget < 1 << 16:
        raise ValueError(f"memory_budget must be an int of at least 65536 bytes, got {memory_budget!r}")
    if num_steps is not None and (not isinstance(num_steps, int) or num_steps < 1):
        raise ValueError(f"num_steps must be a positive int, got {num_steps!r}")
    shard_bytes = shard_bytes if shard_bytes is not None else min(64 << 20, memory_budget // 4)

    route = _route(model) if via == "auto" else via
    mid, chash = model_fingerprint(model)
    settings = {"route": route, "layers": _layers_json(layer_patterns),
                "steps": None if step_sel is None else step_sel.to_json(),
                "heads": heads, "tokens": tokens if tokens is None or isinstance(tokens, int) else tokens.tolist(),
                "dtype": None if dtype is None else str(dtype).replace("torch.", ""), "compute": list(compute),
                "alpha": alpha, "keep_qkv": keep_qkv, "seed": seed}
    cap = Capture(steps=step_sel, heads=heads, tokens=tokens, dtype=dtype, memory_budget=memory_budget,
                  shard_bytes=shard_bytes, compute=compute, alpha=alpha, keep_qkv=keep_qkv, cfg_batch=cfg_batch,
                  num_steps=num_steps, seed=seed)
    handles = []
    ok = False
    try:
        if route == "adapters":
            handles = _install_adapters(model, cap, layer_patterns)
        else:
            handles = _install_hooks(model, cap, layer_patterns, extractor, num_heads)
        handles.append(_core_module(model).register_forward_pre_hook(cap._on_forward))
        cap._layer_set = set(cap.layers)
        cap._start(ActivationStore.create(out_dir, model_id=model_id or mid, config_hash=chash, resume=resume,
                                          settings=settings))
        yield cap
        ok = True
    finally:
        for h in handles:
            h.remove()
        if cap.store is not None:
            try:
                cap.close(complete=ok)
            except BaseException:
                if ok:
                    raise


def _route(model) -> str:
    """``"adapters"`` for models with attention processors (diffusers, and the shipped models through their
    adapted processors), else ``"hooks"``."""
    core = _core_module(model)
    if any(hasattr(m, "processor") and callable(getattr(m, "set_processor", None)) for m in core.modules()):
        return "adapters"
    return "hooks"
