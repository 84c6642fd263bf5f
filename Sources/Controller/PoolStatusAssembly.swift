/// What one reconcile found for a pool, from which its status is assembled.
struct PoolObservation: Sendable {
    /// The pool's name (its pods' selector).
    var pool: String
    /// The spec generation reconciled.
    var generation: Int
    /// Each shard of the plan: experts, observed, ready and desired replicas, load.
    var shards: [ShardStatus]
    /// Shards not yet at the current spec and their desired replicas.
    var progressing: [String] = []
    /// Older model revisions still draining, and why (`ModelRolloutStatus.reason`).
    var modelDraining: String?
    /// Whether the serving pods agree on their checkpoint.
    var models: ModelAgreement.Verdict
    /// Shards whose recommendation was held by bounds or rate limits, with the decision.
    var limited: [(shard: String, decision: ScaleDecision)] = []
}

extension ExpertPoolStatus {
    /// `self` with the totals, selector and the Ready, Progressing, Degraded, ModelsAgree and
    /// ScalingLimited conditions that `observed` gives. A condition keeps its
    /// `lastTransitionTime` unless its status changes, when it becomes `now`. Pure: the
    /// reconcile publishes what this returns.
    func assembled(from observed: PoolObservation, now: String) -> ExpertPoolStatus {
        var status = self
        let shards = observed.shards, generation = observed.generation
        func condition(_ type: String, _ value: ConditionStatus, _ reason: String, _ message: String) -> PoolCondition {
            PoolCondition(type: type, status: value, reason: reason, message: message, observedGeneration: generation)
        }
        func plural(_ count: Int) -> String { count == 1 ? "" : "s" }
        status.observedGeneration = generation
        status.shards = shards
        status.shardCount = shards.count
        status.replicas = shards.reduce(0) { $0 + $1.replicas }
        status.shardReplicas = shards.map(\.replicas).min() ?? 0
        status.readyReplicas = shards.reduce(0) { $0 + $1.readyReplicas }
        status.desiredReplicas = shards.reduce(0) { $0 + $1.desiredReplicas }
        status.load = (shards.reduce(0) { $0 + $1.load } * 10).rounded() / 10
        status.selector = "\(PoolLabels.pool)=\(observed.pool)"

        let unserved = shards.filter { $0.readyReplicas == 0 }.map(\.name)
        status.conditions.set(unserved.isEmpty
            ? condition("Ready", .true, "AllShardsServing", "\(shards.count) shard\(plural(shards.count)), \(status.readyReplicas) ready pods")
            : condition("Ready", .false, "ShardsUnavailable", "no ready pod in shard\(plural(unserved.count)) \(PoolReconciler.list(unserved))"), now: now)
        let progressing = observed.progressing
        status.conditions.set(!progressing.isEmpty
            ? condition("Progressing", .true, "RollingOut", "shard\(plural(progressing.count)) \(PoolReconciler.list(progressing)) not yet at the current spec and desired replicas")
            : observed.modelDraining.map { condition("Progressing", .true, "ModelRollingOut", $0) }
            ?? condition("Progressing", .false, "UpToDate", "every shard runs the current spec at its desired replicas"), now: now)
        status.conditions.set(condition("Degraded", .false, "AsExpected", "the spec is valid and its Secret exists"), now: now)
        status.conditions.set(condition("ModelsAgree", observed.models.status, observed.models.reason, observed.models.message), now: now)
        if let (shard, decision) = observed.limited.first {
            let more = observed.limited.count > 1 ? " (and \(observed.limited.count - 1) more shards)" : ""
            status.conditions.set(condition("ScalingLimited", .true, decision.reason, "shard \(shard): recommended \(decision.stabilized), held at \(decision.replicas)" + more), now: now)
        } else {
            status.conditions.set(condition("ScalingLimited", .false, "DesiredWithinRange", "every shard's recommendation is within its bounds and rate limits"), now: now)
        }
        return status
    }
}
