import JSON

/// An API object of any kind, kept as its JSON (as kube-rs's `DynamicObject`): the controller
/// reads and writes the fields it owns and passes everything else through untouched.
public struct KubeObject: Sendable, Hashable, CustomStringConvertible {
    public var json: JSONValue

    public init(_ json: JSONValue) { self.json = json }

    /// A new object of `type` with the given metadata and body fields (`spec`, `data` …).
    public init(_ type: ResourceType, name: String, namespace: String? = nil, labels: [String: String] = [:],
                fields: [String: JSONValue] = [:]) {
        var metadata: [String: JSONValue] = ["name": .string(name)]
        if let namespace { metadata["namespace"] = .string(namespace) }
        if !labels.isEmpty { metadata["labels"] = .object(labels.mapValues { .string($0) }) }
        var object = fields
        object["apiVersion"] = .string(type.apiVersion)
        object["kind"] = .string(type.kind)
        object["metadata"] = .object(metadata)
        json = .object(object)
    }

    public subscript(key: String) -> JSONValue? {
        get { json[key] }
        set { json[key] = newValue }
    }
    public subscript(path path: String...) -> JSONValue? {
        get { json[path: path] }
        set { json[path: path] = newValue }
    }

    public var apiVersion: String? { json["apiVersion"]?.string }
    public var kind: String? { json["kind"]?.string }
    public var name: String? {
        get { json[path: ["metadata", "name"]]?.string }
        set { json[path: ["metadata", "name"]] = newValue.map { .string($0) } }
    }
    public var namespace: String? {
        get { json[path: ["metadata", "namespace"]]?.string }
        set { json[path: ["metadata", "namespace"]] = newValue.map { .string($0) } }
    }
    public var uid: String? { json[path: ["metadata", "uid"]]?.string }
    /// Opaque: compare for equality only, never order.
    public var resourceVersion: String? {
        get { json[path: ["metadata", "resourceVersion"]]?.string }
        set { json[path: ["metadata", "resourceVersion"]] = newValue.map { .string($0) } }
    }
    public var generation: Int? { json[path: ["metadata", "generation"]]?.int }
    public var deletionTimestamp: String? { json[path: ["metadata", "deletionTimestamp"]]?.string }
    public var labels: [String: String] {
        get { (json[path: ["metadata", "labels"]]?.object ?? [:]).compactMapValues(\.string) }
        set { json[path: ["metadata", "labels"]] = newValue.isEmpty ? nil : .object(newValue.mapValues { .string($0) }) }
    }
    public var annotations: [String: String] {
        get { (json[path: ["metadata", "annotations"]]?.object ?? [:]).compactMapValues(\.string) }
        set { json[path: ["metadata", "annotations"]] = newValue.isEmpty ? nil : .object(newValue.mapValues { .string($0) }) }
    }
    public var finalizers: [String] {
        get { (json[path: ["metadata", "finalizers"]]?.array ?? []).compactMap(\.string) }
        set { json[path: ["metadata", "finalizers"]] = newValue.isEmpty ? nil : .array(newValue.map { .string($0) }) }
    }
    public var ownerReferences: [JSONValue] {
        get { json[path: ["metadata", "ownerReferences"]]?.array ?? [] }
        set { json[path: ["metadata", "ownerReferences"]] = newValue.isEmpty ? nil : .array(newValue) }
    }

    /// The store key, `namespace/name` (or `name` for cluster-scoped objects), as client-go's
    /// `MetaNamespaceKeyFunc`.
    public var key: String { Self.key(namespace: namespace, name: name ?? "") }
    public static func key(namespace: String?, name: String) -> String {
        if let namespace, !namespace.isEmpty { "\(namespace)/\(name)" } else { name }
    }

    /// An ownerReference naming this object as controller, for the children it creates.
    public func controllerReference(blockOwnerDeletion: Bool = true) -> JSONValue {
        .object([
            "apiVersion": .string(apiVersion ?? ""), "kind": .string(kind ?? ""), "name": .string(name ?? ""),
            "uid": .string(uid ?? ""), "controller": .bool(true), "blockOwnerDeletion": .bool(blockOwnerDeletion),
        ])
    }

    public var description: String { "\(kind ?? "object") \(key)" }
}

/// One page of a list: the items and the collection's resourceVersion, from which a watch starts.
public struct ObjectList: Sendable {
    public var items: [KubeObject]
    public var resourceVersion: String
    /// The token for the next page; nil on the last.
    public var continueToken: String?
    public var remainingItemCount: Int?
}

/// The `autoscaling/v1` Scale of an object with a `scale` subresource.
public struct Scale: Sendable, Equatable {
    public var replicas: Int
    public var statusReplicas: Int
    /// The label selector of the pods counted, as a string (`app=web`).
    public var selector: String?
    public var resourceVersion: String?
}
