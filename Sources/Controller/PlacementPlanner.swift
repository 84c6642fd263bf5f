/// Load-aware placement, as DeepSeek's EPLB does it, in pure functions: how many replicas each
/// expert's load earns, how experts are grouped into shards (a shard is one Deployment, scaled on
/// its own), and whether a new grouping is worth a rollout. Loads are tokens per second per expert
/// index, summed over the MoE layers, because a shard serves its experts in every layer.
public enum PlacementPlanner {
    /// One shard of a plan: its experts, the replicas their load earns, and that load.
    public struct PlannedShard: Sendable, Equatable {
        public var experts: [Int]
        public var replicas: Int
        public var load: Double
        public init(experts: [Int], replicas: Int, load: Double) {
            self.experts = experts
            self.replicas = replicas
            self.load = load
        }
    }

    /// Replicas per expert (EPLB's replication step): every expert gets one; each further slot
    /// goes to the expert whose load per replica is highest now. Ties go to the lower index.
    public static func replicas(loads: [Double], slots: Int) -> [Int] {
        var replicas = [Int](repeating: 1, count: loads.count)
        guard slots > loads.count else { return replicas }
        for _ in loads.count..<slots {
            var best = 0
            for expert in loads.indices where loads[expert] / Double(replicas[expert]) > loads[best] / Double(replicas[best]) {
                best = expert
            }
            replicas[best] += 1
        }
        return replicas
    }

    /// The slots a load needs at `target` tokens/s per replica: each expert at least one, and
    /// `ceil(load / target)` for those that need more.
    public static func slots(loads: [Double], target: Double) -> Int {
        loads.reduce(0) { $0 + max(1, Int((($1 / target) - 1e-9).rounded(.up))) }
    }

    /// Groups experts into shards: an expert that earned more than one replica gets a shard of its
    /// own (so scaling a hot expert never scales cold neighbours with it, and two hot experts scale
    /// apart); the others share shards of at most `maxExpertsPerShard` (the per-pod memory cap), as
    /// few as that allows, filled heaviest first into the lightest shard with room. Shards come out
    /// with the most replicas first, then by their first expert.
    public static func pack(loads: [Double], replicas: [Int], maxExpertsPerShard: Int) -> [PlannedShard] {
        precondition(loads.count == replicas.count && maxExpertsPerShard >= 1)
        let hot = loads.indices.filter { replicas[$0] > 1 }
            .map { PlannedShard(experts: [$0], replicas: replicas[$0], load: loads[$0]) }
            .sorted { $0.replicas != $1.replicas ? $0.replicas > $1.replicas : $0.experts[0] < $1.experts[0] }
        let cold = loads.indices.filter { replicas[$0] <= 1 }.sorted { loads[$0] != loads[$1] ? loads[$0] > loads[$1] : $0 < $1 }
        var group = [PlannedShard](repeating: PlannedShard(experts: [], replicas: 1, load: 0),
                                   count: (cold.count + maxExpertsPerShard - 1) / maxExpertsPerShard)
        for expert in cold {
            var lightest = -1
            for index in group.indices where group[index].experts.count < maxExpertsPerShard {
                if lightest < 0 || group[index].load < group[lightest].load { lightest = index }
            }
            group[lightest].experts.append(expert)
            group[lightest].load += loads[expert]
        }
        for index in group.indices { group[index].experts.sort() }
        return hot + group.sorted { $0.experts[0] < $1.experts[0] }
    }

    /// The whole plan for `loads` at `target` per replica.
    public static func plan(loads: [Double], target: Double, maxExpertsPerShard: Int) -> [PlannedShard] {
        pack(loads: loads, replicas: replicas(loads: loads, slots: slots(loads: loads, target: target)), maxExpertsPerShard: maxExpertsPerShard)
    }

    /// The load of each group of experts.
    public static func shardLoads(_ groups: [[Int]], loads: [Double]) -> [Double] {
        groups.map { $0.reduce(0) { $0 + (loads.indices.contains($1) ? loads[$1] : 0) } }
    }

    /// The replicas the autoscaler gives a shard of this load at `target` per replica, within bounds.
    public static func replicas(load: Double, target: Double, bounds: ClosedRange<Int>) -> Int {
        min(bounds.upperBound, max(bounds.lowerBound, Int(((load / target) - 1e-9).rounded(.up))))
    }

    /// The highest load per replica once each shard runs the replicas the autoscaler gives it
    /// (`replicas(load:target:bounds:)`): above `target` where a shard is held at its maximum —
    /// the busiest pod, and what a grouping that puts hot experts together cannot escape.
    public static func peakLoadPerReplica(shardLoads: [Double], target: Double, bounds: ClosedRange<Int>) -> Double {
        shardLoads.map { $0 / Double(replicas(load: $0, target: target, bounds: bounds)) }.max() ?? 0
    }

    /// Peak load per replica over the mean per replica (1 is perfect balance), replicas as the
    /// autoscaler gives them.
    public static func imbalance(shardLoads: [Double], target: Double, bounds: ClosedRange<Int>) -> Double {
        let total = shardLoads.reduce(0, +)
        let pods = shardLoads.reduce(0) { $0 + replicas(load: $1, target: target, bounds: bounds) }
        guard total > 0, pods > 0 else { return 1 }
        return peakLoadPerReplica(shardLoads: shardLoads, target: target, bounds: bounds) / (total / Double(pods))
    }

    /// Whether to roll out a new grouping, and why (or why not): only when it lowers the peak load
    /// per replica (each shard at the replicas its autoscaler would give it) by at least
    /// `minImprovement` (a fraction), and not sooner than `minInterval` seconds after the last change.
    public struct Decision: Sendable, Equatable {
        public var replan: Bool
        public var reason: String
        public var currentPeak: Double
        public var proposedPeak: Double
    }

    public static func decide(current: [[Int]], proposed: [[Int]], loads: [Double], target: Double, bounds: ClosedRange<Int>,
                              minImprovement: Double, secondsSinceChange: Double?, minInterval: Double) -> Decision {
        let currentPeak = peakLoadPerReplica(shardLoads: shardLoads(current, loads: loads), target: target, bounds: bounds)
        let proposedPeak = peakLoadPerReplica(shardLoads: shardLoads(proposed, loads: loads), target: target, bounds: bounds)
        func decision(_ replan: Bool, _ reason: String) -> Decision {
            Decision(replan: replan, reason: reason, currentPeak: currentPeak, proposedPeak: proposedPeak)
        }
        let normalized = { (groups: [[Int]]) in Set(groups.map { $0.sorted() }) }
        if normalized(current) == normalized(proposed) { return decision(false, "the plan for this load is the one running") }
        guard currentPeak > 0 else { return decision(false, "no load measured yet") }
        let gain = (currentPeak - proposedPeak) / currentPeak
        let numbers = String(format: "peak load per replica %.1f → %.1f (%.0f%% lower", currentPeak, proposedPeak, gain * 100)
        guard gain >= minImprovement else {
            return decision(false, numbers + String(format: ", below the %.0f%% that warrants a rollout)", minImprovement * 100))
        }
        if let secondsSinceChange, secondsSinceChange < minInterval {
            return decision(false, numbers + String(format: "), but the plan changed %.0f s ago (minIntervalSeconds %.0f)", secondsSinceChange, minInterval))
        }
        return decision(true, numbers + ")")
    }
}
