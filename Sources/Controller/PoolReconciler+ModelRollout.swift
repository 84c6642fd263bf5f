import JSON
import Kube

/// A change of `spec.model` in the reconcile: gathers what `ModelRollout.step` needs from the
/// stores and the scraped loads.
extension PoolReconciler {
    /// The revision of `spec.model` to run now, and the older revisions still serving.
    /// `plan` is the shards the current revision runs.
    func modelRollout(pool: KubeObject, spec: ExpertPoolSpec, plan: ShardPlan, previous: ModelRolloutStatus?) -> ModelRollout.Outcome {
        let name = pool.name ?? ""
        let namespace = pool.namespace ?? "default"
        let fingerprint = String(Self.hash(spec.model.specJSON).prefix(16))
        let revision = previous?.revision ?? 0

        // What the current revision serves, as the workers' plan says: each shard named as the
        // revision names its Deployments, whose Deployment exists. By name, so that a reconcile
        // that still reads the status before this change (the cache lags our write) retires the
        // same shards again rather than the new revision's.
        var serving: [RetiringShard] = []
        if let text = configMaps.get(namespace: namespace, name: PoolLabels.planConfigMap(pool: name))?.json[path: ["data", "plan.json"]]?.string,
           let document = try? ShardPlanDocument(json: try JSONValue.parse(text)) {
            serving = document.shards.filter {
                $0.deployment == PoolLabels.deployment(pool: name, shard: $0.name, modelRevision: revision) && deployments.get(namespace: namespace, name: $0.deployment) != nil
            }.map { RetiringShard(name: $0.name, deployment: $0.deployment, experts: $0.experts) }
        }
        let newServing = !plan.shards.isEmpty && plan.shards.allSatisfy { serves(pool: pool, shard: $0.name, modelRevision: revision) }
        var uses: [Int: [ModelRollout.PodUse]] = [:]
        for old in previous?.retiring ?? [] {
            uses[old.revision] = old.shards.flatMap { podsOf(pool: pool, shard: $0.name, modelRevision: old.revision) }.map { pod in
                ModelRollout.PodUse(ready: PodView(pod).isReady, clients: pod.uid.flatMap(loads.clients(of:)))
            }
        }
        let outcome = ModelRollout.step(previous: previous, fingerprint: fingerprint, path: spec.model.path, serving: serving,
                                        newRevisionServing: newServing, pods: uses, now: Self.timestamp())
        if outcome.status.revision != revision {
            // What was measured of the old revision's pods says nothing about the new ones.
            lock.withLock { placementWindows[pool.uid ?? pool.key] = nil }
        }
        return outcome
    }

    /// The model revision a pod serves, from its label (none: revision 0).
    static func modelRevision(of pod: KubeObject) -> Int { pod.labels[PoolLabels.modelRevision].flatMap { Int($0) } ?? 0 }
}
