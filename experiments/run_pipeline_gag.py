"""Run a diffusers pipeline you already have on disk with and without attention guidance; save the pair.

    python experiments/run_pipeline_gag.py MODEL_PATH --prompt "a red fox in the snow" --method gag --lam 10

MODEL_PATH is a local pipeline directory (``save_pretrained`` layout) or a Hub repo id that is already in
the Hugging Face cache. Nothing is ever downloaded: the script sets ``HF_HUB_OFFLINE=1`` before diffusers is
imported and loads with ``local_files_only=True``; absent weights end with a clear error (exit code 2).

The output image holds the unguided image (left) and the guided one (right) from the same seed. Supported
pipelines: every one whose denoiser ``apply_gag`` reaches (SD1.5/SD2/SDXL UNets, SD3/SD3.5, Flux, Qwen-Image
through processor copies; PixArt, Sana, Wan, LTX and other diffusers models with cross-attention through hooks);
``--layers`` accepts what ``apply_gag(layers=...)`` does (a name or regex; "auto" by default).
"""
from __future__ import annotations

import argparse
import os
import sys


def parse_args(argv=None):
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0], formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("model_path", help="local pipeline directory or a Hub repo id already in the HF cache")
    p.add_argument("--prompt", required=True)
    p.add_argument("--negative-prompt", default=None)
    p.add_argument("--method", default="gag", choices=["gag", "pladis", "sparse", "aa", "dense"])
    p.add_argument("--lam", type=float, default=None, help="lambda (default: 10 for gag, 2 for pladis)")
    p.add_argument("--eta", type=float, default=15.0)
    p.add_argument("--zeta", type=float, default=0.0)
    p.add_argument("--alpha", type=float, default=1.5, help="entmax order of the sparse branch (2 = sparsemax)")
    p.add_argument("--strength", type=float, default=1.0)
    p.add_argument("--window", type=float, nargs=2, default=None, metavar=("START", "STOP"),
                   help="guide only this fraction of the denoising steps, e.g. 0 0.5")
    p.add_argument("--branches", default="all", choices=["all", "cond"])
    p.add_argument("--layers", default="auto")
    p.add_argument("--via", default="auto", choices=["auto", "processors", "hooks"],
                   help="the processor copies, the hook path (any diffusers attention, its own processor kept), "
                        "or auto: processors where they exist, hooks elsewhere")
    p.add_argument("--steps", type=int, default=30, help="number of inference steps")
    p.add_argument("--guidance-scale", type=float, default=None, help="the pipeline's CFG scale (its default if omitted)")
    p.add_argument("--height", type=int, default=None)
    p.add_argument("--width", type=int, default=None)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--dtype", default="float32", choices=["float32", "float16", "bfloat16"])
    p.add_argument("--device", default="cuda" if _cuda() else "cpu")
    p.add_argument("--out", default="gag_pair.png", help="output PNG (left: off, right: on)")
    return p.parse_args(argv)


def _cuda() -> bool:
    try:
        import torch

        return torch.cuda.is_available()
    except Exception:
        return False


class WeightsNotFound(SystemExit):
    """Exit code 2 with a message saying where the weights were looked for."""

    def __init__(self, msg: str):
        super().__init__(2)
        self.msg = msg

    def __str__(self):
        return self.msg


def resolve_weights(model_path: str) -> str:
    """The local directory holding the pipeline: ``model_path`` itself, or its snapshot in the HF cache.

    Raises :class:`WeightsNotFound` (never downloads)."""
    if os.path.isdir(model_path):
        if not os.path.isfile(os.path.join(model_path, "model_index.json")):
            raise WeightsNotFound(f"{model_path} is a directory but not a diffusers pipeline (no model_index.json)")
        return model_path
    from huggingface_hub import snapshot_download
    from huggingface_hub.errors import LocalEntryNotFoundError
    from huggingface_hub.constants import HF_HUB_CACHE

    try:
        return snapshot_download(model_path, local_files_only=True)
    except (LocalEntryNotFoundError, FileNotFoundError, OSError, ValueError) as e:
        raise WeightsNotFound(
            f"weights not found: {model_path!r} is neither a local directory nor a model in the Hugging Face cache "
            f"({HF_HUB_CACHE}). This script never downloads; fetch the weights on a machine with network access "
            f"(e.g. `huggingface-cli download {model_path}`) and pass the directory or set HF_HOME. ({type(e).__name__})"
        ) from None


def side_by_side(left, right):
    """One PIL image: ``left`` and ``right`` (PIL images of one height) next to each other."""
    from PIL import Image

    out = Image.new("RGB", (left.width + right.width, max(left.height, right.height)), "white")
    out.paste(left, (0, 0))
    out.paste(right, (left.width, 0))
    return out


def main(argv=None) -> int:
    args = parse_args(argv)
    os.environ["HF_HUB_OFFLINE"] = "1"  # before diffusers/huggingface_hub read it
    path = resolve_weights(args.model_path)

    import torch
    from diffusers import DiffusionPipeline

    from hopfield_gag.adapters import apply_gag

    import diffusers
    from packaging.version import Version

    # diffusers 0.42 renamed torch_dtype to dtype (the old name warns)
    dtype_kw = "dtype" if Version(diffusers.__version__).release >= (0, 42) else "torch_dtype"
    pipe = DiffusionPipeline.from_pretrained(path, local_files_only=True, **{dtype_kw: getattr(torch, args.dtype)})
    pipe = pipe.to(args.device)
    kw = dict(prompt=args.prompt, num_inference_steps=args.steps)
    for name, value in (("negative_prompt", args.negative_prompt), ("guidance_scale", args.guidance_scale),
                        ("height", args.height), ("width", args.width)):
        if value is not None:
            kw[name] = value

    def run():
        return pipe(**kw, generator=torch.Generator(args.device).manual_seed(args.seed)).images[0]

    off = run()
    params = dict(eta=args.eta, zeta=args.zeta, alpha=args.alpha, strength=args.strength)
    if args.lam is not None:
        params["lam"] = args.lam
    window = None if args.window is None else tuple(args.window)  # a tuple is a window; a list would be indices
    with apply_gag(pipe, layers=args.layers, method=args.method, steps=window, branches=args.branches, via=args.via,
                   **params) as h:
        print(f"guiding {len(h.layers)} layers with {h.fn!r}")
        on = run()
    side_by_side(off, on).save(args.out)
    print(f"saved {args.out} (left: off, right: {args.method})")
    return 0


if __name__ == "__main__":
    try:
        sys.exit(main())
    except WeightsNotFound as e:
        print(f"error: {e}", file=sys.stderr)
        sys.exit(2)
