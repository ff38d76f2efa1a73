r"""A digit classifier used as a *proxy* judge of generated digits.

A small CNN (two 3x3 convolutions, 2x2 max-pool, a 64-unit feature layer, a linear read-out) trained on the
training part of the real digits (:func:`hopfield_gag.models.data.train_test_split`; the generators train on
the same part) and shipped as ``weights/judge.safetensors`` with its held-out accuracy in ``judge.json``.

It is a proxy, not a perceptual metric: it measures whether a sample reads as the requested digit to one
small classifier, how far the samples' feature statistics are from real held-out digits (a Fréchet distance
in the judge's 64-d feature space, computed by ``torchmetrics``' ``FrechetInceptionDistance`` with the judge
as its ``feature`` module; not comparable to Inception FIDs) and how spread the samples of a class are.
"""
from __future__ import annotations

import json
from importlib import resources

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from .data import NUM_CLASSES, RESOLUTION, train_test_split

__all__ = ["Judge", "JudgeNet", "load_judge", "train_judge"]


class JudgeNet(nn.Module):
    """images (B, 1, 8, 8) in [0, 1] -> logits (B, 10); ``features`` gives the 64-d penultimate layer."""

    num_features = 64

    def __init__(self):
        super().__init__()
        self.conv1 = nn.Conv2d(1, 32, 3, padding=1)
        self.conv2 = nn.Conv2d(32, 64, 3, padding=1)
        self.fc = nn.Linear(64 * (RESOLUTION // 2) ** 2, self.num_features)
        self.head = nn.Linear(self.num_features, NUM_CLASSES)

    def features(self, x: Tensor) -> Tensor:
        h = F.relu(self.conv2(F.relu(self.conv1(x))))
        return F.relu(self.fc(F.max_pool2d(h, 2).flatten(1)))

    def forward(self, x: Tensor) -> Tensor:
        return self.head(self.features(x))


class _Features(nn.Module):
    """The judge's feature layer as torchmetrics' custom ``feature`` module (``num_features`` = 64)."""

    def __init__(self, net: JudgeNet):
        super().__init__()
        self.net = net
        self.num_features = net.num_features

    def forward(self, x: Tensor) -> Tensor:
        return self.net.features(x.float())


def _check_images(images: Tensor, name: str = "images") -> Tensor:
    if not isinstance(images, torch.Tensor) or not images.dtype.is_floating_point:
        raise ValueError(f"{name} must be a float tensor (B, 1, H, W) in [0, 1]")
    if images.dim() == 3:
        images = images.unsqueeze(1)
    if images.dim() != 4 or images.shape[1] != 1 or images.shape[0] == 0:
        raise ValueError(f"{name} must have shape (B, 1, H, W) with B >= 1, got {tuple(images.shape)}")
    if not torch.isfinite(images).all() or float(images.min()) < 0.0 or float(images.max()) > 1.0:
        raise ValueError(f"{name} must be finite and lie in [0, 1]")
    if images.shape[-2:] != (RESOLUTION, RESOLUTION):
        # other resolutions are compared at the judge's own (area average = the digits' 4x4-block sums / 16)
        images = F.adaptive_avg_pool2d(images, RESOLUTION)
    return images.float()


def _check_labels(labels, n: int) -> Tensor:
    y = torch.as_tensor(labels).reshape(-1)
    if y.dtype.is_floating_point or y.numel() != n or (n and (int(y.min()) < 0 or int(y.max()) >= NUM_CLASSES)):
        raise ValueError(f"labels must be {n} ints in [0, {NUM_CLASSES - 1}]")
    return y.long()


class Judge:
    """The shipped judge (:func:`load_judge`). Every method accepts images (B, 1, H, W) in [0, 1]."""

    def __init__(self, net: JudgeNet, record: dict | None = None):
        self.net = net.eval().requires_grad_(False)
        self.record = record or {}

    @property
    def held_out_accuracy(self) -> float | None:
        """Accuracy on the 359 held-out real digits, measured when the judge was trained."""
        return self.record.get("held_out_accuracy")

    @torch.inference_mode()
    def predict(self, images: Tensor) -> Tensor:
        """Predicted class (B,) int64."""
        return self.net(_check_images(images)).argmax(-1)

    def accuracy(self, images: Tensor, labels) -> float:
        """Fraction of images the judge reads as their requested class."""
        images = _check_images(images)
        return float((self.predict(images) == _check_labels(labels, images.shape[0])).float().mean())

    @torch.inference_mode()
    def frechet_distance(self, images: Tensor, reference: Tensor | None = None) -> float:
        r"""Fréchet distance :math:`\lVert\mu_g - \mu_r\rVert^2 + \mathrm{tr}(\Sigma_g + \Sigma_r - 2(\Sigma_g\Sigma_r)^{1/2})`
        between the judge features of ``images`` and of ``reference`` (default: the 359 held-out real
        digits), by ``torchmetrics.image.fid.FrechetInceptionDistance(feature=<judge features>)``.

        Needs at least 2 images; with fewer than ~64 the covariance is rank-deficient and the value is
        dominated by estimation noise (compare values at equal sample counts only).
        """
        from torchmetrics.image.fid import FrechetInceptionDistance

        images = _check_images(images)
        if images.shape[0] < 2:
            raise ValueError("frechet_distance needs at least 2 images")
        reference = train_test_split()[1][0] if reference is None else _check_images(reference, "reference")
        fid = FrechetInceptionDistance(feature=_Features(self.net), normalize=True)
        fid.update(reference, real=True)
        fid.update(images, real=False)
        return float(fid.compute())

    @torch.inference_mode()
    def diversity(self, images: Tensor, labels) -> float:
        """Mean over classes (with >= 2 images) of the mean pairwise Euclidean distance between the judge
        features of the images of that class; higher = more varied samples."""
        images = _check_images(images)
        y = _check_labels(labels, images.shape[0])
        feats = self.net.features(images)
        per_class = []
        for c in y.unique():
            f = feats[y == c]
            if len(f) >= 2:
                d = torch.cdist(f, f)
                per_class.append(d.sum() / (len(f) * (len(f) - 1)))
        if not per_class:
            raise ValueError("diversity needs at least two images of one class")
        return float(torch.stack(per_class).mean())


def train_judge(seed: int = 0, epochs: int = 30) -> tuple[JudgeNet, dict]:
    """Train the judge on the real training digits; returns (net, record with the held-out accuracy)."""
    torch.manual_seed(seed)
    gen = torch.Generator().manual_seed(seed)
    (x, y), (xt, yt) = train_test_split()
    net = JudgeNet()
    opt = torch.optim.Adam(net.parameters(), lr=2e-3)
    for _ in range(epochs):
        perm = torch.randperm(len(y), generator=gen)
        for i in range(0, len(y), 64):
            idx = perm[i:i + 64]
            # small pixel noise so generated digits (never exactly on the data) are read robustly
            xb = (x[idx] + 0.05 * torch.randn(x[idx].shape, generator=gen)).clamp(0, 1)
            loss = F.cross_entropy(net(xb), y[idx])
            opt.zero_grad()
            loss.backward()
            opt.step()
    net.eval()
    with torch.no_grad():
        acc = float((net(xt).argmax(-1) == yt).float().mean())
        train_acc = float((net(x).argmax(-1) == y).float().mean())
    return net, {"held_out_accuracy": acc, "train_accuracy": train_acc, "held_out_images": len(yt),
                 "epochs": epochs, "seed": seed}


def load_judge(task: str = "digits"):
    """The shipped judge, loaded offline from the package.

    ``task``: ``"digits"`` (default) -> :class:`Judge` of single 8x8 digits; ``"digit-grid"`` or the name of a
    grid model (``"dit-grid"``, ...) -> :class:`~hopfield_gag.models.grid_judge.GridJudge` of 24x24 canvases.
    """
    from safetensors.torch import load_file

    if not isinstance(task, str):
        raise ValueError(f"task must be a string ('digits', 'digit-grid' or a model name), got {task!r}")
    if "grid" in task:
        from .grid_judge import load_grid_judge

        return load_grid_judge()
    if task != "digits" and not task.endswith("-digits"):
        raise ValueError(f"task must be 'digits', 'digit-grid' or a model name, got {task!r}")

    root = resources.files("hopfield_gag.models").joinpath("weights")
    net = JudgeNet()
    with resources.as_file(root.joinpath("judge.safetensors")) as path:
        net.load_state_dict(load_file(str(path)))
    return Judge(net, json.loads(root.joinpath("judge.json").read_text()))
