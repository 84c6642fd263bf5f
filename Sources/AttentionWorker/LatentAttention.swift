import Foundation
import MoE

/// Multi-head latent attention's weights (DeepSeek-V2/V3): queries through a low-rank
/// `q_a_proj → q_a_layernorm → q_b_proj` (or one `q_proj`), keys and values from one compressed
/// latent `kv_a_proj_with_mqa → kv_a_layernorm → kv_b_proj` plus a rotary key part shared by all
/// heads.
struct LatentAttentionWeights {
    let queryA: WeightMatrix?
    let queryABias: [Float]?
    let queryANorm: [Float]?
    let queryB: WeightMatrix?
    /// Set when queries are projected directly (`q_lora_rank` null).
    let query: WeightMatrix?
    let keyValueA: WeightMatrix
    let keyValueABias: [Float]?
    let keyValueANorm: [Float]
    let keyValueB: WeightMatrix
    let output: WeightMatrix
    let outputBias: [Float]?
}

extension Attention {
    /// The latent norms use RMSNorm's default epsilon, not the config's (as transformers builds them).
    static let latentNormEpsilon: Float = 1e-6

    /// DeepSeek's attention for the batch's rows: queries `[T, H, nope + rope]`, keys
    /// `[T, H, nope + rope]` (the rope part shared by the heads), values `[T, H, v]`, cached
    /// expanded, so that decoding reads them like grouped-query attention with one head per group.
    func latent(layer: Int, weights w: LatentAttentionWeights, input: UnsafePointer<Float>, hidden: Int, batch: StepBatch,
                output: UnsafeMutablePointer<Float>, scratch: AttentionScratch, expertScratch: ExpertScratch) {
        let latent = shape.latent!
        let t = batch.count, heads = shape.heads, nope = latent.qkNopeHeadDim, ropeDim = latent.qkRopeHeadDim
        let qk = nope + ropeDim, valueDim = latent.valueHeadDim, rank = latent.keyValueRank
        let qSize = heads * qk, vSize = heads * valueDim, kvStride = rank + ropeDim, expanded = heads * (nope + valueDim)
        scratch.with(.query, count: t * qSize) { q in
        scratch.with(.key, count: t * qSize) { k in
        scratch.with(.value, count: t * vSize) { v in
        scratch.with(.context, count: t * vSize) { context in
        scratch.with(.keyValueLatent, count: t * kvStride) { ckv in
        scratch.with(.keyValue, count: t * expanded) { kv in
            if let queryA = w.queryA, let queryB = w.queryB, let queryRank = latent.queryRank {
                scratch.with(.queryLatent, count: t * queryRank) { qa in
                    Linear.apply(queryA, input: input, lda: hidden, tokens: t, output: qa, ldc: queryRank, scratch: expertScratch)
                    if let bias = w.queryABias { AttentionCore.addBias(bias, to: qa, rows: t) }
                    RMSNorm.apply(qa, rows: t, count: queryRank, stride: queryRank, weight: w.queryANorm!, eps: Self.latentNormEpsilon, output: qa)
                    Linear.apply(queryB, input: qa, lda: queryRank, tokens: t, output: q, ldc: qSize, scratch: expertScratch)
                }
            } else {
                Linear.apply(w.query!, input: input, lda: hidden, tokens: t, output: q, ldc: qSize, scratch: expertScratch)
            }
            Linear.apply(w.keyValueA, input: input, lda: hidden, tokens: t, output: ckv, ldc: kvStride, scratch: expertScratch)
            if let bias = w.keyValueABias { AttentionCore.addBias(bias, to: ckv, rows: t) }
            RMSNorm.apply(ckv, rows: t, count: rank, stride: kvStride, weight: w.keyValueANorm, eps: Self.latentNormEpsilon, output: ckv)
            Linear.apply(w.keyValueB, input: ckv, lda: kvStride, tokens: t, output: kv, ldc: expanded, scratch: expertScratch)
            scratch.with(.cosine, count: ropeDim) { cos in
                scratch.with(.sine, count: ropeDim) { sin in
                    for row in 0..<t {
                        rope.angles(position: batch.positions[row], cos: cos, sin: sin)
                        for h in 0..<heads { rope.rotate(q + row * qSize + h * qk + nope, cos: cos, sin: sin) }
                        rope.rotate(ckv + row * kvStride + rank, cos: cos, sin: sin)
                    }
                }
            }
            for row in 0..<t {
                for h in 0..<heads {
                    let source = kv + row * expanded + h * (nope + valueDim)
                    (k + row * qSize + h * qk).update(from: source, count: nope)
                    (k + row * qSize + h * qk + nope).update(from: ckv + row * kvStride + rank, count: ropeDim)
                    (v + row * vSize + h * valueDim).update(from: source + nope, count: valueDim)
                }
            }
            AttentionCore.attend(layer: layer, batch: batch,
                                 heads: .init(heads: heads, keyValueHeads: heads, keyDim: qk, valueDim: valueDim, slidingWindow: nil,
                                              scale: shape.yarn.map { Float(pow(Double(qk), -0.5) * $0.softmaxScaleFactor) } ?? 1 / Float(qk).squareRoot()),
                                 queries: q, keys: k, values: v, context: context, scratch: scratch)
            Linear.apply(w.output, input: context, lda: vSize, tokens: t, output: output, ldc: hidden, scratch: expertScratch)
            if let bias = w.outputBias { AttentionCore.addBias(bias, to: output, rows: t) }
        }}}}}}
    }
}
