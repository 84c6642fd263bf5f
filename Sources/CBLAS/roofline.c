// Probes of this machine's limits, for the benchmarks' roofline: how fast one thread streams
// memory, and its peak f32 FMA and bf16 dot-product rates. Each probe is written for the widest
// vectors the CPU has (chosen at run time) and keeps its work in registers or in a buffer far
// larger than the caches, so that it measures the limit and nothing else.
#include "CBLAS.h"
#include <string.h>

#if defined(__x86_64__) && defined(__clang__)
#include <immintrin.h>

__attribute__((target("avx512f")))
static double read_avx512(const void *p, size_t bytes) {
    const __m512i *v = (const __m512i *)p;
    size_t n = bytes / 64;
    __m512i a0 = _mm512_setzero_si512(), a1 = a0, a2 = a0, a3 = a0;
    size_t i = 0;
    for (; i + 4 <= n; i += 4) {
        a0 = _mm512_xor_si512(a0, _mm512_load_si512(v + i));
        a1 = _mm512_xor_si512(a1, _mm512_load_si512(v + i + 1));
        a2 = _mm512_xor_si512(a2, _mm512_load_si512(v + i + 2));
        a3 = _mm512_xor_si512(a3, _mm512_load_si512(v + i + 3));
    }
    __m512i all = _mm512_xor_si512(_mm512_xor_si512(a0, a1), _mm512_xor_si512(a2, a3));
    return (double)_mm512_reduce_add_epi64(all);
}

__attribute__((target("avx2")))
static double read_avx2(const void *p, size_t bytes) {
    const __m256i *v = (const __m256i *)p;
    size_t n = bytes / 32;
    __m256i a0 = _mm256_setzero_si256(), a1 = a0;
    for (size_t i = 0; i + 2 <= n; i += 2) {
        a0 = _mm256_xor_si256(a0, _mm256_load_si256(v + i));
        a1 = _mm256_xor_si256(a1, _mm256_load_si256(v + i + 1));
    }
    __m256i all = _mm256_xor_si256(a0, a1);
    long long out[4];
    memcpy(out, &all, sizeof out);
    return (double)(out[0] + out[1] + out[2] + out[3]);
}

// 12 independent FMA chains of 16 lanes: enough to cover the FMA latency on two pipes.
__attribute__((target("avx512f,fma")))
static double fma_avx512(size_t iterations) {
    __m512 x = _mm512_set1_ps(0.999f), y = _mm512_set1_ps(1e-7f);
    __m512 a[12];
    for (int i = 0; i < 12; i++) a[i] = _mm512_set1_ps((float)i);
    for (size_t it = 0; it < iterations; it++)
        for (int i = 0; i < 12; i++) a[i] = _mm512_fmadd_ps(a[i], x, y);
    __m512 s = a[0];
    for (int i = 1; i < 12; i++) s = _mm512_add_ps(s, a[i]);
    return (double)_mm512_reduce_add_ps(s);
}

__attribute__((target("avx2,fma")))
static double fma_avx2(size_t iterations) {
    __m256 x = _mm256_set1_ps(0.999f), y = _mm256_set1_ps(1e-7f);
    __m256 a[12];
    for (int i = 0; i < 12; i++) a[i] = _mm256_set1_ps((float)i);
    for (size_t it = 0; it < iterations; it++)
        for (int i = 0; i < 12; i++) a[i] = _mm256_fmadd_ps(a[i], x, y);
    __m256 s = a[0];
    for (int i = 1; i < 12; i++) s = _mm256_add_ps(s, a[i]);
    float out[8];
    _mm256_storeu_ps(out, s);
    return (double)(out[0] + out[7]);
}

// vdpbf16ps: each lane adds two bf16 products to an f32 accumulator (4 FLOPs a lane).
__attribute__((target("avx512f,avx512bf16")))
static double dpbf16_avx512(size_t iterations) {
    __m512bh x = (__m512bh)_mm512_set1_epi16(0x3f80), y = (__m512bh)_mm512_set1_epi16(0x3380);
    __m512 a[12];
    for (int i = 0; i < 12; i++) a[i] = _mm512_set1_ps((float)i);
    for (size_t it = 0; it < iterations; it++)
        for (int i = 0; i < 12; i++) a[i] = _mm512_dpbf16_ps(a[i], x, y);
    __m512 s = a[0];
    for (int i = 1; i < 12; i++) s = _mm512_add_ps(s, a[i]);
    return (double)_mm512_reduce_add_ps(s);
}
#endif

static double read_generic(const void *p, size_t bytes) {
    const uint64_t *v = (const uint64_t *)p;
    uint64_t a = 0, b = 0;
    for (size_t i = 0; i + 2 <= bytes / 8; i += 2) { a ^= v[i]; b ^= v[i + 1]; }
    return (double)(a ^ b);
}

double eaas_probe_read(const void *buffer, size_t bytes) {
#if defined(__x86_64__) && defined(__clang__)
    __builtin_cpu_init();
    if (__builtin_cpu_supports("avx512f")) return read_avx512(buffer, bytes);
    if (__builtin_cpu_supports("avx2")) return read_avx2(buffer, bytes);
#endif
    return read_generic(buffer, bytes);
}

double eaas_probe_fma(size_t iterations, int *lanes) {
#if defined(__x86_64__) && defined(__clang__)
    __builtin_cpu_init();
    if (__builtin_cpu_supports("avx512f") && __builtin_cpu_supports("fma")) { *lanes = 16; return fma_avx512(iterations); }
    if (__builtin_cpu_supports("avx2") && __builtin_cpu_supports("fma")) { *lanes = 8; return fma_avx2(iterations); }
#endif
    *lanes = 0;
    return 0;
}

double eaas_probe_dpbf16(size_t iterations, int *lanes) {
#if defined(__x86_64__) && defined(__clang__)
    __builtin_cpu_init();
    if (__builtin_cpu_supports("avx512bf16")) { *lanes = 16; return dpbf16_avx512(iterations); }
#endif
    *lanes = 0;
    return 0;
}
