import Foundation
import JSON
import Kube

/// Everything the test API server stores, behind one lock: served resources (built-in and from
/// CRDs), the objects of each with their change logs, the global revision, open watches, and the
/// owner index the garbage collector walks. Every write runs whole under the lock, so watchers
/// see changes in revision order and a list is one consistent snapshot.
final class APIState: @unchecked Sendable {
    let lock = NSRecursiveLock()
    /// The last revision written (etcd's), the source of every resourceVersion. Read it under the
    /// lock (`currentRevision` from outside).
    private(set) var revision = 1
    var currentRevision: Int { lock.withLock { revision } }
    /// Served resources by `group/version/plural`.
    private(set) var served: [String: ServedResource] = [:]
    /// Storage by `group/plural`, shared by a resource's versions.
    private var collections: [String: ObjectCollection] = [:]
    /// ownerReference uid → the objects that name it (collection id, key).
    var dependents: [String: Set<ObjectRef>] = [:]
    /// uid → where the object with it is stored.
    private var uids: [String: ObjectRef] = [:]
    private var nextWatcherID = 0
    /// Per-collection log length kept for watch resumption; older changes are compacted.
    let logLimit: Int

    struct ObjectRef: Hashable, Sendable {
        let collection: String
        let key: String
    }

    init(logLimit: Int = 100_000) {
        self.logLimit = logLimit
        for resource in ServedResource.builtIn { register(resource) }
        for name in ["default", "kube-system", "kube-public", "kube-node-lease"] {
            let namespace: JSONValue = ["apiVersion": "v1", "kind": "Namespace", "metadata": ["name": .string(name)],
                                        "spec": ["finalizers": ["kubernetes"]], "status": ["phase": "Active"]]
            _ = try? create(ServedResource.builtIn.first { $0.type == .namespaces }!, namespace: nil, body: namespace,
                            manager: "kube-apiserver", dryRun: false)
        }
    }

    /// Runs `body` under the lock, keeping its typed error (`NSLock.withLock` only rethrows `any Error`).
    func locked<T, E: Error>(_ body: () throws(E) -> T) throws(E) -> T {
        lock.lock()
        defer { lock.unlock() }
        return try body()
    }

    // MARK: Registry

    static func servedKey(group: String, version: String, plural: String) -> String { "\(group)/\(version)/\(plural)" }
    static func collectionID(_ type: ResourceType) -> String { "\(type.group)/\(type.plural)" }

    func register(_ resource: ServedResource) {
        lock.withLock {
            served[Self.servedKey(group: resource.type.group, version: resource.type.version, plural: resource.type.plural)] = resource
            let id = Self.collectionID(resource.type)
            if collections[id] == nil { collections[id] = ObjectCollection() }
        }
    }

    func unregister(group: String, plural: String) {
        lock.withLock {
            served = served.filter { !($0.value.type.group == group && $0.value.type.plural == plural) }
        }
    }

    func resource(group: String, version: String, plural: String) -> ServedResource? {
        lock.withLock { served[Self.servedKey(group: group, version: version, plural: plural)] }
    }

    var allServed: [ServedResource] { lock.withLock { Array(served.values) } }

    func collection(_ type: ResourceType) -> ObjectCollection {
        lock.withLock {
            let id = Self.collectionID(type)
            if let existing = collections[id] { return existing }
            let created = ObjectCollection()
            collections[id] = created
            return created
        }
    }

    func collection(id: String) -> ObjectCollection? { lock.withLock { collections[id] } }

    // MARK: Reading

    func get(_ resource: ServedResource, namespace: String?, name: String) throws(APIError) -> JSONValue {
        try locked { () throws(APIError) -> JSONValue in
            guard let object = collection(resource.type).objects[KubeObject.key(namespace: namespace, name: name)] else {
                throw .notFound(resource.type.plural, name, group: resource.type.group)
            }
            return withAPIVersion(object, resource.type.apiVersion)
        }
    }

    /// A list as the API answers it; a `continueToken` reads on from the snapshot the first page saw.
    func list(_ resource: ServedResource, namespace: String?, labels: LabelSelector, fields: FieldSelector,
              limit: Int?, continueToken: String?) throws(APIError) -> JSONValue {
        try locked { () throws(APIError) -> JSONValue in
            let collection = collection(resource.type)
            var snapshotRevision = revision
            var startAfter: String?
            var objects = collection.objects
            if let continueToken, !continueToken.isEmpty {
                guard let data = Data(base64Encoded: continueToken), let token = try? JSONValue.parse(data),
                      let tokenRevision = token["rv"]?.int, let start = token["start"]?.string else {
                    throw .badRequest("invalid continue token")
                }
                guard let state = collection.snapshot(at: tokenRevision) else {
                    throw .gone("The provided continue parameter is too old to display a consistent list result. You can start a new list without the continue parameter.")
                }
                snapshotRevision = tokenRevision
                startAfter = start
                objects = state
            }
            let prefix = namespace.map { "\($0)/" }
            var matching: [(String, JSONValue)] = []
            for key in objects.keys.sorted() {
                if let startAfter, key <= startAfter { continue }
                if let prefix, !key.hasPrefix(prefix) { continue }
                let object = objects[key]!
                guard labels.matches(KubeObject(object).labels), fields.matches(object) else { continue }
                matching.append((key, object))
            }
            var metadata: JSONValue = ["resourceVersion": .string(String(snapshotRevision))]
            var page = matching
            if let limit, limit > 0, matching.count > limit {
                page = Array(matching.prefix(limit))
                let token: JSONValue = ["rv": .int(snapshotRevision), "start": .string(page.last!.0)]
                metadata["continue"] = .string(token.compactData.base64EncodedString())
                metadata["remainingItemCount"] = .int(matching.count - limit)
            }
            return ["apiVersion": .string(resource.type.apiVersion), "kind": .string(resource.type.kind + "List"),
                    "metadata": metadata, "items": .array(page.map { withAPIVersion($0.1, resource.type.apiVersion) })]
        }
    }

    /// Opens a watch: the events after `resourceVersion` (or a synthetic ADDED per object when none is
    /// given or it is "0"), then every change as it is committed.
    func watch(_ resource: ServedResource, namespace: String?, labels: LabelSelector, fields: FieldSelector,
               resourceVersion: String?) -> (id: Int, stream: AsyncStream<WatchMessage>) {
        lock.withLock {
            let (stream, continuation) = AsyncStream<WatchMessage>.makeStream()
            let collection = collection(resource.type)
            let prefix = namespace.map { "\($0)/" }
            let matches: @Sendable (JSONValue) -> Bool = { object in
                if let prefix, !KubeObject(object).key.hasPrefix(prefix) { return false }
                return labels.matches(KubeObject(object).labels) && fields.matches(object)
            }
            let apiVersion = resource.type.apiVersion
            nextWatcherID += 1
            let id = nextWatcherID
            if let version = resourceVersion, !version.isEmpty, version != "0" {
                guard let from = Int(version) else {
                    continuation.yield(.error(APIError.badRequest("invalid resourceVersion \"\(version)\"").status))
                    continuation.finish()
                    return (id, stream)
                }
                guard from <= revision else {
                    // The real server waits a little for its cache, then gives up the same way.
                    continuation.yield(.error(APIError(code: 504, reason: "Timeout", message: "Too large resource version: \(from), current: \(revision)",
                                                       details: ["causes": [["reason": "ResourceVersionTooLarge", "message": "Too large resource version"]],
                                                                 "retryAfterSeconds": 1]).status))
                    continuation.finish()
                    return (id, stream)
                }
                guard from >= collection.compactedThrough else {
                    continuation.yield(.error(APIError(code: 410, reason: "Expired",
                        message: "too old resource version: \(from) (\(collection.compactedThrough + 1))").status))
                    continuation.finish()
                    return (id, stream)
                }
                let replay = Watcher(matches: matches, continuation: continuation, apiVersion: apiVersion)
                for event in collection.log where event.revision > from { replay.deliver(event) }
            } else {
                for key in collection.objects.keys.sorted() {
                    let object = collection.objects[key]!
                    if matches(object) { continuation.yield(.event(type: "ADDED", object: withAPIVersion(object, apiVersion))) }
                }
            }
            collection.watchers[id] = Watcher(matches: matches, continuation: continuation, apiVersion: apiVersion)
            continuation.onTermination = { [weak self, weak collection] _ in
                guard let self else { return }
                self.lock.withLock { _ = collection?.watchers.removeValue(forKey: id) }
            }
            return (id, stream)
        }
    }

    /// Sends a BOOKMARK at the current revision to one watch (under the lock, so it is ordered after
    /// every event it covers).
    func bookmark(_ resource: ServedResource, watcher id: Int) {
        lock.withLock {
            guard let watcher = collection(resource.type).watchers[id] else { return }
            watcher.continuation.yield(.event(type: "BOOKMARK", object: [
                "kind": .string(resource.type.kind), "apiVersion": .string(resource.type.apiVersion),
                "metadata": ["resourceVersion": .string(String(revision)),
                             "annotations": ["k8s.io/initial-events-end": "true"]],
            ]))
        }
    }

    /// Ends one watch (its timeout passed, or its client went away).
    func endWatch(_ resource: ServedResource, watcher id: Int) {
        lock.withLock {
            collection(resource.type).watchers.removeValue(forKey: id)?.continuation.finish()
        }
    }

    /// Queues a blank line to one watch (see `WatchMessage.heartbeat`).
    func heartbeat(_ resource: ServedResource, watcher id: Int) {
        _ = lock.withLock { collection(resource.type).watchers[id]?.continuation.yield(.heartbeat) }
    }

    // MARK: Committing

    /// Stores `new` (nil: removes the object) as the next revision and tells the watchers.
    @discardableResult
    func commit(_ type: ResourceType, key: String, old: JSONValue?, new: JSONValue?) -> JSONValue? {
        lock.withLock {
            let collection = collection(type)
            revision += 1
            let id = Self.collectionID(type)
            let ref = ObjectRef(collection: id, key: key)
            if let old {
                index(owners: old, of: ref, adding: false)
                if let uid = KubeObject(old).uid { uids[uid] = nil }
            }
            let event: StoredEvent
            if var new {
                new[path: ["metadata", "resourceVersion"]] = .string(String(revision))
                collection.objects[key] = new
                index(owners: new, of: ref, adding: true)
                if let uid = KubeObject(new).uid { uids[uid] = ref }
                event = StoredEvent(revision: revision, kind: old == nil ? .added : .modified, key: key, old: old, new: new)
            } else {
                guard var last = old else { return nil }
                // The DELETED event carries the object's last state at the deletion's revision.
                last[path: ["metadata", "resourceVersion"]] = .string(String(revision))
                collection.objects[key] = nil
                event = StoredEvent(revision: revision, kind: .deleted, key: key, old: old, new: last)
            }
            collection.log.append(event)
            collection.trimLog(keeping: logLimit)
            collection.notify(event)
            // An object written with owner references none of which exists (its owner was deleted
            // while a controller still wrote it) goes at once, as the garbage collector removes
            // dependents whose owners are all gone.
            let stored = event.new
            if event.kind != .deleted, KubeObject(stored).deletionTimestamp == nil {
                let owners = KubeObject(stored).ownerReferences.compactMap { $0["uid"]?.string }
                if !owners.isEmpty, owners.allSatisfy({ uids[$0] == nil }) {
                    deleteObject(type, key: key, old: stored, propagation: .background)
                }
            }
            return event.new
        }
    }

    private func index(owners object: JSONValue, of ref: ObjectRef, adding: Bool) {
        for owner in KubeObject(object).ownerReferences {
            guard let uid = owner["uid"]?.string else { continue }
            if adding { dependents[uid, default: []].insert(ref) } else {
                dependents[uid]?.remove(ref)
                if dependents[uid]?.isEmpty == true { dependents[uid] = nil }
            }
        }
    }

    /// The object with this uid, wherever it is stored.
    func object(withUID uid: String) -> (type: ResourceType, key: String, object: JSONValue)? {
        lock.withLock {
            guard let ref = uids[uid], let object = collections[ref.collection]?.objects[ref.key],
                  let resource = served.values.first(where: { Self.collectionID($0.type) == ref.collection }) else { return nil }
            return (resource.type, ref.key, object)
        }
    }

    /// Compacts every log: watches and continue tokens from before now get 410.
    func compact() {
        lock.withLock {
            for collection in collections.values {
                collection.log.removeAll()
                collection.compactedThrough = revision
            }
        }
    }

    /// At once: the revision moves on (as a write elsewhere would), every log is compacted there,
    /// and every watch is cut — so every watcher's resume is answered 410, however up to date it was.
    func expireWatches() {
        lock.withLock {
            revision += 1
            compact()
            dropWatches()
        }
    }

    /// Ends every open watch (clients see the connection close and must resume).
    func dropWatches() {
        lock.withLock {
            for collection in collections.values {
                for watcher in collection.watchers.values { watcher.continuation.finish() }
                collection.watchers.removeAll()
            }
        }
    }

    var openWatchCount: Int { lock.withLock { collections.values.reduce(0) { $0 + $1.watchers.count } } }

    nonisolated(unsafe) static let timestampFormatter: ISO8601DateFormatter = {
        let formatter = ISO8601DateFormatter()
        formatter.formatOptions = [.withInternetDateTime]
        return formatter
    }()
    /// RFC 3339 in UTC, seconds resolution, as metav1.Time.
    func now() -> String { lock.withLock { Self.timestampFormatter.string(from: Date()) } }
}
