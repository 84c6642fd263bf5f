import Foundation
import JSON
import Kube
import Logging

/// How the controller runs, with documented defaults.
public struct ControllerConfiguration: Sendable {
    /// Watch only this namespace (nil: all namespaces).
    public var namespace: String?
    /// Image for pools whose template names none.
    public var expertImage = "ghcr.io/eaas-dev/eaas:0.1.0"
    /// The server-side apply field manager and the `managed-by` label value.
    public var fieldManager = PoolLabels.manager
    /// Reconciles running at once (never two for one pool).
    public var workers = 2
    /// How long one pod's `/metrics` may take.
    public var scrapeTimeout: Duration = .seconds(5)
    /// How often a pool whose Secret was missing (or present) is checked again; Secrets are not watched.
    public var secretRecheck: Duration = .seconds(5)
    /// How often a pool with a rollout in progress is looked at even without events.
    public var progressRecheck: Duration = .seconds(5)
    /// Leader election; nil runs without (one replica only).
    public var leaderElection: LeaderElector.Configuration?
    public init() {}
}

/// Reconciles one `ExpertPool`: reads the pool and its children from the informers' stores,
/// writes what differs (server-side apply), decides each shard's replicas from scraped load, and
/// publishes status, conditions and scaling Events. Level-triggered: every call looks at the
/// whole state, so a missed event costs nothing but latency.
public final class PoolReconciler: @unchecked Sendable {
    let client: KubeClient
    let pools: InformerStore
    let deployments: InformerStore
    let pods: InformerStore
    let services: InformerStore
    let configMaps: InformerStore
    let configuration: ControllerConfiguration
    public let loads: LoadTracker
    let metrics: ControllerMetrics
    let logger: Logger
    let clock = ContinuousClock()
    let start = ContinuousClock.now

    let lock = NSLock()
    private var autoscalers: [ShardKey: ShardAutoscaler] = [:]
    /// Secret lookups by reference (`namespace/name#key`; pools naming one Secret share it).
    var secretChecks: [String: (problem: SpecProblem?, at: ContinuousClock.Instant)] = [:]
    /// What this controller last wrote to each child (`type/namespace/name`): the desired object's
    /// hash, and the generation (Deployments) or resourceVersion (others) the write produced.
    var written: [String: Written] = [:]
    /// Per-expert token rates of each load-aware pool (by uid), for its placement.
    var placementWindows: [String: ExpertLoadWindow] = [:]

    struct Written {
        /// The pool the child belongs to.
        var pool: ObjectRef
        var hash: String
        var generation: Int?
        var resourceVersion: String?
        var replicas: Int?
    }

    public init(client: KubeClient, pools: InformerStore, deployments: InformerStore, pods: InformerStore, services: InformerStore,
                configMaps: InformerStore, loads: LoadTracker, configuration: ControllerConfiguration,
                metrics: ControllerMetrics = ControllerMetrics(), logger: Logger) {
        self.metrics = metrics
        self.client = client
        self.pools = pools
        self.deployments = deployments
        self.pods = pods
        self.services = services
        self.configMaps = configMaps
        self.loads = loads
        self.configuration = configuration
        self.logger = logger
    }

    /// Seconds since the reconciler started, the autoscaler's clock.
    var now: Double {
        (ContinuousClock.now - start).seconds
    }

    /// Reconciles the pool `ref` names.
    public func reconcile(_ ref: ObjectRef) async throws -> ReconcileAction {
        guard let pool = pools.get(ref), pool.deletionTimestamp == nil, let name = pool.name else {
            // Gone (or going): the garbage collector removes the children through their owner references.
            forget(ref)
            return .awaitChange
        }
        let namespace = pool.namespace ?? "default"
        var status = (try? pool.json["status"].map { try ExpertPoolStatus(specJSON: $0, path: "status") } ?? ExpertPoolStatus()) ?? ExpertPoolStatus()
        let generation = pool.generation ?? 0

        // A spec the schema let through but that cannot be served is reported; what runs stays.
        let spec: ExpertPoolSpec
        var plan: ShardPlan
        do {
            spec = try ExpertPoolSpec(pool: pool.json)
        } catch {
            try await publishProblem(SpecProblem(reason: "InvalidSpec", message: error.description), pool: pool, status: &status, generation: generation)
            return .awaitChange
        }
        switch spec.plan(poolName: name) {
        case .failure(let problem):
            try await publishProblem(problem, pool: pool, status: &status, generation: generation)
            return .awaitChange
        case .success(let resolved): plan = resolved
        }
        var retiring = Set<String>()
        var initialReplicas: [String: Int] = [:]
        var placementEvent: (reason: String, message: String)?
        let servingRevision = status.model?.revision ?? 0
        if spec.placement.mode == .loadAware {
            let outcome = placement(pool: pool, spec: spec, staticPlan: plan, previous: status.placement, modelRevision: servingRevision)
            plan = outcome.plan
            retiring = outcome.retiring
            initialReplicas = outcome.initialReplicas
            status.placement = outcome.status
            placementEvent = outcome.event
        } else {
            status.placement = nil
        }
        let rollout = modelRollout(pool: pool, spec: spec, plan: plan, previous: status.model)
        status.model = rollout.status
        let modelRevision = rollout.status.revision
        let retiringShards = rollout.status.retiring.flatMap(\.shards)
        if let problem = try await secretProblem(spec: spec, namespace: namespace) {
            try await publishProblem(problem, pool: pool, status: &status, generation: generation)
            return .requeue(after: configuration.secretRecheck)
        }

        let children = PoolChildren(pool: pool, spec: spec, plan: plan, defaultImage: configuration.expertImage,
                                    modelRevision: modelRevision, retiringShards: retiringShards)
        try await applyIfChanged(.configMaps, children.planConfigMap, existing: configMaps.get(namespace: namespace, name: PoolLabels.planConfigMap(pool: name)), pool: ref)
        try await applyIfChanged(.services, children.service, existing: services.get(namespace: namespace, name: name), pool: ref)

        var shardStatuses: [ShardStatus] = []
        var limited: [(shard: String, decision: ScaleDecision)] = []
        var progressing: [String] = []
        for shard in plan.shards {
            let deploymentName = PoolLabels.deployment(pool: name, shard: shard.name, modelRevision: modelRevision)
            let existing = deployments.get(namespace: namespace, name: deploymentName)
            let view = existing.map(DeploymentView.init)
            var current = view?.specReplicas ?? initialReplicas[shard.name] ?? spec.replicas.min
            // The cache may not show our last write yet: then our write is the current count.
            if let existing, let mine = lock.withLock({ written[Self.writtenKey(.deployments, existing)] }), let generation = mine.generation,
               let replicas = mine.replicas, (existing.generation ?? 0) < generation {
                current = replicas
            }
            // A shard scaled to 0 by hand leaves experts unserved: it counts as at the minimum.
            if current == 0 { current = spec.replicas.min }
            var (decision, load) = decide(pool: pool, spec: spec, shard: shard, current: current, modelRevision: modelRevision)
            // A retiring shard keeps what it has until the new grouping serves; then it is removed.
            if retiring.contains(shard.name) { decision = ScaleDecision(replicas: current, stabilized: current, reason: "DesiredWithinRange") }
            if decision.limited { limited.append((shard.name, decision)) }
            try await applyIfChanged(.deployments, children.deployment(for: shard, replicas: decision.replicas), existing: existing, replicas: decision.replicas, pool: ref)
            if existing != nil, decision.replicas != current {
                try await recordScaling(pool: pool, shard: shard.name, from: current, to: decision.replicas, load: load, spec: spec)
            }

            let observed = view?.observed ?? DeploymentView.Observed()
            var entry = ShardStatus()
            entry.name = shard.name
            entry.experts = shard.expertRanges
            entry.replicas = observed.replicas
            entry.readyReplicas = observed.readyReplicas
            entry.desiredReplicas = decision.replicas
            entry.load = (load * 10).rounded() / 10
            shardStatuses.append(entry)
            if view?.isRolledOut(to: decision.replicas) != true { progressing.append(shard.name) }
        }
        let wanted = plan.shards.map { PoolLabels.deployment(pool: name, shard: $0.name, modelRevision: modelRevision) } + retiringShards.map(\.deployment)
        try await deleteRemovedShards(pool: pool, keeping: Set(wanted))
        for event in (placementEvent.map { [$0] } ?? []) + rollout.events {
            logger.info("rollout", metadata: ["pool": "\(pool.key)", "reason": "\(event.reason)", "message": "\(event.message)"])
            await recordEvent(pool: pool, reason: event.reason, message: event.message)
        }

        let servingPods = plan.shards.flatMap { podsOf(pool: pool, shard: $0.name, modelRevision: modelRevision) }.filter { PodView($0).isReady }
            .map { ModelAgreement.Pod(name: $0.name ?? "?", digest: $0.uid.flatMap(loads.modelDigest(of:))) }
        let modelDraining = !rollout.status.retiring.isEmpty
        status = status.assembled(from: PoolObservation(pool: name, generation: generation, shards: shardStatuses, progressing: progressing,
                                                        modelDraining: modelDraining ? rollout.status.reason : nil,
                                                        models: ModelAgreement.verdict(servingPods), limited: limited), now: Self.timestamp())
        try await publish(status: status, pool: pool)

        var recheck: Duration? = spec.autoscaling.enabled ? .seconds(spec.autoscaling.scrapeIntervalSeconds) : nil
        // Clients leaving an old revision's pods are no event: look again while one drains.
        if !progressing.isEmpty || modelDraining { recheck = min(recheck ?? configuration.progressRecheck, configuration.progressRecheck) }
        return recheck.map { .requeue(after: $0) } ?? .awaitChange
    }

    // MARK: Autoscaling

    /// The shard's replicas for now, and its measured load.
    private func decide(pool: KubeObject, spec: ExpertPoolSpec, shard: ShardPlan.Shard, current: Int, modelRevision: Int) -> (ScaleDecision, Double) {
        let shardPods = podsOf(pool: pool, shard: shard.name, modelRevision: modelRevision)
        let metric = spec.autoscaling.metric
        var load = 0.0
        let samples = shardPods.map { pod -> ReplicaCalculator.PodSample in
            let uid = pod.uid ?? ""
            let value = PodView(pod).isReady ? loads.load(of: uid)?.value(of: metric) : nil
            load += value ?? 0
            return ReplicaCalculator.PodSample(pending: PodView(pod).isPending, value: value)
        }
        let bounds = spec.replicas
        // Without autoscaling a shard simply runs replicas.min (no window holds it elsewhere).
        guard spec.autoscaling.enabled else { return (ScaleDecision(replicas: bounds.min, stabilized: bounds.min, reason: "DesiredWithinRange"), load) }
        let recommendation = ReplicaCalculator.desiredReplicas(currentReplicas: current, samples: samples, target: spec.autoscaling.target,
                                                               tolerance: spec.autoscaling.tolerance) ?? current
        let key = autoscalerKey(pool: pool, shard: shard.name)
        let behavior = spec.autoscaling.behavior.resolved
        let decision: ScaleDecision = lock.withLock {
            var autoscaler = autoscalers[key] ?? ShardAutoscaler(scaleUp: behavior.up, scaleDown: behavior.down)
            autoscaler.scaleUp = behavior.up
            autoscaler.scaleDown = behavior.down
            let decision = autoscaler.decide(now: now, current: current, desired: recommendation, minReplicas: bounds.min, maxReplicas: bounds.max)
            autoscalers[key] = autoscaler
            return decision
        }
        return (decision, load)
    }

    private func recordScaling(pool: KubeObject, shard: String, from: Int, to: Int, load: Double, spec: ExpertPoolSpec) async throws {
        let key = autoscalerKey(pool: pool, shard: shard)
        lock.withLock { autoscalers[key]?.recordScale(now: now, from: from, to: to) }
        metrics.scaled(up: to > from)
        let unit = spec.autoscaling.metric == .tokensPerSecond ? "tokens/s" : "busy"
        let message = "shard \(shard): \(from) → \(to) replicas (load \(String(format: "%.1f", load)) \(unit), target \(String(format: "%g", spec.autoscaling.target)) per replica)"
        logger.info("scaling", metadata: ["pool": "\(pool.key)", "shard": "\(shard)", "from": "\(from)", "to": "\(to)", "load": "\(load)"])
        await recordEvent(pool: pool, reason: to > from ? "ScaledUp" : "ScaledDown", message: message)
    }

    /// One shard of one pool (by uid: a pool deleted and made again starts over).
    struct ShardKey: Hashable {
        var pool: String
        var shard: String
    }

    private func autoscalerKey(pool: KubeObject, shard: String) -> ShardKey { ShardKey(pool: pool.uid ?? pool.key, shard: shard) }

    private func forget(_ pool: ObjectRef) {
        lock.withLock {
            // By owner, not by name: pool `a`'s children share a prefix with pool `a-b`'s.
            written = written.filter { $0.value.pool != pool }
            // Autoscalers are keyed by uid; drop those of pools no longer in the store.
            let live = Set(pools.list().compactMap(\.uid))
            autoscalers = autoscalers.filter { live.contains($0.key.pool) }
        }
    }

    /// The pods of one shard of model revision `modelRevision` that count: not being deleted,
    /// not finished.
    func podsOf(pool: KubeObject, shard: String, modelRevision: Int) -> [KubeObject] {
        pods.byIndex(InformerStore.namespaceIndex.name, pool.namespace ?? "").filter { pod in
            pod.labels[PoolLabels.pool] == pool.name && pod.labels[PoolLabels.shard] == shard && Self.modelRevision(of: pod) == modelRevision
                && { let view = PodView(pod); return !view.isTerminating && !view.hasFinished }()
        }
    }

    /// Whether `shard` of `modelRevision` serves as workers see it: a ready pod that has been
    /// scraped twice (so a scrape interval passed in which workers could see and verify it).
    func serves(pool: KubeObject, shard: String, modelRevision: Int) -> Bool {
        podsOf(pool: pool, shard: shard, modelRevision: modelRevision).contains { PodView($0).isReady && $0.uid.flatMap(loads.load(of:)) != nil }
    }
}

