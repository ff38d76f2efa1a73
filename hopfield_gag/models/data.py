r"""The real digits the shipped models and the judge are trained on.

scikit-learn's bundled copy of the UCI optical-digits set (1797 grayscale 8x8 images, values 0..16, classes
0-9), shipped as ``weights/digits.npz`` (45 kB) so nothing at run time needs scikit-learn or a network.

Images are scaled to [0, 1] and bilinearly upsampled to 16x16 (so attention sees 64 patch tokens of 2x2
pixels); the models work in :math:`x \in [-1, 1]`, :math:`x = 2u - 1`.
"""
from __future__ import annotations

from importlib import resources

import numpy as np
import torch
import torch.nn.functional as F
from torch import Tensor

__all__ = ["RESOLUTION", "NUM_CLASSES", "real_digits", "train_test_split"]

RESOLUTION = 8
NUM_CLASSES = 10
_SPLIT_SEED = 0
_TEST_FRACTION = 0.2


def _load_raw() -> tuple[np.ndarray, np.ndarray]:
    with resources.files("hopfield_gag.models").joinpath("weights/digits.npz").open("rb") as fh:
        data = np.load(fh)
        return data["images"], data["labels"]


def real_digits(resolution: int = RESOLUTION) -> tuple[Tensor, Tensor]:
    """All 1797 real digits as (images (N, 1, r, r) float32 in [0, 1], labels (N,) int64).

    The 8x8 originals (0..16) are divided by 16 and upsampled bilinearly (``align_corners=False``) to
    ``resolution``; values stay in [0, 1] because bilinear weights are convex.
    """
    images, labels = _load_raw()
    x = torch.from_numpy(images.astype(np.float32) / 16.0).unsqueeze(1)
    if resolution != 8:
        x = F.interpolate(x, size=(resolution, resolution), mode="bilinear", align_corners=False).clamp_(0.0, 1.0)
    return x, torch.from_numpy(labels.astype(np.int64))


def train_test_split(resolution: int = RESOLUTION):
    """The fixed 80/20 split (seed 0) used by every shipped model and the judge.

    Returns ``(x_train, y_train), (x_test, y_test)``; the generators train on the train part only, so the
    judge's held-out accuracy and the Fréchet reference set are not the generators' training images.
    """
    x, y = real_digits(resolution)
    perm = torch.randperm(len(y), generator=torch.Generator().manual_seed(_SPLIT_SEED))
    n_test = int(round(_TEST_FRACTION * len(y)))
    test, train = perm[:n_test], perm[n_test:]
    return (x[train], y[train]), (x[test], y[test])
