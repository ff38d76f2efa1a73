"""study_sampling plumbing on a freshly initialised UNet (never a result: the shipped weights are the
study's input): documented CSV columns, the CI is the Student-t interval over seeds, dense is its own
time reference, and GAG changes the samples."""
import csv
import math

import pytest
import torch

from hopfield_gag.studies import SAMPLING_COLUMNS, SamplingConfig, study_sampling
from hopfield_gag.studies.mapreduce import Histogram
from hopfield_gag.studies.sampling import mean_ci

CFG = SamplingConfig(models=("unet-digits",), steps=(2,), cfg_scales=(2.0,), variants=("dense", "gag"),
                     seeds=(0, 1), n_per_class=2, untrained=True)


@pytest.fixture(scope="module")
def table(tmp_path_factory):
    out = tmp_path_factory.mktemp("samp")
    return study_sampling(CFG, out), out


def test_csv_columns_and_figure(table):
    rows, out = table
    with open(out / "sampling.csv") as f:
        reader = csv.DictReader(f)
        assert tuple(reader.fieldnames) == SAMPLING_COLUMNS
        assert [r["method"] for r in reader] == ["dense", "gag"]
    assert (out / "sampling_accuracy.png").stat().st_size > 5_000


def test_dense_is_the_time_reference_and_gag_changes_samples(table):
    rows, _ = table
    dense, gag = rows
    assert dense["seeds"] == gag["seeds"] == 2
    assert dense["time_ratio_mean"] == 1.0 and dense["time_ratio_ci"] == 0.0
    assert gag["fd_mean"] != dense["fd_mean"]


def test_mean_ci_is_student_t():
    """n = 3 values: half-width = t_{0.975, 2} s / sqrt(3) with t_{0.975, 2} = 4.302653 (tables)."""
    x = [0.2, 0.5, 0.6]
    mean, ci = mean_ci(Histogram([0.0, 1.0]).add(x))
    s = torch.tensor(x, dtype=torch.float64).std().item()
    assert mean == pytest.approx(sum(x) / 3) and ci == pytest.approx(4.302653 * s / math.sqrt(3), rel=1e-6)
    assert math.isnan(mean_ci(Histogram([0.0, 1.0]).add([0.5]))[1])
