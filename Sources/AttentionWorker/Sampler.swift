#if canImport(Glibc)
import Glibc
#endif

/// How the next token is picked from the logits.
public struct SamplingParameters: Sendable, Equatable {
    /// 0 is greedy (argmax, lowest id on a tie); otherwise logits are divided by it.
    public var temperature: Double
    /// Nucleus sampling: the smallest set of most likely tokens whose probability reaches `topP`.
    public var topP: Double
    /// Keep only the `topK` most likely tokens (0: all).
    public var topK: Int
    /// Seed of this request's generator: the same seed, prompt and model give the same tokens.
    public var seed: UInt64

    public init(temperature: Double = 0, topP: Double = 1, topK: Int = 0, seed: UInt64 = 0) {
        self.temperature = temperature
        self.topP = topP
        self.topK = topK
        self.seed = seed
    }

    /// Greedy decoding.
    public static let greedy = SamplingParameters()

    /// Why these parameters cannot be used, or nil.
    public var problem: String? {
        if !temperature.isFinite || temperature < 0 { return "temperature must be a number >= 0 (got \(temperature))" }
        if !topP.isFinite || topP <= 0 || topP > 1 { return "top_p must be in (0, 1] (got \(topP))" }
        if topK < 0 { return "top_k must be >= 0 (got \(topK))" }
        return nil
    }
}

/// A sequence's token picker: greedy, or seeded temperature / top-k / top-p sampling.
struct Sampler {
    let parameters: SamplingParameters
    private var state: UInt64

    init(_ parameters: SamplingParameters) {
        self.parameters = parameters
        state = parameters.seed
    }

    /// The next token for `logits` `[vocab]`; nil when the logits hold NaN (a broken model or input).
    mutating func next(_ logits: UnsafeBufferPointer<Float>) -> Int? {
        if logits.contains(where: { $0.isNaN }) { return nil }
        if parameters.temperature == 0 { return Self.argmax(logits) }
        let maximum = Double(logits[Self.argmax(logits)])
        let limitK = parameters.topK > 0 && parameters.topK < logits.count
        guard limitK || parameters.topP < 1 else {
            // Plain temperature sampling: one pass for the total, one to draw.
            var total = 0.0
            for logit in logits { total += exp((Double(logit) - maximum) / parameters.temperature) }
            let draw = uniform() * total
            var running = 0.0
            for i in logits.indices {
                running += exp((Double(logits[i]) - maximum) / parameters.temperature)
                if draw < running { return i }
            }
            return Self.argmax(logits)
        }
        // Candidates by descending logit (ties by lower id): the top k only when top-k is set.
        let before: (Int, Int) -> Bool = { logits[$0] > logits[$1] || (logits[$0] == logits[$1] && $0 < $1) }
        var order = limitK ? Self.top(parameters.topK, of: logits, by: before) : Array(logits.indices)
        order.sort(by: before)
        var probabilities = order.map { exp((Double(logits[$0]) - maximum) / parameters.temperature) }
        let total = probabilities.reduce(0, +)
        var kept = 0, cumulative = 0.0
        while kept < probabilities.count {
            probabilities[kept] /= total
            cumulative += probabilities[kept]
            kept += 1
            if cumulative >= parameters.topP { break }
        }
        let draw = uniform() * probabilities[0..<kept].reduce(0, +)
        var running = 0.0
        for i in 0..<kept {
            running += probabilities[i]
            if draw < running { return order[i] }
        }
        return order[kept - 1]
    }

    /// The `k` ids first in `before` order, unordered: a bounded heap, O(vocab · log k).
    static func top(_ k: Int, of logits: UnsafeBufferPointer<Float>, by before: (Int, Int) -> Bool) -> [Int] {
        // A min-heap under `before`: the root is the candidate that would be dropped first.
        var heap: [Int] = []
        heap.reserveCapacity(k)
        func siftDown(_ start: Int) {
            var i = start
            while true {
                let l = 2 * i + 1, r = l + 1
                var worst = i
                if l < heap.count, before(heap[worst], heap[l]) { worst = l }
                if r < heap.count, before(heap[worst], heap[r]) { worst = r }
                if worst == i { return }
                heap.swapAt(i, worst)
                i = worst
            }
        }
        for id in logits.indices {
            if heap.count < k {
                heap.append(id)
                var i = heap.count - 1
                while i > 0, before(heap[(i - 1) / 2], heap[i]) {
                    heap.swapAt(i, (i - 1) / 2)
                    i = (i - 1) / 2
                }
            } else if before(id, heap[0]) {
                heap[0] = id
                siftDown(0)
            }
        }
        return heap
    }

    static func argmax(_ logits: UnsafeBufferPointer<Float>) -> Int {
        var best = 0
        for i in logits.indices where logits[i] > logits[best] { best = i }
        return best
    }

    /// A uniform double in [0, 1) from SplitMix64.
    private mutating func uniform() -> Double {
        state &+= 0x9E37_79B9_7F4A_7C15
        var z = state
        z = (z ^ (z >> 30)) &* 0xBF58_476D_1CE4_E5B9
        z = (z ^ (z >> 27)) &* 0x94D0_49BB_1331_11EB
        z ^= z >> 31
        return Double(z >> 11) * 0x1.0p-53
    }
}
