"""Layer 7, numerical studies: each is a map over shards (toy problems, store shards, seeds) to mergeable statistics
and a reduce to a table (:mod:`hopfield_gag.studies.mapreduce`), runnable on one core, all cores or Dask.

=========================  ============================================================================
``study_acceleration``     iterations to tolerance of dense / sparse / AA(m) / PLADIS / GAG / AA-adaptive
                           on toy Hopfield problems in the global, metastable and single-pattern regimes
=========================  ============================================================================
"""
from .mapreduce import Histogram, Stats, run_study
from .directional import DIRECTIONAL_COLUMNS, DirectionalConfig, study_directional
from .sampling import SAMPLING_COLUMNS, SamplingConfig, study_sampling
from .acceleration import (
    ACCELERATION_COLUMNS,
    AccelerationConfig,
    acceleration_methods,
    acceleration_problem,
    acceleration_trajectory,
    study_acceleration,
)

__all__ = [
    "Histogram", "Stats", "run_study",
    "ACCELERATION_COLUMNS", "AccelerationConfig", "acceleration_methods", "acceleration_problem",
    "acceleration_trajectory", "study_acceleration",
    "DIRECTIONAL_COLUMNS", "DirectionalConfig", "study_directional",
    "SAMPLING_COLUMNS", "SamplingConfig", "study_sampling",
]
