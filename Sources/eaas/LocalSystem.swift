import ArgumentParser
import AttentionWorker
import Controller
import Foundation
import JSON
import Kube
import KubeTestServer
import Logging
import MoE
import ServiceLifecycle
import Transport

/// The whole system on this machine, as `eaas up` and `eaas bench elastic` run it: an API server
/// in this process holding the CRD, the pool and its token Secret; the same controller as in a
/// cluster; the local runtime (a kubelet running pods as `eaas expert-pod` processes under their
/// CPU limits); and an attention worker's engine finding the pods through the API.
final class LocalSystem: @unchecked Sendable {
    let server: TestAPIServer
    let client: KubeClient
    let runtime: LocalRuntime
    let controller: ExpertPoolController
    let membership: KubernetesMembership
    let engine: GenerationEngine
    let spec: ExpertPoolSpec
    let config: ModelConfig
    let name: String
    let namespace: String
    let directory: String

    /// Checks `pool` (naming `source` in errors), then starts the API server with the pool, its
    /// Secrets and its token, and builds the controller, runtime and engine (not yet running:
    /// `services` runs them).
    /// `cgroups: false` has pods pace themselves to their CPU limits instead of the kernel.
    static func start(pool: KubeObject, secrets: [KubeObject], source: String, directory: String, apiPort: Int = 0,
                      cgroups: Bool = true, logger: Logger) async throws -> LocalSystem {
        let spec: ExpertPoolSpec
        do { spec = try ExpertPoolSpec(pool: pool.json) } catch { throw ValidationError("\(source): \(error)") }
        if case .failure(let problem) = spec.plan(poolName: pool.name ?? "") { throw ValidationError("\(source): \(problem.message)") }
        guard spec.transport.backend != .verbs || !((try? RDMADevices.names()) ?? []).isEmpty else {
            throw ValidationError("\(source): transport.backend verbs needs an RDMA device, and this machine has none; use shm or tcp")
        }
        let config: ModelConfig
        do { config = try ModelConfig.load(directory: spec.model.path) } catch {
            throw ValidationError("spec.model.path \(spec.model.path): \(error)")
        }
        let namespace = pool.namespace ?? "default"
        let name = pool.name ?? "local"

        // It listens on loopback, where any local user could reach it: every request must carry a
        // bearer token that only the kubeconfig written here (mode 0600, this user's) holds.
        var serverConfiguration = TestAPIServer.Configuration()
        serverConfiguration.port = apiPort
        serverConfiguration.requiredBearerToken = (0..<4).map { _ in String(format: "%016llx", UInt64.random(in: 0...UInt64.max)) }.joined()
        let server = try await TestAPIServer(configuration: serverConfiguration)
        let kubeconfigPath = directory + "/kubeconfig"
        unlink(kubeconfigPath)
        guard FileManager.default.createFile(atPath: kubeconfigPath, contents: Data(server.kubeconfig(namespace: namespace).utf8),
                                             attributes: [.posixPermissions: 0o600]) else {
            await server.shutdown()
            throw CommandFailure("cannot write \(kubeconfigPath)")
        }
        let client = KubeClient(connection: server.connection)
        do {
            let token = try await Self.createObjects(client: client, pool: pool, secrets: secrets, spec: spec, namespace: namespace)
            var runtimeConfiguration = LocalRuntime.Configuration(namespace: namespace, directory: directory + "/pods")
            runtimeConfiguration.cgroups = cgroups
            let executable = URL(fileURLWithPath: "/proc/self/exe").resolvingSymlinksInPath().path
            let runtime = LocalRuntime(client: client, launcher: ProcessLauncher(executable: executable),
                                       configuration: runtimeConfiguration, logger: logger)
            var controllerConfiguration = ControllerConfiguration()
            controllerConfiguration.namespace = namespace
            let controller = ExpertPoolController(client: client, configuration: controllerConfiguration, logger: logger)
            var dispatcher = Dispatcher.Configuration(poolToken: token, clientID: UInt64.random(in: 1...UInt64.max))
            dispatcher.backend = spec.transport.backend == .tcp ? .tcp : .shm
            dispatcher.modelDigest = try ModelDigest.compute(directory: spec.model.path).bytes
            let membership = KubernetesMembership(client: client, pool: name, namespace: namespace, layers: config.moeLayers,
                                                  verify: KubernetesMembership.handshakeVerifier(configuration: dispatcher, logger: logger), logger: logger)
            _ = await membership.start()
            let engine = try GenerationEngine(modelDirectory: spec.model.path,
                                              experts: .remote(membership: membership, dispatcher: dispatcher, wireDType: .bf16))
            return LocalSystem(server: server, client: client, runtime: runtime, controller: controller, membership: membership, engine: engine,
                               spec: spec, config: config, name: name, namespace: namespace, directory: directory)
        } catch {
            await server.shutdown()
            throw error
        }
    }

    private init(server: TestAPIServer, client: KubeClient, runtime: LocalRuntime, controller: ExpertPoolController, membership: KubernetesMembership,
                 engine: GenerationEngine, spec: ExpertPoolSpec, config: ModelConfig, name: String, namespace: String, directory: String) {
        self.server = server
        self.client = client
        self.runtime = runtime
        self.controller = controller
        self.membership = membership
        self.engine = engine
        self.spec = spec
        self.config = config
        self.name = name
        self.namespace = namespace
        self.directory = directory
    }

    /// The CRD, the namespace, the Secrets, the pool token (the Secret's, else a new one) and the
    /// pool; returns the token the pods will read.
    private static func createObjects(client: KubeClient, pool: KubeObject, secrets: [KubeObject], spec: ExpertPoolSpec, namespace: String) async throws -> [UInt8] {
        _ = try await client.create(.customResourceDefinitions, KubeObject(ExpertPoolCRD.definition))
        if namespace != "default" { _ = try? await client.create(.namespaces, KubeObject(.namespaces, name: namespace)) }
        for object in secrets { _ = try await client.create(.secrets, object, namespace: namespace) }
        let tokenSecret = spec.poolTokenSecret
        let token: [UInt8]
        if let existing = try? await client.get(.secrets, tokenSecret.name, namespace: namespace),
           let encoded = existing.json[path: ["data", tokenSecret.key]]?.string, let data = Data(base64Encoded: encoded) {
            // The Secret's bytes, as the pods read them from their token file.
            token = PoolToken.trimmed(Array(data))
            do { try PoolToken.validate(token, source: "Secret \(namespace)/\(tokenSecret.name) key \(tokenSecret.key)") } catch {
                throw CommandFailure("\(error)")
            }
        } else {
            token = PoolToken.random()
            _ = try await client.create(.secrets, KubeObject(.secrets, name: tokenSecret.name, namespace: namespace,
                                                             fields: ["data": .object([tokenSecret.key: .string(Data(token).base64EncodedString())])]))
        }
        _ = try await client.create(ExpertPoolCRD.resource, pool, namespace: namespace)
        return token
    }

    /// The runtime, the controller and the engine, for a `ServiceGroup`.
    var services: [ServiceGroupConfiguration.ServiceConfiguration] {
        [.init(service: runtime), .init(service: controller), .init(service: EngineService(engine: engine))]
    }

    /// After the group has stopped: stops watching the pool's endpoints and the API server.
    func shutdown() async {
        membership.stop()
        await server.shutdown()
    }

    /// The pods that exist now (running, starting or draining).
    var podCount: Int { server.objects(.pods, namespace: namespace).count }

    /// The pool's status as the controller last wrote it.
    var status: ExpertPoolStatus? {
        server.object(ExpertPoolCRD.resource, name, namespace: namespace)?.json["status"].flatMap { try? ExpertPoolStatus(specJSON: $0, path: "status") }
    }
}
