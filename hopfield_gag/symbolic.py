"""Exact algebra behind GAG, PLADIS and AA(1), checked with sympy and by numbers.

Every function returns a :class:`SymbolicIdentity`: the identity's name, a one-line statement, the
sympy expressions involved, whether the symbolic difference simplifies to zero
(``symbolic_holds``), the largest error of a numeric spot check on random float64 inputs
(``numeric_max_error``) and ``holds = symbolic_holds and numeric_max_error <= numeric_tolerance``.

Notation (shared with :mod:`hopfield_gag.theory` and ``THEORY.md``): sparse output ``s``, dense
output ``d``, discrepancy ``Delta = s - d``, parallel coefficient ``c = <Delta, s>/||s||^2``,
``Delta_par = c s``, ``Delta_perp = Delta - Delta_par``; GAG
``o = s + lam * cap_eta(Delta_par + zeta Delta_perp)`` with ``cap_eta(g) = g min(1, eta/||g||)``;
PLADIS ``d + lam_P (s - d)`` (Kim & Sim, arXiv 2503.07677, Eq. 15); AA(1) (Walker & Ni 2011)
``x_{k+1} = g_k - gamma (g_k - g_{k-1})`` with ``gamma = <f_k, f_k - f_{k-1}>/||f_k - f_{k-1}||^2``.

Vectors are written in components (``dim`` symbols each, default 3) so that sympy proves the
identity for every vector of that dimension; the identities are coordinate-free (inner products
only), so ``dim = 3`` already covers the generic case (two vectors span at most a plane, a third
direction exercises the orthogonal complement).
"""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import Callable, Mapping

import numpy as np
import sympy as sp

__all__ = [
    "SymbolicIdentity",
    "aa1_mixing_closed_form",
    "pladis_as_aa1",
    "gag_as_aa1",
]

# float64 spot checks: identities are rational in the inputs; with O(1) random inputs and
# well-conditioned denominators, round-off is a few ulps times the magnitude -> 1e-9 is loose
# enough for any reassociation yet catches any algebraic slip (which gives O(1) errors).
_NUMERIC_TOL = 1e-9


@dataclass(frozen=True)
class SymbolicIdentity:
    """Outcome of one exact identity check.

    Attributes
    ----------
    name : str
        Short identifier (the function name).
    statement : str
        The identity in words/formula, in the notation of ``THEORY.md``.
    lhs, rhs : sympy.Basic
        The two sides that were compared (vectors as ``sympy.Matrix``).
    expressions : Mapping[str, sympy.Basic]
        Further derived expressions (e.g. the closed-form mixing coefficient).
    symbolic_holds : bool
        ``simplify(lhs - rhs) == 0`` (component-wise).
    numeric_max_error : float
        Largest absolute error of the identity on random float64 inputs.
    numeric_tolerance : float
        Tolerance used for the numeric check.
    n_numeric_cases : int
        Number of random cases in the numeric check.
    """

    name: str
    statement: str
    lhs: sp.Basic
    rhs: sp.Basic
    expressions: Mapping[str, sp.Basic] = field(default_factory=dict)
    symbolic_holds: bool = False
    numeric_max_error: float = float("inf")
    numeric_tolerance: float = _NUMERIC_TOL
    n_numeric_cases: int = 0

    @property
    def holds(self) -> bool:
        """True iff the identity holds symbolically and numerically."""
        return bool(self.symbolic_holds) and self.numeric_max_error <= self.numeric_tolerance


# --------------------------------------------------------------------------------------------
# helpers
# --------------------------------------------------------------------------------------------
def _vec(name: str, dim: int) -> sp.Matrix:
    return sp.Matrix(sp.symbols(f"{name}1:{dim + 1}", real=True))


def _dot(a: sp.Matrix, b: sp.Matrix) -> sp.Expr:
    return (a.T * b)[0, 0]


def _is_zero(expr) -> bool:
    """Exact zero test; vectors component-wise. ``cancel`` first (rational functions), then
    ``simplify`` as a fallback (radicals)."""
    items = list(expr) if isinstance(expr, sp.MatrixBase) else [expr]
    for e in items:
        e = sp.cancel(sp.together(e))
        if e != 0 and sp.simplify(e) != 0:
            return False
    return True


def _numeric_check(
    lhs, rhs, symbols, sampler: Callable[[np.random.Generator], Mapping], n: int, seed: int
) -> float:
    """Max |lhs - rhs| over ``n`` random substitutions produced by ``sampler``."""
    f = sp.lambdify(symbols, sp.Matrix([lhs]) - sp.Matrix([rhs]) if not isinstance(lhs, sp.MatrixBase)
                    else lhs - rhs, "numpy")
    rng = np.random.default_rng(seed)
    worst = 0.0
    for _ in range(n):
        vals = sampler(rng)
        out = np.asarray(f(*[vals[s] for s in symbols]), dtype=np.float64)
        worst = max(worst, float(np.max(np.abs(out))))
    return worst


def _gaussian_sampler(symbols):
    def sample(rng):
        return {s: float(rng.standard_normal()) for s in symbols}

    return sample


# --------------------------------------------------------------------------------------------
# Anderson acceleration AA(1)
# --------------------------------------------------------------------------------------------
def aa1_mixing_closed_form(dim: int = 3) -> SymbolicIdentity:
    r"""Closed form of the AA(1) mixing coefficient.

    .. math::
        \gamma^\star = \arg\min_\gamma \lVert f_k - \gamma (f_k - f_{k-1})\rVert^2
                     = \frac{\langle f_k, f_k - f_{k-1}\rangle}{\lVert f_k - f_{k-1}\rVert^2},

    derived by solving :math:`\partial_\gamma\phi = 0` for the quadratic
    :math:`\phi(\gamma) = \sum_i (f_{k,i} - \gamma (f_{k,i} - f_{k-1,i}))^2` in ``dim`` components;
    :math:`\phi'' = 2\lVert f_k - f_{k-1}\rVert^2 \ge 0` makes it the minimiser (Walker & Ni,
    SIAM J. Numer. Anal. 49(4), 2011, Eq. for m = 1).

    Parameters
    ----------
    dim : int
        Number of components of the residual vectors (>= 1).

    Returns
    -------
    SymbolicIdentity
        ``lhs`` = the solved stationary point, ``rhs`` = the inner-product formula;
        ``expressions`` holds ``gamma_star``, ``objective`` and ``second_derivative``.
    """
    if dim < 1:
        raise ValueError(f"dim must be >= 1, got {dim}")
    fk, fkm1 = _vec("f", dim), _vec("g", dim)  # g_i stands for the components of f_{k-1}
    gamma = sp.Symbol("gamma", real=True)
    r = fk - gamma * (fk - fkm1)
    phi = _dot(r, r)
    sols = sp.solve(sp.Eq(sp.diff(phi, gamma), 0), gamma)
    if len(sols) != 1:
        raise RuntimeError(f"expected a unique stationary point, sympy returned {sols}")
    gamma_star = sp.simplify(sols[0])
    df = fk - fkm1
    formula = _dot(fk, df) / _dot(df, df)
    second = sp.expand(sp.diff(phi, gamma, 2))
    symbolic = _is_zero(gamma_star - formula) and _is_zero(second - 2 * _dot(df, df))

    # Numeric: compare the formula with a least-squares solve of min ||f_k - gamma df||.
    rng = np.random.default_rng(0)
    worst = 0.0
    n = 50
    f_formula = sp.lambdify(list(fk) + list(fkm1), gamma_star, "numpy")
    for _ in range(n):
        a, b = rng.standard_normal(dim), rng.standard_normal(dim)
        g_ls = np.linalg.lstsq((a - b)[:, None], a, rcond=None)[0][0]
        worst = max(worst, abs(float(f_formula(*a, *b)) - g_ls))
    return SymbolicIdentity(
        name="aa1_mixing_closed_form",
        statement="argmin_gamma ||f_k - gamma (f_k - f_{k-1})||^2 = <f_k, f_k - f_{k-1}> / ||f_k - f_{k-1}||^2",
        lhs=gamma_star,
        rhs=formula,
        expressions={"gamma_star": gamma_star, "objective": phi, "second_derivative": second},
        symbolic_holds=symbolic,
        numeric_max_error=worst,
        n_numeric_cases=n,
    )


def pladis_as_aa1(dim: int = 3) -> SymbolicIdentity:
    r"""PLADIS is an AA(1) step with the fixed mixing coefficient :math:`\gamma = 1 - \lambda`.

    .. math::
        d + \lambda (s - d) = (1 - \gamma) s + \gamma d = s - \gamma (s - d),
        \qquad \gamma = 1 - \lambda,

    i.e. the AA(1) update :math:`x_{k+1} = g(x_k) - \gamma (g(x_k) - g(x_{k-1}))` with the
    sparse output as the newest image :math:`g(x_k) = s` and the dense output as the previous
    image :math:`g(x_{k-1}) = d`. ``lam > 1`` (PLADIS defaults 1.5, 2.0) means ``gamma < 0``:
    extrapolation beyond the newest image.

    Returns
    -------
    SymbolicIdentity
        ``lhs`` = PLADIS output, ``rhs`` = AA(1) mixing form; ``expressions`` holds ``gamma``
        and the equivalent "newest - gamma * difference" form.
    """
    s, d = _vec("s", dim), _vec("d", dim)
    lam = sp.Symbol("lam", real=True)
    gamma = 1 - lam
    lhs = d + lam * (s - d)
    rhs = (1 - gamma) * s + gamma * d
    newest_minus = s - gamma * (s - d)
    symbolic = _is_zero(lhs - rhs) and _is_zero(lhs - newest_minus)
    syms = list(s) + list(d) + [lam]
    worst = _numeric_check(lhs, rhs, syms, _gaussian_sampler(syms), 50, 1)
    return SymbolicIdentity(
        name="pladis_as_aa1",
        statement="d + lam (s - d) == (1 - gamma) s + gamma d == s - gamma (s - d), gamma = 1 - lam",
        lhs=lhs,
        rhs=rhs,
        expressions={"gamma": gamma, "newest_minus_gamma_difference": newest_minus},
        symbolic_holds=symbolic,
        numeric_max_error=worst,
        n_numeric_cases=50,
    )


def gag_as_aa1(dim: int = 3) -> SymbolicIdentity:
    r"""GAG as an AA(1)-type step with the iterate difference projected on the retrieval direction.

    With :math:`P_s = s s^\top/\lVert s\rVert^2`, :math:`\Delta = s - d`, :math:`c = \langle\Delta,
    s\rangle/\lVert s\rVert^2` and :math:`g = P_s\Delta + \zeta (I - P_s)\Delta`:

    .. math::
        o = s + \lambda\,\mathrm{cap}_\eta(g)
          = s - \gamma\, g, \qquad \gamma = -\lambda \min(1, \eta/\lVert g\rVert).

    Equivalently (exact, proved here): :math:`g = s - \tilde d` with the *modified previous image*
    :math:`\tilde d = P_s d + \zeta (I - P_s) d` (the dense output with its component orthogonal
    to :math:`s` damped by :math:`\zeta`), so GAG is AA(1) on the pair :math:`(g_k, g_{k-1}) =
    (s, \tilde d)` with the fixed coefficient :math:`\gamma = -\lambda` when uncapped,
    :math:`o = (1 - \gamma) s + \gamma \tilde d`. For :math:`\zeta = 0` uncapped this is the
    radial rescaling :math:`o = (1 + \lambda c) s = s - \gamma_s s` with :math:`\gamma_s =
    -\lambda c`. For :math:`\zeta = 1` uncapped, :math:`\tilde d = d` and it is PLADIS with
    :math:`\gamma = -\lambda`, i.e. :math:`\lambda_P = 1 + \lambda`. The cap only rescales the
    coefficient: :math:`\gamma = -\lambda\min(1, \eta/\lVert g\rVert)`, a state-dependent
    mixing coefficient with :math:`|\gamma|\,\lVert g\rVert \le \lambda\eta`. Unlike true AA(1),
    :math:`\gamma` is not the least-squares coefficient of :func:`aa1_mixing_closed_form`.

    Returns
    -------
    SymbolicIdentity
        ``lhs`` = uncapped GAG output ``s + lam (P_s Delta + zeta (I - P_s) Delta)``, ``rhs`` =
        ``(1 - gamma) s + gamma d_tilde`` with ``gamma = -lam``. ``expressions`` holds
        ``gamma_uncapped`` (= -lam), ``gamma_capped`` (= -lam min(1, eta/||g||)),
        ``gamma_radial_zeta0`` (= -lam c), ``d_tilde``, ``c``; further sub-identities (radial
        form at zeta = 0, PLADIS at zeta = 1, capped form) are all part of ``symbolic_holds``.
    """
    s, d = _vec("s", dim), _vec("d", dim)
    lam, zeta = sp.symbols("lam zeta", real=True)
    eta = sp.Symbol("eta", positive=True)
    ss = _dot(s, s)
    delta = s - d
    c = _dot(delta, s) / ss
    d_par = c * s
    d_perp = delta - d_par
    g = d_par + zeta * d_perp
    lhs = s + lam * g
    p_s_d = (_dot(d, s) / ss) * s
    d_tilde = p_s_d + zeta * (d - p_s_d)
    gamma_u = -lam
    rhs = (1 - gamma_u) * s + gamma_u * d_tilde
    ok = _is_zero(lhs - rhs)
    ok &= _is_zero(g - (s - d_tilde))  # difference form
    ok &= _is_zero(lhs.subs(zeta, 0) - (1 + lam * c) * s)  # radial rescaling, gamma_s = -lam c
    ok &= _is_zero(lhs.subs(zeta, 1) - (d + (1 + lam) * (s - d)))  # PLADIS with lam_P = 1 + lam
    # capped: s + lam * g * min(1, eta/|g|) == s - gamma_c g, gamma_c = -lam min(1, eta/|g|)
    gnorm = sp.sqrt(_dot(g, g))
    scale = sp.Min(1, eta / gnorm)
    gamma_c = -lam * scale
    capped = s + lam * (g * scale)
    ok &= _is_zero(capped - (s - gamma_c * g))
    syms = list(s) + list(d) + [lam, zeta]
    worst = _numeric_check(lhs, rhs, syms, _gaussian_sampler(syms), 50, 2)
    # numeric check of the capped coefficient form including the cap being active
    f_c = sp.lambdify(syms + [eta], capped - (s - gamma_c * g), "numpy")
    rng = np.random.default_rng(3)
    for _ in range(50):
        vals = list(rng.standard_normal(len(syms))) + [float(rng.uniform(0.05, 2.0))]
        worst = max(worst, float(np.max(np.abs(np.asarray(f_c(*vals), dtype=np.float64)))))
    return SymbolicIdentity(
        name="gag_as_aa1",
        statement=(
            "s + lam cap_eta(P_s Delta + zeta (I-P_s) Delta) == s - gamma g == (1-gamma) s + gamma d_tilde, "
            "gamma = -lam min(1, eta/||g||), d_tilde = P_s d + zeta (I-P_s) d; zeta=0 uncapped: (1 + lam c) s"
        ),
        lhs=lhs,
        rhs=rhs,
        expressions={
            "gamma_uncapped": gamma_u,
            "gamma_capped": gamma_c,
            "gamma_radial_zeta0": -lam * c,
            "d_tilde": d_tilde,
            "c": c,
            "g": g,
        },
        symbolic_holds=bool(ok),
        numeric_max_error=worst,
        n_numeric_cases=100,
    )
