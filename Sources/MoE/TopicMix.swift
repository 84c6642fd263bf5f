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
        let shift = driftSeconds > 0 ? Int((seconds / driftSeconds).rounded(.down)) : 0
        var weights = [Double](repeating: 0, count: routing.topics)
        for rank in 0..<routing.topics {
            weights[(rank + shift) % routing.topics] = 1 / Double(rank + 1).pow(exponent)
        }
        let total = weights.reduce(0, +)
        return weights.map { $0 / total }
    }

    /// The topic a request arriving at `seconds` asks about, for a uniform draw `u` in [0, 1).
    public func topic(at seconds: Double, draw u: Double) -> Int {
        var sum = 0.0
        let weights = weights(at: seconds)
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
