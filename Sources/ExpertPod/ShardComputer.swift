import MoE
import Transport

/// Computes batches for an expert pod: the requests of all clients that reached the engine
/// together are merged per MoE layer into one routing, so each expert runs once per batch on every
/// token any client sent it (one GEMM chain), and each token's gate-weighted sum is written back
/// to the request it came from.
///
/// Hidden states are widened from the wire dtype to f32 as they are gathered; a request with a
/// non-finite value (NaN or ±Inf) is refused with `invalidValues` naming the token, since its
/// answer would be meaningless, and the rest of the batch is computed as usual.
public final class ShardComputer: ExpertComputer {
    public let shard: ExpertShard
    public let experts: [HostedExpert]
    public let hidden: Int
    public let dtype: WireDType
    /// Called after each batch with the tokens each `(layer, expert)` computed (for metrics).
    public var onExpertTokens: ((HostedExpert, Int) -> Void)?

    private let scratch = ExpertScratch()
    private var input: [Float] = []
    private var output: [Float] = []

    /// - Parameter dtype: the dtype workers send hidden states in.
    public init(shard: ExpertShard, dtype: WireDType) {
        self.shard = shard
        experts = shard.hosted
        hidden = shard.config.hiddenSize
        self.dtype = dtype
    }

    public func compute(_ batch: [ComputeItem]) -> [ComputeFailure?] {
        var failures = [ComputeFailure?](repeating: nil, count: batch.count)
        var layers: [UInt16: [Int]] = [:]
        for (index, item) in batch.enumerated() { layers[item.request.header.layer, default: []].append(index) }
        for (layer, members) in layers.sorted(by: { $0.key < $1.key }) {
            computeLayer(Int(layer), batch: batch, members: members, failures: &failures)
        }
        return failures
    }

    /// One MoE layer's requests as one routing `[tokens, slots]` over the concatenated tokens.
    private func computeLayer(_ layer: Int, batch: [ComputeItem], members: [Int], failures: inout [ComputeFailure?]) {
        var accepted: [(index: Int, row: Int)] = []
        var rows = 0
        for index in members {
            let request = batch[index].request
            if let bad = firstNonFinite(request) {
                failures[index] = ComputeFailure(.invalidValues, "token \(bad.token) has a non-finite hidden value (\(bad.value) at index \(bad.index))")
                continue
            }
            accepted.append((index, rows))
            rows += request.header.tokens
        }
        guard rows > 0 else { return }
        let slots = accepted.map { batch[$0.index].request.header.slotsPerToken }.max() ?? 1
        if input.count < rows * hidden { input = [Float](repeating: 0, count: rows * hidden) }
        if output.count < rows * hidden { output = [Float](repeating: 0, count: rows * hidden) }
        var ids = [Int32](repeating: RoutedExperts.emptySlot, count: rows * slots)
        var weights = [Float](repeating: 0, count: rows * slots)
        var tokensPerExpert: [Int: Int] = [:]
        input.withUnsafeMutableBufferPointer { x in
            for (index, row) in accepted {
                let request = batch[index].request, header = request.header
                widen(request, into: x.baseAddress! + row * hidden)
                for t in 0..<header.tokens {
                    for s in 0..<header.slotsPerToken {
                        guard let id = request.expert(token: t, slot: s) else { continue }
                        ids[(row + t) * slots + s] = Int32(id)
                        weights[(row + t) * slots + s] = request.weight(token: t, slot: s)
                        tokensPerExpert[Int(id), default: 0] += 1
                    }
                }
            }
        }
        let routing = Routing(tokens: rows, topK: slots, ids: ids, weights: weights)
        let hosted = shard.weights[layer] ?? [:]
        do {
            try input.withUnsafeBufferPointer { x in
                try output.withUnsafeMutableBufferPointer { y in
                    y.baseAddress!.update(repeating: 0, count: rows * hidden)
                    try RoutedExperts.accumulate(input: x.baseAddress!, hidden: hidden, routing: routing, expertCount: shard.config.expertCount,
                                                 activation: shard.config.activation, experts: { hosted[$0] },
                                                 output: y.baseAddress!, scratch: scratch)
                }
            }
        } catch {
            // The server checked every expert against the shard: this is a bug, not bad input.
            for (index, _) in accepted { failures[index] = ComputeFailure(.internalError, "layer \(layer): \(error)") }
            return
        }
        output.withUnsafeBufferPointer { y in
            for (index, row) in accepted {
                let sums = batch[index].sums
                // Finite inputs can still overflow (bf16 0x7f7f is 3.4e38): a pod never answers
                // with non-finite sums; it refuses that request, and the batch's others go on.
                if let bad = Self.firstNonFinite(y.baseAddress! + row * hidden, count: sums.count) {
                    failures[index] = ComputeFailure(.invalidValues, "token \(bad / hidden)'s expert sums are not finite (at index \(bad % hidden)): its hidden values overflow the experts")
                    continue
                }
                sums.baseAddress!.update(from: y.baseAddress! + row * hidden, count: sums.count)
            }
        }
        if let onExpertTokens {
            for (expert, tokens) in tokensPerExpert { onExpertTokens(HostedExpert(layer: UInt16(layer), expert: UInt16(expert)), tokens) }
        }
    }

    /// `[tokens, hidden]` states of `request` as f32 at `out`.
    private func widen(_ request: RequestView, into out: UnsafeMutablePointer<Float>) {
        let count = request.header.tokens * hidden
        let source = request.states.baseAddress!
        switch request.header.dtype {
        case .f32: UnsafeMutableRawPointer(out).copyMemory(from: source, byteCount: count * 4)
        case .bf16: BLAS.widenBF16(source.assumingMemoryBound(to: UInt16.self), into: out, count: count)
        case .f16: BLAS.widenF16(source.assumingMemoryBound(to: UInt16.self), into: out, count: count)
        }
    }

    /// Where the first NaN or ±Inf of `count` floats at `values` is, if any.
    static func firstNonFinite(_ values: UnsafePointer<Float>, count: Int) -> Int? {
        var i = 0
        // A sum over a block is non-finite if any element is: one cheap check per 64 values.
        while i < count {
            let end = min(count, i + 64)
            var sum: Float = 0
            for j in i..<end { sum += values[j] * 0 }
            if !sum.isFinite {
                for j in i..<end where !values[j].isFinite { return j }
            }
            i = end
        }
        return nil
    }

    /// The first non-finite hidden value of `request`, if any.
    private func firstNonFinite(_ request: RequestView) -> (token: Int, index: Int, value: Float)? {
        let states = request.states, header = request.header
        let count = header.tokens * header.hidden
        switch header.dtype {
        case .f32:
            for i in 0..<count {
                // Exponent all ones: NaN or ±Inf.
                let bits = UInt32(littleEndian: states.loadUnaligned(fromByteOffset: 4 * i, as: UInt32.self))
                if bits & 0x7f80_0000 == 0x7f80_0000 { return (i / header.hidden, i % header.hidden, Float(bitPattern: bits)) }
            }
        case .bf16:
            for i in 0..<count {
                let bits = UInt16(littleEndian: states.loadUnaligned(fromByteOffset: 2 * i, as: UInt16.self))
                if bits & 0x7f80 == 0x7f80 { return (i / header.hidden, i % header.hidden, Float(bitPattern: UInt32(bits) << 16)) }
            }
        case .f16:
            for i in 0..<count {
                let bits = UInt16(littleEndian: states.loadUnaligned(fromByteOffset: 2 * i, as: UInt16.self))
                if bits & 0x7c00 == 0x7c00 { return (i / header.hidden, i % header.hidden, Float(Float16(bitPattern: bits))) }
            }
        }
        return nil
    }
}
