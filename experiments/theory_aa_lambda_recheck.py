"""Median AA(1) scale lambda* against query noise (THEORY.md 3A.3, corrected toy table).

Unit-norm random patterns, queries = stored pattern + noise of norm sigma (uniform direction), 200 queries,
alpha = 1.5, clamp [0, 3]. Public names only. Usage: python experiments/theory_aa_lambda_recheck.py
"""
from __future__ import annotations

import torch

from hopfield_gag import aa_adaptive_scale

F64 = torch.float64


def main() -> None:
    for d, n, beta in ((64, 256, 8.0), (64, 32, 1.0), (64, 256, 2.0)):
        for sigma in (0.0, 0.1, 0.3, 0.5, 1.0, 1.5):
            g = torch.Generator().manual_seed(1)
            x = torch.randn(n, d, generator=g, dtype=F64)
            x = x / x.norm(dim=-1, keepdim=True)
            idx = torch.randint(0, n, (200,), generator=g)
            u = torch.randn(200, d, generator=g, dtype=F64)
            q = x[idx] + sigma * u / u.norm(dim=-1, keepdim=True)
            r = aa_adaptive_scale(q, x, None, scale=beta, alpha=1.5)
            cos = lambda o: float(torch.nn.functional.cosine_similarity(o, x[idx], dim=-1).mean())  # noqa: E731
            print(f"d={d} N={n} beta={beta} sigma={sigma}: median lambda* {float(r.pladis_scale.median()):.3f} "
                  f"(raw {float((1 - r.gamma_raw).median()):.3f}); cos aa {cos(r.output):.4f} "
                  f"sparse {cos(r.sparse):.4f} dense {cos(r.dense):.4f}")


if __name__ == "__main__":
    main()
