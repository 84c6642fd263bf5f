import CBLAS
#if canImport(Glibc)
import Glibc
#endif

/// One MoE block run entirely in this process: gate, routed experts, shared experts, combine.
/// It is the baseline the disaggregated path must match, and what `--experts local` serves.
///
/// Weights stay in the mapped checkpoint in their stored dtype (only the small router is widened
/// to f32 at load).
public final class MoELayer: Sendable {
    public let layer: Int
    public let hidden: Int
    public let router: RouterSpec
    public let activation: Activation
    /// Router weight `[experts, hidden]`.
    let routerWeight: [Float]
    let correctionBias: [Float]?
    /// Routed experts by id; nil where not loaded.
    let experts: [ExpertWeights?]
    let shared: ExpertWeights?
    /// Qwen2-MoE's shared-expert gate `[hidden]`.
    let sharedGate: [Float]?

    /// Loads layer `layer` of `checkpoint`: its router, shared experts, and the routed experts in
    /// `experts` (all when nil).
    public init(checkpoint: Checkpoint, config: ModelConfig, layer: Int, experts wanted: Set<Int>? = nil) throws {
        let loader = ExpertLoader(checkpoint: checkpoint, config: config)
        self.layer = layer
        hidden = config.hiddenSize
        router = config.router
        activation = config.activation
        (routerWeight, correctionBias) = try loader.router(layer: layer)
        experts = try (0..<config.expertCount).map { e in
            guard wanted?.contains(e) ?? true else { return nil }
            return try loader.expert(layer: layer, expert: e)
        }
        let sharedBlock = try loader.sharedExpert(layer: layer)
        shared = sharedBlock?.weights
        sharedGate = sharedBlock?.gate
    }

    /// Maps the pages of every weight this layer holds now, instead of at the first tokens.
    public func prefault() {
        for expert in experts { expert?.prefault() }
        shared?.prefault()
    }

    /// Router logits `[tokens, experts]` and the routing they give.
    public func route(_ input: UnsafeBufferPointer<Float>, tokens: Int, scratch: ExpertScratch) -> (logits: [Float], routing: Routing) {
        precondition(input.count == tokens * hidden, "input is not [tokens, hidden]")
        let e = router.experts
        guard tokens > 0 else { return ([], Routing(tokens: 0, topK: router.topK, ids: [], weights: [])) }
        var logits = [Float](repeating: 0, count: tokens * e)
        routerWeight.withUnsafeBufferPointer { w in
            logits.withUnsafeMutableBufferPointer { out in
                BLAS.gemmTransposedB(m: tokens, n: e, k: hidden, a: input.baseAddress!, lda: hidden,
                                     b: w.baseAddress!, ldb: hidden, c: out.baseAddress!, ldc: e)
            }
        }
        let routing = logits.withUnsafeBufferPointer { Gate.route(logits: $0, tokens: tokens, spec: router, correctionBias: correctionBias) }
        return (logits, routing)
    }

    /// The block's output `[tokens, hidden]` for `input` `[tokens, hidden]`, with the routing used,
    /// the routed experts computed here.
    public func forward(_ input: UnsafeBufferPointer<Float>, tokens: Int, scratch: ExpertScratch = ExpertScratch()) throws -> (output: [Float], routing: Routing) {
        try forward(input, tokens: tokens, scratch: scratch) { routing, output in
            try self.accumulateRouted(input, routing: routing, into: output, scratch: scratch)
        }
    }

    /// The block's output with the routed experts computed by `routed`, which must add
    /// `Σ_j weights[t, j] * expert_{ids[t, j]}(x_t)` into each (zeroed) row of its output, in
    /// ascending expert order; the gate and the shared experts run here. One code path whether the
    /// experts are in this process or on expert pods.
    public func forward(
        _ input: UnsafeBufferPointer<Float>, tokens: Int, scratch: ExpertScratch,
        routed: (Routing, UnsafeMutableBufferPointer<Float>) throws -> Void
    ) throws -> (output: [Float], routing: Routing) {
        var output = [Float](repeating: 0, count: tokens * hidden)
        let routing = try output.withUnsafeMutableBufferPointer { out in
            try forward(input, tokens: tokens, scratch: scratch, into: out, routed: routed)
        }
        return (output, routing)
    }

    /// `forward(_:tokens:scratch:routed:)` writing the block's output into `output`
    /// (`[tokens, hidden]`, zeroed here first) instead of a new array: the decoder's layers reuse
    /// one buffer.
    public func forward(
        _ input: UnsafeBufferPointer<Float>, tokens: Int, scratch: ExpertScratch, into output: UnsafeMutableBufferPointer<Float>,
        routed: (Routing, UnsafeMutableBufferPointer<Float>) throws -> Void
    ) throws -> Routing {
        precondition(output.count >= tokens * hidden, "output is not [tokens, hidden]")
        let (_, routing) = route(input, tokens: tokens, scratch: scratch)
        guard tokens > 0 else { return routing }
        let out = UnsafeMutableBufferPointer(rebasing: output[0..<(tokens * hidden)])
        out.update(repeating: 0)
        try routed(routing, out)
        if let shared { addShared(shared, input: input.baseAddress!, tokens: tokens, output: out.baseAddress!, scratch: scratch) }
        return routing
    }

    /// Adds the shared experts' part to `output` `[tokens, hidden]` (which holds the routed sum):
    /// the second half of `forward(_:tokens:scratch:into:routed:)`, for callers that run the
    /// routed experts asynchronously between routing and this.
    public func addSharedExperts(_ input: UnsafeBufferPointer<Float>, tokens: Int, into output: UnsafeMutableBufferPointer<Float>, scratch: ExpertScratch) {
        guard let shared, tokens > 0 else { return }
        precondition(input.count >= tokens * hidden && output.count >= tokens * hidden, "input or output is not [tokens, hidden]")
        addShared(shared, input: input.baseAddress!, tokens: tokens, output: output.baseAddress!, scratch: scratch)
    }

    /// Adds the routed experts of `routing` into `output` `[tokens, hidden]` with the experts this
    /// layer loaded (an error names an expert it did not).
    public func accumulateRouted(_ input: UnsafeBufferPointer<Float>, routing: Routing, into output: UnsafeMutableBufferPointer<Float>, scratch: ExpertScratch) throws {
        guard routing.tokens > 0 else { return }
        try RoutedExperts.accumulate(input: input.baseAddress!, hidden: hidden, routing: routing, expertCount: router.experts,
                                     activation: activation, experts: { self.experts[$0] }, output: output.baseAddress!, scratch: scratch)
    }

    /// `output += g_t * shared(x_t)`, with `g_t = sigmoid(x_t · shared_expert_gate)` for Qwen2-MoE, else 1.
    private func addShared(_ weights: ExpertWeights, input: UnsafePointer<Float>, tokens: Int, output: UnsafeMutablePointer<Float>, scratch: ExpertScratch) {
        let results = scratch.output.reserve(tokens * hidden)
        ExpertFFN.run(weights, activation: activation, tokens: tokens, input: input, output: results, scratch: scratch)
        for t in 0..<tokens {
            var g: Float = 1
            if let sharedGate {
                var dot: Float = 0
                for i in 0..<hidden { dot += input[t * hidden + i] * sharedGate[i] }
                g = 1 / (1 + expf(-dot))
            }
            eaas_axpy(g, results + t * hidden, output + t * hidden, hidden)
        }
    }
}
