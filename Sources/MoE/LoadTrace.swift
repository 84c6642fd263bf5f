import Foundation

/// A traffic trace: the request rate over time and, optionally, each topic's share of the
/// requests. `eaas up` plays its `--load` phases as a stepped trace; `eaas bench elastic` plays the
/// built-in compressed day (`diurnal`) or a CSV file, with rates and topic weights interpolated
/// linearly between rows. After the last point the last rate holds.
public struct LoadTrace: Sendable, Equatable {
    /// One row: at `seconds`, `rate` requests per second, topics asked in the proportions
    /// `topicWeights` (nil: the load generator's own drifting mix).
    public struct Point: Sendable, Equatable {
        public var seconds: Double
        public var rate: Double
        public var topicWeights: [Double]?

        public init(seconds: Double, rate: Double, topicWeights: [Double]? = nil) {
            self.seconds = seconds
            self.rate = rate
            self.topicWeights = topicWeights
        }
    }

    /// How the rate moves between two points.
    public enum Interpolation: Sendable, Equatable {
        /// Held until the next point (phases).
        case step
        /// A straight line to the next point (recorded traces).
        case linear
    }

    public let points: [Point]
    public let interpolation: Interpolation
    /// How long the trace lasts (its last point's time unless given).
    public let duration: Double

    /// Points in time order, the first at 0 s.
    public init(points: [Point], interpolation: Interpolation, duration: Double? = nil) throws(LoadTraceError) {
        guard let first = points.first else { throw LoadTraceError("a trace needs at least one point") }
        guard first.seconds == 0 else { throw LoadTraceError("a trace starts at 0 s, not at \(first.seconds) s") }
        for (index, point) in points.enumerated() {
            guard point.rate.isFinite, (0...10_000).contains(point.rate) else {
                throw LoadTraceError("point \(index + 1): rate \(point.rate) is not between 0 and 10000 requests/s")
            }
            if index > 0, !(point.seconds > points[index - 1].seconds) {
                throw LoadTraceError("point \(index + 1): \(point.seconds) s does not come after \(points[index - 1].seconds) s")
            }
            if let weights = point.topicWeights {
                guard weights.allSatisfy({ $0.isFinite && $0 >= 0 }), weights.reduce(0, +) > 0 else {
                    throw LoadTraceError("point \(index + 1): topic weights must be non-negative with a positive sum")
                }
                guard weights.count == first.topicWeights?.count else {
                    throw LoadTraceError("point \(index + 1): \(weights.count) topic weights where the first point has \(first.topicWeights?.count ?? 0)")
                }
            } else if first.topicWeights != nil {
                throw LoadTraceError("point \(index + 1): no topic weights where the first point has \(first.topicWeights!.count)")
            }
        }
        let end = duration ?? points.last!.seconds
        guard end > 0, end.isFinite else { throw LoadTraceError("a trace must last more than 0 s") }
        self.points = points
        self.interpolation = interpolation
        self.duration = end
    }

    /// Number of topics the trace's weights name (0: none).
    public var topics: Int { points[0].topicWeights?.count ?? 0 }

    /// The segment holding `seconds`: its start point, its end point, and how far along (0–1).
    private func segment(at seconds: Double) -> (Point, Point, Double) {
        guard let next = points.firstIndex(where: { $0.seconds > seconds }) else { return (points.last!, points.last!, 0) }
        guard next > 0 else { return (points[0], points[0], 0) }
        let (a, b) = (points[next - 1], points[next])
        return (a, b, interpolation == .step ? 0 : (seconds - a.seconds) / (b.seconds - a.seconds))
    }

    /// Requests per second at `seconds` into the trace.
    public func rate(at seconds: Double) -> Double {
        let (a, b, f) = segment(at: seconds)
        return a.rate + (b.rate - a.rate) * f
    }

    /// Each topic's share of requests at `seconds` (summing to 1), or nil when the trace has none.
    public func topicWeights(at seconds: Double) -> [Double]? {
        let (a, b, f) = segment(at: seconds)
        guard let wa = a.topicWeights, let wb = b.topicWeights else { return nil }
        let mixed = zip(wa.map { $0 / wa.reduce(0, +) }, wb.map { $0 / wb.reduce(0, +) }).map { $0 + ($1 - $0) * f }
        let total = mixed.reduce(0, +)
        return mixed.map { $0 / total }
    }

    /// The highest rate the trace asks for.
    public var peakRate: Double {
        // Linear segments peak at their ends, steps at their starts: the points hold every maximum.
        points.filter { $0.seconds <= duration }.map(\.rate).max() ?? 0
    }

    /// The mean rate over the trace's duration (exact for both interpolations).
    public var meanRate: Double {
        var area = 0.0
        for (index, point) in points.enumerated() where point.seconds < duration {
            let next = index + 1 < points.count ? points[index + 1] : nil
            let end = min(duration, next?.seconds ?? duration)
            let endRate = interpolation == .step || next == nil ? point.rate
                : point.rate + (next!.rate - point.rate) * (end - point.seconds) / (next!.seconds - point.seconds)
            area += (point.rate + endRate) / 2 * (end - point.seconds)
        }
        return area / duration
    }

    /// The saving a perfectly elastic system would make against one provisioned for the peak:
    /// `1 − mean demand ÷ peak demand`.
    public var idealSaving: Double { peakRate > 0 ? 1 - meanRate / peakRate : 0 }

    /// `eaas up`'s phases: each (start second, requests per second) held until the next.
    public static func phases(_ phases: [(start: Double, rate: Double)]) throws(LoadTraceError) -> LoadTrace {
        try LoadTrace(points: phases.map { Point(seconds: $0.start, rate: $0.rate) }, interpolation: .step,
                      duration: .greatestFiniteMagnitude)
    }

    /// The built-in compressed day: a night at a fifth of the peak rising to an afternoon at
    /// 85 % of it and back, two bursts (a morning one to 70 %, and the peak itself in the
    /// afternoon), and a Zipf topic mix (exponent 1.2) whose ranking moves on by one topic at a
    /// third and at two thirds of the day.
    public static func diurnal(duration: Double, peakRate: Double, topics: Int) throws(LoadTraceError) -> LoadTrace {
        guard duration >= 10, duration.isFinite else { throw LoadTraceError("a diurnal trace needs at least 10 s, not \(duration)") }
        guard peakRate > 0 else { throw LoadTraceError("the peak rate must be positive") }
        let steps = 48
        var points: [Point] = []
        func base(_ t: Double) -> Double { 0.2 + 0.65 * (1 - cos(2 * Double.pi * t / duration)) / 2 }
        func weights(_ t: Double) -> [Double]? {
            guard topics >= 2 else { return nil }
            return TopicMix.zipf(topics: topics, exponent: 1.2, shift: min(2, Int(3 * t / duration)))
        }
        // Bursts: (start fraction, length fraction, level).
        let bursts = [(0.25, 1.0 / 24, 0.7), (0.55, 1.0 / 24, 1.0)]
        var times = (0...steps).map { Double($0) * duration / Double(steps) }
        for (start, length, _) in bursts { times += [start * duration, (start + length) * duration] }
        // The topic ranking's moves, as a pair of points a moment apart so the mix switches there.
        for third in [1.0 / 3, 2.0 / 3] { times += [third * duration - 0.5, third * duration] }
        times = Array(Set(times.map { ($0 * 1000).rounded() / 1000 })).sorted()
        for t in times {
            var level = base(t)
            for (start, length, burst) in bursts where t >= start * duration && t < (start + length) * duration { level = max(level, burst) }
            points.append(Point(seconds: t, rate: peakRate * level, topicWeights: weights(t)))
        }
        return try LoadTrace(points: points, interpolation: .linear, duration: duration)
    }

    /// A trace from CSV: `seconds,requests_per_second[,weight_topic0,weight_topic1,…]` per line;
    /// a first line that does not start with a number is a header; `#` starts a comment. Rates
    /// and weights are interpolated linearly between rows; the trace lasts to the last row.
    public static func csv(_ text: String, topics: Int) throws(LoadTraceError) -> LoadTrace {
        var points: [Point] = []
        for (number, raw) in text.split(separator: "\n", omittingEmptySubsequences: false).enumerated() {
            let line = raw.split(separator: "#", maxSplits: 1, omittingEmptySubsequences: false).first.map(String.init)?
                .trimmingCharacters(in: .whitespaces) ?? ""
            if line.isEmpty { continue }
            let fields = line.split(separator: ",", omittingEmptySubsequences: false).map { $0.trimmingCharacters(in: .whitespaces) }
            guard let seconds = Double(fields[0]) else {
                if points.isEmpty, number == 0 { continue }  // a header
                throw LoadTraceError("line \(number + 1): '\(fields[0])' is not a number of seconds")
            }
            guard fields.count >= 2, let rate = Double(fields[1]) else {
                throw LoadTraceError("line \(number + 1): needs seconds,requests_per_second[,topic weights…]")
            }
            var weights: [Double]?
            if fields.count > 2 {
                guard fields.count - 2 == topics else {
                    throw LoadTraceError("line \(number + 1): \(fields.count - 2) topic weights, but the model has \(topics) topics")
                }
                weights = try fields.dropFirst(2).map { field throws(LoadTraceError) in
                    guard let weight = Double(field) else { throw LoadTraceError("line \(number + 1): topic weight '\(field)' is not a number") }
                    return weight
                }
            }
            points.append(Point(seconds: seconds, rate: rate, topicWeights: weights))
        }
        guard points.count >= 2 else { throw LoadTraceError("a trace needs at least two rows, found \(points.count)") }
        return try LoadTrace(points: points, interpolation: .linear)
    }
}

/// Why a trace was refused.
public struct LoadTraceError: Error, CustomStringConvertible, Equatable {
    public let description: String
    public init(_ description: String) { self.description = description }
}
