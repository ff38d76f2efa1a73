"""Tests of ``hopfield-gag selfcheck`` (hopfield_gag.selfcheck and hopfield_gag.cli)."""
from __future__ import annotations

import io
import math
import subprocess
import sys
import time
from pathlib import Path

import pytest

from hopfield_gag import cli, hopfield, selfcheck
from hopfield_gag.selfcheck import Check, register_check, run_checks, run_selfcheck

REPO = Path(__file__).resolve().parents[1]


@pytest.fixture(scope="module")
def default_run():
    out = io.StringIO()
    start = time.perf_counter()
    status = run_selfcheck(stream=out)
    return status, out.getvalue(), time.perf_counter() - start


def _table_rows(text):
    """Parse the table into {name: (cases, status, margin)}."""
    rows = {}
    for line in text.splitlines():
        parts = line.split()
        if len(parts) == 5 and parts[0] in selfcheck.REGISTRY:
            rows[parts[0]] = (int(parts[1]), parts[2], float(parts[3]))
    return rows


def test_default_battery_passes_in_process(default_run):
    status, text, seconds = default_run
    assert status == 0, text
    header = text.splitlines()[0].split()
    assert header[:5] == ["check", "cases", "status", "worst", "margin"]
    rows = _table_rows(text)
    assert set(rows) == set(selfcheck.REGISTRY)  # every registered check is reported
    for name, (cases, status_text, margin) in rows.items():
        assert cases > 0 and status_text == "pass" and margin >= 0, name
    assert "selfcheck passed" in text
    assert seconds < 30  # the budget on CPU


def test_battery_covers_hopfield_and_normalizers():
    names = set(selfcheck.REGISTRY)
    assert {"normalizer_simplex", "entmax_newton_vs_sort", "normalizer_jacobian_fd"} <= names
    assert {"energy_nonnegative", "energy_descent", "energy_gradient_fd", "convex_hull",
            "retrieval_jacobian_fd", "exact_retrieval_margin", "theorem5_bound", "capacity_constants",
            "fixed_point_retrieval", "global_averaging", "single_pattern_sphere"} <= names


def test_results_are_deterministic_for_a_seed():
    checks = {k: selfcheck.REGISTRY[k] for k in ("energy_descent", "theorem5_bound")}
    a = run_checks(checks, seed=3)
    b = run_checks(checks, seed=3)
    assert [(r.cases, r.worst_margin) for r in a] == [(r.cases, r.worst_margin) for r in b]


def test_cli_module_runs_selfcheck():
    proc = subprocess.run(
        [sys.executable, "-m", "hopfield_gag.cli", "selfcheck"], cwd=REPO, capture_output=True, text=True,
        timeout=120,
    )
    assert proc.returncode == 0, proc.stdout + proc.stderr
    rows = _table_rows(proc.stdout)
    assert set(rows) == set(selfcheck.REGISTRY)
    assert all(status == "pass" for _, status, _ in rows.values())


def test_forced_failure_exit_status_in_process(monkeypatch, capsys):
    monkeypatch.setitem(selfcheck.REGISTRY, "forced_failure", Check("forced_failure", lambda gen: (3, -0.5), "fails"))
    assert cli.main(["selfcheck", "--only", "forced_failure", "--only", "capacity_constants"]) == 1
    out = capsys.readouterr().out
    rows = _table_rows(out)
    assert rows["forced_failure"] == (3, "FAIL", -0.5)
    assert rows["capacity_constants"][1] == "pass"
    assert "selfcheck FAILED: 1 of 2 checks (forced_failure)" in out


def test_forced_failure_exit_status_of_the_process():
    script = (
        "import sys\n"
        "from hopfield_gag import cli, selfcheck\n"
        "selfcheck.register_check('forced_failure')(lambda gen: (1, -1.0))\n"
        "sys.exit(cli.main(['selfcheck', '--only', 'forced_failure', '--only', 'capacity_constants']))\n"
    )
    proc = subprocess.run([sys.executable, "-c", script], cwd=REPO, capture_output=True, text=True, timeout=120)
    assert proc.returncode == 1, proc.stdout + proc.stderr
    assert "FAIL" in proc.stdout and "forced_failure" in proc.stdout


@pytest.mark.parametrize(
    "func, error",
    [
        (lambda gen: (5, math.nan), None),  # NaN margin
        (lambda gen: (0, 1.0), None),  # examined nothing
        (lambda gen: 1 / 0, "ZeroDivisionError"),  # raised
    ],
)
def test_degenerate_checks_fail(func, error):
    registry = {}
    register_check("bad", description="bad", registry=registry)(func)
    out = io.StringIO()
    assert run_selfcheck(registry, stream=out) == 1
    (result,) = run_checks(registry)
    assert not result.passed
    if error:
        assert error in result.error and error in out.getvalue()


def test_checks_detect_a_broken_library(monkeypatch):
    """The battery can fail: a Jacobian off by a factor 2 and a wrong-sign gradient are caught."""
    original_jac = hopfield.retrieval_jacobian
    monkeypatch.setattr(hopfield, "retrieval_jacobian", lambda *a, **k: 2 * original_jac(*a, **k))
    original_grad = hopfield.energy_grad
    monkeypatch.setattr(hopfield, "energy_grad", lambda *a, **k: -original_grad(*a, **k))
    names = ("retrieval_jacobian_fd", "energy_gradient_fd", "energy_descent")
    results = {r.name: r for r in run_checks({k: selfcheck.REGISTRY[k] for k in names})}
    assert not results["retrieval_jacobian_fd"].passed
    assert not results["energy_gradient_fd"].passed
    assert results["energy_descent"].passed  # untouched claim still holds


def test_register_check_rejects_duplicates_and_uses_docstring():
    registry = {}

    @register_check("x", registry=registry)
    def _x(gen):
        """First line.

        More."""
        return 1, 0.0

    assert registry["x"].description == "First line."
    with pytest.raises(ValueError, match="already registered"):
        register_check("x", registry=registry)(_x)


def test_cli_list_and_unknown_check(capsys):
    assert cli.main(["selfcheck", "--list"]) == 0
    listed = capsys.readouterr().out
    assert all(name in listed for name in selfcheck.REGISTRY)
    assert cli.main(["selfcheck", "--only", "no_such_check"]) == 2
    assert "unknown check" in capsys.readouterr().err


def test_cli_requires_a_command(capsys):
    assert cli.main([]) == 2
    assert "required: <command>" in capsys.readouterr().err


def test_theory_and_attention_checks_are_registered_and_can_fail(monkeypatch):
    from hopfield_gag import theory
    from hopfield_gag.guidance import attention
    from hopfield_gag.selfcheck import checks_theory

    names = {"p_sharpen_majorization", "p_align_query", "gag_deviation_bound", "gag_attention_vs_oracle",
             "symbolic_identities"}
    assert names <= set(selfcheck.REGISTRY)
    checks = [selfcheck.REGISTRY[n] for n in ("gag_deviation_bound", "gag_attention_vs_oracle")]
    assert all(r.passed for r in selfcheck.run_checks(checks))
    # GAG without its cap leaves the lam*eta ball; a fast op that drops the strength blend leaves the oracle
    uncapped = theory.gag_output
    monkeypatch.setattr(theory, "gag_output", lambda d, s, lam, eta, zeta=0.0: uncapped(d, s, lam, None, zeta))
    real_op = attention.gag_attention
    monkeypatch.setattr(checks_theory, "gag_attention", lambda q, k, v, **kw: real_op(q, k, v, **{**kw, "strength": 1.0}))
    assert [r.passed for r in selfcheck.run_checks(checks)] == [False, False]
