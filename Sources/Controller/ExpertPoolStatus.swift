import JSON

/// `ExpertPool.status`, written by the controller only (through the status subresource).
public struct ExpertPoolStatus: SpecObject {
    public var observedGeneration = 0
    public var shardCount = 0
    public var replicas = 0
    public var shardReplicas = 0
    public var readyReplicas = 0
    public var desiredReplicas = 0
    public var load = 0.0
    public var selector = ""
    public var shards: [ShardStatus] = []
    public var placement: PlacementStatus?
    public var model: ModelRolloutStatus?
    public var conditions: [PoolCondition] = []
    public init() {}

    public static var fields: [SpecField<Self>] {
        [
            .field("observedGeneration", \.observedGeneration, "The spec generation this status describes."),
            .field("shardCount", \.shardCount, "Shards in the plan."),
            .field("replicas", \.replicas, "Pods of all shards."),
            .field("shardReplicas", \.shardReplicas, "Pods of the smallest shard: what replicas.min bounds, and the scale subresource's status replicas."),
            .field("readyReplicas", \.readyReplicas, "Ready pods of all shards."),
            .field("desiredReplicas", \.desiredReplicas, "Pods the autoscaler wants, over all shards."),
            .field("load", \.load, "Load measured over all shards (tokens/s, or summed busy fraction)."),
            .field("selector", \.selector, "Label selector of the pool's pods (for the scale subresource)."),
            .field("shards", \.shards, "Each shard's replicas and load.",
                   constraints: ["x-kubernetes-list-type": "map", "x-kubernetes-list-map-keys": ["name"]]),
            .field("placement", \.placement, "With spec.placement.mode loadAware: the grouping running, the one it replaces while that rolls out, and why it changed."),
            .field("model", \.model, "The revision of spec.model serving and older revisions still draining: a change of spec.model brings new Deployments up beside the old."),
            .field("conditions", \.conditions, "Ready, Progressing, Degraded, ScalingLimited and ModelsAgree.",
                   constraints: ["x-kubernetes-list-type": "map", "x-kubernetes-list-map-keys": ["type"]]),
        ]
    }

    /// The condition of `type`, if set.
    public func condition(_ type: String) -> PoolCondition? { conditions.first { $0.type == type } }
}

/// One shard in `status.shards`.
public struct ShardStatus: SpecObject {
    public var name = ""
    public var experts = ""
    public var replicas = 0
    public var readyReplicas = 0
    public var desiredReplicas = 0
    public var load = 0.0
    public init() {}

    public static var fields: [SpecField<Self>] {
        [
            .field("name", \.name, "Shard name; its Deployment is <pool>-<name>."),
            .field("experts", \.experts, "The experts it serves, as ranges (0-3,8)."),
            .field("replicas", \.replicas, "Pods of the shard's Deployment."),
            .field("readyReplicas", \.readyReplicas, "Ready pods."),
            .field("desiredReplicas", \.desiredReplicas, "What the autoscaler decided."),
            .field("load", \.load, "Measured load of the shard (sum over its ready pods)."),
        ]
    }
}

/// `status.placement`: the load-aware grouping (`PlacementPlanner`). Kept in status so that a
/// restarted or newly elected controller serves the same grouping.
public struct PlacementStatus: SpecObject {
    public var revision = 0
    public var shards: [PlacedShard] = []
    public var retiring: [PlacedShard] = []
    public var imbalance = 1.0
    public var lastChangeTime = ""
    public var reason = ""
    public init() {}

    public static var fields: [SpecField<Self>] {
        [
            .field("revision", \.revision, "Groupings rolled out so far (0: spec.shards)."),
            .field("shards", \.shards, "The grouping running now."),
            .field("retiring", \.retiring, "The previous grouping, serving until every shard of the new one has a ready pod."),
            .field("imbalance", \.imbalance, "Peak load per replica over the mean, for the running grouping at the current pod count (1 is perfect)."),
            .field("lastChangeTime", \.lastChangeTime, "When the grouping last changed (RFC 3339)."),
            .field("reason", \.reason, "Why it changed, or why the last proposal was not rolled out."),
        ]
    }
}

/// One shard of a planned grouping.
public struct PlacedShard: SpecObject {
    public var name = ""
    public var experts: [Int] = []
    public var replicas = 1
    public init() {}
    public init(name: String, experts: [Int], replicas: Int) {
        self.name = name
        self.experts = experts
        self.replicas = replicas
    }

    public static var fields: [SpecField<Self>] {
        [
            .field("name", \.name, "Shard name; its Deployment is <pool>-<name>."),
            .field("experts", \.experts, "Expert indices, ascending."),
            .field("replicas", \.replicas, "Replicas the plan gave it (where its autoscaler starts)."),
        ]
    }
}

/// A `metav1.Condition`.
public struct PoolCondition: SpecObject {
    public var type = ""
    public var status = ConditionStatus.unknown
    public var reason = ""
    public var message = ""
    public var lastTransitionTime = ""
    public var observedGeneration = 0
    public init() {}
    public init(type: String, status: ConditionStatus, reason: String, message: String, observedGeneration: Int = 0) {
        self.type = type
        self.status = status
        self.reason = reason
        self.message = message
        self.observedGeneration = observedGeneration
    }

    public static var fields: [SpecField<Self>] {
        [
            .field("type", \.type, "Ready, Progressing, Degraded, ScalingLimited or ModelsAgree.", required: true),
            .field("status", \.status, "True, False or Unknown.", required: true),
            .field("reason", \.reason, "CamelCase reason.", required: true),
            .field("message", \.message, "What happened, for people."),
            .field("lastTransitionTime", \.lastTransitionTime, "When status last changed (RFC 3339).", required: true),
            .field("observedGeneration", \.observedGeneration, "The generation the condition was set for."),
        ]
    }
}

/// `True`, `False`, `Unknown`.
public enum ConditionStatus: String, SpecEnum {
    case `true` = "True", `false` = "False", unknown = "Unknown"
}

extension [PoolCondition] {
    /// Sets `condition`, keeping the old transition time when its status did not change (as
    /// `meta.SetStatusCondition` does).
    public mutating func set(_ condition: PoolCondition, now: String) {
        var condition = condition
        if let index = firstIndex(where: { $0.type == condition.type }) {
            condition.lastTransitionTime = self[index].status == condition.status ? self[index].lastTransitionTime : now
            self[index] = condition
        } else {
            condition.lastTransitionTime = now
            append(condition)
        }
    }
}

/// `status.model`: which revision of `spec.model` the pool's shards serve, and the older revisions
/// still up for the attention workers that have not moved yet. Kept in status so that a restarted
/// or newly elected controller names the same Deployments.
public struct ModelRolloutStatus: SpecObject {
    public var revision = 0
    public var path = ""
    public var fingerprint = ""
    public var retiring: [RetiringModel] = []
    public var lastChangeTime = ""
    public var reason = ""
    public init() {}

    public static var fields: [SpecField<Self>] {
        [
            .field("revision", \.revision, "Changes of spec.model so far; revision n > 0 runs Deployments <pool>-<shard>-m<n>."),
            .field("path", \.path, "spec.model.path of the revision serving."),
            .field("fingerprint", \.fingerprint, "Hash of the spec.model the revision was made from."),
            .field("retiring", \.retiring, "Older revisions, serving until the new one is ready and none of their pods has a worker connected."),
            .field("lastChangeTime", \.lastChangeTime, "When spec.model last changed (RFC 3339)."),
            .field("reason", \.reason, "What the rollout waits for, or what it last did."),
        ]
    }
}

/// One older model revision in `status.model.retiring`.
public struct RetiringModel: SpecObject {
    public var revision = 0
    public var path = ""
    public var shards: [RetiringShard] = []
    /// Workers connected to its ready pods at the last look (-1: not all of them read yet).
    public var clients = -1
    public init() {}
    public init(revision: Int, path: String, shards: [RetiringShard]) {
        self.revision = revision
        self.path = path
        self.shards = shards
    }

    public static var fields: [SpecField<Self>] {
        [
            .field("revision", \.revision, "The revision."),
            .field("path", \.path, "The spec.model.path it serves."),
            .field("shards", \.shards, "Its shards, with their Deployments (left as they were: the old model's template)."),
            .field("clients", \.clients, "Attention workers connected to its ready pods at the last scrape (-1: not every pod read yet)."),
        ]
    }
}

/// A shard of a retiring model revision.
public struct RetiringShard: SpecObject {
    public var name = ""
    public var deployment = ""
    public var experts: [Int] = []
    public init() {}
    public init(name: String, deployment: String, experts: [Int]) {
        self.name = name
        self.deployment = deployment
        self.experts = experts
    }

    public static var fields: [SpecField<Self>] {
        [
            .field("name", \.name, "Shard name."),
            .field("deployment", \.deployment, "Its Deployment."),
            .field("experts", \.experts, "Expert indices, ascending."),
        ]
    }
}
