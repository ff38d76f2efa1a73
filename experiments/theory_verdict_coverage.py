"""Decided share and correctness of gag_iteration_verdict on the second audit's distribution (THEORY.md T8e).

Problems (theory-audit-2 `regen`, seed 11): unit patterns, d 3-12, N 2-10, beta U[1, 8], lam 10, eta 15,
alpha 1.5, zeta 0; 12 starts each (4 on the sphere, 4 near a pattern, 4 Gaussian). Every verdict that decides is
compared with an independent brute force (batched float64 numpy map written here, entmax by sort-based closed
form; 6000 steps, period <= 64 detection, like the audit's classify). A contradiction is a decided verdict whose
kind/period or orbit (within the verdict's radius + 1e-7 relative) disagrees with the brute force.

    python experiments/theory_verdict_coverage.py [N_PROBLEMS=400] [FIRST=0] [--json OUT]

Prints the decided share (overall, by method, by beta bin), the undecided reasons and the contradictions.
"""
from __future__ import annotations

import argparse
import json
import math
import sys
import time
from collections import Counter
from pathlib import Path

import numpy as np
import torch

from hopfield_gag.theory import gag_iteration_verdict

LAM, ETA, ALPHA = 10.0, 15.0, 1.5
T_BURN = 6000


def regen(seed: int, n_prob: int):
    """The audit's problem generator (theory-audit-2-scripts/regen.py), verbatim in effect."""
    rng = np.random.default_rng(seed)
    out = []
    for _ in range(n_prob):
        d = int(rng.integers(3, 13)); N = int(rng.integers(2, 11)); beta = float(rng.uniform(1, 8))  # noqa: E702
        X = rng.normal(size=(N, d)); X /= np.linalg.norm(X, axis=1, keepdims=True)  # noqa: E702
        starts = []
        for _ in range(4):
            u = rng.normal(size=d); starts.append(("sphere", u / np.linalg.norm(u)))  # noqa: E702
        for _ in range(4):
            i = rng.integers(N); starts.append(("pattern+0.3", X[i] + 0.3 * rng.normal(size=d) / math.sqrt(d)))  # noqa: E702
        for _ in range(4):
            starts.append(("gauss", rng.normal(size=d)))
        out.append((d, N, beta, X, starts))
    return out


def entmax15_batch(z):
    """1.5-entmax of rows z (B, N): sort-based closed form (independent of the package)."""
    u = 0.5 * (z - z.max(-1, keepdims=True))
    us = -np.sort(-u, -1)
    k = np.arange(1, u.shape[-1] + 1)
    S, S2 = np.cumsum(us, -1), np.cumsum(us * us, -1)
    disc = S * S - k * (S2 - 1)
    tau = (S - np.sqrt(np.maximum(disc, 0))) / k
    ok = (disc >= 0) & (us > tau)
    kk = np.where(ok, k, 0).max(-1)
    t = np.take_along_axis(tau, (kk - 1)[:, None], -1)
    p = np.maximum(u - t, 0) ** 2
    return p / p.sum(-1, keepdims=True)


def G_batch(xi, X, beta):
    z = beta * xi @ X.T
    ps = entmax15_batch(z)
    e = np.exp(z - z.max(-1, keepdims=True))
    pd = e / e.sum(-1, keepdims=True)
    s, d = ps @ X, pd @ X
    ss = (s * s).sum(-1)
    c = np.where(ss > 0, (ss - (d * s).sum(-1)) / np.where(ss > 0, ss, 1), 0.0)
    g = np.abs(c) * np.sqrt(ss)
    f = np.where(g > ETA, ETA / np.where(g > 0, g, 1), 1.0)
    return s * (1 + LAM * c * f)[:, None]


def brute(X, beta, xi0):
    xi = xi0.copy()
    for _ in range(T_BURN):
        xi = G_batch(xi, X, beta)
    traj = [xi]
    for _ in range(128):
        traj.append(G_batch(traj[-1], X, beta))
    traj = np.stack(traj)
    out = []
    for b in range(xi.shape[0]):
        size = 1 + np.linalg.norm(traj[0, b])
        per = None
        for p in range(1, 65):
            if (np.linalg.norm(traj[p, b] - traj[0, b]) <= 1e-9 * size
                    and np.linalg.norm(traj[2 * p, b] - traj[p, b]) <= 1e-9 * size):
                per = p
                break
        out.append((per, traj[:8, b]))
    return out


def brute_long(X, beta, xi0, steps=400_000):
    global T_BURN
    old, T_BURN = T_BURN, steps
    try:
        return brute(X, beta, xi0)
    finally:
        T_BURN = old


def agrees(v, per, pts):
    if v.period != per:
        return False
    orbit = [o.numpy() for o in v.orbit]
    tol = (v.radius or 0.0) + 1e-7 * (1 + max(np.linalg.norm(o) for o in orbit))
    # some phase of the brute-force orbit matches the verdict's orbit point by point
    for shift in range(per):
        if all(np.abs(pts[(shift + j) % per] - orbit[j]).max() <= tol for j in range(per)):
            return True
    return False


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("n", type=int, nargs="?", default=400, help="number of the audit's problems (default %(default)s)")
    parser.add_argument("first", type=int, nargs="?", default=0, help="index of the first problem (default %(default)s)")
    parser.add_argument("--json", metavar="PATH", help="also write the results as JSON")
    args = parser.parse_args(argv)
    n, first, out = args.n, args.first, args.json
    torch.set_num_threads(1)
    probs = regen(11, first + n)[first:]
    rows = []
    t0 = time.time()
    for it, (d, N, beta, X, starts) in enumerate(probs):
        bf = brute(X, beta, np.stack([s[1] for s in starts]))
        for (kind, x0), (per, pts) in zip(starts, bf):
            t1 = time.time()
            v = gag_iteration_verdict(torch.tensor(X), torch.tensor(x0), beta, LAM, ETA, ALPHA)
            decided = v.kind != "undecided"
            if decided and per is None:  # slow convergence (multiplier near 1): a much longer brute force
                (per, pts), = brute_long(X, beta, x0[None])
            rows.append(dict(prob=first + it, beta=beta, start=kind, kind=v.kind, method=v.method, period=v.period,
                             bf_period=per, decided=decided, agree=(agrees(v, per, pts) if decided else None),
                             reason=v.reason, seconds=time.time() - t1))
        if (it + 1) % 10 == 0:
            dec = sum(r["decided"] for r in rows)
            print(f"{it + 1} problems, {len(rows)} starts, decided {dec / len(rows):.1%}, "
                  f"contradictions {sum(r['agree'] is False for r in rows)}, {time.time() - t0:.0f} s", flush=True)
    nrow = len(rows)
    dec = [r for r in rows if r["decided"]]
    print(f"\nstarts {nrow} ({len(probs)} problems x 12): decided {len(dec)} ({len(dec) / nrow:.1%})")
    print("by method:", dict(Counter(r["method"] for r in dec)), " kinds:", dict(Counter(r["kind"] for r in dec)))
    for lo, hi in ((1, 2), (2, 4), (4, 6), (6, 8)):
        rr = [r for r in rows if lo <= r["beta"] < hi]
        if rr:
            print(f"  beta in [{lo},{hi}): decided {sum(r['decided'] for r in rr) / len(rr):.1%} (n={len(rr)})")
    bad = [r for r in dec if not r["agree"]]
    print(f"contradicting brute force: {len(bad)}")
    for r in bad[:10]:
        print("  ", r)
    und = [r for r in rows if not r["decided"]]
    print("undecided reasons:", Counter(r["reason"].split(";")[-1].strip()[:70] for r in und).most_common(8))
    print(f"time {time.time() - t0:.0f} s")
    if out:
        Path(out).write_text(json.dumps(rows, indent=0))
    return 1 if bad else 0


if __name__ == "__main__":
    sys.exit(main())
