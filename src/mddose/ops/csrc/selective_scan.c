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
 * checkpoint into a per-thread (chunk+1, N, VW) buffer and runs the reverse recurrence
 *             dh_l = C_l dy_l + exp(dt_{l+1} A) dh_{l+1}.
 * Vectorised over channels: a worker takes a block of VW (= 64 bytes of reals: 16 float / 8 double)
 * consecutive output channels of one batch element, copies their dt / u rows into (L, VW) tiles (lane w =
 * channel), and every inner loop runs over the VW lanes (no horizontal sums in the forward; two per state
 * element in the backward, for dB / dC, which are shared by the block's channels).  The float exp is an
 * inlined Cody-Waite + degree-7 polynomial (about 1 ulp; fast_expf) instead of a libmvec call.
 * Parallel over (batch, channel block) rows with POSIX threads (created per call, rows claimed in chunks
 * from an atomic counter; a row runs all K directions of its channels, so the summed output needs no
 * locking); dB/dC are accumulated in per-thread, per-direction (L, N) buffers and added to the
 * output (under a mutex) whenever the thread's (batch, group) of that direction changes (blocks never
 * straddle a group).  Compile with -fopenmp-simd (no OpenMP runtime) for the `omp simd` loops.
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

#ifdef SCAN_DOUBLE
#define FEXP exp
#else
/* exp(x) for float, about 1 ulp: x = k ln2 + r (Cody-Waite, |r| <= ln2 / 2), exp(r) by its degree-7 Taylor
 * polynomial, times 2^k built in the exponent bits; x clamped to [-87.3, 88.3] (exp(-87.3) ~ 1e-38). */
static inline float fast_expf(float x) {
    x = x < -87.3f ? -87.3f : (x > 88.3f ? 88.3f : x);
    const float k = __builtin_roundf(x * 1.44269504f);
    float r = x - k * 0.693145752f;          /* ln2 split: hi (exact in float) + lo */
    r = r - k * 1.42860677e-6f;
    float p = 1.98412698e-4f;
    p = p * r + 1.38888889e-3f;
    p = p * r + 8.33333333e-3f;
    p = p * r + 4.16666667e-2f;
    p = p * r + 1.66666667e-1f;
    p = p * r + 0.5f;
    p = p * r + 1.0f;
    p = p * r + 1.0f;
    union { float f; int32_t i; } s;
    s.i = ((int32_t)k + 127) << 23;
    return p * s.f;
}
#define FEXP fast_expf
#endif

/* softplus(x) = max(x, 0) + log1p(exp(-|x|)); log1p(e) = 2 atanh(s), s = e / (2 + e) in (0, 1/3], by its series
 * to s^15 (relative error < 2e-9): vectorisable, no libm calls. */
static inline real softplus_(real x) {
    const real ax = x < 0 ? -x : x, e = FEXP(-ax), relu = x > 0 ? x : 0;
#ifdef SCAN_DOUBLE
    return relu + LOG1P(e);   /* float64: the library's log1p (the series is for float accuracy) */
#else
    const float s = e / (2.0f + e), s2 = s * s;
    float p = 2.0f / 15;
    p = p * s2 + 2.0f / 13;
    p = p * s2 + 2.0f / 11;
    p = p * s2 + 2.0f / 9;
    p = p * s2 + 2.0f / 7;
    p = p * s2 + 2.0f / 5;
    p = p * s2 + 2.0f / 3;
    p = p * s2 + 2.0f;
    return relu + p * s;
#endif
}

#define MAXN 256   /* largest state size supported (mamba-ssm supports up to 256 as well) */
#define MAXK 8     /* most directions in one call */
#define ALIGN 64
#define VW (ALIGN / (int)sizeof(real))   /* channels per block: one 64-byte vector */
#define TB 64      /* sequence steps per block of a tile transposition (a 4 KB float block stays in L1) */

static void *alloc_zero(size_t n_real) {
    size_t bytes = ((n_real * sizeof(real) + ALIGN - 1) / ALIGN) * ALIGN;
    void *p = aligned_alloc(ALIGN, bytes > 0 ? bytes : ALIGN);
    if (p) memset(p, 0, bytes);
    return p;
}

int SFX(scan_max_state)(void) { return MAXN; }
int SFX(scan_max_directions)(void) { return MAXK; }
/* 1 when the workers run on the OpenMP pool, 0 for POSIX threads (see run_threads). */
int SFX(scan_uses_openmp)(void) {
#ifdef _OPENMP
    return 1;
#else
    return 0;
#endif
}

/* dt = delta + bias, through softplus when asked (the forward's and the backward's tiles). */
static void compute_dt(const real *restrict delta, real bias, int softplus, int64_t L, real *restrict dt) {
    if (!softplus) {
#pragma omp simd
        for (int64_t l = 0; l < L; l++) dt[l] = delta[l] + bias;
        return;
    }
#pragma omp simd
    for (int64_t l = 0; l < L; l++) dt[l] = softplus_(delta[l] + bias);
}

/* d dt / d delta: sigmoid(delta + bias) under softplus, else 1 (the backward's last step; dt itself is not
 * recomputed there). */
static void compute_dt_grad(const real *restrict delta, real bias, int softplus, int64_t L, real *restrict sig) {
    if (!softplus) {
        for (int64_t l = 0; l < L; l++) sig[l] = (real)1;
        return;
    }
#pragma omp simd
    for (int64_t l = 0; l < L; l++) {
        real x = delta[l] + bias;
        x = x < (real)-80 ? (real)-80 : x;
        sig[l] = (real)1 / ((real)1 + FEXP(-x));
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
    int64_t nblk;          /* channel blocks per batch element */
    int64_t *blk;          /* nblk + 1 block starts (output channels c in [blk[i], blk[i+1])) */
    int64_t next, block;   /* next unclaimed row (atomic), rows claimed at a time */
    int err;               /* set (atomically) by a worker that could not allocate its buffers */
    pthread_mutex_t mu;    /* guards the dB / dC flushes */
} job_t;

/* Claim the next block of rows [*r0, *r1) (a row = one batch element's channel block); 0 when none is left. */
static int claim(job_t *j, int64_t *r0, int64_t *r1) {
    const int64_t rows = j->nb * j->nblk;
    *r0 = __atomic_fetch_add(&j->next, j->block, __ATOMIC_RELAXED);
    if (*r0 >= rows) return 0;
    *r1 = *r0 + j->block < rows ? *r0 + j->block : rows;
    return 1;
}

static void set_err(job_t *j, int e) { __atomic_store_n(&j->err, e, __ATOMIC_RELAXED); }

/* Run worker(job) on nthreads threads (the caller is one of them) and join them.  Rows are handed
 * out dynamically in blocks of ~1/4 of a thread's share, so a thread descheduled on a busy machine
 * does not hold up the others.  Built with OpenMP, the threads are those of the process's OpenMP pool —
 * PyTorch's own on Linux (same libgomp): its workers spin for a while after each PyTorch op, and separate
 * threads of ours would wait for a core they hold.  Otherwise POSIX threads, started per call. */
static void run_threads(void *(*worker)(void *), job_t *j, int nthreads) {
    const int64_t rows = j->nb * j->nblk;
    if (nthreads < 1) nthreads = 1;
    if (nthreads > 256) nthreads = 256;
    if (nthreads > rows) nthreads = (int)rows;
    if (j->nb * j->dim * j->L * j->N < 65536) nthreads = 1;   /* tiny problem: thread start-up would dominate */
    j->next = 0;
    j->block = rows / (4 * (int64_t)nthreads) > 0 ? rows / (4 * (int64_t)nthreads) : 1;
    if (nthreads == 1) {
        worker(j);
        return;
    }
#ifdef _OPENMP
#pragma omp parallel num_threads(nthreads)
    worker(j);
#else
    pthread_t th[256];
    int started = 0;
    for (int i = 1; i < nthreads; i++) {
        if (pthread_create(&th[started], NULL, worker, j) != 0) break;   /* fewer threads still finish */
        started++;
    }
    worker(j);
    for (int i = 0; i < started; i++) pthread_join(th[i], NULL);
#endif
}

/* Split the Dk output channels into blocks of at most VW channels that stay inside one group of B/C in
 * every direction (so a block's dB/dC go to one (batch, group) per direction). */
static int make_blocks(job_t *j) {
    j->blk = (int64_t *)malloc((size_t)(j->dk + 1) * sizeof(int64_t));
    if (!j->blk) return 2;
    int64_t n = 0, c = 0;
    while (c < j->dk) {
        int64_t end = c + VW < j->dk ? c + VW : j->dk;
        for (int64_t k = 0; k < j->K; k++) {
            const int64_t d = k * j->dk + c, bound = (d / j->dpg + 1) * j->dpg - k * j->dk;
            if (bound < end) end = bound;
        }
        j->blk[n++] = c;
        c = end;
    }
    j->blk[n] = j->dk;
    j->nblk = n;
    return 0;
}

/* The per-thread (L, VW) tiles of one direction's channels d0 .. d0+nw-1 of batch element b: dtT = dt (after
 * bias / softplus), uT = u, lane w = channel d0 + w; lanes nw .. VW-1 are zero (they then stay zero). */
static void load_tiles(const job_t *j, int64_t b, int64_t d0, int64_t nw, real *restrict line,
                       real *restrict dtT, real *restrict uT) {
    const int64_t L = j->L;
    if (nw < VW) {
        memset(dtT, 0, (size_t)(L * VW) * sizeof(real));
        memset(uT, 0, (size_t)(L * VW) * sizeof(real));
    }
    for (int64_t l0 = 0; l0 < L; l0 += TB) {
        const int64_t nl = l0 + TB < L ? TB : L - l0;
        for (int64_t w = 0; w < nw; w++) {
            const int64_t bd = b * j->dim + d0 + w;
            const real *ur = j->u + bd * L + l0;
            compute_dt(j->delta + bd * L + l0, j->dbias ? j->dbias[d0 + w] : (real)0, j->softplus, nl, line);
            for (int64_t i = 0; i < nl; i++) {
                dtT[(l0 + i) * VW + w] = line[i];
                uT[(l0 + i) * VW + w] = ur[i];
            }
        }
    }
}

/* AT (N, VW) = A[d0 + w, n] and Dvec (VW) = D[d0 + w], zero in unused lanes. */
static void load_params(const job_t *j, int64_t d0, int64_t nw, real *restrict AT, real *restrict Dvec) {
    for (int64_t n = 0; n < j->N; n++)
        for (int64_t w = 0; w < VW; w++) AT[n * VW + w] = w < nw ? j->A[(d0 + w) * j->N + n] : (real)0;
    for (int64_t w = 0; w < VW; w++) Dvec[w] = w < nw && j->Dv ? j->Dv[d0 + w] : (real)0;
}

/* One direction's forward over the (L, VW) tiles: h (N, VW) from zero, yT += y, checkpoints of h every chunk steps.
 * Always inlined, so that a constant N becomes the state loop's trip count. */
static inline __attribute__((always_inline)) void scan_tile_fwd(
        job_t *j, const int64_t N, int64_t b, int64_t d0, int64_t nw, int rv, const real *Bb, const real *Cb,
        const real *restrict dtT, const real *restrict uT, const real *restrict AT, const real *restrict Dvec,
        real *restrict h, real *restrict yT) {
    const int64_t L = j->L, chunk = j->chunk, nch = j->nch, bsl = j->bs[2], csl = j->cs[2];
    memset(h, 0, (size_t)(N * VW) * sizeof(real));
    int64_t ci = 0, cnt = 0;
    for (int64_t i = 0; i < L; i++) {
        const int64_t l = rv ? L - 1 - i : i;
        const real *dv = dtT + l * VW, *uv = uT + l * VW, *Bl = Bb + l * bsl, *Cl = Cb + l * csl;
        real *yv = yT + l * VW;
        real dtu[VW] __attribute__((aligned(ALIGN)));
        real y[VW] __attribute__((aligned(ALIGN)));
#pragma omp simd aligned(dv, uv, dtu, y, Dvec : ALIGN)
        for (int64_t w = 0; w < VW; w++) {
            dtu[w] = dv[w] * uv[w];
            y[w] = Dvec[w] * uv[w];
        }
        for (int64_t n = 0; n < N; n++) {
            const real bn = Bl[n], cn = Cl[n];
            real *hn = h + n * VW;
            const real *An = AT + n * VW;
#pragma omp simd aligned(dv, dtu, y, hn, An : ALIGN)
            for (int64_t w = 0; w < VW; w++) {
                const real hv = FEXP(dv[w] * An[w]) * hn[w] + dtu[w] * bn;
                hn[w] = hv;
                y[w] += cn * hv;
            }
        }
#pragma omp simd aligned(yv, y : ALIGN)
        for (int64_t w = 0; w < VW; w++) yv[w] += y[w];
        if (++cnt == chunk || i == L - 1) {   /* state at the end of chunk ci */
            for (int64_t w = 0; w < nw; w++) {
                real *ck = j->ckpt + ((b * j->dim + d0 + w) * nch + ci) * N;
                for (int64_t n = 0; n < N; n++) ck[n] = h[n * VW + w];
            }
            ci++;
            cnt = 0;
        }
    }
}

static void *fwd_worker(void *arg) {
    job_t *j = (job_t *)arg;
    const int64_t L = j->L, N = j->N, K = j->K, Dk = j->dk;
    real *line = alloc_zero((size_t)L), *dtT = alloc_zero((size_t)(L * VW)), *uT = alloc_zero((size_t)(L * VW));
    real *yT = alloc_zero((size_t)(L * VW));
    real h[MAXN * VW] __attribute__((aligned(ALIGN)));
    real AT[MAXN * VW] __attribute__((aligned(ALIGN)));
    real Dvec[VW] __attribute__((aligned(ALIGN)));
    int64_t r0, r1;
    if (!line || !dtT || !uT || !yT) { set_err(j, 2); goto done; }
    while (claim(j, &r0, &r1)) {
        for (int64_t r = r0; r < r1; r++) {
            const int64_t b = r / j->nblk, c0 = j->blk[r % j->nblk], nw = j->blk[r % j->nblk + 1] - c0;
            memset(yT, 0, (size_t)(L * VW) * sizeof(real));
            for (int64_t k = 0; k < K; k++) {
                const int64_t d0 = k * Dk + c0, g = d0 / j->dpg;
                const int rv = j->rev ? j->rev[k] != 0 : 0;
                const real *Bb = j->Bm + b * j->bs[0] + g * j->bs[1], *Cb = j->Cm + b * j->cs[0] + g * j->cs[1];
                load_tiles(j, b, d0, nw, line, dtT, uT);
                load_params(j, d0, nw, AT, Dvec);
                if (N == 16)   /* the usual state size: a compile-time trip count for the state loop */
                    scan_tile_fwd(j, 16, b, d0, nw, rv, Bb, Cb, dtT, uT, AT, Dvec, h, yT);
                else
                    scan_tile_fwd(j, N, b, d0, nw, rv, Bb, Cb, dtT, uT, AT, Dvec, h, yT);
            }
            for (int64_t l0 = 0; l0 < L; l0 += TB)   /* (L, VW) tile → output rows, gated */
                for (int64_t w = 0; w < nw; w++) {
                    const int64_t c = c0 + w, orow = b * Dk + c, l1 = l0 + TB < L ? l0 + TB : L;
                    real *outr = j->out + orow * L, *xr = j->xpre ? j->xpre + orow * L : NULL;
                    if (j->z) {
                        const real *zr = j->z + b * j->zs[0] + c * j->zs[1];
                        const int64_t zl = j->zs[2];
                        for (int64_t l = l0; l < l1; l++) {
                            const real x = yT[l * VW + w], zz = zr[l * zl];
                            if (xr) xr[l] = x;
                            outr[l] = x * zz * sigmoid_(zz);
                        }
                    } else {
                        for (int64_t l = l0; l < l1; l++) outr[l] = yT[l * VW + w];
                    }
                }
        }
    }
done:
    free(line); free(dtT); free(uT); free(yT);
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
    return make_blocks(j);
}

int SFX(scan_fwd)(const real *u, const real *delta, const real *A, const real *Bm, const real *Cm,
                  const real *Dv, const real *z, const real *dbias, int softplus,
                  int64_t nb, int64_t dim, int64_t L, int64_t N, int64_t G, int64_t chunk,
                  int64_t K, const signed char *rev, const int64_t *bs, const int64_t *cs, const int64_t *zs,
                  real *out, real *xpre, real *ckpt, int nthreads) {
    job_t j;
    memset(&j, 0, sizeof j);
    int e = init_job(&j, nb, dim, L, N, G, chunk, K, rev, bs, cs, zs);
    if (e) { free(j.blk); return e; }
    j.u = u; j.delta = delta; j.A = A; j.Bm = Bm; j.Cm = Cm; j.Dv = Dv; j.z = z; j.dbias = dbias;
    j.softplus = softplus; j.out = out; j.xpre = xpre; j.ckpt = ckpt;
    run_threads(fwd_worker, &j, nthreads);
    free(j.blk);
    return j.err;
}

#include "selective_scan_bwd.inc"

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
