import MoE
import Transport

/// The experts one pod serves, loaded from a checkpoint: only the routed experts its `ShardSpec`
/// names, in the MoE layers it names. Their weights stay in the mapped checkpoint, so the pod's
/// resident memory grows with the shard, not with the model: pages of other experts are never
/// touched.
public final class ExpertShard: @unchecked Sendable {
    /// A shard that does not fit the model.
    public struct Mismatch: Error, CustomStringConvertible, Sendable {
        public let description: String
    }

    public let config: ModelConfig
    public let spec: ShardSpec
    public let checkpoint: Checkpoint
    /// `weights[layer][expert]`, for the hosted pairs only.
    let weights: [Int: [Int: ExpertWeights]]
    /// The `(MoE layer, expert)` pairs served, ascending.
    public let hosted: [HostedExpert]
    /// Which checkpoint this is (sent in every handshake reply, so workers of another model refuse it).
    public let digest: ModelDigest

    /// Opens the checkpoint in `directory` and loads the experts of `spec`. Experts and layers
    /// the model does not have are refused by name; a spec without layers means every MoE layer.
    public init(directory: String, spec: ShardSpec) throws {
        let config = try ModelConfig.load(directory: directory)
        self.config = config
        checkpoint = try Checkpoint(directory: directory)
        self.spec = spec
        if let bad = spec.experts.first(where: { $0 >= config.expertCount }) {
            throw Mismatch(description: "shard \(spec): expert \(bad) does not exist (the model has \(config.expertCount) experts, 0-\(config.expertCount - 1))")
        }
        let layers = spec.layers ?? config.moeLayers
        if let bad = layers.first(where: { !config.isMoE(layer: $0) }) {
            throw Mismatch(description: "shard \(spec): layer \(bad) is not an MoE layer (MoE layers: \(IntegerRanges.format(config.moeLayers)))")
        }
        guard layers.allSatisfy({ $0 <= Int(UInt16.max) }), spec.experts.allSatisfy({ $0 < Int(RequestHeader.emptySlot) }) else {
            throw Mismatch(description: "shard \(spec): layers and experts must fit the wire's 16-bit ids")
        }
        let loader = ExpertLoader(checkpoint: checkpoint, config: config)
        var weights: [Int: [Int: ExpertWeights]] = [:]
        var hosted: [HostedExpert] = []
        for layer in layers {
            for expert in spec.experts {
                let expertWeights = try loader.expert(layer: layer, expert: expert)
                // Mapped now: the first requests would otherwise pay the page faults.
                expertWeights.prefault()
                weights[layer, default: [:]][expert] = expertWeights
                hosted.append(HostedExpert(layer: UInt16(layer), expert: UInt16(expert)))
            }
        }
        self.weights = weights
        self.hosted = hosted
        digest = try ModelDigest.compute(directory: directory)
    }

    /// Bytes of expert weights this shard maps (resident from the start: they are prefaulted).
    public var weightBytes: Int { weights.values.reduce(0) { $0 + $1.values.reduce(0) { $0 + $1.byteCount } } }
}
