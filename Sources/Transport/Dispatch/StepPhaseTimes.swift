/// Where a dispatcher's steps spend their time, summed over steps: what going remote costs,
/// measured rather than inferred.
public struct StepPhaseTimes: Sendable, Equatable {
    /// Choosing replicas, planning the per-server requests and sending them (encoding into slots,
    /// or `sendmsg`), failover rounds included.
    public var dispatch: Duration = .zero
    /// From the requests sent until each answer is in: the servers' compute and the transport's
    /// round trip and wake-ups.
    public var wait: Duration = .zero
    /// Copying the answers into the layer's output.
    public var copy: Duration = .zero
    /// Adding the partial sums of tokens answered by several servers.
    public var combine: Duration = .zero
    /// Steps (one per MoE layer call).
    public var steps = 0

    public init() {}

    /// Phase by phase sums and differences (a run's share: `after - before`).
    public static func + (a: StepPhaseTimes, b: StepPhaseTimes) -> StepPhaseTimes { combine(a, b, +, +) }
    public static func - (a: StepPhaseTimes, b: StepPhaseTimes) -> StepPhaseTimes { combine(a, b, -, -) }

    /// `a` and `b` phase by phase: `times` on each duration, `counts` on the step counts.
    public static func combine(_ a: StepPhaseTimes, _ b: StepPhaseTimes, _ times: (Duration, Duration) -> Duration,
                               _ counts: (Int, Int) -> Int) -> StepPhaseTimes {
        var d = StepPhaseTimes()
        d.dispatch = times(a.dispatch, b.dispatch)
        d.wait = times(a.wait, b.wait)
        d.copy = times(a.copy, b.copy)
        d.combine = times(a.combine, b.combine)
        d.steps = counts(a.steps, b.steps)
        return d
    }
}
