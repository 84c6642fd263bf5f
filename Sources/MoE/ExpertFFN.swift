import CBLAS
import Foundation

/// Reusable buffers for expert computation, grown on demand and never shrunk, so that steady-state
/// steps allocate nothing. One per thread: it is not shareable.
public final class ExpertScratch {
    let input = FloatBuffer()
    let gateUp = FloatBuffer()
    let activated = FloatBuffer()
    let output = FloatBuffer()
    let block = FloatBuffer()
    let logits = FloatBuffer()
    var counts: [Int] = []
    var slots: [Int] = []

    public init() {}
}

/// A growable, uninitialised f32 buffer.
final class FloatBuffer {
    private(set) var pointer = UnsafeMutablePointer<Float>.allocate(capacity: 1)
    private(set) var capacity = 1

    /// A pointer to at least `count` floats (contents not preserved when it grows).
    func reserve(_ count: Int) -> UnsafeMutablePointer<Float> {
        if count > capacity {
            pointer.deallocate()
            capacity = max(count, capacity * 2)
            pointer = .allocate(capacity: capacity)
        }
        return pointer
    }

    deinit { pointer.deallocate() }
}

/// The expert FFN on BLAS: `y = down(act(gate(x)) * up(x))` for a group of tokens routed to one expert.
///
/// Weights stay in their checkpoint dtype (in the mapped file). Two paths, by group size:
/// - up to `skinnyRows` tokens (decode): a skinny GEMM kernel reads each weight row once, widening
///   bf16/f16 in registers, split across the compute threads by output rows. The step is bound by
///   memory bandwidth, so 16-bit weights move half the bytes of f32.
/// - more tokens: `cblas_sgemm`. f32 weights feed it straight from the file; bf16/f16 weights are
///   widened band by band (`bandElements` at a time, by all compute threads) into a scratch buffer
///   that `cblas_sgemm` then consumes, so that the widening pass stays small next to the GEMM and
///   OpenBLAS repacks the activations only a few times per matrix.
public enum ExpertFFN {
    /// Largest group that takes the skinny path.
    public static let skinnyRows = Int(EAAS_SKINNY_MAX_ROWS)

    /// Weight elements per widened band on the sgemm path: 1 M (4 MiB of f32). Measured on 2 cores:
    /// 256 K and 512 K bands pay more in per-band sgemm calls and thread hand-offs than they save
    /// in cache, 2-4 M bands spill the widened rows out of cache before sgemm packs them.
    static let bandElements = 1 << 20

    /// Weight rows per widened band on the sgemm path.
    static func bandRows(rows: Int, cols: Int) -> Int {
        max(8, min(rows, bandElements / max(1, cols)))
    }

    /// Runs the expert on `tokens` rows of `input` (`[tokens, hidden]`, contiguous) into `output`
    /// (`[tokens, hidden]`, overwritten).
    public static func run(
        _ expert: ExpertWeights, activation: Activation, tokens: Int,
        input: UnsafePointer<Float>, output: UnsafeMutablePointer<Float>, scratch: ExpertScratch
    ) {
        guard tokens > 0 else { return }
        let hidden = expert.hidden, ffn = expert.ffn
        let gateUp = scratch.gateUp.reserve(tokens * 2 * ffn)
        if expert.gate.isFollowed(by: expert.up) {
            // One GEMM for gate and up together: [tokens, 2F] = x · [gate; up]ᵀ.
            let fused = WeightMatrix(name: expert.gate.name, dtype: expert.gate.dtype, rows: 2 * ffn, cols: hidden,
                                     base: expert.gate.base, owner: expert.gate.owner)
            multiply(input, lda: hidden, tokens: tokens, by: fused, into: gateUp, ldc: 2 * ffn, scratch: scratch)
        } else {
            multiply(input, lda: hidden, tokens: tokens, by: expert.gate, into: gateUp, ldc: 2 * ffn, scratch: scratch)
            multiply(input, lda: hidden, tokens: tokens, by: expert.up, into: gateUp + ffn, ldc: 2 * ffn, scratch: scratch)
        }
        let activated = scratch.activated.reserve(tokens * ffn)
        for t in 0..<tokens {
            applyActivation(activation, gate: gateUp + t * 2 * ffn, up: gateUp + t * 2 * ffn + ffn, out: activated + t * ffn, count: ffn)
        }
        multiply(activated, lda: ffn, tokens: tokens, by: expert.down, into: output, ldc: hidden, scratch: scratch)
    }

    /// `C[tokens, W.rows] = A[tokens, W.cols] · Wᵀ`, widening W band by band when it is not f32.
    static func multiply(
        _ a: UnsafePointer<Float>, lda: Int, tokens: Int, by weight: WeightMatrix,
        into c: UnsafeMutablePointer<Float>, ldc: Int, scratch: ExpertScratch
    ) {
        if tokens <= skinnyRows {
            let type: Int32 = weight.dtype == .f32 ? 0 : weight.dtype == .bf16 ? 1 : 2
            let job = SkinnyJob(type: type, w: weight.base, cols: weight.cols, x: a, lda: lda, y: c, ldc: ldc, rows: Int32(tokens))
            parallelRows(weight.rows, minimumPerChunk: 64) { begin, end in job.run(begin, end) }
            return
        }
        if weight.dtype == .f32 {
            BLAS.gemmTransposedB(m: tokens, n: weight.rows, k: weight.cols, a: a, lda: lda,
                                 b: weight.base.assumingMemoryBound(to: Float.self), ldb: weight.cols, c: c, ldc: ldc)
            return
        }
        let band = bandRows(rows: weight.rows, cols: weight.cols)
        let buffer = scratch.block.reserve(band * weight.cols)
        let rowBytes = weight.cols * weight.dtype.byteSize
        var row = 0
        while row < weight.rows {
            let count = min(band, weight.rows - row)
            let widen = WidenJob(dtype: weight.dtype, source: weight.base + row * rowBytes, destination: buffer, cols: weight.cols)
            parallelRows(count, minimumPerChunk: 16) { begin, end in widen.run(begin, end) }
            BLAS.gemmTransposedB(m: tokens, n: count, k: weight.cols, a: a, lda: lda, b: buffer, ldb: weight.cols, c: c + row, ldc: ldc)
            row += count
        }
    }

    /// Splits `rows` into one contiguous chunk per compute thread (the BLAS thread count) and runs
    /// `body(begin, end)` on each, in parallel when there is more than one chunk.
    static func parallelRows(_ rows: Int, minimumPerChunk: Int, _ body: @Sendable (Int, Int) -> Void) {
        let chunks = max(1, min(BLAS.threads, rows / max(1, minimumPerChunk)))
        if chunks == 1 {
            body(0, rows)
            return
        }
        DispatchQueue.concurrentPerform(iterations: chunks) { i in
            body(rows * i / chunks, rows * (i + 1) / chunks)
        }
    }

    /// `out = act(gate) * up`, element-wise over `count` values.
    static func applyActivation(
        _ activation: Activation, gate: UnsafePointer<Float>, up: UnsafePointer<Float>,
        out: UnsafeMutablePointer<Float>, count: Int
    ) {
        switch activation {
        case .silu:
            eaas_silu_mul(gate, up, out, count)
        case .relu:
            for i in 0..<count { out[i] = max(gate[i], 0) * up[i] }
        case .gelu:
            for i in 0..<count {
                let g = gate[i]
                out[i] = 0.5 * g * (1 + erff(g * 0.70710678118654752)) * up[i]
            }
        case .geluTanh:
            for i in 0..<count {
                let g = gate[i]
                out[i] = 0.5 * g * (1 + tanhf(0.79788456080286536 * (g + 0.044715 * g * g * g))) * up[i]
            }
        }
    }
}

/// One skinny GEMM call's operands, handed to the compute threads; each writes disjoint output columns.
private struct SkinnyJob: @unchecked Sendable {
    let type: Int32
    let w: UnsafeRawPointer
    let cols: Int
    let x: UnsafePointer<Float>
    let lda: Int
    let y: UnsafeMutablePointer<Float>
    let ldc: Int
    let rows: Int32

    func run(_ begin: Int, _ end: Int) {
        eaas_skinny_gemm(type, w, cols, x, lda, y, ldc, rows, begin, end, cols)
    }
}

/// Widening of a band of weight rows, split by rows across the compute threads.
private struct WidenJob: @unchecked Sendable {
    let dtype: DType
    let source: UnsafeRawPointer
    let destination: UnsafeMutablePointer<Float>
    let cols: Int

    func run(_ begin: Int, _ end: Int) {
        FloatConversion.widen(dtype, from: source + begin * cols * dtype.byteSize, to: destination + begin * cols, count: (end - begin) * cols)
    }
}
