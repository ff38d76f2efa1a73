"""The package's layers, numbered once.

Data flows one way: a module may import only modules of its own layer or of lower-numbered layers. This table
is the single statement of the numbering; ``tests/test_layout.py`` enforces the imports against it and checks
that each subpackage's docstring (``"Layer N, ..."``), the package docstring and the README's layer table say
the same numbers. The package root re-exports names from several layers, so importing the root from inside the
package counts as importing the highest layer the root itself imports.
"""
from __future__ import annotations

__all__ = ["LAYERS", "layer_of"]

# (top-level name inside hopfield_gag, layer number, what it holds)
LAYERS: tuple[tuple[str, int, str], ...] = (
    ("_validation", 0, "argument checks shared by every layer"),
    ("_layers", 0, "this table"),
    ("ops", 1, "exact normalizers (softmax, sparsemax, alpha-entmax), the parameter object and codes, the CPU "
               "and Triton kernels, the combine rule"),
    ("hopfield", 2, "Hopfield dynamics (energies, retrieval, fixed points) and Ramsauer's diagnostics"),
    ("solvers", 3, "Anderson acceleration; plain iteration is depth 0"),
    ("theory", 3, "sparse-dense discrepancy, property margins, certificates, the GAG map, symbolic identities"),
    ("guidance", 4, "gag_attention, the AA(1) readings, the joint (MMDiT) rule, the float64 oracle"),
    ("adapters", 5, "attention calls of real models handed to attention functions; apply_gag, hooks, guiders"),
    ("capture", 5, "attention q/k/v of real models into a crash-safe ActivationStore"),
    ("models", 6, "the shipped diffusion models, their sampling, the judges, the demo"),
    ("studies", 7, "map-reduce studies over stores and seeds, the figures"),
    ("selfcheck", 8, "the numerical self-check battery"),
    ("cli", 9, "the hopfield-gag command line"),
)

_BY_NAME = {name: number for name, number, _ in LAYERS}


def layer_of(name: str) -> int | None:
    """Layer number of the top-level module or subpackage ``name`` of ``hopfield_gag`` (``None`` if unknown)."""
    return _BY_NAME.get(name)
