/*
 * Row-wise exact alpha-entmax on contiguous rows (the CPU fast path of hopfield_gag.ops.normalizers).
 *
 * For each row z (length n) it finds the threshold t (in z units) with
 *     sum_i ( (alpha-1) (z_i - t) )_+ ^ r = 1,      r = 1 / (alpha - 1),
 * and writes p_i = ((alpha-1)(z_i - t))_+^r, renormalized so the row sums to 1.
 *
 * Algorithm (no sort): h(t) = ||(z - t)_+||_r - 1/(alpha-1) is decreasing, and convex for r >= 1
 * (alpha <= 2), so Newton from the lower bracket end t0 = max(z) - 1/(alpha-1) increases monotonically
 * to the root; a bracket [lo, hi] guards against rounding. Exact finish: for r = 2 (alpha = 1.5) and
 * r = 1 (alpha = 2) the threshold on a fixed support S has a closed form, accepted only when the support
 * it induces is S itself, which makes it the exact root. Other alpha <= 2: Newton runs to h(t) = 0 at
 * double precision. alpha > 2 (r < 1): h is not convex and p has unbounded slope at the threshold, so
 * the bracket is bisected to its rounding.
 *
 * Speed: entries <= max - 1/(alpha-1) can never be in the support and the lower bound only rises, so the
 * candidates are gathered once and compacted after each iteration; the iterations touch a few percent of
 * a long row. Loops are branch-free SIMD reductions; accumulation is in double whatever the storage type.
 * Everything after the max pass is in max-shifted coordinates u = z - max z: at |z| ~ 1e38 an unshifted
 * max(z) - 1/(alpha-1) would round back to max(z).
 *
 * The search's setup (kind, bracket end hi0) is derived once in Python (hopfield_gag/ops/threshold.py) and
 * passed in; the status bits (HG_STATUS_*) and kinds (HG_KIND_*) are -D flags generated from
 * hopfield_gag/ops/codes.py by the loader (hopfield_gag/ops/_kernel.py).
 */
#if !defined(HG_STATUS_NONFINITE_SCORES) || !defined(HG_KIND_ENTMAX15)
#error "compile with the -D flags of hopfield_gag.ops.codes.c_defines() (hopfield_gag/ops/_kernel.py does)"
#endif
#define HG_STATUS_NO_DISTRIBUTION (HG_STATUS_NONFINITE_SCORES | HG_STATUS_FULLY_MASKED)
#include <float.h>
#include <math.h>
#include <stdint.h>
#include <stdlib.h>

/* Iteration limit of the threshold searches. Settable (hg_set_max_iter) only so that tests can force the
   "limit hit" path; the searches converge in a handful of iterations on real rows. */
static int g_maxit = 300;
#define MAXIT g_maxit

void hg_set_max_iter(int m) { g_maxit = m > 0 ? m : 300; }
int hg_get_max_iter(void) { return g_maxit; }

/* max(x, 0) for non-NaN x. Not fmax: without -ffast-math fmax must honour NaN and stays a libm call,
   which also blocks vectorization; the rows reaching these loops hold no NaN. */
static inline double pos(double x) { return x > 0.0 ? x : 0.0; }

typedef struct {
    double alpha, a, r, inv_a;
    double hi0; /* upper bracket end (shifted): -(1/n)^a / a; p_i <= 1/n there, so sum p <= 1 */
    int kind;   /* HG_KIND_*: SPARSEMAX (alpha = 2), ENTMAX15 (alpha = 1.5), GENERAL (1 < alpha < 2), BISECT */
} params;

/* The kinds whose p = (a y)^r needs pow (no closed-form finish). */
#define HG_POW_KIND(kind) ((kind) == HG_KIND_GENERAL || (kind) == HG_KIND_BISECT)

/* The threshold-search parameters of alpha-entmax; kind and hi0 from hopfield_gag.ops.threshold.entmax_setup. */
static params make_params(double alpha, int kind, double hi0) {
    params P;
    P.alpha = alpha;
    P.a = alpha - 1.0;
    P.r = 1.0 / P.a;
    P.inv_a = 1.0 / P.a;
    P.hi0 = hi0;
    P.kind = kind;
    return P;
}

/* Keep the entries u = buf[i] - shift with u > bound (branch-free, in place); returns the count. */
static inline int64_t compact(double *buf, int64_t m, double bound, double shift) {
    int64_t j = 0;
    for (int64_t i = 0; i < m; ++i) {
        const double u = buf[i] - shift;
        buf[j] = u;
        j += u > bound;
    }
    return j;
}

static inline int64_t count_above(const double *buf, int64_t m, double t) {
    int64_t c = 0;
#pragma omp simd reduction(+ : c)
    for (int64_t i = 0; i < m; ++i) c += buf[i] > t;
    return c;
}

/* Threshold for the candidates buf[0..m) (shifted so the row max is 0). Compacts buf in place
   (*m_io is updated). Sets HG_STATUS_ITER_LIMIT in *status if MAXIT was hit (the bracket estimate is returned). */
static double threshold(double *buf, int64_t *m_io, const params *P, int *status) {
    const double inv_a = P->inv_a, r = P->r, a = P->a;
    int64_t m = *m_io;
    double lo = -inv_a, hi = P->hi0, t = lo, tau = NAN;
    for (int it = 0; it < MAXIT; ++it) {
        double s0 = 0, s1 = 0, s2 = 0, sr = 0, srm1 = 0;
        if (HG_POW_KIND(P->kind)) {
            for (int64_t i = 0; i < m; ++i) {
                const double y = buf[i] - t;
                if (y > 0) {
                    /* in w = a y (w <= 1 for t >= lo): y^r itself overflows for r = 1/(alpha-1) >~ 130 */
                    const double w = a * y;
                    const double y1 = pow(w, r - 1.0);
                    s0 += 1.0;
                    s1 += y;
                    srm1 += y1;
                    sr += y1 * w;
                }
            }
        } else {
#pragma omp simd reduction(+ : s0, s1, s2)
            for (int64_t i = 0; i < m; ++i) {
                const double y = pos(buf[i] - t);
                s0 += y > 0;
                s1 += y;
                s2 += y * y;
            }
        }
        const double Nw = HG_POW_KIND(P->kind) ? pow(sr, a) : 0.0; /* ||a (u - t)_+||_r */
        const double N = P->kind == HG_KIND_SPARSEMAX ? s1 : (P->kind == HG_KIND_ENTMAX15 ? sqrt(s2) : Nw * inv_a);
        if (N >= inv_a) {
            lo = t;
            m = compact(buf, m, lo, 0.0);
        } else {
            hi = t;
        }
        const double tol = 4.0 * DBL_EPSILON * (fabs(t) + inv_a);
        double tn;
        if (P->kind == HG_KIND_SPARSEMAX) {
            /* Michelot step: the root of the current linear piece (a lower bound); exact iff the
               support it induces is the current one. */
            tn = t + (s1 - 1.0) / s0;
            if ((double)count_above(buf, m, tn) == s0 || tn <= t) { tau = tn; break; }
        } else if (P->kind == HG_KIND_ENTMAX15) {
            /* Closed-form root on the current support (an upper bound); exact iff it keeps it. */
            const double D = s1 * s1 - s0 * (s2 - inv_a * inv_a);
            double tc = t;
            if (D >= 0) {
                tc = t + (s1 - sqrt(D)) / s0;
                if ((double)count_above(buf, m, tc) == s0) { tau = tc; break; }
            }
            tn = t + (N - inv_a) * N / s1;
            if (!(tn >= lo && tn <= hi)) tn = 0.5 * (lo + hi);
            if (fabs(tn - t) <= tol) { tau = D >= 0 ? tc : tn; break; } /* a tie at the threshold */
        } else if (P->kind == HG_KIND_BISECT) { /* alpha > 2: h is not convex */
            if (hi - lo <= tol) { tau = 0.5 * (lo + hi); break; }
            tn = 0.5 * (lo + hi);
        } else {
            /* Converged when h(t) is zero to rounding or the bracket has collapsed. */
            if (fabs(N - inv_a) <= 8.0 * DBL_EPSILON * inv_a || hi - lo <= tol) { tau = t; break; }
            tn = t + (N - inv_a) * pow(Nw, r - 1.0) / srm1; /* Newton on ||y||_r, in w units */
            if (!(tn > lo && tn < hi) || !isfinite(tn)) {
                tn = 0.5 * (lo + hi);
            } else if (fabs(tn - t) <= tol) {
                tau = tn; /* monotone Newton has stalled at the root */
                break;
            }
        }
        t = tn;
    }
    if (isnan(tau)) {
        *status |= HG_STATUS_ITER_LIMIT;
        tau = t;
    }
    *m_io = m;
    return tau;
}


/* The statistics of one alpha = 1.5 pass over the candidates buf[0..m): sum and sum of squares of
   (u - t)_+, the count above t, the count above tc. buf holds -inf up to the next multiple of 4 (the
   gather pads it), so the AVX2 loop has no remainder. */
#if defined(__AVX2__)
#include <immintrin.h>
static inline double hsum4(__m256d v) {
    const __m128d a = _mm_add_pd(_mm256_castpd256_pd128(v), _mm256_extractf128_pd(v, 1));
    return _mm_cvtsd_f64(_mm_add_sd(a, _mm_unpackhi_pd(a, a)));
}
static inline void stats15(const double *buf, int64_t m, double t, double tc, double *s1, double *s2,
                           double *cnt_t, double *cnt_tc) {
    const __m256d vt = _mm256_set1_pd(t), vc = _mm256_set1_pd(tc), zero = _mm256_setzero_pd(),
                  one = _mm256_set1_pd(1.0);
    __m256d a1 = zero, a2 = zero, aj = zero, ac = zero;
    for (int64_t i = 0; i < m; i += 4) {
        const __m256d u = _mm256_loadu_pd(buf + i);
        const __m256d y = _mm256_sub_pd(u, vt);
        const __m256d yk = _mm256_max_pd(y, zero);
        a1 = _mm256_add_pd(a1, yk);
        a2 = _mm256_fmadd_pd(yk, yk, a2);
        aj = _mm256_add_pd(aj, _mm256_and_pd(_mm256_cmp_pd(y, zero, _CMP_GT_OQ), one));
        ac = _mm256_add_pd(ac, _mm256_and_pd(_mm256_cmp_pd(u, vc, _CMP_GT_OQ), one));
    }
    *s1 = hsum4(a1); *s2 = hsum4(a2); *cnt_t = hsum4(aj); *cnt_tc = hsum4(ac);
}
#else
static inline void stats15(const double *buf, int64_t m, double t, double tc, double *s1o, double *s2o,
                           double *cnt_t, double *cnt_tc) {
    double s1 = 0, s2 = 0, jd = 0, cntd = 0;
#pragma omp simd reduction(+ : s1, s2, jd, cntd)
    for (int64_t i = 0; i < m; ++i) {
        const double u = buf[i];
        const double y = u - t;
        const double yk = y > 0 ? y : 0.0;
        s1 += yk;
        s2 += yk * yk;
        jd += y > 0 ? 1.0 : 0.0;
        cntd += u > tc ? 1.0 : 0.0;
    }
    *s1o = s1; *s2o = s2; *cnt_t = jd; *cnt_tc = cntd;
}
#endif

/* -inf up to the next multiple of 4 (room: the scratch has n + 16 doubles before the fp32 area) */
static inline void pad4(double *buf, int64_t m) {
    for (int64_t i = m; i < ((m + 3) & ~(int64_t)3); ++i) buf[i] = -INFINITY;
}

/* alpha = 1.5: one SIMD pass per iteration computes the statistics at t over the candidates (entries
   below t are masked, not moved: the candidates are few after the gather) and counts the candidates
   above the previous closed-form root (verifying it exactly, one pass late). When t is confirmed as a
   lower bound and at most half of the candidates lie above it, they are compacted (long rows). */
static double threshold15(double *buf, int64_t *m_io, const params *P, int *status) {
    const double inv_a = P->inv_a, C = inv_a * inv_a;
    int64_t m = *m_io;
    double lo = -inv_a, hi = P->hi0, t = lo, tc_prev = INFINITY, tau = NAN;
    int64_t s0_prev = -1;
    for (int it = 0; it < MAXIT; ++it) {
        double s1, s2, jd, cntd; /* counts in double: exact below 2^53, and one SIMD type */
        stats15(buf, m, t, tc_prev, &s1, &s2, &jd, &cntd);
        const int64_t j = (int64_t)jd, cnt = (int64_t)cntd;
        if (cnt == s0_prev) { tau = tc_prev; break; } /* the previous closed form kept its support */
        const double s0 = (double)j, N = sqrt(s2);
        if (N >= inv_a) { /* t is a lower bound: the entries above it hold the support */
            lo = t;
            if (2 * j <= m) { m = compact(buf, m, lo, 0.0); pad4(buf, m); }
        } else {
            hi = t;
        }
        const double D = s1 * s1 - s0 * (s2 - C);
        double tc = INFINITY;
        if (D >= 0) tc = t + (s1 - sqrt(D)) / s0;
        tc_prev = tc;
        s0_prev = D >= 0 ? j : -1;
        double tn = t + (N - inv_a) * N / s1;
        if (!(tn >= lo && tn <= hi)) tn = 0.5 * (lo + hi);
        if (fabs(tn - t) <= 4.0 * DBL_EPSILON * (fabs(t) + inv_a)) { tau = D >= 0 ? tc : tn; break; }
        t = tn;
    }
    if (isnan(tau)) { *status |= HG_STATUS_ITER_LIMIT; tau = t; }
    *m_io = m;
    return tau;
}

/* The candidate gather: the entries z_i > bound of a row, in order, into out (room for n + 8 entries);
   returns their count. fp32 with AVX2: 8 entries per step, compacted by a permutation from a 256-entry
   table (a scalar store-and-advance loop costs ~4 cycles per entry, half of a short row's time). */
#if defined(__AVX2__)
#include <immintrin.h>
static uint64_t g_perm[256]; /* mask -> the indices of its set bits, one byte each, in order */
__attribute__((constructor)) static void init_perm(void) {
    for (int mask = 0; mask < 256; ++mask) {
        uint64_t v = 0;
        int k = 0;
        for (int b = 0; b < 8; ++b)
            if (mask >> b & 1) v |= (uint64_t)b << (8 * k++);
        g_perm[mask] = v;
    }
}
static inline int64_t gather_above_f32(const float *z, int64_t n, float bound, float *out) {
    const __m256 vb = _mm256_set1_ps(bound);
    int64_t m = 0, i = 0;
    for (; i + 8 <= n; i += 8) {
        const __m256 x = _mm256_loadu_ps(z + i);
        const int mask = _mm256_movemask_ps(_mm256_cmp_ps(x, vb, _CMP_GT_OQ));
        const __m256i idx = _mm256_cvtepu8_epi32(_mm_cvtsi64_si128((long long)g_perm[mask]));
        _mm256_storeu_ps(out + m, _mm256_permutevar8x32_ps(x, idx));
        m += __builtin_popcount(mask);
    }
    for (; i < n; ++i) {
        out[m] = z[i];
        m += z[i] > bound;
    }
    return m;
}
#else
static inline int64_t gather_above_f32(const float *z, int64_t n, float bound, float *out) {
    int64_t m = 0;
    for (int64_t i = 0; i < n; ++i) {
        out[m] = z[i];
        m += z[i] > bound;
    }
    return m;
}
#endif

/* Scratch (doubles) that a row of length n needs: the candidates, and room for the fp32 gather. */
#define ROW_SCRATCH(n) ((size_t)(n) * 2 + 16)

/* One row: a SIMD max pass (NaN/+inf flagged), a branch-free gather of the candidates u = z - max with
   u > -1/(alpha-1), the threshold on them, the normalizing sum over them (the support is among them),
   and one SIMD write pass. */
#define DEFINE_ROW(NAME, T)                                                                    \
    static int NAME(const T *z, T *p, int64_t n, const params *P, double *buf) {              \
        /* in the storage type: the max is exact, and fp32 lanes pair with int32 flag lanes */     \
        T tmax = -INFINITY;                                                                    \
        int bad = 0;                                                                           \
        _Pragma("omp simd reduction(max : tmax) reduction(| : bad)")                           \
        for (int64_t i = 0; i < n; ++i) {                                                      \
            const T v = z[i];                                                                  \
            bad |= !(v < (T)INFINITY); /* NaN or +inf */                                       \
            tmax = v > tmax ? v : tmax;                                                        \
        }                                                                                      \
        const double zmax = (double)tmax;                                                      \
        if (bad || zmax == -INFINITY) { /* no distribution: a NaN row, flagged for the caller */ \
            for (int64_t i = 0; i < n; ++i) p[i] = (T)NAN;                                     \
            return bad ? HG_STATUS_NONFINITE_SCORES : HG_STATUS_FULLY_MASKED;                  \
        }                                                                                      \
        const double a = P->a, r = P->r, lo = -P->inv_a;                                       \
        int64_t m = 0;                                                                         \
        if (sizeof(T) == sizeof(float)) {                                                      \
            /* gather in fp32 with a bound rounded down (a superset of u > lo), then shift in     \
               double, where z - max is exact; entries at or below lo are masked later */         \
            float *fz = (float *)(buf + n + 4);                                                \
            const float fb = nextafterf((float)(zmax + lo), -INFINITY);                        \
            const int64_t mf = gather_above_f32((const float *)(const void *)z, n, fb, fz);     \
            for (int64_t i = 0; i < mf; ++i) buf[i] = (double)fz[i] - zmax;                    \
            m = mf;                                                                            \
        } else {                                                                               \
            for (int64_t i = 0; i < n; ++i) {                                                  \
                const double u = (double)z[i] - zmax;                                          \
                buf[m] = u;                                                                    \
                m += u > lo;                                                                   \
            }                                                                                  \
        }                                                                                      \
        int status = 0;                                                                        \
        pad4(buf, m);                                                                          \
        const double tau = P->kind == HG_KIND_ENTMAX15 ? threshold15(buf, &m, P, &status)                     \
                                        : threshold(buf, &m, P, &status);                      \
        double sum = 0;                                                                        \
        if (HG_POW_KIND(P->kind)) {                                                           \
            for (int64_t i = 0; i < m; ++i) {                                                  \
                const double y = buf[i] - tau;                                                 \
                if (y > 0) sum += pow(a * y, r);                                               \
            }                                                                                  \
        } else {                                                                               \
            const int sq = P->kind == HG_KIND_ENTMAX15;                                                       \
            _Pragma("omp simd reduction(+ : sum)")                                             \
            for (int64_t i = 0; i < m; ++i) {                                                  \
                const double y = a * pos(buf[i] - tau);                                          \
                sum += sq ? y * y : y;                                                         \
            }                                                                                  \
        }                                                                                      \
        const double inv_sum = 1.0 / sum;                                                      \
        if (P->kind == HG_KIND_ENTMAX15) {                                                     \
            const double c = a * a * inv_sum;                                                  \
            _Pragma("omp simd")                                                                \
            for (int64_t i = 0; i < n; ++i) {                                                  \
                const double y = pos(((double)z[i] - zmax) - tau);                               \
                p[i] = (T)(c * y * y);                                                         \
            }                                                                                  \
        } else if (P->kind == HG_KIND_SPARSEMAX) {                                             \
            _Pragma("omp simd")                                                                \
            for (int64_t i = 0; i < n; ++i)                                                    \
                p[i] = (T)(pos(((double)z[i] - zmax) - tau) * inv_sum);                          \
        } else {                                                                               \
            for (int64_t i = 0; i < n; ++i) {                                                  \
                const double y = ((double)z[i] - zmax) - tau;                                  \
                p[i] = (T)(y > 0 ? pow(a * y, r) * inv_sum : 0.0);                             \
            }                                                                                  \
        }                                                                                      \
        return status;                                                                         \
    }

DEFINE_ROW(row_f32, float)
DEFINE_ROW(row_f64, double)

/* Returns the OR of the rows' HG_STATUS_* bits: NONFINITE_SCORES (a NaN or +inf entry), FULLY_MASKED (no
   finite entry; such rows are written as NaN), ITER_LIMIT (a row hit MAXIT: its output is only the bracket
   estimate), OUT_OF_MEMORY. kind, hi0: hopfield_gag.ops.threshold.entmax_setup(alpha, n). */
#define DEFINE_ENTRY(NAME, ROW, T)                                                             \
    int64_t NAME(const T *z, T *p, int64_t rows, int64_t n, double alpha, int kind, double hi0,  \
                 int nthreads) {                                                               \
        const params P = make_params(alpha, kind, hi0);                                                \
        int64_t flags = 0;                                                                     \
        /* small inputs run on one thread: waking (and, on a busy machine, waiting for) a second  \
           OpenMP thread costs more than the work. Rows are dealt in small dynamic chunks: on a   \
           shared machine a descheduled thread then stalls the region by one chunk, not by half  \
           of the rows. */                                                                     \
        _Pragma("omp parallel num_threads(nthreads) if(rows * n >= 32768) reduction(| : flags)")\
        {                                                                                      \
            /* every thread must reach the worksharing loop, even one whose malloc failed */  \
            double *buf = (double *)malloc(ROW_SCRATCH(n) * sizeof(double));             \
            if (buf == NULL) flags |= HG_STATUS_OUT_OF_MEMORY;                                                       \
            _Pragma("omp for schedule(dynamic, 64)")                                                \
            for (int64_t row = 0; row < rows; ++row)                                           \
                if (buf != NULL) flags |= ROW(z + row * n, p + row * n, n, &P, buf);           \
            free(buf);                                                                         \
        }                                                                                      \
        return flags;                                                                          \
    }

DEFINE_ENTRY(entmax_rows_f32, row_f32, float)
DEFINE_ENTRY(entmax_rows_f64, row_f64, double)

/* ------------------------------------------------------------------------------------------------------
 * Both maps of a chunk of score rows (hopfield_gag.ops.fused.dual_normalize, the chunked path): the softmax
 * and the entmax of each row written into one (G, 2, group, n) buffer, so that a single GEMM multiplies
 * them by V.
 * ------------------------------------------------------------------------------------------------------ */

/* e^x for x <= 0 in fp32, branch-free and vectorizable: x = k ln2 + r with |r| <= ln2/2, a degree-7
   Taylor polynomial for e^r (truncation r^8/8! < 6e-9, below fp32 rounding), 2^k through the exponent
   bits. x below -87 (where e^x leaves the normal range) gives 0, as does -inf. */
static inline float exp_nonpos_f32(float x) {
    const float xc = x < -87.0f ? -87.0f : x;
    const float kf = floorf(xc * 1.44269504088896341f + 0.5f);
    const float r = (xc - kf * 0.693145751953125f) - kf * 1.42860682030941723e-6f;
    float p = 1.0f / 5040.0f;
    p = p * r + 1.0f / 720.0f;
    p = p * r + 1.0f / 120.0f;
    p = p * r + 1.0f / 24.0f;
    p = p * r + 1.0f / 6.0f;
    p = p * r + 0.5f;
    p = p * r + 1.0f;
    p = p * r + 1.0f;
    union { int32_t i; float f; } u;
    u.i = ((int32_t)kf + 127) << 23;
    return x < -87.0f ? 0.0f : p * u.f;
}

static inline void softmax_row_f32(const float *z, float *p, int64_t n) {
    float m = -INFINITY;
#pragma omp simd reduction(max : m)
    for (int64_t i = 0; i < n; ++i) m = z[i] > m ? z[i] : m;
    float sum = 0.0f;
#pragma omp simd reduction(+ : sum)
    for (int64_t i = 0; i < n; ++i) {
        const float e = exp_nonpos_f32(z[i] - m);
        p[i] = e;
        sum += e;
    }
    const float inv = 1.0f / sum;
#pragma omp simd
    for (int64_t i = 0; i < n; ++i) p[i] *= inv;
}

static inline void softmax_row_f64(const double *z, double *p, int64_t n) {
    double m = -INFINITY;
    for (int64_t i = 0; i < n; ++i) m = z[i] > m ? z[i] : m;
    double sum = 0.0;
    for (int64_t i = 0; i < n; ++i) {
        const double e = exp(z[i] - m);
        p[i] = e;
        sum += e;
    }
    const double inv = 1.0 / sum;
    for (int64_t i = 0; i < n; ++i) p[i] *= inv;
}

/* rows = G * group score rows of length n (row r = (g, i)); writes softmax row r to
   out[((2g) group + i) n] and entmax row r to out[((2g + 1) group + i) n], i.e. out is (G, 2, group, n).
   Flags as entmax_rows; a row without a distribution is NaN in both maps. */
#define DEFINE_DUAL(NAME, ROW, SOFTMAX, T)                                                     \
    int64_t NAME(const T *z, T *out, int64_t rows, int64_t n, int64_t group, double alpha,     \
                 int kind, double hi0, int nthreads) {                                         \
        const params P = make_params(alpha, kind, hi0);                                                \
        int64_t flags = 0;                                                                     \
        _Pragma("omp parallel num_threads(nthreads) if(rows * n >= 32768) reduction(| : flags)")\
        {                                                                                      \
            double *buf = (double *)malloc(ROW_SCRATCH(n) * sizeof(double));                  \
            if (buf == NULL) flags |= HG_STATUS_OUT_OF_MEMORY;                                                       \
            _Pragma("omp for schedule(dynamic, 64)")                                                \
            for (int64_t row = 0; row < rows; ++row) {                                         \
                if (buf == NULL) continue;                                                     \
                const int64_t g = row / group, i = row % group;                                \
                T *ps = out + ((2 * g) * group + i) * n;                                       \
                T *pe = out + ((2 * g + 1) * group + i) * n;                                   \
                const int st = ROW(z + row * n, pe, n, &P, buf);                               \
                flags |= st;                                                                   \
                if (st & HG_STATUS_NO_DISTRIBUTION) {                                                                  \
                    for (int64_t j = 0; j < n; ++j) ps[j] = (T)NAN;                            \
                } else {                                                                       \
                    SOFTMAX(z + row * n, ps, n);                                               \
                }                                                                              \
            }                                                                                  \
            free(buf);                                                                         \
        }                                                                                      \
        return flags;                                                                          \
    }

DEFINE_DUAL(dual_rows_f32, row_f32, softmax_row_f32, float)
DEFINE_DUAL(dual_rows_f64, row_f64, softmax_row_f64, double)
