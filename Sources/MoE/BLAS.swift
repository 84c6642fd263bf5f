import CBLAS
import Synchronization

/// The BLAS calls the MoE math makes, in one place.
///
/// OpenBLAS runs single-threaded: our kernels have one pool of compute threads (`threads`, the
/// cores OpenBLAS found at start), and large products are split across it by output columns
/// (`ExpertFFN.multiply`). OpenBLAS's own workers spin in `sched_yield` for a while after every
/// multi-threaded call; with them, every router and attention product of a decode step left a
/// thread spinning on a core the decode kernels needed (15 % of the CPU at batch 8, measured with
/// perf).
public enum BLAS {
    /// The compute thread count, taken once from OpenBLAS (which honours `OPENBLAS_NUM_THREADS` and
    /// the affinity mask), after which OpenBLAS is set to one thread.
    private static let computeThreads: Atomic<Int> = {
        let found = Int(eaas_blas_threads())
        eaas_blas_set_threads(1)
        return Atomic(max(1, found))
    }()

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
        _ = computeThreads.load(ordering: .relaxed)  // OpenBLAS single-threaded before its first call
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
        _ = computeThreads.load(ordering: .relaxed)
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

    /// Compute threads our kernels split work across (each BLAS call itself runs on one).
    public static var threads: Int {
        get { computeThreads.load(ordering: .relaxed) }
        set { computeThreads.store(max(1, newValue), ordering: .relaxed) }
    }

    /// Runs `body` with OpenBLAS itself on `count` threads (the benchmarks' reference sgemm, which
    /// stands for what the library does on its own), then back to one.
    public static func withLibraryThreads<T>(_ count: Int, _ body: () throws -> T) rethrows -> T {
        _ = computeThreads.load(ordering: .relaxed)
        eaas_blas_set_threads(Int32(max(1, count)))
        defer { eaas_blas_set_threads(1) }
        return try body()
    }

    /// The OpenBLAS kernel set in use (e.g. "Cooperlake").
    public static var coreName: String { String(cString: eaas_blas_corename()) }

    /// The element-wise kernel variant in use ("avx512", "avx2" or "generic").
    public static var kernelVariant: String { String(cString: eaas_kernel_variant()) }
}
