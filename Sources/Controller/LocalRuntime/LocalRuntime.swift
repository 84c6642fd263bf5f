import Foundation
import JSON
import Kube
import Logging
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
        /// How often readiness probes run.
        public var probePeriod: Duration = .milliseconds(500)
        public init(namespace: String, directory: String) {
            self.namespace = namespace
            self.directory = directory
        }
    }

    let client: KubeClient
    let launcher: any PodLauncher
    let configuration: Configuration
    let logger: Logger
    private let lock = NSLock()
    private var containers: [String: Container] = [:]
    /// Where address allocation goes on: a random start, so that two runtimes on one machine
    /// (two `eaas up`, or tests) rarely meet, and a bind probe for when they do.
    private var nextAddress = Int.random(in: 0..<(1 << 22))
    private var appliedSlices: [String: String] = [:]
    private var creationBackoff: [String: (failures: Int, until: ContinuousClock.Instant)] = [:]
    /// Pods created per Deployment uid that the informer has not shown yet (the ReplicaSet
    /// controller's "expectations"), so a lagging cache does not make it create them twice.
    private var pendingCreates: [String: [String: ContinuousClock.Instant]] = [:]
    private var draining: [Task<Void, Never>] = []
    private var shuttingDown = false
    /// Set by informer events; the loop looks every few milliseconds and at least every `period`.
    private var dirty = false

    final class Container: @unchecked Sendable {
        let pod: KubeObject
        let ip: String
        let launched: any LaunchedContainer
        var ready = false
        var lastProbe = ContinuousClock.now - .seconds(3600)
        var stopping = false
        init(pod: KubeObject, ip: String, launched: any LaunchedContainer) {
            self.pod = pod
            self.ip = ip
            self.launched = launched
        }
    }

    public init(client: KubeClient, launcher: any PodLauncher, configuration: Configuration, logger: Logger) {
        self.client = client
        self.launcher = launcher
        self.configuration = configuration
        self.logger = logger
    }

    /// Pods running now (name → IP), for tables and tests.
    public var runningPods: [String: String] {
        lock.withLock { Dictionary(containers.values.map { ($0.pod.name ?? "", $0.ip) }, uniquingKeysWith: { a, _ in a }) }
    }

    /// Kills one pod's process with SIGKILL, as a node failure or OOM would (for demos and tests).
    @discardableResult
    public func killPod(named name: String) -> Bool {
        guard let container = lock.withLock({ containers.values.first { $0.pod.name == name } }) else { return false }
        container.launched.kill()
        return true
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

    // MARK: Deployment controller

    private func syncDeployment(_ deployment: KubeObject, pods: InformerStore) async throws {
        guard let uid = deployment.uid, let name = deployment.name, let template = deployment.json[path: ["spec", "template"]] else { return }
        let hash = String(PoolReconciler.hash(template).prefix(10))
        let desired = deployment.json[path: ["spec", "replicas"]]?.int ?? 1
        let owned = pods.list().filter { pod in
            pod.deletionTimestamp == nil && pod.ownerReferences.contains { $0["uid"]?.string == uid }
                && !["Failed", "Succeeded"].contains(pod.json[path: ["status", "phase"]]?.string ?? "")
        }
        let current = owned.filter { $0.labels["pod-template-hash"] == hash }
        let old = owned.filter { $0.labels["pod-template-hash"] != hash }
        let seen = Set(pods.list().compactMap(\.name))
        let pending: Int = lock.withLock {
            let now = ContinuousClock.now
            let left = (pendingCreates[uid] ?? [:]).filter { !seen.contains($0.key) && now - $0.value < .seconds(30) }
            pendingCreates[uid] = left.isEmpty ? nil : left
            return left.count
        }
        let isReady: (KubeObject) -> Bool = PoolReconciler.isReady
        let readyCount = owned.filter(isReady).count

        var creates = 0
        var deletions: [KubeObject] = []
        if old.isEmpty {
            if current.count + pending < desired { creates = desired - current.count - pending }
            if current.count > desired {
                // Not-ready pods go first, then the newest.
                deletions = Array(current.sorted { a, b in
                    isReady(a) != isReady(b) ? !isReady(a) : (a.json[path: ["metadata", "creationTimestamp"]]?.string ?? "") > (b.json[path: ["metadata", "creationTimestamp"]]?.string ?? "")
                }.prefix(current.count - desired))
            }
        } else {
            // Rolling update: one surge pod, none unavailable.
            if current.count + pending < desired && owned.count + pending < desired + 1 { creates = 1 }
            if let victim = old.first(where: { !isReady($0) }) ?? (readyCount - 1 >= desired ? old.first(where: isReady) : nil) {
                deletions = [victim]
            }
        }
        if creates > 0, let backoff = lock.withLock({ creationBackoff[uid] }), ContinuousClock.now < backoff.until { creates = 0 }
        for _ in 0..<creates {
            let pod = try await createPod(for: deployment, name: name, hash: hash, template: template)
            lock.withLock { pendingCreates[uid, default: [:]][pod] = .now }
        }
        for pod in deletions {
            do { _ = try await client.delete(.pods, pod.name ?? "", namespace: pod.namespace) } catch let error as KubeAPIError where error.reason == .notFound {}
        }

        var status: JSONValue = [
            "observedGeneration": .int(deployment.generation ?? 1),
            "replicas": .int(owned.count),
            "updatedReplicas": .int(current.count),
            "readyReplicas": .int(readyCount),
            "availableReplicas": .int(readyCount),
        ]
        if owned.count - readyCount > 0 { status["unavailableReplicas"] = .int(owned.count - readyCount) }
        let existing = deployment.json["status"] ?? [:]
        if ["observedGeneration", "replicas", "updatedReplicas", "readyReplicas", "availableReplicas", "unavailableReplicas"].contains(where: {
            (existing[$0]?.int ?? 0) != (status[$0]?.int ?? 0)
        }) {
            _ = try await client.patchStatus(.deployments, name, namespace: deployment.namespace, .merge(["status": status]))
        }
    }

    /// Creates one pod of the template; returns its name.
    private func createPod(for deployment: KubeObject, name: String, hash: String, template: JSONValue) async throws -> String {
        let suffix = String((0..<5).map { _ in "bcdfghjklmnpqrstvwxz2456789".randomElement()! })
        var metadata = template["metadata"]?.object ?? [:]
        var labels = metadata["labels"]?.object ?? [:]
        labels["pod-template-hash"] = .string(hash)
        metadata["labels"] = .object(labels)
        metadata["name"] = .string("\(name)-\(hash)-\(suffix)")
        metadata["namespace"] = .string(deployment.namespace ?? configuration.namespace)
        metadata["ownerReferences"] = [deployment.controllerReference()]
        let pod: JSONValue = ["apiVersion": "v1", "kind": "Pod", "metadata": .object(metadata), "spec": template["spec"] ?? [:]]
        _ = try await client.create(.pods, KubeObject(pod), namespace: deployment.namespace)
        return "\(name)-\(hash)-\(suffix)"
    }

    // MARK: Kubelet

    private func syncKubelet(pods: InformerStore) async {
        let present = pods.list().filter { $0.deletionTimestamp == nil }
        let presentUIDs = Set(present.compactMap(\.uid))
        // Pods deleted from the API: preStop, then SIGTERM with the grace period, in the background.
        let gone: [Container] = lock.withLock {
            let gone = containers.filter { !presentUIDs.contains($0.key) }
            for key in gone.keys { containers[key] = nil }
            return Array(gone.values)
        }
        for container in gone { stop(container) }

        for pod in present {
            guard let uid = pod.uid else { continue }
            let phase = pod.json[path: ["status", "phase"]]?.string
            if phase == "Failed" || phase == "Succeeded" {
                // Finished pods run nothing (a failed pod whose delete did not go through included).
                if let container = lock.withLock({ containers.removeValue(forKey: uid) }) { stop(container) }
                continue
            }
            if let container = lock.withLock({ containers[uid] }) {
                await watch(container, pod: pod)
            } else if phase == nil || phase == "Pending" {
                await start(pod)
            }
        }
    }

    private func start(_ pod: KubeObject) async {
        guard let uid = pod.uid, let name = pod.name else { return }
        let ip = allocateAddress(ports: Self.containerPorts(pod))
        let directory = "\(configuration.directory)/\(name)"
        do {
            try FileManager.default.createDirectory(atPath: directory, withIntermediateDirectories: true)
            let local = try await localPod(pod, ip: ip, directory: directory)
            let launched = try launcher.launch(local)
            lock.withLock { containers[uid] = Container(pod: pod, ip: ip, launched: launched) }
            logger.info("pod started", metadata: ["pod": "\(name)", "ip": "\(ip)"])
            try await patchPodStatus(pod, phase: "Running", ip: ip, ready: false, message: nil)
        } catch {
            logger.warning("pod failed to start", metadata: ["pod": "\(name)", "error": "\(error)"])
            try? await patchPodStatus(pod, phase: "Failed", ip: ip, ready: false, message: "\(error)")
            await failed(pod)
        }
    }

    private func watch(_ container: Container, pod: KubeObject) async {
        if let status = container.launched.exitStatus {
            lock.withLock { containers[pod.uid ?? ""] = nil }
            logger.warning("pod's container exited; replacing the pod", metadata: ["pod": "\(pod.name ?? "")", "status": "\(status)"])
            try? await patchPodStatus(pod, phase: "Failed", ip: container.ip, ready: false, message: "container exited with status \(status)")
            await failed(pod)
            return
        }
        guard ContinuousClock.now - container.lastProbe >= configuration.probePeriod else { return }
        container.lastProbe = ContinuousClock.now
        guard let probe = Self.httpGet(pod, path: ["readinessProbe", "httpGet"]) else { return }
        let ready = (try? await PlainHTTP.get("http://\(container.ip):\(probe.port)\(probe.path)", timeout: .seconds(1)))?.status == 200
        if ready != container.ready {
            container.ready = ready
            try? await patchPodStatus(pod, phase: "Running", ip: container.ip, ready: ready, message: nil)
        }
    }

    /// A failed pod is deleted so its Deployment replaces it, with a growing pause before the next
    /// creation (a crash loop does not spin).
    private func failed(_ pod: KubeObject) async {
        if let owner = pod.ownerReferences.first?["uid"]?.string {
            lock.withLock {
                let failures = (creationBackoff[owner]?.failures ?? 0) + 1
                creationBackoff[owner] = (failures, ContinuousClock.now + .milliseconds(min(30_000, 250 << min(failures, 7))))
            }
        }
        _ = try? await client.delete(.pods, pod.name ?? "", namespace: pod.namespace)
    }

    private func stop(_ container: Container) {
        let pod = container.pod
        let grace = Duration.seconds(pod.json[path: ["spec", "terminationGracePeriodSeconds"]]?.int ?? 30)
        let preStop = Self.httpGet(pod, path: ["lifecycle", "preStop", "httpGet"])
        let ip = container.ip
        logger.info("pod stopping", metadata: ["pod": "\(pod.name ?? "")"])
        let task = Task {
            let start = ContinuousClock.now
            if let preStop, container.launched.exitStatus == nil {
                _ = try? await PlainHTTP.get("http://\(ip):\(preStop.port)\(preStop.path)", timeout: grace)
            }
            await container.launched.terminate(grace: max(.seconds(1), grace - (ContinuousClock.now - start)))
        }
        lock.withLock {
            draining.removeAll { $0.isCancelled }
            draining.append(task)
        }
        Task { [weak self] in
            await task.value
            self?.lock.withLock { self?.draining.removeAll { $0 == task } }
        }
    }

    private func stopAll() async {
        let all: [Container] = lock.withLock {
            let all = Array(containers.values)
            containers = [:]
            return all
        }
        for container in all { stop(container) }
        let tasks = lock.withLock { draining }
        for task in tasks { await task.value }
    }

    /// A loopback address (the whole of 127/8 is loopback on Linux) on which `ports` are free.
    private func allocateAddress(ports: [Int]) -> String {
        lock.withLock {
            for _ in 0..<256 {
                // 127.1.0.1 to 127.64.255.254, skipping .0 and .255.
                repeat { nextAddress = (nextAddress + 1) % (1 << 22) } while nextAddress % 256 == 0 || nextAddress % 256 == 255
                let ip = "127.\(1 + nextAddress / 65_536).\((nextAddress / 256) % 256).\(nextAddress % 256)"
                if ports.allSatisfy({ LoopbackPorts.isFree(ip: ip, port: $0) }) { return ip }
            }
            return "127.0.0.1"
        }
    }

    static func containerPorts(_ pod: KubeObject) -> [Int] {
        (pod.json[path: ["spec", "containers"]]?.array ?? []).flatMap { $0["ports"]?.array ?? [] }.compactMap { $0["containerPort"]?.int }
    }

    /// The container's command line with the pod's view of the world made local: volume mount paths
    /// become local directories (Secret volumes written out, hostPath used as is) and the wildcard
    /// address becomes the pod's own.
    private func localPod(_ pod: KubeObject, ip: String, directory: String) async throws -> LocalPod {
        guard let container = pod.json[path: ["spec", "containers"]]?.array?.first else { throw LocalRuntimeError("pod \(pod.key) has no container") }
        var volumes: [String: String] = [:]
        for volume in pod.json[path: ["spec", "volumes"]]?.array ?? [] {
            guard let name = volume["name"]?.string else { continue }
            if let secretName = volume[path: ["secret", "secretName"]]?.string {
                let secret = try await client.get(.secrets, secretName, namespace: pod.namespace)
                let local = "\(directory)/volumes/\(name)"
                try FileManager.default.createDirectory(atPath: local, withIntermediateDirectories: true)
                let data = secret.json["data"]?.object ?? [:]
                let items = volume[path: ["secret", "items"]]?.array?.compactMap { item -> (String, String)? in
                    guard let key = item["key"]?.string, let path = item["path"]?.string else { return nil }
                    return (key, path)
                } ?? data.keys.map { ($0, $0) }
                for (key, path) in items {
                    guard let encoded = data[key]?.string, let bytes = Data(base64Encoded: encoded) else {
                        throw LocalRuntimeError("Secret \(secretName) has no key '\(key)'")
                    }
                    guard FileManager.default.createFile(atPath: "\(local)/\(path)", contents: bytes, attributes: [.posixPermissions: 0o600]) else {
                        throw LocalRuntimeError("cannot write Secret \(secretName) key '\(key)' to \(local)/\(path)")
                    }
                }
                volumes[name] = local
            } else if let path = volume[path: ["hostPath", "path"]]?.string {
                volumes[name] = path
            } else if volume["emptyDir"] != nil {
                let local = "\(directory)/volumes/\(name)"
                try FileManager.default.createDirectory(atPath: local, withIntermediateDirectories: true)
                volumes[name] = local
            } else {
                throw LocalRuntimeError("volume '\(name)' of pod \(pod.key): only secret, hostPath and emptyDir volumes run locally")
            }
        }
        var mounts: [(String, String)] = []
        for mount in container["volumeMounts"]?.array ?? [] {
            guard let name = mount["name"]?.string, let path = mount["mountPath"]?.string, let local = volumes[name] else { continue }
            mounts.append((path, local))
        }
        mounts.sort { $0.0.count > $1.0.count }  // the deepest mount wins
        let args = (container["args"]?.array ?? []).compactMap(\.string).map { arg -> String in
            var arg = arg.replacingOccurrences(of: "0.0.0.0", with: ip)
            if let (path, local) = mounts.first(where: { arg == $0.0 || arg.hasPrefix($0.0 + "/") }) { arg = local + arg.dropFirst(path.count) }
            return arg
        }
        var environment: [String: String] = ["POD_NAME": pod.name ?? "", "POD_NAMESPACE": pod.namespace ?? "", "POD_IP": ip]
        for variable in container["env"]?.array ?? [] {
            if let name = variable["name"]?.string, let value = variable["value"]?.string { environment[name] = value }
        }
        return LocalPod(name: pod.name ?? "", namespace: pod.namespace ?? "", ip: ip, args: args, environment: environment, directory: directory)
    }

    /// The port (resolved by name from the container's ports) and path of an httpGet handler.
    static func httpGet(_ pod: KubeObject, path: [String]) -> (port: Int, path: String)? {
        guard let container = pod.json[path: ["spec", "containers"]]?.array?.first, let get = container[path: path] else { return nil }
        let port: Int?
        switch get["port"] {
        case .int(let number)?: port = number
        case .string(let name)?: port = container["ports"]?.array?.first { $0["name"]?.string == name }?["containerPort"]?.int ?? Int(name)
        default: port = nil
        }
        guard let port else { return nil }
        return (port, get["path"]?.string ?? "/")
    }

    private func patchPodStatus(_ pod: KubeObject, phase: String, ip: String, ready: Bool, message: String?) async throws {
        let timestamp = PoolReconciler.timestamp()
        var status: JSONValue = [
            "phase": .string(phase), "podIP": .string(ip), "podIPs": [["ip": .string(ip)]], "hostIP": "127.0.0.1",
            "conditions": [["type": "Ready", "status": ready ? "True" : "False", "lastTransitionTime": .string(timestamp)],
                           ["type": "ContainersReady", "status": ready ? "True" : "False", "lastTransitionTime": .string(timestamp)]],
        ]
        if let message { status["message"] = .string(message) }
        _ = try await client.patchStatus(.pods, pod.name ?? "", namespace: pod.namespace, .merge(["status": status]))
    }

    // MARK: EndpointSlice controller

    private func syncEndpointSlice(_ service: KubeObject, pods: InformerStore) async throws {
        guard let selector = service.json[path: ["spec", "selector"]]?.object, !selector.isEmpty, let name = service.name else { return }
        let matching = pods.list().filter { pod in
            pod.deletionTimestamp == nil && pod.json[path: ["status", "podIP"]]?.string != nil
                && selector.allSatisfy { pod.labels[$0.key] == $0.value.string }
                && !["Failed", "Succeeded"].contains(pod.json[path: ["status", "phase"]]?.string ?? "")
        }.sorted { ($0.name ?? "") < ($1.name ?? "") }
        let endpoints: [JSONValue] = matching.map { pod in
            let ready = PoolReconciler.isReady(pod)
            return [
                "addresses": [.string(pod.json[path: ["status", "podIP"]]?.string ?? "")],
                "conditions": ["ready": .bool(ready), "serving": .bool(ready), "terminating": false],
                "targetRef": ["kind": "Pod", "name": .string(pod.name ?? ""), "namespace": .string(pod.namespace ?? ""), "uid": .string(pod.uid ?? "")],
            ]
        }
        let ports: [JSONValue] = (service.json[path: ["spec", "ports"]]?.array ?? []).compactMap { port in
            var resolved = port["targetPort"]?.int ?? port["port"]?.int
            if let target = port["targetPort"]?.string, let pod = matching.first {
                resolved = pod.json[path: ["spec", "containers"]]?.array?.first?["ports"]?.array?.first { $0["name"]?.string == target }?["containerPort"]?.int
            }
            guard let resolved else { return nil }
            return ["name": port["name"] ?? "", "port": .int(resolved), "protocol": port["protocol"] ?? "TCP"]
        }
        let slice: JSONValue = [
            "apiVersion": "discovery.k8s.io/v1", "kind": "EndpointSlice",
            "metadata": ["name": .string("\(name)-local"), "namespace": .string(service.namespace ?? configuration.namespace),
                         "labels": ["kubernetes.io/service-name": .string(name), "endpointslice.kubernetes.io/managed-by": "eaas-local-runtime"],
                         "ownerReferences": [service.controllerReference()]],
            "addressType": "IPv4",
            "endpoints": .array(endpoints),
            "ports": .array(ports),
        ]
        let hash = PoolReconciler.hash(slice)
        guard lock.withLock({ appliedSlices[service.key] }) != hash else { return }
        _ = try await client.patch(.endpointSlices, "\(name)-local", namespace: service.namespace, .apply(slice, fieldManager: "eaas-local-runtime", force: true))
        lock.withLock { appliedSlices[service.key] = hash }
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
