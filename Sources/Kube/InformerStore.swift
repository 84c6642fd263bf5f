import Foundation

/// The informer's cache: the last known state of every object, by key, with secondary indexes
/// (client-go's `Indexer`). Thread-safe; readers get snapshots and never see a half-applied change.
public final class InformerStore: @unchecked Sendable {
    /// Index values of an object (e.g. its owner's uid, or the value of a label).
    public typealias IndexFunction = @Sendable (KubeObject) -> [String]

    private let lock = NSLock()
    private var items: [String: KubeObject] = [:]
    private let indexers: [String: IndexFunction]
    /// index name → index value → keys.
    private var indices: [String: [String: Set<String>]] = [:]

    /// `indexers` are fixed at creation (adding one later would need a rebuild under load).
    public init(indexers: [String: IndexFunction] = [:]) {
        self.indexers = indexers
        for name in indexers.keys { indices[name] = [:] }
    }

    /// An index of objects by namespace, the one almost every controller wants.
    public static let namespaceIndex: (name: String, function: IndexFunction) = ("namespace", { [$0.namespace ?? ""] })
    /// An index of objects by the uid of each owner (find a pool's Deployments from the pool).
    public static let ownerIndex: (name: String, function: IndexFunction) = ("owner", { object in
        object.ownerReferences.compactMap { $0["uid"]?.string }
    })

    public func get(_ key: String) -> KubeObject? { lock.withLock { items[key] } }
    public func get(namespace: String?, name: String) -> KubeObject? { get(KubeObject.key(namespace: namespace, name: name)) }
    public func list() -> [KubeObject] { lock.withLock { Array(items.values) } }
    public var keys: [String] { lock.withLock { Array(items.keys) } }
    public var count: Int { lock.withLock { items.count } }

    /// The objects whose index `name` includes `value`.
    public func byIndex(_ name: String, _ value: String) -> [KubeObject] {
        lock.withLock { (indices[name]?[value] ?? []).compactMap { items[$0] } }
    }

    /// Stores `object`, returning what it replaced.
    @discardableResult
    func upsert(_ object: KubeObject) -> KubeObject? {
        lock.withLock {
            let key = object.key
            let old = items.updateValue(object, forKey: key)
            if let old { unindex(old, key: key) }
            index(object, key: key)
            return old
        }
    }

    /// Removes the object with `key`, returning it.
    @discardableResult
    func remove(_ key: String) -> KubeObject? {
        lock.withLock {
            guard let old = items.removeValue(forKey: key) else { return nil }
            unindex(old, key: key)
            return old
        }
    }

    private func index(_ object: KubeObject, key: String) {
        for (name, function) in indexers {
            for value in function(object) { indices[name, default: [:]][value, default: []].insert(key) }
        }
    }

    private func unindex(_ object: KubeObject, key: String) {
        for (name, function) in indexers {
            for value in function(object) {
                indices[name]?[value]?.remove(key)
                if indices[name]?[value]?.isEmpty == true { indices[name]?[value] = nil }
            }
        }
    }
}
