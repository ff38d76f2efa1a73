/*
 * Row-wise exact alpha-entmax on contiguous rows (the CPU fast path of hopfield_gag.normalizers).
 *
 * For each row z (length n) it finds the threshold t (in z units) with
 *     sum_i ( (alpha-1) (z_i - t) )_+ ^ r = 1,      r = 1 / (alpha - 1),
 * and writes p_i = ((alpha-1)(z_i - t))_+^r, renormalized so the row sums to 1.
 *
 * Algorithm (no sort): h(t) = ||(z - t)_+||_r - 1/(alpha-1) is decreasing, and convex for r >= 1
 * (alpha <= 2), so Newton from the lower bracket end t0 = max(z) - 1/(alpha-1) increases monotonically
 * to the root. A bisection bracket [lo, hi] safeguards alpha > 2 (r < 1, h not convex) and rounding.
 * Exact finish: for r = 2 (alpha = 1.5) and r = 1 (alpha = 2) the threshold on a fixed support S has a
 * closed form; it is accepted only when the support it induces is S itself, which makes it the exact
 * root. For other alpha, Newton runs to h(t) = 0 at double precision on the final (smooth) piece.
 *
 * Speed: entries <= lo can never be in the support, and lo only increases, so after every iteration
 * the surviving candidates are compacted into a per-thread buffer; the iterations then touch only a
 * few percent of a long row. All accumulation is in double whatever the storage type.
 */
#include <float.h>
#include <math.h>
#include <stdint.h>
#include <stdlib.h>

#define MAXIT 300

static inline double powr(double y, double r, int kind) {
    return kind == 1 ? y : (kind == 2 ? y * y : pow(y, r));
}

/* Replace buf[0..m) by its entries u = buf[i] - shift with u > bound; returns the new count. */
static inline int64_t compact(double *buf, int64_t m, double bound, double shift) {
    int64_t j = 0;
    for (int64_t i = 0; i < m; ++i) {
        const double u = buf[i] - shift;
        if (u > bound) buf[j++] = u;
    }
    return j;
}

/* Threshold t for a row whose candidate entries (all > the lower bound lo), shifted so that their max is
   zmax (0 when called from a row), are buf[0..m).
   Compacts buf in place (*m_io is updated). Sets *status to 4 if MAXIT was hit (the bracket
   estimate is returned). */
static double threshold(double *buf, int64_t *m_io, double zmax, int64_t n, double alpha, int kind, int *status) {
    const double a = alpha - 1.0, inv_a = 1.0 / a, r = 1.0 / a;
    int64_t m = *m_io;
    double tau = NAN;
    double lo = zmax - inv_a;
    double hi = zmax - pow(1.0 / (double)n, a) * inv_a;
    double t = lo;
    for (int it = 0; it < MAXIT; ++it) {
        double s0 = 0, s1 = 0, s2 = 0, sr = 0, srm1 = 0;
        for (int64_t i = 0; i < m; ++i) {
            double y = buf[i] - t;
            if (y > 0) {
                s0 += 1.0;
                s1 += y;
                if (kind == 2) {
                    s2 += y * y;
                } else if (kind == 0) {
                    double y1 = pow(y, r - 1.0);
                    srm1 += y1;
                    sr += y1 * y;
                }
            }
        }
        const double N = kind == 1 ? s1 : (kind == 2 ? sqrt(s2) : pow(sr, a));
        if (N >= inv_a) {
            lo = t;
            m = compact(buf, m, lo, 0.0);
        } else {
            hi = t;
        }
        const double tol = 4.0 * DBL_EPSILON * (fabs(t) + inv_a);
        double tn;
        if (kind == 1) {
            /* Michelot step: the root of the current linear piece (a lower bound); exact iff the
               support it induces is the current one. */
            tn = t + (s1 - 1.0) / s0;
            int64_t cnt = 0;
            for (int64_t i = 0; i < m; ++i) cnt += buf[i] > tn;
            if ((double)cnt == s0 || tn <= t) { tau = tn; break; }
        } else if (kind == 2) {
            /* Closed-form root on the current support (an upper bound); exact iff it keeps it. */
            const double D = s1 * s1 - s0 * (s2 - inv_a * inv_a);
            double tc = t;
            if (D >= 0) {
                tc = t + (s1 - sqrt(D)) / s0;
                int64_t cnt = 0;
                for (int64_t i = 0; i < m; ++i) cnt += buf[i] > tc;
                if ((double)cnt == s0) { tau = tc; break; }
            }
            tn = t + (N - inv_a) * N / s1;
            if (!(tn >= lo && tn <= hi)) tn = 0.5 * (lo + hi);
            if (fabs(tn - t) <= tol) { tau = D >= 0 ? tc : tn; break; } /* a tie at the threshold */
        } else if (r < 1.0) {
            /* alpha > 2: h is not convex and p = y^r has unbounded slope at the threshold, so Newton
               loses digits there; bisect the bracket (on the few candidates left) to its rounding. */
            if (hi - lo <= tol) { tau = 0.5 * (lo + hi); break; }
            tn = 0.5 * (lo + hi);
        } else {
            /* Converged when h(t) is zero to rounding or the bracket has collapsed. */
            if (fabs(N - inv_a) <= 8.0 * DBL_EPSILON * inv_a || hi - lo <= tol) { tau = t; break; }
            tn = t + (N - inv_a) * pow(N, r - 1.0) / srm1;
            if (!(tn > lo && tn < hi) || !isfinite(tn)) tn = 0.5 * (lo + hi);
            else if (fabs(tn - t) <= tol) {
                tau = tn; /* r >= 1: monotone Newton has stalled at the root */
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

/* One row: max and candidate gathering in a single pass (entries <= running_max - 1/a are below the
   final lower bound too, since the max only grows), threshold on the candidates, then one branch-free
   (vectorizable) write pass. The normalizing sum runs over the candidates only: the support is among
   them. Everything after the first pass is in max-shifted coordinates u = z - max z: at |z| ~ 1e38 the
   unshifted max(z) - 1/(alpha-1) would round back to max(z). */
#define DEFINE_ROW(NAME, T)                                                                    \
    static int NAME(const T *z, T *p, int64_t n, double alpha, int kind, double *buf) {       \
        const double a = alpha - 1.0, r = 1.0 / a, inv_a = 1.0 / a;                            \
        double zmax = -INFINITY;                                                               \
        int nonfinite = 0;                                                                     \
        int64_t m = 0;                                                                         \
        for (int64_t i = 0; i < n; ++i) {                                                      \
            const double v = (double)z[i];                                                     \
            nonfinite |= !(v < INFINITY); /* NaN or +inf */                                    \
            if (v > zmax) {                                                                    \
                zmax = v;                                                                      \
                buf[m++] = v;                                                                  \
            } else if (v - zmax > -inv_a) {                                                    \
                buf[m++] = v;                                                                  \
            }                                                                                  \
        }                                                                                      \
        if (nonfinite) return 1;                                                               \
        if (zmax == -INFINITY) return 2;                                                       \
        m = compact(buf, m, -inv_a, zmax);                                                     \
        int status = 0;                                                                        \
        const double tau = threshold(buf, &m, 0.0, n, alpha, kind, &status);                   \
        double sum = 0;                                                                        \
        for (int64_t i = 0; i < m; ++i) {                                                      \
            const double y = buf[i] - tau;                                                     \
            if (y > 0) sum += powr(a * y, r, kind);                                            \
        }                                                                                      \
        const double inv_sum = 1.0 / sum;                                                      \
        if (kind == 2) {                                                                       \
            const double c = a * a * inv_sum;                                                  \
            for (int64_t i = 0; i < n; ++i) {                                                  \
                const double y = fmax(((double)z[i] - zmax) - tau, 0.0);                       \
                p[i] = (T)(c * y * y);                                                         \
            }                                                                                  \
        } else if (kind == 1) {                                                                \
            for (int64_t i = 0; i < n; ++i)                                                    \
                p[i] = (T)(fmax(((double)z[i] - zmax) - tau, 0.0) * inv_sum);                  \
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

static int kind_of(double alpha) {
    if (alpha == 2.0) return 1;
    if (alpha == 1.5) return 2;
    return 0;
}

/* Returns a bit mask over all rows: 1 = a NaN or +inf entry, 2 = a row with no finite entry (fully
   masked), 4 = a row that hit MAXIT (its output uses the bracket estimate), 8 = out of memory. */
#define DEFINE_ENTRY(NAME, ROW, T)                                                             \
    int64_t NAME(const T *z, T *p, int64_t rows, int64_t n, double alpha, int nthreads) {      \
        const int kind = kind_of(alpha);                                                       \
        int64_t flags = 0;                                                                     \
        /* small inputs run on one thread: waking (and, on a busy machine, waiting for) a second  \
           OpenMP thread costs more than the work */                                           \
        _Pragma("omp parallel num_threads(nthreads) if(rows * n >= 32768) reduction(| : flags)")\
        {                                                                                      \
            /* every thread must reach the worksharing loop, even one whose malloc failed */  \
            double *buf = (double *)malloc((size_t)n * sizeof(double));                        \
            if (buf == NULL) flags |= 8;                                                       \
            _Pragma("omp for schedule(static)")                                                \
            for (int64_t row = 0; row < rows; ++row)                                           \
                if (buf != NULL) flags |= ROW(z + row * n, p + row * n, n, alpha, kind, buf);  \
            free(buf);                                                                         \
        }                                                                                      \
        return flags;                                                                          \
    }

DEFINE_ENTRY(entmax_rows_f32, row_f32, float)
DEFINE_ENTRY(entmax_rows_f64, row_f64, double)
