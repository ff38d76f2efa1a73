r"""The judge of ``digit-grid`` canvases: a cell reader, alignment metrics, quality (Fréchet distances over cells
and over canvases, realism of the cells) and diversity.

* **Cell reader.** A canvas (B, 1, 24, 24) is cut into its 9 cells of 8x8. A cell is *blank* when its mean
  intensity is below :data:`BLANK_THRESHOLD` (half the smallest mean of any real digit, so every real digit
  reads as non-blank and an empty cell as blank); otherwise the shipped digit classifier
  (:class:`~.judge.Judge`) reads its class.
* **Alignment.** ``cell_accuracy`` (all 9 cells, blank included), ``exact`` (every cell of the canvas right),
  ``missing`` (requested digit read as blank, per requested digit), ``extra`` (requested blank read as a
  digit, per requested blank), ``wrong_digit`` (requested digit read as another digit, per requested digit),
  ``misplaced`` (a cell reads a digit the prompt requests *at another cell*: the binding failure, per canvas
  cell).
* **Quality.** ``frechet_cells``: Fréchet distance of the judge's 64-d features between the requested
  non-blank cells and the held-out real digits; ``frechet_canvas``: Fréchet distance of a *canvas* feature
  extractor (:class:`CanvasNet`, trained here to read all 9 cells of real training canvases, shipped as
  ``weights/grid-canvas-features.safetensors``) between the samples and real held-out canvases of the same
  prompts (both through ``torchmetrics``' ``FrechetInceptionDistance`` with a custom feature module; not
  comparable to Inception FIDs). ``sharpness``: edge energy (mean absolute finite difference) of the
  requested cells relative to the held-out real digits: 1 for real-like cells, lower for the blurred
  averages a 1-step sampler returns, which still read as the right class. ``nn_distance``: mean L2
  distance (pixels in [0, 1], per 8x8 cell) of each requested cell to its nearest real digit image (note:
  pixel L2 *favours* smooth averages, so it is reported, not used as the blur measure); ``confidence``: the reader's mean max-softmax probability on those cells (reported, but
  it does *not* catch blur: an average of 8 same-class real digits reads with confidence 0.99996, real
  digits 0.996, see ``tests/test_grid.py``).
* **Diversity.** Mean pairwise judge-feature distance between requested cells of the same digit
  (:meth:`~.judge.Judge.diversity` on the cells).
"""
from __future__ import annotations

import json
from importlib import resources

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from .data import NUM_CLASSES, real_digits
from .grid_data import (BLANK, CANVAS, CELL, GRID, NUM_POSITIONS, GridCanvases, cell_images, prompts_to_layouts,
                        real_canvases)
from .judge import Judge, load_judge as _load_digit_judge

__all__ = ["GridJudge", "CanvasNet", "BLANK_THRESHOLD", "split_cells", "train_canvas_features", "load_grid_judge"]

BLANK_THRESHOLD = 0.5 * 0.1807  # half the smallest mean intensity of any real digit (0.1807, digit set)


def _check_canvases(images: Tensor, name: str = "images") -> Tensor:
    if not isinstance(images, Tensor) or not images.dtype.is_floating_point:
        raise ValueError(f"{name} must be a float tensor (B, 1, {CANVAS}, {CANVAS}) in [0, 1]")
    if images.dim() != 4 or tuple(images.shape[1:]) != (1, CANVAS, CANVAS) or images.shape[0] == 0:
        raise ValueError(f"{name} must have shape (B, 1, {CANVAS}, {CANVAS}) with B >= 1, got {tuple(images.shape)}")
    if not torch.isfinite(images).all() or float(images.min()) < 0.0 or float(images.max()) > 1.0:
        raise ValueError(f"{name} must be finite and lie in [0, 1]")
    return images.float()


def split_cells(images: Tensor) -> Tensor:
    """Canvases (B, 1, 24, 24) -> cells (B, 9, 1, 8, 8), cell index ``row * 3 + col``."""
    b = images.shape[0]
    return images.reshape(b, 1, GRID, CELL, GRID, CELL).permute(0, 2, 4, 1, 3, 5).reshape(b, NUM_POSITIONS, 1, CELL, CELL)


def _edge_energy(cells: Tensor) -> Tensor:
    r"""Per cell (N, 1, 8, 8) -> (N,): mean absolute horizontal plus vertical finite difference,
    :math:`\overline{|x_{i,j+1} - x_{i,j}|} + \overline{|x_{i+1,j} - x_{i,j}|}`; averaging digits lowers it."""
    dx = (cells[..., :, 1:] - cells[..., :, :-1]).abs().mean((1, 2, 3))
    dy = (cells[..., 1:, :] - cells[..., :-1, :]).abs().mean((1, 2, 3))
    return dx + dy


class CanvasNet(nn.Module):
    """canvases (B, 1, 24, 24) in [0, 1] -> logits (B, 9, 11) (per cell: digit 0-9 or blank = 10);
    :meth:`features` is the 128-d penultimate layer used for the canvas Fréchet distance."""

    num_features = 128

    def __init__(self):
        super().__init__()
        self.conv1 = nn.Conv2d(1, 32, 3, padding=1)
        self.conv2 = nn.Conv2d(32, 64, 3, padding=1)
        self.conv3 = nn.Conv2d(64, 64, 3, padding=1)
        self.fc = nn.Linear(64 * 6 * 6, self.num_features)
        self.head = nn.Linear(self.num_features, NUM_POSITIONS * (NUM_CLASSES + 1))

    def features(self, x: Tensor) -> Tensor:
        h = F.max_pool2d(F.relu(self.conv2(F.relu(self.conv1(x)))), 2)
        h = F.max_pool2d(F.relu(self.conv3(h)), 2)
        return F.relu(self.fc(h.flatten(1)))

    def forward(self, x: Tensor) -> Tensor:
        return self.head(self.features(x)).view(-1, NUM_POSITIONS, NUM_CLASSES + 1)


class _Features(nn.Module):
    def __init__(self, fn, num_features: int):
        super().__init__()
        self.fn, self.num_features = fn, num_features

    def forward(self, x: Tensor) -> Tensor:
        return self.fn(x.float())


def _frechet(feature: nn.Module, real: Tensor, fake: Tensor) -> float:
    from torchmetrics.image.fid import FrechetInceptionDistance

    fid = FrechetInceptionDistance(feature=feature, normalize=True)
    fid.update(real, real=True)
    fid.update(fake, real=False)
    return float(fid.compute())


class GridJudge:
    """Reads and scores ``digit-grid`` canvases (see the module docstring). :func:`load_grid_judge`."""

    def __init__(self, digit_judge: Judge, canvas_net: CanvasNet | None = None, record: dict | None = None):
        self.digit_judge = digit_judge
        self.canvas_net = None if canvas_net is None else canvas_net.eval().requires_grad_(False)
        self.record = record or {}
        self._real = None

    @torch.inference_mode()
    def read(self, images: Tensor) -> Tensor:
        """Canvases (B, 1, 24, 24) -> read layouts (B, 9) int64: the digit per cell or -1 (blank)."""
        cells = split_cells(_check_canvases(images))
        b = cells.shape[0]
        flat = cells.reshape(b * NUM_POSITIONS, 1, CELL, CELL)
        digit = self.digit_judge.net(flat).argmax(-1)
        blank = flat.mean((1, 2, 3)) < BLANK_THRESHOLD
        return torch.where(blank, torch.full_like(digit, BLANK), digit).view(b, NUM_POSITIONS)

    def alignment(self, images: Tensor, prompts) -> dict:
        """Alignment metrics of canvases against their prompts (strings or triple lists), see the module doc."""
        want = prompts_to_layouts(prompts)
        images = _check_canvases(images)
        if want.shape[0] != images.shape[0]:
            raise ValueError(f"got {images.shape[0]} images for {want.shape[0]} prompts")
        got = self.read(images)
        req, blank = want >= 0, want < 0
        right = got == want
        # a digit requested elsewhere in the same prompt: the read digit appears in the prompt at another cell
        in_prompt = torch.zeros(want.shape[0], NUM_CLASSES + 1, dtype=torch.bool)
        in_prompt.scatter_(1, want.clamp(min=-1) % (NUM_CLASSES + 1), req)
        in_prompt[:, NUM_CLASSES] = False
        got_digit = got >= 0
        misplaced = ~right & got_digit & in_prompt.gather(1, got.clamp(min=0))
        n_req, n_blank = max(1, int(req.sum())), max(1, int(blank.sum()))
        return dict(
            cell_accuracy=float(right.float().mean()),
            exact=float(right.all(1).float().mean()),
            missing=float((req & (got < 0)).sum()) / n_req,
            wrong_digit=float((req & got_digit & ~right).sum()) / n_req,
            extra=float((blank & got_digit).sum()) / n_blank,
            misplaced=float(misplaced.float().mean()),
        )

    def _requested_cells(self, images: Tensor, prompts) -> tuple[Tensor, Tensor]:
        want = prompts_to_layouts(prompts)
        cells = split_cells(_check_canvases(images))
        mask = want >= 0
        return cells[mask], want[mask]

    @torch.inference_mode()
    def realism(self, images: Tensor, prompts) -> dict:
        """``sharpness`` (edge energy of the requested cells / that of the held-out real digits: 1 = as sharp
        as real digits, < 1 blurred), ``nn_distance`` (mean L2 of each requested cell to its nearest real
        digit, all 1797) and ``confidence`` (mean max-softmax of the reader on those cells)."""
        cells, _ = self._requested_cells(images, prompts)
        if cells.shape[0] == 0:
            raise ValueError("realism needs at least one requested (non-blank) cell")
        real = real_digits()[0]
        nn_d = torch.cdist(cells.flatten(1), real.flatten(1)).min(1).values
        conf = self.digit_judge.net(cells).softmax(-1).max(-1).values
        sharp = _edge_energy(cells).mean() / _edge_energy(cell_images("test")[0]).mean()
        return dict(nn_distance=float(nn_d.mean()), confidence=float(conf.mean()), sharpness=float(sharp))

    @torch.inference_mode()
    def frechet_cells(self, images: Tensor, prompts) -> float:
        """Fréchet distance (judge features) between requested cells and the 359 held-out real digits."""
        cells, _ = self._requested_cells(images, prompts)
        return _frechet(_Features(self.digit_judge.net.features, 64), cell_images("test")[0], cells)

    @torch.inference_mode()
    def frechet_canvas(self, images: Tensor, prompts, reference: Tensor | None = None) -> float:
        """Fréchet distance (:class:`CanvasNet` features) between the canvases and real held-out canvases of
        the same prompts (``reference``: other real canvases (N, 1, 24, 24))."""
        if self.canvas_net is None:
            raise ValueError("this GridJudge has no canvas feature extractor")
        images = _check_canvases(images)
        if images.shape[0] < 2:
            raise ValueError("frechet_canvas needs at least 2 images")
        if reference is None:
            reference = real_canvases(prompts, seed=0, split="test")
        return _frechet(_Features(self.canvas_net.features, CanvasNet.num_features),
                        _check_canvases(reference, "reference"), images)

    @torch.inference_mode()
    def diversity(self, images: Tensor, prompts) -> float:
        """Mean pairwise judge-feature distance between requested cells of the same digit."""
        cells, digits = self._requested_cells(images, prompts)
        return self.digit_judge.diversity(cells, digits)

    def evaluate(self, images: Tensor, prompts) -> dict:
        """Every metric in one dict (alignment, realism, Fréchet distances, diversity).

        A metric the batch is too small for is ``None`` (not NaN): the Fréchet distances need >= 2 canvases
        and >= 2 requested cells, diversity two requested cells of one digit. Compare Fréchet distances at
        equal sample counts only (with few samples the covariances are rank-deficient)."""
        out = self.alignment(images, prompts)
        out.update(self.realism(images, prompts))
        n_cells = int((prompts_to_layouts(prompts) >= 0).sum())
        out["frechet_cells"] = self.frechet_cells(images, prompts) if n_cells >= 2 else None
        if self.canvas_net is not None:
            out["frechet_canvas"] = self.frechet_canvas(images, prompts) if images.shape[0] >= 2 else None
        _, digits = self._requested_cells(images, prompts)
        enough = len(digits) and int(torch.bincount(digits, minlength=NUM_CLASSES).max()) >= 2
        out["diversity"] = self.diversity(images, prompts) if enough else None
        return out


def train_canvas_features(seed: int = 0, steps: int = 600, batch: int = 64) -> tuple[CanvasNet, dict]:
    """Train :class:`CanvasNet` to read the 9 cells (digit or blank) of real *training* canvases; returns the
    net and a record with its per-cell accuracy on held-out canvases (test digits)."""
    torch.manual_seed(seed)
    data = GridCanvases(seed=seed, split="train")
    gen = torch.Generator().manual_seed(seed + 1)
    net = CanvasNet()
    opt = torch.optim.Adam(net.parameters(), lr=2e-3)
    for _ in range(steps):
        canv, _, lay = data.batch(batch)
        canv = (canv + 0.05 * torch.randn(canv.shape, generator=gen)).clamp(0, 1)
        target = torch.where(lay < 0, torch.full_like(lay, NUM_CLASSES), lay)
        loss = F.cross_entropy(net(canv).reshape(-1, NUM_CLASSES + 1), target.reshape(-1))
        opt.zero_grad()
        loss.backward()
        opt.step()
    net.eval()
    test = GridCanvases(seed=seed + 7, split="test")
    with torch.no_grad():
        canv, _, lay = test.batch(500)
        target = torch.where(lay < 0, torch.full_like(lay, NUM_CLASSES), lay)
        acc = float((net(canv).argmax(-1) == target).float().mean())
    return net, {"held_out_cell_accuracy": acc, "steps": steps, "batch": batch, "seed": seed}


def load_grid_judge() -> GridJudge:
    """The shipped grid judge (digit reader + canvas features), loaded offline from the package."""
    from safetensors.torch import load_file

    root = resources.files("hopfield_gag.models").joinpath("weights")
    net, record = None, {}
    if root.joinpath("grid-canvas-features.safetensors").is_file():
        net = CanvasNet()
        with resources.as_file(root.joinpath("grid-canvas-features.safetensors")) as path:
            net.load_state_dict(load_file(str(path)))
        record = json.loads(root.joinpath("grid-canvas-features.json").read_text())
    return GridJudge(_load_digit_judge(), net, record)
