import Foundation
import JSON
import Kube
import Logging
import ServiceLifecycle

/// The operator as a `Service`: informers on ExpertPools and the children it manages (Deployments,
/// Pods, Services, ConfigMaps) feed a work queue of pool keys; workers reconcile them; a scraper
/// reads pods' load. With leader election only the leader runs any of it, and losing the lease
/// ends `run()` with `LeaderElectionError.leadershipLost` (the process exits and restarts, as
/// controller-runtime's managers do).
public final class ExpertPoolController: Service, @unchecked Sendable {
    public let client: KubeClient
    public let configuration: ControllerConfiguration
    /// Reconciles, queue depth, scrapes, scalings, leadership (`/metrics` of `eaas controller`).
    public let metrics: ControllerMetrics
    let logger: Logger
    private let lock = NSLock()
    private var synced = false
    private var elector: LeaderElector?

    public init(client: KubeClient, configuration: ControllerConfiguration = ControllerConfiguration(),
                metrics: ControllerMetrics = ControllerMetrics(), logger: Logger) {
        self.client = client
        self.configuration = configuration
        self.metrics = metrics
        self.logger = logger
        metrics.leading(false)
    }

    /// True once this instance leads (or runs without election) and its caches are filled.
    public var isSynced: Bool { lock.withLock { synced } }
    /// Whether this instance holds the lease (true without election once running).
    public var isLeader: Bool { lock.withLock { elector }?.isLeader ?? isSynced }

    public func run() async throws {
        guard let election = configuration.leaderElection else {
            try await cancelWhenGracefulShutdown { try await self.runLeading() }
            return
        }
        let elector = LeaderElector(client: client, configuration: election)
        lock.withLock { self.elector = elector }
        logger.info("waiting for leadership", metadata: ["lease": "\(election.namespace)/\(election.leaseName)", "identity": "\(election.identity)"])
        try await cancelWhenGracefulShutdown {
            try await elector.run { try await self.runLeading() }
        }
    }

    /// Everything a leader runs, until cancelled.
    func runLeading() async throws {
        logger.info("leading: starting informers")
        metrics.leading(true)
        defer { metrics.leading(false) }
        let managed = "\(PoolLabels.managedBy)=\(configuration.fieldManager)"
        let namespace = configuration.namespace
        let pools = Informer(client: client, type: ExpertPoolCRD.resource, configuration: .init(namespace: namespace))
        let deployments = Informer(client: client, type: .deployments, configuration: .init(namespace: namespace, labelSelector: managed),
                                   indexers: [InformerStore.ownerIndex.name: InformerStore.ownerIndex.function])
        let pods = Informer(client: client, type: .pods, configuration: .init(namespace: namespace, labelSelector: PoolLabels.pool),
                            indexers: [InformerStore.namespaceIndex.name: InformerStore.namespaceIndex.function])
        let services = Informer(client: client, type: .services, configuration: .init(namespace: namespace, labelSelector: managed))
        let configMaps = Informer(client: client, type: .configMaps, configuration: .init(namespace: namespace, labelSelector: managed))
        let queue = WorkQueue<String>()

        pools.addHandler { event in Task { await queue.add(event.object.key) } }
        for informer in [deployments, services, configMaps] {
            informer.addHandler { event in
                let object = event.object
                guard let owner = object.ownerReferences.first(where: { $0["controller"]?.bool == true && $0["kind"]?.string == ExpertPoolCRD.kind }),
                      let name = owner["name"]?.string else { return }
                let key = KubeObject.key(namespace: object.namespace, name: name)
                Task { await queue.add(key) }
            }
        }
        pods.addHandler { event in
            let pod = event.object
            guard let pool = pod.labels[PoolLabels.pool] else { return }
            let key = KubeObject.key(namespace: pod.namespace, name: pool)
            Task { await queue.add(key) }
        }

        let loads = LoadTracker()
        let reconciler = PoolReconciler(client: client, pools: pools.store, deployments: deployments.store, pods: pods.store,
                                        services: services.store, configMaps: configMaps.store, loads: loads,
                                        configuration: configuration, metrics: metrics, logger: logger)
        let scraper = LoadScraper(pools: pools.store, pods: pods.store, loads: loads, timeout: configuration.scrapeTimeout,
                                  metrics: metrics, logger: logger) { key in
            await queue.add(key)
        }
        defer { lock.withLock { synced = false } }
        try await withThrowingTaskGroup(of: Void.self) { group in
            for informer in [pools, deployments, pods, services, configMaps] { group.addTask { await informer.run() } }
            group.addTask { [logger] in
                for informer in [pools, deployments, pods, services, configMaps] {
                    guard await informer.waitForSync() else { return }
                }
                self.lock.withLock { self.synced = true }
                logger.info("caches synced", metadata: ["pools": "\(pools.store.count)", "deployments": "\(deployments.store.count)"])
                await withTaskGroup(of: Void.self) { workers in
                    for _ in 0..<max(1, self.configuration.workers) {
                        workers.addTask { await self.work(queue: queue, reconciler: reconciler) }
                    }
                    workers.addTask { await scraper.run() }
                }
            }
            // Ends the group on cancellation: informers and workers stop with it.
            group.addTask {
                while !Task.isCancelled { try? await Task.sleep(for: .seconds(3600)) }
                await queue.shutDown()
            }
            try await group.next()
            group.cancelAll()
            await queue.shutDown()
        }
    }

    /// One worker: takes keys off the queue until it shuts down. Failures are retried with the
    /// queue's per-key exponential backoff; success forgets the key's failures.
    private func work(queue: WorkQueue<String>, reconciler: PoolReconciler) async {
        while let key = await queue.next() {
            metrics.queue(depth: await queue.count)
            let started = ContinuousClock.now
            func elapsed() -> Double { (ContinuousClock.now - started).seconds }
            do {
                let action = try await reconciler.reconcile(key: key)
                metrics.reconcile(succeeded: true, seconds: elapsed())
                await queue.forget(key)
                if case .requeue(let delay) = action { await queue.add(key, after: delay) }
            } catch is CancellationError {
                await queue.done(key)
                return
            } catch {
                metrics.reconcile(succeeded: false, seconds: elapsed())
                let failures = await queue.failureCount(key)
                logger.warning("reconcile failed; retrying with backoff", metadata: ["pool": "\(key)", "error": "\(error)", "failures": "\(failures + 1)"])
                await queue.addRateLimited(key)
            }
            await queue.done(key)
        }
    }
}
