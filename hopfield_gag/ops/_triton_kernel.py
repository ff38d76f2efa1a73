r"""The Triton kernel of :mod:`hopfield_gag.ops.triton_attention` (imported lazily: it needs ``triton``).

One program (grid axes 0, 1) handles one (batch·head, block of ``BLOCK_M`` queries) and the whole key axis
(``Lk`` padded to ``BLOCK_N``, a power of two, at most ``MAX_KEYS``). Everything between the loads of q, k, v (and the mask) and
the stores of the output stays in registers, in fp32:

1. scores :math:`z = \text{scale}\cdot q k^\top` (+ additive mask, or ``-inf`` where a bool mask is False and
   in the padding), one ``tl.dot``;
2. softmax :math:`p_d`;
3. the exact :math:`\alpha`-entmax :math:`p_s` in max-shifted coordinates :math:`u = z - \max z` (threshold
   :math:`t` in units of :math:`z`, :math:`p = ((\alpha-1)(u - t))_+^{1/(\alpha-1)}`), by the algorithm of
   :mod:`hopfield_gag.ops.normalizers` ("newton"), vectorized over the block's rows with a per-row ``done``
   flag and a ``while`` loop that stops when every row is done (at most ``MAXIT`` steps):

   * :math:`\alpha = 1.5`: Newton on :math:`h(t) = \lVert(u - t)_+\rVert_2 - 2` from the lower bracket end
     :math:`t_0 = -2`; each step also computes the closed-form root on the current support, accepted only
     when the support it induces is that support (then it *is* the root);
   * :math:`\alpha = 2`: Michelot's step (the root of the current linear piece), accepted when its support
     is the current one;
   * :math:`1 < \alpha < 2`: Newton on :math:`h` in the scaled variable :math:`w = (\alpha-1)(u - t) \in
     [0, 1]` (powers of :math:`w` neither overflow nor underflow harmfully in fp32), bracketed, until
     :math:`\lVert w\rVert_r = 1` to rounding, the bracket collapses or Newton stalls;
   * :math:`\alpha > 2` (:math:`h` not convex): bisection of the bracket to its rounding;

   then :math:`p_s` on the support, renormalized to sum 1;
4. the value products :math:`d = p_d v` and :math:`p_d k` (``aa``) before the entmax iteration, so that
   neither the map nor v, k stays in registers through it, then :math:`s = p_s v` and :math:`p_s k` with v, k
   re-read (from L2); for
   fp32 inputs IEEE fp32 dots (no TF32); for fp16/bf16 inputs each map is split into a high and a low part in
   the input dtype (:math:`p = p_{hi} + p_{lo}` to about 2·(mantissa bits)), two tensor-core dots with fp32
   accumulation, so the half-precision products lose nothing against the fp32 torch path;
5. the per-token combine of every method (``METHOD``, a :class:`~hopfield_gag.ops.codes.Method`: dense,
   sparse, pladis, gag — ``parallel`` rule "paper" or ``POSITIVE`` —, aa; formulas and small-norm rule of :mod:`hopfield_gag.ops.combine`) and the
   ``strength`` blend :math:`d + t(o - d)`; the store of :math:`o` (input dtype) and optionally the parts
   (fp32): :math:`d`, :math:`s`, the method output, :math:`c`, the cap flag and the token scale.

Row status (an int32 ``FLAG`` word, OR-ed atomically), in the bits of :class:`hopfield_gag.ops.codes.Status`:
``NONFINITE_SCORES`` (NaN or +inf, e.g. an overflowing :math:`q\cdot k`), ``FULLY_MASKED`` (a query row with
every key masked), ``ITER_LIMIT`` (the entmax iteration budget ran out: the bracketed iterate is used).

The method codes (``METHOD``), the entmax kinds (``KIND``) and the status bits are the values of
:mod:`hopfield_gag.ops.codes`, read here as ``tl.constexpr`` globals: the kernel writes no code of its own.
"""
from __future__ import annotations

import triton
import triton.language as tl

from .codes import EntmaxKind, Method, Status

_DENSE = tl.constexpr(int(Method.DENSE))
_SPARSE = tl.constexpr(int(Method.SPARSE))
_PLADIS = tl.constexpr(int(Method.PLADIS))
_GAG = tl.constexpr(int(Method.GAG))
_AA = tl.constexpr(int(Method.AA))
_SPARSEMAX = tl.constexpr(int(EntmaxKind.SPARSEMAX))
_ENTMAX15 = tl.constexpr(int(EntmaxKind.ENTMAX15))
_BISECT = tl.constexpr(int(EntmaxKind.BISECT))
_ST_NONFINITE = tl.constexpr(int(Status.NONFINITE_SCORES))
_ST_MASKED = tl.constexpr(int(Status.FULLY_MASKED))
_ST_ITER = tl.constexpr(int(Status.ITER_LIMIT))


# Reductions through tl.reduce with the standard combine functions, not tl.sum/tl.max: those are themselves
# @triton.jit functions fixed at `import triton` time, which would tie the interpreter (TRITON_INTERPRET=1)
# to the mode triton was first imported in; tl.reduce is patched by the interpreter (numpy fast path).
@triton.jit
def _rsum(x, axis: tl.constexpr):
    return tl.reduce(x, axis, tl.standard._sum_combine)


@triton.jit
def _rmax(x, axis: tl.constexpr):
    return tl.reduce(x, axis, tl.standard._elementwise_max)



@triton.jit
def _entmax_rows(u, valid_row, a, r, inv_a, hi0, KIND: tl.constexpr, MAXIT: tl.constexpr, EPS: tl.constexpr):
    """alpha-entmax of the max-shifted rows ``u`` (BLOCK_M, BLOCK_N) (masked entries -inf, max 0).

    Returns (p, not_converged) with p normalized along axis 1 for the rows where ``valid_row``."""
    lo = tl.where(valid_row, -inv_a, 0.0)
    hi = tl.where(valid_row, hi0, 0.0)
    t = lo
    tau = lo
    done = valid_row == 0  # invalid rows (padding, fully masked) are never iterated
    it = 0
    n_open = _rsum((done == 0).to(tl.int32), axis=0)
    while (n_open > 0) & (it < MAXIT):
        y = tl.maximum(u - t[:, None], 0.0)
        on = y > 0
        tol = 4.0 * EPS * (tl.abs(t) + inv_a)
        if KIND == _ENTMAX15:  # alpha = 1.5: Newton on ||y||_2 - 2 with the closed-form finish
            s0 = _rsum(on.to(tl.float32), axis=1)
            s1 = _rsum(y, axis=1)
            s2 = _rsum(y * y, axis=1)
            nrm = tl.sqrt(s2)
            above = nrm >= inv_a
            lo = tl.where(above, t, lo)
            hi = tl.where(above, hi, t)
            disc = s1 * s1 - s0 * (s2 - inv_a * inv_a)
            cand = t + (s1 - tl.sqrt(tl.maximum(disc, 0.0))) / tl.maximum(s0, 1.0)
            cnt = _rsum((u > cand[:, None]).to(tl.float32), axis=1)
            accept = (disc >= 0) & (cnt == s0)
            tn = t + (nrm - inv_a) * nrm / tl.where(s1 > 0, s1, 1.0)
            tn = tl.where((tn >= lo) & (tn <= hi), tn, 0.5 * (lo + hi))
            # a tie exactly at the threshold: closed form and Newton agree to rounding
            stalled = tl.abs(tn - t) <= tol
            cand = tl.where(accept | (disc >= 0), cand, tn)
            accept = accept | stalled
        elif KIND == _SPARSEMAX:  # alpha = 2: Michelot's step, exact once its support is the current one
            s0 = _rsum(on.to(tl.float32), axis=1)
            s1 = _rsum(y, axis=1)
            tn = t + (s1 - 1.0) / tl.maximum(s0, 1.0)
            cnt = _rsum((u > tn[:, None]).to(tl.float32), axis=1)
            accept = (cnt == s0) | (tn <= t)
            cand = tn
        else:
            # w = (alpha-1)(u - t) in [0, 1]: sum_j w_j^r = 1 at the root; M = ||w||_r
            w = a * y
            lw = tl.log2(tl.where(on, w, 1.0))
            s_r = _rsum(tl.where(on, tl.exp2(r * lw), 0.0), axis=1)
            m_r = tl.exp2(a * tl.log2(tl.maximum(s_r, 1e-30)))
            above = m_r >= 1.0
            lo = tl.where(above, t, lo)
            hi = tl.where(above, hi, t)
            if KIND == _BISECT:  # alpha > 2: h is not convex; bisect the bracket to its rounding
                tn = 0.5 * (lo + hi)
                accept = (hi - lo) <= tol
                cand = tn
            else:  # 1 < alpha < 2: Newton on h, bracketed
                s_rm1 = _rsum(tl.where(on, tl.exp2((r - 1.0) * lw), 0.0), axis=1)
                converged = (tl.abs(m_r - 1.0) <= 8.0 * EPS) | ((hi - lo) <= tol)
                tn = t + (m_r - 1.0) * inv_a * tl.exp2((r - 1.0) * tl.log2(m_r)) / tl.where(s_rm1 > 0, s_rm1, 1.0)
                bad = ((tn > lo) & (tn < hi)) == 0
                stalled = (bad == 0) & (tl.abs(tn - t) <= tol)
                tn = tl.where(bad, 0.5 * (lo + hi), tn)
                cand = tl.where(converged, t, tn)
                accept = converged | stalled
        new = accept & (done == 0)
        tau = tl.where(new, cand, tau)
        done = done | accept
        t = tl.where(done, t, tn)
        it += 1
        n_open = _rsum((done == 0).to(tl.int32), axis=0)
    tau = tl.where(done, tau, t)
    y = tl.maximum(u - tau[:, None], 0.0)
    if KIND == _SPARSEMAX:
        p = y
    elif KIND == _ENTMAX15:
        p = 0.25 * y * y
    else:
        w = a * y
        p = tl.where(w > 0, tl.exp2(r * tl.log2(tl.where(w > 0, w, 1.0))), 0.0)
    total = _rsum(p, axis=1)
    p = p / tl.where(total > 0, total, 1.0)[:, None]
    return p, n_open > 0


@triton.jit
def _dot(a, b, WIDEN: tl.constexpr):
    """a @ b with fp32 accumulation. WIDEN (only under the interpreter, whose numpy tl.dot cannot take bf16
    operands): widen both operands to fp32 first; exact, since a product of two bf16 numbers fits in fp32,
    so it computes what the bf16 tensor-core dot with fp32 accumulation computes (up to summation order)."""
    if WIDEN:
        return tl.dot(a.to(tl.float32), b.to(tl.float32), input_precision="ieee")
    else:
        return tl.dot(a, b)


@triton.jit
def _value_product(p, x, HALF: tl.constexpr, WIDEN: tl.constexpr):
    """p (fp32, BLOCK_M x BLOCK_N) @ x (input dtype): IEEE fp32 for fp32 inputs; for half inputs p is split
    into p_hi + p_lo in x's dtype and both parts go through the tensor cores with fp32 accumulation."""
    if HALF:
        p_hi = p.to(x.dtype)
        p_lo = (p - p_hi.to(tl.float32)).to(x.dtype)
        return _dot(p_hi, x, WIDEN) + _dot(p_lo, x, WIDEN)
    else:
        return tl.dot(p, x, input_precision="ieee")


@triton.jit
def gag_fwd_kernel(
    Q, K, V, MASK, O,
    PD, PS, PO, PC, PCAP, PTOK, FLAG,
    sq_b, sq_h, sq_m, sq_d,
    sk_b, sk_h, sk_n, sk_d,
    sv_b, sv_h, sv_n, sv_d,
    sm_b, sm_h, sm_m, sm_n,
    so_b, so_h, so_m, so_d,
    H, LQ, LK, D, DV,
    scale, lam, eta, zeta, strength, alpha, hi0, aa_lo, aa_hi,
    METHOD: tl.constexpr, KIND: tl.constexpr, MASK_KIND: tl.constexpr, HALF: tl.constexpr,
    PARTS: tl.constexpr, ZETA0: tl.constexpr, STRENGTH1: tl.constexpr, MAXIT: tl.constexpr, WIDEN: tl.constexpr, POSITIVE: tl.constexpr,
    BLOCK_M: tl.constexpr, BLOCK_N: tl.constexpr, BLOCK_D: tl.constexpr, BLOCK_DV: tl.constexpr,
):
    EPS: tl.constexpr = 1.1920928955078125e-07
    TINY: tl.constexpr = 1.1754943508222875e-38
    pid_bh = tl.program_id(0)
    pid_m = tl.program_id(1)
    b = pid_bh // H
    h = pid_bh % H
    offs_m = pid_m * BLOCK_M + tl.arange(0, BLOCK_M)
    offs_n = tl.arange(0, BLOCK_N)
    offs_d = tl.arange(0, BLOCK_D)
    offs_dv = tl.arange(0, BLOCK_DV)
    row_in = offs_m < LQ
    col_in = offs_n < LK

    # ---- loads: q, k, v once (64-bit offsets: expanded/large tensors)
    q_ptrs = Q + b.to(tl.int64) * sq_b + h.to(tl.int64) * sq_h + offs_m[:, None].to(tl.int64) * sq_m + offs_d[None, :] * sq_d
    q = tl.load(q_ptrs, mask=row_in[:, None] & (offs_d[None, :] < D), other=0.0)
    k_ptrs = K + b.to(tl.int64) * sk_b + h.to(tl.int64) * sk_h + offs_n[:, None].to(tl.int64) * sk_n + offs_d[None, :] * sk_d
    k = tl.load(k_ptrs, mask=col_in[:, None] & (offs_d[None, :] < D), other=0.0)
    v_ptrs = V + b.to(tl.int64) * sv_b + h.to(tl.int64) * sv_h + offs_n[:, None].to(tl.int64) * sv_n + offs_dv[None, :] * sv_d
    v_mask = col_in[:, None] & (offs_dv[None, :] < DV)

    # ---- scores
    if HALF:
        z = _dot(q, tl.trans(k), WIDEN)
    else:
        z = tl.dot(q, tl.trans(k), input_precision="ieee")
    z = z * scale
    if MASK_KIND != 0:
        m_ptrs = MASK + b.to(tl.int64) * sm_b + h.to(tl.int64) * sm_h + offs_m[:, None].to(tl.int64) * sm_m + offs_n[None, :] * sm_n
        mval = tl.load(m_ptrs, mask=row_in[:, None] & col_in[None, :], other=0)
        if MASK_KIND == 1:  # bool, True = attend
            z = tl.where(mval != 0, z, float("-inf"))
        else:  # additive
            z = z + mval.to(tl.float32)
    z = tl.where(col_in[None, :], z, float("-inf"))

    # ---- row status: non-finite scores, fully masked rows
    nonfinite = _rsum(((z != z) | (z == float("inf"))).to(tl.int32), axis=1) > 0
    zmax = _rmax(z, axis=1)
    empty = (zmax == float("-inf")) & (nonfinite == 0)  # one condition per row, as in the C kernel
    valid_row = row_in & (nonfinite == 0) & (empty == 0)
    zmax = tl.where(valid_row, zmax, 0.0)
    u = z - zmax[:, None]
    u = tl.where(valid_row[:, None], u, float("-inf"))

    # ---- dense map
    e = tl.exp(u)
    p_d = e / tl.where(valid_row, _rsum(e, axis=1), 1.0)[:, None]
    # ---- sparse map: exact alpha-entmax
    a = alpha - 1.0
    r = 1.0 / a
    inv_a = 1.0 / a
    # the dense products first, so that neither p_d nor v (nor k) is live through the entmax iteration
    # (register pressure: they are re-read from L2 below instead)
    v = tl.load(v_ptrs, mask=v_mask, other=0.0)
    d = _value_product(p_d, v, HALF, WIDEN)
    if METHOD == _AA:
        kd = _value_product(p_d, k, HALF, WIDEN)
    p_s, open_rows = _entmax_rows(u, valid_row, a, r, inv_a, hi0, KIND, MAXIT, EPS)

    status = ((_rmax((nonfinite & row_in).to(tl.int32), axis=0) * _ST_NONFINITE)
              | (_rmax((empty & row_in).to(tl.int32), axis=0) * _ST_MASKED)
              | (open_rows.to(tl.int32) * _ST_ITER))
    tl.atomic_or(FLAG, status)

    # ---- value products
    v = tl.load(v_ptrs, mask=v_mask, other=0.0)
    s = _value_product(p_s, v, HALF, WIDEN)

    # ---- combine (per token, fp32)
    ss = _rsum(s * s, axis=1)
    ds = _rsum(d * s, axis=1)
    # small-norm rule of ops/combine.py: s counts as zero (c = 0) unless |s|^2 is a positive normal number
    s_ok = ss > TINY
    c = tl.where(s_ok, (ss - ds) / tl.where(s_ok, ss, 1.0), 0.0)
    cap = c != c  # all False
    if METHOD == _DENSE:
        o = d
        tok = c * 0.0
    elif METHOD == _SPARSE:
        o = s
        tok = c * 0.0 + 1.0
    elif METHOD == _PLADIS:
        o = d + lam * (s - d)
        tok = c * 0.0 + lam
    elif METHOD == _GAG:
        # g = c~ s + zeta Delta_perp = zeta Delta + (c~ - zeta c) s, c~ = c ("paper") or max(c, 0) ("positive")
        if POSITIVE:
            ct = tl.maximum(c, 0.0)
        else:
            ct = c
        if ZETA0:
            gnorm = tl.abs(ct) * tl.sqrt(ss)
        else:
            g = zeta * (s - d) + (ct - zeta * c)[:, None] * s
            gnorm = tl.sqrt(_rsum(g * g, axis=1))
        cap = gnorm > eta
        factor = tl.where(cap, eta / tl.where(cap, gnorm, 1.0), 1.0)
        tok = lam * factor
        if ZETA0:
            o = s * (1.0 + tok * ct)[:, None]
        else:
            o = s + tok[:, None] * g
    else:
        # AA(1) in key space: f_prev = p_d k - q, f_curr = p_s k - q; gamma* = <f_curr, diff>/|diff|^2
        k = tl.load(k_ptrs, mask=col_in[:, None] & (offs_d[None, :] < D), other=0.0)
        ks = _value_product(p_s, k, HALF, WIDEN)
        qf = tl.load(q_ptrs, mask=row_in[:, None] & (offs_d[None, :] < D), other=0.0).to(tl.float32)
        f_prev = kd - qf
        f_curr = ks - qf
        diff = f_curr - f_prev
        den = _rsum(diff * diff, axis=1)
        num = _rsum(f_curr * diff, axis=1)
        scl = _rsum(f_prev * f_prev, axis=1) + _rsum(f_curr * f_curr, axis=1)
        rel = 64.0 * EPS
        degenerate = (den <= rel * rel * scl) | (den <= TINY)
        gamma = tl.where(degenerate, 0.0, num / tl.where(degenerate, 1.0, den))
        tok = tl.minimum(tl.maximum(1.0 - gamma, aa_lo), aa_hi)
        o = d + tok[:, None] * (s - d)

    if STRENGTH1:
        out = o
    else:
        out = d + strength * (o - d)

    dv_in = offs_dv[None, :] < DV
    st_mask = row_in[:, None] & dv_in
    o_ptrs = O + b.to(tl.int64) * so_b + h.to(tl.int64) * so_h + offs_m[:, None].to(tl.int64) * so_m + offs_dv[None, :] * so_d
    tl.store(o_ptrs, out.to(O.dtype.element_ty), mask=st_mask)
    if PARTS:
        base = pid_bh.to(tl.int64) * LQ
        vec = (base + offs_m[:, None].to(tl.int64)) * DV + offs_dv[None, :]
        tl.store(PD + vec, d, mask=st_mask)
        tl.store(PS + vec, s, mask=st_mask)
        tl.store(PO + vec, o, mask=st_mask)
        tl.store(PC + base + offs_m, c, mask=row_in)
        tl.store(PCAP + base + offs_m, cap.to(tl.int8), mask=row_in)
        tl.store(PTOK + base + offs_m, tok, mask=row_in)
