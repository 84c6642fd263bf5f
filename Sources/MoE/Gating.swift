#if canImport(Glibc)
import Glibc
#elseif canImport(Darwin)
import Darwin
#endif

/// How an architecture turns router logits into each token's experts and weights.
///
/// The variants, as each architecture's transformers implementation computes them:
/// - softmax over all experts, top-k, optional renormalisation of the k weights (Mixtral always;
///   Qwen2-MoE, Qwen3-MoE, OLMoE when `norm_topk_prob`);
/// - DeepSeek-V2: softmax, top-k over all experts (`greedy`) or within the `topk_group` groups with the
///   highest maximum score (`group_limited_greedy`), weights times `routed_scaling_factor`;
/// - DeepSeek-V3: sigmoid scores; the choice uses scores plus a per-expert correction bias, groups
///   ranked by the sum of their two best biased scores; the weights are the unbiased scores,
///   optionally renormalised (with a 1e-20 guard), times `routed_scaling_factor`.
public struct RouterSpec: Sendable, Equatable {
    public enum Scoring: String, Sendable { case softmax, sigmoid }
    /// How groups of experts are ranked before the top-k, when routing is group-limited.
    public enum GroupRanking: String, Sendable {
        /// All experts compete.
        case none
        /// Groups ranked by their best score (DeepSeek-V2 `group_limited_greedy`).
        case maxScore
        /// Groups ranked by the sum of their two best biased scores (DeepSeek-V3 `noaux_tc`).
        case sumOfTopTwo
    }

    /// Routed experts per MoE layer.
    public var experts: Int
    /// Experts each token goes to.
    public var topK: Int
    public var scoring: Scoring
    /// Whether the k chosen weights are divided by their sum.
    public var renormalize: Bool
    /// Added to the sum before dividing (DeepSeek-V3's 1e-20; 0 elsewhere).
    public var renormalizeEpsilon: Float
    /// Multiplies the final weights (DeepSeek's `routed_scaling_factor`; 1 elsewhere).
    public var scalingFactor: Float
    public var groupRanking: GroupRanking
    /// Expert groups (`n_group`); 1 when routing is not group-limited.
    public var groups: Int
    /// Groups each token may choose from (`topk_group`).
    public var groupsPerToken: Int
    /// Whether a per-expert score correction bias is added for the choice (DeepSeek-V3).
    public var usesCorrectionBias: Bool

    /// A spec; check `problem` before routing with it (configs do so when they are read).
    public init(
        experts: Int, topK: Int, scoring: Scoring = .softmax, renormalize: Bool,
        renormalizeEpsilon: Float = 0, scalingFactor: Float = 1, groupRanking: GroupRanking = .none,
        groups: Int = 1, groupsPerToken: Int = 1, usesCorrectionBias: Bool = false
    ) {
        self.experts = experts
        self.topK = topK
        self.scoring = scoring
        self.renormalize = renormalize
        self.renormalizeEpsilon = renormalizeEpsilon
        self.scalingFactor = scalingFactor
        self.groupRanking = groupRanking
        self.groups = groups
        self.groupsPerToken = groupsPerToken
        self.usesCorrectionBias = usesCorrectionBias
    }

    /// Why this spec cannot route, or nil when it can.
    public var problem: String? {
        if experts < 1 { return "the number of routed experts must be at least 1 (got \(experts))" }
        if topK < 1 || topK > experts { return "top-k \(topK) must be between 1 and the \(experts) routed experts" }
        if groupRanking != .none {
            if groups < 1 || experts % groups != 0 { return "n_group \(groups) must divide the \(experts) routed experts" }
            if groupsPerToken < 1 || groupsPerToken > groups { return "topk_group \(groupsPerToken) must be between 1 and n_group \(groups)" }
            if topK > groupsPerToken * (experts / groups) {
                return "top-k \(topK) exceeds the \(groupsPerToken * (experts / groups)) experts in \(groupsPerToken) of \(groups) groups"
            }
            if groupRanking == .sumOfTopTwo, experts / groups < 2 { return "group ranking by the top two scores needs at least 2 experts per group" }
        }
        if !scalingFactor.isFinite { return "routed_scaling_factor must be finite" }
        return nil
    }
}

/// Each token's chosen experts and their weights: `ids` and `weights` are `[tokens, topK]`,
/// row-major, in the order the top-k produced them (best score first).
public struct Routing: Sendable, Equatable {
    public let tokens: Int
    public let topK: Int
    public private(set) var ids: [Int32]
    public private(set) var weights: [Float]

    /// `ids` and `weights` must both hold `tokens * topK` values (checked).
    public init(tokens: Int, topK: Int, ids: [Int32], weights: [Float]) {
        precondition(ids.count == tokens * topK && weights.count == tokens * topK)
        self.tokens = tokens
        self.topK = topK
        self.ids = ids
        self.weights = weights
    }
}

/// Routing from logits: the pure part of the gate, with no weights of its own.
public enum Gate {
    /// Routes `tokens` rows of `logits` (`[tokens, spec.experts]`), adding `correctionBias`
    /// (`[experts]`) for the choice when the spec uses one.
    public static func route(
        logits: UnsafeBufferPointer<Float>, tokens: Int, spec: RouterSpec, correctionBias: [Float]? = nil
    ) -> Routing {
        let e = spec.experts, k = spec.topK
        precondition(spec.problem == nil, "router spec cannot route: \(spec.problem ?? "")")
        precondition(logits.count == tokens * e, "logits are not [tokens, experts]")
        precondition(!spec.usesCorrectionBias || correctionBias == nil || correctionBias!.count == e, "correction bias is not [experts]")
        var ids = [Int32](repeating: 0, count: tokens * k)
        var weights = [Float](repeating: 0, count: tokens * k)
        var scores = [Float](repeating: 0, count: e)
        var choice = [Float](repeating: 0, count: e)
        var picked = [Int](repeating: 0, count: k)
        let groupSize = spec.groupRanking == .none ? e : e / spec.groups
        var groupScores = [Float](repeating: 0, count: spec.groupRanking == .none ? 1 : spec.groups)
        var groupPicked = [Int](repeating: 0, count: spec.groupsPerToken)

        for t in 0..<tokens {
            let row = UnsafeBufferPointer(rebasing: logits[(t * e)..<(t * e + e)])
            switch spec.scoring {
            case .softmax: softmax(row, into: &scores)
            case .sigmoid: for i in 0..<e { scores[i] = 1 / (1 + expf(-row[i])) }
            }
            for i in 0..<e { choice[i] = scores[i] }
            if spec.usesCorrectionBias, let correctionBias {
                for i in 0..<e { choice[i] = scores[i] + correctionBias[i] }
            }
            if spec.groupRanking != .none {
                for g in 0..<spec.groups {
                    let members = choice[(g * groupSize)..<((g + 1) * groupSize)]
                    switch spec.groupRanking {
                    case .maxScore: groupScores[g] = members.max()!
                    case .sumOfTopTwo:
                        var best = -Float.infinity, second = -Float.infinity
                        for v in members {
                            if v > best { second = best; best = v } else if v > second { second = v }
                        }
                        groupScores[g] = best + second
                    case .none: break
                    }
                }
                topK(groupScores, count: spec.groupsPerToken, into: &groupPicked)
                // Experts outside the chosen groups cannot be chosen. (V2 fills them with 0 and V3
                // with -inf; with positive scores and topK within the allowed experts, the same.)
                var allowed = [Bool](repeating: false, count: spec.groups)
                for g in groupPicked { allowed[g] = true }
                for g in 0..<spec.groups where !allowed[g] {
                    for i in (g * groupSize)..<((g + 1) * groupSize) { choice[i] = -.infinity }
                }
            }
            topK(choice, count: k, into: &picked)
            var sum: Float = 0
            for j in 0..<k {
                ids[t * k + j] = Int32(picked[j])
                weights[t * k + j] = scores[picked[j]]
                sum += scores[picked[j]]
            }
            if spec.renormalize {
                let denominator = sum + spec.renormalizeEpsilon
                for j in 0..<k { weights[t * k + j] /= denominator }
            }
            if spec.scalingFactor != 1 {
                for j in 0..<k { weights[t * k + j] *= spec.scalingFactor }
            }
        }
        return Routing(tokens: tokens, topK: k, ids: ids, weights: weights)
    }

    /// Numerically stable softmax of one row.
    static func softmax(_ row: UnsafeBufferPointer<Float>, into out: inout [Float]) {
        var maxValue = -Float.infinity
        for v in row where v > maxValue { maxValue = v }
        var sum: Float = 0
        for i in 0..<row.count {
            let x = expf(row[i] - maxValue)
            out[i] = x
            sum += x
        }
        for i in 0..<row.count { out[i] /= sum }
    }

    /// Indices of the `count` largest values, largest first; ties go to the lower index, NaN ranks last.
    static func topK(_ values: [Float], count: Int, into out: inout [Int]) {
        var filled = 0
        for (i, v) in values.enumerated() {
            let value = v.isNaN ? -Float.infinity : v
            // Insertion into the small sorted prefix: k is at most a few dozen.
            var position = filled
            while position > 0 {
                let other = values[out[position - 1]]
                let otherValue = other.isNaN ? -Float.infinity : other
                if value > otherValue { position -= 1 } else { break }
            }
            guard position < count else { continue }
            var j = min(filled, count - 1)
            while j > position { out[j] = out[j - 1]; j -= 1 }
            out[position] = i
            if filled < count { filled += 1 }
        }
    }
}
