import MoE

/// A bad or unsupported model for the attention worker; the message names the tensor or field.
public struct ModelLoadError: Error, CustomStringConvertible, Sendable {
    public let description: String
    public init(_ description: String) { self.description = description }
}

/// The weights of one decoder layer's attention.
enum AttentionWeights {
    case grouped(GroupedAttentionWeights)
    case latent(LatentAttentionWeights)
}

/// Grouped-query attention's weights: projections `[out, in]` in their checkpoint dtype, small
/// vectors (biases, norms) widened to f32.
struct GroupedAttentionWeights {
    let q: WeightMatrix
    let k: WeightMatrix
    let v: WeightMatrix
    let o: WeightMatrix
    let qBias: [Float]?
    let kBias: [Float]?
    let vBias: [Float]?
    let oBias: [Float]?
    /// `[headDim]` (per head) or `[heads * headDim]` / `[kvHeads * headDim]` (whole), by `AttentionShape.qkNorm`.
    let qNorm: [Float]?
    let kNorm: [Float]?

    var matrices: [WeightMatrix] { [q, k, v, o] }
}

/// What follows attention in a decoder layer.
enum FeedForward {
    /// A dense SwiGLU MLP (Qwen2-MoE's `mlp_only_layers`, DeepSeek's first layers).
    case dense(ExpertWeights)
    /// An MoE block: gate and shared experts here, routed experts here or on expert pods.
    case moe(MoELayer)
}

struct DecoderLayerWeights {
    let inputNorm: [Float]
    let postAttentionNorm: [Float]
    let attention: AttentionWeights
    let feedForward: FeedForward
}

/// Every non-expert weight of a Qwen3-MoE, Qwen2-MoE, Mixtral, OLMoE or DeepSeek-V2/V3 checkpoint, plus the
/// routed experts when they run in this process. Large matrices stay in the mapped checkpoint.
final class DecoderWeights {
    let config: ModelConfig
    let checkpoint: Checkpoint
    /// `[vocab, hidden]`.
    let embedding: WeightMatrix
    let layers: [DecoderLayerWeights]
    let finalNorm: [Float]
    /// `[vocab, hidden]` (the embedding when tied).
    let lmHead: WeightMatrix

    /// Loads `directory`; with `localExperts` false no routed expert weight is touched (they live on
    /// expert pods), so a worker maps only what it computes.
    init(directory: String, localExperts: Bool) throws {
        let config = try ModelConfig.load(directory: directory)
        guard ["default", "linear", "yarn"].contains(config.attention.ropeType) else {
            throw ModelLoadError("\(directory)/config.json: rope_type '\(config.attention.ropeType)' is not supported (default, linear, yarn)")
        }
        self.config = config
        let checkpoint = try Checkpoint(directory: directory)
        self.checkpoint = checkpoint
        let h = config.hiddenSize
        func matrix(_ name: String, _ rows: Int, _ cols: Int) throws -> WeightMatrix {
            let tensor = try checkpoint.tensor(name)
            try tensor.expectShape([rows, cols])
            return try WeightMatrix(tensor)
        }
        func vector(_ name: String, _ count: Int) throws -> [Float] {
            let tensor = try checkpoint.tensor(name)
            try tensor.expectShape([count])
            return try tensor.floats()
        }
        embedding = try matrix("model.embed_tokens.weight", config.vocabSize, h)
        lmHead = config.tieWordEmbeddings ? embedding : try matrix("lm_head.weight", config.vocabSize, h)
        finalNorm = try vector("model.norm.weight", h)
        // Mapped now rather than at the first tokens (see `WeightMatrix.prefault`).
        embedding.prefault()
        if !config.tieWordEmbeddings { lmHead.prefault() }
        let a = config.attention
        let qSize = a.heads * a.headDim, kvSize = a.keyValueHeads * a.headDim
        layers = try (0..<config.layerCount).map { layer in
            let p = "model.layers.\(layer)"
            let s = "\(p).self_attn"
            let attention: AttentionWeights
            if let latent = a.latent {
                let qk = latent.qkNopeHeadDim + latent.qkRopeHeadDim
                let rank = latent.queryRank
                attention = .latent(LatentAttentionWeights(
                    queryA: try rank.map { try matrix("\(s).q_a_proj.weight", $0, h) },
                    queryABias: a.qkvBias ? try rank.map { try vector("\(s).q_a_proj.bias", $0) } : nil,
                    queryANorm: try rank.map { try vector("\(s).q_a_layernorm.weight", $0) },
                    queryB: try rank.map { try matrix("\(s).q_b_proj.weight", a.heads * qk, $0) },
                    query: rank == nil ? try matrix("\(s).q_proj.weight", a.heads * qk, h) : nil,
                    keyValueA: try matrix("\(s).kv_a_proj_with_mqa.weight", latent.keyValueRank + latent.qkRopeHeadDim, h),
                    keyValueABias: a.qkvBias ? try vector("\(s).kv_a_proj_with_mqa.bias", latent.keyValueRank + latent.qkRopeHeadDim) : nil,
                    keyValueANorm: try vector("\(s).kv_a_layernorm.weight", latent.keyValueRank),
                    keyValueB: try matrix("\(s).kv_b_proj.weight", a.heads * (latent.qkNopeHeadDim + latent.valueHeadDim), latent.keyValueRank),
                    output: try matrix("\(s).o_proj.weight", h, a.heads * latent.valueHeadDim),
                    outputBias: a.qkvBias ? try vector("\(s).o_proj.bias", h) : nil))
            } else {
                attention = .grouped(GroupedAttentionWeights(
                    q: try matrix("\(s).q_proj.weight", qSize, h), k: try matrix("\(s).k_proj.weight", kvSize, h),
                    v: try matrix("\(s).v_proj.weight", kvSize, h), o: try matrix("\(s).o_proj.weight", h, qSize),
                    qBias: a.qkvBias ? try vector("\(s).q_proj.bias", qSize) : nil,
                    kBias: a.qkvBias ? try vector("\(s).k_proj.bias", kvSize) : nil,
                    vBias: a.qkvBias ? try vector("\(s).v_proj.bias", kvSize) : nil,
                    oBias: a.outputBias ? try vector("\(s).o_proj.bias", h) : nil,
                    qNorm: a.qkNorm == .none ? nil : try vector("\(s).q_norm.weight", a.qkNorm == .perHead ? a.headDim : qSize),
                    kNorm: a.qkNorm == .none ? nil : try vector("\(s).k_norm.weight", a.qkNorm == .perHead ? a.headDim : kvSize)))
            }
            let feedForward: FeedForward
            if config.isMoE(layer: layer) {
                feedForward = .moe(try MoELayer(checkpoint: checkpoint, config: config, layer: layer, experts: localExperts ? nil : []))
            } else {
                let f = config.denseFFNSize
                feedForward = .dense(try ExpertWeights(
                    gate: try matrix("\(p).mlp.gate_proj.weight", f, h), up: try matrix("\(p).mlp.up_proj.weight", f, h),
                    down: try matrix("\(p).mlp.down_proj.weight", h, f), hidden: h, ffn: f, file: directory))
            }
            switch attention {
            case .grouped(let weights): for matrix in weights.matrices { matrix.prefault() }
            case .latent(let weights):
                for matrix in [weights.queryA, weights.queryB, weights.query, weights.keyValueA, weights.keyValueB, weights.output] { matrix?.prefault() }
            }
            switch feedForward {
            case .dense(let mlp): mlp.prefault()
            case .moe(let block): block.prefault()
            }
            return DecoderLayerWeights(inputNorm: try vector("\(p).input_layernorm.weight", h),
                                       postAttentionNorm: try vector("\(p).post_attention_layernorm.weight", h),
                                       attention: attention, feedForward: feedForward)
        }
    }
}
