import Foundation

/// What a reconcile asks of the loop that called it (kube-rs' `Action`).
public enum ReconcileAction: Sendable, Equatable {
    /// Nothing to do until something changes.
    case awaitChange
    /// Look again after this long even if nothing changes (scraped load, a rollout in progress).
    case requeue(after: Duration)
}

/// How one reconcile went, for metrics and logs.
public struct ReconcileReport: Sendable {
    /// The object reconciled.
    public let object: ObjectRef
    /// How long the reconcile took.
    public let seconds: Double
    /// Why it failed; nil when it succeeded.
    public let error: (any Error)?
    /// Failures of this object in a row, this one included (0 after a success): the error
    /// policy retries it after the queue's exponential backoff for that many.
    public let failures: Int
    /// Objects waiting in the queue once it finished.
    public let queueDepth: Int
}

/// A controller as kube-rs and controller-runtime have it: informers on a primary type, on the
/// types it owns (mapped to their controller owner) and on types it watches (mapped by a
/// function), one work queue of object references, and workers that run the reconciler for one
/// object at a time each — never two at once for one object. The error policy is the queue's
/// per-object exponential backoff; a success forgets the failures and honours the action.
///
///     let controller = KubeController(for: poolType, client: client)
///         .owns(.deployments, .init(labelSelector: managed))
///         .watches(.pods, .init(labelSelector: "pool")) { pod in [ObjectRef(namespace: pod.namespace, name: pod.labels["pool"]!)] }
///     await controller.run { ref in try await reconciler.reconcile(ref) }
///
/// Reconcilers read the informers' stores (`store(_:)`) and write to the API.
public final class KubeController: @unchecked Sendable {
    /// How the loop runs, with documented defaults.
    public struct Configuration: Sendable {
        /// Reconciles running at once (for different objects).
        public var workers = 2
        /// The error policy: the delay before a failed object is tried again grows from this.
        public var backoff = WorkQueue<ObjectRef>.Backoff()
        public init(workers: Int = 2, backoff: WorkQueue<ObjectRef>.Backoff = WorkQueue<ObjectRef>.Backoff()) {
            self.workers = workers
            self.backoff = backoff
        }
    }

    public let client: KubeClient
    /// The type whose objects are reconciled.
    public let primary: ResourceType
    public let configuration: Configuration
    /// The queue of objects to reconcile; other loops (a metrics scraper, say) may add to it.
    public let queue: WorkQueue<ObjectRef>
    private let lock = NSLock()
    private var informers: [(type: ResourceType, informer: Informer)] = []
    private var synced = false
    private var running = false

    /// A controller of `primary`'s objects, listed and watched with `informer`.
    public init(for primary: ResourceType, client: KubeClient, informer: Informer.Configuration = Informer.Configuration(),
                indexers: [String: InformerStore.IndexFunction] = [:], configuration: Configuration = Configuration()) {
        self.client = client
        self.primary = primary
        self.configuration = configuration
        queue = WorkQueue(backoff: configuration.backoff)
        add(primary, informer, indexers: indexers) { object in ObjectRef(object).map { [$0] } ?? [] }
    }

    /// Also watches `type`, reconciling an object's controller owner of the primary kind when it
    /// changes (children the reconciler creates with `controllerReference()`).
    @discardableResult
    public func owns(_ type: ResourceType, _ informer: Informer.Configuration = Informer.Configuration(),
                     indexers: [String: InformerStore.IndexFunction] = [:]) -> KubeController {
        let kind = primary.kind
        add(type, informer, indexers: indexers) { object in ObjectRef.controller(of: object, kind: kind).map { [$0] } ?? [] }
        return self
    }

    /// Also watches `type`, reconciling the primary objects `map` names for each change.
    @discardableResult
    public func watches(_ type: ResourceType, _ informer: Informer.Configuration = Informer.Configuration(),
                        indexers: [String: InformerStore.IndexFunction] = [:],
                        map: @escaping @Sendable (KubeObject) -> [ObjectRef]) -> KubeController {
        add(type, informer, indexers: indexers, map: map)
        return self
    }

    private func add(_ type: ResourceType, _ configuration: Informer.Configuration, indexers: [String: InformerStore.IndexFunction],
                     map: @escaping @Sendable (KubeObject) -> [ObjectRef]) {
        lock.withLock {
            precondition(!running, "a controller's watches are set before it runs")
            precondition(!informers.contains { $0.type == type }, "\(type) is watched twice")
        }
        let informer = Informer(client: client, type: type, configuration: configuration, indexers: indexers)
        let queue = self.queue
        informer.addHandler { event in
            let refs = map(event.object)
            guard !refs.isEmpty else { return }
            Task { for ref in refs { await queue.add(ref) } }
        }
        lock.withLock { informers.append((type, informer)) }
    }

    /// The cache of `type` (the primary or one it owns or watches).
    public func store(_ type: ResourceType) -> InformerStore {
        guard let informer = lock.withLock({ informers.first { $0.type == type }?.informer }) else {
            preconditionFailure("\(type) is not watched by this controller")
        }
        return informer.store
    }

    /// True while running with every cache filled.
    public var hasSynced: Bool { lock.withLock { synced } }

    /// Runs the informers; once every cache is filled, `onSynced`, then the workers and the
    /// `alongside` loops, until cancelled. Each object is reconciled by one worker at a time; a
    /// failure is retried after the queue's backoff for its failures in a row, and `report`
    /// hears of every reconcile.
    public func run(reconcile: @escaping @Sendable (ObjectRef) async throws -> ReconcileAction,
                    report: @escaping @Sendable (ReconcileReport) -> Void = { _ in },
                    onSynced: @escaping @Sendable () -> Void = {},
                    alongside: [@Sendable () async -> Void] = []) async {
        let informers: [Informer] = lock.withLock {
            precondition(!running, "a controller runs once")
            running = true
            return self.informers.map(\.informer)
        }
        defer { lock.withLock { synced = false } }
        let queue = self.queue
        let workers = max(1, configuration.workers)
        await withTaskGroup(of: Void.self) { group in
            for informer in informers { group.addTask { await informer.run() } }
            group.addTask {
                for informer in informers {
                    guard await informer.waitForSync() else { return }
                }
                self.lock.withLock { self.synced = true }
                onSynced()
                await withTaskGroup(of: Void.self) { loops in
                    for _ in 0..<workers { loops.addTask { await Self.work(queue: queue, reconcile: reconcile, report: report) } }
                    for loop in alongside { loops.addTask { await loop() } }
                }
            }
            // Ends the group on cancellation: informers, workers and loops stop with it.
            group.addTask {
                while !Task.isCancelled { try? await Task.sleep(for: .seconds(3600)) }
                await queue.shutDown()
            }
            await group.next()
            group.cancelAll()
            await queue.shutDown()
        }
    }

    /// One worker: takes objects off the queue until it shuts down.
    private static func work(queue: WorkQueue<ObjectRef>, reconcile: @Sendable (ObjectRef) async throws -> ReconcileAction,
                             report: @Sendable (ReconcileReport) -> Void) async {
        while let ref = await queue.next() {
            let started = ContinuousClock.now
            func seconds() -> Double { (ContinuousClock.now - started).seconds }
            do {
                let action = try await reconcile(ref)
                await queue.forget(ref)
                if case .requeue(let delay) = action { await queue.add(ref, after: delay) }
                report(ReconcileReport(object: ref, seconds: seconds(), error: nil, failures: 0, queueDepth: await queue.count))
            } catch is CancellationError {
                await queue.done(ref)
                return
            } catch {
                let failures = await queue.failureCount(ref) + 1
                await queue.addRateLimited(ref)
                report(ReconcileReport(object: ref, seconds: seconds(), error: error, failures: failures, queueDepth: await queue.count))
            }
            await queue.done(ref)
        }
    }
}
