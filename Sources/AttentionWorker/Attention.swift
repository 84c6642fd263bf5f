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

/// Buffers of the attention layers, reused across layers and steps (grown, never shrunk). Each
/// is its own allocation, so that the buffers of one layer can be held at once.
final class AttentionScratch {
    enum Name: Int, CaseIterable {
        case query, key, value, context, scores, cosine, sine
        /// Latent attention: the compressed query, and the compressed key/value with its rope part.
        case queryLatent, keyValueLatent, keyValue
    }

    private final class Buffer {
        var pointer = UnsafeMutablePointer<Float>.allocate(capacity: 1)
        var capacity = 1
        deinit { pointer.deallocate() }
    }

    private let buffers = Name.allCases.map { _ in Buffer() }

    /// Buffer `name` with room for at least `count` floats (contents not kept when it grows).
    func with<R>(_ name: Name, count: Int, _ body: (UnsafeMutablePointer<Float>) throws -> R) rethrows -> R {
        let buffer = buffers[name.rawValue]
        if buffer.capacity < count {
            buffer.pointer.deallocate()
            buffer.capacity = max(count, 2 * buffer.capacity)
            buffer.pointer = .allocate(capacity: buffer.capacity)
            buffer.pointer.initialize(repeating: 0, count: buffer.capacity)
        }
        return try body(buffer.pointer)
    }
}

/// What every attention variant shares once its queries, keys and values are projected: writing
/// keys and values into the caches, and softmax attention of each query over its cache.
enum AttentionCore {
    /// Floats per position of a cache's keys and values for `shape`.
    static func cacheWidths(_ shape: AttentionShape) -> (key: Int, value: Int) {
        if let latent = shape.latent { return (shape.heads * shape.headDim, shape.heads * latent.valueHeadDim) }
        return (shape.keyValueHeads * shape.headDim, shape.keyValueHeads * shape.headDim)
    }

    /// The shape of the per-head products.
    struct Heads {
        let heads: Int
        let keyValueHeads: Int
        /// Query/key size per head, and value size per head.
        let keyDim: Int
        let valueDim: Int
        let slidingWindow: Int?
        let scale: Float
    }

    /// Writes the batch's keys `[T, kvHeads * keyDim]` and values `[T, kvHeads * valueDim]` into
    /// layer `layer` of their caches, then attends every row's queries `[T, heads * keyDim]` over
    /// its cache into `context` `[T, heads * valueDim]`.
    static func attend(layer: Int, batch: StepBatch, heads: Heads, queries: UnsafePointer<Float>, keys k: UnsafePointer<Float>,
                       values v: UnsafePointer<Float>, context: UnsafeMutablePointer<Float>, scratch: AttentionScratch) {
        let keyWidth = heads.keyValueHeads * heads.keyDim, valueWidth = heads.keyValueHeads * heads.valueDim
        for segment in batch.segments {
            let keys = segment.cache.keys(layer), values = segment.cache.values(layer)
            for i in 0..<segment.count {
                let row = segment.firstRow + i, position = segment.firstPosition + i
                (keys + position * keyWidth).update(from: k + row * keyWidth, count: keyWidth)
                (values + position * valueWidth).update(from: v + row * valueWidth, count: valueWidth)
            }
            for i in 0..<segment.count {
                let row = segment.firstRow + i
                attendOne(query: queries + row * heads.heads * heads.keyDim, position: segment.firstPosition + i, keys: keys, values: values,
                          heads: heads, into: context + row * heads.heads * heads.valueDim, scratch: scratch)
            }
        }
    }

    /// One token's attention over positions `start...position` of its cache, for every head: per
    /// key/value head, its group of query heads as one `[group, keyDim] · [L, keyDim]ᵀ` product,
    /// softmax, then `[group, L] · [L, valueDim]`.
    private static func attendOne(query: UnsafePointer<Float>, position: Int, keys: UnsafePointer<Float>, values: UnsafePointer<Float>,
                                  heads: Heads, into context: UnsafeMutablePointer<Float>, scratch: AttentionScratch) {
        let group = heads.heads / heads.keyValueHeads
        let keyWidth = heads.keyValueHeads * heads.keyDim, valueWidth = heads.keyValueHeads * heads.valueDim
        let start = heads.slidingWindow.map { max(0, position - $0 + 1) } ?? 0
        let length = position - start + 1
        scratch.with(.scores, count: group * length) { scores in
            for g in 0..<heads.keyValueHeads {
                BLAS.gemmTransposedB(m: group, n: length, k: heads.keyDim, a: query + g * group * heads.keyDim, lda: heads.keyDim,
                                     b: keys + start * keyWidth + g * heads.keyDim, ldb: keyWidth, c: scores, ldc: length)
                for r in 0..<group { softmax(scores + r * length, count: length, scale: heads.scale) }
                BLAS.gemm(m: group, n: heads.valueDim, k: length, a: scores, lda: length, b: values + start * valueWidth + g * heads.valueDim,
                          ldb: valueWidth, c: context + g * group * heads.valueDim, ldc: heads.valueDim)
            }
        }
    }

    /// `x = softmax(x * scale)` in place (as transformers' eager attention: scale, max, exp, divide).
    private static func softmax(_ x: UnsafeMutablePointer<Float>, count: Int, scale: Float) {
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

    static func addBias(_ bias: [Float], to x: UnsafeMutablePointer<Float>, rows: Int, stride: Int? = nil) {
        let n = bias.count, step = stride ?? n
        for r in 0..<rows {
            for i in 0..<n { x[r * step + i] += bias[i] }
        }
    }
}

/// An attention layer of the model: grouped-query (Qwen, Mixtral, OLMoE) or multi-head latent
/// (DeepSeek), by its weights.
struct Attention {
    let shape: AttentionShape
    let rope: RotaryEmbedding
    let eps: Float

    init(config: ModelConfig) {
        shape = config.attention
        let ropeDim = config.attention.latent?.qkRopeHeadDim ?? config.attention.headDim
        var rope = RotaryEmbedding(headDim: ropeDim, theta: config.attention.ropeTheta, linearFactor: config.attention.ropeFactor,
                                   yarn: config.attention.yarn)
        rope.interleaved = config.attention.ropeInterleaved
        self.rope = rope
        eps = Float(config.rmsNormEps)
    }

    /// `output[T, hidden] = o_proj(attention(input))` for the batch's rows, after writing their keys
    /// and values at their positions in layer `layer` of their caches.
    func forward(layer: Int, weights: AttentionWeights, input: UnsafePointer<Float>, hidden: Int, batch: StepBatch,
                 output: UnsafeMutablePointer<Float>, scratch: AttentionScratch, expertScratch: ExpertScratch) {
        switch weights {
        case .grouped(let w):
            grouped(layer: layer, weights: w, input: input, hidden: hidden, batch: batch, output: output, scratch: scratch, expertScratch: expertScratch)
        case .latent(let w):
            latent(layer: layer, weights: w, input: input, hidden: hidden, batch: batch, output: output, scratch: scratch, expertScratch: expertScratch)
        }
    }

    /// Grouped-query attention: projections (with biases and q/k norms where the architecture has
    /// them), rotary embedding, attention, output projection.
    private func grouped(layer: Int, weights w: GroupedAttentionWeights, input: UnsafePointer<Float>, hidden: Int, batch: StepBatch,
                         output: UnsafeMutablePointer<Float>, scratch: AttentionScratch, expertScratch: ExpertScratch) {
        let t = batch.count, d = shape.headDim, heads = shape.heads, kvHeads = shape.keyValueHeads
        let qSize = heads * d, kvSize = kvHeads * d
        scratch.with(.query, count: t * qSize) { q in
        scratch.with(.key, count: t * kvSize) { k in
        scratch.with(.value, count: t * kvSize) { v in
        scratch.with(.context, count: t * qSize) { context in
            Linear.apply(w.q, input: input, lda: hidden, tokens: t, output: q, ldc: qSize, scratch: expertScratch)
            Linear.apply(w.k, input: input, lda: hidden, tokens: t, output: k, ldc: kvSize, scratch: expertScratch)
            Linear.apply(w.v, input: input, lda: hidden, tokens: t, output: v, ldc: kvSize, scratch: expertScratch)
            if let bias = w.qBias { AttentionCore.addBias(bias, to: q, rows: t) }
            if let bias = w.kBias { AttentionCore.addBias(bias, to: k, rows: t) }
            if let bias = w.vBias { AttentionCore.addBias(bias, to: v, rows: t) }
            switch shape.qkNorm {
            case .none: break
            case .perHead:
                RMSNorm.apply(q, rows: t * heads, count: d, stride: d, weight: w.qNorm!, eps: eps, output: q)
                RMSNorm.apply(k, rows: t * kvHeads, count: d, stride: d, weight: w.kNorm!, eps: eps, output: k)
            case .whole:
                RMSNorm.apply(q, rows: t, count: qSize, stride: qSize, weight: w.qNorm!, eps: eps, output: q)
                RMSNorm.apply(k, rows: t, count: kvSize, stride: kvSize, weight: w.kNorm!, eps: eps, output: k)
            }
            if let clip = shape.clipQKV.map(Float.init) {
                for (x, n) in [(q, t * qSize), (k, t * kvSize), (v, t * kvSize)] {
                    for i in 0..<n { x[i] = min(max(x[i], -clip), clip) }
                }
            }
            scratch.with(.cosine, count: d) { cos in
                scratch.with(.sine, count: d) { sin in
                    for row in 0..<t {
                        rope.angles(position: batch.positions[row], cos: cos, sin: sin)
                        for h in 0..<heads { rope.rotate(q + row * qSize + h * d, cos: cos, sin: sin) }
                        for h in 0..<kvHeads { rope.rotate(k + row * kvSize + h * d, cos: cos, sin: sin) }
                    }
                }
            }
            AttentionCore.attend(layer: layer, batch: batch,
                                 heads: .init(heads: heads, keyValueHeads: kvHeads, keyDim: d, valueDim: d, slidingWindow: shape.slidingWindow,
                                              scale: 1 / Float(d).squareRoot()),
                                 queries: q, keys: k, values: v, context: context, scratch: scratch)
            Linear.apply(w.o, input: context, lda: qSize, tokens: t, output: output, ldc: hidden, scratch: expertScratch)
            if let bias = w.oBias { AttentionCore.addBias(bias, to: output, rows: t) }
        }}}}
    }
}
