"""The package's shape: the public API stays, `import hopfield_gag` stays light, and layers import only
downward."""
from __future__ import annotations

import ast
import importlib
import re
import subprocess
import sys
from pathlib import Path

import pytest

import hopfield_gag
import hopfield_gag._layers

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

# data flows one way: a module may import only its own layer or lower ones; the numbering lives in one place
LAYERS = {name: number for name, number, _ in hopfield_gag._layers.LAYERS}
SUBPACKAGES = sorted(n for n in LAYERS if (PACKAGE / n / "__init__.py").exists())


def _root_layer(root: Path = PACKAGE) -> int:
    """The package root re-exports names from several layers: importing it counts as its highest import."""
    targets = [t for _, t in _imports(root / "__init__.py", root=root)]
    return max((LAYERS[t[0]] for t in targets if t and t[0] in LAYERS), default=0)


def _layer(parts: tuple[str, ...], root: Path = PACKAGE):
    """Layer of an import target inside the package: a layer module, or the root itself (``import hopfield_gag``,
    ``from hopfield_gag import name``, ``from .. import name`` of a re-exported name)."""
    if parts and parts[0] == "symbolic":  # the root's lazy alias of theory.symbolic
        return LAYERS["theory"]
    if parts and parts[0] in LAYERS:
        return LAYERS[parts[0]]
    if len(parts) <= 1:
        return _root_layer(root)
    return None


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
        here = LAYERS.get(rel[0])
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


def test_root_imports_count_as_the_roots_highest_layer(tmp_path):
    """`import hopfield_gag` or `from .. import name` inside the package imports everything the root re-exports."""
    (tmp_path / "theory").mkdir()
    (tmp_path / "__init__.py").write_text("from .guidance import gag_attention\nfrom .ops import entmax\n")
    probe = tmp_path / "theory" / "probe.py"
    probe.write_text("import hopfield_gag\nfrom .. import gag_attention\nfrom hopfield_gag import entmax\n")
    targets = [t for _, t in _imports(probe, root=tmp_path)]
    assert targets == [(), ("gag_attention",), ("entmax",)]
    assert [_layer(t, root=tmp_path) for t in targets] == [LAYERS["guidance"]] * 3
    assert _root_layer(PACKAGE) >= LAYERS["guidance"]


def _stated_layer(doc: str):
    m = re.match(r"\s*(?:r?)Layer (\d+), ", doc or "")
    return int(m.group(1)) if m else None


@pytest.mark.parametrize("name", SUBPACKAGES)
def test_subpackage_docstring_states_its_layer(name):
    module = importlib.import_module(f"hopfield_gag.{name}")
    assert _stated_layer(module.__doc__) == LAYERS[name], (
        f"hopfield_gag.{name}'s docstring must start with 'Layer {LAYERS[name]}, ' (hopfield_gag/_layers.py)")


def test_package_docstring_and_readme_agree_with_the_layer_table():
    stated_doc = {name: int(n) for n, name in re.findall(r"^(\d+)\s+``(\w+)``", hopfield_gag.__doc__, flags=re.M)}
    readme = (PACKAGE.parent / "README.md").read_text()
    stated_readme = {name: int(n) for n, name in re.findall(r"^\| (\d+) \| `hopfield_gag\.(\w+)`", readme, flags=re.M)}
    expected = {name: LAYERS[name] for name in SUBPACKAGES}
    assert stated_doc  # the table is there at all
    assert stated_doc == expected, "hopfield_gag/__init__.py's layer table disagrees with hopfield_gag/_layers.py"
    assert stated_readme == expected, "README's layer table disagrees with hopfield_gag/_layers.py"
