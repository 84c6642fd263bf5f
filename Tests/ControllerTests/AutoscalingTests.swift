import Controller
import Testing

@Suite("HPA arithmetic: desired replicas from per-pod metrics")
struct ReplicaCalculatorTests {
    struct Case: Sendable, CustomTestStringConvertible {
        let name: String
        let current: Int
        let samples: [ReplicaCalculator.PodSample]
        let desired: Int?
        var testDescription: String { name }
    }
    static func ready(_ values: Double...) -> [ReplicaCalculator.PodSample] { values.map { .init(value: $0) } }
    /// Running, but no metric could be read (not ready yet, or its scrape failed).
    static let missing = ReplicaCalculator.PodSample(value: nil)
    /// Pending: not running yet.
    static let unready = ReplicaCalculator.PodSample(pending: true, value: nil)

    // Target 100 per pod throughout; the first cases are the HPA documentation's.
    static let cases: [Case] = [
        Case(name: "200 against 100 doubles", current: 3, samples: ready(200, 200, 200), desired: 6),
        Case(name: "50 against 100 halves", current: 4, samples: ready(50, 50, 50, 50), desired: 2),
        Case(name: "within the 10 % tolerance: no change", current: 4, samples: ready(105, 105, 105, 105), desired: 4),
        Case(name: "exactly 110 % is within the tolerance", current: 4, samples: ready(110, 110, 110, 110), desired: 4),
        Case(name: "just past the tolerance", current: 4, samples: ready(111, 111, 111, 111), desired: 5),
        Case(name: "uneven load averages", current: 3, samples: ready(300, 0, 150), desired: 5),
        Case(name: "scale down: a missing metric counts as the target", current: 4, samples: ready(50, 50, 50) + [missing], desired: 3),
        Case(name: "scale up: a missing metric counts as 0", current: 4, samples: ready(200, 200, 200) + [missing], desired: 6),
        Case(name: "scale up: pending pods count as 0 and can cancel it", current: 4, samples: ready(200, 200) + [unready, unready], desired: 4),
        Case(name: "scale up: pending pods dampen it", current: 4, samples: ready(400, 400) + [unready, unready], desired: 8),
        Case(name: "scale down: pending pods are set aside", current: 4, samples: ready(50, 50) + [unready, unready], desired: 1),
        Case(name: "filling in turns a scale-down into no change", current: 2, samples: ready(80) + [missing, missing], desired: 2),
        Case(name: "no metric at all: no decision", current: 3, samples: [missing, unready, missing], desired: nil),
        Case(name: "a running pod without a metric counts as the target on scale-down", current: 4, samples: ready(50, 50) + [missing, missing], desired: 3),
        Case(name: "zero load scales to the least the math allows", current: 5, samples: ready(0, 0, 0, 0, 0), desired: 0),
    ]

    @Test("Desired replicas", arguments: cases)
    func desired(_ testCase: Case) {
        #expect(ReplicaCalculator.desiredReplicas(currentReplicas: testCase.current, samples: testCase.samples, target: 100) == testCase.desired)
    }

    @Test("A custom tolerance")
    func tolerance() {
        #expect(ReplicaCalculator.desiredReplicas(currentReplicas: 4, samples: Self.ready(130, 130, 130, 130), target: 100, tolerance: 0.5) == 4)
        #expect(ReplicaCalculator.desiredReplicas(currentReplicas: 4, samples: Self.ready(130, 130, 130, 130), target: 100, tolerance: 0) == 6)
    }
}

@Suite("HPA behaviour: stabilization windows, rate policies, selectPolicy, bounds")
struct ShardAutoscalerTests {
    @Test("Default scale-up: double or +4 per 15 s, whichever is more; changes in the period count")
    func defaultScaleUp() {
        var autoscaler = ShardAutoscaler()
        let first = autoscaler.decide(now: 0, current: 2, desired: 10, minReplicas: 1, maxReplicas: 100)
        #expect(first == ScaleDecision(replicas: 6, stabilized: 10, reason: "ScaleUpLimit"))
        autoscaler.recordScale(now: 0, from: 2, to: 6)
        // Within the same 15 s the period still starts at 2: no further step.
        #expect(autoscaler.decide(now: 5, current: 6, desired: 10, minReplicas: 1, maxReplicas: 100).replicas == 6)
        // After the period: from 6 up to 12 allowed, 10 wanted.
        let later = autoscaler.decide(now: 16, current: 6, desired: 10, minReplicas: 1, maxReplicas: 100)
        #expect(later == ScaleDecision(replicas: 10, stabilized: 10, reason: "DesiredWithinRange"))
    }

    @Test("Default scale-down: the highest recommendation of the last 300 s wins")
    func scaleDownStabilization() {
        var autoscaler = ShardAutoscaler()
        #expect(autoscaler.decide(now: 0, current: 10, desired: 10, minReplicas: 1, maxReplicas: 20).replicas == 10)
        #expect(autoscaler.decide(now: 60, current: 10, desired: 2, minReplicas: 1, maxReplicas: 20) == ScaleDecision(replicas: 10, stabilized: 10, reason: "DesiredWithinRange"))
        #expect(autoscaler.decide(now: 200, current: 10, desired: 4, minReplicas: 1, maxReplicas: 20).replicas == 10)
        // t=0's 10 has left the window; the highest left is 4 (t=200).
        #expect(autoscaler.decide(now: 301, current: 10, desired: 2, minReplicas: 1, maxReplicas: 20).replicas == 4)
        #expect(autoscaler.decide(now: 501, current: 4, desired: 2, minReplicas: 1, maxReplicas: 20).replicas == 2)
    }

    @Test("A scale-up window takes the lowest recommendation within it")
    func scaleUpStabilization() {
        var autoscaler = ShardAutoscaler(scaleUp: ScalingRules(stabilizationWindowSeconds: 60, policies: ScalingRules.defaultScaleUp.policies))
        #expect(autoscaler.decide(now: 0, current: 2, desired: 2, minReplicas: 1, maxReplicas: 20).replicas == 2)
        #expect(autoscaler.decide(now: 10, current: 2, desired: 8, minReplicas: 1, maxReplicas: 20).replicas == 2)
        #expect(autoscaler.decide(now: 61, current: 2, desired: 8, minReplicas: 1, maxReplicas: 20).replicas == 6)  // 8 stabilized, +4 pods per 15 s
    }

    @Test("The documentation's scale-down policies: 4 pods or 10 % per 60 s", arguments: [
        (ScalingRules.SelectPolicy.max, 72, 72, 64), (.min, 76, 76, 72),
    ])
    func policies(select: ScalingRules.SelectPolicy, first: Int, withinPeriod: Int, nextPeriod: Int) {
        let rules = ScalingRules(stabilizationWindowSeconds: 0, selectPolicy: select, policies: [
            .init(type: .pods, value: 4, periodSeconds: 60), .init(type: .percent, value: 10, periodSeconds: 60),
        ])
        var autoscaler = ShardAutoscaler(scaleDown: rules)
        let step = autoscaler.decide(now: 0, current: 80, desired: 10, minReplicas: 1, maxReplicas: 100)
        #expect(step == ScaleDecision(replicas: first, stabilized: 10, reason: "ScaleDownLimit"))
        autoscaler.recordScale(now: 0, from: 80, to: first)
        #expect(autoscaler.decide(now: 30, current: first, desired: 10, minReplicas: 1, maxReplicas: 100).replicas == withinPeriod)
        #expect(autoscaler.decide(now: 61, current: first, desired: 10, minReplicas: 1, maxReplicas: 100).replicas == nextPeriod)
    }

    @Test("Disabled: no scaling in that direction")
    func disabled() {
        var autoscaler = ShardAutoscaler(scaleDown: ScalingRules(stabilizationWindowSeconds: 0, selectPolicy: .disabled, policies: []))
        #expect(autoscaler.decide(now: 0, current: 5, desired: 1, minReplicas: 1, maxReplicas: 10).replicas == 5)
        #expect(autoscaler.decide(now: 1, current: 5, desired: 9, minReplicas: 1, maxReplicas: 10).replicas == 9)
    }

    @Test("Bounds: TooManyReplicas and TooFewReplicas")
    func bounds() {
        var autoscaler = ShardAutoscaler(scaleDown: ScalingRules(stabilizationWindowSeconds: 0, policies: ScalingRules.defaultScaleDown.policies))
        #expect(autoscaler.decide(now: 0, current: 10, desired: 50, minReplicas: 1, maxReplicas: 20) == ScaleDecision(replicas: 20, stabilized: 50, reason: "TooManyReplicas"))
        #expect(autoscaler.decide(now: 100, current: 3, desired: 0, minReplicas: 1, maxReplicas: 20) == ScaleDecision(replicas: 1, stabilized: 0, reason: "TooFewReplicas"))
        // A count outside the bounds (a spec edit of min/max) is corrected first, whatever the rate limits say.
        let slow = ScalingRules(stabilizationWindowSeconds: 0, policies: [.init(type: .pods, value: 1, periodSeconds: 60)])
        var limited = ShardAutoscaler(scaleUp: slow, scaleDown: slow)
        #expect(limited.decide(now: 0, current: 20, desired: 12, minReplicas: 1, maxReplicas: 10).replicas == 10)
        #expect(limited.decide(now: 0, current: 1, desired: 2, minReplicas: 10, maxReplicas: 20).replicas == 10)
        #expect(limited.decide(now: 0, current: 0, desired: 4, minReplicas: 1, maxReplicas: 20) == ScaleDecision(replicas: 0, stabilized: 0, reason: "ScalingDisabled"))
    }

    @Test("A fresh autoscaler (a restarted controller) holds the current count through the scale-down window")
    func restart() {
        var autoscaler = ShardAutoscaler()
        #expect(autoscaler.decide(now: 1000, current: 10, desired: 2, minReplicas: 1, maxReplicas: 20).replicas == 10)
        #expect(autoscaler.decide(now: 1301, current: 10, desired: 2, minReplicas: 1, maxReplicas: 20).replicas == 2)
    }
}
