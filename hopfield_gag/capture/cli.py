r"""The ``hopfield-gag capture`` and ``hopfield-gag store {info, verify}`` commands.

``capture --model M --steps N --out DIR [--layers ...] [--cfg W]`` runs a model for ``N`` denoising steps
under :func:`~hopfield_gag.capture.capture` and prints a summary (layers, steps, records, bytes, time).
``M`` is a shipped model (``dit-digits``, ``unet-digits``: sampled with :func:`hopfield_gag.models.sample`)
or the directory of a saved diffusers denoiser (``config.json`` with ``_class_name`` among
UNet2DConditionModel, SD3Transformer2DModel, FluxTransformer2DModel, QwenImageTransformer2DModel), run from
seeded noise with random conditioning through an Euler flow loop (``x <- x + (t_{i+1} - t_i) v``,
t from 1 to 0): the attention tensors of a real model's weights on its own trajectory, without text encoders.
"""
from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

SHIPPED = ("dit-digits", "unet-digits")


def _human(n: int) -> str:
    for unit in ("B", "KiB", "MiB", "GiB"):
        if n < 1024 or unit == "GiB":
            return f"{n:.0f} {unit}" if unit == "B" else f"{n:.1f} {unit}"
        n /= 1024
    return str(n)


# ---------------------------------------------------------------------------------------------------- inputs
def _denoiser_inputs(model, batch: int, size: int, gen):
    """Seeded latent and conditioning for one of the four supported diffusers denoisers; returns
    (x0, make_kwargs(x, t_model, cond_rows)) where cond_rows says which rows carry the condition."""
    import torch

    cfg = model.config
    cls = type(model).__name__
    n_txt = 8
    if cls == "UNet2DConditionModel":
        s = size or min(int(cfg.sample_size), 32)
        x0 = torch.randn(batch, cfg.in_channels, s, s, generator=gen)
        ctx = torch.randn(batch, n_txt, cfg.cross_attention_dim, generator=gen)
        added = None
        if cfg.addition_embed_type == "text_time":
            dt = cfg.projection_class_embeddings_input_dim - 6 * cfg.addition_time_embed_dim
            added = {"text_embeds": torch.randn(batch, dt, generator=gen), "time_ids": torch.randn(batch, 6, generator=gen)}
        elif cfg.addition_embed_type is not None:
            raise ValueError(f"UNet2DConditionModel with addition_embed_type={cfg.addition_embed_type!r} is not supported")

        def kwargs(x, t, ctx_rows):
            kw = dict(sample=x, timestep=t * 1000.0, encoder_hidden_states=ctx_rows(ctx))
            if added is not None:
                kw["added_cond_kwargs"] = {k: torch.cat([v] * (x.shape[0] // batch)) for k, v in added.items()}
            return kw
        return x0, kwargs
    if cls == "SD3Transformer2DModel":
        s = size or min(int(cfg.sample_size), 32)
        x0 = torch.randn(batch, cfg.in_channels, s, s, generator=gen)
        ctx = torch.randn(batch, n_txt, cfg.joint_attention_dim, generator=gen)
        pooled = torch.randn(batch, cfg.pooled_projection_dim, generator=gen)
        return x0, lambda x, t, rows: dict(hidden_states=x, encoder_hidden_states=rows(ctx),
                                           pooled_projections=rows(pooled), timestep=(t * 1000.0).expand(x.shape[0]))
    if cls == "FluxTransformer2DModel":
        side = size or 4
        x0 = torch.randn(batch, side * side, cfg.in_channels, generator=gen)
        ctx = torch.randn(batch, n_txt, cfg.joint_attention_dim, generator=gen)
        pooled = torch.randn(batch, cfg.pooled_projection_dim, generator=gen)
        img_ids = torch.zeros(side, side, 3)
        img_ids[..., 1] = torch.arange(side)[:, None]
        img_ids[..., 2] = torch.arange(side)[None, :]

        def kwargs(x, t, rows):
            kw = dict(hidden_states=x, encoder_hidden_states=rows(ctx), pooled_projections=rows(pooled),
                      img_ids=img_ids.reshape(-1, 3), txt_ids=torch.zeros(n_txt, 3), timestep=t.expand(x.shape[0]))
            if cfg.guidance_embeds:
                kw["guidance"] = torch.full((x.shape[0],), 3.5)
            return kw
        return x0, kwargs
    if cls == "QwenImageTransformer2DModel":
        side = size or 4
        x0 = torch.randn(batch, side * side, cfg.in_channels, generator=gen)
        ctx = torch.randn(batch, n_txt, cfg.joint_attention_dim, generator=gen)
        return x0, lambda x, t, rows: dict(
            hidden_states=x, encoder_hidden_states=rows(ctx), encoder_hidden_states_mask=torch.ones(
                x.shape[0], n_txt, dtype=torch.long), timestep=t.expand(x.shape[0]), img_shapes=[(1, side, side)] * x.shape[0])
    raise ValueError(f"{cls} is not one of the supported denoisers (UNet2DConditionModel, SD3Transformer2DModel, "
                     "FluxTransformer2DModel, QwenImageTransformer2DModel)")


def _load_path(path: Path):
    if (path / "model_index.json").is_file():
        raise SystemExit(f"{path} is a diffusers *pipeline* directory; pass its denoiser directory "
                         f"({path}/unet or {path}/transformer), or capture a pipeline from Python: "
                         "`with capture(pipe, out_dir): pipe(...)`")
    cfg_file = path / "config.json"
    if not cfg_file.is_file():
        raise SystemExit(f"--model {path}: expected a shipped model name {SHIPPED} or a diffusers model directory "
                         "with config.json")
    import diffusers

    cls_name = json.loads(cfg_file.read_text()).get("_class_name")
    cls = getattr(diffusers, str(cls_name), None)
    if cls is None:
        raise SystemExit(f"--model {path}: config.json names class {cls_name!r}, which diffusers does not provide")
    return cls.from_pretrained(str(path), local_files_only=True).eval()


def _run_path_model(model, cap, steps: int, cfg: float, batch: int, size: int, seed: int, bar) -> None:
    import torch

    gen = torch.Generator().manual_seed(seed)
    x, make = _denoiser_inputs(model, batch, size, gen)
    guided = cfg != 1.0

    def rows(c):  # [uncond (zero conditioning); cond] under CFG
        return torch.cat([torch.zeros_like(c), c]) if guided else c

    ts = torch.linspace(1.0, 0.0, steps + 1)
    with torch.no_grad():
        for i in range(steps):
            t = ts[i]
            cap.set_step(i, steps, float(t))
            x_in = torch.cat([x, x]) if guided else x
            out = model(**make(x_in, t.reshape(1), rows))[0]
            if guided:
                u, c = out.chunk(2)
                out = u + cfg * (c - u)
            x = x + (ts[i + 1] - t) * out
            bar.update(1)


# ---------------------------------------------------------------------------------------------------- commands
def cmd_capture(args: argparse.Namespace) -> int:
    """``hopfield-gag capture``: run a model for ``--steps`` steps under capture and print a summary."""
    from tqdm.auto import tqdm

    from . import capture

    dtype = None
    if args.dtype:
        import torch

        dtype = {"float16": torch.float16, "bfloat16": torch.bfloat16, "float32": torch.float32,
                 "float64": torch.float64}[args.dtype]
    window = None
    if args.window:
        window = tuple(float(x) for x in args.window.split(","))
        if len(window) != 2:
            raise SystemExit(f"--window must be START,STOP (fractions in [0, 1]), got {args.window!r}")
    heads = [int(h) for h in args.heads.split(",")] if args.heads else None
    t0 = time.perf_counter()
    if args.model in SHIPPED:
        try:
            from ..models import load_model, sample
        except ImportError as exc:
            raise SystemExit(f"the shipped models are not available in this installation ({exc}); "
                             "pass a diffusers model directory as --model PATH") from None
        model = load_model(args.model)
    else:
        model = _load_path(Path(args.model))
    kw = dict(layers=args.layers, steps=window, heads=heads, tokens=args.tokens, dtype=dtype, resume=args.resume,
              compute=tuple(args.compute or ()), num_steps=args.steps,
              cfg_batch=args.cfg != 1.0 and args.model not in SHIPPED)
    if args.memory_budget:
        kw["memory_budget"] = int(args.memory_budget * (1 << 20))
    from .store import StoreError

    try:
        with capture(model, args.out, **kw) as cap:
            if args.model in SHIPPED:
                labels = [int(x) for x in args.labels.split(",")]
                sample(model, labels, steps=args.steps, cfg_scale=args.cfg, seed=args.seed, progress=not args.quiet)
            else:
                with tqdm(total=args.steps, desc=f"capture {type(model).__name__}", disable=args.quiet) as bar:
                    _run_path_model(model, cap, args.steps, args.cfg, args.batch, args.size, args.seed, bar)
    except (ValueError, StoreError) as exc:  # bad selection, step window, or an occupied --out: say so, exit 2
        print(f"error: {exc}", file=sys.stderr)
        return 2
    s = cap.summary()
    elapsed = time.perf_counter() - t0
    print(f"captured {s['records']} records ({s['skipped']} already stored) from {s['layers']} layers x "
          f"{s['steps']} steps into {s['path']}: {_human(s['bytes'])} in {elapsed:.1f} s")
    return 0


def cmd_store_info(args: argparse.Namespace) -> int:
    """``hopfield-gag store info DIR``: the manifest summary (``--json`` for machine-readable output)."""
    from .store import ActivationStore, StoreError

    try:
        info = ActivationStore(args.dir).info()
    except StoreError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    if args.json:
        print(json.dumps(info, indent=1))
        return 0
    rows = [("path", info["path"]), ("model", info["model_id"]), ("config hash", info["config_hash"][:16]),
            ("complete", "yes" if info["complete"] else "no (interrupted: resume=True continues it)"),
            ("shards", info["shards"]), ("records", info["records"]), ("bytes", _human(info["bytes"])),
            ("dtypes", ", ".join(info["dtypes"]) or "-"), ("steps", _compact(info["steps"])),
            ("branches", ", ".join(info["branches"]) or "-"), ("layers", len(info["layers"]))]
    width = max(len(k) for k, _ in rows)
    for k, v in rows:
        print(f"{k:<{width}}  {v}")
    for name in info["layers"]:
        print(f"{'':<{width}}  {name}")
    return 0


def _compact(steps) -> str:
    if not steps:
        return "-"
    if steps == list(range(steps[0], steps[-1] + 1)):
        return f"{steps[0]}..{steps[-1]} ({len(steps)})"
    return ", ".join(map(str, steps))


def cmd_store_verify(args: argparse.Namespace) -> int:
    """``hopfield-gag store verify DIR``: check every shard's checksum; exit status 1 naming bad shards."""
    from .store import ActivationStore, StoreError

    try:
        store = ActivationStore(args.dir)
    except StoreError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    bad = store.verify(raise_on_error=False)
    if isinstance(bad, dict):
        for name in sorted(bad):
            print(f"BAD  {bad[name]}")
        print(f"{len(bad)} of {len(store.shards)} shards failed; the others are readable", file=sys.stderr)
        return 1
    print(f"ok: {bad.shards} shards, {bad.records} records, {_human(bad.bytes)}"
          f"{'' if store.complete else ' (capture incomplete: resume=True continues it)'}")
    return 0


def add_parsers(sub) -> None:
    """Register ``capture`` and ``store`` on the CLI's subparsers."""
    p = sub.add_parser("capture", help="record attention q/k/v of a model into an activation store",
                       description=__doc__.split("\n\n")[1], formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--model", required=True, help=f"{' | '.join(SHIPPED)} | PATH (a diffusers denoiser directory)")
    p.add_argument("--steps", type=int, required=True, help="number of denoising steps")
    p.add_argument("--out", required=True, help="store directory (empty or absent; with --resume, the same model's)")
    p.add_argument("--layers", nargs="+", help="layer names or anchored regexes (default: every attention layer)")
    p.add_argument("--cfg", type=float, default=1.0, help="classifier-free guidance weight (1 = none; else the "
                   "batch is [uncond; cond] and records carry the branch)")
    p.add_argument("--window", help="START,STOP: capture only steps i with START <= i/N < STOP (fractions)")
    p.add_argument("--heads", help="comma-separated head indices to keep")
    p.add_argument("--tokens", type=int, help="keep a fixed random subsample of this many query tokens")
    p.add_argument("--dtype", choices=("float16", "bfloat16", "float32", "float64"), help="store in this dtype")
    p.add_argument("--compute", nargs="+", metavar="WHAT",
                   help="also store: dense sparse sharpening query_alignment parallel")
    p.add_argument("--memory-budget", type=float, metavar="MIB", help="RAM for queued records (default 1024)")
    p.add_argument("--labels", default="0,1,2,3,4,5,6,7,8,9", help="digit classes (shipped models)")
    p.add_argument("--batch", type=int, default=1, help="batch size (PATH models)")
    p.add_argument("--size", type=int, default=0, help="latent side (PATH models; default from the config)")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--resume", action="store_true", help="continue an interrupted capture in --out")
    p.add_argument("--quiet", action="store_true", help="no progress bar")
    p.set_defaults(handler=cmd_capture)

    s = sub.add_parser("store", help="inspect or verify an activation store")
    ssub = s.add_subparsers(dest="store_command", metavar="<store command>", required=True)
    pi = ssub.add_parser("info", help="summary of a store's manifest")
    pi.add_argument("dir")
    pi.add_argument("--json", action="store_true", help="print the summary as JSON")
    pi.set_defaults(handler=cmd_store_info)
    pv = ssub.add_parser("verify", help="check every shard's SHA-256 (exit status 1 if any is bad)")
    pv.add_argument("dir")
    pv.set_defaults(handler=cmd_store_verify)
