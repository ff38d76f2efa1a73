"""Exact algebra (hopfield_gag.symbolic): every identity holds symbolically and numerically, and the checker
itself can fail (a wrong identity is reported as not holding)."""
from __future__ import annotations

import numpy as np
import pytest
import sympy as sp

from hopfield_gag.theory import symbolic
from hopfield_gag.theory.symbolic import (
    SymbolicIdentity,
    _is_zero,
    aa1_mixing_closed_form,
    all_identities,
    entmax15_two_key,
    gag_as_aa1,
    pladis_as_aa1,
)

IDENTITIES = [name for name in symbolic.__all__ if name not in ("SymbolicIdentity", "all_identities")]


@pytest.mark.parametrize("name", IDENTITIES)
def test_identity_holds(name):
    res = getattr(symbolic, name)()
    assert isinstance(res, SymbolicIdentity)
    assert res.name == name
    assert res.symbolic_holds, res.statement
    assert res.numeric_max_error <= res.numeric_tolerance, (res.statement, res.numeric_max_error)
    assert res.n_numeric_cases > 0
    assert res.holds


def test_all_identities_runs_every_identity():
    assert sorted(r.name for r in all_identities()) == sorted(IDENTITIES)


def test_checker_rejects_wrong_identities():
    x, y = sp.symbols("x y", real=True)
    assert _is_zero((x + y) ** 2 - x**2 - 2 * x * y - y**2)
    assert not _is_zero((x + y) ** 2 - x**2 - y**2)
    assert not _is_zero(sp.Matrix([0, x / (x + 1) - 1]))
    wrong = SymbolicIdentity("w", "", x, y, symbolic_holds=True, numeric_max_error=1e-3)
    assert not wrong.holds  # numeric failure alone makes it fail


def test_aa1_closed_form_expression():
    res = aa1_mixing_closed_form(dim=2)
    f1, f2, g1, g2 = sp.symbols("f1 f2 g1 g2", real=True)
    expected = (f1 * (f1 - g1) + f2 * (f2 - g2)) / ((f1 - g1) ** 2 + (f2 - g2) ** 2)
    assert _is_zero(res.expressions["gamma_star"] - expected)
    # the objective is minimised (second derivative = 2 ||f_k - f_{k-1}||^2 >= 0)
    assert _is_zero(res.expressions["second_derivative"] - 2 * ((f1 - g1) ** 2 + (f2 - g2) ** 2))
    lam_func = sp.lambdify((f1, f2, g1, g2), res.expressions["gamma_star"])
    a, b = np.array([1.0, 2.0]), np.array([0.5, -1.0])
    assert lam_func(*a, *b) == pytest.approx(np.dot(a, a - b) / np.dot(a - b, a - b), rel=1e-14)
    with pytest.raises(ValueError, match="dim"):
        aa1_mixing_closed_form(dim=0)


def test_pladis_and_gag_coefficients():
    lam = sp.Symbol("lam", real=True)
    assert sp.simplify(pladis_as_aa1().expressions["gamma"] - (1 - lam)) == 0
    gag = gag_as_aa1()
    assert sp.simplify(gag.expressions["gamma_uncapped"] + lam) == 0
    # radial form at zeta = 0: gamma_s = -lam c
    assert sp.simplify(gag.expressions["gamma_radial_zeta0"] + lam * gag.expressions["c"]) == 0


def test_entmax15_two_key_values():
    res = entmax15_two_key()
    t = sp.Symbol("t", real=True)
    p1 = res.expressions["p1"]
    assert sp.nsimplify(p1.subs(t, 0)) == sp.Rational(1, 2)
    assert sp.simplify(p1.subs(t, 2)) == 1
    assert sp.simplify(p1.subs(t, -2)) == 0
