"""``hopfield-gag capture``: run a model for ``--steps`` denoising steps under
:func:`hopfield_gag.capture.capture` and print a summary (layers, steps, records, bytes, time).

``--model`` is a shipped model (``dit-digits``, ``unet-digits``: sampled with :func:`hopfield_gag.models.sample`)
or the directory of a saved diffusers denoiser, run by :func:`hopfield_gag.models.denoisers.sample_denoiser`.
Every argument, the model directory and ``--out`` are checked before the model is loaded.
"""
from __future__ import annotations

import argparse
import time
from pathlib import Path

from ._common import UsageError, distinct, human, int_ge, int_list, real, regex, window

SHIPPED = ("dit-digits", "unet-digits")
DTYPES = ("float16", "bfloat16", "float32", "float64")

DESCRIPTION = """\
Record the attention q, k, v of a model into an activation store (DIR/manifest.json + safetensors shards).

MODEL is a shipped model (dit-digits, unet-digits), sampled with its Euler flow-matching sampler on the
digit classes of --labels, or the directory of a saved diffusers denoiser (config.json naming
UNet2DConditionModel, SD3Transformer2DModel, FluxTransformer2DModel or QwenImageTransformer2DModel, plus its
weights), run from seeded noise with random conditioning through an Euler flow loop (x <- x + (t[i+1] - t[i]) v,
t from 1 to 0): the attention tensors of a real model's weights on its own trajectory, without text encoders.

--out must be absent or empty; with --resume it must hold an interrupted capture of the same model and
settings. Inspect the result with `hopfield-gag store info DIR` and check it with `hopfield-gag store verify DIR`.
"""


def _check_out(out: Path, resume: bool) -> None:
    """--out before any work: absent, empty, or (with --resume) a store; never a file or someone's folder."""
    if out.exists() and not out.is_dir():
        raise UsageError(f"capture: --out {out} exists and is not a directory")
    if not out.is_dir() or not any(out.iterdir()):
        return
    if not (out / "manifest.json").is_file():
        raise UsageError(f"capture: --out {out} is not empty and holds no activation store; refusing to write "
                         "into it (nothing was overwritten)")
    if not resume:
        raise UsageError(f"capture: --out {out} already holds a capture; pass --resume (resume=True) to continue "
                         "it, or choose another directory; nothing was overwritten")


def _load(args):
    """The model of ``--model``: checked (names, config, weights) before anything heavy is imported."""
    if args.model in SHIPPED:
        try:
            from ..models import load_model
        except ImportError as exc:
            raise UsageError(f"capture: the shipped models are not available in this installation ({exc}); "
                             "pass a diffusers model directory as --model PATH") from None
        return load_model(args.model)
    from ..models.denoisers import check_denoiser_dir, load_denoiser

    path = Path(args.model)
    if not path.is_dir():
        raise UsageError(f"capture: --model {args.model}: expected a shipped model name ({', '.join(SHIPPED)}) "
                         "or a diffusers model directory with config.json")
    try:
        check_denoiser_dir(path)
        return load_denoiser(path)
    except ValueError as exc:
        raise UsageError(f"capture: --model: {exc}") from None


def cmd_capture(args: argparse.Namespace) -> int:
    """Check every input, load the model, run it under capture and print a summary."""
    from ..capture import capture
    from ..capture.store import StoreError

    out = Path(args.out)
    _check_out(out, args.resume)
    heads = distinct(args.heads, "--heads") if args.heads else None
    if args.model in SHIPPED and args.batch != 1:
        raise UsageError("capture: --batch applies to diffusers model directories; the shipped models sample "
                         "one image per --labels entry")
    dtype = None
    if args.dtype:
        import torch

        dtype = getattr(torch, args.dtype)
    t0 = time.perf_counter()
    model = _load(args)
    kw = dict(layers=args.layers, steps=args.window, heads=heads, tokens=args.tokens, dtype=dtype,
              resume=args.resume, compute=tuple(args.compute or ()), num_steps=args.steps,
              cfg_batch=args.cfg != 1.0 and args.model not in SHIPPED)
    if args.memory_budget:
        kw["memory_budget"] = int(args.memory_budget * (1 << 20))
    try:
        with capture(model, out, **kw) as cap:
            if args.model in SHIPPED:
                from ..models import sample

                sample(model, args.labels, steps=args.steps, cfg_scale=args.cfg, seed=args.seed,
                       progress=not args.quiet)
            else:
                from ..models.denoisers import sample_denoiser

                sample_denoiser(model, args.steps, cfg_scale=args.cfg, batch=args.batch, size=args.size,
                                seed=args.seed, on_step=cap.set_step, progress=not args.quiet)
    except (ValueError, StoreError) as exc:  # a selection that matches nothing, an occupied --out: say so
        raise UsageError(f"capture: {exc}") from None
    s = cap.summary()
    elapsed = time.perf_counter() - t0
    print(f"captured {s['records']} records ({s['skipped']} already stored) from {s['layers']} layers x "
          f"{s['steps']} steps into {s['path']}: {human(s['bytes'])} in {elapsed:.1f} s")
    return 0


def add_parsers(sub) -> None:
    """Register ``capture``."""
    from ..capture.recorder import COMPUTE
    from ..models.data import NUM_CLASSES

    p = sub.add_parser("capture", help="record attention q/k/v of a model into an activation store",
                       description=DESCRIPTION, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--model", required=True, help=f"{' | '.join(SHIPPED)} | PATH (a diffusers denoiser directory)")
    p.add_argument("--steps", type=int_ge(1), required=True, help="number of denoising steps (>= 1)")
    p.add_argument("--out", required=True, help="store directory (empty or absent; with --resume, the same model's)")
    p.add_argument("--layers", nargs="+", type=regex, metavar="PATTERN",
                   help="layer names or anchored regexes (default: every attention layer)")
    p.add_argument("--cfg", type=real(ge=0.0), default=1.0, help="classifier-free guidance weight (1 = none; else "
                   "the batch is [uncond; cond] and records carry the branch)")
    p.add_argument("--window", type=window, metavar="START,STOP",
                   help="capture only steps i with START <= i/N < STOP (fractions in [0, 1])")
    p.add_argument("--heads", type=int_list(0), metavar="H,H,...", help="comma-separated head indices to keep")
    p.add_argument("--tokens", type=int_ge(1), metavar="N", help="keep a fixed random subsample of N query tokens")
    p.add_argument("--dtype", choices=DTYPES, help="store the tensors in this dtype (default: as computed)")
    p.add_argument("--compute", nargs="+", choices=COMPUTE, metavar="WHAT",
                   help=f"also store: {' '.join(COMPUTE)}")
    p.add_argument("--memory-budget", type=real(gt=0.0), metavar="MIB", help="RAM for queued records (default 1024)")
    p.add_argument("--labels", type=int_list(0, NUM_CLASSES), default=list(range(NUM_CLASSES)), metavar="C,C,...",
                   help="digit classes to sample (shipped models; default 0,...,9)")
    p.add_argument("--batch", type=int_ge(1), default=1, help="batch size (PATH models; default 1)")
    p.add_argument("--size", type=int_ge(0), default=0, help="latent side (PATH models; default from the config)")
    p.add_argument("--seed", type=int_ge(0), default=0, help="seed of the noise and conditioning (default 0)")
    p.add_argument("--resume", action="store_true", help="continue an interrupted capture in --out")
    p.add_argument("--quiet", action="store_true", help="no progress bar")
    p.set_defaults(handler=cmd_capture)
