import Foundation
import JSON
import Kube
import Logging
import Transport

/// Where attention workers in a cluster learn which ready pods serve which experts: the
/// EndpointSlices of the pool's headless Service (ready pod IPs) and the `<pool>-shard-plan`
/// ConfigMap (which Deployment serves which experts), both watched straight from the API server.
/// The controller is not on this path: workers keep working while it restarts.
///
/// An endpoint's pod is mapped to its shard by its name: Deployment pods are named
/// `<deployment>-<template hash>-<suffix>`.
public final class KubernetesMembership: MembershipSource, @unchecked Sendable {
    public let pool: String
    public let namespace: String
    let layers: [UInt16]
    let logger: Logger
    private let slices: Informer
    private let plans: Informer
    private let lock = NSLock()
    private var view = MembershipView(servers: [])
    private var subscribers: [UUID: AsyncStream<MembershipView>.Continuation] = [:]
    private var task: Task<Void, Never>?
    /// Serializes rebuilds: the two informers' handlers run concurrently, and an older view must
    /// never be published after a newer one.
    private let rebuildLock = NSLock()
    /// Asks a pod what it hosts (the data-plane handshake); nil when it does not answer.
    public typealias Verifier = @Sendable (_ address: String) -> [HostedExpert]?
    private let verify: Verifier?

    /// The verifier workers use: the data-plane handshake with `configuration` (its pool token and
    /// model digest). A pod of another model is skipped, and said so once per address.
    public static func handshakeVerifier(configuration: Dispatcher.Configuration, logger: Logger) -> Verifier {
        let warned = NSLock()
        nonisolated(unsafe) var reported: Set<String> = []
        return { address in
            do {
                return try ServerLinks.probe(address: address, configuration: configuration).experts
            } catch let error as Dispatcher.StepError {
                if case .wrongModel = error, warned.withLock({ reported.insert(address).inserted }) {
                    logger.warning("expert pod skipped", metadata: ["address": "\(address)", "reason": "\(error)"])
                }
                return nil
            } catch {
                return nil
            }
        }
    }
    /// What each pod (`name@address`) said it hosts, and pods whose answer is awaited or failed.
    private var verified: [String: [HostedExpert]] = [:]
    private var probing: Set<String> = []
    private var failedAt: [String: ContinuousClock.Instant] = [:]

    /// Watches pool `pool` in `namespace`; `layers` are the model's MoE layers (every shard serves
    /// its experts in all of them). With `verify`, a pod joins only once it has said over the data
    /// plane what it hosts, and its own answer is used: during a rollout that regroups experts, a
    /// ready pod of the old template is not mistaken for one of the new.
    public init(client: KubeClient, pool: String, namespace: String, layers: [Int], verify: Verifier? = nil, logger: Logger) {
        self.verify = verify
        self.pool = pool
        self.namespace = namespace
        self.layers = layers.map { UInt16($0) }
        self.logger = logger
        slices = Informer(client: client, type: .endpointSlices,
                          configuration: .init(namespace: namespace, labelSelector: "kubernetes.io/service-name=\(pool)"))
        plans = Informer(client: client, type: .configMaps,
                         configuration: .init(namespace: namespace, fieldSelector: "metadata.name=\(PoolLabels.planConfigMap(pool: pool))"))
        for informer in [slices, plans] { informer.addHandler { [weak self] _ in self?.rebuild() } }
    }

    deinit { task?.cancel() }

    /// Starts watching; returns once both caches are filled (false if cancelled first).
    public func start() async -> Bool {
        let slices = self.slices
        let plans = self.plans
        lock.withLock {
            task = Task {
                await withTaskGroup(of: Void.self) { group in
                    group.addTask { await slices.run() }
                    group.addTask { await plans.run() }
                }
            }
        }
        let synced = await slices.waitForSync()
        let planned = await plans.waitForSync()
        rebuild()
        return synced && planned
    }

    /// Stops watching and ends every `changes()` stream.
    public func stop() {
        let (task, subscribers) = lock.withLock { (self.task, self.subscribers) }
        task?.cancel()
        for continuation in subscribers.values { continuation.finish() }
    }

    public func current() -> MembershipView { lock.withLock { view } }

    public func changes() -> AsyncStream<MembershipView> {
        let (stream, continuation) = AsyncStream<MembershipView>.makeStream(bufferingPolicy: .bufferingNewest(1))
        let id = UUID()
        let current = lock.withLock {
            subscribers[id] = continuation
            return view
        }
        continuation.yield(current)
        continuation.onTermination = { [weak self] _ in _ = self?.lock.withLock { self?.subscribers.removeValue(forKey: id) } }
        return stream
    }

    /// The view from the two caches now.
    func rebuild() {
        rebuildLock.withLock {
            guard let plan = plans.store.list().first.flatMap({ $0.json[path: ["data", "plan.json"]]?.string }) else {
                publish(MembershipView(servers: []))
                return
            }
            let document: ShardPlanDocument
            do {
                document = try ShardPlanDocument(json: try JSONValue.parse(plan))
            } catch {
                logger.warning("shard plan unreadable; keeping the last membership", metadata: ["pool": "\(pool)", "error": "\(error)"])
                return
            }
            var servers = Self.servers(slices: slices.store.list(), plan: document, layers: layers)
            if verify != nil { servers = verified(servers) }
            publish(MembershipView(servers: servers))
        }
    }

    /// The servers whose own answer is known, with the experts they named; the others are probed
    /// (on a thread: the handshake blocks) and join when they answer.
    private func verified(_ servers: [ServerInfo]) -> [ServerInfo] {
        var known: [ServerInfo] = []
        var toProbe: [String] = []
        lock.withLock {
            let live = Set(servers.map { "\($0.id)@\($0.address)" })
            verified = verified.filter { live.contains($0.key) }
            failedAt = failedAt.filter { live.contains($0.key) }
            for server in servers {
                let key = "\(server.id)@\(server.address)"
                if let experts = verified[key] {
                    var server = server
                    server.experts = experts
                    known.append(server)
                } else if !probing.contains(key), server.ready, failedAt[key].map({ ContinuousClock.now - $0 > .seconds(1) }) ?? true {
                    probing.insert(key)
                    toProbe.append(key)
                }
            }
        }
        if !toProbe.isEmpty, let verify {
            let keys = toProbe
            Thread { [weak self] in
                var failures = 0
                for key in keys {
                    let address = String(key[key.index(after: key.lastIndex(of: "@")!)...])
                    let experts = verify(address)
                    if experts == nil { failures += 1 }
                    self?.lock.withLock {
                        self?.probing.remove(key)
                        if let experts { self?.verified[key] = experts } else { self?.failedAt[key] = .now }
                    }
                }
                // A pod that did not answer is asked again a little later.
                if failures > 0 { Thread.sleep(forTimeInterval: 1.1) }
                self?.rebuild()
            }.start()
        }
        return known
    }

    /// Servers from EndpointSlices: one per endpoint whose pod belongs to a Deployment in the plan.
    public static func servers(slices: [KubeObject], plan: ShardPlanDocument, layers: [UInt16]) -> [ServerInfo] {
        let byDeployment = Dictionary(plan.shards.map { ($0.deployment, $0) }, uniquingKeysWith: { a, _ in a })
        var servers: [String: ServerInfo] = [:]
        for slice in slices.map(EndpointSliceView.init) {
            let port = slice.port(named: "data") ?? plan.port
            for endpoint in slice.endpoints {
                guard let podName = endpoint.podName, let address = endpoint.addresses.first,
                      let shard = byDeployment[deployment(ofPod: podName)] else { continue }
                let host = address.contains(":") ? "[\(address)]" : address
                let experts = layers.flatMap { layer in shard.experts.map { HostedExpert(layer: layer, expert: UInt16($0)) } }
                servers[podName] = ServerInfo(id: podName, address: "\(host):\(port)", experts: experts, ready: endpoint.ready)
            }
        }
        return Array(servers.values)
    }

    /// `<deployment>-<hash>-<suffix>` → `<deployment>`.
    public static func deployment(ofPod name: String) -> String {
        var parts = name.split(separator: "-", omittingEmptySubsequences: false)
        guard parts.count > 2 else { return name }
        parts.removeLast(2)
        return parts.joined(separator: "-")
    }

    private func publish(_ fresh: MembershipView) {
        let subscribers: [AsyncStream<MembershipView>.Continuation]? = lock.withLock {
            guard fresh != view else { return nil }
            view = fresh
            return Array(self.subscribers.values)
        }
        for continuation in subscribers ?? [] { continuation.yield(fresh) }
    }
}
