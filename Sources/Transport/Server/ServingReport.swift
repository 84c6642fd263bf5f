/// What a `DataPlaneServer` did in one batch, reported to its observer (an expert pod turns it
/// into metrics). Requests refused before computing come as reports with no requests and one answer.
public struct ServingReport: Sendable {
    /// Requests and tokens computed together.
    public let requests: Int
    public let tokens: Int
    /// Time the computer spent on the batch.
    public let busy: Duration
    /// Per answered request: time from its arrival to its answer, and the error code it got, if any.
    public let answers: [(latency: Duration, failure: WireErrorCode?)]
    /// TCP requests still waiting when the batch finished.
    public let queued: Int
}
