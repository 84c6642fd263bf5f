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

    /// The times of `self` since `earlier`.
    public func since(_ earlier: StepPhaseTimes) -> StepPhaseTimes {
        var d = StepPhaseTimes()
        d.dispatch = dispatch - earlier.dispatch
        d.wait = wait - earlier.wait
        d.copy = copy - earlier.copy
        d.combine = combine - earlier.combine
        d.steps = steps - earlier.steps
        return d
    }
}
