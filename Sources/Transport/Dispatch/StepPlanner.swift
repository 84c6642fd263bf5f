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
}

/// Splits a step's routing into per-server batches, given each expert's chosen server.
public enum StepPlanner {
    /// The experts a step needs with their token counts. `ids` is `[tokens, topK]`.
    public static func demand(layer: UInt16, ids: [Int32]) -> [(expert: HostedExpert, tokens: Int)] {
        var counts: [UInt16: Int] = [:]
        for id in ids { counts[UInt16(truncatingIfNeeded: id), default: 0] += 1 }
        return counts.sorted { $0.key < $1.key }.map { (HostedExpert(layer: layer, expert: $0.key), $0.value) }
    }

    /// One batch per server that has work, in ascending server index. Within a token, a server's
    /// slots list its experts in ascending id, so that a server's partial sum adds its terms in the
    /// same order as the monolithic layer does. Two passes over the routing with flat arrays: no
    /// per-token allocation.
    public static func plan(
        layer: UInt16, tokens: Int, topK: Int, ids: [Int32], weights: [Float], choice: [HostedExpert: Int]
    ) -> [ServerBatch] {
        precondition(ids.count == tokens * topK && weights.count == tokens * topK, "routing is not [tokens, topK]")
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
        // Pass 1: per server, how many tokens it gets and its most slots in one token.
        var tokenCount = [Int](repeating: 0, count: servers)
        var slots = [Int](repeating: 0, count: servers)
        var order = [Int](repeating: 0, count: topK)
        func sortToken(_ t: Int) {
            // Slots of token t ordered by (server, expert id): insertion sort, k is small.
            for j in 0..<topK {
                let key = (serverOf[Int(UInt16(truncatingIfNeeded: ids[t * topK + j]))], ids[t * topK + j])
                var i = j
                while i > 0 {
                    let other = order[i - 1]
                    let otherKey = (serverOf[Int(UInt16(truncatingIfNeeded: ids[t * topK + other]))], ids[t * topK + other])
                    if otherKey <= key { break }
                    order[i] = other
                    i -= 1
                }
                order[i] = j
            }
        }
        for t in 0..<tokens {
            sortToken(t)
            var j = 0
            while j < topK {
                let server = serverOf[Int(UInt16(truncatingIfNeeded: ids[t * topK + order[j]]))]
                var run = 1
                while j + run < topK, serverOf[Int(UInt16(truncatingIfNeeded: ids[t * topK + order[j + run]]))] == server { run += 1 }
                tokenCount[server] += 1
                slots[server] = max(slots[server], run)
                j += run
            }
        }
        // Pass 2: fill.
        var batches = (0..<servers).map { server -> ServerBatch in
            var batch = ServerBatch(server: server)
            batch.slotsPerToken = slots[server]
            batch.tokens.reserveCapacity(tokenCount[server])
            batch.ids.reserveCapacity(tokenCount[server] * slots[server])
            batch.weights.reserveCapacity(tokenCount[server] * slots[server])
            return batch
        }
        for t in 0..<tokens {
            sortToken(t)
            var j = 0
            while j < topK {
                let server = serverOf[Int(UInt16(truncatingIfNeeded: ids[t * topK + order[j]]))]
                var run = 0
                batches[server].tokens.append(t)
                while j + run < topK, serverOf[Int(UInt16(truncatingIfNeeded: ids[t * topK + order[j + run]]))] == server {
                    batches[server].ids.append(UInt16(truncatingIfNeeded: ids[t * topK + order[j + run]]))
                    batches[server].weights.append(weights[t * topK + order[j + run]])
                    run += 1
                }
                for _ in run..<slots[server] {
                    batches[server].ids.append(RequestHeader.emptySlot)
                    batches[server].weights.append(0)
                }
                j += run
            }
        }
        return batches.filter { !$0.tokens.isEmpty }
    }
}
