import JSON

/// What strategic merge patch (and server-side apply) needs to know about a built-in kind: which list
/// fields merge element by element and on which key, and which lists of scalars merge as sets.
/// Kubernetes reads this from the Go types' `patchStrategy`/`patchMergeKey` tags; we write down the
/// part of it that the kinds this server keeps use. Lists not named here are atomic: a patch replaces them.
public struct StrategicMergeSchema: Sendable {
    /// How a list field merges.
    public enum ListMerge: Sendable, Hashable {
        /// A list of objects, matched by the value of this member (`containers` by `name`).
        case byKey(String)
        /// A list of scalars merged as a set (`metadata.finalizers`).
        case set
    }

    /// The merging lists directly in this object, by field name.
    public var lists: [String: ListMerge]
    /// The schemas of the objects below this one (of a list's elements, for a list), by field name.
    public var fields: [String: StrategicMergeSchema]

    public init(lists: [String: ListMerge] = [:], fields: [String: StrategicMergeSchema] = [:]) {
        self.lists = lists
        self.fields = fields
    }

    /// The schema of the object in field `name` (of its elements, for a list); empty when not described.
    public func field(_ name: String) -> StrategicMergeSchema { fields[name] ?? StrategicMergeSchema() }

    /// How list field `name` merges; nil for an atomic list.
    public func listMerge(for name: String) -> ListMerge? { lists[name] }

    /// The schema of a built-in kind, or nil for any other kind: Kubernetes has no strategic merge
    /// information for custom resources and answers 415 Unsupported Media Type to such a patch.
    public static func forKind(_ kind: String) -> StrategicMergeSchema? { builtInKinds[kind] }
}

extension StrategicMergeSchema {
    private static let builtInKinds: [String: StrategicMergeSchema] = {
        let workload = object(spec: StrategicMergeSchema(fields: ["template": podTemplate]), status: conditions)
        return [
            "Pod": object(spec: podSpec, status: podStatus),
            "Deployment": workload,
            "ReplicaSet": workload,
            "StatefulSet": workload,
            "DaemonSet": workload,
            "Job": workload,
            "Service": object(spec: StrategicMergeSchema(lists: ["ports": .byKey("port")]), status: conditions),
            "Namespace": object(status: conditions),
            // Nothing but metadata merges in these: EndpointSlice's endpoints and ports are atomic lists.
            "ConfigMap": object(),
            "Secret": object(),
            "Event": object(),
            "Lease": object(),
            "EndpointSlice": object(),
        ]
    }()

    /// `metadata` (ObjectMeta), shared by every kind, custom resources included (server-side apply uses it).
    static let objectMeta = StrategicMergeSchema(lists: ["ownerReferences": .byKey("uid"), "finalizers": .set])

    private static func object(spec: StrategicMergeSchema = .init(), status: StrategicMergeSchema = .init()) -> StrategicMergeSchema {
        StrategicMergeSchema(fields: ["metadata": objectMeta, "spec": spec, "status": status])
    }

    private static let conditions = StrategicMergeSchema(lists: ["conditions": .byKey("type")])

    private static let container = StrategicMergeSchema(lists: [
        "ports": .byKey("containerPort"),
        "env": .byKey("name"),
        "volumeMounts": .byKey("mountPath"),
        "volumeDevices": .byKey("devicePath"),
    ])

    private static let podSpec = StrategicMergeSchema(
        lists: [
            "containers": .byKey("name"),
            "initContainers": .byKey("name"),
            "ephemeralContainers": .byKey("name"),
            "volumes": .byKey("name"),
            "imagePullSecrets": .byKey("name"),
            "hostAliases": .byKey("ip"),
            "topologySpreadConstraints": .byKey("topologyKey"),
            "resourceClaims": .byKey("name"),
            "schedulingGates": .byKey("name"),
        ],
        fields: ["containers": container, "initContainers": container, "ephemeralContainers": container])

    private static let podStatus = StrategicMergeSchema(lists: [
        "conditions": .byKey("type"), "podIPs": .byKey("ip"), "hostIPs": .byKey("ip"),
    ])

    private static let podTemplate = StrategicMergeSchema(fields: ["metadata": objectMeta, "spec": podSpec])
}
