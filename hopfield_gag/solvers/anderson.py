r"""Anderson acceleration (AA) of batched fixed-point maps; plain iteration is depth 0.

Anderson acceleration (Walker & Ni 2011) solves :math:`x = g(x)` from the residuals
:math:`f_i = g(x_i) - x_i`. With depth :math:`m`, :math:`m_k = \min(m, k)` and the difference matrices

.. math::

    \mathcal X_k = [\Delta x_{k-m_k}, \dots, \Delta x_{k-1}], \quad
    \mathcal F_k = [\Delta f_{k-m_k}, \dots, \Delta f_{k-1}], \quad
    \Delta x_i = x_{i+1} - x_i,\ \Delta f_i = f_{i+1} - f_i,

each step is (damping :math:`\beta \in (0, 1]`)

.. math::

    x_{k+1} = x_k + \beta f_k - (\mathcal X_k + \beta\mathcal F_k)\,\gamma^{(k)}, \qquad
    \gamma^{(k)} =
    \begin{cases}
      \arg\min_\gamma \lVert f_k - \mathcal F_k\gamma\rVert_2
        = (\mathcal F_k^\top\mathcal F_k)^{-1}\mathcal F_k^\top f_k & \text{type II (standard AA)}\\
      (\mathcal X_k^\top\mathcal F_k)^{-1}\mathcal X_k^\top f_k & \text{type I (Petrov–Galerkin)}
    \end{cases}

which for :math:`\beta = 1` is :math:`x_{k+1} = g(x_k) - \mathcal G_k\gamma^{(k)}`. Both are multisecant
quasi-Newton steps :math:`x_{k+1} = x_k - H_k f_k` for the root of :math:`f(x) = g(x) - x` with

.. math::

    H_k^{\rm II} = -\beta I + (\mathcal X_k + \beta\mathcal F_k)(\mathcal F_k^\top\mathcal F_k)^{-1}\mathcal F_k^\top,
    \qquad
    H_k^{\rm I} = -\beta I + (\mathcal X_k + \beta\mathcal F_k)(\mathcal X_k^\top\mathcal F_k)^{-1}\mathcal X_k^\top,

both satisfying the multisecant condition :math:`H_k\mathcal F_k = \mathcal X_k` (type II minimizes
:math:`\lVert H + \beta I\rVert_F`, "bad Broyden"; type I is the inverse of the "good Broyden" Jacobian
estimate :math:`B_k = -\beta^{-1} I + (\mathcal F_k + \beta^{-1}\mathcal X_k)(\mathcal X_k^\top\mathcal
X_k)^{-1}\mathcal X_k^\top` with :math:`B_k\mathcal X_k = \mathcal F_k`; Fang & Saad 2009). ``m = 0`` is the
plain (Krasnosel'skii–Mann) iteration :math:`x_{k+1} = x_k + \beta f_k`.

Equivalence with SciPy: ``scipy.optimize.anderson(F, x0, alpha=beta, w0=0, line_search=None, M=m)``
applied to :math:`F(x) = g(x) - x` produces the same iterates as :func:`anderson` with ``kind="II"``,
``damping=beta``, ``reg=0`` (its ``A = (1 + w0^2 \delta_{ij})\langle dF_i, dF_j\rangle`` is our relative
Tikhonov term with ``reg = w0**2``).

Attention extrapolation read as one AA(1) step lives in :mod:`hopfield_gag.guidance.aa1`; the result type
and status enum shared with :func:`hopfield_gag.fixed_point` in :mod:`hopfield_gag.solvers.result`.

References
----------
* H. F. Walker, P. Ni, "Anderson acceleration for fixed-point iterations", SIAM J. Numer. Anal.
  49(4):1715–1735, 2011, doi:10.1137/10078356X.
* H. Fang, Y. Saad, "Two classes of multisecant methods for nonlinear acceleration", Numer. Linear
  Algebra Appl. 16(3):197–221, 2009 (type I / type II).
* J. Zhang, B. O'Donoghue, S. Boyd, "Globally convergent type-I Anderson acceleration for nonsmooth
  fixed-point iterations", SIAM J. Optim. 30(4):3170–3197, 2020, arXiv 1808.03971 (safeguards, restarts).
* A. Toth, C. T. Kelley, "Convergence analysis for Anderson acceleration", SIAM J. Numer. Anal.
  53(2):805–819, 2015 (local r-linear convergence with bounded coefficients).
* SciPy ``scipy.optimize.anderson`` (``scipy/optimize/_nonlin.py``, class ``Anderson``; Eyert 1996).
"""
from __future__ import annotations

from dataclasses import dataclass, replace
from typing import Callable, Optional

import torch
from torch import Tensor

from .._validation import check_choice, check_finite, check_int, check_scalar, check_tensor, compute_dtype
from .result import SolverResult, SolverStatus

# the names before the solvers shared one result type (kept: public API)
AndersonStatus = SolverStatus
AndersonResult = SolverResult

__all__ = [
    "AndersonStatus",
    "AndersonState",
    "AndersonResult",
    "AndersonSolver",
    "anderson",
]

KINDS = ("II", "I")
SAFEGUARDS = (None, "energy")


# ----------------------------------------------------------------------------------------------------------
# Solver state and result


@dataclass(frozen=True)
class AndersonState:
    r"""Immutable state of :class:`AndersonSolver` after ``iteration`` steps.

    Tensors are flattened to a batch of ``B = prod(batch_shape)`` independent problems of size ``n`` and
    held in the compute dtype (fp32 for half inputs).

    Attributes
    ----------
    x, gx, f : Tensor (B, n)
        Current iterate :math:`x_k`, its image :math:`g(x_k)` and residual :math:`f_k = g(x_k) - x_k`.
    fnorm : Tensor (B,)
        :math:`\lVert f_k\rVert_2`.
    hist : Tensor (B, 2, m, n)
        Ring buffer of difference pairs, one per row: ``hist[:, 0]`` = image differences :math:`\Delta g_i = g(x_{i+1}) -
        g(x_i)` and ``hist[:, 1]`` = residual differences :math:`\Delta f_i` (properties ``dG``, ``dF``,
        ``dX = dG - dF``, as (B, n, m) column matrices). Slots are in ring order (``head`` is written
        next); every result is invariant under the column order. Slots with ``valid`` False (after a start or restart) are ignored.
    head : int
        Next slot to write.
    gram, rhs : Tensor (B, m, m), (B, m)
        Type II only: :math:`\mathcal F^\top\mathcal F` and :math:`\mathcal F^\top f_k`, updated by one column per
        step (entries of empty slots are stale and masked).
    valid : Tensor (B, m) bool
    codes : Tensor (B,) int64
        :class:`SolverStatus` values per element.
    steps : Tensor (B,) int64
        Steps taken by each element (an element stops moving once it leaves ``RUNNING``).
    restarts, rejections : Tensor (B,) int64
        History restarts (ill-conditioned or non-finite coefficients) and safeguard rejections.
    energy : Tensor (B,) or None
        :math:`E(x_k)` when the energy safeguard is on.
    iteration, map_evaluations, energy_evaluations : int
        Solver steps taken; calls of ``g`` (each on the whole batch); calls of ``energy``.
    residual_history, energy_history : tuple of Tensor (B,)
        One entry per iterate :math:`x_0, \dots, x_k`.
    batch_shape : tuple; dtype : torch.dtype
        Shape of the leading dims of ``x0`` and its dtype (used to call ``g`` and to build the result).
    """

    x: Tensor
    gx: Tensor
    f: Tensor
    fnorm: Tensor
    hist: Tensor
    head: int
    gram: Tensor
    rhs: Tensor
    valid: Tensor
    codes: Tensor
    steps: Tensor
    restarts: Tensor
    rejections: Tensor
    energy: Optional[Tensor]
    iteration: int
    map_evaluations: int
    energy_evaluations: int
    residual_history: tuple
    energy_history: tuple
    batch_shape: tuple
    dtype: torch.dtype

    @property
    def dG(self) -> Tensor:
        """(B, n, m) image differences :math:`\\Delta g_i = g(x_{i+1}) - g(x_i)` (ring order)."""
        return self.hist[:, 0].transpose(-1, -2)

    @property
    def dF(self) -> Tensor:
        """(B, n, m) residual differences :math:`\\Delta f_i = f_{i+1} - f_i` (ring order)."""
        return self.hist[:, 1].transpose(-1, -2)

    @property
    def dX(self) -> Tensor:
        """(B, n, m) iterate differences :math:`\\Delta x_i = \\Delta g_i - \\Delta f_i` (ring order)."""
        return (self.hist[:, 0] - self.hist[:, 1]).transpose(-1, -2)


# ----------------------------------------------------------------------------------------------------------
# Solver


@dataclass(frozen=True)
class AndersonSolver:
    r"""Walker–Ni Anderson acceleration AA(m) as an immutable configuration with ``init / step /
    terminate``.

    Parameters
    ----------
    m : int >= 0, default 5
        Depth (number of difference pairs kept). ``m = 0`` is the damped plain iteration.
    kind : {"II", "I"}, default "II"
        Type II: least-squares coefficients (standard AA, SciPy's). Type I: Petrov–Galerkin coefficients
        :math:`\gamma = (\mathcal X^\top\mathcal F)^{-1}\mathcal X^\top f` (Fang & Saad 2009; Zhang et al. 2020).
    damping : float in (0, 1], default 1.0
        Mixing parameter :math:`\beta`.
    reg : float >= 0, default 1e-10
        Relative Tikhonov term: the diagonal of the coefficient matrix :math:`M` (:math:`\mathcal F^\top
        \mathcal F` or :math:`\mathcal X^\top\mathcal F`) is multiplied by :math:`1 + \text{reg}`
        (SciPy's ``w0**2``). ``reg = 0`` gives exact multisecant conditions.
    tol : float >= 0, default 1e-10
        Absolute tolerance on :math:`\lVert g(x_k) - x_k\rVert_2`, per batch element.
    max_iter : int >= 0, default 500
        Maximum number of steps (each costs one evaluation of ``g``).
    safeguard : {None, "energy"}
        ``"energy"``: accept the AA candidate :math:`x^{\rm AA}` only if
        :math:`E(x^{\rm AA}) \le E(g(x_k))`, else take the plain step :math:`g(x_k)` (per element). For a
        CCCP map (:math:`E(g(x)) \le E(x)`, e.g. the Hopfield update) the energy of the iterates is then
        non-increasing. Costs two energy evaluations per step, no extra map evaluation.
    energy : callable, optional
        ``energy(x) -> Tensor (...)`` for ``x`` of shape ``(..., n)``; required by ``safeguard="energy"``.
        For a Hopfield problem: ``lambda x: hopfield.energy(x, keys, beta, alpha)``.
    cond_max : float, optional
        Restart the history of an element (drop all pairs, take the plain step) when the (estimated)
        condition number of its column-scaled coefficient matrix exceeds this, when the factorization
        fails, or when the coefficients or the candidate are not finite. Default :math:`1/(100\,\epsilon)`
        of the compute dtype (the normal equations square the condition number of :math:`\mathcal F`, so
        this allows :math:`\kappa(\mathcal F)\lesssim 10^{6.6}` in float64).
    trace_energy : bool, default False
        Record :math:`E(x_k)` of every iterate in ``energy_history`` (needs ``energy``; one evaluation per
        iterate; implied by the safeguard). :func:`hopfield_gag.fixed_point` uses it for the Hopfield
        energy, which the plain iteration never increases (CCCP).

    Notes
    -----
    The :math:`m\times m` system is scaled to unit column norms (Jacobi scaling), which makes ``reg``
    relative and the condition test scale-free, and solved batched: type II by Cholesky
    (:func:`torch.linalg.cholesky_ex`; the Gram matrix :math:`\mathcal F^\top\mathcal F` and
    :math:`\mathcal F^\top f_k` are updated by one new row per step), type I by LU. Walker & Ni recommend QR
    with column dropping; with ``m <= 10`` the scaled normal equations plus restart reach the same
    tolerances on the problems here and use SciPy's own algebra (iterate-for-iterate equality is tested).
    The history is a ring buffer of :math:`(\Delta g_i, \Delta f_i)` rows; for :math:`\beta = 1` the step is
    :math:`g(x_k) - \mathcal G_k\gamma`, which needs no iterate differences at all.
    """

    m: int = 5
    kind: str = "II"
    damping: float = 1.0
    reg: float = 1e-10
    tol: float = 1e-10
    max_iter: int = 500
    safeguard: Optional[str] = None
    energy: Optional[Callable[[Tensor], Tensor]] = None
    cond_max: Optional[float] = None
    trace_energy: bool = False

    def __post_init__(self):
        check_int("m", self.m, ge=0)
        check_choice("kind", self.kind, KINDS)
        check_scalar("damping", self.damping, gt=0.0, le=1.0)
        check_scalar("reg", self.reg, ge=0.0)
        check_scalar("tol", self.tol, ge=0.0)
        check_int("max_iter", self.max_iter, ge=0)
        if self.safeguard not in SAFEGUARDS:
            raise ValueError(f"safeguard must be one of {SAFEGUARDS}, got {self.safeguard!r}")
        if self.safeguard == "energy" and not callable(self.energy):
            raise ValueError("energy must be a callable x -> (...) when safeguard='energy', got "
                             f"{self.energy!r}")
        if self.energy is not None and not callable(self.energy):
            raise ValueError(f"energy must be callable or None, got {self.energy!r}")
        if self.trace_energy and not callable(self.energy):
            raise ValueError(f"energy must be a callable x -> (...) when trace_energy=True, got {self.energy!r}")
        if self.cond_max is not None:
            check_scalar("cond_max", self.cond_max, gt=1.0)

    # ---------------------------------------------------------------- helpers
    def _call(self, g, x: Tensor, batch_shape: tuple, dtype: torch.dtype) -> Tensor:
        """Evaluate ``g`` on the flat batch ``x`` (B, n) in the caller's shape and dtype."""
        n = x.shape[-1]
        out = g(x.to(dtype).reshape(*batch_shape, n))
        if not isinstance(out, Tensor) or tuple(out.shape) != (*batch_shape, n):
            shape = tuple(out.shape) if isinstance(out, Tensor) else type(out).__name__
            raise ValueError(f"g must map a tensor of shape {(*batch_shape, n)} to the same shape, got {shape}")
        return out.to(x.dtype).reshape(x.shape)

    def _energy(self, x: Tensor, batch_shape: tuple, dtype: torch.dtype) -> Tensor:
        n = x.shape[-1]
        e = self.energy(x.to(dtype).reshape(*batch_shape, n))
        if not isinstance(e, Tensor) or tuple(e.shape) != tuple(batch_shape):
            shape = tuple(e.shape) if isinstance(e, Tensor) else type(e).__name__
            raise ValueError(f"energy must map a tensor of shape {(*batch_shape, n)} to shape {tuple(batch_shape)}, "
                             f"got {shape}")
        return e.to(x.dtype).reshape(x.shape[:-1])

    def _cond_max(self, dtype: torch.dtype) -> float:
        return self.cond_max if self.cond_max is not None else 1.0 / (100.0 * torch.finfo(dtype).eps)

    # ---------------------------------------------------------------- init / step / terminate
    def init(self, g: Callable[[Tensor], Tensor], x0: Tensor) -> AndersonState:
        r"""Evaluate :math:`g(x_0)` and build the initial state (empty history).

        Parameters
        ----------
        g : callable ``(..., n) -> (..., n)``
            The fixed-point map, batched over the leading dims.
        x0 : Tensor (..., n)
            Starting point; each leading index is an independent problem.
        """
        if not callable(g):
            raise ValueError(f"g must be a callable (..., n) -> (..., n), got {g!r}")
        check_tensor("x0", x0, min_dim=1)
        check_finite("x0", x0)
        if x0.shape[-1] == 0:
            raise ValueError(f"x0 must have shape (..., n) with n >= 1, got {tuple(x0.shape)}")
        batch_shape = tuple(x0.shape[:-1])
        cd = compute_dtype(x0.dtype)
        n = x0.shape[-1]
        x = x0.detach().to(cd).reshape(-1, n).clone()
        B = x.shape[0]
        gx = self._call(g, x, batch_shape, x0.dtype)
        f = gx - x
        fnorm = torch.linalg.vector_norm(f, dim=-1)
        codes = torch.zeros(B, dtype=torch.int64, device=x.device)
        finite = torch.isfinite(gx).all(-1)
        codes[fnorm <= self.tol] = SolverStatus.CONVERGED.value
        codes[~finite] = SolverStatus.NONFINITE.value
        if self.max_iter == 0:
            codes[codes == 0] = SolverStatus.MAX_ITER.value
        energy, e_hist, e_evals = None, (), 0
        if self.safeguard == "energy" or self.trace_energy:
            energy = self._energy(x, batch_shape, x0.dtype)
            e_hist, e_evals = (energy,), 1
        zeros = torch.zeros(B, dtype=torch.int64, device=x.device)
        return AndersonState(
            x=x, gx=gx, f=f, fnorm=fnorm,
            hist=x.new_zeros(B, 2, self.m, n), head=0, gram=x.new_zeros(B, self.m, self.m),
            rhs=x.new_zeros(B, self.m),
            valid=torch.zeros(B, self.m, dtype=torch.bool, device=x.device),
            codes=codes, steps=zeros, restarts=zeros.clone(), rejections=zeros.clone(),
            energy=energy, iteration=0, map_evaluations=1, energy_evaluations=e_evals,
            residual_history=(fnorm,), energy_history=e_hist, batch_shape=batch_shape, dtype=x0.dtype,
        )

    def coefficients(self, state: AndersonState) -> tuple[Tensor, Tensor]:
        r"""Mixing coefficients :math:`\gamma^{(k)}` of the next step and which elements must restart.

        Solves :math:`S y = D_W^{-1} W^\top f_k`, :math:`\gamma = D_F^{-1} y`, where
        :math:`W = \mathcal F` (type II) or :math:`\mathcal X` (type I), :math:`D` are column norms and
        :math:`S = D_W^{-1} W^\top\mathcal F D_F^{-1}` with its diagonal times :math:`1 + \text{reg}` (Jacobi
        scaling makes ``reg`` relative and the condition test scale-free). Empty history slots (zero
        columns) get unit diagonal entries and zero coefficients. Type II: :math:`S` is symmetric positive
        (semi)definite, solved by Cholesky; the condition estimate is :math:`(\max_i L_{ii}/\min_i L_{ii})^2`
        (:math:`L_{ii}` is the sine of the angle between column :math:`i` and the earlier ones, so it
        detects near-dependent columns). Type I: LU solve, condition number from singular values.

        Returns
        -------
        gamma : Tensor (B, m)
            Coefficients (zero for restarted elements and empty slots).
        restart : Tensor (B,) bool
            Elements whose matrix was singular, had (estimated) condition number above ``cond_max``, or
            gave non-finite coefficients.
        """
        valid, f = state.valid, state.f
        B, m = valid.shape
        if m == 0:
            return f.new_zeros(B, 0), torch.zeros(B, dtype=torch.bool, device=f.device)
        vf = valid.to(f.dtype)
        empty = 1.0 - vf
        if self.kind == "II":  # maintained incrementally; mask the stale entries of empty slots
            M = state.gram * (vf.unsqueeze(-1) * vf.unsqueeze(-2))
            b = (state.rhs * vf).unsqueeze(-1)
            dr = dl = M.diagonal(dim1=-2, dim2=-1).sqrt() + empty  # column norms; empty slots 0 -> 1
        else:
            Fr = state.hist[:, 1] * vf.unsqueeze(-1)  # rows = history slots
            Xr = state.hist[:, 0] * vf.unsqueeze(-1) - Fr
            M = Xr @ Fr.transpose(-1, -2)
            b = Xr @ f.unsqueeze(-1)
            dr = (Fr * Fr).sum(-1).sqrt() + empty
            dl = (Xr * Xr).sum(-1).sqrt() + empty
        # a zero-norm valid column gives 0/0 = NaN below, hence non-finite gamma, hence a restart
        S = M / (dl.unsqueeze(-1) * dr.unsqueeze(-2))
        diag = S.diagonal(dim1=-2, dim2=-1)
        diag.mul_(1.0 + self.reg).add_(empty)
        b = b / dl.unsqueeze(-1)  # (B, m, 1)
        if self.kind == "II":
            L, info = torch.linalg.cholesky_ex(S)
            y = torch.cholesky_solve(b, L).squeeze(-1)
            piv = L.diagonal(dim1=-2, dim2=-1)
            cond = (piv.amax(-1) / piv.amin(-1)) ** 2
        else:
            y, info = torch.linalg.solve_ex(S, b)
            y = y.squeeze(-1)
            sv = torch.linalg.svdvals(torch.nan_to_num(S))
            cond = sv[:, 0] / sv[:, -1]
        gamma = y / dr
        restart = (info != 0) | ~(cond <= self._cond_max(f.dtype)) | ~torch.isfinite(gamma.sum(-1))
        gamma = gamma.masked_fill(restart.unsqueeze(-1), 0.0)
        return gamma, restart

    def step(self, g: Callable[[Tensor], Tensor], state: AndersonState, donate: bool = False) -> AndersonState:
        r"""One AA step for every running element: coefficients, candidate
        :math:`x_k + \beta f_k - (\mathcal X_k + \beta\mathcal F_k)\gamma` (for :math:`\beta = 1`:
        :math:`g(x_k) - \mathcal G_k\gamma`), optional energy safeguard, one evaluation of ``g``, history
        update, status update. Elements that are not running are frozen (their iterate does not move;
        ``g`` is still evaluated on the whole batch).

        ``donate=True`` lets the step overwrite the history buffers of ``state`` in place (like buffer
        donation in JAX): cheaper, but ``state`` must not be used afterwards. :func:`anderson` donates;
        the default keeps every state intact."""
        st = state
        beta = self.damping
        RUN = SolverStatus.RUNNING.value
        active = st.codes == RUN
        all_active = bool(active.all())
        hist, valid = st.hist, st.valid
        plain = st.gx if beta == 1.0 else st.x + beta * st.f
        restart = None
        if self.m > 0:
            gamma, restart = self.coefficients(st)
            # X + beta F = G - (1 - beta) F
            D = hist[:, 0] if beta == 1.0 else hist[:, 0] - (1.0 - beta) * hist[:, 1]
            cand = plain - (gamma.unsqueeze(-2) @ D).squeeze(-2)
            bad = ~torch.isfinite(cand.sum(-1))  # overflow with huge (finite) coefficients
            restart = restart | bad
            if bool(restart.any()):  # restarted elements drop their history and take the plain step
                cand = torch.where(bad.unsqueeze(-1), plain, cand)
                valid = valid & ~restart.unsqueeze(-1)
            restart = restart & active
        else:
            cand = plain
        energy, e_evals, rejections = st.energy, st.energy_evaluations, st.rejections
        if self.safeguard == "energy":
            e_cand = self._energy(cand, st.batch_shape, st.dtype)
            e_plain = self._energy(st.gx, st.batch_shape, st.dtype)
            e_evals += 2
            accept = e_cand <= e_plain  # NaN energy -> reject
            cand = torch.where(accept.unsqueeze(-1), cand, st.gx)
            energy = torch.where(accept, e_cand, e_plain)
            rejections = rejections + (active & ~accept).long()
        x_new = cand if all_active else torch.where(active.unsqueeze(-1), cand, st.x)
        gx_new = self._call(g, x_new, st.batch_shape, st.dtype)
        f_new = gx_new - x_new
        fnorm = torch.linalg.vector_norm(f_new, dim=-1)
        finite = torch.isfinite(fnorm)  # NaN/inf in g(x) propagates to the norm
        if all_active and bool(finite.all()):
            moving = active
        else:  # freeze stopped elements, roll back non-finite ones
            moving = active & finite
            mv = moving.unsqueeze(-1)
            x_new = torch.where(mv, x_new, st.x)
            gx_new = torch.where(mv, gx_new, st.gx)
            f_new = torch.where(mv, f_new, st.f)
            fnorm = torch.where(moving, fnorm, st.fnorm)
            if energy is not None and self.safeguard == "energy":
                energy = torch.where(moving, energy, st.energy)
        if self.trace_energy and self.safeguard != "energy":
            energy = self._energy(x_new, st.batch_shape, st.dtype)
            e_evals += 1
        dx = x_new - st.x
        head, gram, rhs = st.head, st.gram, st.rhs
        if self.m > 0:  # write the new pair into slot `head` of the ring
            if not donate:
                hist, gram = hist.clone(), gram.clone()
            df = f_new - st.f
            hist[:, 0, head] = gx_new - st.gx
            hist[:, 1, head] = df
            valid = valid.clone()
            valid[:, head] = moving
            if self.kind == "II":  # one pass over F: new Gram row/column and next right-hand side
                c = torch.stack([df, f_new], 1) @ hist[:, 1].transpose(-1, -2)  # (B, 2, m)
                gram[:, head, :] = c[:, 0]
                gram[:, :, head] = c[:, 0]
                rhs = c[:, 1]
            head = (head + 1) % self.m
        # status: non-finite > converged > stalled (the step was exactly zero) > running
        conv = fnorm <= self.tol
        stalled = ~conv & (dx == 0).all(-1)
        new_code = torch.where(conv, SolverStatus.CONVERGED.value,
                               torch.where(stalled, SolverStatus.BREAKDOWN.value, RUN))
        codes = torch.where(moving, new_code, st.codes)
        if moving is not active:
            codes = torch.where(active & ~finite, SolverStatus.NONFINITE.value, codes)
        iteration = st.iteration + 1
        if iteration >= self.max_iter:
            codes = torch.where(codes == RUN, SolverStatus.MAX_ITER.value, codes)
        restarts = st.restarts if restart is None else st.restarts + restart.long()
        return replace(
            st, x=x_new, gx=gx_new, f=f_new, fnorm=fnorm, hist=hist, head=head, gram=gram, rhs=rhs,
            valid=valid, codes=codes,
            steps=st.steps + active.long(), restarts=restarts, rejections=rejections,
            energy=energy, iteration=iteration, map_evaluations=st.map_evaluations + 1,
            energy_evaluations=e_evals, residual_history=st.residual_history + (fnorm,),
            energy_history=st.energy_history + ((energy,) if energy is not None else ()),
        )

    def terminate(self, state: AndersonState) -> tuple[bool, SolverStatus]:
        """``(done, status)``: done when no element is running; status as :attr:`SolverResult.status`."""
        codes = state.codes
        if bool((codes == SolverStatus.RUNNING.value).any()):
            return False, SolverStatus.RUNNING
        for s in (SolverStatus.NONFINITE, SolverStatus.BREAKDOWN, SolverStatus.MAX_ITER):
            if bool((codes == s.value).any()):
                return True, s
        return True, SolverStatus.CONVERGED

    # ---------------------------------------------------------------- inspection
    def _low_rank_update(self, state: AndersonState, base: float, left, pick) -> Tensor:
        r"""The dense (n, n) estimates :math:`	ext{base}\,I + L M^{-1} W^	op` both Jacobian readings share:
        ``left(dX, dF)`` gives :math:`L`, ``pick(dX, dF)`` gives :math:`(W, M)`; empty history slots are
        zeroed in :math:`\mathcal X, \mathcal F` and replaced by identity rows/columns in :math:`M`."""
        v = state.valid.unsqueeze(-2)
        dX, dF = torch.where(v, state.dX, 0.0), torch.where(v, state.dF, 0.0)
        n, m = dX.shape[-2], dX.shape[-1]
        eye_n = torch.eye(n, dtype=dX.dtype, device=dX.device)
        if m == 0:
            return (base * eye_n).expand(*state.batch_shape, n, n).clone()
        W, M = pick(dX, dF)
        vv = state.valid.unsqueeze(-1) & state.valid.unsqueeze(-2)
        M = torch.where(vv, M, torch.eye(m, dtype=dX.dtype, device=dX.device))
        out = base * eye_n + left(dX, dF) @ torch.linalg.solve(M, W.transpose(-1, -2))
        return out.reshape(*state.batch_shape, n, n)

    def inverse_jacobian(self, state: AndersonState) -> Tensor:
        r"""Dense inverse-Jacobian estimate :math:`H_k` of the next step (:math:`x_{k+1} = x_k - H_k f_k`
        unless the element restarts), :math:`O(n^2)` memory, for tests and inspection.

        Type II: :math:`-\beta I + (\mathcal X + \beta\mathcal F) M^{-1}\mathcal F^\top`,
        type I: :math:`-\beta I + (\mathcal X + \beta\mathcal F) M^{-1}\mathcal X^\top`, with :math:`M` the
        (regularized) coefficient matrix; empty slots are ignored.

        Returns
        -------
        Tensor (..., n, n) in the compute dtype.
        """
        beta = self.damping

        def pick(dX, dF):
            W = dF if self.kind == "II" else dX
            M = W.transpose(-1, -2) @ dF
            return W, M + torch.diag_embed(self.reg * M.diagonal(dim1=-2, dim2=-1))

        return self._low_rank_update(state, -beta, lambda dX, dF: dX + beta * dF, pick)

    def jacobian(self, state: AndersonState) -> Tensor:
        r"""Dense Jacobian estimate :math:`B_k = H_k^{-1}` of :math:`f(x) = g(x) - x`, closed form (``reg``
        ignored, i.e. exact for ``reg = 0``):

        type I ("good Broyden"): :math:`-\beta^{-1}I + (\mathcal F + \beta^{-1}\mathcal X)(\mathcal X^\top
        \mathcal X)^{-1}\mathcal X^\top`, so :math:`B\mathcal X = \mathcal F` and it changes only on
        :math:`\mathrm{span}\,\mathcal X`;
        type II: :math:`-\beta^{-1}I + (\mathcal F + \beta^{-1}\mathcal X)(\mathcal F^\top\mathcal X)^{-1}
        \mathcal F^\top` (Sherman–Morrison–Woodbury inverse of :math:`H^{\rm II}`).

        Returns
        -------
        Tensor (..., n, n) in the compute dtype.
        """
        beta = self.damping

        def pick(dX, dF):
            return (dX, dX.transpose(-1, -2) @ dX) if self.kind == "I" else (dF, dF.transpose(-1, -2) @ dX)

        return self._low_rank_update(state, -1.0 / beta, lambda dX, dF: dF + dX / beta, pick)

    def result(self, state: AndersonState) -> SolverResult:
        """Package a state as a :class:`SolverResult` (shapes restored, dtype of ``x0``)."""
        bs, n, dt = state.batch_shape, state.x.shape[-1], state.dtype
        done, status = self.terminate(state)
        if not done:
            status = SolverStatus.MAX_ITER
        codes = state.codes.reshape(bs)
        e_hist = torch.stack(state.energy_history).reshape(-1, *bs) if state.energy_history else None
        converged = codes == SolverStatus.CONVERGED.value
        return SolverResult(
            solution=state.x.to(dt).reshape(*bs, n),
            image=state.gx.to(dt).reshape(*bs, n),
            residual=state.fnorm.reshape(bs),
            status=status,
            element_status=codes,
            element_converged=converged,
            converged=status is SolverStatus.CONVERGED,
            iterations=state.iteration,
            map_evaluations=state.map_evaluations,
            element_map_evaluations=(state.steps + 1).reshape(bs),
            energy_evaluations=state.energy_evaluations,
            residual_history=torch.stack(state.residual_history).reshape(-1, *bs),
            energy_history=e_hist,
            restarts=state.restarts.reshape(bs),
            safeguard_rejections=state.rejections.reshape(bs),
            tol=float(self.tol),
        )


def anderson(
    g: Callable[[Tensor], Tensor],
    x0: Tensor,
    m: int = 5,
    kind: str = "II",
    damping: float = 1.0,
    reg: float = 1e-10,
    tol: float = 1e-10,
    max_iter: int = 500,
    safeguard: Optional[str] = None,
    energy: Optional[Callable[[Tensor], Tensor]] = None,
    cond_max: Optional[float] = None,
    trace_energy: bool = False,
) -> SolverResult:
    r"""Solve :math:`x = g(x)` by Anderson acceleration AA(m), independently for every batch element.

    .. math::

        x_{k+1} = x_k + \beta f_k - (\mathcal X_k + \beta\mathcal F_k)\gamma^{(k)},\qquad
        \gamma^{(k)}_{\rm II} = \arg\min_\gamma\lVert f_k - \mathcal F_k\gamma\rVert_2,\quad
        \gamma^{(k)}_{\rm I} = (\mathcal X_k^\top\mathcal F_k)^{-1}\mathcal X_k^\top f_k

    (module docstring for the notation). Stops an element when :math:`\lVert g(x_k) - x_k\rVert_2 \le`
    ``tol``; runs under :func:`torch.inference_mode` (differentiate the solution implicitly if needed; the
    returned tensors are ordinary tensors).

    Parameters
    ----------
    g : callable ``(..., n) -> (..., n)``
        Batched fixed-point map.
    x0 : Tensor (..., n)
        Starting points, fp16/bf16/fp32/fp64 (half types are iterated in fp32, ``g`` sees ``x0.dtype``).
    m, kind, damping, reg, tol, max_iter, safeguard, energy, cond_max, trace_energy
        See :class:`AndersonSolver`. ``m = 0`` is the plain iteration (:func:`hopfield_gag.fixed_point`).

    Returns
    -------
    SolverResult

    Examples
    --------
    >>> import torch
    >>> r = anderson(torch.cos, torch.zeros(1, dtype=torch.float64), m=1)
    >>> round(float(r.solution), 10), r.status.name
    (0.7390851332, 'CONVERGED')

    References
    ----------
    Walker & Ni 2011 (Alg. AA); Fang & Saad 2009 (types I/II); Zhang, O'Donoghue & Boyd 2020 (safeguards);
    Toth & Kelley 2015 (convergence); SciPy ``scipy.optimize.anderson`` (equivalent for ``kind="II"``,
    ``reg=0``, ``alpha=damping``, ``w0=0``, ``line_search=None``, ``M=m``).
    """
    solver = AndersonSolver(m=m, kind=kind, damping=damping, reg=reg, tol=tol, max_iter=max_iter,
                            safeguard=safeguard, energy=energy, cond_max=cond_max, trace_energy=trace_energy)
    with torch.inference_mode():  # cheaper per op than no_grad; the loop is never differentiated
        state = solver.init(g, x0)
        while not solver.terminate(state)[0]:
            state = solver.step(g, state, donate=True)
    result = solver.result(state)
    # hand back ordinary tensors (inference tensors cannot be used later in autograd, e.g. for the
    # implicit-function re-attachment g(x*.requires_grad_()) of deep-equilibrium models)
    return replace(result, **{k: v.clone() for k, v in vars(result).items() if isinstance(v, Tensor)})

