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
 */
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
    int kind;   /* 1: alpha = 2, 2: alpha = 1.5, 0: other */
} params;

/* The threshold-search parameters of alpha-entmax on rows of length n. */
static params make_params(double alpha, int64_t n) {
    params P;
    P.alpha = alpha;
    P.a = alpha - 1.0;
    P.r = 1.0 / P.a;
    P.inv_a = 1.0 / P.a;
    P.hi0 = -pow(1.0 / (double)n, P.a) * P.inv_a;
    P.kind = alpha == 2.0 ? 1 : (alpha == 1.5 ? 2 : 0);
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
   (*m_io is updated). Sets *status |= 4 if MAXIT was hit (the bracket estimate is returned). */
static double threshold(double *buf, int64_t *m_io, const params *P, int *status) {
    const double inv_a = P->inv_a, r = P->r, a = P->a;
    int64_t m = *m_io;
    double lo = -inv_a, hi = P->hi0, t = lo, tau = NAN;
    for (int it = 0; it < MAXIT; ++it) {
        double s0 = 0, s1 = 0, s2 = 0, sr = 0, srm1 = 0;
        if (P->kind == 0) {
            for (int64_t i = 0; i < m; ++i) {
                const double y = buf[i] - t;
                if (y > 0) {
                    const double y1 = pow(y, r - 1.0);
                    s0 += 1.0;
                    s1 += y;
                    srm1 += y1;
                    sr += y1 * y;
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
        const double N = P->kind == 1 ? s1 : (P->kind == 2 ? sqrt(s2) : pow(sr, a));
        if (N >= inv_a) {
            lo = t;
            m = compact(buf, m, lo, 0.0);
        } else {
            hi = t;
        }
        const double tol = 4.0 * DBL_EPSILON * (fabs(t) + inv_a);
        double tn;
        if (P->kind == 1) {
            /* Michelot step: the root of the current linear piece (a lower bound); exact iff the
               support it induces is the current one. */
            tn = t + (s1 - 1.0) / s0;
            if ((double)count_above(buf, m, tn) == s0 || tn <= t) { tau = tn; break; }
        } else if (P->kind == 2) {
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
        } else if (r < 1.0) {
            if (hi - lo <= tol) { tau = 0.5 * (lo + hi); break; }
            tn = 0.5 * (lo + hi);
        } else {
            /* Converged when h(t) is zero to rounding or the bracket has collapsed. */
            if (fabs(N - inv_a) <= 8.0 * DBL_EPSILON * inv_a || hi - lo <= tol) { tau = t; break; }
            tn = t + (N - inv_a) * pow(N, r - 1.0) / srm1;
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
        *status |= 4;
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
    if (isnan(tau)) { *status |= 4; tau = t; }
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
            return bad ? 1 : 2;                                                                \
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
        const double tau = P->kind == 2 ? threshold15(buf, &m, P, &status)                     \
                                        : threshold(buf, &m, P, &status);                      \
        double sum = 0;                                                                        \
        if (P->kind == 0) {                                                                    \
            for (int64_t i = 0; i < m; ++i) {                                                  \
                const double y = buf[i] - tau;                                                 \
                if (y > 0) sum += pow(a * y, r);                                               \
            }                                                                                  \
        } else {                                                                               \
            const int sq = P->kind == 2;                                                       \
            _Pragma("omp simd reduction(+ : sum)")                                             \
            for (int64_t i = 0; i < m; ++i) {                                                  \
                const double y = a * pos(buf[i] - tau);                                          \
                sum += sq ? y * y : y;                                                         \
            }                                                                                  \
        }                                                                                      \
        const double inv_sum = 1.0 / sum;                                                      \
        if (P->kind == 2) {                                                                    \
            const double c = a * a * inv_sum;                                                  \
            _Pragma("omp simd")                                                                \
            for (int64_t i = 0; i < n; ++i) {                                                  \
                const double y = pos(((double)z[i] - zmax) - tau);                               \
                p[i] = (T)(c * y * y);                                                         \
            }                                                                                  \
        } else if (P->kind == 1) {                                                             \
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

/* Returns a bit mask over all rows: 1 = a NaN or +inf entry, 2 = a row with no finite entry (fully
   masked; such rows are written as NaN), 4 = a row that hit MAXIT (its output uses the bracket estimate), 8 = out of memory. */
#define DEFINE_ENTRY(NAME, ROW, T)                                                             \
    int64_t NAME(const T *z, T *p, int64_t rows, int64_t n, double alpha, int nthreads) {      \
        const params P = make_params(alpha, n);                                                \
        int64_t flags = 0;                                                                     \
        /* small inputs run on one thread: waking (and, on a busy machine, waiting for) a second  \
           OpenMP thread costs more than the work. Rows are dealt in small dynamic chunks: on a   \
           shared machine a descheduled thread then stalls the region by one chunk, not by half  \
           of the rows. */                                                                     \
        _Pragma("omp parallel num_threads(nthreads) if(rows * n >= 32768) reduction(| : flags)")\
        {                                                                                      \
            /* every thread must reach the worksharing loop, even one whose malloc failed */  \
            double *buf = (double *)malloc(ROW_SCRATCH(n) * sizeof(double));             \
            if (buf == NULL) flags |= 8;                                                       \
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
 * Fused attention pieces (hopfield_gag.ops.fused): both probability maps of a chunk of score rows written
 * into one buffer, so that a single GEMM multiplies them by V, and the per-token combination of the two
 * retrievals. The combination is the kernel-level twin of hopfield_gag.guidance.attention._combine
 * (tests compare the two on every method).
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
                 int nthreads) {                                                               \
        const params P = make_params(alpha, n);                                                \
        int64_t flags = 0;                                                                     \
        _Pragma("omp parallel num_threads(nthreads) if(rows * n >= 32768) reduction(| : flags)")\
        {                                                                                      \
            double *buf = (double *)malloc(ROW_SCRATCH(n) * sizeof(double));                  \
            if (buf == NULL) flags |= 8;                                                       \
            _Pragma("omp for schedule(dynamic, 64)")                                                \
            for (int64_t row = 0; row < rows; ++row) {                                         \
                if (buf == NULL) continue;                                                     \
                const int64_t g = row / group, i = row % group;                                \
                T *ps = out + ((2 * g) * group + i) * n;                                       \
                T *pe = out + ((2 * g + 1) * group + i) * n;                                   \
                const int st = ROW(z + row * n, pe, n, &P, buf);                               \
                flags |= st;                                                                   \
                if (st & 3) {                                                                  \
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

/* The per-token combination (one home in C; the kernel-level twin of hopfield_gag.ops.combine.combine,
   which the tests compare it with on every method): writes o = d + t (o_m - d), o_m the method's output:
   0 sparse s; 1 pladis d + lam (s - d); 2 gag s + lam min(1, eta/|g|) g, g = c s + zeta (Delta - c s),
   Delta = s - d, c = (|s|^2 - <d, s>) / |s|^2, 0 where |s|^2 <= tiny (the storage dtype's smallest normal
   number, the rule of ops/combine.py); 3 gag with the one-sided parallel part max(c, 0) s.
   Accumulation in double. */
#define DEFINE_COMBINE_ONE(NAME, T, TINY)                                                      \
    static inline void NAME(const T *d, const T *s, T *o, int64_t dv, int method, double lam,  \
                            double eta, double zeta, double strength) {                        \
        double wd = 0.0, ws = 1.0; /* o_m = wd d + ws s */                                     \
        if (method == 1) {                                                                     \
            wd = 1.0 - lam; ws = lam;                                                          \
        } else if (method >= 2) {                                                              \
            double ss = 0.0, ds = 0.0;                                                         \
            _Pragma("omp simd reduction(+ : ss, ds)")                                          \
            for (int64_t j = 0; j < dv; ++j) {                                                 \
                ss += (double)s[j] * s[j];                                                     \
                ds += (double)d[j] * s[j];                                                     \
            }                                                                                  \
            const double c = ss > (TINY) ? (ss - ds) / ss : 0.0;                               \
            const double ca = method == 3 && c < 0.0 ? 0.0 : c; /* 3: the one-sided rule */     \
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
        _Pragma("omp simd")                                                                    \
        for (int64_t j = 0; j < dv; ++j) o[j] = (T)(fd * d[j] + fs * s[j]);                    \
    }

DEFINE_COMBINE_ONE(combine_one_f32, float, FLT_MIN)
DEFINE_COMBINE_ONE(combine_one_f64, double, DBL_MIN)

/* R is (G, 2, group, dv): d = R[g, 0, i], s = R[g, 1, i]; o for token (g, i) goes to
   out + g * out_gstride + i * dv. */
#define DEFINE_COMBINE(NAME, ONE, T)                                                           \
    void NAME(const T *R, T *out, int64_t G, int64_t group, int64_t dv, int64_t out_gstride,   \
              int method, double lam, double eta, double zeta, double strength, int nthreads) {\
        const int64_t rows = G * group;                                                        \
        _Pragma("omp parallel for num_threads(nthreads) schedule(dynamic, 256) if(rows * dv >= 65536)")\
        for (int64_t row = 0; row < rows; ++row) {                                             \
            const int64_t g = row / group, i = row % group;                                    \
            ONE(R + ((2 * g) * group + i) * dv, R + ((2 * g + 1) * group + i) * dv,            \
                out + g * out_gstride + i * dv, dv, method, lam, eta, zeta, strength);         \
        }                                                                                      \
    }

DEFINE_COMBINE(combine_rows_f32, combine_one_f32, float)
DEFINE_COMBINE(combine_rows_f64, combine_one_f64, double)

/* ------------------------------------------------------------------------------------------------------
 * The fused guided-attention forward, fp32 (hopfield_gag.ops.fused.attention_forward): per block of RB
 * queries of one (batch, head) g, everything stays in the thread's cache:
 *   S = (beta Q_blk) K^T (+ mask)                 register-tiled 6x16 micro-kernel, K packed in panels
 *   per row: entmax row -> its support (values, indices) -> s = sum_support p_j V_j    (sparse gather)
 *            softmax in place of the score row
 *   D = P_softmax V                               the same micro-kernel
 *   per row: o = combine(d, s), written to the output.
 * Cost: two dense GEMMs of attention's shape plus a gather over the entmax support (a few percent of Lk
 * on peaked rows), against SDPA's two; the normalizations run on rows already in L1.
 * ------------------------------------------------------------------------------------------------------ */

typedef float v8f __attribute__((vector_size(32), aligned(4))); /* unaligned loads/stores */
#define V8LD(p) (*(const v8f *)(p))
#define V8ST(p, x) (*(v8f *)(p) = (x))
#define FUSED_MR 6
#define FUSED_NR 16

/* C[0..6)[0..16) (row stride ldc) = A[0..6)[0..K) (row stride lda) times B[0..K)[0..16) (row stride ldb). */
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

/* The nonzero entries of p[0..n) as (values, indices), in order; returns their count. val/idx hold n + 8. */
#if defined(__AVX2__)
static inline int64_t support_f32(const float *p, int64_t n, float *val, int32_t *idx) {
    int64_t m = 0, i = 0;
    const __m256 zero = _mm256_setzero_ps();
    const __m256i step = _mm256_setr_epi32(0, 1, 2, 3, 4, 5, 6, 7);
    for (; i + 8 <= n; i += 8) {
        const __m256 x = _mm256_loadu_ps(p + i);
        const int mask = _mm256_movemask_ps(_mm256_cmp_ps(x, zero, _CMP_GT_OQ));
        if (!mask) continue;
        const __m256i perm = _mm256_cvtepu8_epi32(_mm_cvtsi64_si128((long long)g_perm[mask]));
        _mm256_storeu_ps(val + m, _mm256_permutevar8x32_ps(x, perm));
        const __m256i ix = _mm256_add_epi32(_mm256_set1_epi32((int)i), step);
        _mm256_storeu_si256((__m256i *)(idx + m), _mm256_permutevar8x32_epi32(ix, perm));
        m += __builtin_popcount(mask);
    }
    for (; i < n; ++i) {
        val[m] = p[i];
        idx[m] = (int32_t)i;
        m += p[i] > 0;
    }
    return m;
}
#else
static inline int64_t support_f32(const float *p, int64_t n, float *val, int32_t *idx) {
    int64_t m = 0;
    for (int64_t i = 0; i < n; ++i) {
        val[m] = p[i];
        idx[m] = (int32_t)i;
        m += p[i] > 0;
    }
    return m;
}
#endif

/* o[0..dvp) = sum_t val[t] V[idx[t]][0..dvp) (V row stride ldv; dvp a multiple of 16). */
static inline void gather_rows_f32(const float *val, const int32_t *idx, int64_t nnz, const float *V,
                                   int64_t ldv, int64_t dvp, float *o) {
    int64_t c = 0;
    for (; c + 32 <= dvp; c += 32) {
        v8f a0 = {0}, a1 = {0}, a2 = {0}, a3 = {0};
        for (int64_t t = 0; t < nnz; ++t) {
            const float w = val[t];
            const float *r = V + (int64_t)idx[t] * ldv + c;
            a0 += w * V8LD(r); a1 += w * V8LD(r + 8); a2 += w * V8LD(r + 16); a3 += w * V8LD(r + 24);
        }
        V8ST(o + c, a0); V8ST(o + c + 8, a1); V8ST(o + c + 16, a2); V8ST(o + c + 24, a3);
    }
    if (c < dvp) {
        v8f a0 = {0}, a1 = {0};
        for (int64_t t = 0; t < nnz; ++t) {
            const float w = val[t];
            const float *r = V + (int64_t)idx[t] * ldv + c;
            a0 += w * V8LD(r); a1 += w * V8LD(r + 8);
        }
        V8ST(o + c, a0); V8ST(o + c + 8, a1);
    }
}

static inline int64_t round_up(int64_t x, int64_t m) { return (x + m - 1) / m * m; }

/* q (G, Lq, D), k (G, Lk, D), v (G, Lk, Dv) contiguous; out (G, Lq, Dv) contiguous. mask: NULL, or an
   additive fp32 mask whose row i of group g starts at mask + moff[g] + i * msi (unit column stride).
   method: 0 sparse, 1 pladis, 2 gag, 3 gag one-sided (combine_one), 4 aa (aa_scale_f32 with [aa_lo, aa_hi],
   which needs the key-space retrievals: the dense one by the micro-kernel against K, the sparse one by
   the same support gather). Flags as entmax_rows (rows without a distribution are
   NaN in the output; bit 4: a row hit the iteration limit, the caller must recompute), and bit 16: k or v
   holds a NaN or an infinity. */
/* AA(1)'s per-token scale (ops/combine.aa_token_scale): f_prev = kd - q, f_curr = ks - q (the key-space
   residuals of the dense and sparse retrievals of the query q), gamma = <f_curr, f_curr - f_prev> /
   |f_curr - f_prev|^2, 0 for a pair at rounding level (|diff|^2 <= (64 eps)^2 (|f_prev|^2 + |f_curr|^2) or
   not a normal number; eps, tiny of fp32, the compute dtype); lam = clamp(1 - gamma, lo, hi). */
static inline double aa_scale_f32(const float *q, const float *kd, const float *ks, int64_t d, double lo,
                                  double hi) {
    double dd = 0, fd = 0, pp = 0, cc = 0;
    _Pragma("omp simd reduction(+ : dd, fd, pp, cc)")
    for (int64_t j = 0; j < d; ++j) {
        const double fp = (double)kd[j] - q[j], fc = (double)ks[j] - q[j], df = fc - fp;
        dd += df * df;
        fd += fc * df;
        pp += fp * fp;
        cc += fc * fc;
    }
    const double floor = (64.0 * FLT_EPSILON) * (64.0 * FLT_EPSILON) * (pp + cc);
    const double gamma = (dd <= floor || dd <= FLT_MIN) ? 0.0 : fd / dd;
    const double l = 1.0 - gamma;
    return l < lo ? lo : (l > hi ? hi : l);
}

int64_t gag_forward_f32(const float *q, const float *k, const float *v, const float *mask, const int64_t *moff,
                        int64_t msi, float *out, int64_t G, int64_t Lq, int64_t Lk, int64_t D, int64_t Dv,
                        double beta, double alpha, int method, double lam, double eta, double zeta,
                        double strength, double aa_lo, double aa_hi, int nthreads) {
    const params P = make_params(alpha, Lk);
    const int64_t LkP = round_up(Lk, FUSED_NR), DvP = round_up(Dv, FUSED_NR), npan = LkP / FUSED_NR;
    /* rows per block: the block's scores (RB x LkP floats) within ~64 KiB */
    int64_t RB = (16384 / LkP) / FUSED_MR * FUSED_MR;
    RB = RB < FUSED_MR ? FUSED_MR : (RB > 48 ? 48 : RB);
    const int64_t nblk = (Lq + RB - 1) / RB, tasks = G * nblk;
    const int par = (double)G * Lq * Lk * (D + Dv) >= 2e6;
    /* K in panels of 16 keys, Kp[g][panel][d][16], zero-padded; V zero-padded to DvP columns if needed */
    /* (+ 16: malloc(0) may return NULL, and D = 0 is a valid, if degenerate, call) */
    float *Kp = (float *)malloc(((size_t)G * npan * D * FUSED_NR + 16) * sizeof(float));
    float *Vp = Dv == DvP ? NULL : (float *)malloc((size_t)G * Lk * DvP * sizeof(float));
    if (Kp == NULL || (Dv != DvP && Vp == NULL)) { free(Kp); free(Vp); return 8; }
    /* the packing pass also checks k and v for NaN/inf (x - x is 0 exactly for finite x): with the
       score flags this makes the caller's value checks free of any extra pass over the inputs */
    int kv_bad = 0;
    _Pragma("omp parallel for num_threads(nthreads) schedule(static) if(par) reduction(| : kv_bad)")
    for (int64_t gp = 0; gp < G * npan; ++gp) {
        const int64_t g = gp / npan, j0 = (gp % npan) * FUSED_NR;
        float *dst = Kp + gp * D * FUSED_NR;
        for (int64_t jj = 0; jj < FUSED_NR; ++jj) {
            const int64_t j = j0 + jj;
            const float *src = k + (g * Lk + j) * D;
            if (j < Lk) {
                for (int64_t d = 0; d < D; ++d) {
                    dst[d * FUSED_NR + jj] = src[d];
                    kv_bad |= !(src[d] - src[d] == 0.0f);
                }
            } else {
                for (int64_t d = 0; d < D; ++d) dst[d * FUSED_NR + jj] = 0.0f;
            }
        }
        if (gp % npan == 0) {
            const float *vs = v + g * Lk * Dv;
            int bad = 0;
            _Pragma("omp simd reduction(| : bad)")
            for (int64_t i = 0; i < Lk * Dv; ++i) bad |= !(vs[i] - vs[i] == 0.0f);
            kv_bad |= bad;
            if (Vp != NULL) {
                for (int64_t j = 0; j < Lk; ++j)
                    for (int64_t c = 0; c < DvP; ++c) Vp[(g * Lk + j) * DvP + c] = c < Dv ? vs[j * Dv + c] : 0.0f;
            }
        }
    }
    const float *Vall = Vp != NULL ? Vp : v;
    /* aa: K as a second value matrix, rows padded to DP columns */
    const int aa = method == 4;
    const int64_t DP = round_up(D, FUSED_NR);
    float *Kr = NULL;
    if (aa && D != DP) {
        Kr = (float *)malloc((size_t)G * Lk * DP * sizeof(float));
        if (Kr == NULL) { free(Kp); free(Vp); return 8; }
        for (int64_t r = 0; r < G * Lk; ++r)
            for (int64_t c = 0; c < DP; ++c) Kr[r * DP + c] = c < D ? k[r * D + c] : 0.0f;
    }
    const float *Kall = Kr != NULL ? Kr : k;
    int64_t flags = 0;
    _Pragma("omp parallel num_threads(nthreads) if(par) reduction(| : flags)")
    {
        float *Qb = (float *)malloc(sizeof(float) * (RB * D + RB * LkP + 2 * RB * DvP + 3 * (LkP + 8) +
                                                     (aa ? 2 * RB * DP : 0)));
        double *buf = (double *)malloc(ROW_SCRATCH(Lk) * sizeof(double));
        int32_t *idx = (int32_t *)malloc(sizeof(int32_t) * (LkP + 8));
        if (Qb == NULL || buf == NULL || idx == NULL) flags |= 8;
        float *S = Qb + RB * D, *Od = S + RB * LkP, *Os = Od + RB * DvP, *prow = Os + RB * DvP,
              *val = prow + LkP + 8, *Okd = val + LkP + 8, *Oks = Okd + RB * DP;
        _Pragma("omp for schedule(dynamic, 1)")
        for (int64_t task = 0; task < tasks; ++task) {
            if (flags & 8) continue;
            const int64_t g = task / nblk, i0 = (task % nblk) * RB;
            const int64_t rows = Lq - i0 < RB ? Lq - i0 : RB, rows6 = round_up(rows, FUSED_MR);
            const float fb = (float)beta;
            for (int64_t i = 0; i < rows6; ++i) {
                float *qd = Qb + i * D;
                if (i < rows) {
                    const float *qs = q + (g * Lq + i0 + i) * D;
                    for (int64_t d = 0; d < D; ++d) qd[d] = fb * qs[d];
                } else {
                    for (int64_t d = 0; d < D; ++d) qd[d] = 0.0f;
                }
            }
            const float *Kg = Kp + g * npan * D * FUSED_NR;
            for (int64_t i = 0; i < rows6; i += FUSED_MR)
                for (int64_t p = 0; p < npan; ++p)
                    mk_6x16(Qb + i * D, D, Kg + p * D * FUSED_NR, FUSED_NR, D, S + i * LkP + p * FUSED_NR, LkP);
            const float *Vg = Vall + g * Lk * DvP;
            unsigned char bad[48];
            for (int64_t i = 0; i < rows; ++i) {
                float *z = S + i * LkP;
                if (mask != NULL) {
                    const float *mr = mask + moff[g] + (i0 + i) * msi;
                    _Pragma("omp simd")
                    for (int64_t j = 0; j < Lk; ++j) z[j] += mr[j];
                }
                const int st = row_f32(z, prow, Lk, &P, buf);
                flags |= st;
                bad[i] = (st & 3) != 0;
                if (bad[i]) continue;
                const int64_t nnz = support_f32(prow, Lk, val, idx);
                gather_rows_f32(val, idx, nnz, Vg, DvP, DvP, Os + i * DvP);
                if (aa) gather_rows_f32(val, idx, nnz, Kall + g * Lk * DP, DP, DP, Oks + i * DP);
                softmax_row_f32(z, z, Lk);
            }
            for (int64_t i = 0; i < rows6; ++i) {
                float *z = S + i * LkP;
                if (i >= rows || bad[i]) for (int64_t j = 0; j < Lk; ++j) z[j] = 0.0f;
            }
            for (int64_t i = 0; i < rows6; i += FUSED_MR)
                for (int64_t c = 0; c < DvP; c += FUSED_NR)
                    mk_6x16(S + i * LkP, LkP, Vg + c, DvP, Lk, Od + i * DvP + c, DvP);
            if (aa)
                for (int64_t i = 0; i < rows6; i += FUSED_MR)
                    for (int64_t c = 0; c < DP; c += FUSED_NR)
                        mk_6x16(S + i * LkP, LkP, Kall + g * Lk * DP + c, DP, Lk, Okd + i * DP + c, DP);
            for (int64_t i = 0; i < rows; ++i) {
                float *o = out + (g * Lq + i0 + i) * Dv;
                if (bad[i]) {
                    for (int64_t c = 0; c < Dv; ++c) o[c] = NAN;
                } else if (aa) {
                    const double l = aa_scale_f32(q + (g * Lq + i0 + i) * D, Okd + i * DP, Oks + i * DP, D,
                                                  aa_lo, aa_hi);
                    combine_one_f32(Od + i * DvP, Os + i * DvP, o, Dv, 1, l, eta, zeta, strength);
                } else {
                    combine_one_f32(Od + i * DvP, Os + i * DvP, o, Dv, method, lam, eta, zeta, strength);
                }
            }
        }
        free(Qb);
        free(buf);
        free(idx);
    }
    free(Kp);
    free(Vp);
    free(Kr);
    return flags | (kv_bad ? 16 : 0);
}
