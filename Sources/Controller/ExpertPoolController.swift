import Foundation
import JSON
import Kube
import Logging
import ServiceLifecycle

/// The operator as a `Service`: a `KubeController` of ExpertPools (informers on the pools and the
/// children it manages — Deployments, Services, ConfigMaps, Pods — feeding one work queue of pool
/// references) runs the `PoolReconciler`; a scraper beside it reads pods' load. With leader election only the leader runs any of it, and losing the lease
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

    /// Everything a leader runs, until cancelled: a controller of ExpertPools owning the
    /// Deployments, Services and ConfigMaps it writes, watching the pods of every pool (by their
    /// pool label), and the load scraper beside its workers.
    func runLeading() async throws {
        logger.info("leading: starting informers")
        metrics.leading(true)
        defer { metrics.leading(false) }
        let managed = "\(PoolLabels.managedBy)=\(configuration.fieldManager)"
        let namespace = configuration.namespace
        let controller = KubeController(for: ExpertPoolCRD.resource, client: client, informer: .init(namespace: namespace),
                                        configuration: .init(workers: configuration.workers))
            .owns(.deployments, .init(namespace: namespace, labelSelector: managed), indexers: [InformerStore.ownerIndex.name: InformerStore.ownerIndex.function])
            .owns(.services, .init(namespace: namespace, labelSelector: managed))
            .owns(.configMaps, .init(namespace: namespace, labelSelector: managed))
            .watches(.pods, .init(namespace: namespace, labelSelector: PoolLabels.pool),
                     indexers: [InformerStore.namespaceIndex.name: InformerStore.namespaceIndex.function]) { pod in
                pod.labels[PoolLabels.pool].map { [ObjectRef(namespace: pod.namespace, name: $0)] } ?? []
            }
        let loads = LoadTracker()
        let (pools, pods) = (controller.store(ExpertPoolCRD.resource), controller.store(.pods))
        let reconciler = PoolReconciler(client: client, pools: pools, deployments: controller.store(.deployments), pods: pods,
                                        services: controller.store(.services), configMaps: controller.store(.configMaps), loads: loads,
                                        configuration: configuration, metrics: metrics, logger: logger)
        let queue = controller.queue
        let scraper = LoadScraper(pools: pools, pods: pods, loads: loads, timeout: configuration.scrapeTimeout, metrics: metrics, logger: logger) { pool in
            await queue.add(pool)
        }
        defer { lock.withLock { synced = false } }
        let (metrics, logger) = (self.metrics, self.logger)
        await controller.run(reconcile: { try await reconciler.reconcile($0) }, report: { report in
            metrics.queue(depth: report.queueDepth)
            metrics.reconcile(succeeded: report.error == nil, seconds: report.seconds)
            if let error = report.error {
                logger.warning("reconcile failed; retrying with backoff", metadata: ["pool": "\(report.object)", "error": "\(error)", "failures": "\(report.failures)"])
            }
        }, onSynced: { [self] in
            lock.withLock { synced = true }
            logger.info("caches synced", metadata: ["pools": "\(pools.count)", "deployments": "\(controller.store(.deployments).count)"])
        }, alongside: [{ await scraper.run() }])
    }
}
