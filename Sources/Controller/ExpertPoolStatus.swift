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

/// A `metav1.Condition`.
public struct PoolCondition: SpecObject {
    public var type = ""
    public var status = ConditionStatus.unknown
    public var reason = ""
    public var message = ""
    public var lastTransitionTime = ""
    public var observedGeneration = 0
    public init() {}
    public init(type: String, status: ConditionStatus, reason: String, message: String) {
        self.type = type
        self.status = status
        self.reason = reason
        self.message = message
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
