import Foundation

/// A change the informer saw, after its store was updated.
public enum InformerEvent: Sendable {
    case added(KubeObject)
    case updated(old: KubeObject, new: KubeObject)
    /// The object is gone; this is its last known state (after a re-list, possibly not its final one).
    case deleted(KubeObject)
    /// The periodic resync: nothing changed, the object is handed out again so level-triggered
    /// controllers re-check it.
    case resync(KubeObject)

    /// The object the event is about (the new state for an update).
    public var object: KubeObject {
        switch self {
        case .added(let object), .deleted(let object), .resync(let object), .updated(_, let object): object
        }
    }
}

/// Keeps an `InformerStore` in step with the API server (the reflector: list, then watch from the
/// list's version, resume after the watch ends, list again after a 410) and tells handlers about
/// every change. A re-list is turned into the adds, updates and deletes it implies, so handlers see
/// neither duplicates nor gaps in the final state.
public final class Informer: @unchecked Sendable {
    /// Informer behaviour.
    public struct Configuration: Sendable {
        /// Namespace to watch; nil: all namespaces.
        public var namespace: String?
        public var labelSelector: String?
        public var fieldSelector: String?
        /// Hand every object to the handlers again this often (nil: never). client-go's controllers
        /// commonly use 10 hours; controllers that also requeue on their own need none.
        public var resyncPeriod: Duration?
        /// Page size of the initial and recovery lists.
        public var pageSize = 500
        /// Ask the server to end each watch after this long (it is then resumed), so that a silently
        /// dead connection is noticed. client-go picks 5–10 minutes.
        public var watchTimeout: Duration = .seconds(300)
        /// Backoff after a failed list or watch: first delay, doubling up to `maxBackoff`.
        public var backoff: Duration = .milliseconds(200)
        public var maxBackoff: Duration = .seconds(30)
        public init(namespace: String? = nil, labelSelector: String? = nil, fieldSelector: String? = nil, resyncPeriod: Duration? = nil) {
            self.namespace = namespace
            self.labelSelector = labelSelector
            self.fieldSelector = fieldSelector
            self.resyncPeriod = resyncPeriod
        }
    }

    /// Counters, for tests and metrics.
    public struct Statistics: Sendable, Equatable {
        public var lists = 0
        public var watches = 0
        /// Lists forced by a 410 (version compacted).
        public var relistsAfterGone = 0
        public var bookmarks = 0
        public var events = 0
    }

    public let client: KubeClient
    public let type: ResourceType
    public let configuration: Configuration
    public let store: InformerStore
    private let lock = NSLock()
    private var handlers: [@Sendable (InformerEvent) -> Void] = []
    private var synced = false
    private var stopped = false
    private var syncWaiters: [Int: CheckedContinuation<Bool, Never>] = [:]
    private var nextWaiterID = 0
    /// Held while the store changes and the change is handed to the handlers, so that handlers never
    /// run concurrently and a resync never hands out a state older than one already delivered.
    private let deliveryLock = NSLock()
    private var stats = Statistics()
    private var lastResourceVersion: String?

    public init(client: KubeClient, type: ResourceType, configuration: Configuration = Configuration(),
                indexers: [String: InformerStore.IndexFunction] = [:]) {
        self.client = client
        self.type = type
        self.configuration = configuration
        store = InformerStore(indexers: indexers)
    }

    /// Calls `handler` for every change from now on, one call at a time, in order (keep it quick —
    /// typically it puts a key on a `WorkQueue` — and do not call back into the informer from it).
    public func addHandler(_ handler: @escaping @Sendable (InformerEvent) -> Void) {
        lock.withLock { handlers.append(handler) }
    }

    /// Whether the first list has been stored.
    public var hasSynced: Bool { lock.withLock { synced } }
    public var statistics: Statistics { lock.withLock { stats } }

    /// Returns true once the first list has been stored; false if the informer stopped first or the
    /// waiting task was cancelled.
    @discardableResult
    public func waitForSync() async -> Bool {
        let id = lock.withLock { nextWaiterID += 1; return nextWaiterID }
        return await withTaskCancellationHandler {
            await withCheckedContinuation { continuation in
                let answer: Bool? = lock.withLock {
                    if synced { return true }
                    if stopped || Task.isCancelled { return false }
                    syncWaiters[id] = continuation
                    return nil
                }
                if let answer { continuation.resume(returning: answer) }
            }
        } onCancel: {
            lock.withLock { syncWaiters.removeValue(forKey: id) }?.resume(returning: false)
        }
    }

    /// Runs until the task is cancelled: list, watch, recover. Errors are retried with backoff, never thrown.
    public func run() async {
        await withTaskGroup(of: Void.self) { group in
            if let period = configuration.resyncPeriod {
                group.addTask { [self] in
                    while !Task.isCancelled {
                        try? await Task.sleep(for: period)
                        if Task.isCancelled { break }
                        for key in store.keys {
                            // Re-read under the delivery lock: the latest state, and none for a key gone meanwhile.
                            deliveryLock.withLock { if let object = store.get(key) { deliver(.resync(object)) } }
                        }
                    }
                }
            }
            group.addTask { [self] in await reflect() }
            await group.next()
            group.cancelAll()
        }
        let waiters = lock.withLock {
            stopped = true
            defer { syncWaiters.removeAll() }
            return Array(syncWaiters.values)
        }
        for waiter in waiters { waiter.resume(returning: false) }
    }

    // MARK: Reflector

    private func reflect() async {
        var failures = 0
        var needsList = true
        while !Task.isCancelled {
            do {
                if needsList {
                    try await listAndReplace()
                    needsList = false
                }
                try await watchOnce()
                failures = 0  // a watch that ended normally is resumed at once
            } catch is CancellationError {
                return
            } catch let error as KubeAPIError where error.reason == .gone || error.reason == .expired {
                lock.withLock { stats.relistsAfterGone += 1 }
                needsList = true
            } catch let error as KubeClientError where error == .cancelled {
                return
            } catch {
                // A failed list is tried again; a failed watch resumes from the last version seen.
                failures += 1
                let delay = min(configuration.backoff * (1 << min(failures - 1, 16)), configuration.maxBackoff)
                do { try await Task.sleep(for: delay * Double.random(in: 0.8...1.2)) } catch { return }
            }
        }
    }

    /// Lists everything and turns the difference from the store into events.
    private func listAndReplace() async throws {
        let list = try await client.listAll(type, namespace: configuration.namespace,
                                            options: ListOptions(labelSelector: configuration.labelSelector,
                                                                 fieldSelector: configuration.fieldSelector),
                                            pageSize: configuration.pageSize)
        try Task.checkCancellation()
        let waiters = deliveryLock.withLock { replace(with: list) }
        for waiter in waiters { waiter.resume(returning: true) }
    }

    /// Stores a full list and delivers the adds, updates and deletes it implies (under the delivery lock).
    private func replace(with list: ObjectList) -> [CheckedContinuation<Bool, Never>] {
        var seen = Set<String>()
        var events: [InformerEvent] = []
        for object in list.items {
            let key = object.key
            seen.insert(key)
            if let old = store.get(key) {
                if old.resourceVersion != object.resourceVersion {
                    store.upsert(object)
                    events.append(.updated(old: old, new: object))
                }
            } else {
                store.upsert(object)
                events.append(.added(object))
            }
        }
        for key in store.keys where !seen.contains(key) {
            if let old = store.remove(key) { events.append(.deleted(old)) }
        }
        let waiters = lock.withLock {
            stats.lists += 1
            lastResourceVersion = list.resourceVersion
            synced = true
            defer { syncWaiters.removeAll() }
            return Array(syncWaiters.values)
        }
        for event in events { deliver(event) }
        return waiters
    }

    /// One watch from the last version seen, until the server ends it.
    private func watchOnce() async throws {
        let seconds = Int(configuration.watchTimeout.components.seconds)
        let timeout = max(1, Int(Double(seconds) * Double.random(in: 1.0...2.0)))
        let options = WatchOptions(labelSelector: configuration.labelSelector, fieldSelector: configuration.fieldSelector,
                                   resourceVersion: lock.withLock { lastResourceVersion }, allowBookmarks: true, timeoutSeconds: timeout)
        lock.withLock { stats.watches += 1 }
        for try await event in client.watch(type, namespace: configuration.namespace, options: options) {
            deliveryLock.withLock { apply(event) }
        }
        try Task.checkCancellation()
    }

    /// Stores one watch event and delivers it (under the delivery lock).
    private func apply(_ event: WatchEvent) {
        switch event {
        case .added(let object), .modified(let object):
            let old = store.upsert(object)
            if let old {
                // A replay of a version already stored (after a resume) is not a change.
                if old.resourceVersion != object.resourceVersion { deliver(.updated(old: old, new: object)) }
            } else {
                deliver(.added(object))
            }
        case .deleted(let object):
            if store.remove(object.key) != nil { deliver(.deleted(object)) }
        case .bookmark:
            lock.withLock { stats.bookmarks += 1 }
        }
        if let version = event.resourceVersion, !version.isEmpty { lock.withLock { lastResourceVersion = version } }
    }

    private func deliver(_ event: InformerEvent) {
        let current = lock.withLock {
            if case .resync = event {} else { stats.events += 1 }
            return handlers
        }
        for handler in current { handler(event) }
    }
}
