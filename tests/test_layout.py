"""The package's shape: the public API stays, `import hopfield_gag` stays light, and layers import only
downward."""
from __future__ import annotations

import ast
import subprocess
import sys
from pathlib import Path

import pytest

import hopfield_gag

PACKAGE = Path(hopfield_gag.__file__).resolve().parent

# Every name `hopfield_gag/__init__.py` exported before the layout by layer (commit beb2cdd), plus the lazy
# `symbolic`. They must keep resolving from the top level (issue 8, item 7).
PUBLIC_BEFORE_LAYOUT = [
    "AA1Extrapolation", "AdaptiveScale", "AndersonResult", "AndersonSolver", "AndersonState", "AndersonStatus",
    "BetaRegime", "CapacityBound", "Entmax", "FixedPointResult", "GAGAttention", "GAGParts", "GagContractionBound",
    "LipschitzEstimate", "Normalize", "Softmax", "SparseDenseDiscrepancy", "Sparsemax", "aa1_mixing",
    "aa_adaptive_scale", "aa_scale_from_retrievals", "anderson", "basin_alignment_margin", "beta_regime",
    "capacity_constant", "consistency_margin", "crossing_certificate", "descent_margin", "energy", "energy_grad",
    "entmax", "exact_retrieval_margin", "extrapolation_as_aa", "fixed_point", "gag_attention",
    "gag_contraction_bound", "gag_map", "gag_output", "gag_update", "jacobian_vector_product", "jacobian_weights",
    "lipschitz_estimate", "majorization_margin", "metastability_class", "metastability_count", "noise_floor",
    "norm_cap", "normalize", "parallel_certificate", "parallel_margin", "query_alignment_margin",
    "reference_gag_attention", "retrieval_error_bound", "retrieval_jacobian", "retrieval_map", "retrieval_weights",
    "separation", "sharpening_margin", "softmax", "sparse_dense_discrepancy", "sparsemax", "storage_capacity",
    "stored_pattern_error_bound", "tsallis_conjugate", "tsallis_entropy",
]
# names added by the one-home work (issue 8)
PUBLIC_NEW = ["combine", "Combined", "SolverResult", "SolverStatus"]


@pytest.mark.parametrize("name", PUBLIC_BEFORE_LAYOUT + PUBLIC_NEW)
def test_public_name_resolves_from_top_level(name):
    obj = getattr(hopfield_gag, name)
    assert obj is not None
    # a public callable or class documents itself (its math and shapes)
    if callable(obj):
        assert (obj.__doc__ or "").strip(), f"hopfield_gag.{name} has no docstring"


def test_old_result_names_are_the_one_result_type():
    H = hopfield_gag
    assert H.AndersonResult is H.FixedPointResult is H.SolverResult
    assert H.AndersonStatus is H.SolverStatus


def test_symbolic_resolves_lazily_and_unknown_names_raise():
    pytest.importorskip("sympy")
    assert hopfield_gag.symbolic.__name__ == "hopfield_gag.theory.symbolic"
    with pytest.raises(AttributeError, match="no attribute 'not_a_name'"):
        hopfield_gag.not_a_name  # noqa: B018


def test_import_is_light():
    """`import hopfield_gag` loads neither sympy nor diffusers nor matplotlib (fresh interpreter)."""
    code = (
        "import sys, hopfield_gag\n"
        "heavy = [m for m in ('sympy', 'diffusers', 'matplotlib', 'transformers') if m in sys.modules]\n"
        "print(','.join(heavy))\n"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True,
                         cwd=PACKAGE.parent)
    assert out.stdout.strip() == "", f"import hopfield_gag pulled in: {out.stdout.strip()}"


# --------------------------------------------------------------------------------------------- layers

# data flows one way: a module may import only its own layer or lower ones (COMMON layout)
LAYERS = {
    "_validation": 0,
    "ops": 1,
    "hopfield": 2,
    "solvers": 3,
    "theory": 3,
    "guidance": 4,
    "adapters": 5,
    "capture": 5,
    "models": 6,
    "studies": 7,
    "selfcheck": 8,
    "cli": 9,
}


def _layer(parts: tuple[str, ...]):
    return LAYERS.get(parts[0]) if parts else None


def _imports(path: Path, root: Path = PACKAGE):
    """(lineno, imported module path inside the package) for every import, at any nesting level."""
    rel = path.relative_to(root).with_suffix("").parts
    pkg = rel[:-1] if rel[-1] != "__init__" else rel[:-1]
    tree = ast.parse(path.read_text())
    for node in ast.walk(tree):
        if isinstance(node, ast.ImportFrom):
            if node.level == 0:
                if node.module and node.module.split(".")[0] == "hopfield_gag":
                    base = tuple(node.module.split(".")[1:])
                else:
                    continue
            else:
                base = pkg[: len(pkg) - (node.level - 1)] + (tuple(node.module.split(".")) if node.module else ())
            if base:
                yield node.lineno, base
            else:  # `from .. import hopfield as H`: the names are the modules
                for a in node.names:
                    yield node.lineno, (a.name,)
        elif isinstance(node, ast.Import):
            for a in node.names:
                if a.name.split(".")[0] == "hopfield_gag":
                    yield node.lineno, tuple(a.name.split(".")[1:])


def test_layers_import_only_downward():
    bad = []
    for path in sorted(PACKAGE.rglob("*.py")):
        rel = path.relative_to(PACKAGE).with_suffix("").parts
        if rel == ("__init__",):
            continue  # the top level re-exports everything
        here = _layer(rel)
        if here is None:
            continue
        for lineno, target in _imports(path):
            there = _layer(target)
            if there is not None and there > here:
                bad.append(f"{path.relative_to(PACKAGE)}:{lineno} imports {'.'.join(target)}")
    assert not bad, "lower layer imports a higher one:\n" + "\n".join(bad)


def test_layer_check_can_fail(tmp_path):
    """The import scanner sees relative, absolute and function-level imports."""
    (tmp_path / "hopfield").mkdir()
    probe = tmp_path / "hopfield" / "probe.py"
    probe.write_text("from ..guidance import x\nimport hopfield_gag.models.y\ndef f():\n    from ..studies import z\n"
                     "from . import dynamics\n")
    targets = sorted(t for _, t in _imports(probe, root=tmp_path))
    assert targets == [("guidance",), ("hopfield",), ("models", "y"), ("studies",)]
    assert [t for t in targets if (_layer(t) or 0) > LAYERS["hopfield"]] == [("guidance",), ("models", "y"),
                                                                                ("studies",)]
