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
        try forward(microBatches: [batch], logitRows: [logitRows])
    }

    /// `forward` over micro-batches of distinct sequences, pipelined (MegaScale-Infer's ping-pong):
    /// each MoE layer of micro-batch `i` sends its tokens to the experts and, while the pods
    /// compute them, the worker runs micro-batch `i + 1`'s attention; then it takes `i`'s answers
    /// and goes on to its next layer. With remote experts on their own cores, attention and
    /// expert time overlap instead of adding up. Each sequence's arithmetic is the same as in
    /// one batch. Returns the logits of each micro-batch's `logitRows`, in micro-batch order.
    func forward(microBatches batches: [StepBatch], logitRows: [[Int]]) throws -> [Float] {
        precondition(batches.count == logitRows.count && batches.count <= placement.lanes, "one logit row list per micro-batch, at most one per lane")
        let lanes = batches.map { batch in
            for segment in batch.segments {
                precondition(segment.firstPosition == segment.cache.length && segment.cache.length + segment.count <= segment.cache.capacity,
                             "segment does not continue its cache")
            }
            return MicroBatch(batch, embedding: weights.embedding, hidden: config.hiddenSize)
        }
        guard lanes.contains(where: { $0.rows > 0 }) else { return [] }
        // Per lane, the MoE layer whose experts are in flight.
        var pending = [MoELayer?](repeating: nil, count: lanes.count)
        do {
            for (index, layer) in weights.layers.enumerated() {
                for (lane, micro) in lanes.enumerated() where micro.rows > 0 {
                    if let block = pending[lane] {
                        pending[lane] = nil
                        try finishExperts(block, micro, lane: lane)
                    }
                    pending[lane] = try startLayer(index, layer, micro, lane: lane)
                }
            }
            // Each lane's LM head as soon as its last layer is in: lane 0's runs while the pods
            // compute lane 1's last experts.
            var logits: [Float] = []
            for (lane, micro) in lanes.enumerated() {
                if let block = pending[lane] {
                    pending[lane] = nil
                    try finishExperts(block, micro, lane: lane)
                }
                logits += self.logits(of: micro.hidden, rows: logitRows[lane])
            }
            for micro in lanes {
                for segment in micro.batch.segments { segment.cache.length += segment.count }
            }
            return logits
        } catch {
            // A lane that failed leaves the others' steps unread: they must not reach a later step.
            for lane in pending.indices where pending[lane] != nil { placement.abandon(lane: lane) }
            throw error
        }
    }

    /// One layer of `micro` up to its experts: norm, attention, residual, norm, then the dense MLP
    /// (done here) or the MoE block's gate with its routed experts started on `lane`. Returns the
    /// MoE block whose experts are in flight.
    private func startLayer(_ index: Int, _ layer: DecoderLayerWeights, _ micro: MicroBatch, lane: Int) throws -> MoELayer? {
        let t = micro.rows, h = config.hiddenSize, eps = Float(config.rmsNormEps)
        let x = micro.hidden, n = micro.normed, b = micro.branch
        RMSNorm.apply(x.baseAddress!, rows: t, count: h, stride: h, weight: layer.inputNorm, eps: eps, output: n.baseAddress!)
        attention.forward(layer: index, weights: layer.attention, input: n.baseAddress!, hidden: h, batch: micro.batch,
                          output: b.baseAddress!, scratch: attentionScratch, expertScratch: expertScratch)
        for i in 0..<(t * h) { x[i] += b[i] }
        RMSNorm.apply(x.baseAddress!, rows: t, count: h, stride: h, weight: layer.postAttentionNorm, eps: eps, output: n.baseAddress!)
        switch layer.feedForward {
        case .dense(let mlp):
            ExpertFFN.run(mlp, activation: config.activation, tokens: t, input: n.baseAddress!, output: b.baseAddress!, scratch: expertScratch)
            for i in 0..<(t * h) { x[i] += b[i] }
            return nil
        case .moe(let block):
            let started = ContinuousClock.now
            let (_, routing) = block.route(UnsafeBufferPointer(n), tokens: t, scratch: expertScratch)
            placement.timings.gate += ContinuousClock.now - started
            placement.timings.layers += 1
            b.update(repeating: 0)
            try placement.begin(block, input: UnsafeBufferPointer(n), routing: routing, output: b, scratch: expertScratch, lane: lane)
            return block
        }
    }

    /// The rest of an MoE layer of `micro`: its routed experts' sums in, the shared experts, the residual.
    private func finishExperts(_ block: MoELayer, _ micro: MicroBatch, lane: Int) throws {
        try placement.complete(lane: lane)
        let t = micro.rows, h = config.hiddenSize
        block.addSharedExperts(UnsafeBufferPointer(micro.normed), tokens: t, into: micro.branch, scratch: expertScratch)
        let x = micro.hidden, b = micro.branch
        for i in 0..<(t * h) { x[i] += b[i] }
    }

    /// Final norm and LM head on the chosen rows of `hidden` `[T, hidden]`.
    private func logits(of hidden: UnsafeMutableBufferPointer<Float>, rows: [Int]) -> [Float] {
        let h = config.hiddenSize, vocab = config.vocabSize
        guard !rows.isEmpty else { return [] }
        var selected = [Float](repeating: 0, count: rows.count * h)
        var out = [Float](repeating: 0, count: rows.count * vocab)
        do {
            let x = hidden
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

/// One micro-batch's rows through the decoder: its batch and its own hidden, normed and branch
/// buffers `[rows, hidden]`, which stay put while its experts are in flight (the dispatcher reads
/// the normed states and writes the branch).
private final class MicroBatch {
    let batch: StepBatch
    let rows: Int
    let hidden: UnsafeMutableBufferPointer<Float>
    let normed: UnsafeMutableBufferPointer<Float>
    let branch: UnsafeMutableBufferPointer<Float>

    /// `batch`'s token embeddings, widened to f32.
    init(_ batch: StepBatch, embedding: WeightMatrix, hidden h: Int) {
        self.batch = batch
        rows = batch.count
        hidden = .allocate(capacity: max(1, rows * h))
        normed = .allocate(capacity: max(1, rows * h))
        branch = .allocate(capacity: max(1, rows * h))
        normed.initialize(repeating: 0)
        branch.initialize(repeating: 0)
        for (row, token) in batch.tokens.enumerated() {
            FloatConversion.widen(embedding.dtype, from: embedding.base + Int(token) * h * embedding.dtype.byteSize,
                                  to: hidden.baseAddress! + row * h, count: h)
        }
    }

    deinit {
        hidden.deallocate()
        normed.deallocate()
        branch.deallocate()
    }
}
