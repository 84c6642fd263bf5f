import JSON

/// `ExpertPool.spec`: what a user asks for. Every field's schema, default and documentation is
/// declared here once; `eaas generate crd` writes the CRD from it.
public struct ExpertPoolSpec: SpecObject {
    public var model = ModelSource()
    public var shards = ShardPlanSpec()
    public var placement = PlacementSpec()
    public var replicas = ReplicaBounds()
    public var autoscaling = AutoscalingSpec()
    public var transport = TransportSpec()
    public var poolTokenSecret = SecretKeyReference()
    public var drainSeconds = 30
    public var template = ExpertPodTemplate()

    public init() {}

    public static var fields: [SpecField<Self>] {
        [
            .field("model", \.model, "The checkpoint every expert pod loads its shard from.", required: true),
            .field("shards", \.shards, "How the routed experts group into shards; each shard is one Deployment that scales on its own."),
            .field("placement", \.placement, "static keeps the shards as given; loadAware regroups experts into shards from their measured load (hot experts in shards of their own), rolling the new grouping out beside the old."),
            .field("replicas", \.replicas, "Replicas per shard: the autoscaler stays within these bounds. `kubectl scale` sets `min`."),
            .field("autoscaling", \.autoscaling, "Per-shard autoscaling from the load the pods export, with the HorizontalPodAutoscaler's rules."),
            .field("transport", \.transport, "The data plane attention workers use to reach the pods."),
            .field("poolTokenSecret", \.poolTokenSecret, "The Secret holding the pool token that data-plane clients must present.", required: true),
            .field("drainSeconds", \.drainSeconds,
                   "Seconds a pod being removed keeps serving its clients while they move away (the preStop drain); the termination grace period is this plus 15.",
                   constraints: ["minimum": 0, "maximum": 3600]),
            .field("template", \.template, "What the expert pods look like: image, resources (RDMA device-plugin resources too), placement, extra volumes."),
        ]
    }

    /// Parses `spec` of an ExpertPool object.
    public init(pool: JSONValue) throws(SpecError) {
        guard let spec = pool["spec"] else { throw SpecError(field: "spec", message: "is required") }
        try self.init(specJSON: spec, path: "spec")
    }
}

/// `spec.model`: the checkpoint (Hugging Face `config.json` + safetensors) and where it lives.
public struct ModelSource: SpecObject {
    public var path = ""
    public var experts = 0
    public var volume: EmbeddedObject?
    public var mountPath = "/models"
    public init() {}

    public static var fields: [SpecField<Self>] {
        [
            .field("path", \.path, "Checkpoint directory as the pods see it (under mountPath when a volume is given).", required: true, constraints: ["minLength": 1]),
            .field("experts", \.experts, "Routed experts per MoE layer in the checkpoint (config.json's n_routed_experts).", required: true,
                   constraints: ["minimum": 1, "maximum": 65535]),
            .field("volume", \.volume, "The volume holding the checkpoint (a core/v1 Volume, e.g. a persistentVolumeClaim); mounted read-only at mountPath."),
            .field("mountPath", \.mountPath, "Where the volume is mounted in the pods.", constraints: ["minLength": 1]),
        ]
    }
}

/// `spec.shards`: either `expertsPerShard` consecutive experts per shard, or `explicit` shards.
public struct ShardPlanSpec: SpecObject {
    public var expertsPerShard: Int?
    public var explicit: [ExplicitShard]?
    public init() {}

    public static var fields: [SpecField<Self>] {
        [
            .field("expertsPerShard", \.expertsPerShard, "Consecutive experts per shard (the last shard may hold fewer); 1 when neither field is given.",
                   constraints: ["minimum": 1]),
            .field("explicit", \.explicit, "Shards by name, each with its experts; together they must hold every expert exactly once.",
                   constraints: ["minItems": 1]),
        ]
    }
    public static var celRules: [(rule: String, message: String)] {
        [("!(has(self.expertsPerShard) && has(self.explicit))", "give expertsPerShard or explicit shards, not both")]
    }
}

/// One named shard of `spec.shards.explicit`.
public struct ExplicitShard: SpecObject {
    public var name = ""
    public var experts: [Int] = []
    public init() {}
    public init(name: String, experts: [Int]) {
        self.name = name
        self.experts = experts
    }

    public static var fields: [SpecField<Self>] {
        [
            .field("name", \.name, "Shard name (a DNS label); the Deployment is named <pool>-<name>.", required: true,
                   constraints: ["pattern": .string(SpecPatterns.dnsLabel), "maxLength": 30]),
            .field("experts", \.experts, "Expert indices this shard serves, in every MoE layer.", required: true, constraints: ["minItems": 1]),
        ]
    }
}

/// How experts are grouped into shards.
public enum PlacementMode: String, SpecEnum {
    /// The grouping `spec.shards` gives, always.
    case `static`
    /// `spec.shards` to start; then groupings the controller plans from each expert's measured
    /// token rate (`PlacementPlanner`), rolled out make-before-break.
    case loadAware
}

/// `spec.placement`.
public struct PlacementSpec: SpecObject {
    public var mode = PlacementMode.static
    public var maxExpertsPerShard = 8
    public var minImprovement = 0.2
    public var minIntervalSeconds = 300
    public var windowSeconds = 60
    public init() {}

    public static var fields: [SpecField<Self>] {
        [
            .field("mode", \.mode, "static (spec.shards as given) or loadAware (regrouped from measured load)."),
            .field("maxExpertsPerShard", \.maxExpertsPerShard, "The most experts one pod of a planned shard holds: the per-pod memory cap, in experts.",
                   constraints: ["minimum": 1, "maximum": 65535]),
            .field("minImprovement", \.minImprovement,
                   "A new grouping is rolled out only when it lowers the peak load per replica (at the same pod count) by at least this fraction.",
                   constraints: ["minimum": 0, "maximum": 1]),
            .field("minIntervalSeconds", \.minIntervalSeconds, "Fewest seconds between two groupings.", constraints: ["minimum": 0, "maximum": 86400]),
            .field("windowSeconds", \.windowSeconds, "Seconds of per-expert token rates averaged for planning.", constraints: ["minimum": 1, "maximum": 3600]),
        ]
    }
}

/// `spec.replicas`: bounds on each shard's replica count.
public struct ReplicaBounds: SpecObject {
    public var min = 1
    public var max = 4
    public init() {}
    public init(min: Int, max: Int) {
        self.min = min
        self.max = max
    }

    public static var fields: [SpecField<Self>] {
        [
            .field("min", \.min, "Fewest replicas of each shard (at least 1: every expert always has a pod).", constraints: ["minimum": 1]),
            .field("max", \.max, "Most replicas of each shard.", constraints: ["minimum": 1]),
        ]
    }
    public static var celRules: [(rule: String, message: String)] { [("self.min <= self.max", "replicas.min must not exceed replicas.max")] }
}

/// What a shard's load is measured in.
public enum LoadMetric: String, SpecEnum {
    /// Tokens per second per replica, summed over the shard's experts (`eaas_expert_tokens_total`).
    case tokensPerSecond
    /// Fraction of time a replica spends computing (`eaas_busy_seconds_total`), 0…1.
    case busyFraction
}

/// `spec.autoscaling`.
public struct AutoscalingSpec: SpecObject {
    public var enabled = true
    public var metric = LoadMetric.tokensPerSecond
    public var target = 2000.0
    public var tolerance = 0.1
    public var scrapeIntervalSeconds = 15
    public var behavior = ScalingBehaviorSpec()
    public init() {}

    public static var fields: [SpecField<Self>] {
        [
            .field("enabled", \.enabled, "When false every shard stays at replicas.min."),
            .field("metric", \.metric, "The per-replica load the target is in: tokensPerSecond or busyFraction."),
            .field("target", \.target, "Target load per replica (tokens/s, or a fraction of 1 for busyFraction).",
                   constraints: ["minimum": 0, "exclusiveMinimum": true]),
            .field("tolerance", \.tolerance, "No scaling while load/target stays within this fraction of 1 (the HPA's tolerance).",
                   constraints: ["minimum": 0, "maximum": 1]),
            .field("scrapeIntervalSeconds", \.scrapeIntervalSeconds, "How often each ready pod's /metrics is read and the shards re-decided.",
                   constraints: ["minimum": 1, "maximum": 600]),
            .field("behavior", \.behavior, "Scale-up and scale-down rules as the HPA's behavior field has them."),
        ]
    }
}

/// `spec.autoscaling.behavior`.
public struct ScalingBehaviorSpec: SpecObject {
    public var scaleUp = ScalingRulesSpec()
    public var scaleDown = ScalingRulesSpec()
    public init() {}

    public static var fields: [SpecField<Self>] {
        [
            .field("scaleUp", \.scaleUp, "Defaults: no stabilization; at most double or +4 pods per 15 s, whichever is more."),
            .field("scaleDown", \.scaleDown, "Defaults: the highest recommendation of the last 300 s; any amount per 15 s."),
        ]
    }

    /// The rules for each direction, Kubernetes' defaults filling what is not given.
    public var resolved: (up: ScalingRules, down: ScalingRules) {
        (scaleUp.resolved(default: .defaultScaleUp), scaleDown.resolved(default: .defaultScaleDown))
    }
}

extension ScalingRules.SelectPolicy: SpecEnum {}
extension ScalingRules.Policy.Kind: SpecEnum {}

/// One direction of `behavior` (autoscaling/v2 `HPAScalingRules`); absent fields take the direction's default.
public struct ScalingRulesSpec: SpecObject {
    public var stabilizationWindowSeconds: Int?
    public var selectPolicy: ScalingRules.SelectPolicy?
    public var policies: [ScalingPolicySpec]?
    public init() {}

    public static var fields: [SpecField<Self>] {
        [
            .field("stabilizationWindowSeconds", \.stabilizationWindowSeconds, "Recommendations of this many past seconds are considered (0 up, 300 down by default).",
                   constraints: ["minimum": 0, "maximum": 3600]),
            .field("selectPolicy", \.selectPolicy, "Which policy applies when several do: Max (the largest change), Min, or Disabled (no scaling this way)."),
            .field("policies", \.policies, "Rate limits: at most value pods or value percent per periodSeconds.", constraints: ["minItems": 1]),
        ]
    }

    func resolved(default rules: ScalingRules) -> ScalingRules {
        ScalingRules(stabilizationWindowSeconds: stabilizationWindowSeconds ?? rules.stabilizationWindowSeconds,
                     selectPolicy: selectPolicy ?? rules.selectPolicy,
                     policies: policies?.map { ScalingRules.Policy(type: $0.type, value: $0.value, periodSeconds: $0.periodSeconds) } ?? rules.policies)
    }
}

/// `HPAScalingPolicy`.
public struct ScalingPolicySpec: SpecObject {
    public var type = ScalingRules.Policy.Kind.pods
    public var value = 1
    public var periodSeconds = 15
    public init() {}

    public static var fields: [SpecField<Self>] {
        [
            .field("type", \.type, "Pods (a number of pods) or Percent (of the current replicas).", required: true),
            .field("value", \.value, "How many pods, or what percent, per period.", required: true, constraints: ["minimum": 1]),
            .field("periodSeconds", \.periodSeconds, "The window the limit holds over.", required: true, constraints: ["minimum": 1, "maximum": 1800]),
        ]
    }
}

/// The data-plane backend expert pods offer.
public enum TransportBackend: String, SpecEnum {
    /// RDMA verbs (with TCP for the handshake); needs an RDMA device in the pods.
    case verbs
    /// Shared-memory slots, for clients on the same node (with TCP for the rest).
    case shm
    /// TCP only.
    case tcp
}

/// `spec.transport`.
public struct TransportSpec: SpecObject {
    public var backend = TransportBackend.verbs
    public var port = 7070
    public var metricsPort = 9090
    public init() {}

    public static var fields: [SpecField<Self>] {
        [
            .field("backend", \.backend, "verbs (RDMA, the default), shm, or tcp."),
            .field("port", \.port, "The pods' data-plane port (the headless Service's 'data' port).", constraints: ["minimum": 1, "maximum": 65535]),
            .field("metricsPort", \.metricsPort, "The pods' HTTP port for /metrics, /healthz and /readyz.", constraints: ["minimum": 1, "maximum": 65535]),
        ]
    }
    public static var celRules: [(rule: String, message: String)] { [("self.port != self.metricsPort", "port and metricsPort must differ")] }
}

/// `spec.poolTokenSecret`: a key of a Secret in the pool's namespace.
public struct SecretKeyReference: SpecObject {
    public var name = ""
    public var key = "token"
    public init() {}
    public init(name: String, key: String = "token") {
        self.name = name
        self.key = key
    }

    public static var fields: [SpecField<Self>] {
        [
            .field("name", \.name, "Secret name, in the pool's namespace.", required: true, constraints: ["minLength": 1]),
            .field("key", \.key, "The key holding the token.", constraints: ["minLength": 1]),
        ]
    }
}

/// `spec.template`: the parts of the expert pods users choose.
public struct ExpertPodTemplate: SpecObject {
    public var image: String?
    public var imagePullPolicy: ImagePullPolicy?
    public var resources: EmbeddedObject?
    public var nodeSelector: [String: String] = [:]
    public var tolerations: [EmbeddedObject] = []
    public var affinity: EmbeddedObject?
    public var volumes: [EmbeddedObject] = []
    public var volumeMounts: [EmbeddedObject] = []
    public var env: [EmbeddedObject] = []
    public var serviceAccountName: String?
    public var labels: [String: String] = [:]
    public var annotations: [String: String] = [:]
    public init() {}

    public static var fields: [SpecField<Self>] {
        [
            .field("image", \.image, "Container image with the eaas binary (default: the controller's --expert-image)."),
            .field("imagePullPolicy", \.imagePullPolicy, "Always, IfNotPresent or Never."),
            .field("resources", \.resources, "core/v1 ResourceRequirements of the expert container, e.g. cpu, memory, rdma/hca_shared_devices_a."),
            .field("nodeSelector", \.nodeSelector, "Node labels the pods must land on."),
            .field("tolerations", \.tolerations, "core/v1 Tolerations."),
            .field("affinity", \.affinity, "core/v1 Affinity, merged with the controller's anti-affinity between replicas of a shard."),
            .field("volumes", \.volumes, "Extra core/v1 Volumes."),
            .field("volumeMounts", \.volumeMounts, "Extra core/v1 VolumeMounts of the expert container."),
            .field("env", \.env, "Extra core/v1 EnvVars of the expert container."),
            .field("serviceAccountName", \.serviceAccountName, "Service account of the pods."),
            .field("labels", \.labels, "Extra pod labels."),
            .field("annotations", \.annotations, "Extra pod annotations."),
        ]
    }
}

/// `imagePullPolicy`.
public enum ImagePullPolicy: String, SpecEnum {
    case Always, IfNotPresent, Never
}
