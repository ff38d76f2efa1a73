r"""Ramsauer's diagnostics of Modern Hopfield networks: separation, metastability, beta regimes, storage
capacity (Theorem 3) and the retrieval error bound (Theorem 5).

Same conventions as :mod:`hopfield_gag.hopfield.dynamics` (patterns are the rows of ``(..., N, d)``).

References
----------
* H. Ramsauer et al., "Hopfield Networks is All You Need", ICLR 2021, arXiv 2008.02217 (Theorems 1–5,
  appendix A.1.5 fixed-point regimes, §4 metastability statistic).
"""
from __future__ import annotations

import math
from dataclasses import dataclass

import scipy.special
import torch
from torch import Tensor

from .._validation import check_finite, check_int, check_scalar, check_tensor, compute_dtype
from .dynamics import _check_problem

__all__ = [
    "separation",
    "metastability_count",
    "metastability_class",
    "BetaRegime",
    "beta_regime",
    "capacity_constant",
    "CapacityBound",
    "storage_capacity",
    "retrieval_error_bound",
    "stored_pattern_error_bound",
]


# ----------------------------------------------------------------------------------------------------------
# Diagnostics


def _check_patterns(patterns: Tensor, name: str = "patterns", min_n: int = 1) -> None:
    check_tensor(name, patterns, min_dim=2)
    check_finite(name, patterns)
    if patterns.shape[-2] < min_n:
        raise ValueError(
            f"{name} must have shape (..., N, d) with N >= {min_n}, got shape {tuple(patterns.shape)}"
        )


def separation(patterns: Tensor) -> Tensor:
    r"""Separation of each stored pattern from the others.

    .. math::  \Delta_i = x_i^\top x_i - \max_{j\ne i} x_i^\top x_j .

    For patterns of equal norm, :math:`\Delta_i = \tfrac12\min_{j\ne i}\lVert x_i - x_j\rVert^2`.

    Parameters
    ----------
    patterns : Tensor (..., N, d), N >= 2.

    Returns
    -------
    Tensor (..., N), dtype of ``patterns`` (half types computed in fp32).

    References: Ramsauer et al. 2021 (arXiv 2008.02217), §2 (definition before Theorem 3).
    """
    _check_patterns(patterns, min_n=2)
    x = patterns.to(compute_dtype(patterns.dtype))
    gram = x @ x.transpose(-1, -2)
    n = x.shape[-2]
    eye = torch.eye(n, dtype=torch.bool, device=x.device)
    off = gram.masked_fill(eye, -math.inf).amax(-1)
    return (gram.diagonal(dim1=-2, dim2=-1) - off).to(patterns.dtype)


def metastability_count(weights: Tensor, mass: float = 0.9) -> Tensor:
    r"""Metastability statistic :math:`k`: the smallest number of weights holding ``mass`` of the total.

    .. math::  k = \min\{k : \textstyle\sum_{j\le k} w_{(j)} \ge \text{mass}\cdot\sum_j w_j\},

    with :math:`w_{(1)} \ge w_{(2)} \ge \dots` sorted. Ramsauer et al. use mass 0.9 on softmax rows of
    BERT heads; :math:`k \approx N` means global averaging, small :math:`k` a single-pattern fixed point.
    Sums are accumulated in float64 and a row reaches the target within a slack of
    :math:`N\cdot\varepsilon_{\text{dtype}}` times the row total (rounding of the weights' own dtype), so
    e.g. ten weights of 0.1 give :math:`k = 9`.

    Parameters
    ----------
    weights : Tensor (..., N)
        Non-negative weights (rows need not sum exactly to 1; the target is relative to the row total).
    mass : float in (0, 1], default 0.9.

    Returns
    -------
    LongTensor (...), values in 1..N.

    References: Ramsauer et al. 2021 (arXiv 2008.02217), §4 and appendix A.5.
    """
    check_tensor("weights", weights, min_dim=1)
    check_finite("weights", weights)
    mass = check_scalar("mass", mass, gt=0.0, le=1.0)
    n = weights.shape[-1]
    if n == 0:
        raise ValueError(f"weights must have shape (..., N) with N >= 1, got {tuple(weights.shape)}")
    if bool((weights < 0).any()):
        raise ValueError("weights must be non-negative")
    w = weights.to(torch.float64)
    total = w.sum(-1, keepdim=True)
    if bool((total <= 0).any()):
        raise ValueError("weights must have a positive sum in every row")
    csum = w.sort(-1, descending=True).values.cumsum(-1)
    slack = n * torch.finfo(weights.dtype).eps * total
    below = csum < mass * total - slack
    return (below.sum(-1) + 1).clamp_max(n)


def metastability_class(k, n: int) -> str:
    r"""Ramsauer's class (I–IV) of a head from its metastability counts.

    With :math:`\bar k` the median of ``k`` and :math:`N` the number of tokens:
    (I) :math:`\bar k > N/2` (global averaging); (II) :math:`N/8 < \bar k \le N/2`;
    (III) :math:`N/32 < \bar k \le N/8`; (IV) :math:`\bar k \le N/32` (close to single-pattern retrieval).
    For BERT's :math:`N = 512` these are 256, 64, 16; the paper's remark that the thresholds are divided by
    4 for sequence length 128 (A.5.1.3) is the same rule at :math:`N = 128`.

    Parameters
    ----------
    k : int, float or Tensor of counts (any shape; the median is taken).
    n : int >= 1, number of tokens / patterns.

    Returns
    -------
    str, one of ``"I"``, ``"II"``, ``"III"``, ``"IV"``.

    References: Ramsauer et al. 2021 (arXiv 2008.02217), §4 and appendix A.5.1.
    """
    check_int("n", n, ge=1)
    if isinstance(k, Tensor):
        if k.numel() == 0:
            raise ValueError("k must hold at least one count")
        k_bar = float(torch.quantile(k.to(torch.float64).flatten(), 0.5))
    else:
        k_bar = check_scalar("k", k, ge=0.0)
    if not math.isfinite(k_bar) or k_bar < 0:
        raise ValueError(f"k must be finite and >= 0, got median {k_bar}")
    if k_bar > n / 2:
        return "I"
    if k_bar > n / 8:
        return "II"
    if k_bar > n / 32:
        return "III"
    return "IV"


@dataclass(frozen=True)
class BetaRegime:
    r"""Result of :func:`beta_regime` (all tensors over the patterns' batch dims ``...``).

    Attributes
    ----------
    beta : float
    m_max : Tensor (...)
        :math:`m_{\max} = \max_i\lVert x_i - m_x\rVert`, :math:`m_x` the pattern mean.
    global_condition : Tensor bool (...)
        :math:`\beta m_{\max}^2 < 1` (Lemma A3: the update is a contraction, unique global fixed point).
    separation : Tensor (..., N)
        :math:`\Delta_i` (:func:`separation`).
    single_threshold : Tensor (..., N)
        :math:`\frac{2}{\beta N} + \frac1\beta\ln\big(2(N-1)N\beta M^2\big)`.
    single_condition : Tensor bool (..., N)
        :math:`\Delta_i \ge` ``single_threshold`` (Lemmas A5–A7: the update maps
        :math:`S_i = \{\lVert\xi - x_i\rVert \le 1/(\beta N M)\}` into itself and contracts there).
    sphere_radius : Tensor (...)
        :math:`1/(\beta N M)`.
    isolated : Tensor bool (..., N)
        :math:`S_i` is disjoint from every other :math:`S_j`:
        :math:`\min_{j\ne i}\lVert x_i - x_j\rVert > 2/(\beta N M)` (Definition 1 requires disjoint spheres
        for a pattern to count as stored).
    regime : LongTensor (..., N)
        Index into :attr:`NAMES`: 0 ``"global"`` if the global condition holds; else 2 ``"single"`` if the
        single-pattern condition holds and the sphere is isolated; else 1 ``"metastable"`` (neither
        sufficient condition holds: the pattern is expected to be absorbed in an average over a subset).
    """

    NAMES = ("global", "metastable", "single")
    GLOBAL = 0
    METASTABLE = 1
    SINGLE = 2

    beta: float
    m_max: Tensor
    global_condition: Tensor
    separation: Tensor
    single_threshold: Tensor
    single_condition: Tensor
    sphere_radius: Tensor
    isolated: Tensor
    regime: Tensor

    def names(self) -> list:
        """Regime labels as (nested) lists of strings, shaped like :attr:`regime`."""
        def convert(x):
            return [convert(y) for y in x] if isinstance(x, list) else self.NAMES[x]
        return convert(self.regime.tolist())


def beta_regime(patterns: Tensor, beta: float) -> BetaRegime:
    r"""Classify each stored pattern by the sufficient conditions of Ramsauer et al., appendix A.1.5.

    * **Global averaging** (Lemma A3): :math:`\beta m_{\max}^2 < 1` with
      :math:`m_{\max} = \max_i\lVert x_i - m_x\rVert`, :math:`m_x = \frac1N\sum_i x_i`. The update is then a
      contraction with a unique fixed point (the mean, for centred data).
    * **Single pattern** (Lemmas A5–A7): :math:`\Delta_i \ge \frac{2}{\beta N} +
      \frac1\beta\ln\big(2(N-1)N\beta M^2\big)`; then a fixed point lies in
      :math:`S_i = \{\xi : \lVert\xi - x_i\rVert \le \frac{1}{\beta N M}\}`. We also require the spheres to
      be disjoint (Definition 1), because for small :math:`\beta` the right-hand side tends to
      :math:`-\infty` and the stated condition holds trivially while :math:`S_i` grows to contain the
      other patterns.
    * **Metastable**: otherwise.

    These are sufficient conditions, not a characterization of the dynamics.

    Parameters
    ----------
    patterns : Tensor (..., N, d), N >= 2.
    beta : float > 0.

    Returns
    -------
    BetaRegime (computed in float64).

    References: Ramsauer et al. 2021 (arXiv 2008.02217), appendix A.1.5.2–A.1.5.4, Definition 1.
    """
    _check_patterns(patterns, min_n=2)
    beta = check_scalar("beta", beta, gt=0.0)
    x = patterns.to(torch.float64)
    n = x.shape[-2]
    mean = x.mean(-2, keepdim=True)
    m_max = torch.linalg.vector_norm(x - mean, dim=-1).amax(-1)
    global_condition = beta * m_max**2 < 1.0
    big_m = torch.linalg.vector_norm(x, dim=-1).amax(-1)
    delta = separation(x)
    log_term = torch.log(2.0 * (n - 1) * n * beta * big_m**2)  # -inf if all patterns are 0
    threshold = (2.0 / (beta * n) + log_term / beta).unsqueeze(-1).expand_as(delta)
    single_condition = delta >= threshold
    radius = 1.0 / (beta * n * big_m)
    dist = torch.cdist(x, x, compute_mode="donot_use_mm_for_euclid_dist")
    eye = torch.eye(n, dtype=torch.bool, device=x.device)
    nearest = dist.masked_fill(eye, math.inf).amin(-1)
    isolated = nearest > 2.0 * radius.unsqueeze(-1)
    regime = torch.full(delta.shape, BetaRegime.METASTABLE, dtype=torch.long, device=x.device)
    regime = torch.where(single_condition & isolated, BetaRegime.SINGLE, regime)
    regime = torch.where(global_condition.unsqueeze(-1).expand_as(regime), BetaRegime.GLOBAL, regime)
    return BetaRegime(
        beta=beta,
        m_max=m_max,
        global_condition=global_condition,
        separation=delta,
        single_threshold=threshold,
        single_condition=single_condition,
        sphere_radius=radius,
        isolated=isolated,
        regime=regime,
    )


# ----------------------------------------------------------------------------------------------------------
# Capacity (Theorem 3)


def _capacity_ab(beta: float, K: float, d: int, p: float) -> tuple[float, float]:
    beta = check_scalar("beta", beta, gt=0.0)
    K = check_scalar("K", K, gt=0.0)
    d = check_int("d", d, ge=2)
    p = check_scalar("p", p, gt=0.0, le=1.0)
    a = 2.0 / (d - 1) * (1.0 + math.log(2.0 * beta * K**2 * p * (d - 1)))
    b = 2.0 * K**2 * beta / 5.0
    return a, b


def _w0_exp(y: float) -> float:
    """W0(exp(y)) for real y: scipy.special.lambertw, or the Wright omega function (the same value,
    W0(e^y) = omega(y)) when exp(y) overflows."""
    if y < 700.0:
        return float(scipy.special.lambertw(math.exp(y), 0).real)
    return float(scipy.special.wrightomega(y).real)


def capacity_constant(beta: float, K: float, d: int, p: float) -> float:
    r"""Constant :math:`c` of Ramsauer's storage-capacity theorem (Theorem 3 / A5).

    .. math::

        a = \frac{2}{d-1}\Big(1 + \ln\big(2\beta K^2 p (d-1)\big)\Big), \qquad b = \frac{2K^2\beta}{5},
        \qquad c = \frac{b}{W_0\big(\exp(a + \ln b)\big)},

    :math:`W_0` the upper branch of the Lambert W function (``scipy.special.lambertw``). Worked cases of
    the paper: :math:`c = 3.1546` for :math:`\beta=1, K=3, d=20, p=0.001`; :math:`c = 1.3718` for
    :math:`\beta=1, K=1, d=75, p=0.001`.

    Parameters
    ----------
    beta : float > 0;  K : float > 0 (patterns on the sphere of radius :math:`K\sqrt{d-1}`);
    d : int >= 2 (dimension);  p : float in (0, 1] (failure probability).

    Returns
    -------
    float

    References: Ramsauer et al. 2021 (arXiv 2008.02217), Theorem 3 and appendix Theorem A5.
    """
    a, b = _capacity_ab(beta, K, d, p)
    return b / _w0_exp(a + math.log(b))


@dataclass(frozen=True)
class CapacityBound:
    r"""Result of :func:`storage_capacity`.

    Attributes
    ----------
    c : float           capacity constant (:func:`capacity_constant`).
    a, b : float        the theorem's intermediate constants.
    n_patterns : float  :math:`\sqrt p\, c^{(d-1)/4}`, the number of patterns storable with probability
                        :math:`1-p` (``inf`` if it overflows a float).
    log_n_patterns : float  its natural logarithm (always finite).
    required_c : float  :math:`(2/\sqrt p)^{4/(d-1)}`.
    condition_holds : bool  :math:`c \ge` ``required_c`` (the theorem's premise).
    """

    c: float
    a: float
    b: float
    n_patterns: float
    log_n_patterns: float
    required_c: float
    condition_holds: bool


def storage_capacity(beta: float, K: float, d: int, p: float) -> CapacityBound:
    r"""Theorem 3 of Ramsauer et al.: with probability :math:`1 - p`, :math:`N \ge \sqrt p\,c^{(d-1)/4}`
    random patterns on the sphere of radius :math:`M = K\sqrt{d-1}` can be stored, provided
    :math:`c \ge (2/\sqrt p)^{4/(d-1)}`; :math:`c` as in :func:`capacity_constant`.

    Parameters
    ----------
    beta : float > 0;  K : float > 0;  d : int >= 2;  p : float in (0, 1].

    Returns
    -------
    CapacityBound

    References: Ramsauer et al. 2021 (arXiv 2008.02217), Theorem 3 / A5.
    """
    a, b = _capacity_ab(beta, K, d, p)
    c = b / _w0_exp(a + math.log(b))
    required = (2.0 / math.sqrt(p)) ** (4.0 / (d - 1))
    log_n = 0.5 * math.log(p) + (d - 1) / 4.0 * math.log(c)
    return CapacityBound(
        c=c,
        a=a,
        b=b,
        n_patterns=math.exp(log_n) if log_n < 709.0 else math.inf,
        log_n_patterns=log_n,
        required_c=required,
        condition_holds=c >= required,
    )


# ----------------------------------------------------------------------------------------------------------
# Retrieval error (Theorem 5)


def _select_pattern(patterns: Tensor, index) -> tuple[Tensor, Tensor]:
    """Rows x_index (..., d) and Delta_index (...) for an int or a LongTensor index over the batch."""
    n = patterns.shape[-2]
    delta = separation(patterns)
    if isinstance(index, Tensor):
        if index.dtype not in (torch.int32, torch.int64):
            raise ValueError(f"index must be an int or an integer tensor, got dtype {index.dtype}")
        if bool(((index < 0) | (index >= n)).any()):
            raise ValueError(f"index must be in [0, N) with N = {n}")
        batch = torch.broadcast_shapes(index.shape, patterns.shape[:-2])
        idx = index.expand(batch)
        x = patterns.expand(*batch, *patterns.shape[-2:])
        xi_row = torch.gather(x, -2, idx[..., None, None].expand(*batch, 1, x.shape[-1])).squeeze(-2)
        d_i = torch.gather(delta.expand(*batch, n), -1, idx.unsqueeze(-1)).squeeze(-1)
        return xi_row, d_i
    index = check_int("index", index, ge=0, lt=n, lt_name="N")
    return patterns[..., index, :], delta[..., index]


def retrieval_error_bound(
    xi: Tensor, patterns: Tensor, index, beta: float, x_star: Tensor | None = None
) -> Tensor:
    r"""Theorem 5 bound on the one-step retrieval error :math:`\lVert T(\xi) - x_i\rVert`.

    .. math::

        \lVert T(\xi) - x_i\rVert \le 2(N-1)\exp\!\big(-\beta(\Delta_i - 2 r M)\big)\,M, \qquad
        r = \max\{\lVert\xi - x_i\rVert, \lVert x_i^* - x_i\rVert\}.

    If ``x_star`` (the fixed point near :math:`x_i`) is None, :math:`r = \lVert\xi - x_i\rVert`, which gives
    a smaller, still valid bound: with :math:`c = \xi^\top x_i - \max_{j\ne i}\xi^\top x_j \ge \Delta_i -
    2\lVert\xi - x_i\rVert M` (Cauchy–Schwarz, :math:`\lVert x_i - x_j\rVert \le 2M`), Lemma A4 gives
    :math:`\sum_{j\ne i}p_j \le (N-1)e^{-\beta c}` and
    :math:`\lVert T(\xi) - x_i\rVert \le 2M\sum_{j\ne i}p_j`. The same holds for :math:`\alpha`-entmax
    (:math:`\alpha > 1`) [derived here]: on the support :math:`p_j^{\alpha-1} = p_i^{\alpha-1} -
    (\alpha-1)\beta(s_i - s_j) \le 1 - (\alpha-1)\beta c`, and
    :math:`(1-(\alpha-1)x)_+^{1/(\alpha-1)} \le e^{-x}`. The bound is informative only when it is below the
    trivial :math:`2M` (diameter of the ball holding both points), i.e. when
    :math:`\beta(\Delta_i - 2rM) > \ln(N-1)`.

    Parameters
    ----------
    xi : Tensor (..., d)
    patterns : Tensor (..., N, d), N >= 2
    index : int or LongTensor (...)  which pattern :math:`i`.
    beta : float > 0
    x_star : Tensor (..., d), optional

    Returns
    -------
    Tensor (...), dtype of ``xi``.

    References: Ramsauer et al. 2021 (arXiv 2008.02217), Theorem 5 (appendix A9) and Lemma A4.
    """
    _check_problem(xi, patterns, xi_name="xi", keys_name="patterns")
    _check_patterns(patterns, min_n=2)
    beta = check_scalar("beta", beta, gt=0.0)
    cd = compute_dtype(xi.dtype)
    x = patterns.to(cd)
    n = x.shape[-2]
    x_i, delta_i = _select_pattern(x, index)
    big_m = torch.linalg.vector_norm(x, dim=-1).amax(-1)
    r = torch.linalg.vector_norm(xi.to(cd) - x_i, dim=-1)
    if x_star is not None:
        check_tensor("x_star", x_star, min_dim=1)
        check_finite("x_star", x_star)
        if x_star.shape[-1] != xi.shape[-1]:
            raise ValueError(f"x_star must have shape (..., d) with d = {xi.shape[-1]}, got {tuple(x_star.shape)}")
        r = torch.maximum(r, torch.linalg.vector_norm(x_star.to(cd) - x_i, dim=-1))
    bound = 2.0 * (n - 1) * torch.exp(-beta * (delta_i - 2.0 * r * big_m)) * big_m
    return bound.to(xi.dtype)


def stored_pattern_error_bound(patterns: Tensor, beta: float) -> Tensor:
    r"""Second part of Theorem 5: distance between a pattern and its fixed point.

    .. math::  \lVert x_i - x_i^*\rVert \le 2e(N-1)M\exp(-\beta\Delta_i),

    valid when :math:`\lVert x_i - x_i^*\rVert \le \frac{1}{2\beta M}` and the starting point satisfies
    :math:`\lVert x_i - \xi\rVert \le \frac{1}{2\beta M}` (the theorem's premises; check them, e.g. with
    the result of :func:`fixed_point` started at :math:`x_i`).

    Parameters
    ----------
    patterns : Tensor (..., N, d), N >= 2;  beta : float > 0.

    Returns
    -------
    Tensor (..., N), dtype of ``patterns``.

    References: Ramsauer et al. 2021 (arXiv 2008.02217), Theorem 5 (appendix A9).
    """
    _check_patterns(patterns, min_n=2)
    beta = check_scalar("beta", beta, gt=0.0)
    x = patterns.to(compute_dtype(patterns.dtype))
    n = x.shape[-2]
    big_m = torch.linalg.vector_norm(x, dim=-1).amax(-1, keepdim=True)
    bound = 2.0 * math.e * (n - 1) * big_m * torch.exp(-beta * separation(x))
    return bound.to(patterns.dtype)
