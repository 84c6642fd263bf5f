// The skinny GEMM (decode path) with AVX-512 intrinsics: the portable body's sums in kernels.c,
// scheduled for the hardware and fused.
//
// Per weight row and activation row the sums are laid out as the portable body's: 16 lanes, lane
// l accumulating w[k]·x[k] for k ≡ l (mod 16) in ascending k, the same fixed reduction of the
// lanes and the same scalar tail. Two things change. Each step is one fused multiply-add (one
// rounding instead of two: the result differs from the portable body by at most a rounding per
// term, and is closer to the exact sum), which halves the arithmetic; and four weight rows are
// walked together, so that 4 × G independent chains hide the FMA latency and the activation vector
// is loaded once for the four rows. A row's sums do not depend on how the rows are split.
#include "CBLAS.h"
#include <string.h>

#if defined(__x86_64__) && defined(__clang__)
#include <immintrin.h>

#define TARGET __attribute__((target("avx512f,avx512bw,avx512vl,avx2,fma,f16c")))

static inline float lane_bits_to_f32(uint32_t u) { float f; memcpy(&f, &u, 4); return f; }

TARGET static inline __m512 load16(int w_type, const char *row, size_t k) {
    if (w_type == 0) return _mm512_loadu_ps((const float *)row + k);
    __m256i h = _mm256_loadu_si256((const __m256i *)((const uint16_t *)row + k));
    if (w_type == 1) return _mm512_castsi512_ps(_mm512_slli_epi32(_mm512_cvtepu16_epi32(h), 16));
    return _mm512_cvtph_ps(h);  // exact, like the portable widening (subnormals, inf, NaN)
}

TARGET static inline float load1(int w_type, const char *row, size_t k) {
    if (w_type == 0) return ((const float *)row)[k];
    uint16_t h = ((const uint16_t *)row)[k];
    if (w_type == 1) return lane_bits_to_f32((uint32_t)h << 16);
    return _mm_cvtss_f32(_mm_cvtph_ps(_mm_cvtsi32_si128(h)));
}

// The portable body's reduction of 16 lanes, then its scalar tail.
TARGET static inline float finish(__m512 acc, int w_type, const char *row, const float *x, size_t kv, size_t k) {
    float a[16];
    _mm512_storeu_ps(a, acc);
    float s8[8], s4[4];
    for (int l = 0; l < 8; l++) s8[l] = a[l] + a[l + 8];
    for (int l = 0; l < 4; l++) s4[l] = s8[l] + s8[l + 4];
    float sum = (s4[0] + s4[2]) + (s4[1] + s4[3]);
    for (size_t kk = kv; kk < k; kk++) sum = __builtin_fmaf(load1(w_type, row, kk), x[kk], sum);
    return sum;
}

// R weight rows (1 or 4) against G activation rows (1 to 4): R × G accumulators.
#define BLOCK(R, G)                                                                                   \
    do {                                                                                              \
        __m512 acc[R][G];                                                                             \
        for (int r = 0; r < R; r++)                                                                   \
            for (int g = 0; g < G; g++) acc[r][g] = _mm512_setzero_ps();                              \
        for (size_t kk = 0; kk < kv; kk += 16) {                                                      \
            __m512 wv[R];                                                                             \
            for (int r = 0; r < R; r++) wv[r] = load16(w_type, rows_[r], kk);                         \
            for (int g = 0; g < G; g++) {                                                             \
                __m512 xv = _mm512_loadu_ps(xg + g * ldx + kk);                                       \
                for (int r = 0; r < R; r++) acc[r][g] = _mm512_fmadd_ps(wv[r], xv, acc[r][g]); \
            }                                                                                         \
        }                                                                                             \
        for (int r = 0; r < R; r++)                                                                   \
            for (int g = 0; g < G; g++)                                                               \
                yg[g * ldy + n + r] = finish(acc[r][g], w_type, rows_[r], xg + g * ldx, kv, k);       \
    } while (0)

TARGET static inline __attribute__((always_inline)) void skinny_typed(
    int w_type, const void *w, size_t ldw, const float *x, size_t ldx, float *y, size_t ldy,
    int rows, size_t n_begin, size_t n_end, size_t k) {
    const size_t kv = k - k % 16;
    const size_t esize = w_type == 0 ? 4 : 2;
    size_t n = n_begin;
    // One activation row (decode of one sequence, most expert groups of a decode batch): weight rows
    // one after another, a single sequential stream. Walking four 4 KiB rows together there read at
    // ~27 GB/s where one row at a time read at 32-43 (2 cores, 6 experts a layer, same harness runs);
    // from two rows on, the four-row blocks win (the activations are loaded once for four rows).
    // Either way each row runs the same chain, so the results are the same bits.
    for (; rows > 1 && n + 4 <= n_end; n += 4) {
        const char *rows_[4];
        for (int r = 0; r < 4; r++) rows_[r] = (const char *)w + (n + r) * ldw * esize;
        for (int m0 = 0; m0 < rows; m0 += 4) {
            const float *xg = x + m0 * ldx;
            float *yg = y + m0 * ldy;
            switch (rows - m0 >= 4 ? 4 : rows - m0) {
            case 4: BLOCK(4, 4); break;
            case 3: BLOCK(4, 3); break;
            case 2: BLOCK(4, 2); break;
            default: BLOCK(4, 1); break;
            }
        }
    }
    for (; n < n_end; n++) {
        const char *rows_[1] = {(const char *)w + n * ldw * esize};
        for (int m0 = 0; m0 < rows; m0 += 4) {
            const float *xg = x + m0 * ldx;
            float *yg = y + m0 * ldy;
            switch (rows - m0 >= 4 ? 4 : rows - m0) {
            case 4: BLOCK(1, 4); break;
            case 3: BLOCK(1, 3); break;
            case 2: BLOCK(1, 2); break;
            default: BLOCK(1, 1); break;
            }
        }
    }
}

TARGET void eaas_skinny_avx512(int w_type, const void *w, size_t ldw, const float *x, size_t ldx, float *y, size_t ldy,
                               int rows, size_t n_begin, size_t n_end, size_t k) {
    switch (w_type) {
    case 0: skinny_typed(0, w, ldw, x, ldx, y, ldy, rows, n_begin, n_end, k); break;
    case 1: skinny_typed(1, w, ldw, x, ldx, y, ldy, rows, n_begin, n_end, k); break;
    default: skinny_typed(2, w, ldw, x, ldx, y, ldy, rows, n_begin, n_end, k); break;
    }
}
#endif
