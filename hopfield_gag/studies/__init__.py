"""Numerical studies: each is a map over shards (toy problems, store shards, seeds) to mergeable statistics
and a reduce to a table (:mod:`hopfield_gag.studies.mapreduce`), runnable on one core, all cores or Dask."""
from .mapreduce import Histogram, Stats, run_study

__all__ = ["Histogram", "Stats", "run_study"]
