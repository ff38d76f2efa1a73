"""CSV output shared by the studies (one writer, documented column order)."""
from __future__ import annotations

import csv
from pathlib import Path


def write_csv(rows, columns, out_dir, name) -> Path:
    """Write ``rows`` (dicts) with exactly ``columns`` (in order) to ``out_dir/name``; returns the path."""
    path = Path(out_dir) / name
    path.parent.mkdir(parents=True, exist_ok=True)
    with open(path, "w", newline="") as f:
        w = csv.DictWriter(f, fieldnames=list(columns), extrasaction="raise")
        w.writeheader()
        for r in rows:
            w.writerow({c: (f"{r[c]:.6g}" if isinstance(r[c], float) else r[c]) for c in columns})
    return path


def format_table(rows, columns) -> str:
    """A markdown table of ``rows`` (floats to 4 significant digits)."""
    fmt = lambda v: f"{v:.4g}" if isinstance(v, float) else str(v)  # noqa: E731
    lines = ["| " + " | ".join(columns) + " |", "|" + "---|" * len(columns)]
    lines += ["| " + " | ".join(fmt(r[c]) for c in columns) + " |" for r in rows]
    return "\n".join(lines)


def read_csv(path) -> list[dict]:
    """Rows of a CSV written by :func:`write_csv`, numbers parsed back (ints, floats; empty stays "")."""
    def parse(v):
        if v == "":
            return v
        for t in (int, float):
            try:
                return t(v)
            except ValueError:
                pass
        return v

    with open(path, newline="") as f:
        return [{k: parse(v) for k, v in r.items()} for r in csv.DictReader(f)]


def save_figure(fig, path, dpi: int = 110) -> Path:
    """Write a matplotlib figure to ``path`` (parent folders created), close it, and return the path."""
    import matplotlib.pyplot as plt

    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=dpi)
    plt.close(fig)
    return path

