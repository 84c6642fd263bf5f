/// No ready server hosts an expert a step needs.
public struct NoReplica: Error, CustomStringConvertible, Sendable, Equatable {
    public let expert: HostedExpert
    public var description: String { "no ready replica hosts expert \(expert.expert) of layer \(expert.layer)" }
}

/// Chooses the server for each expert of one MoE-layer step.
///
/// Load-aware with the power of two choices: of two random replicas, the one with fewer
/// outstanding tokens (counting what this step already gave it). Few servers per step: a replica
/// the step already contacts competes too, with a bonus of `contactCost` tokens, since one more
/// server costs one more round trip. Experts with the most tokens choose first. Sticky: the
/// replica that served an expert last keeps it while it is no more loaded than the alternatives,
/// since a worker's steps run one after another and moving between idle replicas only costs
/// (their threads and page tables go cold); across workers, the random first choices spread load.
public struct ReplicaChooser: Sendable {
    /// Tokens of load a server already in the step may carry beyond another before a new server is
    /// contacted instead (default 64).
    public var contactCost: Int
    private var rng: UInt64
    /// The server id that served each expert last.
    private var last: [HostedExpert: String] = [:]

    public init(contactCost: Int = 64, seed: UInt64 = 0x9e37_79b9_7f4a_7c15) {
        self.contactCost = contactCost
        rng = seed
    }

    /// For each `(expert, tokens)` of the step, the index into `view.servers` that serves it.
    /// `outstanding[i]` is the tokens in flight at server `i` (same indexing; missing = 0).
    public mutating func choose(
        _ demand: [(expert: HostedExpert, tokens: Int)], view: MembershipView, outstanding: [Int]
    ) throws -> [HostedExpert: Int] {
        var load = outstanding + [Int](repeating: 0, count: max(0, view.servers.count - outstanding.count))
        var contacted: [Int] = []
        var index: [String: Int] = [:]
        if !last.isEmpty { for (i, server) in view.servers.enumerated() { index[server.id] = i } }
        var choice: [HostedExpert: Int] = [:]
        choice.reserveCapacity(demand.count)
        for (expert, tokens) in demand.sorted(by: { ($0.tokens, $1.expert) > ($1.tokens, $0.expert) }) {
            let replicas = view.replicas(of: expert)
            guard !replicas.isEmpty else { throw NoReplica(expert: expert) }
            var best = replicas[0]
            if replicas.count > 1 {
                let a = replicas[Int(next() % UInt64(replicas.count))]
                var b = replicas[Int(next() % UInt64(replicas.count - 1))]
                if b == a { b = replicas[replicas.count - 1] }
                best = score(a, load, contacted) <= score(b, load, contacted) ? a : b
                for server in contacted where replicas.contains(server) && score(server, load, contacted) < score(best, load, contacted) {
                    best = server
                }
                if let previous = last[expert].flatMap({ index[$0] }), previous != best, replicas.contains(previous),
                   score(previous, load, contacted) <= score(best, load, contacted) {
                    best = previous
                }
            }
            last[expert] = view.servers[best].id
            choice[expert] = best
            load[best] += tokens
            if !contacted.contains(best) { contacted.append(best) }
        }
        return choice
    }

    private func score(_ server: Int, _ load: [Int], _ contacted: [Int]) -> Int {
        load[server] + (contacted.contains(server) ? 0 : contactCost)
    }

    private mutating func next() -> UInt64 {
        rng &+= 0x9e37_79b9_7f4a_7c15
        var z = rng
        z = (z ^ (z >> 30)) &* 0xbf58_476d_1ce4_e5b9
        z = (z ^ (z >> 27)) &* 0x94d0_49bb_1331_11eb
        return z ^ (z >> 31)
    }
}

/// A per-server timeout that follows the measured round trips (RFC 6298's estimator): the
/// smoothed RTT plus four deviations, and at least twice the smoothed RTT, within
/// `[minimum, maximum]`, doubled after each timeout until a response arrives again.
public struct AdaptiveTimeout: Sendable, Equatable {
    public let minimum: Duration
    public let maximum: Duration
    /// Round-trip estimates per request size class (⌈log2(pairs)⌉): a prefill chunk of hundreds of
    /// token-expert pairs takes far longer than a decode step's few, and one estimate for both
    /// would time out the large ones or wait too long on the small ones.
    private var estimates: [Int: Estimate] = [:]
    private var backoff: Double = 1

    struct Estimate: Sendable, Equatable {
        var smoothed: Double
        var deviation: Double
    }

    public init(minimum: Duration = .milliseconds(20), maximum: Duration = .seconds(5)) {
        self.minimum = minimum
        self.maximum = maximum
    }

    static func sizeClass(_ pairs: Int) -> Int { pairs <= 1 ? 0 : Int.bitWidth - (pairs - 1).leadingZeroBitCount }

    /// The estimate for a request of `pairs` token-expert pairs and the factor to scale it by: its
    /// own size class, else the nearest smaller class scaled up in proportion (pessimistic: larger
    /// batches cost less per pair), else the nearest larger class as is.
    private func estimate(pairs: Int) -> (Estimate, Double)? {
        let wanted = Self.sizeClass(pairs)
        if let own = estimates[wanted] { return (own, 1) }
        if let smaller = estimates.keys.filter({ $0 < wanted }).max() {
            return (estimates[smaller]!, Double(1 << Swift.min(wanted - smaller, 30)))
        }
        if let larger = estimates.keys.filter({ $0 > wanted }).min() { return (estimates[larger]!, 1) }
        return nil
    }

    /// The timeout for a request of `pairs` token-expert pairs.
    public func current(pairs: Int = 1) -> Duration {
        guard let (estimate, scale) = estimate(pairs: pairs) else { return maximum }
        // At least twice the smoothed round trip: answers of compute-bound requests are steady, so
        // the deviation term alone would put the timeout barely above the usual answer.
        let seconds = Swift.max(estimate.smoothed + 4 * estimate.deviation, 2 * estimate.smoothed) * scale * backoff
        return Swift.max(minimum, Swift.min(maximum, .nanoseconds(Int64(Swift.min(seconds, 1e6) * 1e9))))
    }

    /// A round trip a request of `pairs` pairs is not expected to beat, for sleeping through: its own
    /// class's smoothed round trip, else a smaller class's (a lower bound), else zero. Never an
    /// estimate from larger requests: a client would sleep through a prefill's time for a decode step.
    public func typical(pairs: Int = 1) -> Duration {
        let wanted = Self.sizeClass(pairs)
        guard let sizeClass = estimates.keys.filter({ $0 <= wanted }).max(), let estimate = estimates[sizeClass] else { return .zero }
        return .nanoseconds(Int64(Swift.min(estimate.smoothed, 1e6) * 1e9))
    }

    /// Records a round trip that completed.
    public mutating func record(_ rtt: Duration, pairs: Int = 1) {
        let r = Double(rtt.components.seconds) + Double(rtt.components.attoseconds) * 1e-18
        let sizeClass = Self.sizeClass(pairs)
        if var e = estimates[sizeClass] {
            e.deviation = 0.75 * e.deviation + 0.25 * abs(e.smoothed - r)
            e.smoothed = 0.875 * e.smoothed + 0.125 * r
            estimates[sizeClass] = e
        } else {
            estimates[sizeClass] = Estimate(smoothed: r, deviation: r / 2)
        }
        backoff = 1
    }

    /// Records a timeout: the next one waits twice as long (up to `maximum`).
    public mutating func recordTimeout() { backoff = Swift.min(backoff * 2, 64) }
}
