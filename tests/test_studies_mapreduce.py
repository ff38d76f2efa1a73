"""The map-reduce framework: exact merges, bin quantiles, and scheduler independence (sync = processes =
Dask LocalCluster, including a worker killed mid-study)."""
import os
import sys

import numpy as np
import pytest
from hypothesis import example, given, settings, strategies as st

from hopfield_gag.studies.mapreduce import Histogram, Stats, run_study

EDGES = np.linspace(-1.0, 1.0, 41)


def _shard_stats(seed: int) -> Stats:
    """A miniature directional study on one random shard: the parallel margin per head (library call)."""
    import torch
    from hopfield_gag import parallel_margin

    g = torch.Generator().manual_seed(seed)
    q, k, v = (torch.randn(2, 3, 8, 4, generator=g, dtype=torch.float64) for _ in range(3))
    m = parallel_margin(q, k, v, alpha=1.5)
    stats = Stats()
    for h in range(m.shape[1]):
        stats.add(("head", h), "parallel_margin", m[:, h], EDGES)
    return stats


class _DieOnce:
    """Map that kills its own worker process the first time it sees shard ``victim`` (marker file)."""

    def __init__(self, marker: str, victim: int):
        self.marker, self.victim = marker, victim

    def __call__(self, seed):
        if seed == self.victim and not os.path.exists(self.marker):
            open(self.marker, "w").close()
            os._exit(1)  # simulated crash: no exception, the process is gone
        return _shard_stats(seed)


def _table(stats: Stats):
    rows = []
    for group in sorted(stats.groups):
        h = stats.groups[group]["parallel_margin"]
        rows.append((group, h.n, h.total, h.lo, h.hi, tuple(h.counts), h.quantile(0.5)))
    return rows


@given(st.lists(st.floats(-3, 3, allow_nan=False), min_size=0, max_size=60), st.integers(0, 60))
@example([1.0, -1.0, 1.0], 1)  # values on the outer edges land in the closed last / first bins
def test_histogram_merge_equals_one_pass(values, cut):
    """Merging the histograms of two halves gives the one-pass counts, n, min, max (exact) and sums to
    float64 rounding (two partial sums: relative error <= 2 eps * sum |x|)."""
    whole = Histogram(EDGES).add(values)
    parts = Histogram(EDGES).add(values[:cut]).merge(Histogram(EDGES).add(values[cut:]))
    assert np.array_equal(whole.counts, parts.counts) and whole.n == parts.n == len(values)
    assert whole.lo == parts.lo and whole.hi == parts.hi
    assert abs(whole.total - parts.total) <= 4 * np.finfo(float).eps * sum(abs(x) for x in values)


@given(st.lists(st.floats(-0.99, 0.99, allow_nan=False), min_size=1, max_size=200), st.floats(0, 1))
def test_quantile_within_one_bin_of_exact(values, q):
    """The bin quantile is within one bin width of numpy's (inverted-cdf) quantile."""
    h = Histogram(EDGES).add(values)
    exact = np.quantile(values, q, method="inverted_cdf")
    assert abs(h.quantile(q) - exact) <= (EDGES[1] - EDGES[0]) + 1e-12


def test_quantile_fails_outside_bins_resolution():
    """The bound is tight in the sense that it is not 0: a coarse histogram's median differs from numpy's."""
    h = Histogram([0.0, 1.0]).add([0.1, 0.2, 0.9])
    assert h.quantile(0.5) != np.quantile([0.1, 0.2, 0.9], 0.5)


def test_bad_arguments_name_themselves():
    with pytest.raises(ValueError, match="edges"):
        Histogram([1.0, 0.0])
    with pytest.raises(ValueError, match="scheduler"):
        run_study(_shard_stats, [0], scheduler="threads")
    with pytest.raises(ValueError, match="merge"):
        Histogram(EDGES).merge(Histogram([0.0, 1.0]))
    with pytest.raises(TypeError, match="map_fn"):
        run_study(lambda s: {}, [0])


def _numpy_shard(seed: int) -> Stats:
    stats = Stats()
    stats.add(("head", 0), "parallel_margin", np.random.default_rng(seed).uniform(-1, 1, 500), EDGES)
    return stats


def test_processes_equal_sync():
    """A process pool gives the sync table bit for bit (merge in shard order)."""
    shards = [0, 1, 2]
    assert _table(run_study(_numpy_shard, shards, scheduler="processes", workers=2)) == _table(
        run_study(_numpy_shard, shards, scheduler="sync")
    )


@pytest.mark.slow
def test_local_cluster_equals_sync_and_survives_a_killed_worker(tmp_path):
    """A LocalCluster of 2 worker processes on loopback, reached by its tcp:// address: the table is
    bit-identical to the single-process table, also when the worker holding shard 1 dies mid-study
    (the scheduler recomputes that shard on the restarted / other worker)."""
    distributed = pytest.importorskip("distributed")
    import cloudpickle

    cloudpickle.register_pickle_by_value(sys.modules[__name__])  # workers cannot import tests/
    shards = [0, 1, 2, 3]
    reference = _table(run_study(_shard_stats, shards, scheduler="sync"))
    with distributed.LocalCluster(n_workers=2, threads_per_worker=1, processes=True, host="127.0.0.1",
                                  dashboard_address=None) as cluster:
        address = cluster.scheduler_address
        assert address.startswith("tcp://127.0.0.1")
        assert _table(run_study(_shard_stats, shards, scheduler=address)) == reference
        marker = str(tmp_path / "died")
        killed = run_study(_DieOnce(marker, victim=1), shards, scheduler=address)
    assert os.path.exists(marker), "the simulated crash did not happen"
    assert _table(killed) == reference
