import JSON
import Foundation

/// The MoE architectures EaaS serves, by their Hugging Face class name.
public enum Architecture: String, Sendable, CaseIterable, Codable {
    case mixtral = "MixtralForCausalLM"
    case qwen2Moe = "Qwen2MoeForCausalLM"
    case qwen3Moe = "Qwen3MoeForCausalLM"
    case olmoe = "OlmoeForCausalLM"
    case deepseekV2 = "DeepseekV2ForCausalLM"
    case deepseekV3 = "DeepseekV3ForCausalLM"

    /// The short name used on the command line (`mixtral`, `qwen2-moe`, …).
    public var cliName: String {
        switch self {
        case .mixtral: "mixtral"
        case .qwen2Moe: "qwen2-moe"
        case .qwen3Moe: "qwen3-moe"
        case .olmoe: "olmoe"
        case .deepseekV2: "deepseek-v2"
        case .deepseekV3: "deepseek-v3"
        }
    }

    /// `model_type` in `config.json`.
    public var modelType: String {
        switch self {
        case .mixtral: "mixtral"
        case .qwen2Moe: "qwen2_moe"
        case .qwen3Moe: "qwen3_moe"
        case .olmoe: "olmoe"
        case .deepseekV2: "deepseek_v2"
        case .deepseekV3: "deepseek_v3"
        }
    }

    /// The architecture of a command-line name (`qwen3-moe`), or nil.
    public init?(cliName: String) {
        guard let match = Self.allCases.first(where: { $0.cliName == cliName.lowercased() }) else { return nil }
        self = match
    }

    /// Whether the attention is DeepSeek's multi-head latent attention.
    public var usesLatentAttention: Bool { self == .deepseekV2 || self == .deepseekV3 }
}

/// The expert FFN's activation (`hidden_act`); the FFN is `down(act(gate(x)) * up(x))`.
public enum Activation: String, Sendable, Codable {
    case silu
    /// Exact (erf) GELU.
    case gelu
    /// tanh-approximated GELU (`gelu_pytorch_tanh`, `gelu_new`).
    case geluTanh = "gelu_pytorch_tanh"
    case relu

    init?(hfName: String) {
        switch hfName {
        case "silu", "swish": self = .silu
        case "gelu": self = .gelu
        case "gelu_pytorch_tanh", "gelu_new", "gelu_fast": self = .geluTanh
        case "relu": self = .relu
        default: return nil
        }
    }
}

/// Multi-head latent attention dimensions (DeepSeek-V2/V3).
public struct LatentAttentionShape: Sendable, Equatable {
    /// Rank of the query compression (`q_lora_rank`); nil when queries are projected directly.
    public var queryRank: Int?
    /// Rank of the joint key/value compression (`kv_lora_rank`).
    public var keyValueRank: Int
    /// Per-head q/k size without rotary embedding (`qk_nope_head_dim`).
    public var qkNopeHeadDim: Int
    /// Per-head q/k size with rotary embedding (`qk_rope_head_dim`).
    public var qkRopeHeadDim: Int
    /// Per-head value size (`v_head_dim`).
    public var valueHeadDim: Int
}

/// The attention part's shape, enough to lay out and check its tensors.
public struct AttentionShape: Sendable, Equatable {
    /// How q/k normalisation is applied, if at all.
    public enum QKNorm: String, Sendable {
        case none
        /// RMSNorm over each head (`q_norm`/`k_norm` of size head_dim; Qwen3-MoE).
        case perHead
        /// RMSNorm over the whole projection (OLMoE).
        case whole
    }

    /// Query heads.
    public var heads: Int
    /// Key/value heads (grouped-query attention when fewer than `heads`).
    public var keyValueHeads: Int
    /// Size of one head (q/k size for latent attention: nope + rope parts).
    public var headDim: Int
    /// Whether q/k/v projections have biases (Qwen2-MoE; `attention_bias` elsewhere).
    public var qkvBias: Bool
    /// Whether the output projection has a bias (`attention_bias` of Qwen3-MoE and OLMoE).
    public var outputBias = false
    /// OLMoE's `clip_qkv`: q, k and v are clamped to ±this after the q/k norms.
    public var clipQKV: Double?
    public var qkNorm: QKNorm
    /// Set for DeepSeek's latent attention, where heads/headDim describe the output side.
    public var latent: LatentAttentionShape?
    /// Rotary embedding base.
    public var ropeTheta: Double
    /// `rope_type` of `rope_parameters` (or the older `rope_scaling`): "default" when absent.
    public var ropeType: String = "default"
    /// The scaling factor of `linear` rope scaling (positions divided by it); 1 otherwise.
    public var ropeFactor: Double = 1
    /// YaRN's parameters when `rope_type` is "yarn" (DeepSeek-V2/V3 as released, long-context Qwen).
    public var yarn: YarnScaling?
    /// Whether rotary pairs are adjacent values `(x[2i], x[2i+1])` (DeepSeek) rather than the two
    /// halves of the head (`rotate_half`).
    public var ropeInterleaved = false
    /// Attention looks back at most this many positions (`sliding_window`, where the
    /// architecture applies it); nil for full attention.
    public var slidingWindow: Int?
}

/// A bad `config.json`: the message names the file and the field (or the architecture).
public struct ModelConfigError: Error, CustomStringConvertible, Sendable, Equatable {
    public let source: String
    public let reason: String
    public var description: String { "\(source): \(reason)" }
}

/// What EaaS needs to know of a model, read from a Hugging Face `config.json`.
///
/// Fields that every config of an architecture must state (sizes, counts, top-k) are required and
/// a missing one is an error naming it; fields that transformers gives a default to
/// (`norm_topk_prob`, `decoder_sparse_step`, `first_k_dense_replace`, `routed_scaling_factor`, …)
/// take that same default.
public struct ModelConfig: Sendable, Equatable {
    public var architecture: Architecture
    /// Model width (`hidden_size`).
    public var hiddenSize: Int
    /// Decoder layers (`num_hidden_layers`).
    public var layerCount: Int
    public var vocabSize: Int
    /// FFN size of the dense (non-MoE) layers.
    public var denseFFNSize: Int
    /// FFN size of one routed expert.
    public var expertFFNSize: Int
    /// FFN size of the shared expert block (all shared experts together); 0 when there is none.
    public var sharedFFNSize: Int
    /// Whether the shared expert's output is scaled by `sigmoid(x · shared_expert_gate)` (Qwen2-MoE).
    public var sharedExpertGated: Bool
    /// How tokens are routed to experts.
    public var router: RouterSpec
    public var activation: Activation
    /// Indices of the decoder layers whose MLP is an MoE block, ascending.
    public var moeLayers: [Int]
    public var attention: AttentionShape
    /// Epsilon of the RMS norms.
    public var rmsNormEps: Double
    /// Whether the LM head shares the embedding matrix (then there is no `lm_head.weight`).
    public var tieWordEmbeddings: Bool
    /// The dtype the checkpoint says its weights are in, if it says.
    public var dtype: DType?
    /// Longest sequence the positions were trained for (`max_position_embeddings`).
    public var maxPositions: Int
    /// Tokens that end a generation (`eos_token_id`, a number or a list); may be empty.
    public var eosTokenIDs: [Int]

    /// Upper bounds on config values: far above any released model, low enough that no product of
    /// them can overflow or ask for an absurd allocation before a checkpoint is even opened.
    public enum Limits {
        /// Hidden, FFN and latent-rank sizes.
        public static let size = 1 << 20
        public static let layers = 4096
        public static let vocab = 1 << 24
        /// Routed experts per layer: ids travel as u16 on the wire, 0xFFFF reserved.
        public static let experts = 65_535
        public static let heads = 4096
        public static let headDim = 4096
    }

    /// Whether decoder layer `layer` has an MoE block.
    public func isMoE(layer: Int) -> Bool { moeLayers.contains(layer) }

    /// Routed experts per MoE layer.
    public var expertCount: Int { router.experts }

    /// Reads `DIR/config.json`.
    public static func load(directory: String) throws -> ModelConfig {
        let path = directory + "/config.json"
        let data: Data
        do { data = try Data(contentsOf: URL(fileURLWithPath: path)) } catch {
            throw ModelConfigError(source: path, reason: "cannot read: \(error.localizedDescription)")
        }
        return try ModelConfig(json: data, source: path)
    }

    /// Parses the contents of a `config.json`; `source` names it in errors.
    public init(json: Data, source: String = "config.json") throws {
        guard let object = (try? JSONValue.parse(json))?.object else {
            throw ModelConfigError(source: source, reason: "not a JSON object")
        }
        try self.init(fields: ConfigFields(object, source: source))
    }

    init(fields f: ConfigFields) throws {
        let architectures = try f.optional("architectures", as: [String].self) ?? []
        guard let name = architectures.first else {
            throw f.error("missing field 'architectures' (one of \(Architecture.allCases.map(\.rawValue).joined(separator: ", ")))")
        }
        guard let architecture = Architecture(rawValue: name) else {
            throw f.error("unknown architecture '\(name)'; supported: \(Architecture.allCases.map(\.rawValue).joined(separator: ", "))")
        }
        self.architecture = architecture
        hiddenSize = try f.positive("hidden_size", max: Limits.size)
        layerCount = try f.positive("num_hidden_layers", max: Limits.layers)
        vocabSize = try f.positive("vocab_size", max: Limits.vocab)
        // transformers' defaults: 1e-5 for Mixtral and OLMoE, 1e-6 for the others.
        rmsNormEps = try f.optional("rms_norm_eps", as: Double.self) ?? ([.mixtral, .olmoe].contains(architecture) ? 1e-5 : 1e-6)
        tieWordEmbeddings = try f.optional("tie_word_embeddings", as: Bool.self) ?? false
        maxPositions = try f.optional("max_position_embeddings", as: Int.self).map { _ in try f.positive("max_position_embeddings", max: 1 << 24) } ?? 4096
        if let single = try? f.optional("eos_token_id", as: Int.self) {
            eosTokenIDs = [single]
        } else {
            eosTokenIDs = try f.optional("eos_token_id", as: [Int].self) ?? []
        }
        dtype = (try f.optional("torch_dtype", as: String.self) ?? f.optional("dtype", as: String.self)).flatMap(DType.init(userSpelling:))
        let actName = try f.optional("hidden_act", as: String.self) ?? "silu"
        guard let activation = Activation(hfName: actName) else {
            throw f.error("field 'hidden_act': '\(actName)' is not supported (silu, gelu, gelu_pytorch_tanh, relu)")
        }
        self.activation = activation

        let topK = try f.positive("num_experts_per_tok", max: Limits.experts)
        if try f.optional("mlp_bias", as: Bool.self) == true {
            throw f.error("field 'mlp_bias': biased expert projections are not supported")
        }
        let layers = 0..<layerCount
        switch architecture {
        case .mixtral:
            expertFFNSize = try f.positive("intermediate_size", max: Limits.size)
            denseFFNSize = expertFFNSize
            sharedFFNSize = 0
            sharedExpertGated = false
            router = RouterSpec(experts: try f.positive("num_local_experts", max: Limits.experts), topK: topK, renormalize: true)
            moeLayers = Array(layers)
        case .qwen2Moe, .qwen3Moe:
            expertFFNSize = try f.positive("moe_intermediate_size", max: Limits.size)
            denseFFNSize = try f.optional("intermediate_size", as: Int.self).map { _ in try f.positive("intermediate_size", max: Limits.size) } ?? expertFFNSize
            let experts = try f.positive(oneOf: "num_experts", "num_local_experts", max: Limits.experts)
            if architecture == .qwen2Moe {
                // transformers' default when the field is absent: 5632 (Qwen1.5-MoE-A2.7B's).
                sharedFFNSize = try f.optional("shared_expert_intermediate_size", as: Int.self) ?? 5632
                guard sharedFFNSize >= 0, sharedFFNSize <= Limits.size else {
                    throw f.error("field 'shared_expert_intermediate_size' must be between 0 and \(Limits.size) (got \(sharedFFNSize))")
                }
                sharedExpertGated = sharedFFNSize > 0
            } else {
                sharedFFNSize = 0
                sharedExpertGated = false
            }
            router = RouterSpec(experts: experts, topK: topK, renormalize: try f.optional("norm_topk_prob", as: Bool.self) ?? false)
            let step = try f.optional("decoder_sparse_step", as: Int.self) ?? 1
            guard step >= 1 else { throw f.error("field 'decoder_sparse_step' must be at least 1 (got \(step))") }
            let mlpOnly = Set(try f.optional("mlp_only_layers", as: [Int].self) ?? [])
            moeLayers = layers.filter { !mlpOnly.contains($0) && ($0 + 1) % step == 0 }
        case .olmoe:
            expertFFNSize = try f.positive("intermediate_size", max: Limits.size)
            denseFFNSize = expertFFNSize
            sharedFFNSize = 0
            sharedExpertGated = false
            router = RouterSpec(experts: try f.positive("num_experts", max: Limits.experts), topK: topK,
                                renormalize: try f.optional("norm_topk_prob", as: Bool.self) ?? false)
            moeLayers = Array(layers)
        case .deepseekV2, .deepseekV3:
            expertFFNSize = try f.positive("moe_intermediate_size", max: Limits.size)
            denseFFNSize = try f.positive("intermediate_size", max: Limits.size)
            let experts = try f.positive(oneOf: "n_routed_experts", "num_local_experts", max: Limits.experts)
            let shared = try f.optional("n_shared_experts", as: Int.self) ?? (architecture == .deepseekV2 ? 2 : 1)
            guard shared >= 0, shared <= 1024 else { throw f.error("field 'n_shared_experts' must be between 0 and 1024 (got \(shared))") }
            sharedFFNSize = shared * expertFFNSize
            sharedExpertGated = false
            let scaling = Float(try f.optional("routed_scaling_factor", as: Double.self) ?? (architecture == .deepseekV2 ? 1.0 : 2.5))
            let firstDense = try f.optional("first_k_dense_replace", as: Int.self) ?? (architecture == .deepseekV2 ? 0 : 3)
            // DeepSeek's own code puts MoE blocks where layer % moe_layer_freq == 0; transformers 5
            // ignores the field. Released configs set it to 1, where both agree.
            let frequency = try f.optional("moe_layer_freq", as: Int.self) ?? 1
            guard frequency >= 1 else { throw f.error("field 'moe_layer_freq' must be at least 1 (got \(frequency))") }
            moeLayers = layers.filter { $0 >= firstDense && $0 % frequency == 0 }
            if architecture == .deepseekV2 {
                let method = try f.optional("topk_method", as: String.self) ?? "greedy"
                switch method {
                case "greedy":
                    router = RouterSpec(experts: experts, topK: topK, renormalize: false, scalingFactor: scaling)
                case "group_limited_greedy":
                    router = RouterSpec(experts: experts, topK: topK, renormalize: false, scalingFactor: scaling,
                                        groupRanking: .maxScore, groups: try f.positive("n_group"), groupsPerToken: try f.positive("topk_group"))
                default:
                    throw f.error("field 'topk_method': '\(method)' is not supported for DeepseekV2ForCausalLM (greedy, group_limited_greedy)")
                }
            } else {
                let method = try f.optional("topk_method", as: String.self) ?? "noaux_tc"
                guard method == "noaux_tc" else {
                    throw f.error("field 'topk_method': '\(method)' is not supported for DeepseekV3ForCausalLM (noaux_tc)")
                }
                router = RouterSpec(experts: experts, topK: topK, scoring: .sigmoid,
                                    renormalize: try f.optional("norm_topk_prob", as: Bool.self) ?? true,
                                    renormalizeEpsilon: 1e-20, scalingFactor: scaling, groupRanking: .sumOfTopTwo,
                                    groups: try f.optional("n_group", as: Int.self) ?? 8,
                                    groupsPerToken: try f.optional("topk_group", as: Int.self) ?? 4, usesCorrectionBias: true)
            }
        }
        if let problem = router.problem { throw f.error(problem) }
        attention = try Self.attentionShape(f, architecture: architecture, hidden: hiddenSize)
    }

    private static func attentionShape(_ f: ConfigFields, architecture: Architecture, hidden: Int) throws -> AttentionShape {
        let heads = try f.positive("num_attention_heads", max: Limits.heads)
        let kvHeads = try f.optional("num_key_value_heads", as: Int.self) ?? heads
        guard kvHeads >= 1, heads % kvHeads == 0 else {
            throw f.error("field 'num_key_value_heads' (\(kvHeads)) must divide num_attention_heads (\(heads))")
        }
        let ropeParameters = try f.optional("rope_parameters", as: [String: JSONValue].self)
        let legacyTheta = try f.optional("rope_theta", as: Double.self)
        let ropeTheta = ropeParameters?["rope_theta"]?.double ?? legacyTheta ?? (architecture == .mixtral ? 1_000_000 : 10_000)
        var shape = AttentionShape(heads: heads, keyValueHeads: kvHeads, headDim: hidden / heads, qkvBias: false,
                                   qkNorm: .none, latent: nil, ropeTheta: ropeTheta)
        let scaling = try ropeParameters ?? f.optional("rope_scaling", as: [String: JSONValue].self)
        if let scaling {
            shape.ropeType = scaling["rope_type"]?.string ?? scaling["type"]?.string ?? "default"
            if shape.ropeType == "yarn" {
                shape.yarn = try YarnScaling(scaling, maxPositions: try f.optional("max_position_embeddings", as: Int.self), field: f)
            } else if shape.ropeType == "linear" {
                guard let factor = scaling["factor"]?.double, factor >= 1 else {
                    throw f.error("field 'rope_parameters': linear rope scaling needs a 'factor' of at least 1")
                }
                shape.ropeFactor = factor
            }
        }
        switch architecture {
        case .mixtral:
            shape.headDim = try f.optional("head_dim", as: Int.self).map { _ in try f.positive("head_dim", max: Limits.headDim) } ?? hidden / heads
            shape.slidingWindow = try f.optional("sliding_window", as: Int.self).map { _ in try f.positive("sliding_window", max: 1 << 24) }
        case .qwen2Moe:
            shape.qkvBias = try f.optional("qkv_bias", as: Bool.self) ?? true
            if try f.optional("use_sliding_window", as: Bool.self) == true {
                throw f.error("field 'use_sliding_window': sliding-window attention of Qwen2-MoE (per-layer windows) is not supported")
            }
        case .qwen3Moe:
            shape.headDim = try f.optional("head_dim", as: Int.self).map { _ in try f.positive("head_dim", max: Limits.headDim) } ?? hidden / heads
            shape.qkvBias = try f.optional("attention_bias", as: Bool.self) ?? false
            shape.outputBias = shape.qkvBias
            shape.qkNorm = .perHead
            if try f.optional("use_sliding_window", as: Bool.self) == true {
                shape.slidingWindow = try f.positive("sliding_window", max: 1 << 24)
            }
        case .olmoe:
            shape.qkvBias = try f.optional("attention_bias", as: Bool.self) ?? false
            shape.outputBias = shape.qkvBias
            shape.qkNorm = .whole
            if let clip = try f.optional("clip_qkv", as: Double.self) {
                guard clip > 0, clip.isFinite else { throw f.error("field 'clip_qkv' must be a positive number (got \(clip))") }
                shape.clipQKV = clip
            }
        case .deepseekV2, .deepseekV3:
            let latent = LatentAttentionShape(
                // Absent means transformers' default 1536; an explicit null means no query compression.
                queryRank: f.object["q_lora_rank"] == nil ? 1536 : try f.optional("q_lora_rank", as: Int.self).map { _ in try f.positive("q_lora_rank", max: Limits.size) },
                keyValueRank: try f.positive("kv_lora_rank", max: Limits.size),
                qkNopeHeadDim: try f.positive("qk_nope_head_dim", max: Limits.headDim),
                qkRopeHeadDim: try f.positive("qk_rope_head_dim", max: Limits.headDim),
                valueHeadDim: try f.positive("v_head_dim", max: Limits.headDim))
            shape.latent = latent
            shape.headDim = latent.qkNopeHeadDim + latent.qkRopeHeadDim
            shape.keyValueHeads = heads
            shape.qkvBias = try f.optional("attention_bias", as: Bool.self) ?? false
            // V2 rotates adjacent pairs (complex multiplication); V3 does when `rope_interleave`.
            shape.ropeInterleaved = architecture == .deepseekV2 ? true : try f.optional("rope_interleave", as: Bool.self) ?? true
        }
        guard shape.headDim >= 1 else { throw f.error("attention head_dim must be at least 1") }
        return shape
    }
}

/// Typed access to a `config.json` object, with errors that name the field.
struct ConfigFields {
    let object: [String: JSONValue]
    let source: String

    init(_ object: [String: JSONValue], source: String) {
        self.object = object
        self.source = source
    }

    func error(_ reason: String) -> ModelConfigError { ModelConfigError(source: source, reason: reason) }

    /// The field's value, or nil when it is absent or JSON null; a value of the wrong type is an error.
    func optional<T>(_ key: String, as type: T.Type) throws -> T? {
        guard let value = object[key], value != .null else { return nil }
        let typed: Any?
        switch type {
        case is Int.Type: typed = value.int
        case is Double.Type: typed = value.double
        case is Bool.Type: typed = value.bool
        case is String.Type: typed = value.string
        case is [Int].Type: typed = value.array.flatMap { items in items.allSatisfy { $0.int != nil } ? items.map { $0.int! } : nil }
        case is [String].Type: typed = value.array.flatMap { items in items.allSatisfy { $0.string != nil } ? items.map { $0.string! } : nil }
        case is [String: JSONValue].Type: typed = value.object
        default: typed = nil
        }
        guard let result = typed as? T else {
            throw error("field '\(key)' must be \(Self.typeName(type)) (got \(value))")
        }
        return result
    }

    private static func typeName<T>(_ type: T.Type) -> String {
        switch type {
        case is Int.Type: "an integer"
        case is Double.Type: "a number"
        case is Bool.Type: "true or false"
        case is String.Type: "a string"
        case is [Int].Type: "a list of integers"
        case is [String].Type: "a list of strings"
        default: "an object"
        }
    }

    /// A required integer in `1...max`.
    func positive(_ key: String, max: Int = ModelConfig.Limits.size) throws -> Int {
        guard let value = try optional(key, as: Int.self) else {
            throw error("missing field '\(key)'")
        }
        guard value >= 1 else { throw error("field '\(key)' must be at least 1 (got \(value))") }
        guard value <= max else { throw error("field '\(key)' is \(value), above the supported \(max)") }
        return value
    }

    /// A required integer in `1...max` that configs spell in more than one way.
    func positive(oneOf keys: String..., max: Int) throws -> Int {
        for key in keys where object[key] != nil && object[key] != .null { return try positive(key, max: max) }
        throw error("missing field '\(keys[0])'")
    }
}

