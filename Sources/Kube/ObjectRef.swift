/// One object by namespace and name: what a controller's work queue holds and its reconciler is
/// given. A typed key, not the `namespace/name` string: two references are equal only when both
/// parts are, and finding a pool's children compares references, never string prefixes.
public struct ObjectRef: Hashable, Sendable, Comparable, CustomStringConvertible {
    /// Nil for cluster-scoped objects (an empty namespace is taken as none).
    public let namespace: String?
    public let name: String

    public init(namespace: String?, name: String) {
        self.namespace = namespace?.isEmpty == true ? nil : namespace
        self.name = name
    }

    /// The reference to `object`; nil for an object without a name.
    public init?(_ object: KubeObject) {
        guard let name = object.name else { return nil }
        self.init(namespace: object.namespace, name: name)
    }

    /// The object's controller (the ownerReference with `controller: true`) when it is of `kind`.
    public static func controller(of object: KubeObject, kind: String) -> ObjectRef? {
        guard let owner = object.ownerReferences.first(where: { $0["controller"]?.bool == true && $0["kind"]?.string == kind }),
              let name = owner["name"]?.string else { return nil }
        // Owners are in the object's own namespace (or cluster-scoped, for cluster-scoped objects).
        return ObjectRef(namespace: object.namespace, name: name)
    }

    /// `namespace/name`, or `name` when cluster-scoped: the informer store's key.
    public var description: String { KubeObject.key(namespace: namespace, name: name) }

    public static func < (a: ObjectRef, b: ObjectRef) -> Bool {
        (a.namespace ?? "", a.name) < (b.namespace ?? "", b.name)
    }
}

extension InformerStore {
    /// The cached object `ref` names.
    public func get(_ ref: ObjectRef) -> KubeObject? { get(namespace: ref.namespace, name: ref.name) }
}
