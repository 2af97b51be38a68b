/*
 * Fused selective scan (Mamba S6) for the CPU: forward and backward, float32 or float64.
 *
 * Plain C (no torch headers) so it compiles in well under a second; built lazily by
 * mddose/ops/scan_cpu.py with the system C compiler and loaded with ctypes.
 * Compile with -DSCAN_DOUBLE for the float64 version (functions suffixed _f64, else _f32).
 *
 * Layouts (all contiguous, row-major):
 *   u, delta, z, out, xpre, dout, du, ddelta, dz : (Bt, D, L)
 *   A, dA (per batch) : (D, N) / (Bt, D, N)
 *   Bm, Cm, dB, dC    : (Bt, G, L, N)   -- note L before N: the state dimension is contiguous
 *                       (dB / dC need not be initialised: scan_bwd zeroes them)
 *   Dv, dbias         : (D,)            ; dD, ddbias: (Bt, D) (summed over batch by the caller)
 *   ckpt              : (Bt, D, nchunks, N), state h at the END of each chunk of `chunk` steps
 *                       (ckpt[..., nchunks-1, :] is the last state h_L)
 *   dlast             : (Bt, D, N) gradient of the last state, or NULL
 *
 * Recurrence: dt_l = softplus?(delta_l + bias); h_l = exp(dt_l A) * h_{l-1} + dt_l u_l B_l;
 *             x_l = <C_l, h_l> + D u_l; out_l = x_l * silu(z_l) (if z).
 * The (Bt, D, L, N) state is never stored: the backward recomputes each chunk's states from its
 * checkpoint into a per-thread (chunk+1, N) buffer and runs the reverse recurrence
 *             dh_l = C_l dy_l + exp(dt_{l+1} A) dh_{l+1}.
 * Parallel over (batch, channel) rows with POSIX threads (created per call, rows claimed in blocks
 * from an atomic counter); dB/dC are accumulated in per-thread (L, N) buffers and added to the
 * output (under a mutex) whenever the thread's (batch, group) changes.  Inner loops over N are
 * `omp simd` (compile with -fopenmp-simd: no OpenMP runtime) so exp() vectorises via libmvec.
 * Why not an OpenMP parallel region: libgomp's spin-waiting threads (shared with torch's pool)
 * made a call ~2x slower on a busy 2-core machine; joined pthreads sleep instead.
 */
#include <math.h>
#include <stdint.h>
#include <stdlib.h>
#include <string.h>
#include <pthread.h>

#ifdef SCAN_DOUBLE
typedef double real;
#define EXP exp
#define LOG1P log1p
#define SFX(name) name##_f64
#else
typedef float real;
#define EXP expf
#define LOG1P log1pf
#define SFX(name) name##_f32
#endif

#define MAXN 256   /* largest state size supported (mamba-ssm supports up to 256 as well) */
#define ALIGN 64

static void *alloc_zero(size_t n_real) {
    size_t bytes = ((n_real * sizeof(real) + ALIGN - 1) / ALIGN) * ALIGN;
    void *p = aligned_alloc(ALIGN, bytes > 0 ? bytes : ALIGN);
    if (p) memset(p, 0, bytes);
    return p;
}

int SFX(scan_max_state)(void) { return MAXN; }

/* dt[l] = softplus?(delta[l] + bias); sig[l] = d dt / d delta (only if sig != NULL). */
static void compute_dt(const real *restrict delta, real bias, int softplus, int64_t L,
                       real *restrict dt, real *restrict sig) {
    if (!softplus) {
#pragma omp simd
        for (int64_t l = 0; l < L; l++) dt[l] = delta[l] + bias;
        if (sig) for (int64_t l = 0; l < L; l++) sig[l] = (real)1;
        return;
    }
#pragma omp simd
    for (int64_t l = 0; l < L; l++) {
        real x = delta[l] + bias;
        real e = EXP(x < (real)20 ? x : (real)20);
        dt[l] = x > (real)20 ? x : LOG1P(e);
    }
    if (sig) {
#pragma omp simd
        for (int64_t l = 0; l < L; l++) {
            real x = delta[l] + bias;
            x = x < (real)-80 ? (real)-80 : x;
            sig[l] = (real)1 / ((real)1 + EXP(-x));
        }
    }
}

static inline real sigmoid_(real x) {
    x = x < (real)-80 ? (real)-80 : (x > (real)80 ? (real)80 : x);
    return (real)1 / ((real)1 + EXP(-x));
}

/* All arguments of one kernel call, shared by its worker threads. */
typedef struct {
    const real *u, *delta, *A, *Bm, *Cm, *Dv, *z, *dbias, *xpre_in, *ckpt_in, *dout, *dlast;
    real *out, *xpre, *ckpt, *du, *ddelta, *dA, *dB, *dC, *dD, *dz, *ddbias;
    int softplus;
    int64_t nb, dim, L, N, G, chunk, nch, dpg;
    int64_t next, block;   /* next unclaimed row (atomic), rows claimed at a time */
    int err;               /* set (atomically) by a worker that could not allocate its buffers */
    pthread_mutex_t mu;    /* guards the dB / dC flushes */
} job_t;

/* Claim the next block of rows [*r0, *r1); 0 when none is left. */
static int claim(job_t *j, int64_t *r0, int64_t *r1) {
    const int64_t rows = j->nb * j->dim;
    *r0 = __atomic_fetch_add(&j->next, j->block, __ATOMIC_RELAXED);
    if (*r0 >= rows) return 0;
    *r1 = *r0 + j->block < rows ? *r0 + j->block : rows;
    return 1;
}

static void set_err(job_t *j, int e) { __atomic_store_n(&j->err, e, __ATOMIC_RELAXED); }

/* Run worker(job) on nthreads threads (the caller is one of them) and join them.  Rows are handed
 * out dynamically in blocks of ~1/4 of a thread's share, so a thread descheduled on a busy machine
 * does not hold up the others, and waiting threads sleep in pthread_join instead of spinning. */
static void run_threads(void *(*worker)(void *), job_t *j, int nthreads) {
    const int64_t rows = j->nb * j->dim;
    if (nthreads < 1) nthreads = 1;
    if (nthreads > 256) nthreads = 256;
    if (nthreads > rows) nthreads = (int)rows;
    if (rows * j->L * j->N < 65536) nthreads = 1;   /* tiny problem: thread start-up would dominate */
    j->next = 0;
    j->block = rows / (4 * (int64_t)nthreads) > 0 ? rows / (4 * (int64_t)nthreads) : 1;
    pthread_t th[256];
    int started = 0;
    for (int i = 1; i < nthreads; i++) {
        if (pthread_create(&th[started], NULL, worker, j) != 0) break;   /* fewer threads still finish */
        started++;
    }
    worker(j);
    for (int i = 0; i < started; i++) pthread_join(th[i], NULL);
}

static void *fwd_worker(void *arg) {
    job_t *j = (job_t *)arg;
    const int64_t L = j->L, N = j->N, dim = j->dim, G = j->G, chunk = j->chunk;
    real *dt = alloc_zero((size_t)L);
    real h[MAXN] __attribute__((aligned(ALIGN)));
    int64_t r0, r1;
    if (!dt) { set_err(j, 2); return NULL; }
    while (claim(j, &r0, &r1)) {
        for (int64_t bd = r0; bd < r1; bd++) {
            const int64_t b = bd / dim, d = bd % dim, g = d / j->dpg;
            const real *ur = j->u + bd * L, *Ad = j->A + d * N;
            const real *Bb = j->Bm + (b * G + g) * L * N, *Cb = j->Cm + (b * G + g) * L * N;
            real *outr = j->out + bd * L, *ck = j->ckpt + bd * j->nch * N;
            compute_dt(j->delta + bd * L, j->dbias ? j->dbias[d] : (real)0, j->softplus, L, dt, NULL);
            for (int64_t n = 0; n < N; n++) h[n] = 0;
            for (int64_t l = 0; l < L; l++) {
                const real dtl = dt[l], dtu = dtl * ur[l];
                const real *Bl = Bb + l * N, *Cl = Cb + l * N;
                real y = 0;
#pragma omp simd reduction(+ : y) aligned(h : ALIGN)
                for (int64_t n = 0; n < N; n++) {
                    real hn = EXP(dtl * Ad[n]) * h[n] + dtu * Bl[n];
                    h[n] = hn;
                    y += Cl[n] * hn;
                }
                outr[l] = y;
                if ((l + 1) % chunk == 0 || l == L - 1) memcpy(ck + (l / chunk) * N, h, N * sizeof(real));
            }
            const real Dd = j->Dv ? j->Dv[d] : (real)0;
            if (j->z) {
                const real *zr = j->z + bd * L;
                real *xr = j->xpre ? j->xpre + bd * L : NULL;
#pragma omp simd
                for (int64_t l = 0; l < L; l++) {
                    real x = outr[l] + Dd * ur[l];
                    if (xr) xr[l] = x;
                    outr[l] = x * zr[l] * sigmoid_(zr[l]);
                }
            } else if (j->Dv) {
#pragma omp simd
                for (int64_t l = 0; l < L; l++) outr[l] += Dd * ur[l];
            }
        }
    }
    free(dt);
    return NULL;
}

static int init_job(job_t *j, int64_t nb, int64_t dim, int64_t L, int64_t N, int64_t G, int64_t chunk) {
    if (N > MAXN || N < 1 || L < 1 || chunk < 1 || G < 1 || dim % G) return 1;
    j->nb = nb; j->dim = dim; j->L = L; j->N = N; j->G = G; j->chunk = chunk;
    j->nch = (L + chunk - 1) / chunk;
    j->dpg = dim / G;
    j->err = 0;
    return 0;
}

int SFX(scan_fwd)(const real *u, const real *delta, const real *A, const real *Bm, const real *Cm,
                  const real *Dv, const real *z, const real *dbias, int softplus,
                  int64_t nb, int64_t dim, int64_t L, int64_t N, int64_t G, int64_t chunk,
                  real *out, real *xpre, real *ckpt, int nthreads) {
    job_t j;
    memset(&j, 0, sizeof j);
    if (init_job(&j, nb, dim, L, N, G, chunk)) return 1;
    j.u = u; j.delta = delta; j.A = A; j.Bm = Bm; j.Cm = Cm; j.Dv = Dv; j.z = z; j.dbias = dbias;
    j.softplus = softplus; j.out = out; j.xpre = xpre; j.ckpt = ckpt;
    run_threads(fwd_worker, &j, nthreads);
    return j.err;
}

/* dst[i] += acc[i] under the job's mutex (several threads may share a (b, g)); then acc[i] = 0. */
static void flush_acc(job_t *j, real *restrict dst, real *restrict acc, int64_t n) {
    pthread_mutex_lock(&j->mu);
#pragma omp simd
    for (int64_t i = 0; i < n; i++) dst[i] += acc[i];
    pthread_mutex_unlock(&j->mu);
    memset(acc, 0, (size_t)n * sizeof(real));
}

static void *bwd_worker(void *arg) {
    job_t *j = (job_t *)arg;
    const int64_t L = j->L, N = j->N, dim = j->dim, chunk = j->chunk, nch = j->nch;
    real *dt = alloc_zero((size_t)L), *sig = alloc_zero((size_t)L), *dy = alloc_zero((size_t)L);
    real *hbuf = alloc_zero((size_t)(chunk + 1) * N), *abuf = alloc_zero((size_t)chunk * N);
    real *accB = alloc_zero((size_t)L * N), *accC = alloc_zero((size_t)L * N);
    real dhc[MAXN] __attribute__((aligned(ALIGN)));
    real dAacc[MAXN] __attribute__((aligned(ALIGN)));
    int64_t cur = -1;   /* (b * G + g) of the rows accumulated in accB / accC */
    int64_t r0, r1;
    if (!(dt && sig && dy && hbuf && abuf && accB && accC)) {
        set_err(j, 2);
        goto done;
    }
    while (claim(j, &r0, &r1)) {
        for (int64_t bd = r0; bd < r1; bd++) {
            const int64_t b = bd / dim, d = bd % dim, bg = b * j->G + d / j->dpg;
            if (bg != cur) {
                if (cur >= 0) {
                    flush_acc(j, j->dB + cur * L * N, accB, L * N);
                    flush_acc(j, j->dC + cur * L * N, accC, L * N);
                }
                cur = bg;
            }
            const real *ur = j->u + bd * L, *Ad = j->A + d * N, *dor = j->dout + bd * L;
            const real *Bb = j->Bm + bg * L * N, *Cb = j->Cm + bg * L * N, *ck = j->ckpt_in + bd * nch * N;
            real *dur = j->du + bd * L, *ddr = j->ddelta + bd * L;
            const real Dd = j->Dv ? j->Dv[d] : (real)0;
            compute_dt(j->delta + bd * L, j->dbias ? j->dbias[d] : (real)0, j->softplus, L, dt, sig);
            /* gate and skip: dy = dout * silu(z), dz, dD, and the D part of du */
            real dDs = 0;
            if (j->z) {
                const real *zr = j->z + bd * L, *xr = j->xpre_in + bd * L;
                real *dzr = j->dz + bd * L;
#pragma omp simd
                for (int64_t l = 0; l < L; l++) {
                    const real s = sigmoid_(zr[l]);
                    dy[l] = dor[l] * zr[l] * s;
                    dzr[l] = dor[l] * xr[l] * s * ((real)1 + zr[l] * ((real)1 - s));
                }
            } else {
                memcpy(dy, dor, (size_t)L * sizeof(real));
            }
#pragma omp simd reduction(+ : dDs)
            for (int64_t l = 0; l < L; l++) {
                dDs += dy[l] * ur[l];
                dur[l] = Dd * dy[l];
            }
            for (int64_t n = 0; n < N; n++) {
                dhc[n] = j->dlast ? j->dlast[bd * N + n] : (real)0;
                dAacc[n] = 0;
            }
            for (int64_t c = nch - 1; c >= 0; c--) {
                const int64_t l0 = c * chunk, len = (l0 + chunk < L ? chunk : L - l0);
                /* recompute the chunk's states from the previous checkpoint */
                if (c > 0) memcpy(hbuf, ck + (c - 1) * N, N * sizeof(real));
                else memset(hbuf, 0, N * sizeof(real));
                for (int64_t i = 0; i < len; i++) {
                    const int64_t l = l0 + i;
                    const real dtl = dt[l], dtu = dtl * ur[l];
                    const real *Bl = Bb + l * N, *hp = hbuf + i * N;
                    real *hn = hbuf + (i + 1) * N, *an = abuf + i * N;
#pragma omp simd
                    for (int64_t n = 0; n < N; n++) {
                        const real a = EXP(dtl * Ad[n]);
                        an[n] = a;
                        hn[n] = a * hp[n] + dtu * Bl[n];
                    }
                }
                /* reverse recurrence over the chunk: dh_l = C_l dy_l + exp(dt_{l+1} A) dh_{l+1} */
                for (int64_t i = len - 1; i >= 0; i--) {
                    const int64_t l = l0 + i;
                    const real dtl = dt[l], ul = ur[l], dyl = dy[l], dtu = dtl * ul;
                    const real *Bl = Bb + l * N, *Cl = Cb + l * N, *hp = hbuf + i * N;
                    const real *hc = hbuf + (i + 1) * N, *an = abuf + i * N;
                    real *aB = accB + l * N, *aC = accC + l * N;
                    real s1 = 0, s2 = 0;
#pragma omp simd reduction(+ : s1, s2) aligned(dhc, dAacc : ALIGN)
                    for (int64_t n = 0; n < N; n++) {
                        const real dh = Cl[n] * dyl + dhc[n];
                        const real t = dh * an[n] * hp[n];
                        aC[n] += dyl * hc[n];
                        aB[n] += dh * dtu;
                        s1 += dh * Bl[n];
                        s2 += t * Ad[n];
                        dAacc[n] += t * dtl;
                        dhc[n] = an[n] * dh;
                    }
                    dur[l] += dtl * s1;
                    ddr[l] = ul * s1 + s2;
                }
            }
            real dbs = 0;
#pragma omp simd reduction(+ : dbs)
            for (int64_t l = 0; l < L; l++) {
                ddr[l] *= sig[l];
                dbs += ddr[l];
            }
            for (int64_t n = 0; n < N; n++) j->dA[bd * N + n] = dAacc[n];
            j->dD[bd] = dDs;
            j->ddbias[bd] = dbs;
        }
    }
    if (cur >= 0) {
        flush_acc(j, j->dB + cur * L * N, accB, L * N);
        flush_acc(j, j->dC + cur * L * N, accC, L * N);
    }
done:
    free(dt); free(sig); free(dy); free(hbuf); free(abuf); free(accB); free(accC);
    return NULL;
}

int SFX(scan_bwd)(const real *u, const real *delta, const real *A, const real *Bm, const real *Cm,
                  const real *Dv, const real *z, const real *dbias, int softplus,
                  int64_t nb, int64_t dim, int64_t L, int64_t N, int64_t G, int64_t chunk,
                  const real *xpre, const real *ckpt, const real *dout, const real *dlast,
                  real *du, real *ddelta, real *dA, real *dB, real *dC, real *dD, real *dz,
                  real *ddbias, int nthreads) {
    job_t j;
    memset(&j, 0, sizeof j);
    if (init_job(&j, nb, dim, L, N, G, chunk) || (z && !xpre)) return 1;
    j.u = u; j.delta = delta; j.A = A; j.Bm = Bm; j.Cm = Cm; j.Dv = Dv; j.z = z; j.dbias = dbias;
    j.softplus = softplus; j.xpre_in = xpre; j.ckpt_in = ckpt; j.dout = dout; j.dlast = dlast;
    j.du = du; j.ddelta = ddelta; j.dA = dA; j.dB = dB; j.dC = dC; j.dD = dD; j.dz = dz; j.ddbias = ddbias;
    if (pthread_mutex_init(&j.mu, NULL) != 0) return 3;
    memset(dB, 0, (size_t)(nb * G * L * N) * sizeof(real));   /* accumulated into by the workers */
    memset(dC, 0, (size_t)(nb * G * L * N) * sizeof(real));
    run_threads(bwd_worker, &j, nthreads);
    pthread_mutex_destroy(&j.mu);
    return j.err;
}

/* Number of NaN / inf entries of p[0..n) (an exponent-bits test: immune to -ffast-math). */
int64_t SFX(scan_count_nonfinite)(const real *p, int64_t n) {
#ifdef SCAN_DOUBLE
    typedef uint64_t bits_t;
    const bits_t mask = 0x7ff0000000000000ULL;
#else
    typedef uint32_t bits_t;
    const bits_t mask = 0x7f800000U;
#endif
    int64_t bad = 0;
#pragma omp simd reduction(+ : bad)
    for (int64_t i = 0; i < n; i++) {
        bits_t b;
        memcpy(&b, p + i, sizeof b);
        bad += (b & mask) == mask;
    }
    return bad;
}

/* dst (nb, cols, rows) = src (nb, rows, cols) transposed, in cache-sized tiles. */
void SFX(scan_transpose)(const real *src, real *dst, int64_t nb, int64_t rows, int64_t cols) {
    const int64_t T = 32;
    for (int64_t b = 0; b < nb; b++) {
        const real *s = src + b * rows * cols;
        real *d = dst + b * rows * cols;
        for (int64_t r0 = 0; r0 < rows; r0 += T)
            for (int64_t c0 = 0; c0 < cols; c0 += T) {
                const int64_t r1 = r0 + T < rows ? r0 + T : rows, c1 = c0 + T < cols ? c0 + T : cols;
                for (int64_t r = r0; r < r1; r++)
                    for (int64_t c = c0; c < c1; c++) d[c * rows + r] = s[r * cols + c];
            }
    }
}
