r"""Studies as a map over shards and an exact reduce, on one core, all cores or a Dask cluster.

A study maps each shard (a store shard, a toy problem, a seed) to a :class:`Stats`: per group key (for
example ``(layer, step, branch)``) a set of named :class:`Histogram` s, each holding a count, a float64 sum
and sum of squares, min, max and integer counts in *fixed* bins. Two ``Stats`` merge by adding counts and
sums and taking min/max, so the reduce needs no raw data and memory stays bounded by one shard.

Exactness: integer counts, min and max merge exactly in any order; float64 sums do not (addition is not
associative), so :func:`run_study` always merges the per-shard results **in shard order**, whatever order
the workers finish in. A single-process run and a run on any cluster therefore produce bit-identical tables
as long as the per-shard map is deterministic. Quantiles come from the fixed-bin histograms
(:meth:`Histogram.quantile`, linear inside a bin), so they are exact up to one bin width and identical
between schedulers.

Schedulers (``scheduler=``):

================  =====================================================================================
``"sync"``        one process, shards in order (the reference)
``"processes"``   a ``concurrent.futures.ProcessPoolExecutor`` with ``workers`` processes (no Dask needed)
``"local"``       a ``dask.distributed.LocalCluster`` of ``workers`` single-threaded processes
``"tcp://H:P"``   an existing Dask scheduler at that address
================  =====================================================================================

With Dask, a shard whose worker dies is recomputed on another worker by the scheduler (and ordinary
exceptions are retried ``retries`` times), so the table is still exact. Dask is the optional extra
``cluster``.
"""
from __future__ import annotations

import math
from contextlib import contextmanager
from dataclasses import dataclass, field
from typing import Any, Callable, Hashable, Iterable, Sequence

import numpy as np

__all__ = ["Histogram", "Stats", "run_study", "SCHEDULERS", "torch_threads", "add_scheduler_args"]

SCHEDULERS = ("sync", "processes", "local", "tcp://HOST:PORT")


@dataclass
class Histogram:
    r"""Mergeable summary of a stream of real values with fixed bin ``edges`` (increasing, length B+1).

    ``counts`` has B + 2 entries: underflow (:math:`x < e_0`), the B bins :math:`[e_i, e_{i+1})` (the last
    bin closed) and overflow (:math:`x > e_B`). Non-finite values are counted in ``n_nonfinite`` only.
    """

    edges: np.ndarray
    counts: np.ndarray = None
    n: int = 0
    n_nonfinite: int = 0
    total: float = 0.0
    total_sq: float = 0.0
    lo: float = math.inf
    hi: float = -math.inf

    def __post_init__(self):
        self.edges = np.asarray(self.edges, dtype=np.float64)
        if self.edges.ndim != 1 or self.edges.size < 2 or not np.all(np.diff(self.edges) > 0):
            raise ValueError("edges: expected a strictly increasing 1-D array of length >= 2")
        if self.counts is None:
            self.counts = np.zeros(self.edges.size + 1, dtype=np.int64)

    def add(self, values) -> "Histogram":
        """Add values (array-like or tensor, any shape); returns self."""
        x = np.asarray(_to_numpy(values), dtype=np.float64).ravel()
        finite = np.isfinite(x)
        self.n_nonfinite += int(x.size - finite.sum())
        x = x[finite]
        if x.size == 0:
            return self
        idx = np.searchsorted(self.edges, x, side="right")  # 0 = underflow, B+1 = beyond last edge
        idx[x == self.edges[-1]] = self.edges.size - 1  # last bin is closed
        self.counts += np.bincount(idx, minlength=self.edges.size + 1)
        self.n += int(x.size)
        self.total += float(x.sum())
        self.total_sq += float(np.square(x).sum())
        self.lo = min(self.lo, float(x.min()))
        self.hi = max(self.hi, float(x.max()))
        return self

    def merge(self, other: "Histogram") -> "Histogram":
        """Add ``other`` (same edges) into self; returns self."""
        if not np.array_equal(self.edges, other.edges):
            raise ValueError("merge: histograms have different edges")
        self.counts += other.counts
        self.n += other.n
        self.n_nonfinite += other.n_nonfinite
        self.total += other.total
        self.total_sq += other.total_sq
        self.lo = min(self.lo, other.lo)
        self.hi = max(self.hi, other.hi)
        return self

    @property
    def mean(self) -> float:
        return self.total / self.n if self.n else math.nan

    def fraction_at_least(self, threshold: float) -> float:
        """Fraction of finite values :math:`\\ge` ``threshold``; ``threshold`` must be an edge (exact)."""
        j = np.flatnonzero(self.edges == threshold)
        if j.size != 1:
            raise ValueError(f"threshold: {threshold} is not one of the histogram's edges")
        return float(self.counts[j[0] + 1 :].sum()) / self.n if self.n else math.nan

    def quantile(self, q: float) -> float:
        r"""The q-quantile from the bins: linear interpolation inside the bin holding rank :math:`qn`,
        clipped to [min, max] (under/overflow bins span [min, e_0] and [e_B, max])."""
        if not 0.0 <= q <= 1.0:
            raise ValueError(f"q: expected a value in [0, 1], got {q}")
        if self.n == 0:
            return math.nan
        lefts = np.concatenate([[self.lo], self.edges])
        rights = np.concatenate([self.edges, [self.hi]])
        cum = np.cumsum(self.counts)
        rank = q * self.n
        b = int(np.searchsorted(cum, rank, side="left"))
        b = min(b, self.counts.size - 1)
        before = cum[b] - self.counts[b]
        frac = (rank - before) / self.counts[b] if self.counts[b] else 0.0
        left, right = max(lefts[b], self.lo), min(rights[b], self.hi)
        if right < left:  # a bin entirely outside [lo, hi] cannot hold the rank; guard anyway
            right = left
        return float(left + frac * (right - left))


@dataclass
class Stats:
    """Per-group named histograms: ``stats[group][name]``; groups are hashable keys (tuples)."""

    groups: dict = field(default_factory=dict)

    def hist(self, group: Hashable, name: str, edges) -> Histogram:
        """The histogram ``name`` of ``group`` (created with ``edges`` on first use)."""
        g = self.groups.setdefault(group, {})
        if name not in g:
            g[name] = Histogram(edges)
        return g[name]

    def add(self, group: Hashable, name: str, values, edges) -> None:
        self.hist(group, name, edges).add(values)

    def merge(self, other: "Stats") -> "Stats":
        for group, hists in other.groups.items():
            mine = self.groups.setdefault(group, {})
            for name, h in hists.items():
                if name in mine:
                    mine[name].merge(h)
                else:
                    mine[name] = Histogram(h.edges, h.counts.copy(), h.n, h.n_nonfinite, h.total,
                                           h.total_sq, h.lo, h.hi)
        return self


@contextmanager
def torch_threads(n: int):
    """Run a block with ``torch.set_num_threads(n)`` and restore the previous count. Toy-sized maps run
    faster single-threaded (intra-op threads only add synchronization, badly so on a loaded machine), and
    parallelism comes from the shards."""
    import torch

    before = torch.get_num_threads()
    torch.set_num_threads(n)
    try:
        yield
    finally:
        torch.set_num_threads(before)


def _to_numpy(values):
    if hasattr(values, "detach"):
        return values.detach().to("cpu").double().numpy()
    return values


def _progress(iterable, total, enabled, desc):
    if not enabled:
        return iterable
    try:
        from tqdm.auto import tqdm
    except ImportError:  # progress bars are optional (extras 'cluster' / 'notebooks')
        return iterable

    return tqdm(iterable, total=total, desc=desc)


def run_study(
    map_fn: Callable[[Any], Stats],
    shards: Sequence[Any],
    reduce_fn: Callable[[Stats], Any] | None = None,
    *,
    scheduler: str = "sync",
    workers: int | None = None,
    retries: int = 2,
    progress: bool = False,
    desc: str = "shards",
) -> Any:
    r"""Map ``map_fn`` over ``shards`` on ``scheduler``, merge the :class:`Stats` in shard order, reduce.

    Parameters
    ----------
    map_fn : callable shard -> Stats
        Must be picklable (a module-level function or a picklable callable object) for every scheduler
        but ``"sync"``, and deterministic for the table to be scheduler-independent.
    shards : sequence
        Shard descriptors (small and picklable: paths, indices, seeds), not the data.
    reduce_fn : callable Stats -> table, optional
        Applied to the merged statistics; default returns the merged :class:`Stats`.
    scheduler : {"sync", "processes", "local"} or "tcp://HOST:PORT"
    workers : int, optional
        Processes for ``"processes"`` / ``"local"`` (default: ``os.cpu_count()``).
    retries : int
        Dask retries of a shard whose map raised (a dead worker's shard is recomputed regardless).
    progress : bool
        Show a tqdm bar over completed shards.

    Returns
    -------
    ``reduce_fn(merged)``, or the merged ``Stats``.
    """
    shards = list(shards)
    if not isinstance(scheduler, str) or not (
        scheduler in ("sync", "processes", "local") or scheduler.startswith("tcp://")
    ):
        raise ValueError(f"scheduler: expected one of {SCHEDULERS}, got {scheduler!r}")
    if workers is not None and (not isinstance(workers, int) or workers < 1):
        raise ValueError(f"workers: expected a positive int, got {workers!r}")
    results: list[Stats | None] = [None] * len(shards)
    if scheduler == "sync":
        for i, shard in enumerate(_progress(shards, len(shards), progress, desc)):
            results[i] = map_fn(shard)
    elif scheduler == "processes":
        from concurrent.futures import ProcessPoolExecutor, as_completed

        with ProcessPoolExecutor(max_workers=workers) as pool:
            futures = {pool.submit(map_fn, s): i for i, s in enumerate(shards)}
            for fut in _progress(as_completed(futures), len(shards), progress, desc):
                results[futures[fut]] = fut.result()
    else:
        results = _run_dask(map_fn, shards, scheduler, workers, retries, progress, desc)
    merged = Stats()
    for r in results:  # shard order: float sums identical across schedulers
        if not isinstance(r, Stats):
            raise TypeError(f"map_fn: expected a Stats per shard, got {type(r).__name__}")
        merged.merge(r)
    return reduce_fn(merged) if reduce_fn is not None else merged


def _run_dask(map_fn, shards, scheduler, workers, retries, progress, desc):
    try:
        from dask.distributed import Client, LocalCluster, as_completed
    except ImportError as exc:  # pragma: no cover - exercised only without the extra
        raise ImportError(
            "scheduler: Dask schedulers need the 'cluster' extra (pip install 'hopfield-gag[cluster]')"
        ) from exc
    import os

    cluster = None
    if scheduler == "local":
        cluster = LocalCluster(
            n_workers=workers or os.cpu_count() or 1,
            threads_per_worker=1,
            processes=True,
            host="127.0.0.1",
            dashboard_address=None,
        )
        client = Client(cluster)
    else:
        client = Client(scheduler)
    try:
        futures = client.map(map_fn, shards, retries=retries, pure=False)
        index = {f.key: i for i, f in enumerate(futures)}
        results = [None] * len(shards)
        for fut in _progress(as_completed(futures), len(shards), progress, desc):
            results[index[fut.key]] = fut.result()
        return results
    finally:
        client.close()
        if cluster is not None:
            cluster.close()


def add_scheduler_args(parser) -> None:
    """Add ``--scheduler`` and ``--workers`` to an argparse parser (shared by the study scripts)."""
    parser.add_argument(
        "--scheduler",
        default="local",
        help="sync (one core), processes, local (dask LocalCluster, default) or tcp://HOST:PORT",
    )
    parser.add_argument("--workers", type=int, default=None, help="worker processes (default: all cores)")
