"""Writes the notebooks 01-06 (thin: each calls hopfield_gag.studies.figures / study functions).

    python notebooks/make_notebooks.py
"""
from pathlib import Path

import nbformat as nbf

HEAD = """import os
from IPython.display import Image, display
from hopfield_gag.studies import figures as F
FAST = F.fast_mode()          # HOPFIELD_GAG_FAST=1: the test setting
OUT = F.figures_dir()         # paper_figures/ (or HOPFIELD_GAG_FIGURES_DIR)
print("fast" if FAST else "full", "->", OUT)"""

NOTEBOOKS = {
    "01_hopfield_energy": (
        "# 01 Hopfield energy\nEnergy contours of the dense (alpha = 1) and alpha-entmax Hopfield energies in "
        "2-D, retrieval trajectories, and basins of attraction (colour = stored pattern the fixed point lands "
        "nearest to). Sparser normalizers (larger alpha) reach a pattern in fewer steps and can split a mixed "
        "basin.",
        ["for p in F.fig_energy(OUT, FAST):\n    display(Image(filename=str(p)))"],
    ),
    "02_beta_regimes": (
        "# 02 beta regimes on digits\nOne retrieval step from noisy 8x8 digits (scikit-learn's bundled set) as "
        "beta grows: the measured error for dense and entmax against the Theorem 5 bound "
        "(`retrieval_error_bound`), and Ramsauer's regime (`beta_regime`).",
        ["for p in F.fig_beta_regimes(OUT, FAST):\n    display(Image(filename=str(p)))"],
    ),
    "03_sparse_vs_dense": (
        "# 03 Sparse vs dense\nMajorization (entmax sharpens softmax), and the geometry of the discrepancy "
        "Delta = s - d: its parallel and perpendicular parts and the coefficient c, on toy tensors and on "
        "digits (Hopfield case v = k).",
        ["for p in F.fig_sparse_dense(OUT, FAST):\n    display(Image(filename=str(p)))"],
    ),
    "04_directional_properties": (
        "# 04 Directional properties\nEach property's margin (>= 0 = holds) as the score scale varies, and the "
        "worst counterexample found per property.",
        ["for p in F.fig_directional(OUT, FAST):\n    display(Image(filename=str(p)))",
         "for prop, (margin, beta) in F.fig_directional.counterexamples.items():\n"
         "    print(f'{prop:>18}: worst margin {margin:+.3g} at beta = {beta:.3g}')"],
    ),
    "05_anderson": (
        "# 05 Anderson\nExtrapolation as AA(1): PLADIS is one AA(1) step with gamma = 1 - lambda; GAG's "
        "effective gamma; the AA-adaptive scale. Then `study_acceleration`: iterations to tolerance of every "
        "method in the three beta regimes.",
        ["for p in F.fig_anderson(OUT, FAST):\n    display(Image(filename=str(p)))",
         "from hopfield_gag.studies import AccelerationConfig, ACCELERATION_COLUMNS, study_acceleration\n"
         "from hopfield_gag.studies._io import format_table\n"
         "from IPython.display import Markdown\n"
         "cfg = AccelerationConfig.fast() if FAST else AccelerationConfig()\n"
         "rows = study_acceleration(cfg, OUT)\n"
         "display(Image(filename=str(OUT / 'acceleration_curves.png')))\n"
         "display(Markdown(format_table(rows, ACCELERATION_COLUMNS[:8])))"],
    ),
    "06_gag_real_model": (
        "# 06 GAG on a real model\nSamples of the shipped digits DiT under each attention method, the few-step "
        "sampling study (judge accuracy with 95% CIs over seeds), and the theory margins per layer from a "
        "capture of the model (`study_directional`). If the shipped weights are absent the figures say "
        "UNTRAINED.",
        ["for p in F.fig_samples_grid(OUT, FAST):\n    display(Image(filename=str(p)))",
         "for p in F.fig_sampling(OUT, FAST):\n    display(Image(filename=str(p)))\n"
         "import csv\nprint(open(OUT / 'sampling.csv').read())",
         "for p in F.fig_directional_store(OUT, FAST):\n    display(Image(filename=str(p)))"],
    ),
}


def main():
    here = Path(__file__).parent
    for name, (md, cells) in NOTEBOOKS.items():
        nb = nbf.v4.new_notebook()
        nb.cells = [nbf.v4.new_markdown_cell(md), nbf.v4.new_code_cell(HEAD)]
        nb.cells += [nbf.v4.new_code_cell(c) for c in cells]
        nb.metadata["kernelspec"] = {"name": "python3", "display_name": "Python 3", "language": "python"}
        nbf.write(nb, here / f"{name}.ipynb")


if __name__ == "__main__":
    main()
