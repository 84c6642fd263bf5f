import MoE
#if canImport(Glibc)
import Glibc
#endif

/// The rows of one step: each sequence's new tokens, contiguous, with their positions.
struct StepBatch {
    /// One sequence's rows in the batch; its positions are `firstPosition ..< firstPosition + count`.
    struct Segment {
        let cache: KVCache
        let firstRow: Int
        let count: Int
        let firstPosition: Int
    }

    var tokens: [Int32] = []
    var positions: [Int] = []
    var segments: [Segment] = []

    var count: Int { tokens.count }

    mutating func append(_ cache: KVCache, tokens new: some Collection<Int32>) {
        segments.append(Segment(cache: cache, firstRow: tokens.count, count: new.count, firstPosition: cache.length))
        positions.append(contentsOf: cache.length..<(cache.length + new.count))
        tokens.append(contentsOf: new)
    }
}

/// Buffers of one attention layer, reused across layers and steps.
final class AttentionScratch {
    var q: [Float] = []
    var k: [Float] = []
    var v: [Float] = []
    var context: [Float] = []
    var scores: [Float] = []
    var cos: [Float] = []
    var sin: [Float] = []

    func reserve(tokens: Int, shape: AttentionShape) {
        func grow(_ buffer: inout [Float], _ count: Int) { if buffer.count < count { buffer = [Float](repeating: 0, count: count) } }
        grow(&q, tokens * shape.heads * shape.headDim)
        grow(&k, tokens * shape.keyValueHeads * shape.headDim)
        grow(&v, tokens * shape.keyValueHeads * shape.headDim)
        grow(&context, tokens * shape.heads * shape.headDim)
        grow(&cos, shape.headDim)
        grow(&sin, shape.headDim)
    }
}

/// Grouped-query attention over each sequence's KV cache: projections (with biases and q/k norms
/// where the architecture has them), rotary embedding, causal (optionally sliding-window)
/// softmax attention in f32, output projection.
struct Attention {
    let shape: AttentionShape
    let rope: RotaryEmbedding
    let eps: Float

    init(config: ModelConfig) {
        shape = config.attention
        rope = RotaryEmbedding(headDim: config.attention.headDim, theta: config.attention.ropeTheta, linearFactor: config.attention.ropeFactor)
        eps = Float(config.rmsNormEps)
    }

    /// `output[T, hidden] = o_proj(attention(input))` for the batch's rows, after writing their keys
    /// and values at their positions in layer `layer` of their caches.
    func forward(layer: Int, weights w: AttentionWeights, input: UnsafePointer<Float>, hidden: Int, batch: StepBatch,
                 output: UnsafeMutablePointer<Float>, scratch: AttentionScratch, expertScratch: ExpertScratch) {
        let t = batch.count, d = shape.headDim, heads = shape.heads, kvHeads = shape.keyValueHeads
        let qSize = heads * d, kvSize = kvHeads * d
        scratch.reserve(tokens: t, shape: shape)
        scratch.q.withUnsafeMutableBufferPointer { qb in
        scratch.k.withUnsafeMutableBufferPointer { kb in
        scratch.v.withUnsafeMutableBufferPointer { vb in
        scratch.context.withUnsafeMutableBufferPointer { cb in
        scratch.cos.withUnsafeMutableBufferPointer { cosb in
        scratch.sin.withUnsafeMutableBufferPointer { sinb in
            let q = qb.baseAddress!, k = kb.baseAddress!, v = vb.baseAddress!, context = cb.baseAddress!
            Linear.apply(w.q, input: input, lda: hidden, tokens: t, output: q, ldc: qSize, scratch: expertScratch)
            Linear.apply(w.k, input: input, lda: hidden, tokens: t, output: k, ldc: kvSize, scratch: expertScratch)
            Linear.apply(w.v, input: input, lda: hidden, tokens: t, output: v, ldc: kvSize, scratch: expertScratch)
            if let bias = w.qBias { addBias(bias, to: q, rows: t) }
            if let bias = w.kBias { addBias(bias, to: k, rows: t) }
            if let bias = w.vBias { addBias(bias, to: v, rows: t) }
            switch shape.qkNorm {
            case .none: break
            case .perHead:
                RMSNorm.apply(q, rows: t * heads, count: d, stride: d, weight: w.qNorm!, eps: eps, output: q)
                RMSNorm.apply(k, rows: t * kvHeads, count: d, stride: d, weight: w.kNorm!, eps: eps, output: k)
            case .whole:
                RMSNorm.apply(q, rows: t, count: qSize, stride: qSize, weight: w.qNorm!, eps: eps, output: q)
                RMSNorm.apply(k, rows: t, count: kvSize, stride: kvSize, weight: w.kNorm!, eps: eps, output: k)
            }
            for row in 0..<t {
                rope.apply(q + row * qSize, heads: heads, position: batch.positions[row], cos: cosb.baseAddress!, sin: sinb.baseAddress!)
                rope.apply(k + row * kvSize, heads: kvHeads, position: batch.positions[row], cos: cosb.baseAddress!, sin: sinb.baseAddress!)
            }
            for segment in batch.segments {
                let keys = segment.cache.keys(layer), values = segment.cache.values(layer)
                for i in 0..<segment.count {
                    let row = segment.firstRow + i, position = segment.firstPosition + i
                    (keys + position * kvSize).update(from: k + row * kvSize, count: kvSize)
                    (values + position * kvSize).update(from: v + row * kvSize, count: kvSize)
                }
                for i in 0..<segment.count {
                    let row = segment.firstRow + i, position = segment.firstPosition + i
                    attend(query: q + row * qSize, position: position, keys: keys, values: values, into: context + row * qSize, scratch: scratch)
                }
            }
            Linear.apply(w.o, input: context, lda: qSize, tokens: t, output: output, ldc: hidden, scratch: expertScratch)
        }}}}}}
    }

    /// One token's attention over positions `start...position` of its cache, for every head: per
    /// key/value head, its group of query heads as one `[group, d] · [L, d]ᵀ` product, softmax,
    /// then `[group, L] · [L, d]`.
    private func attend(query: UnsafePointer<Float>, position: Int, keys: UnsafePointer<Float>, values: UnsafePointer<Float>,
                        into context: UnsafeMutablePointer<Float>, scratch: AttentionScratch) {
        let d = shape.headDim, kvHeads = shape.keyValueHeads, group = shape.heads / kvHeads, kvSize = kvHeads * d
        let start = shape.slidingWindow.map { max(0, position - $0 + 1) } ?? 0
        let length = position - start + 1
        if scratch.scores.count < group * length { scratch.scores = [Float](repeating: 0, count: max(group * length, 2 * scratch.scores.count)) }
        let scale = 1 / Float(d).squareRoot()
        scratch.scores.withUnsafeMutableBufferPointer { sb in
            let scores = sb.baseAddress!
            for g in 0..<kvHeads {
                BLAS.gemmTransposedB(m: group, n: length, k: d, a: query + g * group * d, lda: d,
                                     b: keys + start * kvSize + g * d, ldb: kvSize, c: scores, ldc: length)
                for r in 0..<group { softmax(scores + r * length, count: length, scale: scale) }
                BLAS.gemm(m: group, n: d, k: length, a: scores, lda: length, b: values + start * kvSize + g * d, ldb: kvSize,
                          c: context + g * group * d, ldc: d)
            }
        }
    }

    /// `x = softmax(x * scale)` in place.
    private func softmax(_ x: UnsafeMutablePointer<Float>, count: Int, scale: Float) {
        var maximum = -Float.infinity
        for i in 0..<count {
            x[i] *= scale
            maximum = max(maximum, x[i])
        }
        var sum: Double = 0
        for i in 0..<count {
            x[i] = expf(x[i] - maximum)
            sum += Double(x[i])
        }
        let total = Float(sum)
        for i in 0..<count { x[i] /= total }
    }

    private func addBias(_ bias: [Float], to x: UnsafeMutablePointer<Float>, rows: Int) {
        let n = bias.count
        for r in 0..<rows {
            for i in 0..<n { x[r * n + i] += bias[i] }
        }
    }
}
