import CBLAS

/// The BLAS calls the MoE math makes, in one place.
public enum BLAS {
    /// `C[m, n] = A[m, k] · B[n, k]ᵀ` (+ `C` when `accumulate`), row-major with leading dimensions.
    @inline(__always)
    public static func gemmTransposedB(
        m: Int, n: Int, k: Int,
        a: UnsafePointer<Float>, lda: Int,
        b: UnsafePointer<Float>, ldb: Int,
        c: UnsafeMutablePointer<Float>, ldc: Int,
        accumulate: Bool = false
    ) {
        guard m > 0, n > 0 else { return }
        cblas_sgemm(CblasRowMajor, CblasNoTrans, CblasTrans, Int32(m), Int32(n), Int32(k),
                    1, a, Int32(lda), b, Int32(ldb), accumulate ? 1 : 0, c, Int32(ldc))
    }

    /// `C[m, n] = A[m, k] · B[k, n]`, row-major with leading dimensions.
    @inline(__always)
    public static func gemm(
        m: Int, n: Int, k: Int,
        a: UnsafePointer<Float>, lda: Int,
        b: UnsafePointer<Float>, ldb: Int,
        c: UnsafeMutablePointer<Float>, ldc: Int
    ) {
        guard m > 0, n > 0 else { return }
        cblas_sgemm(CblasRowMajor, CblasNoTrans, CblasNoTrans, Int32(m), Int32(n), Int32(k),
                    1, a, Int32(lda), b, Int32(ldb), 0, c, Int32(ldc))
    }

    /// Narrows `count` f32 values to bfloat16 bits, rounding to nearest even.
    public static func narrowBF16(_ source: UnsafePointer<Float>, into destination: UnsafeMutablePointer<UInt16>, count: Int) {
        eaas_narrow_bf16(source, destination, count)
    }

    /// Narrows `count` f32 values to IEEE half bits, rounding to nearest even.
    public static func narrowF16(_ source: UnsafePointer<Float>, into destination: UnsafeMutablePointer<UInt16>, count: Int) {
        eaas_narrow_f16(source, destination, count)
    }

    /// Widens `count` bfloat16 values (raw bits) to f32, with the kernels the expert math uses.
    public static func widenBF16(_ source: UnsafePointer<UInt16>, into destination: UnsafeMutablePointer<Float>, count: Int) {
        eaas_widen_bf16(source, destination, count)
    }

    /// Widens `count` IEEE half values (raw bits) to f32.
    public static func widenF16(_ source: UnsafePointer<UInt16>, into destination: UnsafeMutablePointer<Float>, count: Int) {
        eaas_widen_f16(source, destination, count)
    }

    /// Threads OpenBLAS uses for one GEMM.
    public static var threads: Int {
        get { Int(eaas_blas_threads()) }
        set { eaas_blas_set_threads(Int32(max(1, newValue))) }
    }

    /// The OpenBLAS kernel set in use (e.g. "Cooperlake").
    public static var coreName: String { String(cString: eaas_blas_corename()) }

    /// The element-wise kernel variant in use ("avx512", "avx2" or "generic").
    public static var kernelVariant: String { String(cString: eaas_kernel_variant()) }
}
