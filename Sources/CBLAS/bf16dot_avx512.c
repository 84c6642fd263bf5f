// The large-batch (prefill) GEMM on bf16 weights and bf16 activations with `vdpbf16ps`: each
// instruction multiplies 16 pairs of bf16 values and adds both products of a pair to an f32 lane
// (`lane + hi·hi`, then `+ lo·lo`, two roundings, the order Intel documents and Zen 4 follows).
//
// Per weight row and activation row the sum is laid out as the skinny kernel's: 16 lanes, lane l
// accumulating the pairs k = 32·s + 2l, 32·s + 2l + 1 for steps s in ascending order, the tail of k
// read with masked loads (zero fill), then the same fixed tree over the lanes
// ((l, l+8), then (l, l+4), then ((0, 2) + (1, 3))). A block of R weight rows × G activation rows
// keeps R × G such chains in registers; every block shape, the edges included, runs the same chain
// for each output, so a value does not depend on how rows or [begin, end) are split.
//
// Loop order: activation rows in chunks of BF16_MC (outermost), each chunk copied once into a
// buffer that interleaves its blocks of 6 rows step by step (32 bf16 of each row in turn, the last
// step zero-filled) and stays in L2; then blocks of 4 weight rows read in place (a block, 4 × k
// bf16, stays in L1 while the chunk's activation blocks pass over it); then the activation blocks.
// The copy matters when rows are 4 KiB apart (k = 2048): read in place, the 6 activation rows of a
// step fall in one L1 set with the weight rows' and the kernel ran at ~140 instead of ~200 GFLOP/s.
// The weights are read once per chunk. The copy only moves values: the sums are the same.
#include "CBLAS.h"
#include <stdlib.h>
#include <string.h>

#ifndef BF16_MC
#define BF16_MC 96  // activation rows per chunk: a multiple of the block's 6
#endif

#if defined(__x86_64__) && defined(__clang__)
#include <immintrin.h>

#define TARGET __attribute__((target("avx512f,avx512bw,avx512vl,avx512bf16")))

// Four accumulators to their four sums (lane r of the result is acc r's), by the fixed tree.
TARGET static inline __m128 reduce4(__m512 a0, __m512 a1, __m512 a2, __m512 a3) {
    // s8[l] = a[l] + a[l + 8]: [a0 s8 | a1 s8] and [a2 s8 | a3 s8].
    __m512 x01 = _mm512_add_ps(_mm512_shuffle_f32x4(a0, a1, _MM_SHUFFLE(1, 0, 1, 0)),
                               _mm512_shuffle_f32x4(a0, a1, _MM_SHUFFLE(3, 2, 3, 2)));
    __m512 x23 = _mm512_add_ps(_mm512_shuffle_f32x4(a2, a3, _MM_SHUFFLE(1, 0, 1, 0)),
                               _mm512_shuffle_f32x4(a2, a3, _MM_SHUFFLE(3, 2, 3, 2)));
    // s4[l] = s8[l] + s8[l + 4]: quadrant r holds a_r's s4.
    __m512 z = _mm512_add_ps(_mm512_shuffle_f32x4(x01, x23, _MM_SHUFFLE(2, 0, 2, 0)),
                             _mm512_shuffle_f32x4(x01, x23, _MM_SHUFFLE(3, 1, 3, 1)));
    // (s4[0] + s4[2]) + (s4[1] + s4[3]) in lane 0 of each quadrant.
    __m512 t = _mm512_add_ps(z, _mm512_shuffle_ps(z, z, _MM_SHUFFLE(1, 0, 3, 2)));
    __m512 u = _mm512_add_ps(t, _mm512_shuffle_ps(t, t, _MM_SHUFFLE(2, 3, 0, 1)));
    return _mm512_castps512_ps128(_mm512_permutexvar_ps(_mm512_setr_epi32(0, 4, 8, 12, 0, 4, 8, 12, 0, 4, 8, 12, 0, 4, 8, 12), u));
}

// R weight rows (1 to 4) against G activation rows (1 to 6): outputs yg[g·ldy + r]. Row r's step s
// (its k in [32 s, 32 s + 32)) is at wn + r·w_rs + s·w_ss, activation row g's at xg + g·x_rs + s·x_ss:
// the rows in place (stride ld, step 32) or packed step by step (stride 32, step rows·32).
TARGET static inline __attribute__((always_inline)) void block(
    const int R, const int G, const uint16_t *wn, size_t w_rs, size_t w_ss, const uint16_t *xg, size_t x_rs,
    size_t x_ss, float *yg, size_t ldy, size_t k, int accumulate) {
    const size_t steps = k / 32;
    __m512 acc[4][6];
    for (int r = 0; r < R; r++)
        for (int g = 0; g < G; g++) acc[r][g] = _mm512_setzero_ps();
    for (size_t s = 0; s < steps; s++) {
        __m512bh wv[4];
        for (int r = 0; r < R; r++) wv[r] = (__m512bh)_mm512_loadu_si512(wn + r * w_rs);
        for (int g = 0; g < G; g++) {
            __m512bh xv = (__m512bh)_mm512_loadu_si512(xg + g * x_rs);
            for (int r = 0; r < R; r++) acc[r][g] = _mm512_dpbf16_ps(acc[r][g], wv[r], xv);
        }
        wn += w_ss;
        xg += x_ss;
    }
    if (k % 32) {
        const __mmask32 mask = (__mmask32)((1u << (k % 32)) - 1);
        __m512bh wv[4];
        for (int r = 0; r < R; r++) wv[r] = (__m512bh)_mm512_maskz_loadu_epi16(mask, wn + r * w_rs);
        for (int g = 0; g < G; g++) {
            __m512bh xv = (__m512bh)_mm512_maskz_loadu_epi16(mask, xg + g * x_rs);
            for (int r = 0; r < R; r++) acc[r][g] = _mm512_dpbf16_ps(acc[r][g], wv[r], xv);
        }
    }
    const __m512 zero = _mm512_setzero_ps();
    const __mmask8 lanes = (__mmask8)((1u << R) - 1);
    for (int g = 0; g < G; g++) {
        __m128 s = reduce4(acc[0][g], R > 1 ? acc[1][g] : zero, R > 2 ? acc[2][g] : zero, R > 3 ? acc[3][g] : zero);
        float *out = yg + g * ldy;
        if (R == 4) {
            if (accumulate) s = _mm_add_ps(_mm_loadu_ps(out), s);
            _mm_storeu_ps(out, s);
        } else {
            if (accumulate) s = _mm_add_ps(_mm_maskz_loadu_ps(lanes, out), s);
            _mm_mask_storeu_ps(out, lanes, s);
        }
    }
}

// Copies `rows` rows of k bf16 (stride ld) step by step: step s of row i to dst + (s·rows + i)·32,
// the last step zero-filled.
TARGET static void pack(const uint16_t *src, size_t ld, size_t rows, size_t k, uint16_t *dst) {
    const size_t steps = (k + 31) / 32;
    for (size_t s = 0; s < steps; s++) {
        const __mmask32 mask = k - 32 * s >= 32 ? (__mmask32)~0u : (__mmask32)((1u << (k - 32 * s)) - 1);
        for (size_t i = 0; i < rows; i++)
            _mm512_storeu_si512(dst + (s * rows + i) * 32, _mm512_maskz_loadu_epi16(mask, src + i * ld + 32 * s));
    }
}

// R weight rows (in place) against a chunk of mc activation rows packed by groups of 6 (xp; `kp` is
// k rounded up to 32, the elements a packed row takes).
TARGET static inline __attribute__((always_inline)) void column(
    const int R, const uint16_t *wn, size_t ldw, const uint16_t *xp, size_t kp, float *y, size_t ldy, size_t mc,
    size_t k, int accumulate) {
    const size_t w_rs = ldw, w_ss = 32;
    size_t g0 = 0;
    for (; g0 + 6 <= mc; g0 += 6) block(R, 6, wn, w_rs, w_ss, xp + g0 * kp, 32, 6 * 32, y + g0 * ldy, ldy, k, accumulate);
    const uint16_t *xg = xp + g0 * kp;
    float *yg = y + g0 * ldy;
    switch (mc - g0) {
    case 5: block(R, 5, wn, w_rs, w_ss, xg, 32, 5 * 32, yg, ldy, k, accumulate); break;
    case 4: block(R, 4, wn, w_rs, w_ss, xg, 32, 4 * 32, yg, ldy, k, accumulate); break;
    case 3: block(R, 3, wn, w_rs, w_ss, xg, 32, 3 * 32, yg, ldy, k, accumulate); break;
    case 2: block(R, 2, wn, w_rs, w_ss, xg, 32, 2 * 32, yg, ldy, k, accumulate); break;
    case 1: block(R, 1, wn, w_rs, w_ss, xg, 32, 1 * 32, yg, ldy, k, accumulate); break;
    default: break;
    }
}

TARGET __attribute__((noinline)) static void column4(const uint16_t *wn, size_t ldw, const uint16_t *xp,
                                                     size_t kp, float *y, size_t ldy, size_t mc, size_t k,
                                                     int accumulate) {
    column(4, wn, ldw, xp, kp, y, ldy, mc, k, accumulate);
}

TARGET __attribute__((noinline)) static void column_tail(int R, const uint16_t *wn, size_t ldw,
                                                         const uint16_t *xp, size_t kp, float *y, size_t ldy,
                                                         size_t mc, size_t k, int accumulate) {
    switch (R) {
    case 3: column(3, wn, ldw, xp, kp, y, ldy, mc, k, accumulate); break;
    case 2: column(2, wn, ldw, xp, kp, y, ldy, mc, k, accumulate); break;
    default: column(1, wn, ldw, xp, kp, y, ldy, mc, k, accumulate); break;
    }
}

TARGET static int gemm_avx512(const uint16_t *w, size_t ldw, const uint16_t *x, size_t ldx, float *y, size_t ldy,
                              size_t rows, size_t begin, size_t end, size_t k, int accumulate) {
    const size_t kp = (k + 31) & ~(size_t)31;
    const size_t mc_max = rows < BF16_MC ? rows : BF16_MC;
    // A buffer per thread, grown on demand and kept: steady-state calls allocate nothing.
    static __thread uint16_t *xp_buffer;
    static __thread size_t xp_capacity;
    if (xp_capacity < mc_max * kp) {
        uint16_t *grown = malloc(mc_max * kp * sizeof(uint16_t) + 64);
        if (!grown) return 0;
        free(xp_buffer);
        xp_buffer = grown;
        xp_capacity = mc_max * kp;
    }
    uint16_t *xp = xp_buffer;
    for (size_t m0 = 0; m0 < rows; m0 += BF16_MC) {
        const size_t mc = rows - m0 < BF16_MC ? rows - m0 : BF16_MC;
        for (size_t g0 = 0; g0 < mc; g0 += 6)
            pack(x + (m0 + g0) * ldx, ldx, mc - g0 < 6 ? mc - g0 : 6, k, xp + g0 * kp);
        float *yc = y + m0 * ldy;
        size_t n = begin;
        for (; n + 4 <= end; n += 4) column4(w + n * ldw, ldw, xp, kp, yc + n, ldy, mc, k, accumulate);
        if (n < end) column_tail((int)(end - n), w + n * ldw, ldw, xp, kp, yc + n, ldy, mc, k, accumulate);
    }
    return 1;
}
#endif

// The portable body: the same lanes, pair order and reduction tree, with `vdpbf16ps`'s treatment
// of subnormals (inputs and accumulators read as zero, each sum flushed to zero).
static inline float bf16_to_f32_daz(uint16_t h) {
    uint32_t u = (h & 0x7f80u) ? (uint32_t)h << 16 : (uint32_t)(h & 0x8000u) << 16;
    float f;
    memcpy(&f, &u, 4);
    return f;
}

static inline float ftz(float f) {
    uint32_t u;
    memcpy(&u, &f, 4);
    if ((u & 0x7f800000u) == 0) u &= 0x80000000u;
    memcpy(&f, &u, 4);
    return f;
}

static float dot_portable(const uint16_t *w, const uint16_t *x, size_t k) {
    float a[16] = {0};
    for (size_t k0 = 0; k0 < k; k0 += 32)
        for (int l = 0; l < 16; l++) {
            size_t i = k0 + 2 * (size_t)l;
            float lo = i < k ? bf16_to_f32_daz(w[i]) * bf16_to_f32_daz(x[i]) : 0.0f;
            float hi = i + 1 < k ? bf16_to_f32_daz(w[i + 1]) * bf16_to_f32_daz(x[i + 1]) : 0.0f;
            a[l] = ftz(ftz(a[l] + hi) + lo);
        }
    float s8[8], s4[4];
    for (int l = 0; l < 8; l++) s8[l] = a[l] + a[l + 8];
    for (int l = 0; l < 4; l++) s4[l] = s8[l] + s8[l + 4];
    return (s4[0] + s4[2]) + (s4[1] + s4[3]);
}

int eaas_bf16dot_available(void) {
#if defined(__x86_64__) && defined(__clang__)
    static int known = -1;  // every thread that races here computes the same answer
    int answer = __atomic_load_n(&known, __ATOMIC_RELAXED);
    if (answer < 0) {
        __builtin_cpu_init();
        answer = __builtin_cpu_supports("avx512f") && __builtin_cpu_supports("avx512bw") &&
                 __builtin_cpu_supports("avx512vl") && __builtin_cpu_supports("avx512bf16");
        __atomic_store_n(&known, answer, __ATOMIC_RELAXED);
    }
    return answer;
#else
    return 0;
#endif
}

void eaas_bf16dot_gemm(const uint16_t *w, size_t ldw, const uint16_t *x, size_t ldx, float *y, size_t ldy,
                       size_t rows, size_t begin, size_t end, size_t k, int accumulate) {
    if (rows == 0 || begin >= end) return;
#if defined(__x86_64__) && defined(__clang__)
    if (eaas_bf16dot_available()) {
        if (gemm_avx512(w, ldw, x, ldx, y, ldy, rows, begin, end, k, accumulate)) return;
    }
#endif
    for (size_t m = 0; m < rows; m++)
        for (size_t n = begin; n < end; n++) {
            float s = dot_portable(w + n * ldw, x + m * ldx, k);
            y[m * ldy + n] = accumulate ? y[m * ldy + n] + s : s;
        }
}
