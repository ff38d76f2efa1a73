r"""Stability of GAG as run: one application per attention call inside a sampler (``THEORY.md`` T9).

In a diffusion sampler GAG replaces the dense attention output :math:`d` of a layer by
:math:`o_t = d + t\,(o - d)` (``strength`` :math:`t`), once per call; with :math:`v \ne k` nothing is iterated,
so "weak contraction" of :math:`G` is not even defined there. What can be proved is a per-call bound on the
deviation from the unguided layer:

.. math::

    \lVert o - d\rVert = \lVert\Delta + \lambda\,\mathrm{cap}_\eta(g)\rVert
    \le \lVert\Delta\rVert + \lambda\min(\eta, \lVert\Delta\rVert),\qquad
    \lVert\Delta\rVert \le \mathrm{TV}\cdot\max_{j,l}\lVert v_j - v_l\rVert \le 2\max_j\lVert v_j\rVert,

per (token, head) for :math:`0 \le \zeta \le 1` (T8a), and after the output projection
:math:`W_O` (heads concatenated)

.. math::  \lVert W_O(o_t - d)\rVert \le t\,\lVert W_O\rVert_2\Big(\sum_h \big(\lVert\Delta_h\rVert
           + \lambda\min(\eta, \lVert\Delta_h\rVert)\big)^2\Big)^{1/2} .

Across sampler steps: if the unguided update is :math:`x_{n+1} = \Phi_n(x_n)` with :math:`\Phi_n`
:math:`L_n`-Lipschitz and the guided one differs from it by at most :math:`\delta_n` at the guided state,
then (discrete Grönwall) :math:`\lVert x^G_N - x_N\rVert \le \sum_n \delta_n\prod_{m>n}L_m`
(:func:`accumulated_deviation_bound`). :math:`\delta_n` and :math:`L_n` are properties of the network; the
studies measure them.
"""
from __future__ import annotations

import torch
from torch import Tensor

from ..ops.params import GagParams
from .._validation import check_scalar, check_tensor
from .discrepancy import sparse_dense_discrepancy

__all__ = ["gag_layer_deviation_bound", "accumulated_deviation_bound"]


def gag_layer_deviation_bound(
    q: Tensor,
    k: Tensor,
    v: Tensor,
    lam: float = GagParams.lam,
    eta: float | None = GagParams.eta,
    strength: float = 1.0,
    out_proj: Tensor | None = None,
    scale: float | None = None,
    alpha: float = 1.5,
    mask: Tensor | None = None,
) -> dict:
    r"""Per-call bounds on how far GAG moves a layer from its unguided (dense) output (module docstring).

    Parameters
    ----------
    q (B, H, Lq, d), k (B, H, Lk, d), v (B, H, Lk, dv): one attention call (heads on dim -3).
    lam >= 0, eta > 0 or None, strength t in [0, 1]: GAG's parameters (any zeta in [0, 1]).
    out_proj : Tensor (d_model, H * dv), optional: the layer's output projection :math:`W_O` (its spectral
        norm is computed here); without it the bound is on the concatenated head outputs.
    scale, alpha, mask: as in :func:`hopfield_gag.theory.sparse_dense_discrepancy`.

    Returns
    -------
    dict with
      ``head`` (B, H, Lq): :math:`t(\lVert\Delta\rVert + \lambda\min(\eta, \lVert\Delta\rVert))` per head;
      ``head_a_priori`` (B, H, Lq): the same with :math:`\lVert\Delta\rVert` replaced by
      :math:`\mathrm{TV}\cdot\mathrm{diam}(V)` (scores and values only, no output needed);
      ``token`` (B, Lq): the bound on :math:`\lVert W_O(o_t - d)\rVert` (or on the concatenated heads);
      ``uniform`` (float): :math:`t\lVert W_O\rVert_2\sqrt H\,(2\max\lVert v_j\rVert + \lambda\eta)`, a bound
      for every token (``inf`` without a cap);
      ``head_as_run`` (B, H, Lq), float64: the bound on :math:`\lVert o_t - d_{\text{stock}}\rVert` for the op
      as run, ``head`` plus the output-rounding term :math:`2E_d + u_{\text{out}}(3(\lVert d\rVert + E_d) +
      2\,\text{head})` (``THEORY.md`` T9 "as run"; 0 at :math:`t = 0`, where the op returns the stock output):
      the op blends :math:`d_{\text{op}} + t(o - d_{\text{op}})` from its own dense output, and
      :math:`\lVert d_{\text{op}} - d_{\text{stock}}\rVert` does not shrink with t.
    """
    check_tensor("v", v, min_dim=3)
    lam = check_scalar("lam", lam, ge=0.0)
    strength = check_scalar("strength", strength, ge=0.0, le=1.0)
    if eta is not None:
        eta = check_scalar("eta", eta, gt=0.0)
    disc = sparse_dense_discrepancy(q, k, v, scale, alpha, mask)
    vc = v.to(disc.z.dtype)
    dn = torch.linalg.vector_norm(disc.delta, dim=-1)
    tv = 0.5 * (disc.p_sparse - disc.p_dense).abs().sum(-1)
    diam = torch.cdist(vc, vc).amax((-1, -2)).unsqueeze(-1)  # (B, H, 1)
    cap = (lambda x: x) if eta is None else (lambda x: torch.clamp(x, max=eta))
    head = strength * (dn + lam * cap(dn))
    prior = tv * diam
    head_prior = strength * (prior + lam * cap(prior))
    w_norm = 1.0
    if out_proj is not None:
        check_tensor("out_proj", out_proj, min_dim=2)
        n_heads, dv = v.shape[-3], v.shape[-1]
        if out_proj.shape[-1] != n_heads * dv:
            raise ValueError(f"out_proj must have shape (d_model, {n_heads * dv}) (heads x dv), got "
                             f"{tuple(out_proj.shape)}")
        w_norm = float(torch.linalg.matrix_norm(out_proj.to(disc.z.dtype), 2))
    token = w_norm * torch.sqrt((head * head).sum(-2))
    vmax = float(torch.linalg.vector_norm(vc, dim=-1).max())
    uniform = float("inf") if eta is None else strength * w_norm * v.shape[-3] ** 0.5 * (2 * vmax + lam * eta)
    # as run: the op blends from its own dense output d_op while the unguided baseline is the stock kernel's
    # d_stock; both are the exact d* plus their compute-dtype error (<= E_d, the enclosure's bound for this
    # compute dtype) and one rounding to the output dtype (<= u_out ||.||), and the blend is rounded once more
    enc = disc.enclosure()
    u_out = torch.finfo(q.dtype).eps / 2
    dn = torch.linalg.vector_norm(disc.dense, dim=-1).to(torch.float64) + enc.e_dense
    rounding = 2 * enc.e_dense + u_out * (3 * dn + 2 * head.to(torch.float64))
    rounding = rounding * (1 + 1e-6) + 4 * torch.finfo(torch.float64).tiny
    head_as_run = head.to(torch.float64) + (rounding if strength > 0 else torch.zeros_like(rounding))
    return {"head": head, "head_a_priori": head_prior, "token": token, "uniform": uniform,
            "head_as_run": head_as_run}


def accumulated_deviation_bound(deltas, lipschitz) -> Tensor:
    r"""Discrete Grönwall bound on the end-point deviation of a guided sampler from the unguided one.

    .. math::  \lVert x^G_N - x_N\rVert \le \sum_{n=0}^{N-1}\delta_n\prod_{m=n+1}^{N-1}L_m ,

    for :math:`x_{n+1} = \Phi_n(x_n)` (unguided, :math:`\Phi_n` :math:`L_n`-Lipschitz) and
    :math:`x^G_{n+1} = \Phi^G_n(x^G_n)` with :math:`\lVert\Phi^G_n(x) - \Phi_n(x)\rVert \le \delta_n` at the guided
    states, both from the same :math:`x_0`. Proof: :math:`e_{n+1} \le L_n e_n + \delta_n`, :math:`e_0 = 0`.

    Parameters
    ----------
    deltas, lipschitz : sequences or 1-D tensors of length N (non-negative): per-step deviation of the
        denoiser-driven update and Lipschitz constant of the unguided update (measured by the studies).

    Returns
    -------
    Tensor (N,): the bound on :math:`e_1, \dots, e_N`.
    """
    dl = torch.as_tensor(deltas, dtype=torch.float64).flatten()
    ll = torch.as_tensor(lipschitz, dtype=torch.float64).flatten()
    if dl.shape != ll.shape:
        raise ValueError(f"deltas and lipschitz must have the same length, got {dl.numel()} and {ll.numel()}")
    if bool((dl < 0).any()) or bool((ll < 0).any()) or not bool(torch.isfinite(dl).all() & torch.isfinite(ll).all()):
        raise ValueError("deltas and lipschitz must be finite and non-negative")
    out, e = [], torch.zeros((), dtype=torch.float64)
    for n in range(dl.numel()):
        e = ll[n] * e + dl[n]
        out.append(e)
    return torch.stack(out) if out else torch.zeros(0, dtype=torch.float64)
