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
 * candidates are gathered once (and, for alpha = 1.5, once more above the first Newton step); the
 * iterations touch a few percent of a long row. Rows are normalized in sets of HG_LANES: for alpha = 1.5
 * the set's searches run in the lanes of one vector (see "Row sets" below), which overlaps the latency of
 * each row's chain of square roots and divisions. Loops are branch-free SIMD reductions; accumulation is
 * in double whatever the storage type.
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
#include <string.h>

/* Scratch aligned to a cache line (64 bytes): the kernels' 16-lane loads of packed K, V and score rows would
   otherwise straddle two lines each (malloc aligns to 16). NULL if the memory is not there; free() frees it. */
static void *hg_alloc(size_t bytes) {
    void *p = NULL;
    return posix_memalign(&p, 64, (bytes + 63) & ~(size_t)63) == 0 ? p : NULL;
}

/* The schedule of every parallel loop here: chunks [0, n) dealt for locality first, balance second. Thread t of
   a team of T owns the contiguous range [t n / T, (t + 1) n / T) -- the rows a static split (torch's) gives it,
   so data that an earlier statically split op left in this core's caches is read here -- and claims its own
   chunks front to back; when they are gone it takes what is left of the other ranges, chunk by chunk (one
   relaxed atomic add per chunk: a thread the OS deschedules delays the loop by at most one chunk). A shared
   counter (schedule(dynamic)) dealt chunks to the two threads alternately, so after an op that split the rows
   statically each thread found half of its rows in the other core's caches. Measured, entmax op at
   (2,8,1024,77), 2 threads, both builds alternating in one process: 0.90-0.94x the time when each call follows
   entmax.entmax15 and torch.softmax, 0.95-0.98x back to back; in the fused forward a thread also repacks K and
   V only when its own share crosses into another group. */
typedef struct { int64_t next, end; char pad[48]; } hg_range; /* one cache line each */
#ifdef _OPENMP
#include <omp.h>
#endif
/* Before the parallel region: the ranges of n chunks for a team of at most *nthreads threads (*nthreads < 1
   counts as 1), or NULL if the memory is not there; free() frees them. Set up here, by the calling thread, so
   that no thread waits for the others at the region's start: a thread that wakes late (on a shared machine,
   or after the pool went to sleep) finds its range partly taken rather than holding the others at a barrier.
   A range whose thread the runtime did not start (a smaller team) is taken by the others. */
static hg_range *hg_ranges_new(int *nthreads, int64_t n) {
    if (*nthreads < 1) *nthreads = 1;
    const int T = *nthreads;
    hg_range *R = (hg_range *)hg_alloc((size_t)T * sizeof(hg_range));
    if (R != NULL)
        for (int t = 0; t < T; ++t) {
            R[t].next = n * t / T;
            R[t].end = n * (t + 1) / T;
        }
    return R;
}
/* Inside the parallel region: this thread's number (its own range of R, or none past the T ranges). */
static inline int hg_thread_num(void) {
#ifdef _OPENMP
    return omp_get_thread_num();
#else
    return 0;
#endif
}
/* The next chunk for thread t of the T ranges (its own range first, then the others' in turn from t + 1), or
   -1: the loop is done. *turn (0 at the start) is where the thread is in that order. */
static inline int64_t hg_claim(hg_range *R, int t, int T, int *turn) {
    for (; *turn < T; ++*turn) {
        hg_range *r = &R[(t + *turn) % T];
        if (__atomic_load_n(&r->next, __ATOMIC_RELAXED) >= r->end) continue; /* exhausted: no more adds */
        const int64_t c = __atomic_fetch_add(&r->next, 1, __ATOMIC_RELAXED);
        if (c < r->end) return c;
    }
    return -1;
}

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

/* Threshold for the candidates buf[0..m) (shifted so the row max is 0; m >= 1: the max is one). Compacts buf in
   place (*m_io is updated). Sets HG_STATUS_ITER_LIMIT in *status if MAXIT was hit (the bracket estimate is
   returned). The bracket's upper end is that of m entries, not of the row's n: the support S is among the
   candidates and 1 = sum_S (a (u_i - tau))^(1/a) <= |S| (-a tau)^(1/a) gives tau <= -m^(-a) / a. So the search,
   and its rounding, depends only on the candidates: a row with masked (-inf) or far-below entries gives the
   same bits as the row without them. */
static double threshold(double *buf, int64_t *m_io, const params *P, int *status) {
    const double inv_a = P->inv_a, r = P->r, a = P->a;
    int64_t m = *m_io;
    double lo = -inv_a, hi = -pow((double)m, -a) * inv_a, t = lo, tau = NAN; /* m <= n: at or below P->hi0 */
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


/* The candidate gather: the entries z_i > bound of a row, in order, into out, their column indices into idx
   (both with room for n + 16 entries); returns their count. fp32 with AVX2: 8 entries per step, compacted by
   a permutation from a 256-entry table (a scalar store-and-advance loop costs ~4 cycles per entry, half of a
   short row's time). */
#if defined(__AVX2__)
#include <immintrin.h>
#if defined(__AVX512F__)
/* The mask of a row's chunk of 8 (16) lanes with left >= 1 entries still to go: the first min(left, 8) lanes
   (a loop's last, partial chunk: the choice is predicted well; computing the mask branch-free instead, as
   tail8_any does, made the entmax op 1.08-1.22x slower where these run per chunk of every row). */
static inline __mmask8 tail8(int64_t left) { return left >= 8 ? (__mmask8)0xFF : (__mmask8)((1u << left) - 1u); }
static inline __mmask16 tail16(int64_t left) { return left >= 16 ? (__mmask16)0xFFFF : (__mmask16)((1u << left) - 1u); }
/* The same for any left (none for left <= 0), without branches: for lengths that are data (candidate counts),
   where a mispredicted choice of mask cost about as much as the chunk's work. */
static inline __mmask8 tail8_any(int64_t left) { return (__mmask8)(0xFFu >> (8 - (left < 0 ? 0 : left > 8 ? 8 : left))); }
#endif
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
static inline int64_t gather_above_f32(const float *z, int64_t n, float bound, float *out, int32_t *idx) {
#if defined(__AVX512F__)
    /* 16 entries a step, kept by a compress in registers (full-width stores: out and idx have n + 16 room) */
    const __m512 vb16 = _mm512_set1_ps(bound);
    const __m512i step16 = _mm512_setr_epi32(0, 1, 2, 3, 4, 5, 6, 7, 8, 9, 10, 11, 12, 13, 14, 15);
    int64_t m16 = 0;
    for (int64_t i = 0; i < n; i += 16) {
        const __mmask16 k = tail16(n - i);
        const __m512 x = _mm512_maskz_loadu_ps(k, z + i);
        const __mmask16 keep = _mm512_mask_cmp_ps_mask(k, x, vb16, _CMP_GT_OQ);
        _mm512_storeu_ps(out + m16, _mm512_maskz_compress_ps(keep, x));
        _mm512_storeu_si512((void *)(idx + m16),
                            _mm512_maskz_compress_epi32(keep, _mm512_add_epi32(_mm512_set1_epi32((int)i), step16)));
        m16 += __builtin_popcount(keep);
    }
    return m16;
#endif
    const __m256 vb = _mm256_set1_ps(bound);
    const __m256i step = _mm256_setr_epi32(0, 1, 2, 3, 4, 5, 6, 7);
    int64_t m = 0, i = 0;
    for (; i + 8 <= n; i += 8) {
        const __m256 x = _mm256_loadu_ps(z + i);
        const int mask = _mm256_movemask_ps(_mm256_cmp_ps(x, vb, _CMP_GT_OQ));
        const __m256i perm = _mm256_cvtepu8_epi32(_mm_cvtsi64_si128((long long)g_perm[mask]));
        _mm256_storeu_ps(out + m, _mm256_permutevar8x32_ps(x, perm));
        const __m256i ix = _mm256_add_epi32(_mm256_set1_epi32((int)i), step);
        _mm256_storeu_si256((__m256i *)(void *)(idx + m), _mm256_permutevar8x32_epi32(ix, perm));
        m += __builtin_popcount(mask);
    }
    for (; i < n; ++i) {
        out[m] = z[i];
        idx[m] = (int32_t)i;
        m += z[i] > bound;
    }
    return m;
}
#else
static inline int64_t gather_above_f32(const float *z, int64_t n, float bound, float *out, int32_t *idx) {
    int64_t m = 0;
    for (int64_t i = 0; i < n; ++i) {
        out[m] = z[i];
        idx[m] = (int32_t)i;
        m += z[i] > bound;
    }
    return m;
}
#endif

/* ------------------------------------------------------------------------------------------------------
 * Row sets: up to HG_LANES rows normalized together. Each row's candidates u = z - max z (those above
 * -1/(alpha-1)) are stored interleaved, u[i * HG_LANES + r] (-inf past the row's count), so that the
 * alpha = 1.5 threshold search runs the rows in the lanes of one vector: the search is a chain of
 * dependent square roots and divisions (~100 cycles an iteration for one row), which the lanes overlap.
 * Each lane's sums run over its candidates in order, so a row's result does not depend on the rows
 * beside it (nor on the thread or the block it falls in).
 * ------------------------------------------------------------------------------------------------------ */
#define HG_LANES 8
typedef double lanes_d __attribute__((vector_size(HG_LANES * sizeof(double)), aligned(8)));
typedef int64_t lanes_l __attribute__((vector_size(HG_LANES * sizeof(int64_t)), aligned(8)));
typedef float lanes_f __attribute__((vector_size(HG_LANES * sizeof(float)), aligned(4)));

typedef struct {
    int nrows;                 /* rows in the set, <= HG_LANES (the other lanes are empty) */
    int64_t n, mmax;           /* row length; the longest candidate list */
    int64_t st;                /* row stride of the per-row arrays: n + 16 rounded up to 16 (64-byte rows) */
    int64_t m[HG_LANES];       /* candidates per row in the interleaved layout */
    int64_t mg[HG_LANES];      /* fp32 rows: candidates per row in the contiguous gather (m <= mg) */
    int unshifted;             /* fp32 rows: bit r = row r's gather (gv) awaits its shift into cu (rowset_solve) */
    double s1[HG_LANES], s2[HG_LANES], cnt[HG_LANES]; /* alpha = 1.5: the statistics at lo (rowset_add) */
    double t0[HG_LANES], tc0[HG_LANES], s00[HG_LANES]; /* alpha = 1.5: the search's state after its first step */
    int done0[HG_LANES];       /* alpha = 1.5: the first step found the threshold (in tau) */
    int status[HG_LANES];      /* HG_STATUS_* of each row (NO_DISTRIBUTION: the row has no output) */
    double zmax[HG_LANES], tau[HG_LANES], inv_sum[HG_LANES];
    double *u;                 /* candidates, shifted, interleaved; -inf pads */
    float *gv;                 /* fp32 rows: each row's gathered candidates in fp32 (row r at r st) */
    int32_t *gi;               /* each row's candidate columns (row r at r st), in the order of cu */
    double *cu;                /* each row's candidates u, contiguous (row r at r st) */
    double *row;               /* one row's candidates, contiguous, for the per-row searches (st) */
} rowset;

/* Scratch (doubles) of a row set of rows of length n (from hg_alloc: 64-byte aligned): u, gv, gi, cu, row. */
#define SET_STRIDE(n) (((int64_t)(n) + 16 + 15) & ~(int64_t)15)
#define SET_SCRATCH(n) ((size_t)SET_STRIDE(n) * (HG_LANES * 3 + 1) + 16)

static inline void rowset_init(rowset *S, double *scratch, int64_t n) {
    const int64_t st = SET_STRIDE(n); /* a multiple of 16: every row of every array starts on a cache line */
    S->n = n;
    S->st = st;
    S->nrows = 0;
    S->unshifted = 0;
    S->u = scratch;
    S->gv = (float *)(void *)(S->u + HG_LANES * st);
    S->gi = (int32_t *)(void *)(S->gv + HG_LANES * st);
    S->cu = (double *)(void *)(S->gi + HG_LANES * st);
    S->row = S->cu + HG_LANES * st;
}

/* The statistics of alpha = 1.5's first step (sum and sum of squares of (u - lo)_+ and the count above
   lo = -1/a) over a row's candidates u[0..m). */
static inline void stats_at_lo(const double *u, int64_t m, double lo, double *s1o, double *s2o, double *cnto) {
    double s1 = 0, s2 = 0, j = 0;
#pragma omp simd reduction(+ : s1, s2, j)
    for (int64_t i = 0; i < m; ++i) {
        const double y = u[i] - lo;
        const double yk = y > 0 ? y : 0.0;
        s1 += yk;
        s2 += yk * yk;
        j += y > 0 ? 1.0 : 0.0;
    }
    *s1o = s1; *s2o = s2; *cnto = j;
}

/* A row's max (in the storage type: exact) and whether some entry is NaN or +inf; fp32 with AVX-512 16 lanes
   a step, the tail masked. */
#define DEFINE_MAX_FLAG(NAME, T)                                                               \
    static inline T NAME(const T *z, int64_t n, int *bad_out) {                                \
        T tmax = -INFINITY;                                                                    \
        int bad = 0;                                                                           \
        _Pragma("omp simd reduction(max : tmax) reduction(| : bad)")                           \
        for (int64_t i = 0; i < n; ++i) {                                                      \
            const T v = z[i];                                                                  \
            bad |= !(v < (T)INFINITY);                                                         \
            tmax = v > tmax ? v : tmax;                                                        \
        }                                                                                      \
        *bad_out = bad;                                                                        \
        return tmax;                                                                           \
    }
DEFINE_MAX_FLAG(max_flag_generic_f32, float)
DEFINE_MAX_FLAG(max_flag_f64, double)
static inline float max_flag_f32(const float *z, int64_t n, int *bad_out) {
#if defined(__AVX512F__)
    __m512 mx = _mm512_set1_ps(-INFINITY);
    __mmask16 bad = 0;
    for (int64_t i = 0; i < n; i += 16) {
        const __mmask16 k = tail16(n - i);
        const __m512 v = _mm512_maskz_loadu_ps(k, z + i);
        bad |= _mm512_mask_cmp_ps_mask(k, v, _mm512_set1_ps(INFINITY), _CMP_NLT_UQ); /* NaN or +inf */
        mx = _mm512_mask_max_ps(mx, k, mx, v);
    }
    *bad_out = bad != 0;
    return _mm512_reduce_max_ps(mx);
#else
    return max_flag_generic_f32(z, n, bad_out);
#endif
}

/* u[0..m) = gv - zmax in double (exact), and with stats the statistics of stats_at_lo on them, in the
   same pass where the target has AVX-512. */
static inline void shift_f32(const float *gv, int64_t m, double zmax, double *u, int stats, double lo, double *s1,
                             double *s2, double *cnt) {
#if defined(__AVX512F__)
    const __m512d vz = _mm512_set1_pd(zmax), vlo = _mm512_set1_pd(lo), zero = _mm512_setzero_pd();
    __m512d a1 = zero, a2 = zero, aj = zero;
    for (int64_t i = 0; i < m; i += 8) {
        const __mmask8 k = tail8(m - i);
        const __m512d x = _mm512_sub_pd(_mm512_cvtps_pd(_mm256_maskz_loadu_ps(k, gv + i)), vz);
        _mm512_mask_storeu_pd(u + i, k, x);
        const __m512d y = _mm512_sub_pd(x, vlo);
        const __mmask8 gt = _mm512_mask_cmp_pd_mask(k, y, zero, _CMP_GT_OQ);
        const __m512d yk = _mm512_maskz_mov_pd(gt, y);
        a1 = _mm512_add_pd(a1, yk);
        a2 = _mm512_fmadd_pd(yk, yk, a2);
        aj = _mm512_mask_add_pd(aj, gt, aj, _mm512_set1_pd(1.0));
    }
    if (stats) { *s1 = _mm512_reduce_add_pd(a1); *s2 = _mm512_reduce_add_pd(a2); *cnt = _mm512_reduce_add_pd(aj); }
#else
#pragma omp simd
    for (int64_t i = 0; i < m; ++i) u[i] = (double)gv[i] - zmax;
    if (stats) stats_at_lo(u, m, lo, s1, s2, cnt);
#endif
}

/* nextafterf(x, -inf) for finite x without the libm call (one per row: 1.5% of the kernel's time) */
static inline float next_below_f32(float x) {
    if (x == 0.0f) return -FLT_TRUE_MIN;
    uint32_t bits;
    memcpy(&bits, &x, sizeof bits);
    bits += x > 0.0f ? (uint32_t)-1 : 1u; /* the magnitude's bits: down for positive x, up for negative */
    memcpy(&x, &bits, sizeof x);
    return x;
}

/* Add row r of the set: a SIMD max pass (NaN/+inf flagged), then the branch-free gather of the candidates
   u = z - max z > lo = -1/(alpha-1), kept contiguous (cu, gi) until rowset_solve places them. fp32 rows
   gather in fp32 with a bound strictly below the max and rounded down (a superset of u > lo); rowset_solve
   shifts them to double, where z - max is exact; entries at or below lo are masked by every later pass.
   alpha = 1.5: the shift also takes the statistics of the search's first step (fp64 rows: here). */
#define DEFINE_SET_ADD(NAME, T, MAXFLAG)                                                        \
    static void NAME(rowset *S, int r, const T *z, const params *P) {                          \
        const int64_t n = S->n;                                                                \
        int bad;                                                                               \
        const double zmax = (double)MAXFLAG(z, n, &bad), lo = -P->inv_a; /* exact in T */      \
        S->zmax[r] = zmax;                                                                     \
        S->m[r] = S->mg[r] = 0;                                                                \
        if (bad || zmax == -INFINITY) { /* no distribution */                                  \
            S->status[r] = bad ? HG_STATUS_NONFINITE_SCORES : HG_STATUS_FULLY_MASKED;          \
            return;                                                                            \
        }                                                                                      \
        S->status[r] = 0;                                                                      \
        int32_t *gi = S->gi + r * S->st;                                                    \
        double *u = S->cu + r * S->st;                                                      \
        int64_t m = 0;                                                                         \
        if (sizeof(T) == sizeof(float)) {                                                      \
            float *gv = S->gv + r * S->st;                                                   \
            float fb = (float)(zmax + lo);                                                     \
            if ((double)fb >= zmax + lo) fb = next_below_f32(fb); /* strictly below */           \
            m = gather_above_f32((const float *)(const void *)z, n, fb, gv, gi);               \
            S->mg[r] = S->m[r] = m;                                                            \
            S->unshifted |= 1 << r; /* shifted by rowset_solve, when these stores have retired */ \
            return;                                                                            \
        } else {                                                                               \
            for (int64_t i = 0; i < n; ++i) {                                                  \
                const double v = (double)z[i] - zmax;                                          \
                u[m] = v;                                                                      \
                gi[m] = (int32_t)i;                                                            \
                m += v > lo;                                                                   \
            }                                                                                  \
        }                                                                                      \
        S->mg[r] = S->m[r] = m;                                                                \
        if (P->kind == HG_KIND_ENTMAX15) stats_at_lo(u, m, lo, &S->s1[r], &S->s2[r], &S->cnt[r]);  \
    }
DEFINE_SET_ADD(rowset_add_f32, float, max_flag_f32)
DEFINE_SET_ADD(rowset_add_f64, double, max_flag_f64)

static inline lanes_d lanes_load(const double *p) { return *(const lanes_d *)(const void *)p; }
static inline void lanes_store(double *p, lanes_d x) { *(lanes_d *)(void *)p = x; }
static inline lanes_d lanes_and(lanes_d x, lanes_l m) { return (lanes_d)((lanes_l)x & m); } /* x where m, else 0 */
static inline lanes_d lanes_select(lanes_l m, lanes_d x, lanes_d y) {                           /* m ? x : y */
    return (lanes_d)(((lanes_l)x & m) | ((lanes_l)y & ~m));
}
static inline lanes_d lanes_sqrt(lanes_d x) {
#if defined(__AVX512F__)
    return (lanes_d)_mm512_sqrt_pd((__m512d)x);
#else
    lanes_d o;
    for (int r = 0; r < HG_LANES; ++r) o[r] = sqrt(x[r]);
    return o;
#endif
}
static inline int lanes_any(lanes_l m) {
    int64_t a = 0;
    for (int r = 0; r < HG_LANES; ++r) a |= m[r];
    return a != 0;
}

/* alpha = 1.5, the search's first step for every live row of the set, in lanes: from the statistics at
   the lower bracket end lo = -1/a (a lower bound: the max alone gives ||.||_2 = 1/a), the closed-form root
   on all candidates (verified by the next pass) and the Newton step from lo. bound[r]: below it no
   candidate can be in row r's support: the Newton step (a lower bound of the threshold; less a margin far
   above its rounding), or lo when the step left the bracket (then bisection). The lane search continues
   from this state (threshold15_set), so the result is the single-row search's. */
static void first_steps15(rowset *S, const params *P, double bound[HG_LANES]) {
    const double inv_a = P->inv_a, lo = -inv_a;
    const lanes_d zero = {0}, ia = zero + inv_a, vlo = zero + lo, hi0 = zero + P->hi0;
    lanes_d s1 = zero, s2 = zero, j = zero + 1.0;
    for (int r = 0; r < S->nrows; ++r)
        if (!(S->status[r] & HG_STATUS_NO_DISTRIBUTION)) { s1[r] = S->s1[r]; s2[r] = S->s2[r]; j[r] = S->cnt[r]; }
    const lanes_d N = lanes_sqrt(s2), D = s1 * s1 - j * (s2 - inv_a * inv_a);
    const lanes_l dok = D >= 0.0;
    const lanes_d tc = lanes_select(dok, vlo + (s1 - lanes_sqrt(lanes_and(D, dok))) / j, zero + INFINITY);
    lanes_d tn = vlo + (N - ia) * N / s1;
    const lanes_l inside = (tn >= vlo) & (tn <= hi0);
    tn = lanes_select(inside, tn, 0.5 * (vlo + hi0));
    lanes_d dt = tn - vlo;
    dt = lanes_select(dt < 0.0, -dt, dt);
    const lanes_l done = dt <= zero + 4.0 * DBL_EPSILON * (fabs(lo) + inv_a);
    lanes_d at = lanes_select(tn < 0.0, -tn, tn);
    const lanes_d b = lanes_select(inside, tn - 1e-9 * (at + ia), vlo);
    for (int r = 0; r < S->nrows; ++r) {
        S->done0[r] = done[r] != 0;
        S->tau[r] = dok[r] ? tc[r] : tn[r];
        S->t0[r] = tn[r];
        S->tc0[r] = tc[r];
        S->s00[r] = dok[r] ? j[r] : -1.0;
        bound[r] = b[r];
    }
}

/* Row r's candidates above bound (all of them for bound = -inf), compacted in place in cu and gi (in
   order); S->m[r] is their count. */
static void rowset_keep(rowset *S, int r, double bound) {
    double *u = S->cu + r * S->st;
    int32_t *cols = S->gi + r * S->st;
    const int64_t m = S->mg[r];
    int64_t k = 0;
#if defined(__AVX512F__) && defined(__AVX512VL__)
    /* 8 a step, compressed in registers; full-width stores at k <= i only overwrite entries already read */
    const __m512d vb = _mm512_set1_pd(bound);
    for (int64_t i = 0; i < m; i += 8) {
        const __mmask8 valid = tail8(m - i);
        const __m512d x = _mm512_maskz_loadu_pd(valid, u + i);
        const __m256i c = _mm256_maskz_loadu_epi32(valid, cols + i);
        const __mmask8 keep = _mm512_mask_cmp_pd_mask(valid, x, vb, _CMP_GT_OQ);
        _mm512_storeu_pd(u + k, _mm512_maskz_compress_pd(keep, x));
        _mm256_storeu_si256((__m256i *)(void *)(cols + k), _mm256_maskz_compress_epi32(keep, c));
        k += __builtin_popcount(keep);
    }
#else
    for (int64_t i = 0; i < m; ++i) {
        const double x = u[i];
        u[k] = x;
        cols[k] = cols[i];
        k += x > bound;
    }
#endif
    S->m[r] = k;
}

/* The interleaved layout: u[i HG_LANES + r] = cu_r[i] for i < m_r, -inf for m_r <= i < mpad (a multiple of
   8). With AVX-512 by 8x8 transposes in registers, the rows' tails replaced by -inf as they are loaded
   (strided scalar stores, or -inf stores that the loads then straddle, cost ~4x as much). */
static void rowset_interleave(rowset *S, int64_t mpad) {
    const int64_t st = S->st;
    const double *c = S->cu;
#if defined(__AVX512F__) && HG_LANES == 8
    const __m512d ninf = _mm512_set1_pd(-INFINITY);
#define HG_ROWCHUNK(r) _mm512_mask_loadu_pd(ninf, tail8_any(S->m[r] - i0), c + (r) * st + i0)
    for (int64_t i0 = 0; i0 < mpad; i0 += 8) {
        const __m512d r0 = HG_ROWCHUNK(0), r1 = HG_ROWCHUNK(1), r2 = HG_ROWCHUNK(2), r3 = HG_ROWCHUNK(3),
                      r4 = HG_ROWCHUNK(4), r5 = HG_ROWCHUNK(5), r6 = HG_ROWCHUNK(6), r7 = HG_ROWCHUNK(7);
        /* 128-bit lane L of t0 holds (r0[2L], r1[2L]), of t1 (r0[2L+1], r1[2L+1]), ... */
        const __m512d t0 = _mm512_unpacklo_pd(r0, r1), t1 = _mm512_unpackhi_pd(r0, r1);
        const __m512d t2 = _mm512_unpacklo_pd(r2, r3), t3 = _mm512_unpackhi_pd(r2, r3);
        const __m512d t4 = _mm512_unpacklo_pd(r4, r5), t5 = _mm512_unpackhi_pd(r4, r5);
        const __m512d t6 = _mm512_unpacklo_pd(r6, r7), t7 = _mm512_unpackhi_pd(r6, r7);
        const __m512d a0 = _mm512_shuffle_f64x2(t0, t2, 0x88), a1 = _mm512_shuffle_f64x2(t0, t2, 0xDD);
        const __m512d b0 = _mm512_shuffle_f64x2(t4, t6, 0x88), b1 = _mm512_shuffle_f64x2(t4, t6, 0xDD);
        const __m512d e0 = _mm512_shuffle_f64x2(t1, t3, 0x88), e1 = _mm512_shuffle_f64x2(t1, t3, 0xDD);
        const __m512d f0 = _mm512_shuffle_f64x2(t5, t7, 0x88), f1 = _mm512_shuffle_f64x2(t5, t7, 0xDD);
        double *o = S->u + i0 * HG_LANES;
        _mm512_storeu_pd(o, _mm512_shuffle_f64x2(a0, b0, 0x88));
        _mm512_storeu_pd(o + 8, _mm512_shuffle_f64x2(e0, f0, 0x88));
        _mm512_storeu_pd(o + 16, _mm512_shuffle_f64x2(a1, b1, 0x88));
        _mm512_storeu_pd(o + 24, _mm512_shuffle_f64x2(e1, f1, 0x88));
        _mm512_storeu_pd(o + 32, _mm512_shuffle_f64x2(a0, b0, 0xDD));
        _mm512_storeu_pd(o + 40, _mm512_shuffle_f64x2(e0, f0, 0xDD));
        _mm512_storeu_pd(o + 48, _mm512_shuffle_f64x2(a1, b1, 0xDD));
        _mm512_storeu_pd(o + 56, _mm512_shuffle_f64x2(e1, f1, 0xDD));
    }
#undef HG_ROWCHUNK
#else
    for (int64_t i = 0; i < mpad; ++i)
        for (int r = 0; r < HG_LANES; ++r) S->u[i * HG_LANES + r] = i < S->m[r] ? c[r * st + i] : -INFINITY;
#endif
}

/* alpha = 1.5 on every live row of the set at once. Per lane the iteration of the single-row search:
   one pass computes the statistics at t (sum and sum of squares of (u - t)_+, the count above t) and
   counts the candidates above the previous closed-form root (verifying it exactly, one pass late: a
   root whose support is its own is the exact threshold); Newton on ||(u - t)_+||_2 = 1/a from the lower
   bracket end, bisection when a step leaves the bracket. The lanes' updates are branch-free (selects);
   the passes keep two partial sums per lane (even and odd candidates) to halve the add latency chain. */
static void threshold15_set(rowset *S, const params *P) {
    const double inv_a = P->inv_a, C = inv_a * inv_a;
    const lanes_d zero = {0}, half = zero + 0.5, inf = zero + INFINITY, neg1 = zero - 1.0, one = zero + 1.0;
    const lanes_d ia = zero + inv_a, tol_k = zero + 4.0 * DBL_EPSILON;
    lanes_l live = {0};
    lanes_d t = zero - inv_a, tcp = inf, s0p = neg1, tau = zero + NAN;
    for (int r = 0; r < S->nrows; ++r) {
        if (S->status[r] & HG_STATUS_NO_DISTRIBUTION) continue;
        if (S->done0[r]) { tau[r] = S->tau[r]; continue; }
        live[r] = -1;
        t[r] = S->t0[r]; tcp[r] = S->tc0[r]; s0p[r] = S->s00[r];
    }
    /* the first step evaluated lo = -1/a, a lower bound */
    lanes_d lo = zero - inv_a, hi = zero + P->hi0;
    const double *u = S->u;
    const int64_t mmax = S->mmax, mev = mmax & ~(int64_t)1;
    for (int it = 1; it < MAXIT && lanes_any(live); ++it) { /* iteration 0 was first_steps15 */
        lanes_d a1 = zero, a2 = zero, aj = zero, ac = zero, b1 = zero, b2 = zero, bj = zero, bc = zero;
        int64_t i = 0;
        for (; i < mev; i += 2) {
            const lanes_d x = lanes_load(u + i * HG_LANES), y = x - t;
            const lanes_d x2 = lanes_load(u + (i + 1) * HG_LANES), y2 = x2 - t;
            const lanes_l gt = y > 0.0, gt2 = y2 > 0.0;
            const lanes_d yk = lanes_and(y, gt), yk2 = lanes_and(y2, gt2);
            a1 += yk; a2 += yk * yk;
            b1 += yk2; b2 += yk2 * yk2;
            aj += lanes_and(one, gt); /* counts: 1.0 where the comparison holds (an and, not a conversion) */
            bj += lanes_and(one, gt2);
            ac += lanes_and(one, x > tcp);
            bc += lanes_and(one, x2 > tcp);
        }
        if (i < mmax) {
            const lanes_d x = lanes_load(u + i * HG_LANES), y = x - t;
            const lanes_l gt = y > 0.0;
            const lanes_d yk = lanes_and(y, gt);
            a1 += yk; a2 += yk * yk;
            aj += lanes_and(one, gt);
            ac += lanes_and(one, x > tcp);
        }
        const lanes_d s1 = a1 + b1, s2 = a2 + b2, s0 = aj + bj, cnt = ac + bc;
        /* the previous closed-form root kept its support: it is the threshold */
        const lanes_l hit = live & (cnt == s0p);
        tau = lanes_select(hit, tcp, tau);
        live &= ~hit;
        const lanes_d N = lanes_sqrt(s2);
        const lanes_l lower = N >= ia; /* t is a lower bound: the entries above it hold the support */
        lo = lanes_select(live & lower, t, lo);
        hi = lanes_select(live & ~lower, t, hi);
        const lanes_d D = s1 * s1 - s0 * (s2 - C);
        const lanes_l dok = D >= 0.0;
        const lanes_d tc = lanes_select(dok, t + (s1 - lanes_sqrt(lanes_and(D, dok))) / s0, inf);
        lanes_d tn = t + (N - ia) * N / s1;
        tn = lanes_select((tn >= lo) & (tn <= hi), tn, half * (lo + hi));
        lanes_d dt = tn - t, at = t;
        dt = lanes_select(dt < 0.0, -dt, dt);
        at = lanes_select(at < 0.0, -at, at);
        const lanes_l done = live & (dt <= tol_k * (at + ia)); /* a tie at the threshold */
        tau = lanes_select(done, lanes_select(dok, tc, tn), tau);
        live &= ~done;
        tcp = lanes_select(live, tc, tcp);
        s0p = lanes_select(live, lanes_select(dok, s0, neg1), s0p);
        t = lanes_select(live, tn, t);
    }
    lanes_store(S->tau, tau);
    for (int r = 0; r < HG_LANES; ++r)
        if (live[r]) { S->status[r] |= HG_STATUS_ITER_LIMIT; S->tau[r] = t[r]; }
    /* the normalizing sums: sum (a (u - tau)_+)^2 over the candidates (the support is among them) */
    lanes_d vtau = lanes_load(S->tau);
    vtau = lanes_select(vtau == vtau, vtau, inf); /* empty lanes: NaN -> nothing above */
    lanes_d acc = zero, acc2 = zero;
    int64_t i = 0;
    for (; i < mev; i += 2) {
        const lanes_d y = lanes_load(u + i * HG_LANES) - vtau, y2 = lanes_load(u + (i + 1) * HG_LANES) - vtau;
        const lanes_d w = P->a * lanes_and(y, y > 0.0), w2 = P->a * lanes_and(y2, y2 > 0.0);
        acc += w * w;
        acc2 += w2 * w2;
    }
    if (i < mmax) {
        const lanes_d y = lanes_load(u + i * HG_LANES) - vtau;
        const lanes_d w = P->a * lanes_and(y, y > 0.0);
        acc += w * w;
    }
    const lanes_d inv = 1.0 / (acc + acc2);
    lanes_store(S->inv_sum, inv);
}

/* Every other alpha: row by row on a contiguous copy of the row's candidates (the search compacts it). */
static void threshold_rows(rowset *S, const params *P) {
    const double a = P->a, r_exp = P->r;
    for (int r = 0; r < S->nrows; ++r) {
        if (S->status[r] & HG_STATUS_NO_DISTRIBUTION) continue;
        int64_t m = S->m[r];
        for (int64_t i = 0; i < m; ++i) S->row[i] = S->cu[r * S->st + i];
        const double tau = threshold(S->row, &m, P, &S->status[r]);
        double sum = 0;
        if (HG_POW_KIND(P->kind)) {
            for (int64_t i = 0; i < m; ++i) {
                const double y = S->row[i] - tau;
                if (y > 0) sum += pow(a * y, r_exp);
            }
        } else { /* sparsemax */
            for (int64_t i = 0; i < m; ++i) sum += a * pos(S->row[i] - tau);
        }
        S->tau[r] = tau;
        S->inv_sum[r] = 1.0 / sum;
    }
}

/* The thresholds and normalizing sums of the set's rows (after rowset_add of rows 0..nrows). */
static void rowset_solve(rowset *S, const params *P) {
    /* The fp32 rows' shifts, here rather than right after each gather: read back at once, the gather's
       full-width stores at unaligned offsets cannot be forwarded to the shift's loads (the wait for them
       to reach the cache was a fifth of rowset_add's samples) */
    for (int r = 0; r < S->nrows; ++r)
        if (S->unshifted >> r & 1)
            shift_f32(S->gv + r * S->st, S->mg[r], S->zmax[r], S->cu + r * S->st, P->kind == HG_KIND_ENTMAX15,
                      -P->inv_a, &S->s1[r], &S->s2[r], &S->cnt[r]);
    S->unshifted = 0;
    double bound[HG_LANES];
    for (int r = 0; r < HG_LANES; ++r) { bound[r] = -INFINITY; S->done0[r] = 0; }
    if (P->kind == HG_KIND_ENTMAX15) first_steps15(S, P, bound);
    int64_t mmax = 0;
    for (int r = 0; r < HG_LANES; ++r) {
        if (r >= S->nrows) S->m[r] = 0;
        else if (!(S->status[r] & HG_STATUS_NO_DISTRIBUTION)) rowset_keep(S, r, bound[r]);
        mmax = S->m[r] > mmax ? S->m[r] : mmax;
    }
    S->mmax = mmax;
    rowset_interleave(S, (mmax + 7) & ~(int64_t)7);
    if (P->kind == HG_KIND_ENTMAX15) threshold15_set(S, P); else threshold_rows(S, P);
}

/* p_i of a candidate u of a solved row: ((a (u - tau))_+)^r / sum. */
static inline double rowset_weight(const params *P, double y, double inv_sum) {
    if (P->kind == HG_KIND_ENTMAX15) return P->a * P->a * inv_sum * pos(y) * pos(y);
    if (P->kind == HG_KIND_SPARSEMAX) return pos(y) * inv_sum;
    return y > 0 ? pow(P->a * y, P->r) * inv_sum : 0.0;
}

/* Row r of a solved set written out in full: p[0..n) from its scores z (NaN where the row has no
   distribution). */
#define DEFINE_SET_WRITE(NAME, T)                                                              \
    static void NAME(const rowset *S, int r, const T *z, T *p, const params *P) {              \
        const int64_t n = S->n;                                                                \
        if (S->status[r] & HG_STATUS_NO_DISTRIBUTION) {                                        \
            for (int64_t i = 0; i < n; ++i) p[i] = (T)NAN;                                     \
            return;                                                                            \
        }                                                                                      \
        const double zmax = S->zmax[r], tau = S->tau[r], inv_sum = S->inv_sum[r];              \
        if (P->kind == HG_KIND_ENTMAX15) {                                                     \
            const double c = P->a * P->a * inv_sum;                                            \
            _Pragma("omp simd")                                                                \
            for (int64_t i = 0; i < n; ++i) {                                                  \
                const double y = pos(((double)z[i] - zmax) - tau);                             \
                p[i] = (T)(c * y * y);                                                         \
            }                                                                                  \
        } else if (P->kind == HG_KIND_SPARSEMAX) {                                             \
            _Pragma("omp simd")                                                                \
            for (int64_t i = 0; i < n; ++i) p[i] = (T)(pos(((double)z[i] - zmax) - tau) * inv_sum); \
        } else {                                                                               \
            for (int64_t i = 0; i < n; ++i) p[i] = (T)rowset_weight(P, ((double)z[i] - zmax) - tau, inv_sum); \
        }                                                                                      \
    }
DEFINE_SET_WRITE(rowset_write_generic_f32, float)
DEFINE_SET_WRITE(rowset_write_f64, double)

#if defined(__AVX512F__) && defined(__AVX512VL__) && defined(__AVX512DQ__)
/* alpha = 1.5 weights of 8 scores x (in double): c ((x - zmax) - tau)_+^2 rounded to fp32; -inf gives 0 */
static inline __m256 weights8_15(__m512d vz, __m512d vt, __m512d vc, __m512d x) {
    const __m512d y = _mm512_max_pd(_mm512_sub_pd(_mm512_sub_pd(x, vz), vt), _mm512_setzero_pd());
    return _mm512_cvtpd_ps(_mm512_mul_pd(_mm512_mul_pd(vc, y), y));
}
#endif

/* fp32 rows: alpha = 1.5 with AVX-512, in double, 16 entries a step, the tail masked; else the generic loop */
static void rowset_write_f32(const rowset *S, int r, const float *z, float *p, const params *P) {
#if defined(__AVX512F__) && defined(__AVX512VL__) && defined(__AVX512DQ__)
    if (P->kind == HG_KIND_ENTMAX15 && !(S->status[r] & HG_STATUS_NO_DISTRIBUTION)) {
        const int64_t n = S->n;
        const __m512d vz = _mm512_set1_pd(S->zmax[r]), vt = _mm512_set1_pd(S->tau[r]),
                      vc = _mm512_set1_pd(P->a * P->a * S->inv_sum[r]);
        /* 16 entries a step with plain 64-byte stores; only the tail is masked (masked stores were a third of
           this loop's samples) */
        int64_t i = 0;
        for (; i + 16 <= n; i += 16) {
            const __m512 x = _mm512_loadu_ps(z + i); /* -inf -> weight 0 through the max */
            const __m256 lo = weights8_15(vz, vt, vc, _mm512_cvtps_pd(_mm512_castps512_ps256(x)));
            const __m256 hi = weights8_15(vz, vt, vc, _mm512_cvtps_pd(_mm512_extractf32x8_ps(x, 1)));
            _mm512_storeu_ps(p + i, _mm512_insertf32x8(_mm512_castps256_ps512(lo), hi, 1));
        }
        for (; i < n; i += 8) {
            const __mmask8 k = tail8(n - i);
            _mm256_mask_storeu_ps(p + i, k, weights8_15(vz, vt, vc, _mm512_cvtps_pd(_mm256_maskz_loadu_ps(k, z + i))));
        }
        return;
    }
#endif
    rowset_write_generic_f32(S, r, z, p, P);
}

/* The weights of every candidate of a solved set in the interleaved layout, rounded to fp32: w[i HG_LANES + r]
   = p of candidate i of row r (0 for candidates at or below the threshold and for the -inf pads), for
   i < mmax; with gi, each row's (weight, column) list, zeros included, in column order. alpha = 1.5 in
   lanes (one pass for the set); other alphas row by row. */
static void rowset_weights_f32(const rowset *S, const params *P, float *w) {
    const int64_t mmax = S->mmax;
    if (P->kind == HG_KIND_ENTMAX15) {
        lanes_d tau = {0}, c = {0};
        for (int r = 0; r < HG_LANES; ++r) {
            const int ok = r < S->nrows && !(S->status[r] & HG_STATUS_NO_DISTRIBUTION);
            tau[r] = ok ? S->tau[r] : INFINITY;
            c[r] = ok ? P->a * P->a * S->inv_sum[r] : 0.0;
        }
        for (int64_t i = 0; i < mmax; ++i) {
            const lanes_d y = lanes_load(S->u + i * HG_LANES) - tau;
            const lanes_d yk = lanes_and(y, y > 0.0);
            const lanes_f wf = __builtin_convertvector((c * yk) * yk, lanes_f);
            *(lanes_f *)(void *)(w + i * HG_LANES) = wf;
        }
        return;
    }
    for (int64_t i = 0; i < mmax; ++i)
        for (int r = 0; r < HG_LANES; ++r) {
            const int ok = r < S->nrows && !(S->status[r] & HG_STATUS_NO_DISTRIBUTION) && i < S->m[r];
            w[i * HG_LANES + r] = ok ? (float)rowset_weight(P, S->u[i * HG_LANES + r] - S->tau[r], S->inv_sum[r]) : 0.0f;
        }
}


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

/* softmax of a row z[0..n) whose maximum m is known (the entmax pass found it): p = e^(z - m) / sum. */
#if defined(__AVX512F__)
/* exp_nonpos_f32 on 16 lanes (the same steps; the reduction x k ln2 in two fused parts) */
static inline __m512 exp_nonpos_v16(__m512 x) {
    const __m512 xc = _mm512_max_ps(x, _mm512_set1_ps(-87.0f));
    const __m512 kf = _mm512_roundscale_ps(_mm512_fmadd_ps(xc, _mm512_set1_ps(1.44269504088896341f), _mm512_set1_ps(0.5f)),
                                           _MM_FROUND_TO_NEG_INF | _MM_FROUND_NO_EXC);
    const __m512 r = _mm512_fnmadd_ps(kf, _mm512_set1_ps(1.42860682030941723e-6f),
                                      _mm512_fnmadd_ps(kf, _mm512_set1_ps(0.693145751953125f), xc));
    __m512 p = _mm512_set1_ps(1.0f / 5040.0f);
    p = _mm512_fmadd_ps(p, r, _mm512_set1_ps(1.0f / 720.0f));
    p = _mm512_fmadd_ps(p, r, _mm512_set1_ps(1.0f / 120.0f));
    p = _mm512_fmadd_ps(p, r, _mm512_set1_ps(1.0f / 24.0f));
    p = _mm512_fmadd_ps(p, r, _mm512_set1_ps(1.0f / 6.0f));
    p = _mm512_fmadd_ps(p, r, _mm512_set1_ps(0.5f));
    p = _mm512_fmadd_ps(p, r, _mm512_set1_ps(1.0f));
    p = _mm512_fmadd_ps(p, r, _mm512_set1_ps(1.0f));
    const __m512 two_k = _mm512_castsi512_ps(_mm512_slli_epi32(_mm512_add_epi32(_mm512_cvtps_epi32(kf), _mm512_set1_epi32(127)), 23));
    const __mmask16 keep = _mm512_cmp_ps_mask(x, _mm512_set1_ps(-87.0f), _CMP_NLT_UQ);
    return _mm512_maskz_mul_ps(keep, p, two_k);
}
#endif

static inline void softmax_shifted_f32(const float *z, float *p, int64_t n, float m) {
#if defined(__AVX512F__)
    const __m512 vm = _mm512_set1_ps(m);
    __m512 acc = _mm512_setzero_ps();
    for (int64_t i = 0; i < n; i += 16) {
        const __mmask16 k = tail16(n - i);
        const __m512 e = exp_nonpos_v16(_mm512_sub_ps(_mm512_maskz_loadu_ps(k, z + i), vm));
        _mm512_mask_storeu_ps(p + i, k, e);
        acc = _mm512_mask_add_ps(acc, k, acc, e);
    }
    const __m512 inv = _mm512_set1_ps(1.0f / _mm512_reduce_add_ps(acc));
    for (int64_t i = 0; i < n; i += 16) {
        const __mmask16 k = tail16(n - i);
        _mm512_mask_storeu_ps(p + i, k, _mm512_mul_ps(inv, _mm512_maskz_loadu_ps(k, p + i)));
    }
#else
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
#endif
}

static inline void softmax_shifted_f64(const double *z, double *p, int64_t n, double m) {
    double sum = 0.0;
    for (int64_t i = 0; i < n; ++i) {
        const double e = exp(z[i] - m);
        p[i] = e;
        sum += e;
    }
    const double inv = 1.0 / sum;
    for (int64_t i = 0; i < n; ++i) p[i] *= inv;
}

/* The row-set loop of both entry points. dual = 0: entmax row r to out + r n. dual = 1: rows = G * group
   score rows (row r = (g, i)), softmax row r to out[((2g) group + i) n] and entmax row r to
   out[((2g + 1) group + i) n], i.e. out is (G, 2, group, n); a row without a distribution is NaN in both. */
#define DEFINE_ROW_SETS(NAME, ADD, WRITE, SOFTMAX, T)                                          \
    static int64_t NAME(const T *z, T *out, int64_t rows, int64_t n, int64_t group, int dual,  \
                        const params *P, int nthreads) {                                       \
        const int64_t nsets = (rows + HG_LANES - 1) / HG_LANES, nchunks = (nsets + 7) / 8;     \
        int64_t flags = 0;                                                                     \
        hg_range *R = hg_ranges_new(&nthreads, nchunks);                                       \
        if (R == NULL) return HG_STATUS_OUT_OF_MEMORY;                                         \
        _Pragma("omp parallel num_threads(nthreads) if(rows * n >= 32768) reduction(| : flags)")\
        {                                                                                      \
            double *buf = (double *)hg_alloc(SET_SCRATCH(n) * sizeof(double));                 \
            if (buf == NULL) flags |= HG_STATUS_OUT_OF_MEMORY;                                 \
            rowset S;                                                                          \
            if (buf != NULL) rowset_init(&S, buf, n);                                          \
            const int me = hg_thread_num();                                                    \
            int turn = 0;                                                                      \
            for (int64_t c; buf != NULL && (c = hg_claim(R, me, nthreads, &turn)) >= 0;)       \
            for (int64_t set = 8 * c; set < nsets && set < 8 * c + 8; ++set) { /* chunks of 8 sets */ \
                const int64_t r0 = set * HG_LANES;                                             \
                S.nrows = (int)(rows - r0 < HG_LANES ? rows - r0 : HG_LANES);                  \
                for (int r = 0; r < S.nrows; ++r) ADD(&S, r, z + (r0 + r) * n, P);             \
                rowset_solve(&S, P);                                                           \
                for (int r = 0; r < S.nrows; ++r) {                                            \
                    const int64_t row = r0 + r, g = row / group, i = row % group;              \
                    WRITE(&S, r, z + row * n, dual ? out + ((2 * g + 1) * group + i) * n : out + row * n, P); \
                    flags |= S.status[r];                                                      \
                    if (!dual) continue;                                                       \
                    T *ps = out + ((2 * g) * group + i) * n;                                   \
                    if (S.status[r] & HG_STATUS_NO_DISTRIBUTION) {                             \
                        for (int64_t j = 0; j < n; ++j) ps[j] = (T)NAN;                        \
                    } else {                                                                   \
                        SOFTMAX(z + row * n, ps, n, (T)S.zmax[r]);                             \
                    }                                                                          \
                }                                                                              \
            }                                                                                  \
            free(buf);                                                                         \
        }                                                                                      \
        free(R);                                                                               \
        return flags;                                                                          \
    }
DEFINE_ROW_SETS(row_sets_f32, rowset_add_f32, rowset_write_f32, softmax_shifted_f32, float)
DEFINE_ROW_SETS(row_sets_f64, rowset_add_f64, rowset_write_f64, softmax_shifted_f64, double)

/* Returns the OR of the rows' HG_STATUS_* bits: NONFINITE_SCORES (a NaN or +inf entry), FULLY_MASKED (no
   finite entry; such rows are written as NaN), ITER_LIMIT (a row hit MAXIT: its output is only the bracket
   estimate), OUT_OF_MEMORY. kind, hi0: hopfield_gag.ops.threshold.entmax_setup(alpha, n). Rows are dealt
   to the threads 8 sets at a time, each thread's own contiguous range first (hg_claim: on a shared machine a
   descheduled thread then stalls the region by one chunk, not by half of the rows); small inputs run on one
   thread: waking (and, on a busy machine, waiting for) a second OpenMP thread costs more than the work. */
#define DEFINE_ENTRY(NAME, SETS, T)                                                            \
    int64_t NAME(const T *z, T *p, int64_t rows, int64_t n, double alpha, int kind, double hi0,  \
                 int nthreads) {                                                               \
        const params P = make_params(alpha, kind, hi0);                                        \
        return SETS(z, p, rows, n, 1, 0, &P, nthreads);                                        \
    }
DEFINE_ENTRY(entmax_rows_f32, row_sets_f32, float)
DEFINE_ENTRY(entmax_rows_f64, row_sets_f64, double)

/* Both maps of a chunk of rows (see DEFINE_ROW_SETS, dual = 1); flags as entmax_rows. */
#define DEFINE_DUAL(NAME, SETS, T)                                                             \
    int64_t NAME(const T *z, T *out, int64_t rows, int64_t n, int64_t group, double alpha,     \
                 int kind, double hi0, int nthreads) {                                         \
        const params P = make_params(alpha, kind, hi0);                                        \
        return SETS(z, out, rows, n, group, 1, &P, nthreads);                                  \
    }
DEFINE_DUAL(dual_rows_f32, row_sets_f32, float)
DEFINE_DUAL(dual_rows_f64, row_sets_f64, double)
