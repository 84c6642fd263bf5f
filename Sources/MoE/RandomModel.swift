import JSON
import Foundation

/// The shape of a random model for `eaas model init`. Every field has a default derived from the
/// required four (`layers`, `experts`, `topK`, `hidden`), chosen to look like the real models of
/// each architecture.
public struct RandomModelSpec: Sendable {
    public var architecture: Architecture
    /// Decoder layers.
    public var layers: Int
    /// Routed experts per MoE layer.
    public var experts: Int
    /// Experts per token.
    public var topK: Int
    /// Hidden size.
    public var hidden: Int
    /// Routed expert FFN size; default `hidden / 2` rounded to a multiple of 8.
    public var expertFFN: Int?
    /// Shared experts (DeepSeek: count of expert-sized FFNs; Qwen2-MoE: a gated block of that many
    /// expert sizes); default 2 for DeepSeek-V2, 1 for DeepSeek-V3, 4 for Qwen2-MoE, 0 elsewhere.
    public var sharedExperts: Int?
    /// Leading dense layers (DeepSeek `first_k_dense_replace`, Qwen `mlp_only_layers`); default 0.
    public var denseLayers: Int = 0
    /// Vocabulary size.
    public var vocab: Int = 1024
    /// Attention heads; default `hidden / 64`, at least 1.
    public var heads: Int?
    /// Key/value heads; default `heads / 4`, at least 1.
    public var keyValueHeads: Int?
    /// Expert groups for group-limited routing (DeepSeek); default 1 for V2, up to 8 for V3.
    public var groups: Int?
    /// Weight dtype on disk.
    public var dtype: DType = .bf16
    /// Seed of every tensor's generator.
    public var seed: UInt64 = 0
    /// Standard deviation of the weights (uniformly distributed, like transformers' `initializer_range`).
    public var weightStd: Double = 0.02
    /// Topics (`TopicRouting`): 0 for none; else at least 2, with at least top-k experts each.
    public var topics = 0

    /// A spec with the four required sizes; the rest take their defaults.
    public init(architecture: Architecture, layers: Int, experts: Int, topK: Int, hidden: Int) {
        self.architecture = architecture
        self.layers = layers
        self.experts = experts
        self.topK = topK
        self.hidden = hidden
    }

    /// The Hugging Face `config.json` object for this spec.
    public func configJSON() throws -> [String: JSONValue] {
        guard layers >= 1, experts >= 1, hidden >= 1 else {
            throw ModelConfigError(source: "model init", reason: "--layers, --experts and --hidden must be at least 1")
        }
        guard topK >= 1, topK <= experts else {
            throw ModelConfigError(source: "model init", reason: "--top-k \(topK) must be between 1 and --experts \(experts)")
        }
        guard denseLayers >= 0, denseLayers < layers else {
            throw ModelConfigError(source: "model init", reason: "--dense-layers \(denseLayers) must leave at least one of the \(layers) layers MoE")
        }
        let ffn = expertFFN ?? max(8, (hidden / 2 + 7) / 8 * 8)
        let heads = self.heads ?? max(1, hidden / 64)
        guard heads >= 1, (keyValueHeads ?? 1) >= 1, ffn >= 1, vocab >= 1, (sharedExperts ?? 0) >= 0, (groups ?? 1) >= 1 else {
            throw ModelConfigError(source: "model init", reason: "--heads, --kv-heads, --ffn, --vocab and --groups must be at least 1, --shared-experts at least 0")
        }
        guard hidden % heads == 0 else {
            throw ModelConfigError(source: "model init", reason: "--hidden \(hidden) must be a multiple of --heads \(heads)")
        }
        if topics != 0 {
            guard topics >= 2, experts / topics >= topK, vocab >= topics else {
                throw ModelConfigError(source: "model init", reason: "--topics \(topics) needs at least 2 topics, --top-k \(topK) experts per topic (--experts \(experts) / topics) and a token per topic")
            }
        }
        let kvHeads = keyValueHeads ?? max(1, heads / 4)
        let headDim = hidden / heads
        var c: [String: JSONValue] = topics > 0 ? ["eaas_topics": .int(topics)] : [:]
        c.merge([
            "architectures": [.string(architecture.rawValue)], "model_type": .string(architecture.modelType),
            "hidden_size": .int(hidden), "num_hidden_layers": .int(layers), "vocab_size": .int(vocab),
            "num_attention_heads": .int(heads), "num_key_value_heads": .int(kvHeads), "hidden_act": "silu",
            "max_position_embeddings": 4096, "rms_norm_eps": 1e-6, "rope_theta": 10000.0,
            "tie_word_embeddings": false, "initializer_range": .double(weightStd),
            "torch_dtype": .string(dtype.torchName), "bos_token_id": 1, "eos_token_id": 2,
            "num_experts_per_tok": .int(topK), "attention_dropout": 0.0,
        ]) { $1 }
        let dense = JSONValue.array((0..<denseLayers).map { .int($0) })
        switch architecture {
        case .mixtral:
            guard denseLayers == 0 else { throw ModelConfigError(source: "model init", reason: "Mixtral has no dense layers (--dense-layers)") }
            c["intermediate_size"] = .int(ffn)
            c["num_local_experts"] = .int(experts)
        case .qwen2Moe:
            c["moe_intermediate_size"] = .int(ffn)
            c["intermediate_size"] = .int(4 * ffn)
            c["num_experts"] = .int(experts)
            c["shared_expert_intermediate_size"] = .int((sharedExperts ?? 4) * ffn)
            c["norm_topk_prob"] = false
            c["decoder_sparse_step"] = 1
            c["mlp_only_layers"] = dense
            c["qkv_bias"] = true
        case .qwen3Moe:
            c["moe_intermediate_size"] = .int(ffn)
            c["intermediate_size"] = .int(4 * ffn)
            c["num_experts"] = .int(experts)
            c["norm_topk_prob"] = true
            c["decoder_sparse_step"] = 1
            c["mlp_only_layers"] = dense
            c["head_dim"] = .int(headDim)
            c["attention_bias"] = false
        case .olmoe:
            guard denseLayers == 0 else { throw ModelConfigError(source: "model init", reason: "OLMoE has no dense layers (--dense-layers)") }
            c["intermediate_size"] = .int(ffn)
            c["num_experts"] = .int(experts)
            c["norm_topk_prob"] = false
        case .deepseekV2, .deepseekV3:
            let v3 = architecture == .deepseekV3
            c["moe_intermediate_size"] = .int(ffn)
            c["intermediate_size"] = .int(4 * ffn)
            c["n_routed_experts"] = .int(experts)
            c["n_shared_experts"] = .int(sharedExperts ?? (v3 ? 1 : 2))
            c["first_k_dense_replace"] = .int(denseLayers)
            c["moe_layer_freq"] = 1
            c["num_key_value_heads"] = .int(heads)
            c["kv_lora_rank"] = .int(max(16, hidden / 4))
            c["q_lora_rank"] = .int(max(16, hidden / 2))
            c["qk_nope_head_dim"] = .int(headDim)
            c["qk_rope_head_dim"] = .int(max(2, headDim / 2))
            c["v_head_dim"] = .int(headDim)
            c["head_dim"] = .int(max(2, headDim / 2))
            let groups = self.groups ?? (v3 ? Self.defaultGroups(experts: experts, topK: topK) : 1)
            let groupsPerToken = max(1, groups / 2)
            if v3 {
                c["topk_method"] = "noaux_tc"
                c["n_group"] = .int(groups)
                c["topk_group"] = .int(groupsPerToken)
                c["norm_topk_prob"] = true
                c["routed_scaling_factor"] = 2.5
                c["scoring_func"] = "sigmoid"
            } else {
                c["topk_method"] = .string(groups > 1 ? "group_limited_greedy" : "greedy")
                c["n_group"] = .int(groups)
                c["topk_group"] = .int(groupsPerToken)
                c["norm_topk_prob"] = false
                c["routed_scaling_factor"] = 1.0
                c["scoring_func"] = "softmax"
            }
        }
        return c
    }

    /// The most groups (8, 4, 2 or 1) that leave each group two experts and room for top-k in half of them.
    static func defaultGroups(experts: Int, topK: Int) -> Int {
        for g in [8, 4, 2] where experts % g == 0 && experts / g >= 2 && topK <= max(1, g / 2) * (experts / g) { return g }
        return 1
    }
}

/// Writes seeded random checkpoints (config.json + safetensors) of any supported architecture, so
/// nothing at run time needs Python or a download. The same spec and seed give the same bytes.
public enum RandomModel {
    /// Writes the model into `directory` (created if needed) and returns its config.
    @discardableResult
    public static func write(
        _ spec: RandomModelSpec, to directory: String, experts storage: CheckpointLayout.ExpertStorage = .perExpert,
        maxShardBytes: Int = 4 << 30
    ) throws -> ModelConfig {
        let json = try spec.configJSON()
        let data = Data((JSONValue.object(json).serialized() + "\n").utf8)
        let config = try ModelConfig(json: data, source: "model init")
        try FileManager.default.createDirectory(atPath: directory, withIntermediateDirectories: true)
        try data.write(to: URL(fileURLWithPath: directory + "/config.json"), options: .atomic)
        let entries = CheckpointLayout.entries(for: config, dtype: spec.dtype, experts: storage)
        let writer = try CheckpointWriter(directory: directory, entries: entries, maxShardBytes: maxShardBytes,
                                          metadata: ["format": "pt", "generator": "eaas model init", "seed": String(spec.seed)])
        let topics = spec.topics > 0 ? TopicRouting(topics: spec.topics, vocab: spec.vocab, experts: spec.experts) : nil
        for entry in entries {
            var floats = values(for: entry, spec: spec, config: config)
            topics?.shape(entry.name, values: &floats, shape: entry.shape)
            try writer.append(entry.name, floats: floats)
        }
        try writer.finish()
        return config
    }

    /// The values of one tensor: norms are ones, biases zeros, everything else uniform with the
    /// spec's standard deviation from a generator seeded by (seed, tensor name), so that each
    /// tensor is the same whatever else the model holds. A fused expert tensor is made of the
    /// per-expert tensors it stands for, so both storages hold the same model.
    static func values(for entry: TensorEntry, spec: RandomModelSpec, config: ModelConfig) -> [Float] {
        if entry.name.hasSuffix(".experts.gate_up_proj") || entry.name.hasSuffix(".experts.down_proj") {
            let prefix = String(entry.name.dropLast(entry.name.hasSuffix("gate_up_proj") ? "gate_up_proj".count : "down_proj".count))
            let mixtral = config.architecture == .mixtral
            let parts = entry.name.hasSuffix("gate_up_proj") ? (mixtral ? ["w1", "w3"] : ["gate_proj", "up_proj"]) : (mixtral ? ["w2"] : ["down_proj"])
            let rows = entry.shape[1] / parts.count
            return (0..<entry.shape[0]).flatMap { e in
                parts.flatMap { part in
                    values(named: "\(prefix)\(e).\(part).weight", count: rows * entry.shape[2], spec: spec)
                }
            }
        }
        return values(named: entry.name, count: entry.shape.reduce(1, *), spec: spec)
    }

    private static func values(named name: String, count: Int, spec: RandomModelSpec) -> [Float] {
        if name.hasSuffix("norm.weight") { return [Float](repeating: 1, count: count) }
        if name.hasSuffix(".bias") { return [Float](repeating: 0, count: count) }
        var rng = SplitMix64(seed: spec.seed ^ fnv1a(name))
        let std = Float(name.hasSuffix("e_score_correction_bias") ? 0.01 : spec.weightStd)
        let halfWidth = std * 3.0.squareRoot().float
        return (0..<count).map { _ in (rng.nextUnit() * 2 - 1) * halfWidth }
    }

    static func fnv1a(_ string: String) -> UInt64 {
        var hash: UInt64 = 0xcbf2_9ce4_8422_2325
        for byte in string.utf8 {
            hash ^= UInt64(byte)
            hash = hash &* 0x0000_0100_0000_01b3
        }
        return hash
    }
}

/// SplitMix64: a small, fast, well-mixed seeded generator.
struct SplitMix64: RandomNumberGenerator {
    private var state: UInt64

    init(seed: UInt64) { state = seed }

    mutating func next() -> UInt64 {
        state &+= 0x9e37_79b9_7f4a_7c15
        var z = state
        z = (z ^ (z >> 30)) &* 0xbf58_476d_1ce4_e5b9
        z = (z ^ (z >> 27)) &* 0x94d0_49bb_1331_11eb
        return z ^ (z >> 31)
    }

    /// Uniform in [0, 1) with 24 bits.
    mutating func nextUnit() -> Float { Float(next() >> 40) * (1.0 / 16_777_216.0) }
}

private extension Double {
    var float: Float { Float(self) }
}
