r"""``digit-grid``: compositional canvases of real digits, the data of the grid models.

A canvas is a :data:`GRID` x :data:`GRID` grid of 8x8 cells (24x24 px for 3x3); each cell holds one real digit
(scikit-learn's bundled 8x8 digits, values in [0, 1]) or is blank (zeros). Its *prompt* lists the non-blank
cells as (position, digit) pairs, positions named ``r{row}c{col}`` (0-based), e.g. ``"r0c0:3 r2c1:7"``, or
as a list of ``(row, col, digit)`` triples. The order of the pairs carries no meaning (training shuffles it).

Token form (what the models read): one token per pair, id ``(row * GRID + col) * 10 + digit`` in [0, 90),
padded with :data:`NULL_TOKEN` (= 90) to :data:`PROMPT_LENGTH` (= 9) tokens; the all-null prompt is the
unconditional prompt of classifier-free guidance.

Splits (deterministic; nothing random at import):

* training canvases take their cell images from the *train* part of
  :func:`hopfield_gag.models.data.train_test_split`, evaluation canvases from its *test* part (no evaluation
  cell image is a training image);
* :data:`HELD_OUT_PAIRS` are (position, digit) combinations that never occur in a training canvas: position
  ``p`` never holds digit ``(3p + 1) mod 10`` (every position and every digit except 8 lose one partner).
  The *compositional held-out* prompts contain at least one of them; the *in-distribution* prompts none.

Every random draw comes from a ``torch.Generator`` seeded by the caller, so a layout set, a batch of canvases
or an evaluation prompt set is a function of its seed.
"""
from __future__ import annotations

import re
from typing import Iterable, Sequence

import torch
from torch import Tensor

from .data import NUM_CLASSES, RESOLUTION, train_test_split

__all__ = [
    "GRID", "CELL", "CANVAS", "PROMPT_LENGTH", "NULL_TOKEN", "BLANK", "P_DIGIT", "HELD_OUT_PAIRS",
    "parse_prompt", "format_prompt", "prompts_to_layouts", "layouts_to_prompts", "layouts_to_tokens",
    "tokens_to_layouts", "random_layouts", "render", "cell_images", "GridCanvases", "eval_prompts",
]

GRID = 3
CELL = RESOLUTION
CANVAS = GRID * CELL
NUM_POSITIONS = GRID * GRID
PROMPT_LENGTH = NUM_POSITIONS
NULL_TOKEN = NUM_POSITIONS * NUM_CLASSES
BLANK = -1  # a blank cell in a layout
P_DIGIT = 0.75  # probability that a cell of a random canvas holds a digit
HELD_OUT_PAIRS = frozenset((p, (3 * p + 1) % NUM_CLASSES) for p in range(NUM_POSITIONS))
_HELD = torch.zeros(NUM_POSITIONS, NUM_CLASSES, dtype=torch.bool)
for _p, _d in HELD_OUT_PAIRS:
    _HELD[_p, _d] = True

_PAIR = re.compile(r"^r(\d+)c(\d+):(\d+)$")


# ---------------------------------------------------------------- prompts <-> layouts <-> tokens

def parse_prompt(prompt) -> list[tuple[int, int, int]]:
    """One prompt -> list of (row, col, digit) triples, validated.

    ``prompt`` is a string of whitespace-separated ``r{row}c{col}:{digit}`` pairs or a sequence of
    (row, col, digit) triples; rows/cols in [0, GRID), digits in [0, 9], each position at most once.
    """
    if isinstance(prompt, str):
        triples = []
        for part in prompt.split():
            m = _PAIR.match(part)
            if m is None:
                raise ValueError(f"prompt pair {part!r} must look like 'r<row>c<col>:<digit>', e.g. 'r0c2:7'")
            triples.append(tuple(int(g) for g in m.groups()))
    elif isinstance(prompt, (list, tuple)):
        triples = []
        for item in prompt:
            if not isinstance(item, (list, tuple)) or len(item) != 3 or not all(
                    isinstance(v, int) and not isinstance(v, bool) for v in item):
                raise ValueError(f"prompt items must be (row, col, digit) int triples, got {item!r}")
            triples.append(tuple(item))
    else:
        raise ValueError(f"a prompt must be a string like 'r0c0:3 r2c1:7' or a list of (row, col, digit), got {type(prompt).__name__}")
    seen = set()
    for r, c, d in triples:
        if not (0 <= r < GRID and 0 <= c < GRID):
            raise ValueError(f"prompt position r{r}c{c} is outside the {GRID}x{GRID} grid")
        if not 0 <= d < NUM_CLASSES:
            raise ValueError(f"prompt digit {d} at r{r}c{c} must lie in [0, {NUM_CLASSES - 1}]")
        if (r, c) in seen:
            raise ValueError(f"prompt names position r{r}c{c} twice")
        seen.add((r, c))
    return triples


def format_prompt(triples: Iterable[Sequence[int]]) -> str:
    """(row, col, digit) triples -> ``"r0c0:3 r2c1:7"``."""
    return " ".join(f"r{r}c{c}:{d}" for r, c, d in triples)


def prompts_to_layouts(prompts) -> Tensor:
    """B prompts (strings or triple lists; a single string is one prompt) -> layouts (B, GRID*GRID) int64,
    cell index ``row * GRID + col``, entry the digit or :data:`BLANK`."""
    if isinstance(prompts, str):
        prompts = [prompts]
    if not isinstance(prompts, (list, tuple)) or len(prompts) == 0:
        raise ValueError("prompts must be a non-empty list of prompts (strings like 'r0c0:3' or (row, col, digit) lists)")
    out = torch.full((len(prompts), NUM_POSITIONS), BLANK, dtype=torch.int64)
    for i, p in enumerate(prompts):
        for r, c, d in parse_prompt(p):
            out[i, r * GRID + c] = d
    return out


def _check_layouts(layouts: Tensor) -> Tensor:
    if not isinstance(layouts, Tensor) or layouts.dim() != 2 or layouts.shape[1] != NUM_POSITIONS \
            or layouts.dtype != torch.int64:
        raise ValueError(f"layouts must be an int64 tensor (B, {NUM_POSITIONS}), got "
                         f"{getattr(layouts, 'dtype', type(layouts))} {tuple(getattr(layouts, 'shape', ()))}")
    if layouts.numel() and (int(layouts.min()) < BLANK or int(layouts.max()) >= NUM_CLASSES):
        raise ValueError(f"layout entries must be digits in [0, 9] or {BLANK} (blank)")
    return layouts


def layouts_to_prompts(layouts: Tensor) -> list[str]:
    """Layouts (B, GRID*GRID) -> prompt strings in cell order."""
    layouts = _check_layouts(layouts)
    return [format_prompt((p // GRID, p % GRID, int(d)) for p, d in enumerate(row.tolist()) if d != BLANK)
            for row in layouts]


def layouts_to_tokens(layouts: Tensor, generator: torch.Generator | None = None) -> Tensor:
    """Layouts (B, GRID*GRID) -> prompt tokens (B, PROMPT_LENGTH) int64: the pair tokens first (in cell
    order, or in a random order per row under ``generator``), then :data:`NULL_TOKEN` padding."""
    layouts = _check_layouts(layouts)
    b = layouts.shape[0]
    pos = torch.arange(NUM_POSITIONS).expand(b, -1)
    tok = torch.where(layouts >= 0, pos * NUM_CLASSES + layouts.clamp(min=0), torch.full_like(layouts, NULL_TOKEN))
    key = (layouts < 0).float() * 2.0  # pairs before padding
    if generator is not None:
        key = key + torch.rand(layouts.shape, generator=generator)
    else:
        key = key + pos.float() / NUM_POSITIONS
    return tok.gather(1, key.argsort(dim=1))


def tokens_to_layouts(tokens: Tensor) -> Tensor:
    """Inverse of :func:`layouts_to_tokens` (order forgotten)."""
    if not isinstance(tokens, Tensor) or tokens.dim() != 2 or tokens.dtype != torch.int64:
        raise ValueError("tokens must be an int64 tensor (B, L)")
    if tokens.numel() and (int(tokens.min()) < 0 or int(tokens.max()) > NULL_TOKEN):
        raise ValueError(f"tokens must lie in [0, {NULL_TOKEN}]")
    out = torch.full((tokens.shape[0], NUM_POSITIONS), BLANK, dtype=torch.int64)
    for i, row in enumerate(tokens.tolist()):
        for t in row:
            if t != NULL_TOKEN:
                out[i, t // NUM_CLASSES] = t % NUM_CLASSES
    return out


# ---------------------------------------------------------------- random layouts

def random_layouts(n: int, generator: torch.Generator, held_out: bool = False, p_digit: float = P_DIGIT) -> Tensor:
    r"""``n`` random layouts (n, GRID*GRID): each cell holds a digit with probability ``p_digit``, at least
    one cell is non-blank.

    ``held_out=False``: digits uniform over the 9 partners allowed at that position (no
    :data:`HELD_OUT_PAIRS`; the training distribution). ``held_out=True``: the same, then one random
    non-blank cell gets its held-out digit, so every layout contains at least one held-out pair.
    """
    allowed = (~_HELD).float()  # (P, 10)
    u = torch.rand(n, NUM_POSITIONS, generator=generator)
    digits = torch.multinomial(allowed.repeat(n, 1), 1, generator=generator).view(n, NUM_POSITIONS)
    lay = torch.where(u < p_digit, digits, torch.full_like(digits, BLANK))
    empty = (lay == BLANK).all(1)
    if empty.any():  # force one digit into an empty canvas (an all-blank prompt is the CFG null prompt)
        cell = torch.randint(NUM_POSITIONS, (int(empty.sum()),), generator=generator)
        lay[empty.nonzero()[:, 0], cell] = digits[empty.nonzero()[:, 0], cell]
    if held_out:
        score = torch.rand(n, NUM_POSITIONS, generator=generator) + (lay != BLANK).float()
        cell = score.argmax(1)
        held_digit = torch.tensor([(3 * p + 1) % NUM_CLASSES for p in range(NUM_POSITIONS)])
        lay[torch.arange(n), cell] = held_digit[cell]
    return lay


def contains_held_out(layouts: Tensor) -> Tensor:
    """(B,) bool: the layout has at least one :data:`HELD_OUT_PAIRS` combination."""
    layouts = _check_layouts(layouts)
    pos = torch.arange(NUM_POSITIONS).expand_as(layouts)
    return (_HELD[pos, layouts.clamp(min=0)] & (layouts >= 0)).any(1)


# ---------------------------------------------------------------- rendering

def cell_images(split: str) -> tuple[Tensor, Tensor]:
    """The real digits a split draws its cells from: (images (N, 1, 8, 8) in [0, 1], labels (N,)).
    ``"train"``: the 1438 training digits; ``"test"``: the 359 held-out digits."""
    if split not in ("train", "test"):
        raise ValueError(f"split must be 'train' or 'test', got {split!r}")
    tr, te = train_test_split()
    return tr if split == "train" else te


def render(layouts: Tensor, images: Tensor, labels: Tensor, generator: torch.Generator) -> Tensor:
    """Canvases (B, 1, CANVAS, CANVAS) in [0, 1]: each non-blank cell a random real image of its digit
    drawn from ``images``/``labels`` (one split), blank cells 0."""
    layouts = _check_layouts(layouts)
    b = layouts.shape[0]
    by_class = [torch.nonzero(labels == d)[:, 0] for d in range(NUM_CLASSES)]
    counts = torch.tensor([len(ix) for ix in by_class])
    offsets = torch.cumsum(torch.cat([torch.zeros(1, dtype=torch.long), counts[:-1]]), 0)
    flat_index = torch.cat(by_class)
    d = layouts.clamp(min=0)
    pick = (torch.rand(layouts.shape, generator=generator) * counts[d]).long()
    img = images[flat_index[offsets[d] + pick]]  # (B, P, 1, 8, 8)
    img = img * (layouts >= 0).float()[..., None, None, None]
    img = img.view(b, GRID, GRID, CELL, CELL).permute(0, 1, 3, 2, 4)
    return img.reshape(b, 1, CANVAS, CANVAS).contiguous()


class GridCanvases:
    """An endless, seeded stream of training (or evaluation) canvases.

    ``batch(n) -> (canvases (n, 1, 24, 24) in [0, 1], tokens (n, 9) int64 in random pair order, layouts)``.
    ``split="train"`` draws training layouts (no held-out pair) over the train digits; ``"test"`` the same
    layouts over the held-out digits.
    """

    def __init__(self, seed: int = 0, split: str = "train"):
        self.images, self.labels = cell_images(split)
        self.generator = torch.Generator().manual_seed(seed)

    def batch(self, n: int) -> tuple[Tensor, Tensor, Tensor]:
        lay = random_layouts(n, self.generator)
        canv = render(lay, self.images, self.labels, self.generator)
        return canv, layouts_to_tokens(lay, self.generator), lay


def eval_prompts(kind: str = "in-distribution", n: int = 200, seed: int = 1234) -> list[str]:
    """A fixed evaluation prompt set: ``kind`` "in-distribution" (training distribution, no held-out pair)
    or "held-out" (every prompt has at least one :data:`HELD_OUT_PAIRS` combination)."""
    if kind not in ("in-distribution", "held-out"):
        raise ValueError(f"kind must be 'in-distribution' or 'held-out', got {kind!r}")
    gen = torch.Generator().manual_seed(seed + (0 if kind == "in-distribution" else 1))
    return layouts_to_prompts(random_layouts(n, gen, held_out=kind == "held-out"))


def real_canvases(prompts, seed: int = 0, split: str = "test") -> Tensor:
    """Real canvases (B, 1, 24, 24) for the given prompts, cells drawn from ``split``'s digits."""
    images, labels = cell_images(split)
    return render(prompts_to_layouts(prompts), images, labels, torch.Generator().manual_seed(seed))
