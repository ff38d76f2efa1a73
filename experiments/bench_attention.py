"""Benchmark: gag_attention against SDPA and a PLADIS reference built the usual way.

fp32 CPU, 2 threads. Shapes (B, H, Lq, Lk, D): (2,8,1024,77,64), (2,8,4096,77,64), (2,8,1024,1024,64).
Contenders, run once per round, round-robin (load drift hits all alike), medians reported:
  - SDPA: F.scaled_dot_product_attention (the dense baseline);
  - ours: gag_attention(method="gag") with the paper defaults (lam=10, eta=15, zeta=0),
    gag_attention(method="pladis", lam=2) and gag_attention(method="aa") (no target; it adds the key-space
    retrievals);
  - PLADIS reference: SDPA for the dense output plus entmax.entmax15(scores) @ V for the sparse one,
    blended d + 2 (s - d) (what a diffusers processor built on the entmax package does).
Peak extra memory of ours at (1,8,4096,4096,64) is measured in a fresh subprocess as the peak resident set
above the level after the inputs exist (VmHWM, reset before the call; see _benchutil).

Targets (issue 9, CPU, eager): gag <= 2x SDPA and the PLADIS reference >= 5x slower than gag at Lk = 77
(1024 and 4096 queries); gag <= 4x SDPA at Lk = 1024; peak extra memory < 2 GiB at 4096².
On CPU, gag_attention takes its one-call fused kernel (ops/fused.attention_forward: per block of queries the
scores by a register-tiled micro-kernel, softmax and entmax on rows in L1, the entmax retrieval as a gather
over its support, the softmax one by the same micro-kernel, the combine); a run prints which path it took.

Usage: python experiments/bench_attention.py [--rounds N] [--quick] [--skip-memory] [--device cpu|cuda]
(--device cuda: the GPU table of the fused Triton kernel, experiments/_bench_cuda.py.)
"""
from __future__ import annotations

import argparse
import os
import json
import subprocess
import sys

import torch

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
# measure the package of this checkout, not whichever copy is installed
sys.path.insert(1, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
from _benchutil import Contention, round_robin_medians  # noqa: E402
import torch.nn.functional as F

import entmax as entmax_pkg
from hopfield_gag import gag_attention

SHAPES = [(2, 8, 1024, 77, 64), (2, 8, 4096, 77, 64), (2, 8, 1024, 1024, 64)]
MEMORY_SHAPE = (1, 8, 4096, 4096, 64)


def inputs(shape, seed=0):
    b, h, lq, lk, d = shape
    g = torch.Generator().manual_seed(seed)
    return (torch.randn(b, h, lq, d, generator=g), torch.randn(b, h, lk, d, generator=g),
            torch.randn(b, h, lk, d, generator=g))


def pladis_reference(q, k, v, lam=2.0):
    dense = F.scaled_dot_product_attention(q, k, v)
    p_sparse = entmax_pkg.entmax15(q @ k.transpose(-1, -2) / q.shape[-1] ** 0.5, dim=-1)
    return dense + lam * (p_sparse @ v - dense)


def contenders(q, k, v):
    return {
        "SDPA": lambda: F.scaled_dot_product_attention(q, k, v),
        "ours gag": lambda: gag_attention(q, k, v, method="gag"),
        "ours pladis": lambda: gag_attention(q, k, v, method="pladis", lam=2.0),
        "ours aa": lambda: gag_attention(q, k, v, method="aa"),
        "PLADIS reference": lambda: pladis_reference(q, k, v),
    }


_MEMORY_CHILD = r"""
import json, sys, torch
sys.path.insert(0, sys.argv[2])
sys.path.insert(1, sys.argv[2] + "/..")
from _benchutil import peak_rss_above_baseline
torch.set_num_threads(2)
from hopfield_gag import gag_attention
b, h, lq, lk, d = json.loads(sys.argv[1])
q, k, v = torch.randn(b, h, lq, d), torch.randn(b, h, lk, d), torch.randn(b, h, lk, d)
gag_attention(q[..., :1, :], k, v)  # load the kernel
extra_kib, out = peak_rss_above_baseline(lambda: gag_attention(q, k, v))
print(json.dumps({"extra_kib": extra_kib, "output_mib": out.numel() * 4 / 2**20}))
"""


def peak_extra_memory(shape):
    here = os.path.dirname(os.path.abspath(__file__))
    res = subprocess.run([sys.executable, "-c", _MEMORY_CHILD, json.dumps(shape), here], capture_output=True, text=True)
    if res.returncode != 0:
        raise RuntimeError(res.stderr)
    return json.loads(res.stdout.strip().splitlines()[-1])


def path_used(q, k, v) -> str:
    """Which implementation gag_attention takes for these inputs (fused C kernels or the portable torch path)."""
    from hopfield_gag.guidance.attention import _fused_cpu_applies
    from hopfield_gag.ops import fused

    if not _fused_cpu_applies(q, k, v, None, "gag", False, 1.0):
        return "portable torch path"
    return "one-call fused CPU kernel" if fused.attention_applies(q, "gag") else "chunked fused CPU kernels"


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rounds", type=int, default=9)
    parser.add_argument("--quick", action="store_true")
    parser.add_argument("--skip-memory", action="store_true")
    parser.add_argument("--device", choices=("cpu", "cuda"), default="cpu",
                        help="cuda: the fused Triton path's GPU table (experiments/_bench_cuda.py)")
    parser.add_argument("--threads", type=int, default=2, help="torch and kernel threads (targets: 2)")
    parser.add_argument("--clock", choices=("wall", "cpu"), default="wall",
                        help="wall time (targets) or process CPU time (repeatable on a shared machine)")
    args = parser.parse_args(argv)
    rounds = 3 if args.quick else args.rounds
    if args.device == "cuda":
        from _bench_cuda import run as run_cuda

        run_cuda(rounds)
        return
    torch.set_num_threads(args.threads)
    contention = Contention().__enter__()
    print(f"torch {torch.__version__}, threads={torch.get_num_threads()}, fp32, {args.clock} clock, median of {rounds} rounds, "
          f"load average before the run {os.getloadavg()[0]:.2f}\n")
    verdicts = []
    for shape in SHAPES:
        q, k, v = inputs(shape)
        med = round_robin_medians(contenders(q, k, v), rounds, clock=args.clock)
        sdpa = med["SDPA"]
        print(f"shape (B,H,Lq,Lk,D) = {shape}   (ours: {path_used(q, k, v)})")
        print(f"  {'contender':20s} {'median ms':>10s} {'/ SDPA':>8s}")
        for name, ms in med.items():
            print(f"  {name:20s} {ms:10.2f} {ms / sdpa:8.2f}")
        gag_vs_sdpa = med["ours gag"] / sdpa
        ref_vs_gag = med["PLADIS reference"] / med["ours gag"]
        print(f"  PLADIS reference / ours gag = {ref_vs_gag:.2f}\n")
        if shape[3] == 77:
            verdicts.append((f"{shape}: gag / SDPA <= 2", gag_vs_sdpa, gag_vs_sdpa <= 2.0))
            verdicts.append((f"{shape}: PLADIS ref / gag >= 5", ref_vs_gag, ref_vs_gag >= 5.0))
        else:
            verdicts.append((f"{shape}: gag / SDPA <= 4", gag_vs_sdpa, gag_vs_sdpa <= 4.0))
    if not args.skip_memory:
        mem = peak_extra_memory(MEMORY_SHAPE)
        gib = mem["extra_kib"] / 2**20
        print(f"peak extra memory of gag at {MEMORY_SHAPE}: {gib:.3f} GiB "
              f"(includes the {mem['output_mib']:.0f} MiB output)\n")
        verdicts.append((f"{MEMORY_SHAPE}: peak extra GiB < 2", gib, gib < 2.0))
    contention.__exit__(None, None, None)
    print(contention.report())
    print(f"load average after the run {os.getloadavg()[0]:.2f}")
    print("targets" + ("" if (args.threads, args.clock) == (2, "wall") else
                       f"  (proxy run: {args.threads} thread(s), {args.clock} clock; the targets are stated for 2 threads, wall clock)"))
    for what, value, ok in verdicts:
        print(f"  {what:48s} measured {value:7.2f}   {'MET' if ok else 'MISSED'}")


if __name__ == "__main__":
    main()
