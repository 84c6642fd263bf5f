import Foundation
import Kube
import MoE

/// Load-aware placement in the reconcile: which grouping serves, and when a new one rolls out.
/// Make-before-break: a new grouping's shards come up beside the old ones (both are in the shard
/// plan the workers read, so an expert has pods of each), and the old shards are removed only
/// once every new shard has a ready pod; their pods then drain (preStop) as in any scale-down.
extension PoolReconciler {
    struct PlacementOutcome {
        /// The shards to run: the grouping's, then the retiring ones.
        var plan: ShardPlan
        /// Shards of the previous grouping, held at their replicas until the new one is ready.
        var retiring: Set<String>
        /// Replicas each new shard starts at (its planned count).
        var initialReplicas: [String: Int]
        var status: PlacementStatus
        var event: (reason: String, message: String)?
    }

    /// The grouping for `pool` now. `staticPlan` is spec.shards, the grouping of revision 0.
    func placement(pool: KubeObject, spec: ExpertPoolSpec, staticPlan: ShardPlan, previous: PlacementStatus?, modelRevision: Int) -> PlacementOutcome {
        let experts = spec.model.experts
        var status = previous ?? PlacementStatus()
        var event: (reason: String, message: String)?
        // A grouping that no longer covers the model's experts (spec.model changed) starts over.
        if status.shards.isEmpty || status.shards.flatMap(\.experts).sorted() != Array(0..<experts) {
            status = PlacementStatus()
            status.shards = staticPlan.shards.map { PlacedShard(name: $0.name, experts: $0.experts, replicas: spec.replicas.min) }
            status.reason = "revision 0: the grouping spec.shards gives"
        }
        let rates = windowedRates(pool: pool, spec: spec, shards: status.shards + status.retiring, modelRevision: modelRevision)
        let bounds = spec.replicas.min...max(spec.replicas.min, spec.replicas.max)
        let target = spec.autoscaling.target
        status.imbalance = (PlacementPlanner.imbalance(shardLoads: PlacementPlanner.shardLoads(status.shards.map(\.experts), loads: rates),
                                                       target: target, bounds: bounds) * 100).rounded() / 100

        if !status.retiring.isEmpty {
            // The old grouping goes once every shard of the new one serves: has a ready pod that
            // was scraped twice while ready, so workers (which watch EndpointSlices) have had a
            // scrape interval to see and verify it.
            let waiting = status.shards.filter { !serves(pool: pool, shard: $0.name, modelRevision: modelRevision) }
            if waiting.isEmpty {
                event = ("PlacementRolledOut", "revision \(status.revision) serving; removing the \(status.retiring.count) shards of the previous grouping")
                status.retiring = []
                // What was measured while pods came and went says little about the new grouping.
                lock.withLock { placementWindows[pool.uid ?? pool.key] = ExpertLoadWindow() }
            }
        } else if lock.withLock({ placementWindows[pool.uid ?? pool.key]?.span ?? 0 }) >= Double(spec.placement.windowSeconds) / 2 {
            // Planned only from a window at least half full.
            let proposed = PlacementPlanner.plan(loads: rates, target: target, maxExpertsPerShard: spec.placement.maxExpertsPerShard)
            let since = Self.secondsSince(status.lastChangeTime)
            let decision = PlacementPlanner.decide(current: status.shards.map(\.experts), proposed: proposed.map(\.experts), loads: rates,
                                                   target: target, bounds: bounds, minImprovement: spec.placement.minImprovement,
                                                   secondsSinceChange: since, minInterval: Double(spec.placement.minIntervalSeconds))
            if decision.replan {
                let revision = status.revision + 1
                status.retiring = status.shards
                status.shards = proposed.enumerated().map { index, shard in
                    PlacedShard(name: "r\(revision)-\(index)", experts: shard.experts, replicas: min(spec.replicas.max, max(spec.replicas.min, shard.replicas)))
                }
                status.revision = revision
                status.lastChangeTime = Self.timestamp()
                status.reason = "revision \(revision): " + decision.reason
                event = ("Replanned", status.reason + "; new shards " + status.shards.map { "\($0.name)=\(IntegerRanges.format($0.experts))×\($0.replicas)" }.joined(separator: " "))
            }
        }
        var initial: [String: Int] = [:]
        for shard in status.shards { initial[shard.name] = shard.replicas }
        let shards = (status.shards + status.retiring).map { ShardPlan.Shard(name: $0.name, experts: $0.experts) }
        return PlacementOutcome(plan: ShardPlan(shards: shards), retiring: Set(status.retiring.map(\.name)), initialReplicas: initial,
                                status: status, event: event)
    }

    /// Each expert's token rate over the window, from the ready pods of every shard serving.
    private func windowedRates(pool: KubeObject, spec: ExpertPoolSpec, shards: [PlacedShard], modelRevision: Int) -> [Double] {
        var rates = [Double](repeating: 0, count: spec.model.experts)
        // A sample only when every ready pod has a rate: a pod just started (one reading, no rate
        // yet) would make its experts look colder than they are.
        var measured = true
        var any = false
        for shard in shards {
            for pod in podsOf(pool: pool, shard: shard.name, modelRevision: modelRevision) where PodView(pod).isReady {
                guard let load = pod.uid.flatMap(loads.load(of:)) else {
                    measured = false
                    continue
                }
                any = true
                for (expert, rate) in load.expertTokensPerSecond where rates.indices.contains(expert) { rates[expert] += rate }
            }
        }
        measured = measured && any
        let key = pool.uid ?? pool.key
        return lock.withLock {
            var window = placementWindows[key] ?? ExpertLoadWindow()
            if measured { window.add(at: now, rates: rates, seconds: Double(spec.placement.windowSeconds)) }
            placementWindows[key] = window
            return window.mean(experts: spec.model.experts)
        }
    }

    static func secondsSince(_ timestamp: String) -> Double? {
        guard !timestamp.isEmpty else { return nil }
        let formatter = ISO8601DateFormatter()
        formatter.formatOptions = [.withInternetDateTime]
        return formatter.date(from: timestamp).map { Date().timeIntervalSince($0) }
    }
}
