/// What one server computes in one step: some of the step's tokens, each with the experts of that
/// server it was routed to (ascending expert id, empty slots last) and their gate weights.
public struct ServerBatch: Sendable, Equatable {
    /// Index into `MembershipView.servers`.
    public let server: Int
    /// Indices of the step's tokens, ascending.
    public var tokens: [Int] = []
    public var slotsPerToken = 0
    /// `[tokens.count, slotsPerToken]`, `RequestHeader.emptySlot` where a token has fewer experts here.
    public var ids: [UInt16] = []
    /// `[tokens.count, slotsPerToken]`, 0 in empty slots.
    public var weights: [Float] = []
    /// Per row, the smallest expert it names: partial sums are combined in this order.
    public var firstExpert: [UInt16] = []
    /// The planned pairs this batch carries (indices into the pairs given to the planner).
    public var pairIndices: [Int] = []
}

/// Splits a step's routing into per-server batches, given each expert's chosen server.
public enum StepPlanner {
    /// The experts a step needs with their token counts. `ids` is `[tokens, topK]`.
    public static func demand(layer: UInt16, ids: [Int32]) -> [(expert: HostedExpert, tokens: Int)] {
        // Counted in a flat array indexed by expert id: ids are dense and small (< 65535).
        var counts = [Int](repeating: 0, count: Int(ids.lazy.map { UInt16(truncatingIfNeeded: $0) }.max() ?? 0) + 1)
        for id in ids { counts[Int(UInt16(truncatingIfNeeded: id))] += 1 }
        var demand: [(expert: HostedExpert, tokens: Int)] = []
        for (expert, count) in counts.enumerated() where count > 0 { demand.append((HostedExpert(layer: layer, expert: UInt16(expert)), count)) }
        return demand
    }

    /// One batch per server that has work, in ascending server index, for a whole step's routing
    /// `[tokens, topK]`. Within a token, a server's slots list its experts in ascending id, so that a
    /// server's partial sum adds its terms in the same order as the monolithic layer does.
    public static func plan(
        layer: UInt16, tokens: Int, topK: Int, ids: [Int32], weights: [Float], choice: [HostedExpert: Int]
    ) -> [ServerBatch] {
        precondition(ids.count == tokens * topK && weights.count == tokens * topK, "routing is not [tokens, topK]")
        return planPairs(layer: layer, pairTokens: (0..<(tokens * topK)).map { $0 / topK }, ids: ids, weights: weights, choice: choice)
    }

    /// The same for any list of (token, expert, weight) pairs whose tokens are non-decreasing (a
    /// step's routing, or what is left of it after a failover). Two passes over flat arrays: no
    /// per-token allocation.
    public static func planPairs(
        layer: UInt16, pairTokens: [Int], ids: [Int32], weights: [Float], choice: [HostedExpert: Int]
    ) -> [ServerBatch] {
        precondition(pairTokens.count == ids.count && ids.count == weights.count, "pairs are not aligned")
        guard !ids.isEmpty else { return [] }
        // Expert id → server index, flat.
        var serverOf = [Int](repeating: -1, count: (choice.keys.lazy.map { Int($0.expert) }.max() ?? 0) + 1)
        var servers = 0
        for (expert, server) in choice where expert.layer == layer {
            serverOf[Int(expert.expert)] = server
            servers = max(servers, server + 1)
        }
        for id in ids {
            precondition(id >= 0 && Int(id) < serverOf.count && serverOf[Int(id)] >= 0, "no server chosen for expert \(id) of layer \(layer)")
        }
        func server(_ pair: Int) -> Int { serverOf[Int(ids[pair])] }
        // Group boundaries: runs of equal token.
        var groups: [Range<Int>] = []
        var start = 0
        for i in 1...max(1, pairTokens.count) where i == pairTokens.count || pairTokens[i] != pairTokens[start] {
            if start < pairTokens.count { groups.append(start..<i) }
            start = i
        }
        // Each token's pairs ordered by (server, expert id), in place: insertion sort on a key that
        // packs both, since groups are small. Sorted once for both passes.
        var sorted = [Int](repeating: 0, count: ids.count)
        for group in groups {
            for pair in group {
                let key = server(pair) << 32 | Int(ids[pair])
                var i = pair
                while i > group.lowerBound, server(sorted[i - 1]) << 32 | Int(ids[sorted[i - 1]]) > key {
                    sorted[i] = sorted[i - 1]
                    i -= 1
                }
                sorted[i] = pair
            }
        }
        // Pass 1: per server, how many rows it gets and its most slots in one row.
        var rowCount = [Int](repeating: 0, count: servers)
        var slots = [Int](repeating: 0, count: servers)
        for group in groups {
            var j = group.lowerBound
            while j < group.upperBound {
                let s = server(sorted[j])
                var run = 1
                while j + run < group.upperBound, server(sorted[j + run]) == s { run += 1 }
                rowCount[s] += 1
                slots[s] = max(slots[s], run)
                j += run
            }
        }
        // Pass 2: fill.
        var batches = (0..<servers).map { s -> ServerBatch in
            var batch = ServerBatch(server: s)
            batch.slotsPerToken = slots[s]
            batch.tokens.reserveCapacity(rowCount[s])
            batch.firstExpert.reserveCapacity(rowCount[s])
            batch.ids.reserveCapacity(rowCount[s] * slots[s])
            batch.weights.reserveCapacity(rowCount[s] * slots[s])
            return batch
        }
        for group in groups {
            var j = group.lowerBound
            while j < group.upperBound {
                let s = server(sorted[j])
                batches[s].tokens.append(pairTokens[sorted[j]])
                batches[s].firstExpert.append(UInt16(truncatingIfNeeded: ids[sorted[j]]))
                var run = 0
                while j + run < group.upperBound, server(sorted[j + run]) == s {
                    let pair = sorted[j + run]
                    batches[s].ids.append(UInt16(truncatingIfNeeded: ids[pair]))
                    batches[s].weights.append(weights[pair])
                    batches[s].pairIndices.append(pair)
                    run += 1
                }
                for _ in run..<slots[s] {
                    batches[s].ids.append(RequestHeader.emptySlot)
                    batches[s].weights.append(0)
                }
                j += run
            }
        }
        return batches.filter { !$0.tokens.isEmpty }
    }
}
