import Foundation

/// The counters the autoscaler reads from one scrape of an expert pod's `/metrics`.
public struct PodCounters: Sendable, Equatable {
    /// `eaas_expert_tokens_total`, summed over the pod's experts: its rate is the sum of the
    /// per-expert token rates, which is what a shard's load adds up.
    public var tokens: Double
    /// `eaas_busy_seconds_total`.
    public var busySeconds: Double
    /// The `digest` label of `eaas_model_info`: which checkpoint the pod serves.
    public var modelDigest: String?
    /// `eaas_expert_tokens_total` by its `expert` label, summed over `layer`: what load-aware
    /// placement plans from (a shard serves its experts in every layer).
    public var expertTokens: [Int: Double]
    /// `eaas_clients`: attention workers connected now (nil: a pod that does not report it).
    public var clients: Int?

    public init(tokens: Double, busySeconds: Double, modelDigest: String? = nil, expertTokens: [Int: Double] = [:], clients: Int? = nil) {
        self.tokens = tokens
        self.busySeconds = busySeconds
        self.modelDigest = modelDigest
        self.expertTokens = expertTokens
        self.clients = clients
    }

    /// Reads the Prometheus text exposition; nil when the expert token counter is absent (not an
    /// expert pod, or a broken answer), so that it counts as a missing metric.
    public init?(prometheusText text: String) {
        var tokens = 0.0
        var busy = 0.0
        var sawTokens = false
        var digest: String?
        var byExpert: [Int: Double] = [:]
        var clients: Int?
        for line in text.split(separator: "\n", omittingEmptySubsequences: true) where !line.hasPrefix("#") {
            // name{labels} value [timestamp]
            let nameEnd = line.firstIndex { $0 == "{" || $0 == " " } ?? line.endIndex
            let name = line[..<nameEnd]
            if name == "eaas_model_info" {
                digest = Self.label("digest", in: line[nameEnd...])
                continue
            }
            if name == "eaas_clients" {
                // A gauge without labels: `eaas_clients 3`.
                if let value = line[nameEnd...].split(separator: " ").first.flatMap({ Double($0) }), value.isFinite, value >= 0, value < 1e9 {
                    clients = Int(value)
                }
                continue
            }
            guard name == "eaas_expert_tokens_total" || name == "eaas_busy_seconds_total" else { continue }
            var rest = line[nameEnd...]
            let expert = name == "eaas_expert_tokens_total" ? Self.label("expert", in: rest).flatMap { Int($0) } : nil
            if rest.first == "{", let close = rest.lastIndex(of: "}") { rest = rest[rest.index(after: close)...] }
            guard let valueText = rest.split(separator: " ").first, let value = Double(valueText), value.isFinite else { continue }
            if name == "eaas_busy_seconds_total" {
                busy += value
            } else {
                sawTokens = true
                tokens += value
                if let expert, (0...65_535).contains(expert) { byExpert[expert, default: 0] += value }
            }
        }
        guard sawTokens else { return nil }
        self.init(tokens: tokens, busySeconds: busy, modelDigest: digest, expertTokens: byExpert, clients: clients)
    }

    /// The value of label `name` in `{a="x",b="y"} …`, when it is a plain hex or word value (a
    /// digest never needs escapes; anything else is ignored rather than half-read).
    static func label(_ name: String, in rest: Substring) -> String? {
        guard rest.first == "{", let close = rest.firstIndex(of: "}") else { return nil }
        for pair in rest[rest.index(after: rest.startIndex)..<close].split(separator: ",") {
            let parts = pair.split(separator: "=", maxSplits: 1)
            guard parts.count == 2, parts[0].trimmingCharacters(in: .whitespaces) == name else { continue }
            let quoted = parts[1].trimmingCharacters(in: .whitespaces)
            guard quoted.count >= 2, quoted.hasPrefix("\""), quoted.hasSuffix("\"") else { return nil }
            let value = quoted.dropFirst().dropLast()
            guard !value.isEmpty, value.count <= 128, value.allSatisfy({ $0.isLetter || $0.isNumber || $0 == "-" || $0 == "_" }) else { return nil }
            return String(value)
        }
        return nil
    }
}

/// A pod's load over the last scrape interval.
public struct PodLoad: Sendable, Equatable {
    public var tokensPerSecond: Double
    /// Fraction of wall time spent computing, 0…1 (above 1 only with parallel compute).
    public var busyFraction: Double
    /// Tokens per second by expert index (summed over layers).
    public var expertTokensPerSecond: [Int: Double] = [:]

    public func value(of metric: LoadMetric) -> Double {
        switch metric {
        case .tokensPerSecond: tokensPerSecond
        case .busyFraction: busyFraction
        }
    }
}

/// Turns successive counter readings per pod into rates, as Prometheus' `rate` does for two
/// points: a counter that went down was reset (the container restarted) and counts from zero.
/// A pod's first reading gives no rate yet; pods not seen for a while are forgotten.
public final class LoadTracker: @unchecked Sendable {
    private struct Reading {
        var counters: PodCounters
        var at: Double
        var load: PodLoad?
    }
    private let lock = NSLock()
    private var readings: [String: Reading] = [:]

    public init() {}

    /// Records `counters` read from pod `uid` at `now` (seconds, monotonic) and returns its load
    /// since the previous reading.
    @discardableResult
    public func record(pod uid: String, counters: PodCounters, now: Double) -> PodLoad? {
        lock.withLock {
            guard let previous = readings[uid], now > previous.at else {
                readings[uid] = Reading(counters: counters, at: now, load: readings[uid]?.load)
                return readings[uid]?.load
            }
            let elapsed = now - previous.at
            let tokens = counters.tokens >= previous.counters.tokens ? counters.tokens - previous.counters.tokens : counters.tokens
            let busy = counters.busySeconds >= previous.counters.busySeconds ? counters.busySeconds - previous.counters.busySeconds : counters.busySeconds
            var byExpert: [Int: Double] = [:]
            for (expert, count) in counters.expertTokens {
                let before = previous.counters.expertTokens[expert] ?? 0
                byExpert[expert] = (count >= before ? count - before : count) / elapsed
            }
            let load = PodLoad(tokensPerSecond: tokens / elapsed, busyFraction: busy / elapsed, expertTokensPerSecond: byExpert)
            readings[uid] = Reading(counters: counters, at: now, load: load)
            return load
        }
    }

    /// The pod's last measured load, if it has one.
    public func load(of uid: String) -> PodLoad? { lock.withLock { readings[uid]?.load } }

    /// The checkpoint digest the pod reported in its last reading, if any.
    public func modelDigest(of uid: String) -> String? { lock.withLock { readings[uid]?.counters.modelDigest } }

    /// The clients the pod said were connected in its last reading, if it said.
    public func clients(of uid: String) -> Int? { lock.withLock { readings[uid]?.counters.clients } }

    /// Marks a failed scrape: the pod's metric is missing until two readings succeed again.
    public func markMissing(pod uid: String) { _ = lock.withLock { readings.removeValue(forKey: uid) } }

    /// Drops pods not in `alive`.
    public func retain(_ alive: Set<String>) {
        lock.withLock { readings = readings.filter { alive.contains($0.key) } }
    }
}
