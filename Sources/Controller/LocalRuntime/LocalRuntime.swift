import Foundation
import JSON
import Kube
import Logging
import Platform
import ServiceLifecycle

/// What a cluster does for a pool's children, done on one machine against an API server (the
/// in-process one `eaas up` starts): a Deployment controller (pods per template hash, rolling
/// updates with one surge pod and none unavailable, scale), a kubelet (each pod a child process on a
/// loopback address of its own, Secret volumes written to files, readiness probes, preStop and
/// termination grace on deletion, crashed pods failed and replaced) and an EndpointSlice controller.
/// The controller above it is the same code that runs in a cluster.
public final class LocalRuntime: Service, @unchecked Sendable {
    public struct Configuration: Sendable {
        /// The namespace whose Deployments, Pods and Services it runs.
        public var namespace: String
        /// Where pods get their directories (logs, Secret volumes).
        public var directory: String
        /// How often everything is looked at (events also wake it).
        public var period: Duration = .milliseconds(200)
        /// How often readiness probes run (in place of the probe's `periodSeconds`: one machine
        /// has no reason to wait as long as a node does). Its `timeoutSeconds`,
        /// `failureThreshold` and `successThreshold` are honoured as a kubelet does.
        public var probePeriod: Duration = .milliseconds(500)
        /// Whether pods' `resources.limits.cpu` go into a cgroup of their own (CFS quota, as a
        /// kubelet does) where this machine lets us write one; otherwise, and when false, pods with
        /// a limit get `EAAS_CPU_RATE_LIMIT` and pace themselves.
        public var cgroups = true
        public init(namespace: String, directory: String) {
            self.namespace = namespace
            self.directory = directory
        }
    }

    let client: KubeClient
    let launcher: any PodLauncher
    let configuration: Configuration
    let logger: Logger
    let cpu: PodCPU
    let lock = NSLock()
    var containers: [String: Container] = [:]
    /// Where address allocation goes on: a random start, so that two runtimes on one machine
    /// (two `eaas up`, or tests) rarely meet, and a bind probe for when they do.
    var nextAddress = Int.random(in: 0..<(1 << 22))
    var appliedSlices: [String: String] = [:]
    var creationBackoff: [String: (failures: Int, until: ContinuousClock.Instant)] = [:]
    /// Pods created per Deployment uid that the informer has not shown yet (the ReplicaSet
    /// controller's "expectations"), so a lagging cache does not make it create them twice.
    var pendingCreates: [String: [String: ContinuousClock.Instant]] = [:]
    var draining: [Task<Void, Never>] = []
    var shuttingDown = false
    /// Set by informer events; the loop looks every few milliseconds and at least every `period`.
    var dirty = false

    final class Container: @unchecked Sendable {
        let pod: KubeObject
        let ip: String
        let launched: any LaunchedContainer
        /// The pod as launched (its preStop `exec` command with local paths).
        let local: LocalPod
        var ready: Bool { readiness.ready }
        var readiness = ReadinessState()
        var lastProbe = ContinuousClock.now - .seconds(3600)
        var stopping = false
        /// The CPU time last read (for pods without a cgroup: from /proc while the process lives).
        var cpuSeconds: Double?
        init(pod: KubeObject, ip: String, launched: any LaunchedContainer, local: LocalPod) {
            self.pod = pod
            self.ip = ip
            self.launched = launched
            self.local = local
        }
    }

    public init(client: KubeClient, launcher: any PodLauncher, configuration: Configuration, logger: Logger) {
        self.client = client
        self.launcher = launcher
        self.configuration = configuration
        self.logger = logger
        cpu = PodCPU(enabled: configuration.cgroups, logger: logger)
    }

    /// How pods' CPU limits are enforced here.
    public var cpuEnforcement: CPUEnforcement { cpu.enforcement }

    /// Why the kernel does not enforce them (nil when it does).
    public var cgroupUnavailableReason: String? { cpu.unavailable }

    /// CPU seconds every pod this runtime ran has used so far, the finished ones included.
    public func cpuSeconds() -> Double {
        let live = lock.withLock { Array(containers.values) }
        return cpu.retired + live.reduce(0) { $0 + ($1.currentCPUSeconds() ?? 0) }
    }

    /// The cgroup directories of each running pod that has a group, by pod name.
    public func cpuGroupDirectories() -> [String: [String]] {
        lock.withLock {
            Dictionary(containers.values.compactMap { container in
                container.local.cpuGroup.map { (container.local.name, $0.directories) }
            }, uniquingKeysWith: { first, _ in first })
        }
    }

    public func run() async throws {
        let namespace = configuration.namespace
        let deployments = Informer(client: client, type: .deployments, configuration: .init(namespace: namespace))
        let pods = Informer(client: client, type: .pods, configuration: .init(namespace: namespace))
        let services = Informer(client: client, type: .services, configuration: .init(namespace: namespace))
        for informer in [deployments, pods, services] {
            informer.addHandler { [weak self] _ in self?.lock.withLock { self?.dirty = true } }
        }
        try? FileManager.default.createDirectory(atPath: configuration.directory, withIntermediateDirectories: true)
        await withTaskGroup(of: Void.self) { group in
            for informer in [deployments, pods, services] { group.addTask { await informer.run() } }
            group.addTask {
                await withGracefulShutdownHandler {
                    for informer in [deployments, pods, services] { guard await informer.waitForSync() else { return } }
                    while !Task.isCancelled, !self.lock.withLock({ self.shuttingDown }) {
                        await self.sync(deployments: deployments.store, pods: pods.store, services: services.store)
                        await self.waitForWork()
                    }
                } onGracefulShutdown: {
                    self.lock.withLock { self.shuttingDown = true }
                }
            }
            // The loop ends on shutdown; then the informers stop and every pod is stopped.
            await group.next()
            group.cancelAll()
        }
        await stopAll()
        cpu.close()
    }

    /// Returns when an informer saw a change, the period has passed, or shutdown began.
    private func waitForWork() async {
        let deadline = ContinuousClock.now + configuration.period
        while ContinuousClock.now < deadline, !Task.isCancelled {
            let wake: Bool = lock.withLock {
                defer { dirty = false }
                return dirty || shuttingDown
            }
            if wake { return }
            try? await Task.sleep(for: .milliseconds(10))
        }
        lock.withLock { dirty = false }
    }

    func sync(deployments: InformerStore, pods: InformerStore, services: InformerStore) async {
        for deployment in deployments.list() where deployment.deletionTimestamp == nil {
            do { try await syncDeployment(deployment, pods: pods) } catch {
                logger.warning("deployment sync failed", metadata: ["deployment": "\(deployment.key)", "error": "\(error)"])
            }
        }
        await syncKubelet(pods: pods)
        for service in services.list() {
            do { try await syncEndpointSlice(service, pods: pods) } catch {
                logger.warning("endpoint slice sync failed", metadata: ["service": "\(service.key)", "error": "\(error)"])
            }
        }
    }
}

/// Why the local runtime could not run a pod.
public struct LocalRuntimeError: Error, CustomStringConvertible, Sendable {
    public let description: String
    public init(_ description: String) { self.description = description }
}

/// Whether a TCP port can be bound on an address (another runtime's pod may hold it).
enum LoopbackPorts {
    static func isFree(ip: String, port: Int) -> Bool {
        let fd = socket(AF_INET, Int32(SOCK_STREAM.rawValue), 0)
        guard fd >= 0 else { return true }
        defer { close(fd) }
        var address = sockaddr_in()
        address.sin_family = sa_family_t(AF_INET)
        address.sin_port = in_port_t(UInt16(port).bigEndian)
        guard inet_pton(AF_INET, ip, &address.sin_addr) == 1 else { return false }
        return withUnsafePointer(to: &address) {
            $0.withMemoryRebound(to: sockaddr.self, capacity: 1) { bind(fd, $0, socklen_t(MemoryLayout<sockaddr_in>.size)) == 0 }
        }
    }
}
