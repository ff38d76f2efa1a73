"""Benchmark: our exact sort-free entmax/sparsemax against the `entmax` package and torch.softmax.

fp32 CPU, 2 threads, attention-score tensors z = q kᵀ/√64 with q, k ~ N(0, 1) at the shapes
(B, H, Lq, Lk) = (2, 8, 1024, 77) and (2, 8, 1024, 1024). Every contender runs once per round,
round-robin, so a drift in machine load hits all of them alike; the table reports medians over rounds and
ratios measured in this one run.

The ratio to torch.softmax is also measured with the two timed *alone and warm* (_benchutil.alone_medians:
one warm-up call, then all rounds of one back to back, then the other), in both orders (softmax first, entmax
first): interleaved with the slow contenders, torch.softmax itself runs several times slower than alone
(issue 22), which flatters the ratio.

Targets (issues 2, 9 and 22): our alpha=1.5 entmax >= 5x faster than entmax.entmax15 at Lk=77 and >= 10x at
Lk=1024; within 3x of torch.softmax at Lk=77, interleaved and alone (both orders).

Usage: python experiments/bench_normalizers.py [--rounds N] [--quick] [--threads N]
"""
from __future__ import annotations

import argparse
import os
import sys

import torch

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
# measure the package of this checkout, not whichever copy is installed
sys.path.insert(1, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
from _benchutil import Contention, alone_medians, machine_line, print_targets, round_robin_medians  # noqa: E402

import entmax as entmax_pkg
from hopfield_gag.ops import normalizers

SHAPES = [(2, 8, 1024, 77), (2, 8, 1024, 1024)]


def attention_scores(shape, seed=0):
    b, h, lq, lk = shape
    g = torch.Generator().manual_seed(seed)
    q = torch.randn(b, h, lq, 64, generator=g)
    k = torch.randn(b, h, lk, 64, generator=g)
    return q @ k.transpose(-1, -2) / 8.0


def contenders(x):
    return {
        "torch.softmax": lambda: torch.softmax(x, -1),
        "ours entmax(1.5)": lambda: normalizers.entmax(x, 1.5),
        "ours sparsemax": lambda: normalizers.sparsemax(x),
        "entmax.entmax15": lambda: entmax_pkg.entmax15(x, dim=-1),
        "entmax.sparsemax": lambda: entmax_pkg.sparsemax(x, dim=-1),
        "entmax.entmax_bisect(1.5)": lambda: entmax_pkg.entmax_bisect(x, 1.5, dim=-1),
    }


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rounds", type=int, default=11)
    parser.add_argument("--quick", action="store_true", help="3 rounds; for a smoke run")
    parser.add_argument("--threads", type=int, default=2, help="torch and kernel threads (targets: 2)")
    parser.add_argument("--clock", choices=("wall", "cpu"), default="wall",
                        help="wall time (targets) or process CPU time (repeatable on a shared machine)")
    args = parser.parse_args(argv)
    rounds = 3 if args.quick else args.rounds
    torch.set_num_threads(args.threads)
    print(f"torch {torch.__version__}, threads={torch.get_num_threads()}, fp32, {args.clock} clock, median of {rounds} rounds "
          f"(entmax_bisect: {min(rounds, 3)}), load average before the run {os.getloadavg()[0]:.2f}")
    print(machine_line() + "\n")
    verdicts = []
    with Contention() as contention:
        for shape in SHAPES:
            verdicts += run_shape(shape, rounds, args.clock)
    print(contention.report())
    print(f"load average after the run {os.getloadavg()[0]:.2f}")
    print_targets(verdicts, args.threads, args.clock, stated_threads=(2,))


def run_shape(shape, rounds, clock):
    """The interleaved table of every contender at ``shape``, and at Lk = 77 the alone-and-warm ratios."""
    verdicts = []
    x = attention_scores(shape)
    # sanity: the contenders compute the same thing
    ours = normalizers.entmax(x, 1.5)
    ref = entmax_pkg.entmax15(x, dim=-1)
    err = float((ours - ref).abs().max())
    with Contention() as load:
        med = round_robin_medians(contenders(x), rounds, {"entmax.entmax_bisect(1.5)": min(rounds, 3)}, clock=clock)
    base = med["ours entmax(1.5)"]
    print(f"shape {shape}   (max |ours - entmax.entmax15| = {err:.1e}; interleaved, foreign load {load.percent()})")
    print(f"  {'contender':28s} {'median ms':>10s} {'/ ours entmax(1.5)':>20s}")
    for name, ms in med.items():
        print(f"  {name:28s} {ms:10.2f} {ms / base:20.2f}")
    lk = shape[-1]
    speedup = med["entmax.entmax15"] / base
    target = 5.0 if lk == 77 else 10.0
    verdicts.append((f"Lk={lk}: entmax.entmax15 / ours >= {target:g}", speedup, speedup >= target))
    sm_speedup = med["entmax.sparsemax"] / med["ours sparsemax"]
    print(f"  entmax.sparsemax / ours sparsemax = {sm_speedup:.2f}")
    if lk == 77:
        vs_softmax = base / med["torch.softmax"]
        verdicts.append(("Lk=77: ours / torch.softmax <= 3, interleaved", vs_softmax, vs_softmax <= 3.0))
        pair = {"torch.softmax": lambda: torch.softmax(x, -1), "ours entmax(1.5)": lambda: normalizers.entmax(x, 1.5)}
        for order in (("torch.softmax", "ours entmax(1.5)"), ("ours entmax(1.5)", "torch.softmax")):
            with Contention() as load:
                alone = alone_medians({name: pair[name] for name in order}, rounds, clock=clock)
            ratio = alone["ours entmax(1.5)"] / alone["torch.softmax"]
            label = "softmax first" if order[0] == "torch.softmax" else "entmax first"
            print(f"  alone and warm, {label}: torch.softmax {alone['torch.softmax']:.2f} ms, ours entmax(1.5) "
                  f"{alone['ours entmax(1.5)']:.2f} ms, ratio {ratio:.2f} (foreign load {load.percent()})")
            verdicts.append((f"Lk=77: ours / torch.softmax <= 3, alone, {label}", ratio, ratio <= 3.0))
    print()
    return verdicts

if __name__ == "__main__":
    main()
