import JSON
import Kube

/// Labels and names the controller puts on a pool's children, and the attention workers read.
public enum PoolLabels {
    public static let pool = "eaas.dev/pool"
    public static let shard = "eaas.dev/shard"
    public static let experts = "eaas.dev/experts"
    /// The revision of `spec.model` a pod serves (absent: revision 0).
    public static let modelRevision = "eaas.dev/model-revision"
    public static let name = "app.kubernetes.io/name"
    public static let component = "app.kubernetes.io/component"
    public static let managedBy = "app.kubernetes.io/managed-by"
    public static let manager = "eaas-controller"

    /// The shard plan ConfigMap of a pool.
    public static func planConfigMap(pool: String) -> String { "\(pool)-shard-plan" }
    /// The Deployment of a shard: `<pool>-<shard>` for revision 0 of spec.model, `-m<n>` after.
    public static func deployment(pool: String, shard: String, modelRevision: Int = 0) -> String {
        modelRevision == 0 ? "\(pool)-\(shard)" : "\(pool)-\(shard)-m\(modelRevision)"
    }
    /// Where the pool token Secret is mounted in expert pods.
    public static let tokenDirectory = "/var/run/eaas/pool-token"
}

/// The pool's children as the spec says they should be: pure functions from the pool to the
/// objects the reconciler applies (server-side apply, so only the fields written here are owned).
public struct PoolChildren: Sendable {
    public var poolName: String
    public var namespace: String
    public var ownerReference: JSONValue
    public var spec: ExpertPoolSpec
    public var plan: ShardPlan
    /// Image for pods whose template gives none.
    public var defaultImage: String
    /// The revision of spec.model the Deployments are for (`status.model.revision`).
    public var modelRevision: Int
    /// Shards of older model revisions still serving: listed in the workers' plan beside the
    /// current ones (a worker of the old model uses them), never written (their template stays).
    public var retiringShards: [RetiringShard]
    /// Seconds the kubelet waits after the drain before it kills a pod.
    public static let graceBeyondDrain = 15

    public init(pool: KubeObject, spec: ExpertPoolSpec, plan: ShardPlan, defaultImage: String, modelRevision: Int = 0, retiringShards: [RetiringShard] = []) {
        poolName = pool.name ?? ""
        namespace = pool.namespace ?? "default"
        ownerReference = pool.controllerReference()
        self.spec = spec
        self.plan = plan
        self.defaultImage = defaultImage
        self.modelRevision = modelRevision
        self.retiringShards = retiringShards
    }

    /// The labels selecting one shard's pods. After a model change the revision is part of it, so
    /// that the Deployments of two revisions of a shard never select each other's pods (a
    /// selector cannot change: revision 0 keeps the one it was created with).
    public func selector(shard: String) -> [String: String] {
        var labels = [PoolLabels.pool: poolName, PoolLabels.shard: shard]
        if modelRevision > 0 { labels[PoolLabels.modelRevision] = "\(modelRevision)" }
        return labels
    }

    private func metadata(name: String, labels: [String: String], annotations: [String: String] = [:]) -> JSONValue {
        var all = labels
        all[PoolLabels.name] = "eaas"
        all[PoolLabels.managedBy] = PoolLabels.manager
        var object: [String: JSONValue] = [
            "name": .string(name), "namespace": .string(namespace),
            "labels": .object(all.mapValues { .string($0) }),
            "ownerReferences": [ownerReference],
        ]
        if !annotations.isEmpty { object["annotations"] = .object(annotations.mapValues { .string($0) }) }
        return .object(object)
    }

    /// The drain socket's folder (an in-memory emptyDir) and path in every expert pod.
    static let drainDirectory = "/run/eaas"
    static let drainSocket = "/run/eaas/drain.sock"

    /// One shard's Deployment with `replicas` pods.
    public func deployment(for shard: ShardPlan.Shard, replicas: Int) -> JSONValue {
        let selector = selector(shard: shard.name)
        var podLabels = spec.template.labels
        for (key, value) in selector { podLabels[key] = value }
        podLabels[PoolLabels.name] = "eaas"
        podLabels[PoolLabels.component] = "expert-pod"
        let template = spec.template
        let transport = spec.transport
        let modelPath = spec.model.volume == nil ? spec.model.path
            : (spec.model.path.hasPrefix("/") ? spec.model.path : "\(spec.model.mountPath)/\(spec.model.path)")

        // The token file is readable by the pod's own group only (fsGroup below), never by others.
        var volumes: [JSONValue] = [[
            "name": "pool-token",
            "secret": ["secretName": .string(spec.poolTokenSecret.name), "defaultMode": .int(0o440),
                       "items": [["key": .string(spec.poolTokenSecret.key), "path": "token"]]],
        ], [
            // Where the drain socket lives: the root filesystem is read-only.
            "name": "drain", "emptyDir": ["medium": "Memory", "sizeLimit": "1Mi"],
        ]]
        var mounts: [JSONValue] = [["name": "pool-token", "mountPath": .string(PoolLabels.tokenDirectory), "readOnly": true],
                                   ["name": "drain", "mountPath": .string(Self.drainDirectory)]]
        if var volume = spec.model.volume?.json.object {
            volume["name"] = "model"
            volumes.append(.object(volume))
            mounts.append(["name": "model", "mountPath": .string(spec.model.mountPath), "readOnly": true])
        }
        volumes += template.volumes.map(\.json)
        mounts += template.volumeMounts.map(\.json)

        var capabilities: [String: JSONValue] = ["drop": ["ALL"]]
        // Registering memory for RDMA pins pages: verbs needs IPC_LOCK past the memlock limit.
        if transport.backend == .verbs { capabilities["add"] = ["IPC_LOCK"] }
        var container: [String: JSONValue] = [
            "name": "expert-pod",
            "image": .string(template.image ?? defaultImage),
            "args": .array([
                "expert-pod", "--model", .string(modelPath), "--shard", .string(shard.expertRanges),
                "--listen", .string("0.0.0.0:\(transport.port)"), "--transport", .string(transport.backend.rawValue),
                "--metrics-host", "0.0.0.0", "--metrics-port", .string("\(transport.metricsPort)"),
                "--pool-token-file", .string("\(PoolLabels.tokenDirectory)/token"),
                "--grace-seconds", .string("\(spec.drainSeconds)"),
                "--drain-socket", .string(Self.drainSocket),
            ]),
            "ports": [
                ["name": "data", "containerPort": .int(transport.port), "protocol": "TCP"],
                ["name": "metrics", "containerPort": .int(transport.metricsPort), "protocol": "TCP"],
            ],
            // Ready only while it serves: a draining pod leaves the EndpointSlices at once.
            // Readiness is what keeps a pod in every worker's membership: one slow answer on a
            // busy node must not take the last replica of an expert out (a stall for every
            // worker); a pod that is really gone fails its data-plane connections long before the
            // third probe, and a deleted pod leaves the EndpointSlice at once.
            "readinessProbe": ["httpGet": ["path": "/readyz", "port": "metrics"], "periodSeconds": 2, "timeoutSeconds": 2, "failureThreshold": 3],
            "livenessProbe": ["httpGet": ["path": "/healthz", "port": "metrics"], "periodSeconds": 10, "failureThreshold": 3],
            // The metrics port opens only once the shard is loaded (mapped and prefaulted): up to
            // 10 minutes for a large shard before liveness is checked at all.
            "startupProbe": ["httpGet": ["path": "/healthz", "port": "metrics"], "periodSeconds": 5, "failureThreshold": 120],
            // The preStop hook drains through the pod's local socket (no network request can):
            // /readyz turns 503, clients get GOAWAY, and it returns once they have left (or
            // drainSeconds passed); the drained pod then exits, and SIGTERM finds nothing left.
            "lifecycle": ["preStop": ["exec": ["command": ["eaas", "drain", "--socket", .string(Self.drainSocket),
                                                           "--timeout-seconds", .string("\(spec.drainSeconds + 5)")]]]],
            "securityContext": [
                "allowPrivilegeEscalation": false, "readOnlyRootFilesystem": true,
                "capabilities": .object(capabilities),
            ],
            "volumeMounts": .array(mounts),
        ]
        if let policy = template.imagePullPolicy { container["imagePullPolicy"] = .string(policy.rawValue) }
        if let resources = template.resources { container["resources"] = resources.json }
        if !template.env.isEmpty { container["env"] = .array(template.env.map(\.json)) }

        var podSpec: [String: JSONValue] = [
            "containers": [.object(container)],
            // An expert pod never talks to the API server: no service-account token in it.
            "automountServiceAccountToken": false,
            "volumes": .array(volumes),
            "terminationGracePeriodSeconds": .int(spec.drainSeconds + Self.graceBeyondDrain),
            "securityContext": ["runAsNonRoot": true, "runAsUser": 65532, "runAsGroup": 65532, "fsGroup": 65532,
                                 "seccompProfile": ["type": "RuntimeDefault"]],
            "affinity": affinity(selector: selector),
        ]
        if !template.nodeSelector.isEmpty { podSpec["nodeSelector"] = template.nodeSelector.specJSON }
        if !template.tolerations.isEmpty { podSpec["tolerations"] = .array(template.tolerations.map(\.json)) }
        if let account = template.serviceAccountName { podSpec["serviceAccountName"] = .string(account) }

        var podMetadata: [String: JSONValue] = ["labels": .object(podLabels.mapValues { .string($0) })]
        if !template.annotations.isEmpty { podMetadata["annotations"] = template.annotations.specJSON }

        return [
            "apiVersion": "apps/v1",
            "kind": "Deployment",
            "metadata": metadata(name: PoolLabels.deployment(pool: poolName, shard: shard.name, modelRevision: modelRevision),
                                 labels: selector.merging([PoolLabels.component: "expert-shard"]) { a, _ in a },
                                 annotations: [PoolLabels.experts: shard.expertRanges]),
            "spec": [
                "replicas": .int(replicas),
                "selector": ["matchLabels": .object(selector.mapValues { .string($0) })],
                // A rollout never takes a shard below its ready count: a new pod comes up first.
                "strategy": ["type": "RollingUpdate", "rollingUpdate": ["maxUnavailable": 0, "maxSurge": 1]],
                "template": ["metadata": .object(podMetadata), "spec": .object(podSpec)],
            ],
        ]
    }

    /// The user's affinity with a preferred anti-affinity between replicas of the shard added, so
    /// that one node failing takes at most one replica where there are nodes enough.
    private func affinity(selector: [String: String]) -> JSONValue {
        var affinity = spec.template.affinity?.json.object ?? [:]
        var anti = affinity["podAntiAffinity"]?.object ?? [:]
        var preferred = anti["preferredDuringSchedulingIgnoredDuringExecution"]?.array ?? []
        preferred.append([
            "weight": 100,
            "podAffinityTerm": [
                "topologyKey": "kubernetes.io/hostname",
                "labelSelector": ["matchLabels": .object(selector.mapValues { .string($0) })],
            ],
        ])
        anti["preferredDuringSchedulingIgnoredDuringExecution"] = .array(preferred)
        affinity["podAntiAffinity"] = .object(anti)
        return .object(affinity)
    }

    /// The headless Service: its EndpointSlices list the pool's ready pods, which is how attention
    /// workers find them (the controller is not on that path).
    public var service: JSONValue {
        [
            "apiVersion": "v1",
            "kind": "Service",
            "metadata": metadata(name: poolName, labels: [PoolLabels.pool: poolName, PoolLabels.component: "expert-pool"]),
            "spec": [
                "clusterIP": "None",
                "selector": .object([PoolLabels.pool: .string(poolName)]),
                "publishNotReadyAddresses": false,
                "ports": [
                    ["name": "data", "port": .int(spec.transport.port), "targetPort": "data", "protocol": "TCP"],
                    ["name": "metrics", "port": .int(spec.transport.metricsPort), "targetPort": "metrics", "protocol": "TCP"],
                ],
            ],
        ]
    }

    /// The shard plan ConfigMap: which Deployment serves which experts, read by attention workers.
    public var planConfigMap: JSONValue {
        [
            "apiVersion": "v1",
            "kind": "ConfigMap",
            "metadata": metadata(name: PoolLabels.planConfigMap(pool: poolName), labels: [PoolLabels.pool: poolName, PoolLabels.component: "shard-plan"]),
            "data": ["plan.json": .string(planDocument.compact)],
        ]
    }

    /// The plan as `ShardPlanDocument` JSON.
    public var planDocument: JSONValue {
        ShardPlanDocument(pool: poolName, experts: spec.model.experts, port: spec.transport.port, backend: spec.transport.backend.rawValue,
                          shards: plan.shards.map { .init(name: $0.name, deployment: PoolLabels.deployment(pool: poolName, shard: $0.name, modelRevision: modelRevision),
                                                          experts: $0.experts) }
                              + retiringShards.map { .init(name: $0.name, deployment: $0.deployment, experts: $0.experts) })
            .json
    }
}

/// The shard plan as attention workers read it from the `<pool>-shard-plan` ConfigMap.
public struct ShardPlanDocument: Sendable, Equatable {
    public struct Shard: Sendable, Equatable {
        public var name: String
        public var deployment: String
        public var experts: [Int]
        public init(name: String, deployment: String, experts: [Int]) {
            self.name = name
            self.deployment = deployment
            self.experts = experts
        }
    }
    public var pool: String
    public var experts: Int
    public var port: Int
    public var backend: String
    public var shards: [Shard]

    public var json: JSONValue {
        [
            "pool": .string(pool), "experts": .int(experts), "port": .int(port), "backend": .string(backend),
            "shards": .array(shards.map { ["name": .string($0.name), "deployment": .string($0.deployment), "experts": .array($0.experts.map { .int($0) })] }),
        ]
    }

    /// Reads the document; the error names what is missing.
    public init(json: JSONValue) throws(SpecError) {
        guard let pool = json["pool"]?.string, let experts = json["experts"]?.int, let port = json["port"]?.int,
              let shards = json["shards"]?.array else {
            throw SpecError(field: "plan.json", message: "needs pool, experts, port and shards")
        }
        self.pool = pool
        self.experts = experts
        self.port = port
        backend = json["backend"]?.string ?? "tcp"
        var parsed: [Shard] = []
        for (index, shard) in shards.enumerated() {
            guard let name = shard["name"]?.string, let deployment = shard["deployment"]?.string,
                  let list = shard["experts"]?.array?.compactMap(\.int) else {
                throw SpecError(field: "plan.json shards[\(index)]", message: "needs name, deployment and experts")
            }
            parsed.append(Shard(name: name, deployment: deployment, experts: list))
        }
        self.shards = parsed
    }

    public init(pool: String, experts: Int, port: Int, backend: String, shards: [Shard]) {
        self.pool = pool
        self.experts = experts
        self.port = port
        self.backend = backend
        self.shards = shards
    }
}
