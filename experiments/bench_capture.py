"""Benchmark: forward time of a diffusers denoiser with capture on, against capture off.

Model: an SD3-style MMDiT (4 joint blocks, 8 heads x 64, 32x32 latent with patch 2 = 256 image tokens, 77 text
tokens, batch 2), random weights, fp32 CPU, 2 threads. Contenders, timed round-robin (one forward each per
round, medians; load drift hits all alike):

  - off: the stock model;
  - adapters (pass-through): an attention function returning ``call.dense()`` installed with
    ``install_attention_fn`` (the cost of routing through the adapters alone);
  - capture fp32: ``capture(model, DIR)`` recording q, k, v of every layer at every forward, written to local
    disk by the background writer (the forward waits whenever the writer is more than ``memory_budget``
    behind, so sustained write throughput is part of the measure);
  - capture fp16: the same, downcast to float16.

Each capture stays open across the rounds (every forward is a new step); shards land in a temporary
directory on the local disk. Target (issue 12): capture <= 1.3x off.

Usage: python experiments/bench_capture.py [--rounds N] [--quick]
"""
from __future__ import annotations

import argparse
import contextlib
import os
import shutil
import sys
import tempfile

import torch

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from _benchutil import Contention, print_targets, round_robin_medians  # noqa: E402

from hopfield_gag.capture import capture  # noqa: E402


def build(quick: bool):
    from diffusers import SD3Transformer2DModel

    torch.manual_seed(0)
    heads, side = (4, 16) if quick else (8, 32)
    model = SD3Transformer2DModel(sample_size=side, patch_size=2, in_channels=4, num_layers=4, attention_head_dim=64,
                                  num_attention_heads=heads, caption_projection_dim=64 * heads,
                                  joint_attention_dim=256, pooled_projection_dim=128, out_channels=4,
                                  pos_embed_max_size=side).eval()
    g = torch.Generator().manual_seed(1)
    inputs = dict(hidden_states=torch.randn(2, 4, side, side, generator=g),
                  encoder_hidden_states=torch.randn(2, 77, 256, generator=g),
                  pooled_projections=torch.randn(2, 128, generator=g), timestep=torch.tensor([500, 500]))
    return model, inputs


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--rounds", type=int, default=15)
    ap.add_argument("--quick", action="store_true", help="a smaller model, 5 rounds (smoke run)")
    args = ap.parse_args(argv)
    rounds = 5 if args.quick else args.rounds
    torch.set_num_threads(2)
    model, inputs = build(args.quick)
    root = tempfile.mkdtemp(prefix="bench_capture_", dir=os.environ.get("BENCH_CAPTURE_DIR"))
    from hopfield_gag.adapters import install_attention_fn

    # four models sharing weights, each with its own attention processors installed
    import copy

    passthrough, cap32, cap16 = (copy.deepcopy(model) for _ in range(3))
    with contextlib.ExitStack() as stack:
        stack.enter_context(install_attention_fn(passthrough, lambda call: call.dense(), layers=r".*"))
        c32 = stack.enter_context(capture(cap32, os.path.join(root, "fp32")))
        c16 = stack.enter_context(capture(cap16, os.path.join(root, "fp16"), dtype=torch.float16))

        def fwd(m):
            def run():
                with torch.no_grad():
                    return m(**inputs)[0]
            return run

        ref = fwd(model)()
        assert all(torch.equal(fwd(m)(), ref) for m in (passthrough, cap32, cap16)), "capture changed the output"
        with Contention() as load:
            ms = round_robin_medians({"off": fwd(model), "adapters (pass-through)": fwd(passthrough),
                                      "capture fp32": fwd(cap32), "capture fp16": fwd(cap16)}, rounds)
    per_fwd = {name: c.bytes / max(c.summary()["steps"], 1) for name, c in (("capture fp32", c32), ("capture fp16", c16))}
    shutil.rmtree(root, ignore_errors=True)
    n_tok = inputs["hidden_states"].shape[-1] ** 2 // 4 + 77
    print(f"SD3-style MMDiT, 4 joint layers, batch 2, {n_tok} tokens, fp32 CPU, {torch.get_num_threads()} threads, "
          f"{rounds} rounds; stores on {root}")
    print(f"{'contender':<26} {'median ms':>10} {'ratio to off':>13} {'MiB written / forward':>22}")
    for name, t in ms.items():
        mib = f"{per_fwd[name] / 2**20:.1f}" if name in per_fwd else "-"
        print(f"{name:<26} {t:>10.1f} {t / ms['off']:>12.2f}x {mib:>22}")
    print(load.report())
    print(f"load average: {os.getloadavg()[0]:.2f} (1 min) on {os.cpu_count()} CPUs")
    verdicts = [(f"{name} / off <= 1.30 (writing to local disk)", ms[name] / ms["off"], ms[name] / ms["off"] <= 1.30)
                for name in ("capture fp32", "capture fp16")]
    print_targets(verdicts, torch.get_num_threads(), stated_threads=(2,))
    return 0


if __name__ == "__main__":
    sys.exit(main())
