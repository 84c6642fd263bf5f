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
        var counts: [UInt16: Int] = [:]
        for id in ids { counts[UInt16(truncatingIfNeeded: id), default: 0] += 1 }
        return counts.sorted { $0.key < $1.key }.map { (HostedExpert(layer: layer, expert: $0.key), $0.value) }
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
        var order = [Int](repeating: 0, count: groups.map(\.count).max() ?? 0)
        func sortGroup(_ group: Range<Int>) {
            // Pairs of one token ordered by (server, expert id): insertion sort, groups are small.
            for (j, pair) in group.enumerated() {
                let key = (server(pair), ids[pair])
                var i = j
                while i > 0, (server(order[i - 1]), ids[order[i - 1]]) > key {
                    order[i] = order[i - 1]
                    i -= 1
                }
                order[i] = pair
            }
        }
        // Pass 1: per server, how many rows it gets and its most slots in one row.
        var rowCount = [Int](repeating: 0, count: servers)
        var slots = [Int](repeating: 0, count: servers)
        for group in groups {
            sortGroup(group)
            var j = 0
            while j < group.count {
                let s = server(order[j])
                var run = 1
                while j + run < group.count, server(order[j + run]) == s { run += 1 }
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
            sortGroup(group)
            var j = 0
            while j < group.count {
                let s = server(order[j])
                batches[s].tokens.append(pairTokens[order[j]])
                batches[s].firstExpert.append(UInt16(truncatingIfNeeded: ids[order[j]]))
                var run = 0
                while j + run < group.count, server(order[j + run]) == s {
                    let pair = order[j + run]
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
