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

    /// Watches pool `pool` in `namespace`; `layers` are the model's MoE layers (every shard serves
    /// its experts in all of them).
    public init(client: KubeClient, pool: String, namespace: String, layers: [Int], logger: Logger) {
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
        let servers = Self.servers(slices: slices.store.list(), plan: document, layers: layers)
        publish(MembershipView(servers: servers))
    }

    /// Servers from EndpointSlices: one per endpoint whose pod belongs to a Deployment in the plan.
    public static func servers(slices: [KubeObject], plan: ShardPlanDocument, layers: [UInt16]) -> [ServerInfo] {
        let byDeployment = Dictionary(plan.shards.map { ($0.deployment, $0) }, uniquingKeysWith: { a, _ in a })
        var servers: [String: ServerInfo] = [:]
        for slice in slices {
            let port = slice.json["ports"]?.array?.first { $0["name"]?.string == "data" }?["port"]?.int ?? plan.port
            for endpoint in slice.json["endpoints"]?.array ?? [] {
                guard let podName = endpoint[path: ["targetRef", "name"]]?.string, let address = endpoint["addresses"]?.array?.first?.string,
                      let shard = byDeployment[deployment(ofPod: podName)] else { continue }
                // Absent `ready` means ready (the EndpointSlice API's rule).
                let ready = endpoint[path: ["conditions", "ready"]]?.bool ?? true
                let host = address.contains(":") ? "[\(address)]" : address
                let experts = layers.flatMap { layer in shard.experts.map { HostedExpert(layer: layer, expert: UInt16($0)) } }
                servers[podName] = ServerInfo(id: podName, address: "\(host):\(port)", experts: experts, ready: ready)
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
