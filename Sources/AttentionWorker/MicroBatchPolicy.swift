/// Whether a step of so many tokens is split into two pipelined micro-batches: decided from the
/// step times measured so far, per step size, both ways.
///
/// Splitting hides the worker's attention behind the pods' experts, but each half sends its own
/// requests, and the experts its tokens chose read their weights again: where the pods' work is
/// bound by reading expert weights (large decode batches on CPUs) the second read costs more
/// than the overlap saves. Which way wins depends on the model, the batch and the machine, so it
/// is measured rather than assumed: each step size is tried both ways, the faster is used, and
/// the other is tried again every `exploreEvery` steps so that a change (other load, another
/// pod) is noticed.
struct MicroBatchPolicy: Equatable {
    /// Smoothed seconds per step of one size, run as one batch (`whole`) and split (`split`).
    struct Estimate: Equatable {
        var whole: Double?
        var split: Double?
        /// Steps of this size decided so far.
        var decisions = 0
    }

    /// One in how many steps runs the way that measured slower.
    let exploreEvery: Int
    /// Weight of a new measurement in the smoothed step time.
    let smoothing: Double
    private(set) var estimates: [Int: Estimate] = [:]

    init(exploreEvery: Int = 16, smoothing: Double = 0.25) {
        precondition(exploreEvery >= 2 && smoothing > 0 && smoothing <= 1, "invalid micro-batch policy")
        self.exploreEvery = exploreEvery
        self.smoothing = smoothing
    }

    /// Steps are compared by their token count: exactly up to 64 (decode batches), then in
    /// powers of two (prefill steps, whose times vary with their prompts anyway).
    static func bucket(tokens: Int) -> Int {
        tokens <= 64 ? tokens : 64 + (Int.bitWidth - (tokens - 1).leadingZeroBitCount)
    }

    /// Whether the next step of `tokens` tokens is split.
    mutating func split(tokens: Int) -> Bool {
        let key = Self.bucket(tokens: tokens)
        var estimate = estimates[key, default: Estimate()]
        defer { estimates[key] = estimate }
        estimate.decisions += 1
        guard let whole = estimate.whole else { return false }
        guard let split = estimate.split else { return true }
        let faster = split < whole
        return estimate.decisions % exploreEvery == 0 ? !faster : faster
    }

    /// Records how long a step of `tokens` tokens took, split or not.
    mutating func record(tokens: Int, split: Bool, seconds: Double) {
        let key = Self.bucket(tokens: tokens)
        var estimate = estimates[key, default: Estimate()]
        func smoothed(_ old: Double?) -> Double { old.map { $0 + smoothing * (seconds - $0) } ?? seconds }
        if split { estimate.split = smoothed(estimate.split) } else { estimate.whole = smoothed(estimate.whole) }
        estimates[key] = estimate
    }
}
