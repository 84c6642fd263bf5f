import MoE

/// The whole decoder of an MoE model on the attention side: embeddings, per layer RMSNorm →
/// attention → residual → RMSNorm → dense MLP or MoE block → residual, then the final norm and the
/// LM head. One instance per engine thread (it owns its scratch buffers and, remote, its dispatcher).
final class DecoderModel {
    let config: ModelConfig
    let weights: DecoderWeights
    let placement: RoutedExpertPlacement
    private let attention: Attention
    private let attentionScratch = AttentionScratch()
    let expertScratch = ExpertScratch()

    init(weights: DecoderWeights, placement: RoutedExpertPlacement) {
        config = weights.config
        self.weights = weights
        self.placement = placement
        attention = Attention(config: weights.config)
    }

    /// Floats per position of a KV cache's keys and values.
    var cacheWidths: (key: Int, value: Int) { AttentionCore.cacheWidths(config.attention) }

    func makeCache(capacity: Int) -> KVCache {
        KVCache(layers: config.layerCount, capacity: capacity, keyWidth: cacheWidths.key, valueWidth: cacheWidths.value)
    }

    /// Runs the batch's tokens through every layer, writing their keys and values into their
    /// caches (whose lengths then grow by the segments' counts), and returns the logits
    /// `[logitRows.count, vocab]` of the batch rows `logitRows`.
    func forward(_ batch: StepBatch, logitRows: [Int]) throws -> [Float] {
        let t = batch.count, h = config.hiddenSize, eps = Float(config.rmsNormEps)
        guard t > 0 else { return [] }
        for segment in batch.segments {
            precondition(segment.firstPosition == segment.cache.length && segment.cache.length + segment.count <= segment.cache.capacity,
                         "segment does not continue its cache")
        }
        var hidden = [Float](repeating: 0, count: t * h)
        var normed = [Float](repeating: 0, count: t * h)
        var branch = [Float](repeating: 0, count: t * h)
        hidden.withUnsafeMutableBufferPointer { x in
            for (row, token) in batch.tokens.enumerated() {
                FloatConversion.widen(weights.embedding.dtype, from: weights.embedding.base + Int(token) * h * weights.embedding.dtype.byteSize,
                                      to: x.baseAddress! + row * h, count: h)
            }
        }
        for (index, layer) in weights.layers.enumerated() {
            try hidden.withUnsafeMutableBufferPointer { x in
                try normed.withUnsafeMutableBufferPointer { n in
                    try branch.withUnsafeMutableBufferPointer { b in
                        RMSNorm.apply(x.baseAddress!, rows: t, count: h, stride: h, weight: layer.inputNorm, eps: eps, output: n.baseAddress!)
                        attention.forward(layer: index, weights: layer.attention, input: n.baseAddress!, hidden: h, batch: batch,
                                          output: b.baseAddress!, scratch: attentionScratch, expertScratch: expertScratch)
                        for i in 0..<(t * h) { x[i] += b[i] }
                        RMSNorm.apply(x.baseAddress!, rows: t, count: h, stride: h, weight: layer.postAttentionNorm, eps: eps, output: n.baseAddress!)
                        switch layer.feedForward {
                        case .dense(let mlp):
                            ExpertFFN.run(mlp, activation: config.activation, tokens: t, input: n.baseAddress!, output: b.baseAddress!, scratch: expertScratch)
                            for i in 0..<(t * h) { x[i] += b[i] }
                        case .moe(let block):
                            let started = ContinuousClock.now
                            _ = try block.forward(UnsafeBufferPointer(n), tokens: t, scratch: expertScratch, into: b) { routing, output in
                                placement.timings.gate += ContinuousClock.now - started
                                placement.timings.layers += 1
                                try placement.run(block, input: UnsafeBufferPointer(n), routing: routing, output: output, scratch: expertScratch)
                            }
                            for i in 0..<(t * h) { x[i] += b[i] }
                        }
                    }
                }
            }
        }
        for segment in batch.segments { segment.cache.length += segment.count }
        return logits(of: hidden, rows: logitRows)
    }

    /// Final norm and LM head on the chosen rows of `hidden` `[T, hidden]`.
    private func logits(of hidden: [Float], rows: [Int]) -> [Float] {
        let h = config.hiddenSize, vocab = config.vocabSize
        guard !rows.isEmpty else { return [] }
        var selected = [Float](repeating: 0, count: rows.count * h)
        var out = [Float](repeating: 0, count: rows.count * vocab)
        hidden.withUnsafeBufferPointer { x in
            selected.withUnsafeMutableBufferPointer { s in
                for (i, row) in rows.enumerated() {
                    RMSNorm.apply(x.baseAddress! + row * h, rows: 1, count: h, stride: h, weight: weights.finalNorm, eps: Float(config.rmsNormEps),
                                  output: s.baseAddress! + i * h)
                }
                out.withUnsafeMutableBufferPointer { o in
                    Linear.apply(weights.lmHead, input: s.baseAddress!, lda: h, tokens: rows.count, output: o.baseAddress!, ldc: vocab, scratch: expertScratch)
                }
            }
        }
        return out
    }
}
