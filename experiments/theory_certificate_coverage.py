"""Coverage of the certificates for c >= 0 on random attention proxies (THEORY.md T5, coverage table).

Prints, per setting and overall, the fraction of tokens with c >= 0 that each certificate proves, and the
number of false certificates (certificate >= 0 where c < 0), plus the flipped-token rate at the paper defaults.
Public names only. Usage: python experiments/theory_certificate_coverage.py [seed]
"""
from __future__ import annotations

import os
import sys

import torch

from hopfield_gag import flipped_tokens, parallel_bounds, parallel_certificate, perturbative_parallel_certificate

F64 = torch.float64


def main(seed: int = 0) -> None:
    g = torch.Generator().manual_seed(seed)
    totals: dict[str, list[int]] = {}
    print(f"load average: {os.getloadavg()}")
    for lk in (77, 256):
        for qs in (1.0, 2.0, 4.0):
            for mu in (0.0, 1.0, 3.0):
                d = 64
                q = torch.randn(4, 64, d, generator=g, dtype=F64) * qs
                k = torch.randn(4, lk, d, generator=g, dtype=F64)
                v = torch.randn(4, lk, d, generator=g, dtype=F64) + torch.randn(4, 1, d, generator=g, dtype=F64) * mu
                b = parallel_bounds(q, k, v)
                pos = b.exact >= 0
                certs = {"transport": parallel_certificate(q, k, v) >= 0, "norm": b.norm >= 0,
                         "split": b.split >= 0, "sharp": b.sharp >= 0,
                         "perturbative": perturbative_parallel_certificate(q, k, v) >= 0}
                row = [f"Lk={lk} qscale={qs} mean={mu}: c>=0 {float(pos.double().mean()):.3f}"]
                for name, c in certs.items():
                    t = totals.setdefault(name, [0, 0, 0])
                    t[0] += int((c & pos).sum())
                    t[1] += int(pos.sum())
                    t[2] += int((c & ~pos).sum())
                    row.append(f"{name} {float((c & pos).sum()) / max(int(pos.sum()), 1):.3f}")
                row.append(f"flipped {float(flipped_tokens(q, k, v).double().mean()):.3f}")
                print("  ".join(row), flush=True)
    for name, (hit, tot, false) in totals.items():
        print(f"overall {name}: coverage {hit / tot:.3f}  false certificates {false}")


if __name__ == "__main__":
    main(int(sys.argv[1]) if len(sys.argv) > 1 else 0)
