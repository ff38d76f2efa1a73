r"""The sparse–dense discrepancy of attention, its directional properties, and the GAG map.

This module is the correctness oracle for GAG (Kim, arXiv 2603.02531) and PLADIS (Kim & Sim, arXiv
2503.07677). Statements, assumptions, proofs and counterexamples are in ``THEORY.md``; the symbols here
are the same.

Notation (batched over ``(..., heads, queries)``; ``Lq`` queries, ``Lk`` keys):

* queries ``q`` (..., Lq, d), keys ``k`` (..., Lk, d), values ``v`` (..., Lk, dv); ``v = None`` means
  ``v = k`` (the Hopfield / auto-associative case, the only one in which iterating makes sense);
* scale :math:`\beta` (default :math:`1/\sqrt d`), scores :math:`z = \beta\, q k^\top` (plus an additive
  mask; removed entries are :math:`-\infty`);
* dense weights :math:`p_d = \mathrm{softmax}(z)`, sparse weights :math:`p_s = \alpha\text{-entmax}(z)`
  (default :math:`\alpha = 1.5`), both from :func:`hopfield_gag.ops.normalizers.normalize`;
* dense output :math:`d = p_d v = T_d(\xi)`, sparse output :math:`s = p_s v = T_s(\xi)` (the retrieval
  direction), discrepancy :math:`\Delta = s - d`;
* parallel coefficient :math:`c = \langle\Delta, s\rangle/\lVert s\rVert^2` (0 if :math:`s = 0`),
  :math:`\Delta_\parallel = c\,s`, :math:`\Delta_\perp = \Delta - \Delta_\parallel`;
* GAG output :math:`o = s + \lambda\,\mathrm{cap}_\eta(\Delta_\parallel + \zeta\Delta_\perp)`,
  :math:`\mathrm{cap}_\eta(g) = g\min(1, \eta/\lVert g\rVert)` (the Euclidean projection on the ball of
  radius :math:`\eta`).

Margins. Every predicate returns a float tensor of per-token margins (shape (..., Lq)); a margin
:math:`\ge 0` means the property holds for that token. Inner-product properties are reported as cosines
in :math:`[-1, 1]`; when one of the two vectors is below the float noise floor of its computation
(:func:`noise_floor`) the direction is numerically undefined and the margin is exactly 0.
"""
from __future__ import annotations

import math
from dataclasses import dataclass

import torch
from torch import Tensor

from ..ops.params import GagParams
from .._validation import check_int, check_qkv, check_scalar, check_tensor, compute_dtype, default_scale
from ..hopfield.dynamics import energy_grad
from ..ops.combine import parallel_coefficient
from ..ops.normalizers import apply_mask, normalize

__all__ = [
    "noise_floor",
    "SparseDenseDiscrepancy",
    "sparse_dense_discrepancy",
    "majorization_margin",
    "crossing_certificate",
    "sharpening_margin",
    "query_alignment_margin",
    "basin_alignment_margin",
    "parallel_margin",
    "parallel_certificate",
    "descent_margin",
    "consistency_margin",
]


# ----------------------------------------------------------------------------------------------------
# helpers
# ----------------------------------------------------------------------------------------------------
def noise_floor(magnitude: Tensor, n: int, dtype: torch.dtype) -> Tensor:
    r"""Float noise floor of a weighted sum :math:`\sum_{j\le n} w_j v_j` with :math:`\lVert v_j\rVert \le`
    ``magnitude`` and weights on the simplex.

    .. math::  \text{floor} = 64\,\varepsilon_{\text{dtype}}\sqrt{n}\cdot\text{magnitude}.

    Each weight carries a few ulps of error (normalization and renormalization); errors add up like a
    random walk over the ``n`` terms; 64 leaves a wide safety factor. Vectors shorter than this have no
    reliable direction, so cosine margins involving them are reported as 0.
    """
    return 64.0 * torch.finfo(dtype).eps * math.sqrt(max(n, 1)) * magnitude


def _cosine(a: Tensor, b: Tensor, floor_a: Tensor, floor_b: Tensor) -> Tensor:
    """cos(a, b) along the last dim; exactly 0 where ||a|| <= floor_a or ||b|| <= floor_b."""
    na = torch.linalg.vector_norm(a, dim=-1)
    nb = torch.linalg.vector_norm(b, dim=-1)
    ok = (na > floor_a) & (nb > floor_b)
    den = torch.where(ok, na * nb, torch.ones_like(na))
    return torch.where(ok, (a * b).sum(-1) / den, torch.zeros_like(na))


def _check_scale(scale, d: int) -> float:
    return default_scale(scale, d)


def _check_alpha(alpha, name: str = "alpha", ge: float = 1.0) -> float:
    return check_scalar(name, alpha, ge=ge)


def _check_qkv(q: Tensor, k: Tensor, v: Tensor | None) -> None:
    check_qkv(q, k, v)


def _effective_scores(q: Tensor, k: Tensor, beta: float, mask) -> Tensor:
    """z = beta q k^T, with the mask applied: boolean False -> -inf, additive float added."""
    z = beta * (q @ k.transpose(-1, -2))
    return z if mask is None else apply_mask(z, mask, name="the scores (..., Lq, Lk)")


# ----------------------------------------------------------------------------------------------------
# the discrepancy
# ----------------------------------------------------------------------------------------------------
@dataclass(frozen=True)
class SparseDenseDiscrepancy:
    r"""All quantities of the sparse–dense discrepancy for a batch of queries.

    Attributes
    ----------
    z : Tensor (..., Lq, Lk)
        Scores :math:`\beta q k^\top` (+ additive mask); removed keys are :math:`-\infty`.
    p_dense, p_sparse : Tensor (..., Lq, Lk)
        :math:`p_d = \mathrm{softmax}(z)`, :math:`p_s = \alpha\text{-entmax}(z)`.
    dense, sparse : Tensor (..., Lq, dv)
        :math:`d = p_d v`, :math:`s = p_s v`.
    delta : Tensor (..., Lq, dv)
        :math:`\Delta = s - d`.
    parallel_coef : Tensor (..., Lq)
        :math:`c = \langle\Delta, s\rangle / \lVert s\rVert^2` (0 where :math:`s = 0`).
    delta_parallel, delta_perp : Tensor (..., Lq, dv)
        :math:`\Delta_\parallel = c s`, :math:`\Delta_\perp = \Delta - \Delta_\parallel`.
    scale, alpha : float
        :math:`\beta` and :math:`\alpha` used.
    value_norm_max : Tensor (..., 1)
        :math:`\max_j\lVert v_j\rVert` over the keys (for noise floors).

    All tensors are in the compute dtype (fp32 for half inputs, else the input dtype).
    """

    z: Tensor
    p_dense: Tensor
    p_sparse: Tensor
    dense: Tensor
    sparse: Tensor
    delta: Tensor
    parallel_coef: Tensor
    delta_parallel: Tensor
    delta_perp: Tensor
    scale: float
    alpha: float
    value_norm_max: Tensor
    queries: Tensor | None = None
    keys: Tensor | None = None
    values: Tensor | None = None
    mask: Tensor | None = None

    @property
    def n_keys(self) -> int:
        return self.z.shape[-1]

    def floor(self) -> Tensor:
        """Noise floor (..., Lq) of output-space vectors (``delta``, ``sparse``, ``dense``)."""
        f = noise_floor(self.value_norm_max, self.n_keys, self.z.dtype)
        return f.expand(self.parallel_coef.shape)

    # ------------------------------------------------------------------------------------------------
    # one discrepancy, every margin: the q/k/v functions below are thin wrappers over these methods, so a
    # study that needs several margins of the same tokens computes the scores and both normalizers once.
    # ------------------------------------------------------------------------------------------------
    def _need(self, name: str) -> Tensor:
        x = getattr(self, name)
        if x is None:
            raise ValueError(f"this SparseDenseDiscrepancy carries no {name}; build it with "
                             "sparse_dense_discrepancy(q, k, v, ...)")
        return x

    def enclosure(self):
        r"""The sound link between these computed quantities and the exact ones of the given inputs
        (:class:`hopfield_gag.theory.enclosure.OutputEnclosure`: score, weight and output error bounds);
        computed once per discrepancy and cached."""
        cached = self.__dict__.get("_enclosure")
        if cached is None:
            from .enclosure import output_enclosure

            cached = output_enclosure(self)
            object.__setattr__(self, "_enclosure", cached)
        return cached

    def key_retrievals(self) -> tuple[Tensor, Tensor]:
        r"""The dense and sparse retrievals in key space, :math:`(p_d K, p_s K)`, each (..., Lq, d).

        Equal to ``(dense, sparse)`` in the Hopfield case ``v = None``. The key-space quantities of the
        theory (P-align (query), P-descent) and of the AA-adaptive scale are read from these."""
        k = self._need("keys")
        if self.values is k:
            return self.dense, self.sparse
        return self.p_dense @ k, self.p_sparse @ k

    def key_floor(self) -> Tensor:
        """Noise floor (..., Lq) of key-space vectors (:meth:`key_retrievals` and their difference)."""
        k = self._need("keys")
        kmax = torch.linalg.vector_norm(k, dim=-1).amax(-1, keepdim=True)
        return noise_floor(kmax, self.n_keys, self.z.dtype).expand(self.parallel_coef.shape)

    def sharpening_margin(self) -> Tensor:
        r""":func:`sharpening_margin` (entmax over softmax, ``alpha_ref = 1``) of these tokens, (..., Lq)."""
        return majorization_margin(self.p_sparse, self.p_dense, self.z)

    def query_alignment_margin(self) -> Tensor:
        r""":func:`query_alignment_margin` of these tokens: :math:`\cos((p_s - p_d)K, q)`, (..., Lq)."""
        d_key, s_key = self.key_retrievals()
        return _cosine(s_key - d_key, self._need("queries"), self.key_floor(), torch.zeros(()))

    def parallel_margin(self) -> Tensor:
        r""":func:`parallel_margin` of these tokens: :math:`\cos(\hat\Delta, \hat s)` where the sign of the exact
        :math:`c^\ast` is proved by the enclosure (:meth:`enclosure`), 0 where rounding could change it,
        (..., Lq)."""
        m = _cosine(self.delta, self.sparse, torch.zeros(()), torch.zeros(()))
        c_lo, c_hi = self.enclosure().c_bounds()
        decided = ((c_lo > 0) & (m > 0)) | ((c_hi < 0) & (m < 0))
        return torch.where(decided, m, torch.zeros_like(m))

    def value_scores(self) -> Tensor:
        r""":math:`w_j = \langle v_j, \hat s\rangle`, :math:`\hat s = s/\lVert s\rVert` (0 where :math:`s = 0`),
        (..., Lq, Lk): the scores of the transport certificate."""
        sn = torch.linalg.vector_norm(self.sparse, dim=-1, keepdim=True)
        shat = self.sparse / torch.where(sn > 0, sn, torch.ones_like(sn))
        return shat @ self._need("values").transpose(-1, -2)

    def parallel_certificate(self) -> Tensor:
        r""":func:`parallel_certificate` (the sound transport bracket, T5a) of these tokens, (..., Lq)."""
        from .certificates import transport_certificate_of_discrepancy

        return transport_certificate_of_discrepancy(self)

    def descent_margin(self, energy_alpha: float = 1.0) -> Tensor:
        r""":func:`descent_margin` of these tokens (Hopfield reading: the keys are the stored patterns and the
        key-space retrievals are the states), (..., Lq)."""
        energy_alpha = _check_alpha(energy_alpha, "energy_alpha")
        d_key, s_key = self.key_retrievals()
        grad = energy_grad(d_key, self._need("keys").unsqueeze(-3), self.scale, energy_alpha)
        return -_cosine(grad, s_key - d_key, self.key_floor(), self.key_floor())

    def parallel_bounds(self):
        r""":func:`hopfield_gag.theory.parallel_bounds` of these tokens (a :class:`ParallelBounds`)."""
        from .certificates import bounds_of_discrepancy  # certificates build on this module

        return bounds_of_discrepancy(self)

    def sign_flip_margin(self, lam: float = GagParams.lam, eta: float | None = GagParams.eta, zeta: float = 0.0,
                         parallel: str = "paper") -> Tensor:
        r""":func:`hopfield_gag.theory.sign_flip_margin` of these tokens, (..., Lq)."""
        from .certificates import sign_flip_of_discrepancy

        return sign_flip_of_discrepancy(self, lam, eta, zeta, parallel)


def sparse_dense_discrepancy(
    q: Tensor,
    k: Tensor,
    v: Tensor | None = None,
    scale: float | None = None,
    alpha: float = 1.5,
    mask: Tensor | None = None,
) -> SparseDenseDiscrepancy:
    r"""Sparse and dense attention on the same (q, k, v) and their discrepancy.

    .. math::

        z = \beta q k^\top,\quad p_d = \mathrm{softmax}(z),\quad p_s = \alpha\text{-entmax}(z),\quad
        d = p_d v,\quad s = p_s v,\quad \Delta = s - d,

        c = \frac{\langle\Delta, s\rangle}{\lVert s\rVert^2},\quad \Delta_\parallel = c\,s,\quad
        \Delta_\perp = \Delta - \Delta_\parallel .

    "Shared conditioning" (GAG abstract): both maps see the same queries, keys and values, so
    :math:`\Delta` comes only from the normalizer.

    Parameters
    ----------
    q : Tensor (..., Lq, d)
    k : Tensor (..., Lk, d)
    v : Tensor (..., Lk, dv), optional
        ``None`` means ``v = k`` (Hopfield case).
    scale : float > 0, optional
        :math:`\beta`; default :math:`1/\sqrt d`.
    alpha : float > 1
        Order of the sparse normalizer (1.5 in PLADIS and GAG; 2 = sparsemax).
    mask : Tensor, optional
        Boolean (``True`` = keep) or additive float, broadcastable to (..., Lq, Lk).

    Returns
    -------
    SparseDenseDiscrepancy

    References: GAG (arXiv 2603.02531) Eq. 12–13 as reimplemented (``THEORY.md`` §Reading);
    Ramsauer et al. 2021 (arXiv 2008.02217) §3 for attention as a Hopfield step.
    """
    _check_qkv(q, k, v)
    beta = _check_scale(scale, q.shape[-1])
    alpha = _check_alpha(alpha, ge=1.0)
    if alpha == 1.0:
        raise ValueError("alpha must be > 1 (the sparse branch); alpha = 1 would give Delta = 0")
    cd = compute_dtype(q.dtype)
    qc, kc = q.to(cd), k.to(cd)
    vc = kc if v is None else v.to(cd)
    z = _effective_scores(qc, kc, beta, mask)
    p_d = normalize(z, 1.0)
    p_s = normalize(z, alpha)
    dense = p_d @ vc
    sparse = p_s @ vc
    delta = sparse - dense
    c = parallel_coefficient(dense, sparse)  # the one home of c and its small-norm rule (ops/combine.py)
    d_par = c.unsqueeze(-1) * sparse
    vmax = torch.linalg.vector_norm(vc, dim=-1).amax(-1, keepdim=True)
    return SparseDenseDiscrepancy(
        z=z, p_dense=p_d, p_sparse=p_s, dense=dense, sparse=sparse, delta=delta, parallel_coef=c,
        delta_parallel=d_par, delta_perp=delta - d_par, scale=beta, alpha=alpha, value_norm_max=vmax,
        queries=qc, keys=kc, values=vc, mask=mask,
    )


# ----------------------------------------------------------------------------------------------------
# weight-level lemmas
# ----------------------------------------------------------------------------------------------------
def majorization_margin(p: Tensor, p_ref: Tensor, order: Tensor) -> Tensor:
    r"""Majorization margin of ``p`` over ``p_ref``, both sorted by ``order`` (descending).

    .. math::

        m = \min_{1\le k < n}\; \sum_{j\le k} \big(p_{\pi(j)} - p^{\mathrm{ref}}_{\pi(j)}\big),
        \qquad z_{\pi(1)} \ge z_{\pi(2)} \ge \dots,

    with :math:`\pi` sorting ``order`` (the scores). If both distributions are non-increasing
    functions of the score (true for every :math:`\alpha`-entmax, including softmax), sorting by the
    score sorts both, so :math:`m \ge 0` iff ``p`` majorizes ``p_ref`` (:math:`p \succ p^{\mathrm{ref}}`).
    Entries removed by a mask carry 0 in both and do not affect :math:`m`. :math:`m \in [-1, 1]`;
    :math:`n = 1` gives 0.

    Parameters
    ----------
    p, p_ref : Tensor (..., n)   distributions.
    order : Tensor (..., n)      scores defining the order (``-inf`` allowed).

    Returns
    -------
    Tensor (...)

    References: Marshall, Olkin & Arnold, *Inequalities: Theory of Majorization*, 2nd ed. (2011), §1.A.
    """
    idx = order.argsort(dim=-1, descending=True, stable=True)
    diff = (p.gather(-1, idx) - p_ref.gather(-1, idx)).cumsum(-1)
    if diff.shape[-1] == 1:
        return torch.zeros_like(diff[..., 0])
    return diff[..., :-1].amin(-1)


def crossing_certificate(p_hi: Tensor, p_lo: Tensor, w: Tensor) -> Tensor:
    r"""Certificate for :math:`\langle p_{hi} - p_{lo}, w\rangle \ge 0` (transport lemma, ``THEORY.md`` L1).

    With :math:`D = p_{hi} - p_{lo}`, :math:`S^+ = \{j : D_j > 0\}`, :math:`S^- = \{j : D_j < 0\}`:

    .. math::

        \mathrm{cert} = \min_{j\in S^+} w_j - \max_{j\in S^-} w_j, \qquad
        \langle D, w\rangle \ge \tfrac12\lVert D\rVert_1\cdot\mathrm{cert}.

    So ``cert >= 0`` proves the inner product is non-negative. When :math:`D = 0` (no mass moves) the
    certificate is :math:`+\infty`.

    Parameters
    ----------
    p_hi, p_lo : Tensor (..., n)   distributions (sums equal).
    w : Tensor (..., n)            scores of the keys (e.g. :math:`\langle v_j, s\rangle`).

    Returns
    -------
    Tensor (...)
    """
    dd = p_hi - p_lo
    big = torch.full_like(w, math.inf)
    lo = torch.where(dd > 0, w, big).amin(-1)
    hi = torch.where(dd < 0, w, -big).amax(-1)
    return lo - hi


# ----------------------------------------------------------------------------------------------------
# predicates (margins)
# ----------------------------------------------------------------------------------------------------
def sharpening_margin(
    q: Tensor,
    k: Tensor,
    scale: float | None = None,
    alpha: float = 1.5,
    mask: Tensor | None = None,
    alpha_ref: float = 1.0,
) -> Tensor:
    r"""**P-sharpen**: :math:`\alpha\text{-entmax}(z)` majorizes :math:`\alpha_{\mathrm{ref}}\text{-entmax}(z)`.

    Margin: :func:`majorization_margin` of :math:`p_\alpha = \alpha\text{-entmax}(z)` over
    :math:`p_{\alpha_{\mathrm{ref}}}` (softmax for the default ``alpha_ref = 1``),
    :math:`z = \beta q k^\top`.

    Proved for every :math:`z` and :math:`\alpha > \alpha_{\mathrm{ref}} \ge 1` (``THEORY.md`` T1, T2):
    the ratio :math:`p_s/p_d` is non-decreasing in :math:`z_j` (single crossing), and
    :math:`\partial p_j/\partial\alpha` crosses zero once in :math:`z_j`. Consequence:
    :math:`\langle p_\alpha - p_{\alpha_{\mathrm{ref}}}, z\rangle \ge 0`.

    Parameters
    ----------
    q : Tensor (..., Lq, d);  k : Tensor (..., Lk, d);  scale : float, default :math:`1/\sqrt d`;
    alpha : float > alpha_ref;  mask : optional (bool / additive) broadcastable to (..., Lq, Lk);
    alpha_ref : float >= 1.

    Returns
    -------
    Tensor (..., Lq) in :math:`[-1, 1]`, compute dtype.
    """
    _check_qkv(q, k, None)
    beta = _check_scale(scale, q.shape[-1])
    alpha = _check_alpha(alpha, ge=1.0)
    alpha_ref = _check_alpha(alpha_ref, "alpha_ref", ge=1.0)
    if not alpha > alpha_ref:
        raise ValueError(f"alpha must be > alpha_ref, got alpha={alpha}, alpha_ref={alpha_ref}")
    if alpha_ref == 1.0:
        return sparse_dense_discrepancy(q, k, None, beta, alpha, mask).sharpening_margin()
    cd = compute_dtype(q.dtype)
    z = _effective_scores(q.to(cd), k.to(cd), beta, mask)
    return majorization_margin(normalize(z, alpha), normalize(z, alpha_ref), z)


def query_alignment_margin(
    q: Tensor, k: Tensor, scale: float | None = None, alpha: float = 1.5, mask: Tensor | None = None
) -> Tensor:
    r"""**P-align (query)**: the key-space discrepancy points along the query.

    .. math::

        \Delta_K = k^\top (p_s - p_d),\qquad
        \langle\Delta_K, q\rangle = \beta^{-1}\langle p_s - p_d, \beta q k^\top\rangle,\qquad
        m = \cos(\Delta_K, q).

    In the Hopfield case :math:`v = k` this is :math:`\cos(\Delta, \xi)`. Proved :math:`\ge 0` for all
    inputs with a boolean (or :math:`-\infty`) mask, as a corollary of P-sharpen (``THEORY.md`` T3);
    a finite additive mask (a score bias) breaks it. Values ``v`` play no role.

    Returns
    -------
    Tensor (..., Lq), cosine, 0 where :math:`\Delta_K` or :math:`q` is below the noise floor.
    """
    return sparse_dense_discrepancy(q, k, None, scale, alpha, mask).query_alignment_margin()


def basin_alignment_margin(
    q: Tensor,
    k: Tensor,
    target: Tensor | None = None,
    scale: float | None = None,
    alpha: float = 1.5,
    mask: Tensor | None = None,
) -> Tensor:
    r"""**P-align (basin)**, Hopfield case :math:`v = k`: :math:`\Delta` points from the dense retrieval
    towards the stored pattern.

    .. math::  m = \cos(\Delta, x^\star - d), \qquad x^\star = k_{i^\star},\ i^\star = \arg\max_j z_j

    (or ``target``). Exactly, :math:`\langle\Delta, x^\star - d\rangle \ge 0 \iff \lVert x^\star - s\rVert^2
    \le \lVert x^\star - d\rVert^2 + \lVert\Delta\rVert^2`. Proved in the exact-retrieval region of the
    sparse map (:math:`s = x^\star`, then :math:`m = 1`) and whenever the sparse error is at most the
    dense error; false for near-duplicate / metastable patterns (``THEORY.md`` T4).

    Parameters
    ----------
    q : Tensor (..., Lq, d);  k : Tensor (..., Lk, d)
    target : Tensor, optional
        Long (..., Lq) key indices, or stored patterns (..., Lq, d). Default: the top-scoring key.
    scale, alpha, mask : as in :func:`sparse_dense_discrepancy`.

    Returns
    -------
    Tensor (..., Lq), cosine.
    """
    disc = sparse_dense_discrepancy(q, k, None, scale, alpha, mask)
    kc = k.to(disc.z.dtype)
    if target is None or (isinstance(target, Tensor) and not target.is_floating_point()):
        idx = disc.z.argmax(-1) if target is None else target
        if not isinstance(idx, Tensor) or idx.shape != disc.z.shape[:-1]:
            raise ValueError(f"target (indices) must have shape {tuple(disc.z.shape[:-1])}")
        kb = kc.expand(*disc.z.shape[:-2], *kc.shape[-2:])
        xstar = kb.gather(-2, idx.unsqueeze(-1).expand(*idx.shape, kc.shape[-1]))
    else:
        check_tensor("target", target, min_dim=2)
        xstar = target.to(disc.z.dtype)
    return _cosine(disc.delta, xstar - disc.dense, disc.floor(), disc.floor())


def parallel_margin(
    q: Tensor,
    k: Tensor,
    v: Tensor | None = None,
    scale: float | None = None,
    alpha: float = 1.5,
    mask: Tensor | None = None,
) -> Tensor:
    r"""Parallel coefficient sign: :math:`m = \cos(\Delta, s)`, so :math:`m \ge 0 \iff c \ge 0`.

    Holds when the value scores :math:`w_j = \langle v_j, s\rangle` are higher on the keys the sparse map
    up-weights than on the keys it down-weights (:func:`parallel_certificate` :math:`\ge 0`); in
    particular when :math:`w` is a non-decreasing function of :math:`z` (e.g. orthogonal equal-norm
    values with :math:`v = k`), and in the exact-retrieval region when :math:`\langle v_j, v_i\rangle \le
    \lVert v_i\rVert^2`. False in general: collinear values of different norms (``THEORY.md`` T5).

    Returns
    -------
    Tensor (..., Lq), cosine.
    """
    return sparse_dense_discrepancy(q, k, v, scale, alpha, mask).parallel_margin()


def parallel_certificate(
    q: Tensor,
    k: Tensor,
    v: Tensor | None = None,
    scale: float | None = None,
    alpha: float = 1.5,
    mask: Tensor | None = None,
) -> Tensor:
    r"""Sufficient condition for :math:`c \ge 0`: :func:`crossing_certificate` with
    :math:`w_j = \langle v_j, \hat s\rangle`, :math:`\hat s = s/\lVert s\rVert`.

    .. math::  \langle\Delta, s\rangle = \langle p_s - p_d, V s\rangle
               \ge \tfrac12\lVert p_s - p_d\rVert_1\,\lVert s\rVert\,\mathrm{cert}.

    Returns
    -------
    Tensor (..., Lq) in units of the value norm; :math:`\ge 0` proves ``parallel_margin >= 0``.
    """
    return sparse_dense_discrepancy(q, k, v, scale, alpha, mask).parallel_certificate()


def descent_margin(
    q: Tensor,
    k: Tensor,
    scale: float | None = None,
    alpha: float = 1.5,
    energy_alpha: float = 1.0,
) -> Tensor:
    r"""**P-descent**, Hopfield case :math:`v = k`: :math:`\Delta` is a descent direction of the Hopfield
    energy at the dense retrieval :math:`d = T_d(\xi)`.

    .. math::  m = -\cos\big(\nabla E(d), \Delta\big), \qquad \nabla E(d) = d - T(d)

    with :math:`E` the dense (Ramsauer) energy for ``energy_alpha = 1`` or the Hopfield–Fenchel–Young
    energy of that order (:func:`hopfield_gag.hopfield.energy_grad`, scale :math:`\beta`).
    ``THEORY.md`` T6: for the dense energy it holds when the sparse retrieval is exact and :math:`d`
    is far from the dense fixed point relative to its offset from the stored pattern; it FAILS for
    queries at (or near) a stored pattern, because the dense energy's minimum :math:`x_i^*` is displaced
    from :math:`x_i` and :math:`\Delta` points to :math:`x_i`. For the sparse energy
    (``energy_alpha = alpha``) it holds whenever :math:`\xi` and :math:`d` are in the exact-retrieval
    region of the same pattern.

    Parameters
    ----------
    q : Tensor (..., Lq, d) states;  k : Tensor (..., Lk, d) stored patterns;  scale, alpha as in
    :func:`sparse_dense_discrepancy`;  energy_alpha : float >= 1.

    Returns
    -------
    Tensor (..., Lq), cosine.
    """
    energy_alpha = _check_alpha(energy_alpha, "energy_alpha")
    return sparse_dense_discrepancy(q, k, None, scale, alpha).descent_margin(energy_alpha)


def consistency_margin(
    q: Tensor,
    k: Tensor,
    steps: int = 1,
    scale: float | None = None,
    alpha: float = 1.5,
    mask: Tensor | None = None,
    reduce: str | None = "min",
) -> Tensor:
    r"""**P-consistent**, Hopfield case: along the dense iteration :math:`\xi_{t+1} = T_d(\xi_t)`,
    successive discrepancies agree in direction.

    .. math::  m_t = \cos(\Delta_t, \Delta_{t+1}), \quad \Delta_t = T_s(\xi_t) - T_d(\xi_t),
               \quad \xi_0 = q,\ t = 0, \dots, \text{steps} - 1.

    ``THEORY.md`` T7: holds when the sparse retrieval is exact along the trajectory and the dense step is
    no longer than the distance to the stored pattern; asymptotically whenever the dense limit is not a
    sparse fixed point; fails in metastable configurations.

    Parameters
    ----------
    q : Tensor (..., Lq, d) initial states;  k : Tensor (..., Lk, d) patterns;
    steps : int >= 1;  scale, alpha, mask : as in :func:`sparse_dense_discrepancy`;
    reduce : ``"min"`` (default) or ``None``.

    Returns
    -------
    Tensor (..., Lq) (``reduce="min"``: the worst step) or (..., Lq, steps).
    """
    steps = check_int("steps", steps, ge=1)
    if reduce not in ("min", None):
        raise ValueError(f"reduce must be 'min' or None, got {reduce!r}")
    _check_qkv(q, k, None)
    cd = compute_dtype(q.dtype)
    kc = k.to(cd)  # iterate in the compute dtype: no re-rounding of the states to half precision
    disc = sparse_dense_discrepancy(q.to(cd), kc, None, scale, alpha, mask)
    out = []
    for _ in range(steps):
        nxt = sparse_dense_discrepancy(disc.dense, kc, None, disc.scale, alpha, mask)
        out.append(_cosine(disc.delta, nxt.delta, disc.floor(), nxt.floor()))
        disc = nxt
    m = torch.stack(out, -1)
    return m.amin(-1) if reduce == "min" else m
