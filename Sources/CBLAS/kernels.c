// Element-wise kernels around the GEMMs. Each kernel has one portable C body, compiled three times
// (generic x86-64, AVX2, AVX-512) by the target attribute and chosen once at run time: the compiler
// vectorises the same loop for each. -ffp-contract=off (Package.swift) keeps the rounding identical
// across the variants.
#include "CBLAS.h"
#include <math.h>
#include <string.h>

#if defined(__x86_64__) && defined(__clang__)
#define EAAS_X86 1
#define AVX512 __attribute__((target("avx512f,avx512bw,avx512vl,avx2,fma,f16c")))
#define AVX2 __attribute__((target("avx2,f16c")))
#else
#define EAAS_X86 0
#endif

static inline float bits_to_f32(uint32_t u) { float f; memcpy(&f, &u, 4); return f; }
static inline uint32_t f32_to_bits(float f) { uint32_t u; memcpy(&u, &f, 4); return u; }

// ---- bodies -----------------------------------------------------------------------------------

#define BODY_WIDEN_BF16                                                                        \
    for (size_t i = 0; i < n; i++) dst[i] = bits_to_f32((uint32_t)src[i] << 16);

// Half to float without branches, so that it vectorises: normal numbers by re-biasing, subnormals by
// the magic-number trick, inf/NaN by forcing the exponent.
#define BODY_WIDEN_F16                                                                         \
    for (size_t i = 0; i < n; i++) {                                                           \
        uint32_t h = src[i];                                                                   \
        uint32_t sign = (h & 0x8000u) << 16;                                                   \
        uint32_t em = h & 0x7fffu;                                                             \
        uint32_t normal = (em << 13) + 0x38000000u;                                            \
        float sub = bits_to_f32((em << 13) + 0x38800000u) - bits_to_f32(0x38800000u);                  \
        uint32_t out = em < 0x0400u ? f32_to_bits(sub) : normal;                               \
        out = em >= 0x7c00u ? ((em << 13) | 0x7f800000u) : out;                                \
        dst[i] = bits_to_f32(out | sign);                                                      \
    }

#define BODY_NARROW_BF16                                                                       \
    for (size_t i = 0; i < n; i++) {                                                           \
        uint32_t u = f32_to_bits(src[i]);                                                      \
        uint32_t rounded = (u + 0x7fffu + ((u >> 16) & 1u)) >> 16;                             \
        uint32_t nan = (u >> 16) | 0x0040u;                                                    \
        dst[i] = (uint16_t)(((u & 0x7fffffffu) > 0x7f800000u) ? nan : rounded);               \
    }

#define BODY_SILU_MUL                                                                          \
    for (size_t i = 0; i < n; i++) {                                                           \
        float g = gate[i];                                                                     \
        out[i] = (g / (1.0f + eaas_expf(-g))) * up[i];                                         \
    }

#define BODY_AXPY                                                                              \
    for (size_t i = 0; i < n; i++) {                                                           \
        float t = w * x[i];                                                                    \
        acc[i] = acc[i] + t;                                                                   \
    }

// exp(x) for float: range reduction by ln 2 (Cody-Waite, two constants) and a degree-7 (Taylor) polynomial
// on [-ln2/2, ln2/2]; 2^k is built in the exponent bits. Saturates to 0 and inf outside (-104, 88.7).
static inline float eaas_expf(float x) {
    // Written so that NaN becomes a bound too: converting NaN to int below would be undefined.
    x = x > -104.0f ? x : -104.0f;
    x = x < 88.72f ? x : 88.72f;
    float k = __builtin_rintf(x * 1.44269504088896341f);
    float r = x - k * 0.693145751953125f;
    r = r - k * 1.428606765330187e-06f;
    float p = 1.9841270e-4f;
    p = p * r + 1.3888889e-3f;
    p = p * r + 8.3333333e-3f;
    p = p * r + 4.1666667e-2f;
    p = p * r + 1.6666667e-1f;
    p = p * r + 0.5f;
    p = p * r + 1.0f;
    p = p * r + 1.0f;
    int32_t ki = (int32_t)k;
    // Two steps so that k down to -150 stays representable (subnormal results).
    int32_t k1 = ki / 2, k2 = ki - k1;
    float s1 = bits_to_f32((uint32_t)(k1 + 127) << 23);
    float s2 = bits_to_f32((uint32_t)(k2 + 127) << 23);
    return p * s1 * s2;
}

// ---- variants ---------------------------------------------------------------------------------

#define DEFINE_VARIANTS(name, params, body)                                                    \
    static void name##_generic params { body }                                                 \
    DEFINE_X86_VARIANTS(name, params, body)

#if EAAS_X86
#define DEFINE_X86_VARIANTS(name, params, body)                                                \
    AVX2 static void name##_avx2 params { body }                                               \
    AVX512 static void name##_avx512 params { body }
#else
#define DEFINE_X86_VARIANTS(name, params, body)
#endif

DEFINE_VARIANTS(widen_bf16, (const uint16_t *restrict src, float *restrict dst, size_t n), BODY_WIDEN_BF16)
DEFINE_VARIANTS(widen_f16, (const uint16_t *restrict src, float *restrict dst, size_t n), BODY_WIDEN_F16)
DEFINE_VARIANTS(narrow_bf16, (const float *restrict src, uint16_t *restrict dst, size_t n), BODY_NARROW_BF16)
DEFINE_VARIANTS(silu_mul, (const float *gate, const float *up, float *out, size_t n), BODY_SILU_MUL)
DEFINE_VARIANTS(axpy, (float w, const float *restrict x, float *restrict acc, size_t n), BODY_AXPY)

// Skinny GEMM. For each weight row, 16-lane partial sums per activation row, then a fixed-order
// reduction of the lanes: the same arithmetic in every variant. A row of w is widened 16 values
// at a time into registers (load_w16).
#define LANES 16
static inline __attribute__((always_inline)) void load_w16(int w_type, const void *w, size_t index, float out[LANES]) {
    if (w_type == 0) {
        const float *p = (const float *)w + index;
        for (int l = 0; l < LANES; l++) out[l] = p[l];
    } else if (w_type == 1) {
        const uint16_t *p = (const uint16_t *)w + index;
        for (int l = 0; l < LANES; l++) out[l] = bits_to_f32((uint32_t)p[l] << 16);
    } else {
        const uint16_t *p = (const uint16_t *)w + index;
        for (int l = 0; l < LANES; l++) {
            uint32_t h = p[l];
            uint32_t sign = (h & 0x8000u) << 16, em = h & 0x7fffu;
            uint32_t normal = (em << 13) + 0x38000000u;
            float sub = bits_to_f32((em << 13) + 0x38800000u) - bits_to_f32(0x38800000u);
            uint32_t o = em < 0x0400u ? f32_to_bits(sub) : normal;
            o = em >= 0x7c00u ? ((em << 13) | 0x7f800000u) : o;
            out[l] = bits_to_f32(o | sign);
        }
    }
}

static inline float load_w1(int w_type, const void *w, size_t index) {
    float v[LANES];
    if (w_type == 0) return ((const float *)w)[index];
    uint16_t h = ((const uint16_t *)w)[index];
    if (w_type == 1) return bits_to_f32((uint32_t)h << 16);
    uint16_t tmp[LANES] = {h};
    load_w16(2, tmp, 0, v);
    return v[0];
}

// `G` activation rows (a compile-time constant at every call) against one weight row: G x 16
// accumulators stay in registers. The arithmetic of each row is the same whatever G is.
static inline __attribute__((always_inline)) void skinny_rows(
    int w_type, const char *wrow, const float *x, size_t ldx, float *y, size_t ldy, size_t n, size_t k, size_t kv, const int G) {
    float acc[4][LANES];
    for (int m = 0; m < G; m++)
        for (int l = 0; l < LANES; l++) acc[m][l] = 0;
    for (size_t kk = 0; kk < kv; kk += LANES) {
        float wv[LANES];
        load_w16(w_type, wrow, kk, wv);
        for (int m = 0; m < G; m++) {
            const float *xm = x + m * ldx + kk;
            for (int l = 0; l < LANES; l++) acc[m][l] = acc[m][l] + wv[l] * xm[l];
        }
    }
    for (int m = 0; m < G; m++) {
        float s8[8];
        float s4[4];
        for (int l = 0; l < 8; l++) s8[l] = acc[m][l] + acc[m][l + 8];
        for (int l = 0; l < 4; l++) s4[l] = s8[l] + s8[l + 4];
        float sum = (s4[0] + s4[2]) + (s4[1] + s4[3]);
        for (size_t kk = kv; kk < k; kk++) sum = sum + load_w1(w_type, wrow, kk) * x[m * ldx + kk];
        y[m * ldy + n] = sum;
    }
}

// For each weight row, the activation rows in groups of at most 4 (the second group finds the
// weight row in L1), each group with its accumulators in registers.
static inline __attribute__((always_inline)) void skinny_typed(
    int w_type, const void *w, size_t ldw, const float *x, size_t ldx, float *y, size_t ldy,
    int rows, size_t n_begin, size_t n_end, size_t k) {
    const size_t kv = k - k % LANES;
    const size_t esize = w_type == 0 ? 4 : 2;
    for (size_t n = n_begin; n < n_end; n++) {
        const char *wrow = (const char *)w + n * ldw * esize;
        for (int m0 = 0; m0 < rows; m0 += 4) {
            const float *xg = x + m0 * ldx;
            float *yg = y + m0 * ldy;
            switch (rows - m0 >= 4 ? 4 : rows - m0) {
            case 4: skinny_rows(w_type, wrow, xg, ldx, yg, ldy, n, k, kv, 4); break;
            case 3: skinny_rows(w_type, wrow, xg, ldx, yg, ldy, n, k, kv, 3); break;
            case 2: skinny_rows(w_type, wrow, xg, ldx, yg, ldy, n, k, kv, 2); break;
            default: skinny_rows(w_type, wrow, xg, ldx, yg, ldy, n, k, kv, 1); break;
            }
        }
    }
}

static inline __attribute__((always_inline)) void skinny_impl(
    int w_type, const void *w, size_t ldw, const float *x, size_t ldx, float *y, size_t ldy,
    int rows, size_t n_begin, size_t n_end, size_t k) {
    // The weight type as a constant in each copy, so that the widening is not a branch per load.
    switch (w_type) {
    case 0: skinny_typed(0, w, ldw, x, ldx, y, ldy, rows, n_begin, n_end, k); break;
    case 1: skinny_typed(1, w, ldw, x, ldx, y, ldy, rows, n_begin, n_end, k); break;
    default: skinny_typed(2, w, ldw, x, ldx, y, ldy, rows, n_begin, n_end, k); break;
    }
}

DEFINE_VARIANTS(skinny, (int w_type, const void *w, size_t ldw, const float *x, size_t ldx, float *y, size_t ldy,
                         int rows, size_t n_begin, size_t n_end, size_t k),
                skinny_impl(w_type, w, ldw, x, ldx, y, ldy, rows, n_begin, n_end, k);)

enum { VARIANT_UNKNOWN = 0, VARIANT_GENERIC, VARIANT_AVX2, VARIANT_AVX512 };
static int variant = VARIANT_UNKNOWN;

static int pick_variant(void) {
    int v = __atomic_load_n(&variant, __ATOMIC_RELAXED);
    if (v != VARIANT_UNKNOWN) return v;
    v = VARIANT_GENERIC;
#if EAAS_X86
    __builtin_cpu_init();
    if (__builtin_cpu_supports("avx512f") && __builtin_cpu_supports("avx512bw") &&
        __builtin_cpu_supports("avx512vl") && __builtin_cpu_supports("fma") && __builtin_cpu_supports("f16c"))
        v = VARIANT_AVX512;
    else if (__builtin_cpu_supports("avx2") && __builtin_cpu_supports("f16c"))
        v = VARIANT_AVX2;
#endif
    __atomic_store_n(&variant, v, __ATOMIC_RELAXED);
    return v;
}

#if EAAS_X86
#define DISPATCH(name, args)                                                                   \
    switch (pick_variant()) {                                                                  \
    case VARIANT_AVX512: name##_avx512 args; return;                                           \
    case VARIANT_AVX2: name##_avx2 args; return;                                               \
    default: name##_generic args; return;                                                      \
    }
#else
#define DISPATCH(name, args) name##_generic args;
#endif

void eaas_widen_bf16(const uint16_t *src, float *dst, size_t n) { DISPATCH(widen_bf16, (src, dst, n)) }
void eaas_widen_f16(const uint16_t *src, float *dst, size_t n) { DISPATCH(widen_f16, (src, dst, n)) }
void eaas_narrow_bf16(const float *src, uint16_t *dst, size_t n) { DISPATCH(narrow_bf16, (src, dst, n)) }
void eaas_silu_mul(const float *gate, const float *up, float *out, size_t n) { DISPATCH(silu_mul, (gate, up, out, n)) }
void eaas_axpy(float w, const float *x, float *acc, size_t n) { DISPATCH(axpy, (w, x, acc, n)) }
#if EAAS_X86
// skinny_avx512.c: the same sums, four weight rows at a time with intrinsics.
void eaas_skinny_avx512(int w_type, const void *w, size_t ldw, const float *x, size_t ldx, float *y, size_t ldy,
                        int rows, size_t n_begin, size_t n_end, size_t k);
#endif

void eaas_skinny_gemm(int w_type, const void *w, size_t ldw, const float *x, size_t ldx, float *y, size_t ldy,
                      int rows, size_t n_begin, size_t n_end, size_t k) {
    if (rows < 1 || rows > EAAS_SKINNY_MAX_ROWS) return;
#if EAAS_X86
    if (pick_variant() == VARIANT_AVX512) {
        eaas_skinny_avx512(w_type, w, ldw, x, ldx, y, ldy, rows, n_begin, n_end, k);
        return;
    }
#endif
    DISPATCH(skinny, (w_type, w, ldw, x, ldx, y, ldy, rows, n_begin, n_end, k))
}

void eaas_skinny_gemm_portable(int w_type, const void *w, size_t ldw, const float *x, size_t ldx, float *y, size_t ldy,
                               int rows, size_t n_begin, size_t n_end, size_t k) {
    if (rows < 1 || rows > EAAS_SKINNY_MAX_ROWS) return;
    DISPATCH(skinny, (w_type, w, ldw, x, ldx, y, ldy, rows, n_begin, n_end, k))
}

// Float to half, round to nearest even; scalar (used when writing checkpoints, not on a hot path).
static uint16_t f32_to_f16(float f) {
    uint32_t u = f32_to_bits(f);
    uint32_t sign = (u >> 16) & 0x8000u;
    uint32_t abs = u & 0x7fffffffu;
    if (abs > 0x7f800000u) return (uint16_t)(sign | 0x7e00u | ((abs >> 13) & 0x3ffu));  // NaN
    if (abs >= 0x477ff000u) return (uint16_t)(sign | 0x7c00u);  // rounds to inf
    if (abs < 0x38800000u) {  // subnormal half (or zero)
        float scaled = bits_to_f32(abs) * 16777216.0f;  // * 2^24: now an integer number of half ulps
        return (uint16_t)(sign | (uint32_t)__builtin_rintf(scaled));
    }
    uint32_t mant_odd = (abs >> 13) & 1u;
    abs += 0x0fffu + mant_odd;
    return (uint16_t)(sign | ((abs - 0x38000000u) >> 13));
}

void eaas_narrow_f16(const float *src, uint16_t *dst, size_t n) {
    for (size_t i = 0; i < n; i++) dst[i] = f32_to_f16(src[i]);
}

const char *eaas_kernel_variant(void) {
    switch (pick_variant()) {
    case VARIANT_AVX512: return "avx512";
    case VARIANT_AVX2: return "avx2";
    default: return "generic";
    }
}

int eaas_blas_threads(void) { return openblas_get_num_threads(); }
void eaas_blas_set_threads(int n) { openblas_set_num_threads(n); }
const char *eaas_blas_corename(void) { return openblas_get_corename(); }
