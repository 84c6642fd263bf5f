import Foundation

/// Which topics synthetic traffic asks about, and how that drifts: topic popularity follows a
/// Zipf law (the k-th most popular topic is asked `1/k^exponent` as often as the first), and every
/// `driftSeconds` the ranking moves on by one topic, so yesterday's hot experts cool and others
/// heat up. The skew reaches the experts only through the model's router (`TopicRouting`).
public struct TopicMix: Sendable {
    public let routing: TopicRouting
    /// Zipf exponent of topic popularity.
    public var exponent = 1.2
    /// Seconds between two moves of the popularity ranking (0: no drift).
    public var driftSeconds = 60.0

    public init(routing: TopicRouting, exponent: Double = 1.2, driftSeconds: Double = 60) {
        self.routing = routing
        self.exponent = exponent
        self.driftSeconds = driftSeconds
    }

    /// Each topic's share of requests at `seconds` into the run; sums to 1.
    public func weights(at seconds: Double) -> [Double] {
        Self.zipf(topics: routing.topics, exponent: exponent, shift: driftSeconds > 0 ? Int((seconds / driftSeconds).rounded(.down)) : 0)
    }

    /// Zipf shares of `topics` topics, the most popular being topic `shift mod topics`, the next
    /// one after it, and so on; sums to 1.
    public static func zipf(topics: Int, exponent: Double, shift: Int) -> [Double] {
        var weights = [Double](repeating: 0, count: topics)
        for rank in 0..<topics {
            weights[(rank + shift) % topics] = 1 / Double(rank + 1).pow(exponent)
        }
        let total = weights.reduce(0, +)
        return weights.map { $0 / total }
    }

    /// The topic a request arriving at `seconds` asks about, for a uniform draw `u` in [0, 1).
    public func topic(at seconds: Double, draw u: Double) -> Int {
        Self.topic(weights: weights(at: seconds), draw: u)
    }

    /// The topic for a uniform draw `u` in [0, 1) from shares `weights`.
    public static func topic(weights: [Double], draw u: Double) -> Int {
        var sum = 0.0
        for (topic, weight) in weights.enumerated() {
            sum += weight
            if u < sum { return topic }
        }
        return weights.count - 1
    }

    /// A prompt of `length` tokens from the topic's vocabulary range.
    public func prompt(topic: Int, length: Int, using generator: inout some RandomNumberGenerator) -> [Int] {
        let tokens = routing.tokens(of: topic)
        return (0..<length).map { _ in Int.random(in: tokens, using: &generator) }
    }
}

extension Double {
    fileprivate func pow(_ exponent: Double) -> Double { Foundation.pow(self, exponent) }
}
