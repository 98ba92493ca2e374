/* Exact matmuls on GGML-style block codes with float32 activations: y = x W^T for a quantized
 * W [N, K], and W itself in float32; and the same product for a float32 W (F32), which at batch 1
 * streams the weight faster than MKL's sgemv on small matrices (docs/runtimes.md). Built and loaded by quantize/native.py (plain C, no torch
 * headers, called through ctypes); its docstring says why this exists.
 *
 * Operands, as quantize/modules.py holds them:
 *   codes   q8_0: int8 [N, K];  q4_0/q4_1: uint8 [N, K/2] in GGML's nibble order (byte j of a
 *           32-value block holds value j low, value j+16 high): the checkpoint's own tensors
 *   scales  float32 [N, K/g];  mins float32 [N, K/g] (q4_1 only, else NULL)
 *   x       float32 [M, K], rows contiguous;  y float32 [M, N]
 *
 *   y[m,n] = sum_b d[n,b] * sum_i c[n,b,i] x[m,b*g+i]  (+ mins[n,b] * sum_i x[m,b*g+i] for q4_1)
 *
 * with c the centred code (q4_0: code - 8). Each group's dot product is summed exactly as floats
 * (integer codes converted, never the activations quantized), so the result differs from
 * dequantize-then-BLAS only in float rounding order. With AVX2 and FMA (any x86-64 of the last
 * decade) or AVX-512 the loops are intrinsics, because gcc 12 vectorizes neither the plain loops
 * nor GNU vector-extension conversions from int8 to float well (it scalarizes the latter);
 * elsewhere a plain C loop over fixed-width arrays, vectorized as well as the compiler can.
 */
#include <stdint.h>
#include <stdlib.h>

#include "kernels.h"
#ifdef _OPENMP
#include <omp.h>
#endif

#define BLOCK 32 /* GGML's block: every group is 1, 2 or 4 of them */

#if defined(__AVX512F__) || (defined(__AVX2__) && defined(__FMA__))
#include <immintrin.h>

#ifdef __AVX512F__
#define KERNEL_ISA "avx512"
#define LANES 16
typedef __m512 vec;
#define vzero _mm512_setzero_ps
#define vset1 _mm512_set1_ps
#define vload _mm512_loadu_ps
#define vstore _mm512_storeu_ps
#define vadd _mm512_add_ps
#define vfmadd _mm512_fmadd_ps
#define hsum _mm512_reduce_add_ps

/* One block's 32 codes as floats, in order, centred (q4_0: minus 8): v[0] values 0..15, v[1] 16..31. */
static inline void decode(int fmt, const void *block, vec v[2]) {
    const __m128i *p = block;
    if (fmt == Q8_0) {
        v[0] = _mm512_cvtepi32_ps(_mm512_cvtepi8_epi32(_mm_loadu_si128(p)));
        v[1] = _mm512_cvtepi32_ps(_mm512_cvtepi8_epi32(_mm_loadu_si128(p + 1)));
    } else { /* each nibble picks its float, centred, from a 16-entry table: one permute, no convert */
        const float c = fmt == Q4_0 ? -8.0f : 0.0f;
        const __m512 table = _mm512_setr_ps(c, c + 1, c + 2, c + 3, c + 4, c + 5, c + 6, c + 7, c + 8, c + 9, c + 10,
                                            c + 11, c + 12, c + 13, c + 14, c + 15);
        __m512i q = _mm512_cvtepu8_epi32(_mm_loadu_si128(p));
        v[0] = _mm512_permutexvar_ps(q, table); /* vpermps reads the index's low 4 bits: the low nibble */
        v[1] = _mm512_permutexvar_ps(_mm512_srli_epi32(q, 4), table);
    }
}

#else
#define KERNEL_ISA "avx2+fma"
#define LANES 8
typedef __m256 vec;
#define vzero _mm256_setzero_ps
#define vset1 _mm256_set1_ps
#define vload _mm256_loadu_ps
#define vstore _mm256_storeu_ps
#define vadd _mm256_add_ps
#define vfmadd _mm256_fmadd_ps

static inline float hsum(__m256 v) {
    __m128 s = _mm_add_ps(_mm256_castps256_ps128(v), _mm256_extractf128_ps(v, 1));
    s = _mm_add_ps(s, _mm_movehl_ps(s, s));
    return _mm_cvtss_f32(_mm_add_ss(s, _mm_movehdup_ps(s)));
}

static inline __m256 cvt8(__m128i bytes) { /* the low 8 int8 lanes as floats */
    return _mm256_cvtepi32_ps(_mm256_cvtepi8_epi32(bytes));
}

/* One block's 32 codes as floats, in order, centred: v[j] holds values 8j..8j+7. */
static inline void decode(int fmt, const void *block, vec v[4]) {
    if (fmt == Q8_0) {
        for (int j = 0; j < 4; j++)
            v[j] = cvt8(_mm_loadl_epi64((const __m128i *)((const int8_t *)block + 8 * j)));
    } else {
        __m128i q = _mm_loadu_si128(block), mask = _mm_set1_epi8(15), centre = _mm_set1_epi8(fmt == Q4_0 ? 8 : 0);
        __m128i lo = _mm_sub_epi8(_mm_and_si128(q, mask), centre);
        __m128i hi = _mm_sub_epi8(_mm_and_si128(_mm_srli_epi16(q, 4), mask), centre);
        v[0] = cvt8(lo);
        v[1] = cvt8(_mm_unpackhi_epi64(lo, lo));
        v[2] = cvt8(hi);
        v[3] = cvt8(_mm_unpackhi_epi64(hi, hi));
    }
}
#endif

#define PER_BLOCK (BLOCK / LANES)

/* One output; G (the group size) is a literal at each call, so the block loop unrolls. Alternate
 * blocks use separate accumulators so that consecutive FMAs do not wait on each other, and a
 * group's sum is scaled into a running lane vector: one horizontal sum per output, not per group. */
static inline __attribute__((always_inline)) float dot_row(int fmt, const char *codes, const float *d,
                                                           const float *mn, const float *x, const float *xs,
                                                           long k, const int G) {
    const int block_bytes = fmt == Q8_0 ? BLOCK : BLOCK / 2;
    vec tot = vzero();
    float offset = 0.0f;
    for (long b = 0; b < k / G; b++) {
        vec acc[2 * PER_BLOCK], v[PER_BLOCK];
        for (int j = 0; j < 2 * PER_BLOCK; j++)
            acc[j] = vzero();
        for (int i = 0; i < G / BLOCK; i++) {
            decode(fmt, codes + (b * G / BLOCK + i) * block_bytes, v);
            for (int j = 0; j < PER_BLOCK; j++)
                acc[i % 2 * PER_BLOCK + j] = vfmadd(v[j], vload(x + b * G + i * BLOCK + j * LANES),
                                                    acc[i % 2 * PER_BLOCK + j]);
        }
        for (int j = 1; j < 2 * PER_BLOCK; j++)
            acc[0] = vadd(acc[0], acc[j]);
        tot = vfmadd(vset1(d[b]), acc[0], tot);
        if (fmt == Q4_1)
            offset += mn[b] * xs[b];
    }
    return hsum(tot) + offset;
}

/* Four consecutive outputs (rows r..r+3 of W, one row of x): each load of x serves four weight
 * rows, and each row's blocks chain into one accumulator, four chains in flight. */
static inline __attribute__((always_inline)) void dot_rows4(int fmt, const char *codes, long row_bytes,
                                                            const float *d, const float *mn, long nb,
                                                            const float *x, const float *xs, long k,
                                                            const int G, float *out) {
    const int block_bytes = fmt == Q8_0 ? BLOCK : BLOCK / 2;
    vec tot[4] = {vzero(), vzero(), vzero(), vzero()};
    float offset[4] = {0.0f, 0.0f, 0.0f, 0.0f};
    for (long b = 0; b < k / G; b++) {
        vec acc[4] = {vzero(), vzero(), vzero(), vzero()}, v[PER_BLOCK], xv[PER_BLOCK];
        for (int i = 0; i < G / BLOCK; i++) {
            for (int j = 0; j < PER_BLOCK; j++)
                xv[j] = vload(x + b * G + i * BLOCK + j * LANES);
            for (int r = 0; r < 4; r++) {
                decode(fmt, codes + r * row_bytes + (b * G / BLOCK + i) * block_bytes, v);
                for (int j = 0; j < PER_BLOCK; j++)
                    acc[r] = vfmadd(v[j], xv[j], acc[r]);
            }
        }
        for (int r = 0; r < 4; r++) {
            tot[r] = vfmadd(vset1(d[r * nb + b]), acc[r], tot[r]);
            if (fmt == Q4_1)
                offset[r] += mn[r * nb + b] * xs[b];
        }
    }
    for (int r = 0; r < 4; r++)
        out[r] = hsum(tot[r]) + offset[r];
}

/* One block of the float32 weight: d * c (+ m). */
static inline void dequant_block(int fmt, const char *codes, float d, float m, float *out) {
    vec v[PER_BLOCK];
    decode(fmt, codes, v);
    for (int j = 0; j < PER_BLOCK; j++)
        vstore(out + j * LANES, vfmadd(v[j], vset1(d), vset1(m)));
}

/* F32: output rows [lo, hi) for every row of x; four weight rows share each load of x. */
static void rows_f32(const float *w, const float *x, float *y, long m_rows, long n, long k, long lo, long hi) {
    long kv = k - k % LANES;
    for (long m = 0; m < m_rows; m++, x += k) {
        long r = lo;
        for (; r + 4 <= hi; r += 4) {
            const float *w0 = w + r * k, *w1 = w0 + k, *w2 = w1 + k, *w3 = w2 + k;
            vec a0 = vzero(), a1 = vzero(), a2 = vzero(), a3 = vzero();
            for (long i = 0; i < kv; i += LANES) {
                vec xv = vload(x + i);
                a0 = vfmadd(vload(w0 + i), xv, a0);
                a1 = vfmadd(vload(w1 + i), xv, a1);
                a2 = vfmadd(vload(w2 + i), xv, a2);
                a3 = vfmadd(vload(w3 + i), xv, a3);
            }
            float s[4] = {hsum(a0), hsum(a1), hsum(a2), hsum(a3)};
            for (long i = kv; i < k; i++)
                for (int j = 0; j < 4; j++)
                    s[j] += w[(r + j) * k + i] * x[i];
            for (int j = 0; j < 4; j++)
                y[m * n + r + j] = s[j];
        }
        for (; r < hi; r++) {
            vec a = vzero();
            for (long i = 0; i < kv; i += LANES)
                a = vfmadd(vload(w + r * k + i), vload(x + i), a);
            float t = hsum(a);
            for (long i = kv; i < k; i++)
                t += w[r * k + i] * x[i];
            y[m * n + r] = t;
        }
    }
}

#else
#define KERNEL_ISA "portable C"

/* Fixed-width loops over one block that the compiler's vectorizer can map onto its SIMD. */
static inline void decode(int fmt, const char *block, float v[BLOCK]) {
    if (fmt == Q8_0) {
        for (int i = 0; i < BLOCK; i++)
            v[i] = (float)(int8_t)block[i];
    } else {
        int centre = fmt == Q4_0 ? 8 : 0;
        for (int i = 0; i < BLOCK / 2; i++) {
            v[i] = (float)(((uint8_t)block[i] & 15) - centre);
            v[i + BLOCK / 2] = (float)(((uint8_t)block[i] >> 4) - centre);
        }
    }
}

static inline __attribute__((always_inline)) float dot_row(int fmt, const char *codes, const float *d,
                                                           const float *mn, const float *x, const float *xs,
                                                           long k, const int G) {
    const int block_bytes = fmt == Q8_0 ? BLOCK : BLOCK / 2;
    float tot[BLOCK] = {0}, offset = 0.0f, v[BLOCK];
    for (long b = 0; b < k / G; b++) {
        float acc[BLOCK] = {0};
        for (int i = 0; i < G / BLOCK; i++) {
            decode(fmt, codes + (b * G / BLOCK + i) * block_bytes, v);
            for (int j = 0; j < BLOCK; j++)
                acc[j] += v[j] * x[b * G + i * BLOCK + j];
        }
        for (int j = 0; j < BLOCK; j++)
            tot[j] += d[b] * acc[j];
        if (fmt == Q4_1)
            offset += mn[b] * xs[b];
    }
    float s = 0.0f;
    for (int j = 0; j < BLOCK; j++)
        s += tot[j];
    return s + offset;
}

static inline void dot_rows4(int fmt, const char *codes, long row_bytes, const float *d, const float *mn, long nb,
                             const float *x, const float *xs, long k, const int G, float *out) {
    for (int r = 0; r < 4; r++)
        out[r] = dot_row(fmt, codes + r * row_bytes, d + r * nb, fmt == Q4_1 ? mn + r * nb : 0, x, xs, k, G);
}

static inline void dequant_block(int fmt, const char *codes, float d, float m, float *out) {
    float v[BLOCK];
    decode(fmt, codes, v);
    for (int i = 0; i < BLOCK; i++)
        out[i] = v[i] * d + m;
}
static void rows_f32(const float *w, const float *x, float *y, long m_rows, long n, long k, long lo, long hi) {
    for (long m = 0; m < m_rows; m++)
        for (long r = lo; r < hi; r++) {
            float t = 0.0f;
            for (long i = 0; i < k; i++)
                t += w[r * k + i] * x[m * k + i];
            y[m * n + r] = t;
        }
}
#endif

/* Output rows [lo, hi) for every row of x, four at a time; each case is its own specialization,
 * so the format and group-size branches leave the inner loops. */
#define ROWS(FMT, G)                                                                                            \
    for (long m = 0; m < m_rows; m++) {                                                                         \
        const char *codes = (const char *)w->codes;                                                             \
        const float *mins = FMT == Q4_1 ? w->mins : 0, *sums = FMT == Q4_1 ? xs + m * nb : 0;                   \
        long r = lo;                                                                                            \
        for (; r + 4 <= hi; r += 4)                                                                             \
            dot_rows4(FMT, codes + r * row_bytes, row_bytes, w->scales + r * nb, mins ? mins + r * nb : 0, nb,  \
                      x + m * k, sums, k, G, y + m * n + r);                                                    \
        for (; r < hi; r++)                                                                                     \
            y[m * n + r] = dot_row(FMT, codes + r * row_bytes, w->scales + r * nb, mins ? mins + r * nb : 0,    \
                                   x + m * k, sums, k, G);                                                      \
    }

static void rows(const struct tl_matrix *w, const float *x, const float *xs, float *y, long m_rows, long lo,
                 long hi) {
    long n = w->n, k = w->k, nb = k / w->group, row_bytes = w->fmt == Q8_0 ? k : k / 2;
    switch (w->fmt * 4 + w->group / 64) { /* group / 64: 0 for 32, 1 for 64, 2 for 128 */
    case Q8_0 * 4 + 0: ROWS(Q8_0, 32); break;
    case Q8_0 * 4 + 1: ROWS(Q8_0, 64); break;
    case Q8_0 * 4 + 2: ROWS(Q8_0, 128); break;
    case Q4_0 * 4 + 0: ROWS(Q4_0, 32); break;
    case Q4_0 * 4 + 1: ROWS(Q4_0, 64); break;
    case Q4_0 * 4 + 2: ROWS(Q4_0, 128); break;
    case Q4_1 * 4 + 0: ROWS(Q4_1, 32); break;
    case Q4_1 * 4 + 1: ROWS(Q4_1, 64); break;
    case Q4_1 * 4 + 2: ROWS(Q4_1, 128); break;
    }
}

/* Below this many multiply-adds a call runs on the calling thread: waking another costs more. */
#define PARALLEL_MIN 65536

static int valid(const struct tl_matrix *w) {
    return (w->fmt == Q8_0 || w->fmt == Q4_0 || w->fmt == Q4_1) &&
           (w->group == 32 || w->group == 64 || w->group == 128) && w->k % w->group == 0 && w->n > 0;
}

/* y = x W^T for a float32 W; rows split over threads in multiples of four (rows_f32's step). */
static int matmul_f32(const struct tl_matrix *w, const float *x, float *y, long m_rows, int threads) {
#pragma omp parallel num_threads(threads) if (threads > 1 && w->n * w->k * m_rows >= PARALLEL_MIN)
    {
#ifdef _OPENMP
        long t = omp_get_thread_num(), nt = omp_get_num_threads();
#else
        long t = 0, nt = 1;
#endif
        long lo = (w->n * t / nt) & ~3L, hi = t == nt - 1 ? w->n : (w->n * (t + 1) / nt) & ~3L;
        rows_f32(w->codes, x, y, m_rows, w->n, w->k, lo, hi);
    }
    return 0;
}

const char *tl_isa(void) { return KERNEL_ISA; }

/* y [m_rows, n] = x [m_rows, k] W^T, output rows split over `threads`. Returns 0, -1 for a format
 * or group size this does not know, -2 when out of memory. */
int tl_matmul(const struct tl_matrix *w, const float *x, float *y, long m_rows, int threads) {
    if (w->fmt == F32)
        return w->n > 0 && w->k > 0 ? matmul_f32(w, x, y, m_rows, threads) : -1;
    if (!valid(w))
        return -1;
    if (m_rows <= 0)
        return 0;
    long k = w->k, nb = k / w->group;
    float *xs = 0; /* q4_1: the group sums of x that the minimums multiply, once per call */
    if (w->fmt == Q4_1) {
        if (!(xs = malloc(sizeof(float) * m_rows * nb)))
            return -2;
        for (long i = 0; i < m_rows * nb; i++) {
            float s = 0.0f;
            for (int j = 0; j < w->group; j++)
                s += x[i * w->group + j];
            xs[i] = s;
        }
    }
#pragma omp parallel num_threads(threads) if (threads > 1 && w->n * k * m_rows >= PARALLEL_MIN)
    {
#ifdef _OPENMP
        long t = omp_get_thread_num(), nt = omp_get_num_threads();
#else
        long t = 0, nt = 1;
#endif
        rows(w, x, xs, y, m_rows, w->n * t / nt, w->n * (t + 1) / nt);
    }
    free(xs);
    return 0;
}

/* out [n, k] = the float32 weight, d * c (+ m): what the multi-token path hands to BLAS. */
int tl_dequantize(const struct tl_matrix *w, float *out, int threads) {
    if (!valid(w))
        return -1;
    long n = w->n, k = w->k, nb = k / w->group, per_group = w->group / BLOCK;
    long block_bytes = w->fmt == Q8_0 ? BLOCK : BLOCK / 2;
#pragma omp parallel for num_threads(threads) if (threads > 1 && n * k >= PARALLEL_MIN) schedule(static)
    for (long r = 0; r < n; r++)
        for (long b = 0; b < k / BLOCK; b++) {
            long group = r * nb + b / per_group;
            dequant_block(w->fmt, (const char *)w->codes + (r * k / BLOCK + b) * block_bytes, w->scales[group],
                          w->fmt == Q4_1 ? w->mins[group] : 0.0f, out + r * k + b * BLOCK);
        }
    return 0;
}
