import Controller
import Foundation
import Hummingbird
import JSON
import Kube
import KubeTestServer
import Logging
import Testing

/// Load each shard receives (tokens/s, shared by its running fake pods), set by the test.
final class ShardLoad: @unchecked Sendable {
    private let lock = NSLock()
    private var rates: [String: Double] = [:]
    private var pods: [String: Set<String>] = [:]
    private var digests: [String: String] = [:]
    func set(_ shard: String, _ rate: Double) { lock.withLock { rates[shard] = rate } }
    /// The model digest pod `pod` reports (`eaas_model_info`); "d0d0" unless set.
    func setDigest(_ pod: String, _ digest: String) { lock.withLock { digests[pod] = digest } }
    func digest(_ pod: String) -> String { lock.withLock { digests[pod] ?? "d0d0" } }
    /// Data-plane clients pod `pod` reports (`eaas_clients`); 0 unless set.
    private var clients: [String: Int] = [:]
    func setClients(_ pod: String, _ count: Int) { lock.withLock { clients[pod] = count } }
    func clients(_ pod: String) -> Int { lock.withLock { clients[pod] ?? 0 } }
    func join(_ shard: String, _ pod: String) { _ = lock.withLock { pods[shard, default: []].insert(pod) } }
    func leave(_ shard: String, _ pod: String) { _ = lock.withLock { pods[shard]?.remove(pod) } }
    func perPod(_ shard: String) -> Double { lock.withLock { (rates[shard] ?? 0) / Double(max(1, pods[shard]?.count ?? 1)) } }

    // Per-expert load (load-aware placement): each expert's rate divided among the pods hosting it.
    private var expertRates: [Int: Double]?
    private var hosts: [Int: Set<String>] = [:]
    func setExperts(_ rates: [Int: Double]) { lock.withLock { expertRates = rates } }
    var perExpert: Bool { lock.withLock { expertRates != nil } }
    func host(_ pod: String, experts: [Int], joining: Bool) {
        lock.withLock { for expert in experts { if joining { hosts[expert, default: []].insert(pod) } else { hosts[expert]?.remove(pod) } } }
    }
    func perPod(expert: Int) -> Double { lock.withLock { (expertRates?[expert] ?? 0) / Double(max(1, hosts[expert]?.count ?? 1)) } }
}

/// A launcher whose "containers" are HTTP servers in this process on the pod's address: `/metrics`
/// with an expert token counter growing at the shard's load divided among its pods, `/readyz`, `/drain`.
struct FakeExpertLauncher: PodLauncher {
    let load: ShardLoad

    func launch(_ pod: LocalPod) throws -> any LaunchedContainer {
        guard let portIndex = pod.args.firstIndex(of: "--metrics-port"), let port = Int(pod.args[portIndex + 1]) else {
            throw LocalRuntimeError("no --metrics-port in \(pod.args)")
        }
        let shard = pod.name.split(separator: "-").dropFirst().first.map(String.init) ?? "?"
        return FakeContainer(pod: pod, port: port, shard: shard, load: load)
    }
}

final class FakeContainer: LaunchedContainer, @unchecked Sendable {
    private let lock = NSLock()
    private var status: Int32?
    private var task: Task<Void, Never>?
    private var tokens = 0.0
    private var expertTokens: [Int: Double] = [:]
    private var last = ContinuousClock.now
    let shard: String
    /// The experts its `--shard` names.
    let experts: [Int]
    let name: String
    let load: ShardLoad

    init(pod: LocalPod, port: Int, shard: String, load: ShardLoad) {
        self.shard = shard
        self.name = pod.name
        self.load = load
        experts = pod.args.firstIndex(of: "--shard").flatMap { index in
            pod.args[index + 1].split(separator: ",").flatMap { part -> [Int] in
                let bounds = part.split(separator: "-").compactMap { Int($0) }
                return bounds.count == 2 ? Array(bounds[0]...bounds[1]) : bounds
            }
        } ?? []
        load.join(shard, pod.name)
        load.host(pod.name, experts: experts, joining: true)
        let router = Router()
        router.get("metrics") { [weak self] _, _ -> String in
            guard let self else { return "" }
            if load.perExpert {
                let lines: [String] = self.lock.withLock {
                    let now = ContinuousClock.now
                    let elapsed = now - self.last
                    self.last = now
                    return self.experts.map { expert in
                        self.expertTokens[expert, default: 0] += load.perPod(expert: expert) * (Double(elapsed.components.seconds) + Double(elapsed.components.attoseconds) * 1e-18)
                        return "eaas_expert_tokens_total{layer=\"1\",expert=\"\(expert)\"} \(Int(self.expertTokens[expert]!))"
                    }
                }
                return lines.joined(separator: "\n") + "\neaas_busy_seconds_total 0\neaas_model_info{digest=\"\(load.digest(self.name))\"} 1\n"
                    + "eaas_clients \(load.clients(self.name))\n"
            }
            let total: Double = self.lock.withLock {
                let now = ContinuousClock.now
                let elapsed = now - self.last
                self.tokens += load.perPod(shard) * (Double(elapsed.components.seconds) + Double(elapsed.components.attoseconds) * 1e-18)
                self.last = now
                return self.tokens
            }
            return "eaas_expert_tokens_total{layer=\"1\",expert=\"0\"} \(Int(total))\neaas_busy_seconds_total 0\n"
                + "eaas_model_info{digest=\"\(load.digest(self.name))\"} 1\neaas_clients \(load.clients(self.name))\n"
        }
        router.get("readyz") { _, _ in "ready\n" }
        router.get("healthz") { _, _ in "ok\n" }
        router.get("drain") { _, _ in "drained\n" }
        let app = Application(router: router, configuration: .init(address: .hostname(pod.ip, port: port)), logger: { var logger = Logger(label: "fake-pod"); logger.logLevel = .critical; return logger }())
        task = Task { try? await app.runService() }
    }

    var exitStatus: Int32? { lock.withLock { status } }

    func terminate(grace: Duration) async { stop(0) }
    func kill() { stop(137) }

    private func stop(_ code: Int32) {
        let task: Task<Void, Never>? = lock.withLock {
            guard status == nil else { return nil }
            status = code
            return self.task
        }
        load.leave(shard, name)
        load.host(name, experts: experts, joining: false)
        task?.cancel()
    }
}

/// The operator against the test API server, with the local runtime running pods as in-process
/// HTTP servers: children and status, load-driven scaling with a stabilized scale-down, an edit
/// rolled out, a bad edit reported without tearing anything down, deletion by garbage collection.
@Suite("ExpertPool operator", .serialized)
struct OperatorScenarioTests {
    static let namespace = "default"

    static func pool(name: String = "tiny", minReplicas: Int = 1, maxReplicas: Int = 3, label: String? = nil) -> KubeObject {
        var template: JSONValue = ["image": "eaas:test"]
        if let label { template["labels"] = ["edit": .string(label)] }
        return KubeObject(ExpertPoolCRD.resource, name: name, namespace: namespace, fields: ["spec": [
            "model": ["path": "/models/tiny", "experts": 2],
            "shards": ["expertsPerShard": 1],
            "replicas": ["min": .int(minReplicas), "max": .int(maxReplicas)],
            "autoscaling": ["target": 100, "scrapeIntervalSeconds": 1,
                            "behavior": ["scaleDown": ["stabilizationWindowSeconds": 4]]],
            "transport": ["backend": "tcp", "port": 7070, "metricsPort": 9090],
            "poolTokenSecret": ["name": "tiny-token"],
            "drainSeconds": 1,
            "template": template,
        ]])
    }

    final class Rig: @unchecked Sendable {
        let server: TestAPIServer
        let client: KubeClient
        let load = ShardLoad()
        private let lock = NSLock()
        private var tasks: [Task<Void, Never>] = []

        init(server: TestAPIServer, client: KubeClient) {
            self.server = server
            self.client = client
        }

        func track(_ task: Task<Void, Never>) { lock.withLock { tasks.append(task) } }

        /// With `launcher`, pods run as it launches them (real `eaas expert-pod` processes, say);
        /// by default as the fake HTTP servers above, loaded from `load`.
        static func start(controllers: Int = 1, launcher: (any PodLauncher)? = nil) async throws -> Rig {
            let server = try await TestAPIServer()
            var configuration = KubeClient.Configuration()
            configuration.qps = 0
            configuration.retryDelay = .milliseconds(5)
            let client = KubeClient(connection: server.connection, configuration: configuration)
            _ = try await client.create(.customResourceDefinitions, KubeObject(ExpertPoolCRD.definition))
            _ = try await client.create(.secrets, KubeObject(.secrets, name: "tiny-token", namespace: namespace, fields: ["data": ["token": "c2VjcmV0"]]))
            let rig = Rig(server: server, client: client)
            var runtimeConfiguration = configuration
            runtimeConfiguration.userAgent = "eaas-local-runtime/1"
            let runtime = LocalRuntime(client: KubeClient(connection: server.connection, configuration: runtimeConfiguration), launcher: launcher ?? FakeExpertLauncher(load: rig.load),
                                       configuration: .init(namespace: namespace, directory: NSTemporaryDirectory() + "eaas-operator-test-\(UUID().uuidString)"),
                                       logger: { var logger = Logger(label: "runtime"); logger.logLevel = .warning; return logger }())
            rig.track(Task { try? await runtime.run() })
            return rig
        }

        func controller(election: LeaderElector.Configuration? = nil) -> ExpertPoolController {
            var configuration = ControllerConfiguration()
            configuration.leaderElection = election
            configuration.scrapeTimeout = .seconds(2)
            configuration.secretRecheck = .seconds(1)
            var clientConfiguration = KubeClient.Configuration()
            clientConfiguration.qps = 0
            clientConfiguration.retryDelay = .milliseconds(5)
            clientConfiguration.userAgent = "eaas-controller/1"
            let controllerClient = KubeClient(connection: server.connection, configuration: clientConfiguration)
            var logger = Logger(label: "controller")
            logger.logLevel = .error
            return ExpertPoolController(client: controllerClient, configuration: configuration, logger: logger)
        }

        func stop() async {
            let tasks = lock.withLock { self.tasks }
            for task in tasks { task.cancel() }
            for task in tasks { await task.value }
            await server.shutdown()
        }

        func pool(_ name: String = "tiny") -> KubeObject? { server.object(ExpertPoolCRD.resource, name, namespace: OperatorScenarioTests.namespace) }
        func status(_ name: String = "tiny") -> ExpertPoolStatus? {
            pool(name)?.json["status"].flatMap { try? ExpertPoolStatus(specJSON: $0, path: "status") }
        }
        func replicas(_ deployment: String) -> Int? {
            server.object(.deployments, deployment, namespace: OperatorScenarioTests.namespace)?.json[path: ["spec", "replicas"]]?.int
        }
        /// Read-modify-write of the pool's spec, again on a 409 (the controller writes its status meanwhile).
        func editPool(_ change: (inout JSONValue) -> Void) async throws -> KubeObject {
            while true {
                var pool = try await client.get(ExpertPoolCRD.resource, "tiny", namespace: OperatorScenarioTests.namespace)
                var spec = pool.json["spec"] ?? [:]
                change(&spec)
                pool.json["spec"] = spec
                do { return try await client.update(ExpertPoolCRD.resource, pool, namespace: OperatorScenarioTests.namespace) } catch let error as KubeAPIError where error.code == 409 {
                    continue
                }
            }
        }

        func events(reason: String) async throws -> [KubeObject] {
            try await client.list(.events, namespace: OperatorScenarioTests.namespace).items.filter { $0.json["reason"]?.string == reason }
        }
    }

    static func until(_ what: String, timeout: Duration = .seconds(30), _ condition: () async throws -> Bool) async throws {
        let deadline = ContinuousClock.now + timeout
        while ContinuousClock.now < deadline {
            if try await condition() { return }
            try await Task.sleep(for: .milliseconds(50))
        }
        if try await condition() { return }
        Issue.record("timed out waiting for: \(what)")
        throw CancellationError()
    }

    @Test("a pool gets its children and status; load scales a shard up, a quiet shard down after the window; edits roll out; bad edits keep what runs; deletion collects")
    func lifecycle() async throws {
        let rig = try await Rig.start()
        let controller = rig.controller()
        rig.track(Task { try? await controller.run() })
        do { try await lifecycleSteps(rig) } catch {
            await rig.stop()
            throw error
        }
        // The controller's own metrics saw it all.
        let metrics = controller.metrics.text()
        for line in [#"eaas_controller_reconciles_total{result="success"}"#, #"eaas_controller_scrapes_total{result="ok"}"#,
                     #"eaas_controller_scalings_total{direction="up"}"#, #"eaas_controller_scalings_total{direction="down"}"#] {
            let value = metrics.split(separator: "\n").first { $0.hasPrefix(line + " ") }.flatMap { Double($0.split(separator: " ").last ?? "") }
            #expect((value ?? 0) > 0, "\(line) in:\n\(metrics)")
        }
        #expect(metrics.contains("eaas_controller_leader 1"))
        await rig.stop()
    }

    func lifecycleSteps(_ rig: Rig) async throws {
        let client = rig.client
        _ = try await client.create(ExpertPoolCRD.resource, Self.pool(), namespace: Self.namespace)

        // Children and status.
        try await Self.until("both shards ready") { rig.status()?.readyReplicas == 2 && rig.status()?.condition("Ready")?.status == .true }
        let status = try #require(rig.status())
        #expect(status.observedGeneration == 1)
        #expect(status.shards.map(\.name) == ["s0", "s1"])
        #expect(status.shards.map(\.experts) == ["0", "1"])
        #expect(status.selector == "eaas.dev/pool=tiny")
        let poolUID = try #require(rig.pool()?.uid)
        for name in ["tiny-s0", "tiny-s1"] {
            let deployment = try #require(rig.server.object(.deployments, name, namespace: Self.namespace))
            #expect(deployment.ownerReferences.first?["uid"]?.string == poolUID)
        }
        #expect(rig.server.object(.services, "tiny", namespace: Self.namespace)?.json[path: ["spec", "clusterIP"]] == "None")
        #expect(rig.server.object(.configMaps, "tiny-shard-plan", namespace: Self.namespace) != nil)
        try await Self.until("the EndpointSlice lists both ready pods") {
            let slice = rig.server.object(.endpointSlices, "tiny-local", namespace: Self.namespace)
            return slice?.json["endpoints"]?.array?.filter { $0[path: ["conditions", "ready"]] == true }.count == 2
        }

        // Attention workers' membership straight from the API: both shards' experts, ready.
        let membership = KubernetesMembership(client: client, pool: "tiny", namespace: Self.namespace, layers: [1], logger: Logger(label: "membership"))
        #expect(await membership.start())
        try await Self.until("membership has both shards") { membership.current().hostedExperts.count == 2 }
        membership.stop()

        // Load rises on s0: 250 tokens/s against a target of 100 per replica → 3 replicas (the max).
        rig.load.set("s0", 250)
        try await Self.until("s0 scales up to 3") { rig.replicas("tiny-s0") == 3 }
        try await Self.until("three s0 pods ready") { rig.status()?.shards.first?.readyReplicas == 3 }
        #expect(rig.replicas("tiny-s1") == 1)
        try await Self.until("a ScaledUp event") { try await !rig.events(reason: "ScaledUp").isEmpty }

        // More load than the max allows: held at 3 with ScalingLimited.
        rig.load.set("s0", 600)
        try await Self.until("ScalingLimited TooManyReplicas") { rig.status()?.condition("ScalingLimited")?.reason == "TooManyReplicas" }
        #expect(rig.replicas("tiny-s0") == 3)

        // Load falls: the scale-down waits for the 4 s stabilization window.
        rig.load.set("s0", 0)
        let quiet = ContinuousClock.now
        try await Self.until("the pool reports s0's load gone") { rig.status()?.shards.first?.load == 0 }
        #expect(rig.replicas("tiny-s0") == 3, "scaled down before the stabilization window passed")
        try await Self.until("s0 scales down to 1", timeout: .seconds(40)) { rig.replicas("tiny-s0") == 1 }
        #expect(ContinuousClock.now - quiet >= .seconds(3))
        // The Event follows the write that scaled.
        try await Self.until("a ScaledDown event") { try await !rig.events(reason: "ScaledDown").isEmpty }

        // An edit rolls out: generation 2 observed, the pods replaced by ones of the new template.
        let before = Set(try await client.list(.pods, namespace: Self.namespace).items.compactMap(\.name))
        _ = try await rig.editPool { $0 = Self.pool(label: "v2").json["spec"]! }
        try await Self.until("observedGeneration 2 and rolled out") {
            guard let status = rig.status(), status.observedGeneration == 2, status.condition("Progressing")?.status == .false, status.readyReplicas == 2 else { return false }
            let pods = try await client.list(.pods, namespace: Self.namespace).items
            return pods.count == 2 && pods.allSatisfy { $0.labels["edit"] == "v2" }
        }
        #expect(Set(try await client.list(.pods, namespace: Self.namespace).items.compactMap(\.name)).isDisjoint(with: before))

        // What the schema can catch, the API server refuses (min > max by the CEL rule, an unknown backend by the enum).
        do {
            _ = try await rig.editPool { $0 = Self.pool(minReplicas: 5, maxReplicas: 2, label: "v2").json["spec"]! }
            Issue.record("min > max was accepted")
        } catch let error as KubeAPIError {
            #expect(error.code == 422)
            #expect(error.message.contains("replicas.min must not exceed replicas.max"))
        }
        do {
            _ = try await rig.editPool { $0[path: ["transport", "backend"]] = "udp" }
            Issue.record("an unknown backend was accepted")
        } catch let error as KubeAPIError {
            #expect(error.causes.contains { $0.field == "spec.transport.backend" })
        }

        // What it cannot (explicit shards that miss an expert) is reported; nothing running changes.
        _ = try await rig.editPool { $0["shards"] = ["explicit": [["name": "a", "experts": [0]]]] }
        try await Self.until("Degraded InvalidShardPlan") {
            rig.status()?.condition("Degraded")?.reason == "InvalidShardPlan" && rig.status()?.observedGeneration == 3
        }
        #expect(rig.status()?.condition("Degraded")?.message.contains("no shard serves expert 1") == true)
        #expect(rig.replicas("tiny-s0") == 1)
        #expect(rig.replicas("tiny-s1") == 1)
        #expect(try await client.list(.pods, namespace: Self.namespace).items.count == 2)

        // Fixed with another grouping: one shard of both experts; the old shards' Deployments go.
        _ = try await rig.editPool { $0["shards"] = ["explicit": [["name": "both", "experts": [0, 1]]]] }
        try await Self.until("one shard serving both experts") {
            guard let status = rig.status(), status.observedGeneration == 4, status.condition("Degraded")?.status == .false,
                  status.shards.map(\.name) == ["both"], status.readyReplicas == 1 else { return false }
            return rig.replicas("tiny-s0") == nil && rig.replicas("tiny-s1") == nil
        }

        // The controller used exactly what its ClusterRole and the pool namespace's Role (the
        // pool-token Secret) grant: no verb missing, none unused. Secrets are not in the ClusterRole,
        // and it read them only in the pool's namespace.
        let controllerRecords = rig.server.audit.records.filter { $0.userAgent == "eaas-controller" }
        let used = Set(controllerRecords.map { "\($0.group)/\($0.resource):\($0.verb)" })
        let clusterWide = try RBACRules.granted(file: "Manifests/rbac/cluster-role.yaml")
        let inPoolNamespace = try RBACRules.granted(file: "Manifests/samples/controller-rbac.yaml")
        #expect(!clusterWide.contains { $0.hasPrefix("/secrets:") }, "the ClusterRole grants Secrets: \(clusterWide.sorted())")
        #expect(controllerRecords.filter { $0.resource == "secrets" }.allSatisfy { $0.namespace == Self.namespace })
        let granted = clusterWide.union(inPoolNamespace)
        #expect(used.subtracting(granted).isEmpty, "used but not granted: \(used.subtracting(granted).sorted())")
        #expect(granted.subtracting(used).isEmpty, "granted but never used: \(granted.subtracting(used).sorted())")

        // Deletion: the garbage collector removes every child through its owner reference.
        _ = try await client.delete(ExpertPoolCRD.resource, "tiny", namespace: Self.namespace)
        try await Self.until("children collected") {
            rig.server.object(.deployments, "tiny-s0", namespace: Self.namespace) == nil
                && rig.server.object(.services, "tiny", namespace: Self.namespace) == nil
                && rig.server.object(.configMaps, "tiny-shard-plan", namespace: Self.namespace) == nil
        }
    }

    @Test("a pool whose Secret is missing is Degraded SecretNotFound and gets no pods; once the Secret exists it is served; a Secret it may not read is SecretForbidden")
    func missingSecret() async throws {
        let rig = try await Rig.start()
        let controller = rig.controller()
        rig.track(Task { try? await controller.run() })
        do {
            var pool = Self.pool(name: "nosecret")
            pool.json[path: ["spec", "poolTokenSecret", "name"]] = "late-token"
            _ = try await rig.client.create(ExpertPoolCRD.resource, pool, namespace: Self.namespace)
            try await Self.until("Degraded SecretNotFound") {
                rig.status("nosecret")?.condition("Degraded")?.reason == "SecretNotFound"
            }
            #expect(rig.status("nosecret")?.condition("Degraded")?.message.contains("late-token") == true)
            #expect(try await rig.client.list(.deployments, namespace: Self.namespace).items.isEmpty)
            _ = try await rig.client.create(.secrets, KubeObject(.secrets, name: "late-token", namespace: Self.namespace,
                                                                 fields: ["data": ["token": "c2VjcmV0"]]))
            try await Self.until("served once the Secret exists") {
                rig.status("nosecret")?.condition("Degraded")?.status == .false && rig.status("nosecret")?.readyReplicas == 2
            }
            // A Secret the controller's Role does not cover is a setup mistake named as such, and
            // what runs is kept.
            var forbidden = Self.pool(name: "forbidden")
            forbidden.json[path: ["spec", "poolTokenSecret", "name"]] = "elsewhere-token"
            rig.server.failNext(1000, status: 403) { method, path in method == "GET" && path.hasSuffix("/secrets/elsewhere-token") }
            _ = try await rig.client.create(ExpertPoolCRD.resource, forbidden, namespace: Self.namespace)
            try await Self.until("Degraded SecretForbidden") { rig.status("forbidden")?.condition("Degraded")?.reason == "SecretForbidden" }
            #expect(rig.status("forbidden")?.condition("Degraded")?.message.contains("poolTokenSecrets") == true)
            #expect(rig.status("nosecret")?.readyReplicas == 2)
            rig.server.clearFaults()
        } catch {
            await rig.stop()
            throw error
        }
        await rig.stop()
    }

    @Test("pods that serve different checkpoints are named in the status (ModelsAgree False MixedModels); one checkpoint again: True")
    func mixedModels() async throws {
        let rig = try await Rig.start()
        let controller = rig.controller()
        rig.track(Task { try? await controller.run() })
        do {
            _ = try await rig.client.create(ExpertPoolCRD.resource, Self.pool(name: "tiny"), namespace: Self.namespace)
            try await Self.until("ModelsAgree True") { rig.status()?.condition("ModelsAgree")?.reason == "OneModel" }
            #expect(rig.status()?.condition("ModelsAgree")?.message.contains("d0d0") == true)
            // One pod now serves another checkpoint (a Deployment edited by hand, say).
            let pods = try await rig.client.list(.pods, namespace: Self.namespace).items.compactMap(\.name).sorted()
            let odd = try #require(pods.first)
            rig.load.setDigest(odd, "e1e1")
            try await Self.until("ModelsAgree False MixedModels") { rig.status()?.condition("ModelsAgree")?.reason == "MixedModels" }
            let condition = try #require(rig.status()?.condition("ModelsAgree"))
            #expect(condition.status == .false)
            #expect(condition.message.contains("e1e1 (1 pod: \(odd))") && condition.message.contains("d0d0"), "\(condition.message)")
            rig.load.setDigest(odd, "d0d0")
            try await Self.until("ModelsAgree True again") { rig.status()?.condition("ModelsAgree")?.reason == "OneModel" }
        } catch {
            await rig.stop()
            throw error
        }
        await rig.stop()
    }

    @Test("two controllers: one leads; when it dies without releasing, the other takes over within the lease")
    func leaderKilledAndReplaced() async throws {
        let rig = try await Rig.start()
        do { try await leaderSteps(rig) } catch {
            await rig.stop()
            throw error
        }
        await rig.stop()
    }

    func leaderSteps(_ rig: Rig) async throws {
        func election(_ identity: String) -> LeaderElector.Configuration {
            var election = LeaderElector.Configuration(leaseName: "eaas-controller", namespace: Self.namespace, identity: identity)
            election.leaseDuration = .seconds(3)
            election.renewDeadline = .seconds(2)
            election.retryPeriod = .milliseconds(300)
            election.releaseOnCancel = false  // a killed process releases nothing
            return election
        }
        let first = rig.controller(election: election("first"))
        let firstTask = Task { try? await first.run() }
        try await Self.until("first leads") { first.isLeader && first.isSynced }
        let second = rig.controller(election: election("second"))
        let secondTask = Task { try? await second.run() }
        _ = try await rig.client.create(ExpertPoolCRD.resource, Self.pool(name: "one"), namespace: Self.namespace)
        try await Self.until("first reconciles pool one") { rig.status("one")?.shardCount == 2 }
        #expect(!second.isLeader)

        firstTask.cancel()
        let killed = ContinuousClock.now
        await firstTask.value
        try await Self.until("second leads", timeout: .seconds(15)) { second.isLeader && second.isSynced }
        let takeover = ContinuousClock.now - killed
        #expect(takeover < .seconds(3) + .seconds(3), "took over after \(takeover), the lease is 3 s")
        _ = try await rig.client.create(ExpertPoolCRD.resource, Self.pool(name: "two"), namespace: Self.namespace)
        try await Self.until("second reconciles pool two") { rig.status("two")?.shardCount == 2 }
        secondTask.cancel()
        await secondTask.value

        // Leader election used only what the leader-election Role grants.
        let used = Set(rig.server.audit.records.filter { $0.userAgent == "eaas-controller" && $0.resource == "leases" }
            .map { "\($0.group)/\($0.resource):\($0.verb)" })
        let granted = try RBACRules.granted(file: "Manifests/rbac/leader-election-role.yaml")
        #expect(!used.isEmpty)
        #expect(used.subtracting(granted).isEmpty, "used but not granted: \(used.subtracting(granted).sorted())")
    }
}
