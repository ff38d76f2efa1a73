"""Shared test configuration: hypothesis profiles and float64 defaults.

Profiles
--------
``ci``  : bounded example counts, no deadline (CPU timing jitter must not fail a run).
          Selected automatically when the environment variable ``CI`` is set.
``dev`` : many more examples for a deep local run: ``HYPOTHESIS_PROFILE=dev pytest``.
"""
import os

import torch
from hypothesis import HealthCheck, settings

_common = dict(deadline=None, suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large], print_blob=True)
settings.register_profile("ci", max_examples=40, derandomize=True, **_common)
settings.register_profile("dev", max_examples=600, **_common)
settings.register_profile("dev-lite", max_examples=60, **_common)
_default = "ci" if os.environ.get("CI") else "dev-lite"
settings.load_profile(os.environ.get("HYPOTHESIS_PROFILE", _default))

# Keep the suite inside the CI budget on 2 cores and make timings comparable.
torch.set_num_threads(min(2, torch.get_num_threads()))
