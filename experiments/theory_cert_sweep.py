"""Soundness sweep of every certificate for c >= 0 and of the sign predicates against the exact truth.

For N adversarial/random attention rows (fp32 and fp64; alpha in {1.25, 1.5, 2, 3}; masks; regimes: random,
collinear, non-centred, tiny ||s||, near-ties, huge scores, a large common score offset, values opposed to the
scores, cancelling q.k, keys on the entmax support boundary, and values tuned so that the computed <Delta, s>
is a tiny positive number) it evaluates parallel_bounds (direct, transport, norm, split, sharp),
parallel_certificate, perturbative_parallel_certificate, parallel_margin and sign_flip_margin, and checks every
certified row (and every decided sign) against c, <Delta, s_hat> and m of the *given* inputs in 60-digit
mpmath (tests/_truth.py, independent of the package). A false certificate is a bound >= 0 where the exact value
is < 0; a bound above the exact value is a "not a lower bound" failure.

    python experiments/theory_cert_sweep.py [N=50000] [SEED=0] [--json OUT]

Prints per regime: rows, rows with exact c >= 0, the share of those certified by each certificate, and the
failures (must be 0). Public names only.
"""
from __future__ import annotations

import argparse
import json
import math
import sys
import time
from collections import defaultdict
from pathlib import Path

import numpy as np
import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "tests"))
import _truth  # noqa: E402  (the test suite's oracle)

from hopfield_gag.theory import (  # noqa: E402
    parallel_bounds,
    parallel_certificate,
    parallel_margin,
    perturbative_parallel_certificate,
    sign_flip_margin,
)

REGIMES = ("random", "collinear", "noncentred", "tiny_s", "near_tie", "huge_scores", "offset_scores", "opposed",
           "cancel", "edge", "tuned")
ALPHAS = (1.25, 1.5, 2.0, 3.0)
CERTS = ("direct", "transport", "norm", "split", "sharp", "bracket", "perturbative")


def _edge_scores(rng, lk, alpha):
    from hopfield_gag.ops.normalizers import normalize

    z = np.sort(np.round(rng.uniform(0, 2, lk - 1) * 256) / 256)[::-1].copy()
    p = normalize(torch.tensor(z), alpha)
    tau = (alpha - 1) * z.max() - float(p.max()) ** (alpha - 1)
    zb = tau / (alpha - 1) + rng.choice([0.0, 2.0**-40, -(2.0**-40), 2.0**-20])
    return np.concatenate([z, [zb]])


def gen(rng, regime, alpha):
    """One problem: q (lq, d), k (lk, d), v (lk, dv), scale, mask (lq, lk) or None."""
    lq, lk = 3, int(rng.integers(2, 10))
    d, dv = int(rng.integers(1, 6)), int(rng.integers(1, 5))
    q = rng.normal(size=(lq, d)) * 10 ** rng.uniform(-2, 2)
    k = rng.normal(size=(lk, d))
    u = rng.normal(size=dv)
    u /= np.linalg.norm(u)
    scale = 10 ** rng.uniform(-2, 2) / math.sqrt(d)
    v = rng.normal(size=(lk, dv)) + rng.uniform(-5, 5) * u
    if regime == "random":
        v = rng.normal(size=(lk, dv)) + rng.uniform(-2, 2)
    elif regime == "collinear":
        v = rng.uniform(0, 4, size=(lk, 1)) * u
    elif regime == "noncentred":
        v = rng.normal(size=(lk, dv)) + rng.uniform(-50, 50) * u
    elif regime == "tiny_s":
        sign = np.where(np.arange(lk) % 2 == 0, 1.0, -1.0)
        v = sign[:, None] * u + 10 ** rng.uniform(-14, -2) * rng.normal(size=(lk, dv))
    elif regime == "near_tie":
        k = k[:1] + 10 ** rng.uniform(-9, -3) * rng.normal(size=(lk, d))
    elif regime == "huge_scores":
        scale *= 10 ** rng.uniform(1, 4)
    elif regime == "offset_scores":
        A = 10 ** rng.uniform(1, 9)
        base = rng.normal(size=d)
        base /= np.linalg.norm(base)
        q = A * np.tile(base, (lq, 1)) + rng.normal(size=(lq, d))
        k = base + rng.normal(size=(lk, d)) / A
        scale = 1.0
    elif regime == "opposed":
        z = (q @ k.T)[:1]
        v = -z.T * u + 0.1 * rng.normal(size=(lk, dv))
    elif regime == "cancel":
        A = 2.0 ** rng.integers(6, 30)
        q = np.stack([np.array([A, rng.uniform(0.1, 2), -A]) for _ in range(lq)])
        k = np.concatenate([np.ones((lk, 1)), rng.uniform(0, 1, (lk, 1)), np.ones((lk, 1))], 1)
        scale = 1.0
    elif regime == "edge":
        q = np.ones((lq, 1)) * np.array([[1.0], [2.0], [0.5]])
        k = _edge_scores(rng, lk, alpha).reshape(lk, 1)
        scale = 1.0
    mask = None
    if regime not in ("edge", "tuned") and rng.random() < 0.3:
        mask = rng.random((lq, lk)) > 0.4
        mask[:, 0] = True
    return q, k, v, scale, mask


def _tune(q, k, v, scale, alpha, dtype, rng):
    """Values making the *computed* <Delta, s> ~ 0 on row 0 (1-D values + a relative perturbation)."""
    from hopfield_gag.theory import sparse_dense_discrepancy

    r = sparse_dense_discrepancy(q, k, v, scale, alpha)
    D = (r.p_sparse - r.p_dense).double()[0]
    lk = D.shape[-1]
    j = int(D.abs().argmax())
    w = torch.tensor(rng.normal(size=lk))
    w[j] = 0.0
    if float(D[j]) != 0:
        w[j] = -float((D * w).sum()) / float(D[j])
    vv = (w + 1.0 + float(w.abs().max())) * (1 + 10 ** rng.uniform(-16, -4) * torch.tensor(rng.normal(size=lk)))
    return vv.reshape(lk, 1).to(dtype)


def run(n_rows: int = 50_000, seed: int = 0, dtypes=("float32", "float64"), lams=(10.0, 1e3)):
    rng = np.random.default_rng(seed)
    stats = defaultdict(lambda: defaultdict(int))
    failures = []
    rows = it = 0
    t0 = time.time()
    while rows < n_rows:
        regime = REGIMES[it % len(REGIMES)]
        alpha = ALPHAS[(it // len(REGIMES)) % len(ALPHAS)]
        dt = getattr(torch, dtypes[(it // (len(REGIMES) * len(ALPHAS))) % len(dtypes)])
        it += 1
        q, k, v, scale, mask = gen(rng, "random" if regime == "tuned" else regime, alpha)
        qt, kt, vt = (torch.tensor(a, dtype=dt) for a in (q, k, v))
        if regime == "tuned":
            vt = _tune(qt, kt, vt, scale, alpha, dt, rng)
        mt = None if mask is None else torch.tensor(mask)
        try:
            b = parallel_bounds(qt, kt, vt, scale, alpha, mt)
        except ValueError:
            continue
        vals = {name: getattr(b, name).tolist() for name in ("direct", "transport", "norm", "split", "sharp")}
        vals["bracket"] = parallel_certificate(qt, kt, vt, scale, alpha, mt).tolist()
        vals["perturbative"] = perturbative_parallel_certificate(qt, kt, vt, scale, alpha, mt).tolist()
        margin = parallel_margin(qt, kt, vt, scale, alpha, mt).tolist()
        lam = lams[it % len(lams)]
        flip = sign_flip_margin(qt, kt, vt, lam, 15.0, 0.0, scale, alpha, mt).tolist()
        truths = _truth.truth(qt, kt, vt, scale, alpha, mt)
        key = f"{regime}|{dt}".replace("torch.", "")
        st = stats[key]
        for r, t in enumerate(truths):
            rows += 1
            st["rows"] += 1
            pos = t.inner >= 0
            st["c>=0"] += int(pos)
            for name in CERTS:
                x = vals[name][r]
                if x >= 0:
                    st[f"cert_{name}"] += int(pos)
                    if not pos:
                        st[f"FALSE_{name}"] += 1
                        failures.append(dict(kind=f"false {name}", regime=regime, dtype=str(dt), alpha=alpha,
                                             row=r, value=x, exact=float(t.inner_unit), q=q.tolist(),
                                             k=k.tolist(), v=vt.tolist(), scale=scale,
                                             mask=None if mask is None else mask.tolist()))
                if name == "bracket":  # bracket units (bound / moved mass): only its sign is a claim
                    continue
                unit = t.inner if name == "perturbative" else t.inner_unit
                if math.isfinite(x) and x > unit:
                    st[f"NOT_LOWER_{name}"] += 1
                    failures.append(dict(kind=f"{name} above exact", regime=regime, dtype=str(dt), alpha=alpha,
                                         row=r, value=x, exact=float(unit)))
            m = margin[r]
            if (m > 0 and not t.c > 0) or (m < 0 and not t.c < 0):
                st["WRONG_SIGN_margin"] += 1
                failures.append(dict(kind="margin sign", regime=regime, value=m, exact=float(t.c)))
            st["margin_decided"] += int(m != 0)
            fm = flip[r]
            if fm != 0:
                ex = t.flip_margin(lam, 15.0)
                if (fm > 0) != (ex > 0) or ex == 0:
                    st["WRONG_SIGN_flip"] += 1
                    failures.append(dict(kind="flip sign", regime=regime, value=fm, exact=float(ex), lam=lam))
            if rows >= n_rows:
                break
    return {k: dict(v) for k, v in stats.items()}, failures, time.time() - t0


def summarize(stats):
    tot = defaultdict(int)
    for st in stats.values():
        for k, v in st.items():
            tot[k] += v
    return dict(tot)


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("n", type=int, nargs="?", default=50_000, help="number of adversarial rows (default %(default)s)")
    parser.add_argument("seed", type=int, nargs="?", default=0, help="random seed (default %(default)s)")
    parser.add_argument("--json", metavar="PATH", help="also write the results as JSON")
    args = parser.parse_args(argv)
    n, seed, out = args.n, args.seed, args.json
    torch.set_num_threads(1)
    stats, failures, dt = run(n, seed)
    for key in sorted(stats):
        st = stats[key]
        pos = max(st.get("c>=0", 0), 1)
        cov = "  ".join(f"{c} {st.get('cert_' + c, 0) / pos:.3f}" for c in CERTS)
        bad = {k: v for k, v in st.items() if k.startswith(("FALSE", "NOT_LOWER", "WRONG"))}
        print(f"{key:26s} rows {st['rows']:6d}  c>=0 {st.get('c>=0', 0):6d}  {cov}  failures {bad or 0}")
    tot = summarize(stats)
    pos = max(tot.get("c>=0", 0), 1)
    print(f"TOTAL rows {tot['rows']}  c>=0 {tot.get('c>=0', 0)}  " +
          "  ".join(f"{c} {tot.get('cert_' + c, 0) / pos:.4f}" for c in CERTS))
    print(f"failures: {len(failures)}  (false certificates, bounds above the exact value, wrong signs)")
    print(f"time {dt:.0f} s")
    if out:
        Path(out).write_text(json.dumps(dict(stats=stats, total=tot, failures=failures[:100], seconds=dt), indent=1))
    return 1 if failures else 0


if __name__ == "__main__":
    sys.exit(main())
