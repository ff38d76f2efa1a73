"""What the demo and the model cards both show: sample grids as PNG and the judge's three metrics."""
from __future__ import annotations

from pathlib import Path

import torch

__all__ = ["save_grid_png", "judge_metrics"]


def save_grid_png(images: torch.Tensor, rows: int, path, scale: int = 4) -> Path:
    """Tile images ``(N, 1, R, R)`` in [0, 1] row-major into ``rows`` rows (``N`` a multiple of ``rows``), each
    pixel ``scale`` x ``scale``, and save them as a grayscale PNG at ``path``; returns the path."""
    import matplotlib

    matplotlib.use("Agg", force=False)
    import matplotlib.pyplot as plt

    if images.dim() != 4 or images.shape[1] != 1 or rows < 1 or images.shape[0] % rows:
        raise ValueError(f"images must be (N, 1, R, R) with N a multiple of rows={rows}, got {tuple(images.shape)}")
    n, _, r, _ = images.shape
    cols = n // rows
    pad = 1
    canvas = torch.ones(rows * (r + pad) + pad, cols * (r + pad) + pad)
    for i in range(n):
        y, x = divmod(i, cols)
        canvas[pad + y * (r + pad): pad + y * (r + pad) + r, pad + x * (r + pad): pad + x * (r + pad) + r] = images[i, 0]
    big = canvas.repeat_interleave(scale, 0).repeat_interleave(scale, 1)
    plt.imsave(path, big.numpy(), cmap="gray", vmin=0.0, vmax=1.0)
    return Path(path)


def judge_metrics(judge, images: torch.Tensor, labels) -> dict:
    """``{"accuracy", "frechet", "diversity"}`` of ``images (N, 1, R, R)`` with class ``labels (N,)``, by the
    judge (:class:`hopfield_gag.models.Judge`): classification accuracy, Fréchet distance to held-out real
    digits in its feature space, mean within-class pairwise feature distance."""
    return dict(accuracy=judge.accuracy(images, labels), frechet=judge.frechet_distance(images),
                diversity=judge.diversity(images, labels))
