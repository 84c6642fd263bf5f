/// The Horizontal Pod Autoscaler's arithmetic (kubernetes/pkg/controller/podautoscaler,
/// `replica_calculator.go`), as pure functions over one shard's pods: how many replicas the
/// current load asks for, before the behaviour rules (stabilization, rate policies, bounds).
/// The metric is an average per pod (tokens/s per replica, or busy fraction) with a target value.
public enum ReplicaCalculator {
    /// One pod of the shard as the autoscaler sees it. Pods being deleted or failed are left out
    /// by the caller, as the HPA leaves them out.
    public struct PodSample: Sendable, Equatable {
        /// Not running yet (Pending): set aside, as the HPA does for metrics other than CPU. A running
        /// pod that is not ready counts by its value, or as missing without one.
        public var pending: Bool
        /// The pod's metric value, or nil if it could not be scraped.
        public var value: Double?
        public init(pending: Bool = false, value: Double?) {
            self.pending = pending
            self.value = value
        }
    }

    /// The HPA's default tolerance: no change while the usage ratio is within 10 % of 1.
    public static let defaultTolerance = 0.1

    /// Whether `ratio` is within `tolerance` of 1, written as current Kubernetes writes it
    /// (`1 - t <= r <= 1 + t`), so that exactly 110 % of the target is "within" 10 %.
    static func isWithin(_ ratio: Double, _ tolerance: Double) -> Bool {
        1 - tolerance <= ratio && ratio <= 1 + tolerance
    }

    /// Desired replicas for `currentReplicas` pods (as the scale subresource reports them) given
    /// their samples and the per-pod `target`, with the HPA's rules:
    /// - ratio = mean(value of ready pods with a metric) / target; within `tolerance` of 1, no change;
    /// - pods without a metric count as 0 when scaling up and as `target` when scaling down;
    /// - pending pods are set aside, and count as 0 only if the others ask to scale up;
    /// - if filling those in flips the direction or lands within tolerance, no change;
    /// - otherwise ceil(ratio × pods counted).
    /// Returns nil when no pod has a metric: the HPA then does not act (and records nothing).
    public static func desiredReplicas(currentReplicas: Int, samples: [PodSample], target: Double,
                                       tolerance: Double = defaultTolerance) -> Int? {
        precondition(target > 0, "the target must be positive")
        let measured = samples.filter { !$0.pending && $0.value != nil }.map { $0.value! }
        let missing = samples.filter { !$0.pending && $0.value == nil }.count
        let unready = samples.filter(\.pending).count
        guard !measured.isEmpty else { return nil }

        let ratio = measured.reduce(0, +) / Double(measured.count) / target
        // Not-yet-ready pods matter only when the ready ones ask to scale up.
        let rebalanceUnready = unready > 0 && ratio > 1
        if !rebalanceUnready && missing == 0 {
            if isWithin(ratio, tolerance) { return currentReplicas }
            return Int((ratio * Double(measured.count)).rounded(.up))
        }
        var filled = measured
        // Missing metrics: the conservative guess for the direction the ready pods point to.
        if ratio < 1 { filled += Array(repeating: target, count: missing) }
        if ratio > 1 { filled += Array(repeating: 0, count: missing) }
        if rebalanceUnready { filled += Array(repeating: 0, count: unready) }
        let newRatio = filled.reduce(0, +) / Double(filled.count) / target
        if isWithin(newRatio, tolerance) || (ratio < 1 && newRatio > 1) || (ratio > 1 && newRatio < 1) {
            return currentReplicas  // too small a change, or filling in turned the direction around
        }
        let desired = Int((newRatio * Double(filled.count)).rounded(.up))
        if newRatio < 1 && desired > currentReplicas || newRatio > 1 && desired < currentReplicas { return currentReplicas }
        return desired
    }
}
