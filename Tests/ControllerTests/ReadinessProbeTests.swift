import JSON
import Kube
import Testing
@testable import Controller

/// The local kubelet's readiness: the probe's thresholds, counted as a kubelet counts them.
@Suite("Local runtime: readiness probe thresholds")
struct ReadinessProbeTests {
    static func pod(probe: JSONValue?) -> KubeObject {
        var container: JSONValue = ["name": "expert", "image": "eaas:test"]
        if let probe { container["readinessProbe"] = probe }
        return KubeObject(.pods, name: "p", namespace: "default", fields: ["spec": ["containers": [container]]])
    }

    @Test("Thresholds come from the pod's probe; what it leaves out (or sets below 1) is Kubernetes' default")
    func thresholdsFromTheSpec() {
        #expect(ProbeThresholds(pod: Self.pod(probe: nil), probe: "readinessProbe") == ProbeThresholds())
        #expect(ProbeThresholds() == { var t = ProbeThresholds(); t.timeout = .seconds(1); t.failures = 3; t.successes = 1; return t }())
        let set = ProbeThresholds(pod: Self.pod(probe: ["httpGet": ["path": "/readyz", "port": 9090], "timeoutSeconds": 2, "failureThreshold": 5, "successThreshold": 2]),
                                  probe: "readinessProbe")
        #expect(set.timeout == .seconds(2) && set.failures == 5 && set.successes == 2)
        let zero = ProbeThresholds(pod: Self.pod(probe: ["timeoutSeconds": 0, "failureThreshold": 0, "successThreshold": -1]), probe: "readinessProbe")
        #expect(zero == ProbeThresholds())
    }

    @Test("Readiness changes only after the threshold's probes in a row", arguments: [
        // (failureThreshold, successThreshold, probe results, readiness after each)
        (3, 1, [true, false, false, true, false, false, false, true], [true, true, true, true, true, true, false, true]),
        (1, 1, [true, false, true], [true, false, true]),
        (3, 2, [true, true, false, false, false, true, false, true, true], [false, true, true, true, false, false, false, false, true]),
        (2, 1, [false, false, false, true], [false, false, false, true]),
    ])
    func readinessCounts(failures: Int, successes: Int, probes: [Bool], expected: [Bool]) {
        var thresholds = ProbeThresholds()
        thresholds.failures = failures
        thresholds.successes = successes
        var state = ReadinessState()
        var seen: [Bool] = []
        var changes = 0
        for passed in probes {
            if state.record(passed: passed, thresholds: thresholds) { changes += 1 }
            seen.append(state.ready)
        }
        #expect(seen == expected)
        #expect(changes == zip([false] + expected, expected).filter { $0 != $1 }.count, "record reports each change once")
    }
}
