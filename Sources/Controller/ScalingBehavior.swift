/// The HPA's `behavior` (autoscaling/v2 `HPAScalingRules`) for one direction: how long a
/// recommendation is stabilized, and how fast replicas may change.
public struct ScalingRules: Sendable, Equatable {
    /// One rate limit: at most `value` pods, or `value` percent, per `periodSeconds`.
    public struct Policy: Sendable, Equatable {
        public enum Kind: String, Sendable, CaseIterable { case pods = "Pods", percent = "Percent" }
        public var type: Kind
        public var value: Int
        public var periodSeconds: Int
        public init(type: Kind, value: Int, periodSeconds: Int) {
            self.type = type
            self.value = value
            self.periodSeconds = periodSeconds
        }
    }
    /// Which policy wins when several apply: the largest change, the smallest, or none at all.
    public enum SelectPolicy: String, Sendable, CaseIterable { case max = "Max", min = "Min", disabled = "Disabled" }

    public var stabilizationWindowSeconds: Int
    public var selectPolicy: SelectPolicy
    public var policies: [Policy]

    public init(stabilizationWindowSeconds: Int, selectPolicy: SelectPolicy = .max, policies: [Policy]) {
        self.stabilizationWindowSeconds = stabilizationWindowSeconds
        self.selectPolicy = selectPolicy
        self.policies = policies
    }

    /// The HPA's default for scaling up: no stabilization; double, or add 4 pods, per 15 s, whichever is more.
    public static let defaultScaleUp = ScalingRules(stabilizationWindowSeconds: 0, selectPolicy: .max, policies: [
        Policy(type: .percent, value: 100, periodSeconds: 15), Policy(type: .pods, value: 4, periodSeconds: 15),
    ])
    /// The HPA's default for scaling down: the highest recommendation of the last 300 s; any amount per 15 s.
    public static let defaultScaleDown = ScalingRules(stabilizationWindowSeconds: 300, selectPolicy: .max, policies: [
        Policy(type: .percent, value: 100, periodSeconds: 15),
    ])
}

/// What the autoscaler decided for one shard, with the HPA's reasons.
public struct ScaleDecision: Sendable, Equatable {
    public var replicas: Int
    /// The recommendation after stabilization, before rate limits and bounds.
    public var stabilized: Int
    /// `DesiredWithinRange`, `ScaleUpLimit`, `ScaleDownLimit`, `TooManyReplicas` or `TooFewReplicas`
    /// (the HPA's ScalingLimited reasons).
    public var reason: String
    /// Whether rate limits or bounds changed the recommendation (the ScalingLimited condition).
    public var limited: Bool { reason != "DesiredWithinRange" }

    public init(replicas: Int, stabilized: Int, reason: String) {
        self.replicas = replicas
        self.stabilized = stabilized
        self.reason = reason
    }
}

/// The HPA's `normalizeDesiredReplicasWithBehaviors` for one shard, as a value type that keeps
/// its recommendation history and scale events. Time is seconds on any monotonic clock.
/// The defaults are an HPA whose `behavior` spells out Kubernetes' defaults (an HPA with no
/// `behavior` at all takes an older path: 300 s scale-down window, at most max(2×, 4) up per sync).
/// Scale events expire after the longest policy period of both directions together (Kubernetes
/// overwrites outdated ones per direction), which can only make a limit count fewer old changes.
public struct ShardAutoscaler: Sendable, Equatable {
    public var scaleUp: ScalingRules
    public var scaleDown: ScalingRules
    private var recommendations: [(at: Double, replicas: Int)] = []
    private var scaleUpEvents: [(at: Double, change: Int)] = []
    private var scaleDownEvents: [(at: Double, change: Int)] = []

    public init(scaleUp: ScalingRules = .defaultScaleUp, scaleDown: ScalingRules = .defaultScaleDown) {
        self.scaleUp = scaleUp
        self.scaleDown = scaleDown
    }

    public static func == (a: ShardAutoscaler, b: ShardAutoscaler) -> Bool {
        a.scaleUp == b.scaleUp && a.scaleDown == b.scaleDown
            && a.recommendations.elementsEqual(b.recommendations, by: { $0.at == $1.at && $0.replicas == $1.replicas })
            && a.scaleUpEvents.elementsEqual(b.scaleUpEvents, by: { $0.at == $1.at && $0.change == $1.change })
            && a.scaleDownEvents.elementsEqual(b.scaleDownEvents, by: { $0.at == $1.at && $0.change == $1.change })
    }

    /// Turns the calculator's `desired` into the replicas to set now: stabilized over the windows,
    /// limited by the rate policies (counting changes made within each policy's period), and
    /// clamped to `[minReplicas, maxReplicas]`. Records `desired` in the history.
    public mutating func decide(now: Double, current: Int, desired: Int, minReplicas: Int, maxReplicas: Int) -> ScaleDecision {
        // As the HPA: out-of-bounds counts are corrected first, without looking at the metrics.
        if current == 0 && minReplicas > 0 { return ScaleDecision(replicas: 0, stabilized: 0, reason: "ScalingDisabled") }
        if current > maxReplicas { return ScaleDecision(replicas: maxReplicas, stabilized: desired, reason: "TooManyReplicas") }
        if current < minReplicas { return ScaleDecision(replicas: minReplicas, stabilized: desired, reason: "TooFewReplicas") }
        // A fresh autoscaler (a restarted controller) remembers the current count, so that the
        // scale-down window holds the shard rather than letting it drop at once.
        if recommendations.isEmpty { recommendations.append((now, current)) }
        let stabilized = stabilize(now: now, current: current, desired: desired)
        let (replicas, reason) = limitRate(now: now, current: current, desired: stabilized, minReplicas: minReplicas, maxReplicas: maxReplicas)
        return ScaleDecision(replicas: replicas, stabilized: stabilized, reason: reason)
    }

    /// Records that the shard was scaled from `from` to `to` at `now` (for the rate policies).
    public mutating func recordScale(now: Double, from: Int, to: Int) {
        let longest = Double((scaleUp.policies + scaleDown.policies).map(\.periodSeconds).max() ?? 0)
        scaleUpEvents.removeAll { $0.at <= now - longest }
        scaleDownEvents.removeAll { $0.at <= now - longest }
        if to > from { scaleUpEvents.append((now, to - from)) }
        if to < from { scaleDownEvents.append((now, from - to)) }
    }

    /// The lowest recommendation of the scale-up window bounds from below, the highest of the
    /// scale-down window from above; the current count is moved only as far as both allow.
    private mutating func stabilize(now: Double, current: Int, desired: Int) -> Int {
        let upCutoff = now - Double(scaleUp.stabilizationWindowSeconds)
        let downCutoff = now - Double(scaleDown.stabilizationWindowSeconds)
        var up = desired, down = desired
        for recommendation in recommendations {
            if recommendation.at > upCutoff { up = min(up, recommendation.replicas) }
            if recommendation.at > downCutoff { down = max(down, recommendation.replicas) }
        }
        recommendations.removeAll { $0.at <= upCutoff && $0.at <= downCutoff }
        recommendations.append((now, desired))
        var recommendation = current
        if recommendation < up { recommendation = up }
        if recommendation > down { recommendation = down }
        return recommendation
    }

    private func limitRate(now: Double, current: Int, desired: Int, minReplicas: Int, maxReplicas: Int) -> (Int, String) {
        if desired > current {
            let limit = max(current, Self.limit(scalingUp: true, current: current, rules: scaleUp, now: now, up: scaleUpEvents, down: scaleDownEvents))
            let (allowed, reason) = maxReplicas > limit ? (limit, "ScaleUpLimit") : (maxReplicas, "TooManyReplicas")
            if desired > allowed { return (allowed, reason) }
        } else if desired < current {
            let limit = min(current, Self.limit(scalingUp: false, current: current, rules: scaleDown, now: now, up: scaleUpEvents, down: scaleDownEvents))
            let (allowed, reason) = minReplicas < limit ? (limit, "ScaleDownLimit") : (minReplicas, "TooFewReplicas")
            if desired < allowed { return (allowed, reason) }
        }
        return (desired, "DesiredWithinRange")
    }

    static func changes(within period: Int, of events: [(at: Double, change: Int)], now: Double) -> Int {
        events.filter { $0.at > now - Double(period) }.reduce(0) { $0 + $1.change }
    }

    /// The HPA's `calculateScaleUpLimitWithScalingRules` and `calculateScaleDownLimitWithBehaviors`:
    /// per policy, the count at the start of its period (changes within it undone) moved by the
    /// allowed change — percent rounded up when scaling up, down when scaling down, as the HPA does.
    /// Max takes the policy allowing the largest change, Min the smallest; Disabled allows none.
    static func limit(scalingUp: Bool, current: Int, rules: ScalingRules, now: Double, up: [(at: Double, change: Int)],
                      down: [(at: Double, change: Int)]) -> Int {
        if rules.selectPolicy == .disabled || rules.policies.isEmpty { return current }
        let proposals = rules.policies.map { policy -> Int in
            let start = current - changes(within: policy.periodSeconds, of: up, now: now) + changes(within: policy.periodSeconds, of: down, now: now)
            switch (policy.type, scalingUp) {
            case (.pods, true): return start + policy.value
            case (.pods, false): return start - policy.value
            case (.percent, true): return Int((Double(start) * (1 + Double(policy.value) / 100)).rounded(.up))
            case (.percent, false): return Int(Double(start) * (1 - Double(policy.value) / 100))
            }
        }
        let largestChange = scalingUp ? proposals.max()! : proposals.min()!
        let smallestChange = scalingUp ? proposals.min()! : proposals.max()!
        return rules.selectPolicy == .min ? smallestChange : largestChange
    }
}
