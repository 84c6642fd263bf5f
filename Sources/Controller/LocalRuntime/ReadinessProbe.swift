import Kube

/// What a readiness probe asks of a pod: its `timeoutSeconds`, `failureThreshold` and
/// `successThreshold`, with Kubernetes' defaults (1 s, 3, 1) for what the pod spec leaves out.
struct ProbeThresholds: Equatable {
    var timeout: Duration = .seconds(1)
    var failures = 3
    var successes = 1

    init() {}

    /// The thresholds of `probe` (`readinessProbe`, say) of the pod's first container; a value
    /// below the API's minimum of 1 is taken as the default, as the API server would refuse it.
    init(pod: KubeObject, probe: String) {
        guard let spec = pod.json[path: ["spec", "containers"]]?.array?.first?[probe] else { return }
        if let seconds = spec["timeoutSeconds"]?.int, seconds >= 1 { timeout = .seconds(seconds) }
        if let count = spec["failureThreshold"]?.int, count >= 1 { failures = count }
        if let count = spec["successThreshold"]?.int, count >= 1 { successes = count }
    }
}

/// A container's readiness as a kubelet keeps it: a ready pod turns unready only after
/// `failureThreshold` failed probes in a row, so one slow answer on a busy machine does not take
/// it out of every Service; an unready one turns ready after `successThreshold` passes in a row.
/// Starts unready.
struct ReadinessState: Equatable {
    private(set) var ready = false
    private var failures = 0
    private var successes = 0

    /// Counts one probe; true when readiness changed.
    mutating func record(passed: Bool, thresholds: ProbeThresholds) -> Bool {
        let before = ready
        if passed {
            successes += 1
            failures = 0
            if successes >= thresholds.successes { ready = true }
        } else {
            failures += 1
            successes = 0
            if failures >= thresholds.failures { ready = false }
        }
        return ready != before
    }
}
