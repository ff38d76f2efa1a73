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
    "gag_zeta1_is_pladis",
    "gag_zeta0_is_radial",
    "gag_lambda0_is_sparse",
    "parallel_perp_orthogonal",
    "basin_alignment_identity",
    "dense_energy_gradient",
    "softmax_two_key",
    "entmax15_two_key",
    "sharpening_ratio_derivative",
    "entmax_alpha_derivative",
    "all_identities",
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


# --------------------------------------------------------------------------------------------
# GAG algebra (THEORY.md, "Exact algebra"); numeric checks run the library's combine
# --------------------------------------------------------------------------------------------
def _gag_symbols(dim: int):
    s, d = _vec("s", dim), _vec("d", dim)
    lam, zeta = sp.symbols("lam zeta", real=True)
    ss = _dot(s, s)
    delta = s - d
    c = _dot(delta, s) / ss
    d_par = c * s
    d_perp = delta - d_par
    return s, d, lam, zeta, delta, c, d_par, d_perp


def _library_check(formula: Callable, n: int, seed: int, **gag_kwargs) -> float:
    """Max |combine("gag", d, s, **kw).output - formula(d, s, c)| on random float64 vectors, with c the
    library's own parallel coefficient (float64: see ``_NUMERIC_TOL``)."""
    import torch

    from ..ops.combine import combine

    g = torch.Generator().manual_seed(seed)
    d = torch.randn(n, 5, generator=g, dtype=torch.float64)
    s = torch.randn(n, 5, generator=g, dtype=torch.float64)
    r = combine("gag", d, s, **gag_kwargs)
    return float((r.output - formula(d, s, r.parallel_coef.unsqueeze(-1))).abs().max())


def gag_zeta1_is_pladis(dim: int = 3) -> SymbolicIdentity:
    r"""Uncapped GAG with :math:`\zeta = 1` is PLADIS with scale :math:`\lambda' = \lambda + 1`.

    .. math::  s + \lambda(\Delta_\parallel + \Delta_\perp) = s + \lambda\Delta = d + (\lambda + 1)(s - d).

    Numeric check: :func:`hopfield_gag.ops.combine.combine` (``method="gag"``) with ``zeta=1, eta=None``.
    """
    s, d, lam, zeta, delta, c, d_par, d_perp = _gag_symbols(dim)
    lhs = s + lam * (d_par + 1 * d_perp)
    rhs = d + (lam + 1) * (s - d)
    err = _library_check(lambda d_, s_, c_: d_ + (2.5 + 1) * (s_ - d_), 64, 10, lam=2.5, eta=None, zeta=1.0)
    return SymbolicIdentity(
        name="gag_zeta1_is_pladis",
        statement="zeta = 1, no cap: s + lam (Delta_par + Delta_perp) == d + (lam + 1)(s - d)",
        lhs=lhs, rhs=rhs, expressions={"lam_pladis": lam + 1},
        symbolic_holds=_is_zero(lhs - rhs), numeric_max_error=err, n_numeric_cases=64,
    )


def gag_zeta0_is_radial(dim: int = 3) -> SymbolicIdentity:
    r"""Uncapped GAG with :math:`\zeta = 0` is the radial rescaling :math:`(1 + \lambda c)s`.

    With the cap active (:math:`|c|\lVert s\rVert > \eta`) the output is
    :math:`(1 + \lambda\,\mathrm{sign}(c)\,\eta/\lVert s\rVert)s`: the direction is always that of
    :math:`s` (paper.md §3.3). Numeric check: ``combine("gag", ...)`` with ``zeta=0``, uncapped and capped.
    """
    s, d, lam, zeta, delta, c, d_par, d_perp = _gag_symbols(dim)
    lhs = s + lam * d_par
    rhs = (1 + lam * c) * s
    err = _library_check(lambda d_, s_, c_: (1 + 3.0 * c_) * s_, 64, 11, lam=3.0, eta=None, zeta=0.0)

    def capped(d_, s_, c_):
        import torch

        sn = s_.norm(dim=-1, keepdim=True)
        gain = torch.where(c_.abs() * sn > 0.1, 3.0 * torch.sign(c_) * 0.1 / sn, 3.0 * c_)
        return (1 + gain) * s_

    err = max(err, _library_check(capped, 64, 12, lam=3.0, eta=0.1, zeta=0.0))
    return SymbolicIdentity(
        name="gag_zeta0_is_radial",
        statement="zeta = 0, no cap: s + lam Delta_par == (1 + lam c) s; capped: (1 + lam sign(c) eta/||s||) s",
        lhs=lhs, rhs=rhs, expressions={"c": c, "gain": 1 + lam * c},
        symbolic_holds=_is_zero(lhs - rhs), numeric_max_error=err, n_numeric_cases=128,
    )


def gag_lambda0_is_sparse(dim: int = 3) -> SymbolicIdentity:
    r""":math:`\lambda = 0` gives the sparse output :math:`s` (not the dense one), for every :math:`\zeta`
    and :math:`\eta`: GAG at zero strength is PLADIS at :math:`\lambda' = 1`, not a no-op."""
    s, d, lam, zeta, delta, c, d_par, d_perp = _gag_symbols(dim)
    eta = sp.Symbol("eta", positive=True)
    g = d_par + zeta * d_perp
    capped = g * sp.Min(1, eta / sp.sqrt(_dot(g, g)))
    lhs = (s + lam * capped).subs(lam, 0)
    rhs = s
    err = _library_check(lambda d_, s_, c_: s_, 64, 13, lam=0.0, eta=0.5, zeta=0.3)
    return SymbolicIdentity(
        name="gag_lambda0_is_sparse",
        statement="lam = 0: s + 0 * cap_eta(Delta_par + zeta Delta_perp) == s",
        lhs=lhs, rhs=rhs, symbolic_holds=_is_zero(lhs - rhs), numeric_max_error=err, n_numeric_cases=64,
    )


def parallel_perp_orthogonal(dim: int = 3) -> SymbolicIdentity:
    r""":math:`\Delta_\parallel \perp \Delta_\perp` and :math:`\Delta_\parallel + \Delta_\perp = \Delta`
    (orthogonal decomposition relative to the retrieval direction :math:`s`).

    Numeric check: :func:`hopfield_gag.theory.sparse_dense_discrepancy` on random attention inputs.
    """
    s, d, lam, zeta, delta, c, d_par, d_perp = _gag_symbols(dim)
    lhs = sp.Matrix([_dot(d_par, d_perp), *list(d_par + d_perp - delta)])
    rhs = sp.zeros(dim + 1, 1)
    import torch

    from .discrepancy import sparse_dense_discrepancy

    g = torch.Generator().manual_seed(14)
    q = torch.randn(4, 8, 6, generator=g, dtype=torch.float64)
    k = torch.randn(4, 9, 6, generator=g, dtype=torch.float64)
    v = torch.randn(4, 9, 5, generator=g, dtype=torch.float64)
    r = sparse_dense_discrepancy(q, k, v, scale=1.0)
    err = float(torch.maximum(
        (r.delta_parallel * r.delta_perp).sum(-1).abs().max(),
        (r.delta_parallel + r.delta_perp - r.delta).abs().max(),
    ))
    return SymbolicIdentity(
        name="parallel_perp_orthogonal",
        statement="<Delta_par, Delta_perp> == 0 and Delta_par + Delta_perp == Delta",
        lhs=lhs, rhs=rhs, symbolic_holds=_is_zero(lhs - rhs), numeric_max_error=err, n_numeric_cases=32,
    )


def basin_alignment_identity(dim: int = 3) -> SymbolicIdentity:
    r"""Polarization identity behind P-align (basin), THEORY.md T4:

    .. math::  \lVert x^\star - s\rVert^2 = \lVert x^\star - d\rVert^2 - 2\langle\Delta, x^\star - d\rangle
               + \lVert\Delta\rVert^2,

    so :math:`\langle\Delta, x^\star - d\rangle \ge 0 \iff \lVert x^\star - s\rVert^2 \le
    \lVert x^\star - d\rVert^2 + \lVert\Delta\rVert^2`.
    """
    s, d, x = _vec("s", dim), _vec("d", dim), _vec("x", dim)
    delta = s - d
    lhs = _dot(x - s, x - s)
    rhs = _dot(x - d, x - d) - 2 * _dot(delta, x - d) + _dot(delta, delta)
    syms = list(s) + list(d) + list(x)
    err = _numeric_check(lhs, rhs, syms, _gaussian_sampler(syms), 50, 15)
    return SymbolicIdentity(
        name="basin_alignment_identity",
        statement="||x - s||^2 == ||x - d||^2 - 2 <s - d, x - d> + ||s - d||^2",
        lhs=lhs, rhs=rhs, symbolic_holds=_is_zero(lhs - rhs), numeric_max_error=err, n_numeric_cases=50,
    )


def dense_energy_gradient(dim: int = 2, n_patterns: int = 3) -> SymbolicIdentity:
    r""":math:`\nabla E(\xi) = \xi - T_d(\xi)` for Ramsauer's dense energy
    :math:`E(\xi) = -\beta^{-1}\log\sum_j e^{\beta x_j^\top\xi} + \tfrac12\lVert\xi\rVert^2 + C`.

    Symbolic: ``sympy.diff`` of the energy in components. Numeric: the library's
    :func:`hopfield_gag.hopfield.energy_grad` against autograd of :func:`hopfield_gag.hopfield.energy`
    and against the lambdified sympy gradient.
    """
    xi = _vec("xi", dim)
    X = sp.Matrix(n_patterns, dim, lambda j, k: sp.Symbol(f"x{j + 1}_{k + 1}", real=True))
    beta = sp.Symbol("beta", positive=True)
    scores = [beta * (X[j, :] * xi)[0, 0] for j in range(n_patterns)]
    Z = sum(sp.exp(a) for a in scores)
    E = -sp.log(Z) / beta + _dot(xi, xi) / 2
    grad = sp.Matrix([sp.diff(E, xi[k]) for k in range(dim)])
    T = sp.zeros(dim, 1)
    for j in range(n_patterns):
        T += (sp.exp(scores[j]) / Z) * X[j, :].T
    rhs = xi - T
    symbolic = _is_zero(grad - rhs)

    import torch

    from ..hopfield.dynamics import energy, energy_grad

    g = torch.Generator().manual_seed(16)
    f = sp.lambdify(list(xi) + list(X) + [beta], grad, "numpy")
    worst = 0.0
    n = 20
    for _ in range(n):
        x0 = torch.randn(dim, generator=g, dtype=torch.float64, requires_grad=True)
        P = torch.randn(n_patterns, dim, generator=g, dtype=torch.float64)
        b = float(torch.rand((), generator=g, dtype=torch.float64) * 4 + 0.1)
        (auto,) = torch.autograd.grad(energy(x0, P, b), x0)
        lib = energy_grad(x0.detach(), P, b)
        sym = torch.tensor(np.asarray(f(*x0.detach().tolist(), *P.flatten().tolist(), b), dtype=np.float64).ravel())
        worst = max(worst, float((lib - auto).abs().max()), float((lib - sym).abs().max()))
    return SymbolicIdentity(
        name="dense_energy_gradient",
        statement="d/dxi [-beta^-1 log sum_j exp(beta x_j.xi) + xi.xi/2] == xi - X^T softmax(beta X xi)",
        lhs=grad, rhs=rhs, expressions={"energy": E},
        symbolic_holds=symbolic, numeric_max_error=worst, n_numeric_cases=n,
    )


def softmax_two_key() -> SymbolicIdentity:
    r""":math:`\mathrm{softmax}([t, 0])_1 = 1/(1 + e^{-t})` (the logistic sigmoid); numeric check against
    :func:`hopfield_gag.ops.normalizers.softmax`."""
    t = sp.Symbol("t", real=True)
    lhs = sp.exp(t) / (sp.exp(t) + sp.exp(0))
    rhs = 1 / (1 + sp.exp(-t))
    import torch

    from ..ops.normalizers import softmax

    ts = torch.linspace(-30, 30, 121, dtype=torch.float64)
    p = softmax(torch.stack([ts, torch.zeros_like(ts)], -1))[:, 0]
    err = float((p - torch.sigmoid(ts)).abs().max())
    return SymbolicIdentity(
        name="softmax_two_key", statement="softmax([t, 0])_1 == 1 / (1 + exp(-t))",
        lhs=lhs, rhs=rhs, symbolic_holds=_is_zero(lhs - rhs), numeric_max_error=err, n_numeric_cases=121,
    )


def entmax15_two_key() -> SymbolicIdentity:
    r"""Closed form of 1.5-entmax on two keys:

    .. math::  \text{1.5-entmax}([t, 0])_1 = \Big(\frac{t + \sqrt{8 - t^2}}{4}\Big)^2 \quad (|t| \le 2),

    1 for :math:`t \ge 2` and 0 for :math:`t \le -2`. Derivation: :math:`p = [z/2 - \tau]_+^2`; with both
    keys in the support, :math:`a = t/2 - \tau`, :math:`b = -\tau`, :math:`a - b = t/2`,
    :math:`a^2 + b^2 = 1`. Symbolic: :math:`a^2 + b^2 = 1` with :math:`a = (t + \sqrt{8-t^2})/4`,
    :math:`b = a - t/2 = (\sqrt{8-t^2} - t)/4 \ge 0` for :math:`|t| \le 2`, and :math:`b = 0` at
    :math:`t = 2`. Numeric: :func:`hopfield_gag.ops.normalizers.entmax` on a grid of :math:`t \in [-3, 3]`.
    """
    t = sp.Symbol("t", real=True)
    a = (t + sp.sqrt(8 - t**2)) / 4
    b = a - t / 2
    lhs = a**2 + b**2
    rhs = sp.Integer(1)
    symbolic = _is_zero(lhs - rhs) and _is_zero(b.subs(t, 2)) and _is_zero(a.subs(t, -2))
    # b >= 0 on [-2, 2]: b = (sqrt(8 - t^2) - t)/4 and 8 - t^2 >= t^2 there
    symbolic = symbolic and bool(sp.solveset(b < 0, t, sp.Interval(-2, 2)) == sp.EmptySet)
    import torch

    from ..ops.normalizers import entmax

    ts = torch.linspace(-3, 3, 241, dtype=torch.float64)
    p = entmax(torch.stack([ts, torch.zeros_like(ts)], -1), 1.5)[:, 0]
    closed = torch.where(
        ts.abs() <= 2, ((ts + torch.sqrt((8 - ts**2).clamp_min(0))) / 4) ** 2, (ts > 0).to(ts.dtype)
    )
    err = float((p - closed).abs().max())
    return SymbolicIdentity(
        name="entmax15_two_key",
        statement="1.5-entmax([t, 0])_1 == ((t + sqrt(8 - t^2))/4)^2 for |t| <= 2",
        lhs=lhs, rhs=rhs, expressions={"p1": a**2, "p2": b**2, "tau": -b},
        symbolic_holds=symbolic, numeric_max_error=err, n_numeric_cases=241,
    )


def sharpening_ratio_derivative() -> SymbolicIdentity:
    r"""Key step of THEORY.md T1 (entmax majorizes softmax): on the support, with :math:`r = \alpha - 1`,

    .. math::  \frac{d}{dz}\Big[\log\frac{p_s(z)}{p_d(z)}\Big]
               = \frac{d}{dz}\Big[\tfrac1r\log(rz - \tau) - z\Big] = \frac{1}{rz - \tau} - 1
               = p_s(z)^{-r} - 1 \;\ge 0,

    since :math:`p_s \le 1`. Numeric check: :math:`\log(p_s/p_d)` is non-decreasing in :math:`z_j` over the
    support on random score vectors (library normalizers).
    """
    z, tau = sp.symbols("z tau", real=True)
    r = sp.Symbol("r", positive=True)
    h = sp.log(r * z - tau) / r - z
    lhs = sp.diff(h, z)
    rhs = 1 / (r * z - tau) - 1
    import torch

    from ..ops.normalizers import normalize

    g = torch.Generator().manual_seed(17)
    zz = torch.randn(200, 12, generator=g, dtype=torch.float64) * 3
    worst = 0.0
    for alpha in (1.25, 1.5, 2.0, 3.0):
        ps, pd = normalize(zz, alpha), normalize(zz, 1.0)
        zs, idx = zz.sort(-1)
        ratio = torch.log(ps.gather(-1, idx)) - torch.log(pd.gather(-1, idx))  # -inf off the support
        on = torch.isfinite(ratio)
        inc = ratio[..., 1:] - ratio[..., :-1]
        both = on[..., 1:] & on[..., :-1]
        # a decrease on the support would be a violation; report its size as the numeric error
        worst = max(worst, float(torch.where(both, (-inc).clamp_min(0), torch.zeros_like(inc)).max()))
    return SymbolicIdentity(
        name="sharpening_ratio_derivative",
        statement="d/dz [log(r z - tau)/r - z] == 1/(r z - tau) - 1 (= p_s^{-r} - 1 >= 0)",
        lhs=lhs, rhs=rhs, symbolic_holds=_is_zero(lhs - rhs), numeric_max_error=worst, n_numeric_cases=800,
    )


def entmax_alpha_derivative() -> SymbolicIdentity:
    r"""Key step of THEORY.md T2 (majorization is monotone in :math:`\alpha`): with :math:`r = \alpha - 1`,
    :math:`u_i = r z_i - \tau(r) = p_i^r` on the support and :math:`\tau' = d\tau/dr`,

    .. math::  \frac{\partial\log p_i}{\partial r} = \frac1{r^2} - \frac{\log p_i}{r} + \kappa\,p_i^{-r},
               \qquad \kappa = \frac{\tau - r\tau'}{r^2}.

    Normalization :math:`\sum_i\partial p_i/\partial r = 0` then gives :math:`\kappa = -(1/r^2 + H/r)/\sum_i
    p_i^{1-r} < 0` (:math:`H` the Shannon entropy). Numeric check: finite differences in
    :math:`\alpha` of the library entmax against this formula (with :math:`\kappa` from the normalization).
    """
    r, u = sp.symbols("r u", positive=True)
    tau, dtau, z = sp.symbols("tau dtau z", real=True)
    U = r * z - tau
    dlogp = (-sp.log(U) / r**2 + (z - dtau) / (r * U)).subs(z, (u + tau) / r)
    kappa = (tau - r * dtau) / r**2
    rhs = 1 / r**2 - (sp.log(u) / r) / r + kappa / u  # log p = log(u)/r, p^{-r} = 1/u
    lhs = dlogp
    import torch

    from ..ops.normalizers import entmax

    g = torch.Generator().manual_seed(18)
    zz = torch.randn(50, 6, generator=g, dtype=torch.float64)
    worst = 0.0
    h = 1e-6
    for alpha in (1.3, 1.5, 2.0, 2.5):
        rr = alpha - 1
        p = entmax(zz, alpha, method="bisect")
        fd = (entmax(zz, alpha + h, method="bisect") - entmax(zz, alpha - h, method="bisect")) / (2 * h)
        on = p > 1e-3  # away from support changes, where the derivative is one-sided
        logp = torch.where(p > 0, torch.log(p.clamp_min(1e-300)), torch.zeros_like(p))
        H = -(p * logp).sum(-1, keepdim=True)
        A = torch.where(p > 0, p ** (1 - rr), torch.zeros_like(p)).sum(-1, keepdim=True)
        kap = -(1 / rr**2 + H / rr) / A
        pred = p * (1 / rr**2 - logp / rr + kap * p.clamp_min(1e-300) ** (-rr))
        keep = on.all(-1, keepdim=True) | (p == 0)
        worst = max(worst, float(torch.where(keep & (p > 0), (fd - pred).abs(), torch.zeros_like(p)).max()))
    # central differences of bisection output: truncation O(h^2) + rounding ~ 1e-16/h = 1e-10
    return SymbolicIdentity(
        name="entmax_alpha_derivative",
        statement="d log p_i / d r == 1/r^2 - log(p_i)/r + kappa p_i^{-r}, kappa = (tau - r tau')/r^2",
        lhs=lhs, rhs=rhs, expressions={"kappa": kappa},
        symbolic_holds=_is_zero(lhs - rhs), numeric_max_error=worst, numeric_tolerance=1e-6,
        n_numeric_cases=200,
    )


def all_identities() -> list[SymbolicIdentity]:
    """Run every identity of this module (for reports and THEORY.md)."""
    fns = [
        aa1_mixing_closed_form, pladis_as_aa1, gag_as_aa1, gag_zeta1_is_pladis, gag_zeta0_is_radial,
        gag_lambda0_is_sparse, parallel_perp_orthogonal, basin_alignment_identity, dense_energy_gradient,
        softmax_two_key, entmax15_two_key, sharpening_ratio_derivative, entmax_alpha_derivative,
    ]
    return [f() for f in fns]
