// C shim for the MoE module: OpenBLAS's CBLAS interface plus the few element-wise kernels that feed
// it. They are in C so that they can be compiled for the CPU they run on (AVX-512/AVX2 variants
// picked at run time) while the Swift code stays portable.
#ifndef EAAS_CBLAS_H
#define EAAS_CBLAS_H

#include <cblas.h>
#include <stddef.h>
#include <stdint.h>

/// Widens `n` bfloat16 values (raw bits) to float32. Exact.
void eaas_widen_bf16(const uint16_t *src, float *dst, size_t n);
/// Widens `n` IEEE half values (raw bits) to float32. Exact, subnormals, infinities and NaN included.
void eaas_widen_f16(const uint16_t *src, float *dst, size_t n);
/// Narrows `n` float32 values to bfloat16 bits, rounding to nearest even (NaN stays NaN).
void eaas_narrow_bf16(const float *src, uint16_t *dst, size_t n);
/// Narrows `n` float32 values to IEEE half bits, rounding to nearest even (overflow becomes inf).
void eaas_narrow_f16(const float *src, uint16_t *dst, size_t n);

/// SwiGLU's gating product: `out[i] = silu(gate[i]) * up[i]`, `silu(x) = x / (1 + exp(-x))`.
/// `out` may alias `gate` or `up`. Relative error of the exp approximation is a few float ulps.
void eaas_silu_mul(const float *gate, const float *up, float *out, size_t n);

/// Scaled accumulate: `acc[i] += w * x[i]`, rounded as `acc + (w * x)` (two roundings, no FMA),
/// the same in every dispatch variant.
void eaas_axpy(float w, const float *x, float *acc, size_t n);

/// Skinny GEMM for a few rows of activations against a weight matrix kept in its stored type:
/// `y[m * ldy + n] = sum_k x[m * ldx + k] * w[n * ldw + k]` for `m < rows`, `n` in `[n_begin, n_end)`.
/// `w_type` is 0 for f32, 1 for bf16, 2 for f16. Weights are widened in registers, so each weight
/// byte is read once: the decode path is bound by memory bandwidth, not by a widening pass.
/// `rows` must be at most EAAS_SKINNY_MAX_ROWS: a dense layer at batch 32 reads its weights once
/// (each block of weight rows stays in L1 while the activation rows pass over it). Sums run in a
/// fixed order per variant, independent of how `[n_begin, n_end)` is split between threads; the
/// AVX-512 variant fuses each multiply-add (see skinny_avx512.c).
#define EAAS_SKINNY_MAX_ROWS 32
void eaas_skinny_gemm(int w_type, const void *w, size_t ldw, const float *x, size_t ldx, float *y, size_t ldy,
                      int rows, size_t n_begin, size_t n_end, size_t k);
/// The same through the compiler-vectorised portable body only (not the AVX-512 intrinsics): the
/// reference the tests hold the fused schedule to (within a rounding per term).
void eaas_skinny_gemm_portable(int w_type, const void *w, size_t ldw, const float *x, size_t ldx, float *y, size_t ldy,
                               int rows, size_t n_begin, size_t n_end, size_t k);

/// Large-batch (prefill) GEMM on bf16 weights and bf16 activations (raw bits) with `vdpbf16ps`:
/// `y[m * ldy + n] (=|+=) sum_k x[m * ldx + k] * w[n * ldw + k]` for `m < rows`, `n` in
/// `[begin, end)`; `accumulate` != 0 adds into `y`, else overwrites. Products and sums in f32: each
/// output runs 16 lanes of bf16 pairs in ascending k (tail zero-filled) and a fixed reduction of the
/// lanes, so its value does not depend on how rows or `[begin, end)` are split (bf16dot_avx512.c).
/// Any `k` and `rows`; without avx512_bf16 a portable body does the same sums (slowly).
void eaas_bf16dot_gemm(const uint16_t *w, size_t ldw, const uint16_t *x, size_t ldx, float *y, size_t ldy,
                       size_t rows, size_t begin, size_t end, size_t k, int accumulate);
/// 1 when this CPU runs `vdpbf16ps` (avx512_bf16), else 0: then `eaas_bf16dot_gemm` is the portable body.
int eaas_bf16dot_available(void);

/// Probes for the benchmarks' roofline (roofline.c). `eaas_probe_read` streams `bytes` of
/// `buffer` (64-byte aligned, a multiple of 256 bytes) with the widest loads the CPU has and
/// returns a value that depends on every byte. `eaas_probe_fma` runs `iterations` rounds of 12
/// independent fused multiply-adds on vectors of `*lanes` floats (set to 0 without FMA: then
/// nothing ran); each lane of a round is 2 FLOPs. `eaas_probe_dpbf16` does the same with
/// `vdpbf16ps` (4 FLOPs a lane a round), `*lanes` 0 where the CPU lacks avx512_bf16.
double eaas_probe_read(const void *buffer, size_t bytes);
double eaas_probe_fma(size_t iterations, int *lanes);
double eaas_probe_dpbf16(size_t iterations, int *lanes);

/// The name of the kernel set the running CPU gets ("avx512", "avx2" or "generic").
const char *eaas_kernel_variant(void);

/// OpenBLAS controls, through one place so that the rest of the code never names OpenBLAS.
int eaas_blas_threads(void);
void eaas_blas_set_threads(int n);
const char *eaas_blas_corename(void);

#endif
