import Foundation
import Testing
@testable import MoE

/// Gating as pure arithmetic on hand-made logits: each case states the expected experts and
/// weights, worked out by hand from the architecture's definition.
@Suite("Gating variants")
struct GatingTests {
    static func softmax(_ x: [Float]) -> [Float] {
        let m = x.max()!
        let e = x.map { expf($0 - m) }
        let s = e.reduce(0, +)
        return e.map { $0 / s }
    }

    static func sigmoid(_ x: Float) -> Float { 1 / (1 + expf(-x)) }

    static func route(_ logits: [Float], _ spec: RouterSpec, bias: [Float]? = nil) -> Routing {
        logits.withUnsafeBufferPointer { Gate.route(logits: $0, tokens: logits.count / spec.experts, spec: spec, correctionBias: bias) }
    }

    @Test("Softmax top-k with renormalisation (Mixtral): the k weights sum to 1, best first")
    func softmaxRenormalized() {
        let logits: [Float] = [0.1, 2.0, -1.0, 1.5]
        let r = Self.route(logits, RouterSpec(experts: 4, topK: 2, renormalize: true))
        let p = Self.softmax(logits)
        #expect(r.ids == [1, 3])
        #expect(abs(r.weights[0] - p[1] / (p[1] + p[3])) < 1e-6 && abs(r.weights[1] - p[3] / (p[1] + p[3])) < 1e-6)
    }

    @Test("Softmax top-k without renormalisation (Qwen2-MoE, OLMoE): weights are the full-softmax probabilities")
    func softmaxPlain() {
        let logits: [Float] = [0.1, 2.0, -1.0, 1.5, 3.0, 0.0]
        let r = Self.route(logits, RouterSpec(experts: 6, topK: 3, renormalize: false))
        let p = Self.softmax(logits)
        #expect(r.ids == [4, 1, 3])
        #expect(zip(r.weights, [p[4], p[1], p[3]]).allSatisfy { abs($0 - $1) < 1e-6 })
    }

    @Test("DeepSeek-V2 group-limited greedy: only experts of the groups with the best maximum compete; weights scaled")
    func groupLimitedGreedy() {
        // Groups of 2: {0,1} max 1.0, {2,3} max 3.0, {4,5} max 2.9, {6,7} max 2.0. Best 2 groups: {2,3}, {4,5}.
        // Globally, expert 7 (2.0) beats expert 5 (1.9), but its group is not chosen.
        let logits: [Float] = [1.0, 0.0, 3.0, -2.0, 2.9, 1.9, 0.5, 2.0]
        let spec = RouterSpec(experts: 8, topK: 3, renormalize: false, scalingFactor: 2, groupRanking: .maxScore, groups: 4, groupsPerToken: 2)
        let r = Self.route(logits, spec)
        let p = Self.softmax(logits)
        #expect(r.ids == [2, 4, 5])
        #expect(zip(r.weights, [p[2], p[4], p[5]]).allSatisfy { abs($0 - 2 * $1) < 1e-6 })
        let greedy = Self.route(logits, RouterSpec(experts: 8, topK: 3, renormalize: false, scalingFactor: 2))
        #expect(greedy.ids == [2, 4, 7])
    }

    @Test("DeepSeek-V3: the bias steers the choice, groups rank by their top-two sum, weights are unbiased sigmoids renormalised and scaled")
    func noAuxTopK() {
        let logits: [Float] = [2.0, -3.0, 0.5, 0.4, 1.0, 1.0, -1.0, 0.0]
        // Biased scores: group {0,1} sums to σ(2)+σ(-3)=0.928, {2,3} to 1.222+0.3 (bias on 3), {4,5} to 1.462, {6,7} to 0.769.
        let bias: [Float] = [0, 0, 0, 0.3, 0, 0, 0, 0]
        let spec = RouterSpec(experts: 8, topK: 2, scoring: .sigmoid, renormalize: true, renormalizeEpsilon: 1e-20,
                              scalingFactor: 2.5, groupRanking: .sumOfTopTwo, groups: 4, groupsPerToken: 2, usesCorrectionBias: true)
        let r = Self.route(logits, spec, bias: bias)
        // Chosen groups {2,3} (1.522) and {4,5} (1.462); expert 0 (σ(2)=0.88, the best score) is out.
        // Within them, biased: e3 = σ(0.4)+0.3 = 0.899 beats e4 = e5 = σ(1) = 0.731 and e2 = σ(0.5) = 0.622.
        #expect(r.ids[0] == 3 && [4, 5].contains(r.ids[1]))
        let s3 = Self.sigmoid(0.4), s4 = Self.sigmoid(1.0)
        #expect(abs(r.weights[0] - 2.5 * s3 / (s3 + s4)) < 1e-6 && abs(r.weights[1] - 2.5 * s4 / (s3 + s4)) < 1e-6)
    }

    @Test("Ties go to the lower expert id and NaN logits are never preferred")
    func tiesAndNaN() {
        let r = Self.route([1, 1, 1, 1], RouterSpec(experts: 4, topK: 2, renormalize: true))
        #expect(r.ids == [0, 1] && r.weights == [0.5, 0.5])
        var top = [0, 0]
        Gate.topK([.nan, 1, .nan, 2], count: 2, into: &top)
        #expect(top == [3, 1])
    }

    @Test("Several tokens route independently, row by row")
    func manyTokens() {
        let logits: [Float] = [0, 5, 1, /**/ 7, 0, 1, /**/ 0, 1, 9]
        let r = Self.route(logits, RouterSpec(experts: 3, topK: 1, renormalize: true))
        #expect(r.ids == [1, 0, 2] && r.weights == [1, 1, 1])
    }

    @Test("Router specs that cannot route say why", arguments: [
        (RouterSpec(experts: 4, topK: 5, renormalize: true), "top-k 5"),
        (RouterSpec(experts: 0, topK: 1, renormalize: true), "at least 1"),
        (RouterSpec(experts: 8, topK: 2, renormalize: true, groupRanking: .maxScore, groups: 3, groupsPerToken: 1), "n_group 3 must divide"),
        (RouterSpec(experts: 8, topK: 5, renormalize: true, groupRanking: .maxScore, groups: 4, groupsPerToken: 2), "exceeds the 4 experts"),
        (RouterSpec(experts: 8, topK: 1, renormalize: true, groupRanking: .sumOfTopTwo, groups: 8, groupsPerToken: 2), "at least 2 experts per group"),
    ])
    func invalidSpecs(spec: RouterSpec, fragment: String) {
        #expect(spec.problem?.contains(fragment) == true, "\(spec.problem ?? "no problem")")
    }
}
