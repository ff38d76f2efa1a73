/*
 * The fused guided-attention forward of hopfield_gag.ops.fused: the per-token combination of a dense and a
 * sparse retrieval (combine_rows, the chunked path; the kernel-level twin of hopfield_gag.ops.combine.combine)
 * and the whole forward in one call (gag_forward_f32).
 *
 * One translation unit with the row normalizers (they are included below, not linked), so that the entmax
 * and softmax rows inline into the fused loop. The integer codes (HG_METHOD_*, HG_PARALLEL_*, HG_STATUS_*,
 * HG_KIND_*) come from hopfield_gag/ops/codes.py as -D flags (the loader passes them).
 */
#include "entmax_rows.c"

/* The per-token combination (one home in C; the kernel-level twin of hopfield_gag.ops.combine.combine,
   which the tests compare it with on every method): writes o = d + t (o_m - d), o_m the method's output:
   HG_METHOD_SPARSE s; HG_METHOD_PLADIS d + lam (s - d); HG_METHOD_GAG s + lam min(1, eta/|g|) g,
   g = c~ s + zeta (Delta - c s), Delta = s - d, c = (|s|^2 - <d, s>) / |s|^2, 0 where |s|^2 <= tiny (the
   storage dtype's smallest normal number, the rule of ops/combine.py), c~ = c (parallel HG_PARALLEL_PAPER)
   or max(c, 0) (HG_PARALLEL_POSITIVE). Accumulation in double. */
/* The combination's two passes over a token: <s, s> and <d, s> in double, and o = fd d + fs s in double
   rounded once. fp32 with AVX-512: 8 doubles a step, the row's tail masked (~3x the 256-bit loops the
   compiler writes for these, whose conversions and horizontal sums dominate rows of 64). */
#define DEFINE_COMBINE_PASSES(DOTS, BLEND, T)                                                  \
    static inline void DOTS(const T *d, const T *s, int64_t n, double *ss_out, double *ds_out) { \
        double ss = 0.0, ds = 0.0;                                                             \
        _Pragma("omp simd reduction(+ : ss, ds)")                                              \
        for (int64_t j = 0; j < n; ++j) {                                                      \
            ss += (double)s[j] * s[j];                                                         \
            ds += (double)d[j] * s[j];                                                         \
        }                                                                                      \
        *ss_out = ss; *ds_out = ds;                                                            \
    }                                                                                          \
    static inline void BLEND(const T *d, const T *s, T *o, int64_t n, double fd, double fs) {  \
        _Pragma("omp simd")                                                                    \
        for (int64_t j = 0; j < n; ++j) o[j] = (T)(fd * d[j] + fs * s[j]);                     \
    }
#if defined(__AVX512F__) && defined(__AVX512VL__)
static inline void dots_f32(const float *d, const float *s, int64_t n, double *ss_out, double *ds_out) {
    __m512d a = _mm512_setzero_pd(), b = _mm512_setzero_pd();
    for (int64_t j = 0; j < n; j += 8) {
        const __mmask8 k = tail8(n - j);
        const __m512d sv = _mm512_cvtps_pd(_mm256_maskz_loadu_ps(k, s + j)), dv = _mm512_cvtps_pd(_mm256_maskz_loadu_ps(k, d + j));
        a = _mm512_fmadd_pd(sv, sv, a);
        b = _mm512_fmadd_pd(dv, sv, b);
    }
    *ss_out = _mm512_reduce_add_pd(a); *ds_out = _mm512_reduce_add_pd(b);
}
static inline void blend_f32(const float *d, const float *s, float *o, int64_t n, double fd, double fs) {
    const __m512d vd = _mm512_set1_pd(fd), vs = _mm512_set1_pd(fs);
    for (int64_t j = 0; j < n; j += 8) {
        const __mmask8 k = tail8(n - j);
        const __m512d sv = _mm512_cvtps_pd(_mm256_maskz_loadu_ps(k, s + j)), dv = _mm512_cvtps_pd(_mm256_maskz_loadu_ps(k, d + j));
        _mm256_mask_storeu_ps(o + j, k, _mm512_cvtpd_ps(_mm512_fmadd_pd(vd, dv, _mm512_mul_pd(vs, sv))));
    }
}
#else
DEFINE_COMBINE_PASSES(dots_f32, blend_f32, float)
#endif
DEFINE_COMBINE_PASSES(dots_f64, blend_f64, double)

#define DEFINE_COMBINE_ONE(NAME, T, TINY, DOTS, BLEND)                                         \
    static inline void NAME(const T *d, const T *s, T *o, int64_t dv, int method, int parallel, \
                            double lam, double eta, double zeta, double strength) {            \
        double wd = 0.0, ws = 1.0; /* o_m = wd d + ws s */                                     \
        if (method == HG_METHOD_PLADIS) {                                                      \
            wd = 1.0 - lam; ws = lam;                                                          \
        } else if (method == HG_METHOD_GAG) {                                                  \
            double ss, ds;                                                                     \
            DOTS(d, s, dv, &ss, &ds);                                                          \
            const double c = ss > (TINY) ? (ss - ds) / ss : 0.0;                               \
            const double ca = parallel == HG_PARALLEL_POSITIVE && c < 0.0 ? 0.0 : c;           \
            /* g = ca s + zeta (Delta - c s) = a s + b d, a = zeta + ca - zeta c, b = -zeta */  \
            const double ga = zeta + ca - zeta * c, gb = -zeta;                                \
            double gn2 = 0.0; /* |g|^2 from g itself: no cancellation when g << s */           \
            if (zeta != 0.0) {                                                                 \
                _Pragma("omp simd reduction(+ : gn2)")                                         \
                for (int64_t j = 0; j < dv; ++j) {                                             \
                    const double gj = ga * s[j] + gb * d[j];                                   \
                    gn2 += gj * gj;                                                            \
                }                                                                              \
            }                                                                                  \
            const double gn = zeta == 0.0 ? fabs(ca) * sqrt(ss) : sqrt(gn2);                   \
            const double tok = gn > eta ? lam * (eta / gn) : lam;                              \
            ws = 1.0 + tok * ga;                                                               \
            wd = tok * gb;                                                                     \
        }                                                                                      \
        /* strength: d + t (wd d + ws s - d) */                                                \
        const double fd = 1.0 + strength * (wd - 1.0), fs = strength * ws;                     \
        BLEND(d, s, o, dv, fd, fs);                                                            \
    }

DEFINE_COMBINE_ONE(combine_one_f32, float, FLT_MIN, dots_f32, blend_f32)
DEFINE_COMBINE_ONE(combine_one_f64, double, DBL_MIN, dots_f64, blend_f64)

/* R is (G, 2, group, dv): d = R[g, 0, i], s = R[g, 1, i]; o for token (g, i) goes to
   out + g * out_gstride + i * dv. */
#define DEFINE_COMBINE(NAME, ONE, T)                                                           \
    void NAME(const T *R, T *out, int64_t G, int64_t group, int64_t dv, int64_t out_gstride,   \
              int method, int parallel, double lam, double eta, double zeta, double strength,  \
              int nthreads) {                                                                  \
        const int64_t rows = G * group;                                                        \
        _Pragma("omp parallel for num_threads(nthreads) schedule(dynamic, 256) if(rows * dv >= 65536)")\
        for (int64_t row = 0; row < rows; ++row) {                                             \
            const int64_t g = row / group, i = row % group;                                    \
            ONE(R + ((2 * g) * group + i) * dv, R + ((2 * g + 1) * group + i) * dv,            \
                out + g * out_gstride + i * dv, dv, method, parallel, lam, eta, zeta, strength);\
        }                                                                                      \
    }

DEFINE_COMBINE(combine_rows_f32, combine_one_f32, float)
DEFINE_COMBINE(combine_rows_f64, combine_one_f64, double)

/* ------------------------------------------------------------------------------------------------------
 * The fused guided-attention forward (hopfield_gag.ops.fused.attention_forward): fp32 compute on fp32, bf16
 * or fp16 storage (converted while packing and when writing the output: no conversion pass over the tensors);
 * bf16 storage on CPUs with AMX-BF16 takes both products on bf16 tiles (HG_AMX below).
 * Per block of RB queries of one (batch, head) g, everything stays in the thread's cache:
 *   S = (beta Q_blk) K^T (+ mask)                 register-tiled micro-kernels (6x16; with AVX-512 12x32),
 *                                                 K packed in panels of 16 keys
 *   per set of HG_LANES rows: their entmax thresholds together (entmax_rows.c's row sets), then per row
 *            its support (values, indices) -> s = sum_support p_j V_j                  (sparse gather)
 *            softmax in place of the score row (the max is the entmax pass's)
 *   D = P_softmax V                               the same micro-kernel
 *   per row: o = combine(d, s), written to the output.
 * Cost: two dense GEMMs of attention's shape plus a gather over the entmax support (a few percent of Lk
 * on peaked rows), against SDPA's two; the normalizations run on rows already in L1.
 * ------------------------------------------------------------------------------------------------------ */

/* The micro-kernels: C[0..MR)[0..NR) (row stride ldc) = A[0..MR)[0..K) (row stride lda) times B[0..K)[0..NR)
   (row stride ldb), accumulated over k in order (the same sum, rounding for rounding, at every width).
   6x16 in two 8-lane registers per row without AVX-512; with it 12x16 and 12x32 in 16-lane registers at
   every row length (quiet machine, 1 thread, (2,8,1024,77,64): the two products 430 -> 290 cycles a row;
   once the row code also ran 16 lanes wide, the 256-bit kernel's one advantage, not taking a port from
   that code, was gone). */
typedef float v8f __attribute__((vector_size(32), aligned(4))); /* unaligned loads/stores */
#define V8LD(p) (*(const v8f *)(p))
#define V8ST(p, x) (*(v8f *)(p) = (x))
#define FUSED_NR 16
#define FUSED_MR 12 /* rows per block are a multiple of this (of both kernels' 12 and 6 rows) */
#define FUSED_MR_TAIL 6 /* a head's last block is computed to a multiple of this (a 12-row tile's half) */
static inline void mk_6x16(const float *A, int64_t lda, const float *B, int64_t ldb, int64_t K, float *C,
                           int64_t ldc) {
    v8f c00 = {0}, c01 = {0}, c10 = {0}, c11 = {0}, c20 = {0}, c21 = {0};
    v8f c30 = {0}, c31 = {0}, c40 = {0}, c41 = {0}, c50 = {0}, c51 = {0};
    const float *a0 = A, *a1 = A + lda, *a2 = A + 2 * lda, *a3 = A + 3 * lda, *a4 = A + 4 * lda,
                *a5 = A + 5 * lda;
    for (int64_t k = 0; k < K; ++k) {
        const v8f b0 = V8LD(B + k * ldb), b1 = V8LD(B + k * ldb + 8);
        float a;
        a = a0[k]; c00 += a * b0; c01 += a * b1;
        a = a1[k]; c10 += a * b0; c11 += a * b1;
        a = a2[k]; c20 += a * b0; c21 += a * b1;
        a = a3[k]; c30 += a * b0; c31 += a * b1;
        a = a4[k]; c40 += a * b0; c41 += a * b1;
        a = a5[k]; c50 += a * b0; c51 += a * b1;
    }
    V8ST(C, c00); V8ST(C + 8, c01); C += ldc;
    V8ST(C, c10); V8ST(C + 8, c11); C += ldc;
    V8ST(C, c20); V8ST(C + 8, c21); C += ldc;
    V8ST(C, c30); V8ST(C + 8, c31); C += ldc;
    V8ST(C, c40); V8ST(C + 8, c41); C += ldc;
    V8ST(C, c50); V8ST(C + 8, c51);
}
#if defined(__AVX512F__) && !defined(HG_NO_AVX512)
#define HG_WIDE_TILES 1
typedef float v16f __attribute__((vector_size(64), aligned(4)));
#define V16LD(p) (*(const v16f *)(p))
#define V16ST(p, x) (*(v16f *)(p) = (x))
static inline void mk_12x16(const float *A, int64_t lda, const float *B, int64_t ldb, int64_t K, float *C,
                            int64_t ldc) {
    v16f c0 = {0}, c1 = {0}, c2 = {0}, c3 = {0}, c4 = {0}, c5 = {0};
    v16f c6 = {0}, c7 = {0}, c8 = {0}, c9 = {0}, c10 = {0}, c11 = {0};
    for (int64_t k = 0; k < K; ++k) {
        const v16f b = V16LD(B + k * ldb);
        const float *a = A + k;
        c0 += a[0] * b; c1 += a[lda] * b; c2 += a[2 * lda] * b; c3 += a[3 * lda] * b;
        c4 += a[4 * lda] * b; c5 += a[5 * lda] * b; c6 += a[6 * lda] * b; c7 += a[7 * lda] * b;
        c8 += a[8 * lda] * b; c9 += a[9 * lda] * b; c10 += a[10 * lda] * b; c11 += a[11 * lda] * b;
    }
    V16ST(C, c0); V16ST(C + ldc, c1); V16ST(C + 2 * ldc, c2); V16ST(C + 3 * ldc, c3);
    V16ST(C + 4 * ldc, c4); V16ST(C + 5 * ldc, c5); V16ST(C + 6 * ldc, c6); V16ST(C + 7 * ldc, c7);
    V16ST(C + 8 * ldc, c8); V16ST(C + 9 * ldc, c9); V16ST(C + 10 * ldc, c10); V16ST(C + 11 * ldc, c11);
}
/* columns 0..16 from B0, 16..32 from B1 (both row stride ldb): two panels, or two halves of one row */
static inline void mk_12x32(const float *A, int64_t lda, const float *B0, const float *B1, int64_t ldb, int64_t K,
                            float *C, int64_t ldc) {
    v16f c0 = {0}, c1 = {0}, c2 = {0}, c3 = {0}, c4 = {0}, c5 = {0}, c6 = {0}, c7 = {0}, c8 = {0}, c9 = {0};
    v16f c10 = {0}, c11 = {0}, d0 = {0}, d1 = {0}, d2 = {0}, d3 = {0}, d4 = {0}, d5 = {0}, d6 = {0}, d7 = {0};
    v16f d8 = {0}, d9 = {0}, d10 = {0}, d11 = {0};
    for (int64_t k = 0; k < K; ++k) {
        const v16f b = V16LD(B0 + k * ldb), e = V16LD(B1 + k * ldb);
        const float *a = A + k;
        float x;
        x = a[0]; c0 += x * b; d0 += x * e;
        x = a[lda]; c1 += x * b; d1 += x * e;
        x = a[2 * lda]; c2 += x * b; d2 += x * e;
        x = a[3 * lda]; c3 += x * b; d3 += x * e;
        x = a[4 * lda]; c4 += x * b; d4 += x * e;
        x = a[5 * lda]; c5 += x * b; d5 += x * e;
        x = a[6 * lda]; c6 += x * b; d6 += x * e;
        x = a[7 * lda]; c7 += x * b; d7 += x * e;
        x = a[8 * lda]; c8 += x * b; d8 += x * e;
        x = a[9 * lda]; c9 += x * b; d9 += x * e;
        x = a[10 * lda]; c10 += x * b; d10 += x * e;
        x = a[11 * lda]; c11 += x * b; d11 += x * e;
    }
    V16ST(C, c0); V16ST(C + 16, d0); C += ldc;
    V16ST(C, c1); V16ST(C + 16, d1); C += ldc;
    V16ST(C, c2); V16ST(C + 16, d2); C += ldc;
    V16ST(C, c3); V16ST(C + 16, d3); C += ldc;
    V16ST(C, c4); V16ST(C + 16, d4); C += ldc;
    V16ST(C, c5); V16ST(C + 16, d5); C += ldc;
    V16ST(C, c6); V16ST(C + 16, d6); C += ldc;
    V16ST(C, c7); V16ST(C + 16, d7); C += ldc;
    V16ST(C, c8); V16ST(C + 16, d8); C += ldc;
    V16ST(C, c9); V16ST(C + 16, d9); C += ldc;
    V16ST(C, c10); V16ST(C + 16, d10); C += ldc;
    V16ST(C, c11); V16ST(C + 16, d11);
}
#endif

/* C[0..rows)[0..16 npan) (row stride ldc) = A[0..rows)[0..K) times B, B given as npan panels of 16 columns,
   panel p at B + p * pstride with row stride ldb (K packed in panels: pstride = 16 D, ldb = 16; a row-major
   matrix: pstride = 16, ldb = its row stride). rows: a multiple of FUSED_MR_TAIL; with wide tiles a last 6
   rows take the 6-row kernel (the same sums in the same order: the same result as in a 12-row tile). */
static inline void gemm_panels(const float *A, int64_t lda, int64_t rows, const float *B, int64_t pstride,
                               int64_t ldb, int64_t npan, int64_t K, float *C, int64_t ldc) {
#ifdef HG_WIDE_TILES
    for (int64_t i = 0; i < rows; i += 12) {
        if (rows - i < 12) {
            for (int64_t p = 0; p < npan; ++p) mk_6x16(A + i * lda, lda, B + p * pstride, ldb, K, C + i * ldc + p * 16, ldc);
            break;
        }
        int64_t p = 0;
        for (; p + 2 <= npan; p += 2)
            mk_12x32(A + i * lda, lda, B + p * pstride, B + (p + 1) * pstride, ldb, K, C + i * ldc + p * 16, ldc);
        if (p < npan) mk_12x16(A + i * lda, lda, B + p * pstride, ldb, K, C + i * ldc + p * 16, ldc);
    }
#else
    for (int64_t i = 0; i < rows; i += 6)
        for (int64_t p = 0; p < npan; ++p) mk_6x16(A + i * lda, lda, B + p * pstride, ldb, K, C + i * ldc + p * 16, ldc);
#endif
}

/* One panel of K for the products: dst[d 16 + jj] = src[jj lds + d] for keys jj < nk (<= 16), 0 for the
   keys past nk, d < D. Returns whether some entry is NaN or infinite (x - x is 0 exactly for finite x).
   With AVX-512 16 x 16 blocks are transposed in registers and stored as whole panel rows: the plain loop's
   stores of one key touch D cache lines of the panel. Packing is per head and thread, so it shows where a
   head has few queries: at Lq = 64 (SD1.5's middle block) the transposes made the call 5-14% faster. */
static inline int pack_panel_f32(const float *src, int64_t lds, int64_t nk, int64_t D, float *dst) {
#if defined(__AVX512F__)
    const __m512 zero = _mm512_setzero_ps();
    __mmask16 bad = 0;
    for (int64_t d0 = 0; d0 < D; d0 += 16) {
        const __mmask16 kd = tail16(D - d0);
        __m512 r[16], t[16];
        for (int jj = 0; jj < 16; ++jj) {
            r[jj] = jj < nk ? _mm512_maskz_loadu_ps(kd, src + jj * lds + d0) : zero;
            bad |= _mm512_cmp_ps_mask(_mm512_sub_ps(r[jj], r[jj]), zero, _CMP_NEQ_UQ);
        }
        /* t[2i], t[2i+1]: rows 2i, 2i+1 interleaved (per 128-bit lane L: columns 4L, 4L+1; 4L+2, 4L+3) */
        for (int i = 0; i < 8; ++i) {
            t[2 * i] = _mm512_unpacklo_ps(r[2 * i], r[2 * i + 1]);
            t[2 * i + 1] = _mm512_unpackhi_ps(r[2 * i], r[2 * i + 1]);
        }
        /* r[4i + c], lane L: rows 4i..4i+3 of column 4L + c */
        for (int i = 0; i < 4; ++i) {
            const __m512d a = _mm512_castps_pd(t[4 * i]), b = _mm512_castps_pd(t[4 * i + 2]);
            const __m512d e = _mm512_castps_pd(t[4 * i + 1]), f = _mm512_castps_pd(t[4 * i + 3]);
            r[4 * i] = _mm512_castpd_ps(_mm512_unpacklo_pd(a, b));
            r[4 * i + 1] = _mm512_castpd_ps(_mm512_unpackhi_pd(a, b));
            r[4 * i + 2] = _mm512_castpd_ps(_mm512_unpacklo_pd(e, f));
            r[4 * i + 3] = _mm512_castpd_ps(_mm512_unpackhi_pd(e, f));
        }
        /* column 4L + c gathers lane L of r[c], r[4 + c], r[8 + c], r[12 + c] */
        for (int c = 0; c < 4; ++c) {
            const __m512 v0 = _mm512_shuffle_f32x4(r[c], r[4 + c], 0x88), v1 = _mm512_shuffle_f32x4(r[c], r[4 + c], 0xDD);
            const __m512 w0 = _mm512_shuffle_f32x4(r[8 + c], r[12 + c], 0x88), w1 = _mm512_shuffle_f32x4(r[8 + c], r[12 + c], 0xDD);
            t[c] = _mm512_shuffle_f32x4(v0, w0, 0x88);
            t[8 + c] = _mm512_shuffle_f32x4(v0, w0, 0xDD);
            t[4 + c] = _mm512_shuffle_f32x4(v1, w1, 0x88);
            t[12 + c] = _mm512_shuffle_f32x4(v1, w1, 0xDD);
        }
        for (int64_t dd = 0; dd < 16 && d0 + dd < D; ++dd) _mm512_storeu_ps(dst + (d0 + dd) * 16, t[dd]);
    }
    return bad != 0;
#else
    int bad = 0;
    for (int64_t jj = 0; jj < 16; ++jj)
        for (int64_t d = 0; d < D; ++d) {
            const float x = jj < nk ? src[jj * lds + d] : 0.0f;
            dst[d * 16 + jj] = x;
            bad |= !(x - x == 0.0f);
        }
    return bad;
#endif
}

/* o[0..dvp) = sum_t val[t * st] V[idx[t]][0..dvp) (V row stride ldv; dvp a multiple of 16). */
static inline void gather_rows_f32(const float *val, int64_t st, const int32_t *idx, int64_t nnz, const float *V,
                                   int64_t ldv, int64_t dvp, float *o) {
    int64_t c = 0;
#ifdef HG_WIDE_TILES
    /* 16 lanes, and the even and odd support entries in separate accumulators: with ~10 entries a row the
       chain of dependent adds, not the multiply-adds, bounds the loop */
    for (; c + 64 <= dvp; c += 64) {
        v16f a0 = {0}, a1 = {0}, a2 = {0}, a3 = {0}, b0 = {0}, b1 = {0}, b2 = {0}, b3 = {0};
        int64_t t = 0;
        for (; t + 2 <= nnz; t += 2) {
            const float w = val[t * st], x = val[(t + 1) * st];
            const float *r = V + (int64_t)idx[t] * ldv + c, *q = V + (int64_t)idx[t + 1] * ldv + c;
            a0 += w * V16LD(r); a1 += w * V16LD(r + 16); a2 += w * V16LD(r + 32); a3 += w * V16LD(r + 48);
            b0 += x * V16LD(q); b1 += x * V16LD(q + 16); b2 += x * V16LD(q + 32); b3 += x * V16LD(q + 48);
        }
        if (t < nnz) {
            const float w = val[t * st];
            const float *r = V + (int64_t)idx[t] * ldv + c;
            a0 += w * V16LD(r); a1 += w * V16LD(r + 16); a2 += w * V16LD(r + 32); a3 += w * V16LD(r + 48);
        }
        V16ST(o + c, a0 + b0); V16ST(o + c + 16, a1 + b1); V16ST(o + c + 32, a2 + b2); V16ST(o + c + 48, a3 + b3);
    }
    for (; c < dvp; c += 16) {
        v16f a0 = {0}, b0 = {0};
        int64_t t = 0;
        for (; t + 2 <= nnz; t += 2) {
            a0 += val[t * st] * V16LD(V + (int64_t)idx[t] * ldv + c);
            b0 += val[(t + 1) * st] * V16LD(V + (int64_t)idx[t + 1] * ldv + c);
        }
        if (t < nnz) a0 += val[t * st] * V16LD(V + (int64_t)idx[t] * ldv + c);
        V16ST(o + c, a0 + b0);
    }
#else
    for (; c + 32 <= dvp; c += 32) {
        v8f a0 = {0}, a1 = {0}, a2 = {0}, a3 = {0};
        for (int64_t t = 0; t < nnz; ++t) {
            const float w = val[t * st];
            const float *r = V + (int64_t)idx[t] * ldv + c;
            a0 += w * V8LD(r); a1 += w * V8LD(r + 8); a2 += w * V8LD(r + 16); a3 += w * V8LD(r + 24);
        }
        V8ST(o + c, a0); V8ST(o + c + 8, a1); V8ST(o + c + 16, a2); V8ST(o + c + 24, a3);
    }
    if (c < dvp) {
        v8f a0 = {0}, a1 = {0};
        for (int64_t t = 0; t < nnz; ++t) {
            const float w = val[t * st];
            const float *r = V + (int64_t)idx[t] * ldv + c;
            a0 += w * V8LD(r); a1 += w * V8LD(r + 8);
        }
        V8ST(o + c, a0); V8ST(o + c + 8, a1);
    }
#endif
}

static inline int64_t round_up(int64_t x, int64_t m) { return (x + m - 1) / m * m; }
/* AA(1)'s per-token scale (ops/combine.aa_token_scale): f_prev = kd - q, f_curr = ks - q (the key-space
   residuals of the dense and sparse retrievals of the query q), gamma = <f_curr, f_curr - f_prev> /
   |f_curr - f_prev|^2, 0 for a pair at rounding level (|diff|^2 <= (64 eps)^2 (|f_prev|^2 + |f_curr|^2) or
   not a normal number; eps, tiny of fp32, the compute dtype); lam = clamp(1 - gamma, lo, hi). */
static inline double aa_scale_f32(const float *q, const float *kd, const float *ks, int64_t d, double lo,
                                  double hi) {
    double dd = 0, fd = 0, pp = 0, cc = 0;
#if defined(__AVX512F__) && defined(__AVX512VL__)
    __m512d vdd = _mm512_setzero_pd(), vfd = vdd, vpp = vdd, vcc = vdd;
    for (int64_t j = 0; j < d; j += 8) {
        const __mmask8 k = tail8(d - j);
        const __m512d qv = _mm512_cvtps_pd(_mm256_maskz_loadu_ps(k, q + j));
        const __m512d fp = _mm512_sub_pd(_mm512_cvtps_pd(_mm256_maskz_loadu_ps(k, kd + j)), qv);
        const __m512d fc = _mm512_sub_pd(_mm512_cvtps_pd(_mm256_maskz_loadu_ps(k, ks + j)), qv);
        const __m512d df = _mm512_sub_pd(fc, fp);
        vdd = _mm512_fmadd_pd(df, df, vdd);
        vfd = _mm512_fmadd_pd(fc, df, vfd);
        vpp = _mm512_fmadd_pd(fp, fp, vpp);
        vcc = _mm512_fmadd_pd(fc, fc, vcc);
    }
    dd = _mm512_reduce_add_pd(vdd); fd = _mm512_reduce_add_pd(vfd);
    pp = _mm512_reduce_add_pd(vpp); cc = _mm512_reduce_add_pd(vcc);
#else
    _Pragma("omp simd reduction(+ : dd, fd, pp, cc)")
    for (int64_t j = 0; j < d; ++j) {
        const double fp = (double)kd[j] - q[j], fc = (double)ks[j] - q[j], df = fc - fp;
        dd += df * df;
        fd += fc * df;
        pp += fp * fp;
        cc += fc * fc;
    }
#endif
    const double floor = (64.0 * FLT_EPSILON) * (64.0 * FLT_EPSILON) * (pp + cc);
    const double gamma = (dd <= floor || dd <= FLT_MIN) ? 0.0 : fd / dd;
    const double l = 1.0 - gamma;
    return l < lo ? lo : (l > hi ? hi : l);
}


/* Storage types of q, k, v and the output: fp32, bf16 and fp16 are read and written in the kernel (no
   conversion pass over the tensors); the compute is fp32 (the two products of bf16 storage on AMX tiles, see
   HG_AMX). The roundings to bf16/fp16 are torch's (to nearest, ties to even; NaN stays NaN), so without the
   tiles the output equals the fp32 result converted. */
#if defined(__F16C__)
#include <immintrin.h>
#endif
#if defined(__FLT16_MAX__) && !defined(HG_NO_FLOAT16)
/* the compiler's IEEE binary16 (F16C / AVX512-FP16 instructions where the target has them) */
typedef _Float16 hg_half;
static inline float ld_f16(const hg_half *p) { return (float)*p; }
static inline void st_f16(hg_half *p, float f) { *p = (hg_half)f; }
#else
typedef uint16_t hg_half;
static inline float ld_f16(const uint16_t *p) {
    const uint32_t h = *p, sign = (h & 0x8000u) << 16, e = (h >> 10) & 0x1fu, m = h & 0x3ffu;
    union { uint32_t u; float f; } x;
    if (e == 0x1f) x.u = sign | 0x7f800000u | (m << 13);          /* inf, NaN */
    else if (e != 0) x.u = sign | ((e + 112) << 23) | (m << 13);   /* normal */
    else { x.f = (float)m * 5.9604644775390625e-8f; x.u |= sign; } /* subnormal: m 2^-24, exact */
    return x.f;
}
static inline void st_f16(uint16_t *p, float f) {
    union { uint32_t u; float f; } x;
    x.f = f;
    const uint32_t sign = (x.u >> 16) & 0x8000u, a = x.u & 0x7fffffffu;
    uint16_t h;
    if (a > 0x7f800000u) h = 0x7e00;                                /* NaN */
    else if (a >= 0x477ff000u) h = 0x7c00;                          /* rounds to inf (>= 65520) */
    else if (a >= 0x38800000u) {                                    /* normal half */
        const uint32_t r = a + 0xfffu + ((a >> 13) & 1u) - (112u << 23);
        h = (uint16_t)(r >> 13);
    } else {                                                        /* subnormal or zero: |f| / 2^-24, RNE */
        union { uint32_t u; float f; } y;
        y.u = a;
        h = (uint16_t)__builtin_nearbyintf(y.f * 16777216.0f); /* exact scaling; rint is ties-to-even */
    }
    *p = (uint16_t)(h | sign);
}
#endif

/* Whole rows: dst[0..n) = scale * src[0..n) in fp32 (scale 1 or beta: one rounding, as fp32 compute on the
   upcast input), and the output row's rounding. fp32 and bf16 are plain integer/float loops the compiler
   vectorizes; fp16 uses the F16C conversions 8 at a time where the target has them (the scalar _Float16
   conversions do not vectorize and cost 2 ms at (2,8,1024,77,64)). VCVTPS2PH with an explicit
   round-to-nearest-even immediate is exact IEEE rounding, subnormals included. */
static inline void load_row_f32(const float *s, float *d, int64_t n, float scale) {
#pragma omp simd
    for (int64_t i = 0; i < n; ++i) d[i] = scale * s[i];
}
static inline void store_row_f32(const float *s, float *d, int64_t n) {
    if (s != d)
        for (int64_t i = 0; i < n; ++i) d[i] = s[i];
}
static inline void load_row_bf16(const uint16_t *s, float *d, int64_t n, float scale) {
#pragma omp simd
    for (int64_t i = 0; i < n; ++i) {
        union { uint32_t u; float f; } x;
        x.u = (uint32_t)s[i] << 16;
        d[i] = scale * x.f;
    }
}
static inline void store_row_bf16(const float *s, uint16_t *d, int64_t n) {
#pragma omp simd
    for (int64_t i = 0; i < n; ++i) {
        union { uint32_t u; float f; } x;
        x.f = s[i];
        const uint32_t r = (x.u + 0x7fffu + ((x.u >> 16) & 1u)) >> 16;
        d[i] = (x.u & 0x7fffffffu) > 0x7f800000u ? (uint16_t)0x7fc0 : (uint16_t)r;
    }
}
static inline void load_row_f16(const hg_half *s, float *d, int64_t n, float scale) {
    int64_t i = 0;
#if defined(__F16C__)
    const __m256 vs = _mm256_set1_ps(scale);
    for (; i + 8 <= n; i += 8)
        _mm256_storeu_ps(d + i, _mm256_mul_ps(vs, _mm256_cvtph_ps(_mm_loadu_si128((const __m128i *)(const void *)(s + i)))));
#endif
    for (; i < n; ++i) d[i] = scale * ld_f16(s + i);
}
static inline void store_row_f16(const float *s, hg_half *d, int64_t n) {
    int64_t i = 0;
#if defined(__F16C__)
    for (; i + 8 <= n; i += 8)
        _mm_storeu_si128((__m128i *)(void *)(d + i),
                         _mm256_cvtps_ph(_mm256_loadu_ps(s + i), _MM_FROUND_TO_NEAREST_INT | _MM_FROUND_NO_EXC));
#endif
    for (; i < n; ++i) st_f16(d + i, s[i]);
}

#if defined(__AMX_TILE__) && defined(__AMX_BF16__) && defined(__AVX512BF16__) && defined(__AVX512BW__) && \
    defined(__linux__) && !defined(HG_NO_AMX)
#define HG_AMX 1
#include <sys/syscall.h>
#include <unistd.h>
/* bf16 storage on CPUs with AMX: both products on bf16 tiles (TDPBF16PS: exact bf16 products, fp32 sums).
   Q K^T reads q and k's bf16 as they are (beta applied to the fp32 scores); P V splits the fp32 probabilities
   into two bf16 matrices P_hi + P_lo (~16 significant bits: one bf16 P would put 2^-9 into d, which gag
   multiplies by lam). The tiles flush products below bf16's smallest normal number to zero. Measured, 1
   thread, kernel alone, against SDPA's bf16 (itself on AMX): (2,8,1024,77,64) 1.72x -> 1.53x, Flux-like
   (1,24,2048,512,128) 4.6x -> 2.45x. The OS must grant the tile state once per process (Linux arch_prctl);
   without it, or built with -DHG_NO_AMX, bf16 is computed in fp32 like fp16 (bit-exact to fp32 converted). */
static int amx_ready(void) {
    static int state = 0; /* 0 unknown, 1 granted, -1 refused (a benign race: every thread writes the same) */
    if (state == 0) state = syscall(SYS_arch_prctl, 0x1023 /* ARCH_REQ_XCOMP_PERM */, 18 /* XTILEDATA */) == 0 ? 1 : -1;
    return state == 1;
}
typedef struct { uint8_t palette, start; uint8_t res[14]; uint16_t colsb[16]; uint8_t rows[16]; } amx_cfg;
static void amx_configure(void) { /* tiles 0..3: 16 rows x 64 bytes */
    amx_cfg c;
    memset(&c, 0, sizeof c);
    c.palette = 1;
    for (int t = 0; t < 4; ++t) { c.rows[t] = 16; c.colsb[t] = 64; }
    _tile_loadconfig(&c);
}
#endif

#ifdef HG_AMX
/* S[0..rows16)[0..16 npan) (row stride lds floats) = Qh (bf16, row stride d32) times the K tiles */
static void amx_qk(const uint16_t *Qh, int64_t d32, const uint16_t *Kv, int64_t nkb, int64_t npan, float *S,
                   int64_t lds, int64_t rows16) {
    for (int64_t it = 0; it < rows16; it += 16)
        for (int64_t p = 0; p < npan; ++p) {
            _tile_zero(0);
            for (int64_t kb = 0; kb < nkb; ++kb) {
                _tile_loadd(1, Qh + it * d32 + kb * 32, d32 * 2);
                _tile_loadd(2, Kv + (p * nkb + kb) * 512, 64);
                _tile_dpbf16ps(0, 1, 2);
            }
            _tile_stored(0, S + it * lds + p * 16, lds * 4);
        }
}
/* Od[0..rows16)[0..16 ntv) (row stride ldo floats) = (Ph + Pl) (bf16, row stride lk32) times the V tiles */
static void amx_pv(const uint16_t *Ph, const uint16_t *Pl, int64_t lk32, const uint16_t *Vv, int64_t nvb, int64_t ntv,
                   float *Od, int64_t ldo, int64_t rows16) {
    for (int64_t it = 0; it < rows16; it += 16)
        for (int64_t t = 0; t < ntv; ++t) {
            _tile_zero(0);
            for (int64_t kb = 0; kb < nvb; ++kb) {
                _tile_loadd(2, Vv + (kb * ntv + t) * 512, 64);
                _tile_loadd(1, Ph + it * lk32 + kb * 32, lk32 * 2);
                _tile_dpbf16ps(0, 1, 2);
                _tile_loadd(3, Pl + it * lk32 + kb * 32, lk32 * 2);
                _tile_dpbf16ps(0, 3, 2);
            }
            _tile_stored(0, Od + it * ldo + t * 16, ldo * 4);
        }
}
/* p[0..n) (0 past n, up to n32) as bf16 hi + lo (p - hi rounded again): ~16 significant bits */
static inline void amx_split(const float *p, int64_t n, uint16_t *hi, uint16_t *lo, int64_t n32) {
    for (int64_t j = 0; j < n32; j += 16) {
        const __mmask16 k = n - j >= 16 ? (__mmask16)0xFFFF : n <= j ? (__mmask16)0 : (__mmask16)((1u << (n - j)) - 1u);
        const __m512 x = _mm512_maskz_loadu_ps(k, p + j);
        const __m256i h = (__m256i)_mm512_cvtneps_pbh(x);
        const __m512 hf = _mm512_castsi512_ps(_mm512_slli_epi32(_mm512_cvtepu16_epi32(h), 16));
        _mm256_storeu_si256((__m256i *)(void *)(hi + j), h);
        _mm256_storeu_si256((__m256i *)(void *)(lo + j), (__m256i)_mm512_cvtneps_pbh(_mm512_sub_ps(x, hf)));
    }
}
/* B tiles of a product along the keys: dst[(kb ntiles + t) 512 + kp 32 + c 2 + e] = src[key][t 16 + c] with
   key = 32 kb + 2 kp + e (src row stride cols; zero past Lk keys and cols columns) */
static void amx_pack_by_keys(const uint16_t *src, int64_t lk, int64_t cols, int64_t ntiles, int64_t nkb, uint16_t *dst) {
    for (int64_t kb = 0; kb < nkb; ++kb)
        for (int64_t t = 0; t < ntiles; ++t) {
            uint16_t *tile = dst + (kb * ntiles + t) * 512;
            for (int64_t kp = 0; kp < 16; ++kp)
                for (int64_t c = 0; c < 16; ++c)
                    for (int e = 0; e < 2; ++e) {
                        const int64_t j = kb * 32 + 2 * kp + e, col = t * 16 + c;
                        tile[kp * 32 + c * 2 + e] = j < lk && col < cols ? src[j * cols + col] : 0;
                    }
        }
}
int hg_bf16_tiles(void) { return amx_ready(); }
static inline void amx_release(void) { _tile_release(); }
#else
static int amx_ready(void) { return 0; }
int hg_bf16_tiles(void) { return 0; }
/* without AMX the tile steps never run (amx is 0); these keep the one code path compiling */
static inline void amx_configure(void) {}
static inline void amx_release(void) {}
static inline void amx_qk(const uint16_t *Qh, int64_t d32, const uint16_t *Kv, int64_t nkb, int64_t npan, float *S,
                          int64_t lds, int64_t rows16) { (void)Qh; (void)d32; (void)Kv; (void)nkb; (void)npan; (void)S; (void)lds; (void)rows16; }
static inline void amx_pv(const uint16_t *Ph, const uint16_t *Pl, int64_t lk32, const uint16_t *Vv, int64_t nvb, int64_t ntv,
                          float *Od, int64_t ldo, int64_t rows16) { (void)Ph; (void)Pl; (void)lk32; (void)Vv; (void)nvb; (void)ntv; (void)Od; (void)ldo; (void)rows16; }
static inline void amx_split(const float *p, int64_t n, uint16_t *hi, uint16_t *lo, int64_t n32) { (void)p; (void)n; (void)hi; (void)lo; (void)n32; }
static inline void amx_pack_by_keys(const uint16_t *src, int64_t lk, int64_t cols, int64_t ntiles, int64_t nkb, uint16_t *dst) {
    (void)src; (void)lk; (void)cols; (void)ntiles; (void)nkb; (void)dst;
}
#endif

/* q (G, Lq, D), k (G, Lk, D), v (G, Lk, Dv) contiguous, of storage type T; out (G, Lq, Dv) contiguous, T.
   mask: NULL, or an additive fp32 mask whose row i of group g starts at mask + moff[g] + i * msi (unit column
   stride). method: HG_METHOD_SPARSE, _PLADIS, _GAG (with parallel, combine_one), or _AA (aa_scale_f32 with
   [aa_lo, aa_hi], which needs the key-space retrievals: the dense one by the micro-kernel against K, the
   sparse one by the same support gather). kind, hi0: the entmax setup of rows of length Lk. Returns the
   status bits of entmax_rows (rows without a distribution are NaN in the output; HG_STATUS_ITER_LIMIT: the
   caller must recompute), and HG_STATUS_KV_NONFINITE: k or v holds a NaN or an infinity.

   Scheduling: one parallel region; the blocks of queries are dealt one at a time by hg_claim (entmax_rows.c):
   each thread first takes the blocks of its own contiguous share of the (group, block) tasks -- the rows a
   static split gives it, so it also repacks K and V only when its share crosses into another group -- then
   what is left of the others' shares, so a thread that the OS deschedules (a busy machine) delays the call
   by at most one block, not by its static share of the work. There is no other parallel region and no
   shared packing pass: each thread packs K (and V, K for aa, in fp32) of the group it works on into its own
   buffers when its next block is of another group (a few microseconds against the group's ~Lq/RB blocks),
   so no thread ever waits for another until the region ends. The packing also
   checks k and v for NaN/inf (x - x is 0 exactly for finite x), which makes the caller's value checks free
   of any extra pass over the inputs. */
#define DEFINE_FORWARD(NAME, T, LOADROW, STOREROW, USE_AMX)                                                                 \
int64_t NAME(const T *q, const T *k, const T *v, const float *mask, const int64_t *moff, int64_t msi, T *out, \
             int64_t G, int64_t Lq, int64_t Lk, int64_t D, int64_t Dv, double beta, double alpha, int kind,  \
             double hi0, int method, int parallel, double lam, double eta, double zeta, double strength,     \
             double aa_lo, double aa_hi, int nthreads) {                                                    \
    const params P = make_params(alpha, kind, hi0);                                                        \
    const int64_t LkP = round_up(Lk, FUSED_NR), DvP = round_up(Dv, FUSED_NR), npan = LkP / FUSED_NR;       \
    const int aa = method == HG_METHOD_AA;                                                                 \
    const int64_t DP = round_up(D, FUSED_NR);                                                              \
    /* rows per block: the block's scores (RB x LkP floats) within ~64 KiB */                              \
    int64_t RB = (16384 / LkP) / FUSED_MR * FUSED_MR;                                                        \
    RB = RB < FUSED_MR ? FUSED_MR : (RB > 48 ? 48 : RB);                                                   \
    const int64_t nblk = (Lq + RB - 1) / RB, tasks = G * nblk;                                             \
    const int par = nthreads > 1 && (double)G * Lq * Lk * (D + Dv) >= 2e6 && tasks > 1;                    \
    /* fp32 storage whose rows need no padding is read in place; otherwise each thread keeps an fp32 copy */ \
    const int own_v = sizeof(T) != sizeof(float) || Dv != DvP, own_k = aa && (sizeof(T) != sizeof(float) || D != DP); \
    const int amx = USE_AMX && amx_ready();                                                                 \
    const int64_t RB16 = round_up(RB, 16), D32 = round_up(D, 32), Lk32 = round_up(Lk, 32);                 \
    const int64_t nkb = D32 / 32, nvb = Lk32 / 32, ntv = DvP / 16, ntk = aa ? DP / 16 : 0;                 \
    int64_t flags = 0;                                                                                     \
    int kv_bad = 0;                                                                                        \
    hg_range *R = hg_ranges_new(&nthreads, tasks);                                                         \
    if (R == NULL) return HG_STATUS_OUT_OF_MEMORY;                                                         \
    _Pragma("omp parallel num_threads(nthreads) if(par) reduction(| : flags, kv_bad)")                     \
    {                                                                                                      \
        /* + 16 floats: D = 0 is a valid, if degenerate, call (no zero-size allocation) */            \
        float *Kp = (float *)hg_alloc(((size_t)npan * D * FUSED_NR + 16) * sizeof(float));                   \
        float *Vt = own_v ? (float *)hg_alloc(((size_t)Lk * DvP + 16) * sizeof(float)) : NULL;               \
        float *Kt = own_k ? (float *)hg_alloc(((size_t)Lk * DP + 16) * sizeof(float)) : NULL;                \
        uint16_t *Kv = amx ? (uint16_t *)hg_alloc(sizeof(uint16_t) * (npan * nkb * 512 + nvb * (ntv + ntk) * 512 + RB16 * (D32 + 2 * Lk32))) : NULL; \
        uint16_t *Vv = amx ? Kv + npan * nkb * 512 : NULL, *Qh = amx ? Vv + nvb * ntv * 512 : NULL, *Ph = amx ? Qh + RB16 * D32 : NULL, *Pl = amx ? Ph + RB16 * Lk32 : NULL; \
        uint16_t *Kk = amx ? Pl + RB16 * Lk32 : NULL; /* K as tiles along the keys (aa) */                 \
        float *Qb = (float *)hg_alloc(sizeof(float) * (RB16 * D + RB16 * LkP + 2 * RB16 * DvP +              \
                                                     (aa ? 2 * RB16 * DP + RB16 * D : 0) + DvP + 16));         \
        double *buf = (double *)hg_alloc(SET_SCRATCH(Lk) * sizeof(double));                                  \
        float *wl = (float *)hg_alloc(sizeof(float) * HG_LANES * (LkP + 16)); /* a row set's weights */      \
        float *krow = (float *)hg_alloc(sizeof(float) * (FUSED_NR * D + 16)); /* a panel's keys in fp32 */     \
        int oom = (amx && Kv == NULL) || Kp == NULL || Qb == NULL || buf == NULL || wl == NULL || krow == NULL || (own_v && Vt == NULL) || \
                  (own_k && Kt == NULL);                                                                   \
        if (oom) flags |= HG_STATUS_OUT_OF_MEMORY;                                                         \
        float *S = oom ? NULL : Qb + RB16 * D, *Od = S + RB16 * LkP, *Os = Od + RB16 * DvP, *Okd = Os + RB16 * DvP, *Oks = Okd + RB16 * DP, *Qr = Oks + RB16 * DP,      \
              *orow = aa ? Qr + RB16 * D : Okd;                                                              \
        rowset set;                                                                                        \
        if (!oom) rowset_init(&set, buf, Lk);                                                              \
        if (amx) amx_configure();                                                                          \
        int64_t cur = -1; /* the group whose K (V) this thread holds packed */                             \
        const float *Vg = NULL, *Kg2 = NULL;                                                               \
        const int me = hg_thread_num();                                                                    \
        int turn = 0;                                                                                      \
        for (int64_t task; !oom && (task = hg_claim(R, me, nthreads, &turn)) >= 0;) {                      \
            const int64_t g = task / nblk, i0 = (task % nblk) * RB;                                        \
            if (g != cur) {                                                                                \
                cur = g;                                                                                   \
                int bad = 0;                                                                               \
                for (int64_t p = 0; p < npan; ++p) {                                                       \
                    const int64_t nk = Lk - p * FUSED_NR < FUSED_NR ? Lk - p * FUSED_NR : FUSED_NR;        \
                    const T *src = k + (g * Lk + p * FUSED_NR) * D;                                        \
                    if (amx) { /* the tiles read k's bf16: only the finiteness check here */               \
                        for (int64_t jj = 0; jj < nk; ++jj) {                                              \
                            LOADROW(src + jj * D, krow, D, 1.0f);                                          \
                            _Pragma("omp simd reduction(| : bad)")                                         \
                            for (int64_t d = 0; d < D; ++d) bad |= !(krow[d] - krow[d] == 0.0f);           \
                        }                                                                                  \
                    } else { /* transposed from where it is (fp32) or from its rows converted to fp32 */   \
                        const float *kf = (const float *)(const void *)src;                                \
                        if (sizeof(T) != sizeof(float)) {                                                  \
                            for (int64_t jj = 0; jj < nk; ++jj) LOADROW(src + jj * D, krow + jj * D, D, 1.0f); \
                            kf = krow;                                                                     \
                        }                                                                                  \
                        bad |= pack_panel_f32(kf, D, nk, D, Kp + p * D * FUSED_NR);                        \
                    }                                                                                      \
                }                                                                                          \
                const T *vs = v + g * Lk * Dv;                                                             \
                if (own_v) {                                                                               \
                    for (int64_t j = 0; j < Lk; ++j) {                                                     \
                        float *row = Vt + j * DvP;                                                         \
                        LOADROW(vs + j * Dv, row, Dv, 1.0f);                                               \
                        _Pragma("omp simd reduction(| : bad)")                                             \
                        for (int64_t c = 0; c < Dv; ++c) bad |= !(row[c] - row[c] == 0.0f);               \
                        for (int64_t c = Dv; c < DvP; ++c) row[c] = 0.0f;                                  \
                    }                                                                                      \
                    Vg = Vt;                                                                               \
                } else {                                                                                   \
                    const float *vf = (const float *)(const void *)vs;                                     \
                    _Pragma("omp simd reduction(| : bad)")                                                 \
                    for (int64_t i = 0; i < Lk * Dv; ++i) bad |= !(vf[i] - vf[i] == 0.0f);                 \
                    Vg = vf;                                                                               \
                }                                                                                          \
                if (own_k) {                                                                               \
                    for (int64_t j = 0; j < Lk; ++j) {                                                     \
                        LOADROW(k + (g * Lk + j) * D, Kt + j * DP, D, 1.0f);                               \
                        for (int64_t c = D; c < DP; ++c) Kt[j * DP + c] = 0.0f;                            \
                    }                                                                                      \
                    Kg2 = Kt;                                                                              \
                } else if (aa) {                                                                           \
                    Kg2 = (const float *)(const void *)(k + g * Lk * D);                                   \
                }                                                                                          \
                kv_bad |= bad;                                                                             \
                if (amx) { /* K and V as bf16 tiles (pairs along the product's inner dim), zero padded */  \
                    const uint16_t *kb16 = (const uint16_t *)(const void *)(k + g * Lk * D);               \
                    const uint16_t *vb16 = (const uint16_t *)(const void *)(v + g * Lk * Dv);              \
                    for (int64_t p = 0; p < npan; ++p)                                                     \
                        for (int64_t kb = 0; kb < nkb; ++kb) {                                             \
                            uint16_t *tile = Kv + (p * nkb + kb) * 512;                                    \
                            for (int64_t dp = 0; dp < 16; ++dp)                                            \
                                for (int64_t jj = 0; jj < 16; ++jj)                                        \
                                    for (int e = 0; e < 2; ++e) {                                          \
                                        const int64_t j = p * 16 + jj, d = kb * 32 + 2 * dp + e;          \
                                        tile[dp * 32 + jj * 2 + e] = j < Lk && d < D ? kb16[j * D + d] : 0; \
                                    }                                                                      \
                        }                                                                                  \
                    amx_pack_by_keys(vb16, Lk, Dv, ntv, nvb, Vv);                                          \
                    if (aa) amx_pack_by_keys(kb16, Lk, D, ntk, nvb, Kk); /* AA(1)'s P K */                 \
                }                                                                                          \
            }                                                                                              \
            const int64_t rows = Lq - i0 < RB ? Lq - i0 : RB, rowsM = round_up(rows, FUSED_MR_TAIL);       \
            const float fb = (float)beta;                                                                  \
            for (int64_t i = 0; i < rowsM; ++i) {                                                          \
                float *qd = Qb + i * D;                                                                    \
                if (i < rows) {                                                                            \
                    const T *qs = q + (g * Lq + i0 + i) * D;                                               \
                    if (!amx) LOADROW(qs, qd, D, fb); /* the tiles read q's bf16 directly */               \
                    if (aa) LOADROW(qs, Qr + i * D, D, 1.0f);                                              \
                } else if (!amx) {                                                                         \
                    for (int64_t d = 0; d < D; ++d) qd[d] = 0.0f;                                          \
                }                                                                                          \
            }                                                                                              \
            const int64_t rows16 = round_up(rows, 16);                                                     \
            if (amx) {                                                                                     \
                for (int64_t i = 0; i < rows16; ++i) {                                                     \
                    uint16_t *qh = Qh + i * D32;                                                           \
                    if (i < rows) memcpy(qh, q + (g * Lq + i0 + i) * D, D * sizeof(uint16_t));             \
                    for (int64_t d = i < rows ? D : 0; d < D32; ++d) qh[d] = 0;                            \
                }                                                                                          \
                amx_qk(Qh, D32, Kv, nkb, npan, S, LkP, rows16);                                            \
            } else {                                                                                       \
                gemm_panels(Qb, D, rowsM, Kp, D * FUSED_NR, FUSED_NR, npan, D, S, LkP);                    \
            }                                                                                              \
            unsigned char bad[48];                                                                         \
            for (int64_t i0s = 0; i0s < rows; i0s += HG_LANES) { /* rows in sets: their entmax together */ \
                set.nrows = (int)(rows - i0s < HG_LANES ? rows - i0s : HG_LANES);                          \
                for (int r = 0; r < set.nrows; ++r) {                                                      \
                    float *z = S + (i0s + r) * LkP;                                                        \
                    if (amx) { _Pragma("omp simd") for (int64_t j = 0; j < Lk; ++j) z[j] *= fb; }          \
                    if (mask != NULL) {                                                                    \
                        const float *mr = mask + moff[g] + (i0 + i0s + r) * msi;                           \
                        _Pragma("omp simd")                                                                \
                        for (int64_t j = 0; j < Lk; ++j) z[j] += mr[j];                                    \
                    }                                                                                      \
                    rowset_add_f32(&set, r, z, &P);                                                        \
                }                                                                                          \
                rowset_solve(&set, &P);                                                                    \
                rowset_weights_f32(&set, &P, wl);                                                          \
                for (int r = 0; r < set.nrows; ++r) {                                                      \
                    const int64_t i = i0s + r;                                                             \
                    float *z = S + i * LkP;                                                                \
                    flags |= set.status[r];                                                                \
                    bad[i] = (set.status[r] & HG_STATUS_NO_DISTRIBUTION) != 0;                             \
                    if (bad[i]) continue;                                                                  \
                    /* the row's candidates above the first step's bound, zero weights included */      \
                    gather_rows_f32(wl + r, HG_LANES, set.gi + r * set.st, set.m[r], Vg, DvP, DvP, Os + i * DvP);   \
                    if (aa) gather_rows_f32(wl + r, HG_LANES, set.gi + r * set.st, set.m[r], Kg2, DP, DP, Oks + i * DP); \
                    softmax_shifted_f32(z, z, Lk, (float)set.zmax[r]);                                     \
                }                                                                                          \
            }                                                                                              \
            for (int64_t i = 0; i < rowsM; ++i) {                                                          \
                float *z = S + i * LkP;                                                                    \
                if (i >= rows || bad[i]) for (int64_t j = 0; j < Lk; ++j) z[j] = 0.0f;                     \
            }                                                                                              \
            if (amx) {                                                                                     \
                for (int64_t i = 0; i < rows16; ++i)                                                       \
                    amx_split(S + i * LkP, i < rows && !bad[i] ? Lk : 0, Ph + i * Lk32, Pl + i * Lk32, Lk32); \
                amx_pv(Ph, Pl, Lk32, Vv, nvb, ntv, Od, DvP, rows16);                                       \
            } else {                                                                                       \
                gemm_panels(S, LkP, rowsM, Vg, FUSED_NR, DvP, DvP / FUSED_NR, Lk, Od, DvP);                \
            }                                                                                              \
            if (aa && amx) amx_pv(Ph, Pl, Lk32, Kk, nvb, ntk, Okd, DP, rows16);                           \
            else if (aa) gemm_panels(S, LkP, rowsM, Kg2, FUSED_NR, DP, DP / FUSED_NR, Lk, Okd, DP);        \
            for (int64_t i = 0; i < rows; ++i) {                                                           \
                T *o = out + (g * Lq + i0 + i) * Dv;                                                       \
                /* fp32 storage: combine straight into the output row; else into orow, then round */       \
                float *of = sizeof(T) == sizeof(float) ? (float *)(void *)o : orow;                        \
                if (bad[i]) {                                                                              \
                    for (int64_t c = 0; c < Dv; ++c) of[c] = NAN;                                          \
                } else if (aa) {                                                                           \
                    const double l = aa_scale_f32(Qr + i * D, Okd + i * DP, Oks + i * DP, D, aa_lo, aa_hi); \
                    combine_one_f32(Od + i * DvP, Os + i * DvP, of, Dv, HG_METHOD_PLADIS, parallel, l, eta, zeta, \
                                    strength);                                                             \
                } else {                                                                                   \
                    combine_one_f32(Od + i * DvP, Os + i * DvP, of, Dv, method, parallel, lam, eta, zeta, strength); \
                }                                                                                          \
                if (sizeof(T) != sizeof(float)) STOREROW(of, o, Dv);                                       \
            }                                                                                              \
        }                                                                                                  \
        free(Kp);                                                                                          \
        free(Vt);                                                                                          \
        free(Kt);                                                                                          \
        free(Qb);                                                                                          \
        free(buf);                                                                                         \
        free(wl);                                                                                          \
        free(krow);                                                                                        \
        free(Kv);                                                                                          \
        if (amx) amx_release();                                                                            \
    }                                                                                                      \
    free(R);                                                                                               \
    return flags | (kv_bad ? HG_STATUS_KV_NONFINITE : 0);                                                  \
}

DEFINE_FORWARD(gag_forward_f32, float, load_row_f32, store_row_f32, 0)
DEFINE_FORWARD(gag_forward_bf16, uint16_t, load_row_bf16, store_row_bf16, 1)
DEFINE_FORWARD(gag_forward_f16, hg_half, load_row_f16, store_row_f16, 0)
