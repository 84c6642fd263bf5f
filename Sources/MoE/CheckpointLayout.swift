/// The tensors a checkpoint of a given config holds, named and shaped exactly as Hugging Face's
/// `save_pretrained` writes them. `eaas model init` writes this layout, and `eaas model inspect`
/// checks a checkpoint against it.
public enum CheckpointLayout {
    /// How routed experts are written.
    public enum ExpertStorage: String, Sendable, CaseIterable {
        /// One tensor per expert and projection (what `save_pretrained` writes).
        case perExpert = "per-expert"
        /// Fused 3-D `experts.gate_up_proj` `[E, 2F, H]` and `experts.down_proj` `[E, H, F]`.
        case fused
    }

    /// Every tensor of the model, in a stable order (embeddings, then layer by layer, then the head).
    public static func entries(for config: ModelConfig, dtype: DType, experts storage: ExpertStorage = .perExpert) -> [TensorEntry] {
        var out: [TensorEntry] = []
        func add(_ name: String, _ shape: [Int], _ type: DType? = nil) { out.append(TensorEntry(name: name, dtype: type ?? dtype, shape: shape)) }
        let h = config.hiddenSize
        add("model.embed_tokens.weight", [config.vocabSize, h])
        for layer in 0..<config.layerCount {
            let p = "model.layers.\(layer)"
            add("\(p).input_layernorm.weight", [h])
            add("\(p).post_attention_layernorm.weight", [h])
            attention(config, prefix: "\(p).self_attn", add: add)
            if config.isMoE(layer: layer) {
                moeBlock(config, layer: layer, storage: storage, add: add)
            } else {
                mlp("\(p).mlp", hidden: h, ffn: config.denseFFNSize, add: add)
            }
        }
        add("model.norm.weight", [h])
        if !config.tieWordEmbeddings { add("lm_head.weight", [config.vocabSize, h]) }
        return out
    }

    /// The name prefix under which `save_pretrained` writes layer `layer`'s MoE block.
    public static func moePrefix(_ config: ModelConfig, layer: Int) -> String {
        config.architecture == .mixtral ? "model.layers.\(layer).block_sparse_moe" : "model.layers.\(layer).mlp"
    }

    private static func moeBlock(_ config: ModelConfig, layer: Int, storage: ExpertStorage, add: (String, [Int], DType?) -> Void) {
        let p = moePrefix(config, layer: layer), h = config.hiddenSize, f = config.expertFFNSize, e = config.expertCount
        add("\(p).gate.weight", [e, h], nil)
        if config.router.usesCorrectionBias { add("\(p).gate.e_score_correction_bias", [e], .f32) }
        switch storage {
        case .perExpert:
            let (g, u, d) = config.architecture == .mixtral ? ("w1", "w3", "w2") : ("gate_proj", "up_proj", "down_proj")
            for i in 0..<e {
                add("\(p).experts.\(i).\(g).weight", [f, h], nil)
                add("\(p).experts.\(i).\(u).weight", [f, h], nil)
                add("\(p).experts.\(i).\(d).weight", [h, f], nil)
            }
        case .fused:
            add("\(p).experts.gate_up_proj", [e, 2 * f, h], nil)
            add("\(p).experts.down_proj", [e, h, f], nil)
        }
        if config.sharedFFNSize > 0 {
            let name = config.architecture == .qwen2Moe ? "shared_expert" : "shared_experts"
            mlp("\(p).\(name)", hidden: h, ffn: config.sharedFFNSize, add: add)
            if config.sharedExpertGated { add("\(p).shared_expert_gate.weight", [1, h], nil) }
        }
    }

    private static func mlp(_ prefix: String, hidden: Int, ffn: Int, add: (String, [Int], DType?) -> Void) {
        add("\(prefix).gate_proj.weight", [ffn, hidden], nil)
        add("\(prefix).up_proj.weight", [ffn, hidden], nil)
        add("\(prefix).down_proj.weight", [hidden, ffn], nil)
    }

    private static func attention(_ config: ModelConfig, prefix p: String, add: (String, [Int], DType?) -> Void) {
        let a = config.attention, h = config.hiddenSize
        if let latent = a.latent {
            let qk = latent.qkNopeHeadDim + latent.qkRopeHeadDim
            if let rank = latent.queryRank {
                add("\(p).q_a_proj.weight", [rank, h], nil)
                add("\(p).q_a_layernorm.weight", [rank], nil)
                add("\(p).q_b_proj.weight", [a.heads * qk, rank], nil)
            } else {
                add("\(p).q_proj.weight", [a.heads * qk, h], nil)
            }
            add("\(p).kv_a_proj_with_mqa.weight", [latent.keyValueRank + latent.qkRopeHeadDim, h], nil)
            add("\(p).kv_a_layernorm.weight", [latent.keyValueRank], nil)
            add("\(p).kv_b_proj.weight", [a.heads * (latent.qkNopeHeadDim + latent.valueHeadDim), latent.keyValueRank], nil)
            add("\(p).o_proj.weight", [h, a.heads * latent.valueHeadDim], nil)
            return
        }
        let q = a.heads * a.headDim, kv = a.keyValueHeads * a.headDim
        add("\(p).q_proj.weight", [q, h], nil)
        add("\(p).k_proj.weight", [kv, h], nil)
        add("\(p).v_proj.weight", [kv, h], nil)
        add("\(p).o_proj.weight", [h, q], nil)
        if a.qkvBias {
            add("\(p).q_proj.bias", [q], nil)
            add("\(p).k_proj.bias", [kv], nil)
            add("\(p).v_proj.bias", [kv], nil)
        }
        if a.outputBias { add("\(p).o_proj.bias", [h], nil) }
        switch a.qkNorm {
        case .none: break
        case .perHead:
            add("\(p).q_norm.weight", [a.headDim], nil)
            add("\(p).k_norm.weight", [a.headDim], nil)
        case .whole:
            add("\(p).q_norm.weight", [q], nil)
            add("\(p).k_norm.weight", [kv], nil)
        }
    }
}
