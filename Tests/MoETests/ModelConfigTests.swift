import JSON
import Foundation
import Testing
@testable import MoE

@Suite("ModelConfig from config.json")
struct ModelConfigTests {
    struct Expectation: Sendable, CustomTestStringConvertible {
        let fixture: String
        let architecture: Architecture
        let experts: Int, topK: Int, expertFFN: Int, sharedFFN: Int
        let moeLayers: [Int]
        let scoring: RouterSpec.Scoring
        let renormalize: Bool
        let scaling: Float
        let groups: RouterSpec.GroupRanking
        var testDescription: String { fixture }
    }

    static let expectations: [Expectation] = [
        .init(fixture: "mixtral", architecture: .mixtral, experts: 4, topK: 2, expertFFN: 48, sharedFFN: 0, moeLayers: [0, 1], scoring: .softmax, renormalize: true, scaling: 1, groups: .none),
        .init(fixture: "qwen2-moe", architecture: .qwen2Moe, experts: 8, topK: 2, expertFFN: 24, sharedFFN: 40, moeLayers: [1, 2], scoring: .softmax, renormalize: false, scaling: 1, groups: .none),
        .init(fixture: "qwen3-moe", architecture: .qwen3Moe, experts: 8, topK: 3, expertFFN: 24, sharedFFN: 0, moeLayers: [1, 3], scoring: .softmax, renormalize: true, scaling: 1, groups: .none),
        .init(fixture: "olmoe", architecture: .olmoe, experts: 8, topK: 2, expertFFN: 40, sharedFFN: 0, moeLayers: [0, 1], scoring: .softmax, renormalize: false, scaling: 1, groups: .none),
        .init(fixture: "deepseek-v2", architecture: .deepseekV2, experts: 8, topK: 3, expertFFN: 16, sharedFFN: 32, moeLayers: [1, 2], scoring: .softmax, renormalize: false, scaling: 2, groups: .maxScore),
        .init(fixture: "deepseek-v3", architecture: .deepseekV3, experts: 8, topK: 2, expertFFN: 16, sharedFFN: 16, moeLayers: [1, 2], scoring: .sigmoid, renormalize: true, scaling: 2.5, groups: .sumOfTopTwo),
    ]

    @Test("Each architecture's config is read as transformers reads it", arguments: expectations)
    func readsFixture(_ e: Expectation) throws {
        let config = try ModelConfig.load(directory: fixturesDirectory + "/" + e.fixture)
        #expect(config.architecture == e.architecture)
        #expect(config.hiddenSize == 32)
        #expect(config.expertCount == e.experts)
        #expect(config.router.topK == e.topK)
        #expect(config.expertFFNSize == e.expertFFN)
        #expect(config.sharedFFNSize == e.sharedFFN)
        #expect(config.moeLayers == e.moeLayers)
        #expect(config.router.scoring == e.scoring)
        #expect(config.router.renormalize == e.renormalize)
        #expect(config.router.scalingFactor == e.scaling)
        #expect(config.router.groupRanking == e.groups)
        #expect(config.activation == .silu)
    }

    /// A minimal valid config of each architecture, to break one field at a time.
    static func minimal(_ architecture: Architecture) -> [String: JSONValue] {
        var spec = RandomModelSpec(architecture: architecture, layers: 2, experts: 8, topK: 2, hidden: 64)
        spec.denseLayers = 0
        return try! spec.configJSON()
    }

    static func parse(_ object: [String: JSONValue]) throws -> ModelConfig {
        try ModelConfig(json: Data(JSONValue.object(object).serialized().utf8), source: "test/config.json")
    }

    @Test("An unknown or missing architecture is an error naming it and the supported ones")
    func unknownArchitecture() {
        var object = Self.minimal(.mixtral)
        object["architectures"] = ["LlamaForCausalLM"]
        #expect { try Self.parse(object) } throws: { "\($0)".contains("unknown architecture 'LlamaForCausalLM'") && "\($0)".contains("MixtralForCausalLM") }
        object["architectures"] = nil
        #expect { try Self.parse(object) } throws: { "\($0)".contains("missing field 'architectures'") }
        #expect { try ModelConfig(json: Data("[]".utf8), source: "x.json") } throws: { "\($0)".contains("x.json: not a JSON object") }
    }

    static let requiredFields: [(Architecture, String)] = [
        (.mixtral, "num_local_experts"), (.mixtral, "intermediate_size"), (.mixtral, "hidden_size"), (.mixtral, "num_experts_per_tok"),
        (.qwen2Moe, "moe_intermediate_size"), (.qwen2Moe, "num_experts"), (.qwen3Moe, "num_experts"), (.qwen3Moe, "num_hidden_layers"),
        (.olmoe, "num_experts"), (.olmoe, "vocab_size"), (.deepseekV2, "n_routed_experts"), (.deepseekV2, "kv_lora_rank"),
        (.deepseekV3, "moe_intermediate_size"), (.deepseekV3, "num_attention_heads"),
    ]

    @Test("A missing required field is an error naming the field", arguments: requiredFields.map { "\($0.0.cliName):\($0.1)" })
    func missingField(_ pair: String) {
        let (architecture, field) = Self.requiredFields.first { "\($0.0.cliName):\($0.1)" == pair }!
        var object = Self.minimal(architecture)
        object[field] = nil
        #expect { try Self.parse(object) } throws: { "\($0)" == "test/config.json: missing field '\(field)'" }
    }

    static let invalid: [(String, Architecture, String, JSONValue, String)] = [
        ("top-k above experts", .mixtral, "num_experts_per_tok", 9, "top-k 9 must be between 1 and the 8 routed experts"),
        ("zero experts", .olmoe, "num_experts", 0, "field 'num_experts' must be at least 1 (got 0)"),
        ("string for an integer", .qwen3Moe, "hidden_size", "64", "field 'hidden_size' must be an integer"),
        ("bool for an integer", .qwen3Moe, "hidden_size", true, "field 'hidden_size' must be an integer"),
        ("fraction for an integer", .qwen3Moe, "moe_intermediate_size", 1.5, "field 'moe_intermediate_size' must be an integer"),
        ("integer for a bool", .qwen3Moe, "norm_topk_prob", 1, "field 'norm_topk_prob' must be true or false"),
        ("unknown activation", .mixtral, "hidden_act", "swiglu_oai", "field 'hidden_act': 'swiglu_oai' is not supported"),
        ("groups not dividing experts", .deepseekV3, "n_group", 3, "n_group 3 must divide the 8 routed experts"),
        ("too many groups per token", .deepseekV3, "topk_group", 9, "topk_group 9 must be between 1 and n_group"),
        ("unknown topk method", .deepseekV2, "topk_method", "sinkhorn", "field 'topk_method': 'sinkhorn' is not supported"),
        ("zero sparse step", .qwen2Moe, "decoder_sparse_step", 0, "field 'decoder_sparse_step' must be at least 1"),
        ("kv heads not dividing heads", .mixtral, "num_key_value_heads", 3, "num_key_value_heads' (3) must divide num_attention_heads"),
        ("absurd layer count", .olmoe, "num_hidden_layers", 1_000_000_000_000, "field 'num_hidden_layers' is 1000000000000, above the supported 4096"),
        ("absurd hidden size", .qwen3Moe, "hidden_size", 1_099_511_627_776, "field 'hidden_size' is 1099511627776, above the supported"),
        ("more experts than ids", .olmoe, "num_experts", 70_000, "field 'num_experts' is 70000, above the supported 65535"),
        ("negative shared size", .qwen2Moe, "shared_expert_intermediate_size", -5, "field 'shared_expert_intermediate_size' must be between 0"),
        ("negative shared experts", .deepseekV2, "n_shared_experts", -1, "field 'n_shared_experts' must be between 0 and 1024"),
        ("biased expert projections", .deepseekV3, "mlp_bias", true, "field 'mlp_bias': biased expert projections are not supported"),
    ]

    @Test("Invalid values are errors that say which field and why", arguments: invalid.map { $0.0 })
    func invalidValue(_ name: String) {
        let (_, architecture, field, value, fragment) = Self.invalid.first { $0.0 == name }!
        var object = Self.minimal(architecture)
        object[field] = value
        #expect { try Self.parse(object) } throws: { "\($0)".contains(fragment) }
    }

    @Test("Fields transformers defaults take its defaults when absent")
    func defaults() throws {
        var qwen = Self.minimal(.qwen2Moe)
        for key in ["norm_topk_prob", "decoder_sparse_step", "mlp_only_layers", "qkv_bias", "hidden_act", "rope_theta"] { qwen[key] = nil }
        let q = try Self.parse(qwen)
        #expect(q.router.renormalize == false && q.moeLayers == [0, 1] && q.attention.qkvBias && q.activation == .silu && q.attention.ropeTheta == 10_000)
        var v3 = Self.minimal(.deepseekV3)
        for key in ["norm_topk_prob", "routed_scaling_factor", "topk_method", "first_k_dense_replace", "n_group", "topk_group"] { v3[key] = nil }
        v3["n_routed_experts"] = 16
        v3["num_experts_per_tok"] = 4
        v3["num_hidden_layers"] = 5
        let d = try Self.parse(v3)
        #expect(d.router.renormalize && d.router.scalingFactor == 2.5 && d.moeLayers == [3, 4] && d.router.groups == 8 && d.router.groupsPerToken == 4)
    }

    @Test("Which layers are MoE follows each architecture's rule", arguments: [
        (Architecture.qwen2Moe, ["decoder_sparse_step": 2, "num_hidden_layers": 6] as [String: JSONValue], [1, 3, 5]),
        (.qwen3Moe, ["mlp_only_layers": [0, 3], "num_hidden_layers": 5] as [String: JSONValue], [1, 2, 4]),
        (.deepseekV2, ["first_k_dense_replace": 1, "moe_layer_freq": 2, "num_hidden_layers": 6] as [String: JSONValue], [2, 4]),
        (.mixtral, ["num_hidden_layers": 3] as [String: JSONValue], [0, 1, 2]),
    ])
    func moeLayers(architecture: Architecture, changes: [String: JSONValue], expected: [Int]) throws {
        var object = Self.minimal(architecture)
        for (key, value) in changes { object[key] = value }
        #expect(try Self.parse(object).moeLayers == expected)
    }

    @Test("Absent fields take transformers' per-architecture defaults")
    func perArchitectureDefaults() throws {
        var mixtral = Self.minimal(.mixtral)
        for key in ["rms_norm_eps", "rope_theta"] { mixtral[key] = nil }
        let m = try Self.parse(mixtral)
        #expect(m.rmsNormEps == 1e-5 && m.attention.ropeTheta == 1_000_000)
        var qwen = Self.minimal(.qwen2Moe)
        qwen["shared_expert_intermediate_size"] = nil
        #expect(try Self.parse(qwen).sharedFFNSize == 5632)
        var v2 = Self.minimal(.deepseekV2)
        v2["q_lora_rank"] = nil
        #expect(try Self.parse(v2).attention.latent?.queryRank == 1536)
        v2["q_lora_rank"] = .null
        #expect(try Self.parse(v2).attention.latent?.queryRank == nil)
    }

    @Test("rope_theta is read from rope_parameters (transformers 5) or the top level (earlier)")
    func ropeTheta() throws {
        var object = Self.minimal(.mixtral)
        object["rope_theta"] = nil
        object["rope_parameters"] = ["rope_theta": 1_000_000.0, "rope_type": "default"]
        #expect(try Self.parse(object).attention.ropeTheta == 1_000_000)
        object["rope_parameters"] = nil
        object["rope_theta"] = 500_000
        #expect(try Self.parse(object).attention.ropeTheta == 500_000)
    }
}
