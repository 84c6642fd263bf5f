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
    /// same order as the monolithic layer does.
    public static func plan(
        layer: UInt16, tokens: Int, topK: Int, ids: [Int32], weights: [Float], choice: [HostedExpert: Int]
    ) -> [ServerBatch] {
        precondition(ids.count == tokens * topK && weights.count == tokens * topK, "routing is not [tokens, topK]")
        // Per server, per token: the (expert, weight) pairs it serves.
        var perServer: [Int: [(token: Int, pairs: [(UInt16, Float)])]] = [:]
        for t in 0..<tokens {
            var byServer: [Int: [(UInt16, Float)]] = [:]
            for j in 0..<topK {
                let expert = UInt16(truncatingIfNeeded: ids[t * topK + j])
                guard let server = choice[HostedExpert(layer: layer, expert: expert)] else {
                    preconditionFailure("no server chosen for expert \(expert) of layer \(layer)")
                }
                byServer[server, default: []].append((expert, weights[t * topK + j]))
            }
            for (server, pairs) in byServer { perServer[server, default: []].append((t, pairs.sorted { $0.0 < $1.0 })) }
        }
        return perServer.keys.sorted().map { server in
            let rows = perServer[server]!.sorted { $0.token < $1.token }
            var batch = ServerBatch(server: server)
            batch.slotsPerToken = rows.map(\.pairs.count).max() ?? 0
            for row in rows {
                batch.tokens.append(row.token)
                for s in 0..<batch.slotsPerToken {
                    batch.ids.append(s < row.pairs.count ? row.pairs[s].0 : RequestHeader.emptySlot)
                    batch.weights.append(s < row.pairs.count ? row.pairs[s].1 : 0)
                }
            }
            return batch
        }
    }
}
