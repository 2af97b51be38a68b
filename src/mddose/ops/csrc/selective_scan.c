/*
 * Fused selective scan (Mamba S6) for the CPU: forward and backward, float32 or float64.
 *
 * Plain C (no torch headers) so it compiles in well under a second; built lazily by
 * mddose/ops/scan_cpu.py with the system C compiler and loaded with ctypes.
 * Compile with -DSCAN_DOUBLE for the float64 version (functions suffixed _f64, else _f32).
 *
 * Directions: the D channels are K directions of Dk = D / K channels each (K = 1: a plain scan).  Direction k
 * scans its channels [k Dk, (k+1) Dk) from position 0 to L-1, or from L-1 to 0 if rev[k] (rev may be NULL),
 * reading every input at the position it is at (no reversed copies).  The K directions' outputs are summed:
 *   out[b, c, l] = (sum_k x[b, k Dk + c, l]) * silu(z[b, c, l])      c < Dk
 * (with K = 1 this is the usual per-channel output).
 *
 * Layouts (row-major):
 *   u, delta, du, ddelta : (Bt, D, L) contiguous
 *   out, xpre, dout, dz  : (Bt, Dk, L) contiguous   (xpre: sum of the directions' outputs before the gate)
 *   z                    : (Bt, Dk, L) with element strides zs[0..2] (any view, e.g. a slice of in_proj's output)
 *   A, dA (per batch)    : (D, N) / (Bt, D, N)
 *   Bm, Cm               : (Bt, G, L, N) with element strides bs[0..2] / cs[0..2] for (Bt, G, L); N contiguous
 *   dB, dC               : (Bt, G, L, N) contiguous -- zeroed by scan_bwd
 *   Dv, dbias         : (D,)            ; dD, ddbias: (Bt, D) (summed over batch by the caller)
 *   ckpt              : (Bt, D, nchunks, N), state h at the END of each chunk of `chunk` steps
 *                       (ckpt[..., nchunks-1, :] is the last state h_L)
 *   dlast             : (Bt, D, N) gradient of the last state, or NULL
 *
 * Recurrence (in scan order): dt_l = softplus?(delta_l + bias); h_l = exp(dt_l A) * h_{l-1} + dt_l u_l B_l;
 *             x_l = <C_l, h_l> + D u_l; out_l = x_l * silu(z_l) (if z).
 * The (Bt, D, L, N) state is never stored: the backward recomputes each chunk's states from its
 * checkpoint into a per-thread (chunk+1, N) buffer and runs the reverse recurrence
 *             dh_l = C_l dy_l + exp(dt_{l+1} A) dh_{l+1}.
 * Parallel over (batch, output channel) rows with POSIX threads (created per call, rows claimed in blocks
 * from an atomic counter; a row runs all K directions of its channel, so the summed output needs no
 * locking); dB/dC are accumulated in per-thread, per-direction (L, N) buffers and added to the
 * output (under a mutex) whenever the thread's (batch, group) of that direction changes.  Inner loops over N are
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
#define MAXK 8     /* most directions in one call */
#define ALIGN 64

static void *alloc_zero(size_t n_real) {
    size_t bytes = ((n_real * sizeof(real) + ALIGN - 1) / ALIGN) * ALIGN;
    void *p = aligned_alloc(ALIGN, bytes > 0 ? bytes : ALIGN);
    if (p) memset(p, 0, bytes);
    return p;
}

int SFX(scan_max_state)(void) { return MAXN; }
int SFX(scan_max_directions)(void) { return MAXK; }

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
    const signed char *rev;   /* K flags or NULL */
    int softplus;
    int64_t nb, dim, L, N, G, chunk, nch, dpg, K, dk;
    int64_t bs[3], cs[3], zs[3];
    int64_t next, block;   /* next unclaimed row (atomic), rows claimed at a time */
    int err;               /* set (atomically) by a worker that could not allocate its buffers */
    pthread_mutex_t mu;    /* guards the dB / dC flushes */
} job_t;

/* Claim the next block of rows [*r0, *r1); 0 when none is left. */
static int claim(job_t *j, int64_t *r0, int64_t *r1) {
    const int64_t rows = j->nb * j->dk;
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
    const int64_t rows = j->nb * j->dk;
    if (nthreads < 1) nthreads = 1;
    if (nthreads > 256) nthreads = 256;
    if (nthreads > rows) nthreads = (int)rows;
    if (rows * j->K * j->L * j->N < 65536) nthreads = 1;   /* tiny problem: thread start-up would dominate */
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
    const int64_t L = j->L, N = j->N, dim = j->dim, chunk = j->chunk, K = j->K, Dk = j->dk;
    real *dt = alloc_zero((size_t)L);
    real h[MAXN] __attribute__((aligned(ALIGN)));
    int64_t r0, r1;
    if (!dt) { set_err(j, 2); return NULL; }
    while (claim(j, &r0, &r1)) {
        for (int64_t r = r0; r < r1; r++) {
            const int64_t b = r / Dk, c = r % Dk;
            real *outr = j->out + r * L;
            for (int64_t k = 0; k < K; k++) {
                const int64_t d = k * Dk + c, bd = b * dim + d, g = d / j->dpg;
                const int rv = j->rev ? j->rev[k] != 0 : 0;
                const real *ur = j->u + bd * L, *Ad = j->A + d * N;
                const real *Bb = j->Bm + b * j->bs[0] + g * j->bs[1], *Cb = j->Cm + b * j->cs[0] + g * j->cs[1];
                const int64_t bsl = j->bs[2], csl = j->cs[2];
                const real Dd = j->Dv ? j->Dv[d] : (real)0;
                real *ck = j->ckpt + bd * j->nch * N;
                compute_dt(j->delta + bd * L, j->dbias ? j->dbias[d] : (real)0, j->softplus, L, dt, NULL);
                for (int64_t n = 0; n < N; n++) h[n] = 0;
                for (int64_t i = 0; i < L; i++) {
                    const int64_t l = rv ? L - 1 - i : i;
                    const real dtl = dt[l], dtu = dtl * ur[l];
                    const real *Bl = Bb + l * bsl, *Cl = Cb + l * csl;
                    real y = 0;
#pragma omp simd reduction(+ : y) aligned(h : ALIGN)
                    for (int64_t n = 0; n < N; n++) {
                        real hn = EXP(dtl * Ad[n]) * h[n] + dtu * Bl[n];
                        h[n] = hn;
                        y += Cl[n] * hn;
                    }
                    y += Dd * ur[l];
                    outr[l] = k == 0 ? y : outr[l] + y;
                    if ((i + 1) % chunk == 0 || i == L - 1) memcpy(ck + (i / chunk) * N, h, N * sizeof(real));
                }
            }
            if (j->z) {
                const real *zr = j->z + b * j->zs[0] + c * j->zs[1];
                const int64_t zl = j->zs[2];
                real *xr = j->xpre ? j->xpre + r * L : NULL;
                for (int64_t l = 0; l < L; l++) {
                    const real x = outr[l], zz = zr[l * zl];
                    if (xr) xr[l] = x;
                    outr[l] = x * zz * sigmoid_(zz);
                }
            }
        }
    }
    free(dt);
    return NULL;
}

static int init_job(job_t *j, int64_t nb, int64_t dim, int64_t L, int64_t N, int64_t G, int64_t chunk,
                    int64_t K, const signed char *rev, const int64_t *bs, const int64_t *cs, const int64_t *zs) {
    if (N > MAXN || N < 1 || L < 1 || chunk < 1 || G < 1 || dim % G || K < 1 || dim % K) return 1;
    j->nb = nb; j->dim = dim; j->L = L; j->N = N; j->G = G; j->chunk = chunk;
    j->K = K; j->dk = dim / K; j->rev = rev;
    for (int i = 0; i < 3; i++) { j->bs[i] = bs[i]; j->cs[i] = cs[i]; j->zs[i] = zs ? zs[i] : 0; }
    j->nch = (L + chunk - 1) / chunk;
    j->dpg = dim / G;
    j->err = 0;
    return 0;
}

int SFX(scan_fwd)(const real *u, const real *delta, const real *A, const real *Bm, const real *Cm,
                  const real *Dv, const real *z, const real *dbias, int softplus,
                  int64_t nb, int64_t dim, int64_t L, int64_t N, int64_t G, int64_t chunk,
                  int64_t K, const signed char *rev, const int64_t *bs, const int64_t *cs, const int64_t *zs,
                  real *out, real *xpre, real *ckpt, int nthreads) {
    job_t j;
    memset(&j, 0, sizeof j);
    if (init_job(&j, nb, dim, L, N, G, chunk, K, rev, bs, cs, zs)) return 1;
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
    const int64_t L = j->L, N = j->N, dim = j->dim, chunk = j->chunk, nch = j->nch, K = j->K, Dk = j->dk;
    real *dt = alloc_zero((size_t)L), *sig = alloc_zero((size_t)L), *dy = alloc_zero((size_t)L);
    real *hbuf = alloc_zero((size_t)(chunk + 1) * N), *abuf = alloc_zero((size_t)chunk * N);
    real *accB[MAXK], *accC[MAXK];
    int64_t cur[MAXK];   /* (b * G + g) of the rows accumulated in accB[k] / accC[k], -1 for none */
    real dhc[MAXN] __attribute__((aligned(ALIGN)));
    real dAacc[MAXN] __attribute__((aligned(ALIGN)));
    int64_t r0, r1;
    int ok = dt && sig && dy && hbuf && abuf;
    for (int64_t k = 0; k < K; k++) {
        accB[k] = alloc_zero((size_t)L * N);
        accC[k] = alloc_zero((size_t)L * N);
        cur[k] = -1;
        ok = ok && accB[k] && accC[k];
    }
    if (!ok) {
        set_err(j, 2);
        goto done;
    }
    while (claim(j, &r0, &r1)) {
        for (int64_t r = r0; r < r1; r++) {
            const int64_t b = r / Dk, c = r % Dk;
            const real *dor = j->dout + r * L;
            /* gate: dy = dout * silu(z) (shared by the K directions), dz = dout * x * silu'(z) */
            if (j->z) {
                const real *zr = j->z + b * j->zs[0] + c * j->zs[1], *xr = j->xpre_in + r * L;
                const int64_t zl = j->zs[2];
                real *dzr = j->dz + r * L;
                for (int64_t l = 0; l < L; l++) {
                    const real zz = zr[l * zl], s = sigmoid_(zz);
                    dy[l] = dor[l] * zz * s;
                    dzr[l] = dor[l] * xr[l] * s * ((real)1 + zz * ((real)1 - s));
                }
            } else {
                memcpy(dy, dor, (size_t)L * sizeof(real));
            }
            for (int64_t k = 0; k < K; k++) {
                const int64_t d = k * Dk + c, bd = b * dim + d, g = d / j->dpg, bg = b * j->G + g;
                const int rv = j->rev ? j->rev[k] != 0 : 0;
                if (bg != cur[k]) {
                    if (cur[k] >= 0) {
                        flush_acc(j, j->dB + cur[k] * L * N, accB[k], L * N);
                        flush_acc(j, j->dC + cur[k] * L * N, accC[k], L * N);
                    }
                    cur[k] = bg;
                }
                const real *ur = j->u + bd * L, *Ad = j->A + d * N;
                const real *Bb = j->Bm + b * j->bs[0] + g * j->bs[1], *Cb = j->Cm + b * j->cs[0] + g * j->cs[1];
                const int64_t bsl = j->bs[2], csl = j->cs[2];
                const real *ck = j->ckpt_in + bd * nch * N;
                real *dur = j->du + bd * L, *ddr = j->ddelta + bd * L, *aBk = accB[k], *aCk = accC[k];
                const real Dd = j->Dv ? j->Dv[d] : (real)0;
                compute_dt(j->delta + bd * L, j->dbias ? j->dbias[d] : (real)0, j->softplus, L, dt, sig);
                real dDs = 0;
#pragma omp simd reduction(+ : dDs)
                for (int64_t l = 0; l < L; l++) {
                    dDs += dy[l] * ur[l];
                    dur[l] = Dd * dy[l];
                }
                for (int64_t n = 0; n < N; n++) {
                    dhc[n] = j->dlast ? j->dlast[bd * N + n] : (real)0;
                    dAacc[n] = 0;
                }
                for (int64_t ci = nch - 1; ci >= 0; ci--) {
                    const int64_t i0 = ci * chunk, len = (i0 + chunk < L ? chunk : L - i0);
                    /* recompute the chunk's states from the previous checkpoint (steps i0 .. i0+len-1) */
                    if (ci > 0) memcpy(hbuf, ck + (ci - 1) * N, N * sizeof(real));
                    else memset(hbuf, 0, N * sizeof(real));
                    for (int64_t i = 0; i < len; i++) {
                        const int64_t l = rv ? L - 1 - (i0 + i) : i0 + i;
                        const real dtl = dt[l], dtu = dtl * ur[l];
                        const real *Bl = Bb + l * bsl, *hp = hbuf + i * N;
                        real *hn = hbuf + (i + 1) * N, *an = abuf + i * N;
#pragma omp simd
                        for (int64_t n = 0; n < N; n++) {
                            const real a = EXP(dtl * Ad[n]);
                            an[n] = a;
                            hn[n] = a * hp[n] + dtu * Bl[n];
                        }
                    }
                    /* reverse recurrence over the chunk: dh_i = C_i dy_i + exp(dt_{i+1} A) dh_{i+1} */
                    for (int64_t i = len - 1; i >= 0; i--) {
                        const int64_t l = rv ? L - 1 - (i0 + i) : i0 + i;
                        const real dtl = dt[l], ul = ur[l], dyl = dy[l], dtu = dtl * ul;
                        const real *Bl = Bb + l * bsl, *Cl = Cb + l * csl, *hp = hbuf + i * N;
                        const real *hc = hbuf + (i + 1) * N, *an = abuf + i * N;
                        real *aB = aBk + l * N, *aC = aCk + l * N;
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
    }
    for (int64_t k = 0; k < K; k++) {
        if (cur[k] >= 0) {
            flush_acc(j, j->dB + cur[k] * L * N, accB[k], L * N);
            flush_acc(j, j->dC + cur[k] * L * N, accC[k], L * N);
        }
    }
done:
    free(dt); free(sig); free(dy); free(hbuf); free(abuf);
    for (int64_t k = 0; k < K; k++) { free(accB[k]); free(accC[k]); }
    return NULL;
}

int SFX(scan_bwd)(const real *u, const real *delta, const real *A, const real *Bm, const real *Cm,
                  const real *Dv, const real *z, const real *dbias, int softplus,
                  int64_t nb, int64_t dim, int64_t L, int64_t N, int64_t G, int64_t chunk,
                  int64_t K, const signed char *rev, const int64_t *bs, const int64_t *cs, const int64_t *zs,
                  const real *xpre, const real *ckpt, const real *dout, const real *dlast,
                  real *du, real *ddelta, real *dA, real *dB, real *dC, real *dD, real *dz,
                  real *ddbias, int nthreads) {
    job_t j;
    memset(&j, 0, sizeof j);
    if (init_job(&j, nb, dim, L, N, G, chunk, K, rev, bs, cs, zs) || (z && !xpre) || K > MAXK) return 1;
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
