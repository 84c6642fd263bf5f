/// Finds an MoE block's tensors in a checkpoint under every naming real checkpoints use:
/// - per-expert `experts.{e}.w1/w3/w2.weight` (Mixtral: w1 gate, w3 up, w2 down);
/// - per-expert `experts.{e}.gate_proj/up_proj/down_proj.weight` (Qwen, OLMoE, DeepSeek);
/// - fused 3-D `experts.gate_up_proj` `[E, 2F, H]` (gate rows first) and `experts.down_proj`
///   `[E, H, F]`, as transformers holds them in memory;
/// - 3-D `experts.gate_proj`/`up_proj` `[E, F, H]` and `experts.down_proj` `[E, H, F]`.
///
/// The block lives at `model.layers.{L}.mlp` (Mixtral's older checkpoints: `block_sparse_moe`).
public struct ExpertLoader: Sendable {
    /// How a block's routed experts are stored.
    public enum Naming: String, Sendable {
        case perExpertW123 = "per-expert w1/w3/w2"
        case perExpertProj = "per-expert gate_proj/up_proj/down_proj"
        case fusedGateUp = "fused gate_up_proj [E, 2F, H] + down_proj [E, H, F]"
        case fusedSeparate = "fused gate_proj/up_proj [E, F, H] + down_proj [E, H, F]"
    }

    public let checkpoint: Checkpoint
    public let config: ModelConfig

    /// A loader for `checkpoint`, whose shapes are checked against `config`.
    public init(checkpoint: Checkpoint, config: ModelConfig) {
        self.checkpoint = checkpoint
        self.config = config
    }

    /// The tensor-name prefix of layer `layer`'s MoE block (`model.layers.3.mlp`).
    public func blockPrefix(layer: Int) throws -> String {
        guard config.isMoE(layer: layer) else {
            throw SafeTensorsError(file: checkpoint.directory, "layer \(layer) is not an MoE layer (MoE layers: \(config.moeLayers))")
        }
        let candidates = ["model.layers.\(layer).mlp", "model.layers.\(layer).block_sparse_moe"]
        for prefix in candidates where checkpoint.contains(prefix + ".gate.weight") { return prefix }
        throw SafeTensorsError(file: checkpoint.directory, tensor: candidates[0] + ".gate.weight", "router weight of MoE layer \(layer) not found")
    }

    /// How layer `layer` stores its experts.
    public func naming(layer: Int) throws -> Naming {
        let p = try blockPrefix(layer: layer)
        if checkpoint.contains("\(p).experts.0.w1.weight") { return .perExpertW123 }
        if checkpoint.contains("\(p).experts.0.gate_proj.weight") { return .perExpertProj }
        if checkpoint.contains("\(p).experts.gate_up_proj") { return .fusedGateUp }
        if checkpoint.contains("\(p).experts.gate_proj") { return .fusedSeparate }
        throw SafeTensorsError(file: checkpoint.directory, tensor: "\(p).experts.0.gate_proj.weight",
            "no expert weights for MoE layer \(layer) (looked for \(p).experts.{e}.gate_proj.weight, \(p).experts.{e}.w1.weight, \(p).experts.gate_up_proj, \(p).experts.gate_proj)")
    }

    /// The weights of routed expert `expert` of layer `layer`, pointing into the mapped checkpoint.
    public func expert(layer: Int, expert: Int) throws -> ExpertWeights {
        let p = try blockPrefix(layer: layer)
        let hidden = config.hiddenSize, ffn = config.expertFFNSize
        guard expert >= 0, expert < config.expertCount else {
            throw SafeTensorsError(file: checkpoint.directory, "expert \(expert) does not exist (layer \(layer) has \(config.expertCount))")
        }
        let gate: WeightMatrix, up: WeightMatrix, down: WeightMatrix
        switch try naming(layer: layer) {
        case .perExpertW123:
            gate = try matrix("\(p).experts.\(expert).w1.weight")
            up = try matrix("\(p).experts.\(expert).w3.weight")
            down = try matrix("\(p).experts.\(expert).w2.weight")
        case .perExpertProj:
            gate = try matrix("\(p).experts.\(expert).gate_proj.weight")
            up = try matrix("\(p).experts.\(expert).up_proj.weight")
            down = try matrix("\(p).experts.\(expert).down_proj.weight")
        case .fusedGateUp:
            let gateUp = try checkpoint.tensor("\(p).experts.gate_up_proj")
            try gateUp.expectShape([config.expertCount, 2 * ffn, hidden])
            gate = try WeightMatrix(gateUp, index: expert, rows: 0..<ffn)
            up = try WeightMatrix(gateUp, index: expert, rows: ffn..<(2 * ffn))
            down = try fused3D("\(p).experts.down_proj", expert: expert, shape: [config.expertCount, hidden, ffn])
        case .fusedSeparate:
            gate = try fused3D("\(p).experts.gate_proj", expert: expert, shape: [config.expertCount, ffn, hidden])
            up = try fused3D("\(p).experts.up_proj", expert: expert, shape: [config.expertCount, ffn, hidden])
            down = try fused3D("\(p).experts.down_proj", expert: expert, shape: [config.expertCount, hidden, ffn])
        }
        return try ExpertWeights(gate: gate, up: up, down: down, hidden: hidden, ffn: ffn, file: checkpoint.directory)
    }

    /// The router of layer `layer`: weight `[experts, hidden]` in f32 and, for DeepSeek-V3, the
    /// score correction bias `[experts]`.
    public func router(layer: Int) throws -> (weight: [Float], correctionBias: [Float]?) {
        let p = try blockPrefix(layer: layer)
        let weight = try checkpoint.tensor("\(p).gate.weight")
        try weight.expectShape([config.expertCount, config.hiddenSize])
        var bias: [Float]?
        if config.router.usesCorrectionBias {
            let tensor = try checkpoint.tensor("\(p).gate.e_score_correction_bias")
            try tensor.expectShape([config.expertCount])
            bias = try tensor.floats()
        }
        return (try weight.floats(), bias)
    }

    /// The shared expert block of layer `layer` and, for Qwen2-MoE, its gate `[hidden]`; nil when the
    /// architecture has none.
    public func sharedExpert(layer: Int) throws -> (weights: ExpertWeights, gate: [Float]?)? {
        guard config.sharedFFNSize > 0 else { return nil }
        let p = try blockPrefix(layer: layer)
        let name = config.architecture == .qwen2Moe ? "shared_expert" : "shared_experts"
        let weights = try ExpertWeights(
            gate: try matrix("\(p).\(name).gate_proj.weight"), up: try matrix("\(p).\(name).up_proj.weight"),
            down: try matrix("\(p).\(name).down_proj.weight"), hidden: config.hiddenSize, ffn: config.sharedFFNSize,
            file: checkpoint.directory)
        var gate: [Float]?
        if config.sharedExpertGated {
            let tensor = try checkpoint.tensor("\(p).shared_expert_gate.weight")
            try tensor.expectShape([1, config.hiddenSize])
            gate = try tensor.floats()
        }
        return (weights, gate)
    }

    private func matrix(_ name: String) throws -> WeightMatrix {
        try WeightMatrix(checkpoint.tensor(name))
    }

    private func fused3D(_ name: String, expert: Int, shape: [Int]) throws -> WeightMatrix {
        let tensor = try checkpoint.tensor(name)
        try tensor.expectShape(shape)
        return try WeightMatrix(tensor, index: expert, rows: 0..<shape[1])
    }
}
