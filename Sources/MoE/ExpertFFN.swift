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
/// Weights stay in their checkpoint dtype. f32 weights feed `cblas_sgemm` straight from the mapped
/// file. f16/bf16 weights are widened block by block: a band of weight rows is widened into a
/// scratch buffer sized to stay in the last-level cache, `cblas_sgemm` consumes it, and the next
/// band reuses the buffer. A band is large enough (≥ 256 rows when many tokens share the weights)
/// that OpenBLAS's per-call packing of the activations stays a few percent of the GEMM.
public enum ExpertFFN {
    /// Weight elements per widened band: small for decode-sized groups, where the step is
    /// memory-bound and the band should stay in L2; larger when the GEMM is compute-bound.
    static func bandRows(tokens: Int, rows: Int, cols: Int) -> Int {
        let elements = tokens <= 16 ? 128 * 1024 : 2 * 1024 * 1024
        return max(8, min(rows, elements / max(1, cols)))
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
        if weight.dtype == .f32 {
            BLAS.gemmTransposedB(m: tokens, n: weight.rows, k: weight.cols, a: a, lda: lda,
                                 b: weight.base.assumingMemoryBound(to: Float.self), ldb: weight.cols, c: c, ldc: ldc)
            return
        }
        let band = bandRows(tokens: tokens, rows: weight.rows, cols: weight.cols)
        let buffer = scratch.block.reserve(band * weight.cols)
        let rowBytes = weight.cols * weight.dtype.byteSize
        var row = 0
        while row < weight.rows {
            let count = min(band, weight.rows - row)
            FloatConversion.widen(weight.dtype, from: weight.base + row * rowBytes, to: buffer, count: count * weight.cols)
            BLAS.gemmTransposedB(m: tokens, n: count, k: weight.cols, a: a, lda: lda, b: buffer, ldb: weight.cols, c: c + row, ldc: ldc)
            row += count
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
