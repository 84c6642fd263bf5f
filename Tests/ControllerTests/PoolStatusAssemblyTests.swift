import Testing
@testable import Controller

/// The pool's status from what one reconcile observed: totals and conditions, a pure function.
@Suite("Pool status assembly")
struct PoolStatusAssemblyTests {
    static func shard(_ name: String, replicas: Int, ready: Int, desired: Int, load: Double = 0) -> ShardStatus {
        var shard = ShardStatus()
        shard.name = name
        shard.experts = "0-1"
        shard.replicas = replicas
        shard.readyReplicas = ready
        shard.desiredReplicas = desired
        shard.load = load
        return shard
    }

    static let agree = ModelAgreement.Verdict(status: .true, reason: "OneModel", message: "every ready pod serves one checkpoint")

    static func observation(_ shards: [ShardStatus], progressing: [String] = [], draining: String? = nil,
                            limited: [(shard: String, decision: ScaleDecision)] = []) -> PoolObservation {
        PoolObservation(pool: "tiny", generation: 4, shards: shards, progressing: progressing, modelDraining: draining, models: agree, limited: limited)
    }

    @Test("Totals sum the shards; the selector names the pool; shardReplicas is the smallest shard")
    func totals() {
        let status = ExpertPoolStatus().assembled(from: Self.observation([
            Self.shard("s0", replicas: 3, ready: 2, desired: 3, load: 250.04), Self.shard("s1", replicas: 1, ready: 1, desired: 2, load: 99.98),
        ]), now: "t1")
        #expect(status.observedGeneration == 4 && status.shardCount == 2)
        #expect(status.replicas == 4 && status.readyReplicas == 3 && status.desiredReplicas == 5 && status.shardReplicas == 1)
        #expect(status.load == 350.0)
        #expect(status.selector == "\(PoolLabels.pool)=tiny")
        #expect(status.conditions.allSatisfy { $0.observedGeneration == 4 && $0.lastTransitionTime == "t1" })
    }

    @Test("Conditions from what was observed", arguments: [
        // (shards (replicas, ready, desired), progressing, model draining, limited) → (Ready, Progressing, ScalingLimited) reasons
        ([(1, 1, 1), (2, 2, 2)], [String](), String?.none, false, ["AllShardsServing", "UpToDate", "DesiredWithinRange"]),
        ([(1, 0, 1), (2, 2, 2)], ["s0"], nil, false, ["ShardsUnavailable", "RollingOut", "DesiredWithinRange"]),
        ([(1, 1, 1), (1, 1, 1)], [], "revision 1 serves; waiting for workers to move (2 on revision 0)", false, ["AllShardsServing", "ModelRollingOut", "DesiredWithinRange"]),
        // A shard behind wins over a model still draining.
        ([(1, 1, 2), (1, 1, 1)], ["s0"], "revision 1 serves", true, ["AllShardsServing", "RollingOut", "TooManyReplicas"]),
    ] as [([(Int, Int, Int)], [String], String?, Bool, [String])])
    func conditions(shards: [(Int, Int, Int)], progressing: [String], draining: String?, limited: Bool, reasons: [String]) {
        let statuses = shards.enumerated().map { index, counts in Self.shard("s\(index)", replicas: counts.0, ready: counts.1, desired: counts.2) }
        let held: [(shard: String, decision: ScaleDecision)] = limited ? [("s0", ScaleDecision(replicas: 3, stabilized: 5, reason: "TooManyReplicas"))] : []
        let status = ExpertPoolStatus().assembled(from: Self.observation(statuses, progressing: progressing, draining: draining, limited: held), now: "t")
        #expect([status.condition("Ready"), status.condition("Progressing"), status.condition("ScalingLimited")].map { $0?.reason } == reasons)
        #expect(status.condition("Ready")?.status == (reasons[0] == "AllShardsServing" ? .true : .false))
        #expect(status.condition("Progressing")?.status == (reasons[1] == "UpToDate" ? .false : .true))
        #expect(status.condition("Degraded")?.status == .false && status.condition("ModelsAgree")?.reason == "OneModel")
        if let draining, progressing.isEmpty { #expect(status.condition("Progressing")?.message == draining) }
        if limited { #expect(status.condition("ScalingLimited")?.message == "shard s0: recommended 5, held at 3") }
        if reasons[0] == "ShardsUnavailable" { #expect(status.condition("Ready")?.message == "no ready pod in shard s0") }
    }

    @Test("A condition keeps its transition time while its status holds, and takes the new time when it changes")
    func transitionTimes() {
        let serving = [Self.shard("s0", replicas: 1, ready: 1, desired: 1)]
        let first = ExpertPoolStatus().assembled(from: Self.observation(serving), now: "t1")
        let same = first.assembled(from: Self.observation(serving), now: "t2")
        #expect(same.condition("Ready")?.lastTransitionTime == "t1")
        let down = same.assembled(from: Self.observation([Self.shard("s0", replicas: 1, ready: 0, desired: 1)]), now: "t3")
        #expect(down.condition("Ready")?.lastTransitionTime == "t3" && down.condition("Ready")?.status == .false)
        #expect(down.condition("Degraded")?.lastTransitionTime == "t1")
        // Fields the reconcile sets elsewhere (the rollouts) are left as they were.
        var withModel = ExpertPoolStatus()
        withModel.model = ModelRolloutStatus()
        withModel.model?.revision = 2
        #expect(withModel.assembled(from: Self.observation(serving), now: "t").model?.revision == 2)
    }

    @Test("Limited shards beyond the first are counted in the message")
    func severalLimited() {
        let decision = ScaleDecision(replicas: 1, stabilized: 0, reason: "TooFewReplicas")
        let status = ExpertPoolStatus().assembled(from: Self.observation([Self.shard("s0", replicas: 1, ready: 1, desired: 1)],
                                                                         limited: [("s0", decision), ("s1", decision), ("s2", decision)]), now: "t")
        #expect(status.condition("ScalingLimited")?.message == "shard s0: recommended 0, held at 1 (and 2 more shards)")
    }
}
