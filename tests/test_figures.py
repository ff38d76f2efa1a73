"""`hopfield-gag figures --fast` produces every figure listed in the index it writes."""
import re

import pytest

from hopfield_gag.cli import main
from hopfield_gag.studies.figures import FIGURES


@pytest.mark.slow
def test_figures_fast_produces_every_indexed_figure(tmp_path, capsys):
    assert main(["figures", "--fast", "--out", str(tmp_path)]) == 0
    index = (tmp_path / "README.md").read_text()
    listed = re.findall(r"\[([^\]]+\.png)\]", index)
    expected = [f for _, files, _, _ in FIGURES for f in files]
    assert sorted(listed) == sorted(expected)
    for name in listed:
        assert (tmp_path / name).stat().st_size > 5_000, name
    printed = capsys.readouterr().out.split()
    assert sorted(p.rsplit("/", 1)[-1] for p in printed) == sorted(expected)


def test_only_restricts_the_run_and_the_index_lists_everything(tmp_path):
    """--only runs one function; the index still lists every figure, marking the ones not generated."""
    assert main(["figures", "--fast", "--out", str(tmp_path), "--only", "fig_anderson"]) == 0
    assert (tmp_path / "05_anderson_aa1.png").exists() and not (tmp_path / "01_energy_basins.png").exists()
    index = (tmp_path / "README.md").read_text()
    assert "01_energy_basins.png" in index and "not yet generated" in index
    assert main(["figures", "--fast", "--out", str(tmp_path), "--only", "fig_nonexistent"]) == 2  # a user error
