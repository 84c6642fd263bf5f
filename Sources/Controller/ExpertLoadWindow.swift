/// A pool's per-expert token rates over the last `seconds`, averaged over time: what load-aware
/// placement plans from, so that one noisy scrape does not regroup a pool.
public struct ExpertLoadWindow: Sendable, Equatable {
    private var samples: [(at: Double, rates: [Double])] = []

    public init() {}

    /// Records the rates measured at `at` (seconds, monotonic) and drops what fell out of the window.
    public mutating func add(at: Double, rates: [Double], seconds: Double) {
        if let last = samples.last, last.at >= at { samples.removeLast() }
        samples.append((at, rates))
        samples.removeAll { at - $0.at > seconds }
    }

    /// Seconds the samples span.
    public var span: Double { (samples.last?.at ?? 0) - (samples.first?.at ?? 0) }

    public var count: Int { samples.count }

    /// The time-weighted mean rate of each of `experts` experts (each sample holds until the next;
    /// the last counts as much as the one before it); zeros when empty.
    public func mean(experts: Int) -> [Double] {
        var sum = [Double](repeating: 0, count: experts)
        guard !samples.isEmpty else { return sum }
        var total = 0.0
        for (index, sample) in samples.enumerated() {
            let weight: Double
            if index + 1 < samples.count {
                weight = samples[index + 1].at - sample.at
            } else {
                weight = samples.count > 1 ? samples[index].at - samples[index - 1].at : 1
            }
            for expert in 0..<min(experts, sample.rates.count) { sum[expert] += sample.rates[expert] * weight }
            total += weight
        }
        return total > 0 ? sum.map { $0 / total } : sum
    }

    public static func == (a: Self, b: Self) -> Bool {
        a.samples.count == b.samples.count && zip(a.samples, b.samples).allSatisfy { $0.at == $1.at && $0.rates == $1.rates }
    }
}
