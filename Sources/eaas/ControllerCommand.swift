import ArgumentParser
import Controller
import Foundation
import Hummingbird
import Kube
import Logging
import ServiceLifecycle

/// `eaas controller`: the ExpertPool operator.
struct ControllerCommand: AsyncParsableCommand {
    static let configuration = CommandConfiguration(
        commandName: "controller",
        abstract: "Run the ExpertPool operator: reconcile pools into per-shard Deployments and scale them from pod load.",
        discussion: """
        Connects in-cluster, or through --kubeconfig / $KUBECONFIG / ~/.kube/config. With leader \
        election (the default) only the replica holding the Lease works; the others wait. Losing the \
        Lease exits with status 1 so that the pod restarts clean.
        """
    )

    @Option(help: "Watch only this namespace (default: all namespaces).") var namespace: String?
    @Option(help: "Image for expert pods whose pool names none.") var expertImage = ControllerConfiguration().expertImage
    @Flag(inversion: .prefixedNo, help: "Elect a leader through a coordination.k8s.io Lease.") var leaderElect = true
    @Option(help: "The Lease's name.") var leaseName = "eaas-controller"
    @Option(help: "The Lease's namespace (default: $POD_NAMESPACE, else the kubeconfig's namespace).") var leaseNamespace: String?
    @Option(help: "Seconds a Lease is valid without renewal (others take over after it).") var leaseDurationSeconds = 15
    @Option(help: "HTTP port for /healthz, /readyz and /metrics (0 picks a free one).") var healthPort = 8081
    @Option(help: "HTTP address to bind.") var healthHost = "0.0.0.0"
    @Option(help: "Pools reconciled at once.") var workers = 2
    @Option(help: "Kubeconfig file (default: in-cluster, else $KUBECONFIG, else ~/.kube/config).") var kubeconfig: String?
    @Option(help: "Log level: trace, debug, info, notice, warning, error, critical.") var logLevel = "info"

    func validate() throws {
        guard (0...65_535).contains(healthPort) else { throw ValidationError("--health-port \(healthPort) is not a port") }
        guard (1...64).contains(workers) else { throw ValidationError("--workers must be between 1 and 64") }
        guard leaseDurationSeconds >= 3 else { throw ValidationError("--lease-duration-seconds must be at least 3") }
        guard Logger.Level(rawValue: logLevel) != nil else { throw ValidationError("--log-level '\(logLevel)' is not a log level") }
        guard !expertImage.isEmpty else { throw ValidationError("--expert-image cannot be empty") }
    }

    func run() async throws {
        var logger = Logger(label: "eaas.controller")
        logger.logLevel = Logger.Level(rawValue: logLevel) ?? .info
        let connection: ClusterConnection
        do {
            connection = try kubeconfig.map { try ClusterConnection.kubeconfig(paths: [$0]) } ?? ClusterConnection.automatic()
        } catch { throw CommandFailure("cannot connect: \(error)") }
        let client = KubeClient(connection: connection)
        var configuration = ControllerConfiguration()
        configuration.namespace = namespace
        configuration.expertImage = expertImage
        configuration.workers = workers
        if leaderElect {
            let environment = ProcessInfo.processInfo.environment
            var election = LeaderElector.Configuration(
                leaseName: leaseName, namespace: leaseNamespace ?? environment["POD_NAMESPACE"] ?? connection.namespace,
                identity: environment["POD_NAME"] ?? "\(ProcessInfo.processInfo.hostName)_\(getpid())")
            election.leaseDuration = .seconds(leaseDurationSeconds)
            election.renewDeadline = .seconds(leaseDurationSeconds) * 2 / 3
            election.retryPeriod = .seconds(max(1, leaseDurationSeconds / 7))
            configuration.leaderElection = election
        }
        let controller = ExpertPoolController(client: client, configuration: configuration, logger: logger)

        let router = Router()
        router.get("healthz") { _, _ in "ok\n" }
        router.get("metrics") { _, _ -> Response in
            var headers = HTTPFields()
            headers[.contentType] = "text/plain; version=0.0.4; charset=utf-8"
            return Response(status: .ok, headers: headers, body: ResponseBody(byteBuffer: ByteBuffer(string: controller.metrics.text())))
        }
        // A standby replica is ready (it is doing its job: waiting); a leader once its caches are filled.
        router.get("readyz") { _, _ -> Response in
            let ready = !controller.isLeader || controller.isSynced
            return Response(status: ready ? .ok : .serviceUnavailable, body: ResponseBody(byteBuffer: ByteBuffer(string: ready ? "ready\n" : "syncing\n")))
        }
        let health = Application(
            router: router, configuration: .init(address: .hostname(healthHost, port: healthPort), serverName: "eaas-controller"),
            onServerRunning: { channel in
                FileHandle.standardOutput.write(Data("health \(healthHost):\(channel.localAddress?.port ?? healthPort)\n".utf8))
            },
            logger: logger)
        let group = ServiceGroup(configuration: .init(
            services: [.init(service: health), .init(service: controller, successTerminationBehavior: .gracefullyShutdownGroup,
                                                      failureTerminationBehavior: .gracefullyShutdownGroup)],
            gracefulShutdownSignals: [.sigterm, .sigint],
            logger: logger))
        try await group.run()
    }
}

/// `eaas generate crd`: the ExpertPool CRD from the Swift types.
struct GenerateCRDCommand: ParsableCommand {
    static let configuration = CommandConfiguration(
        commandName: "crd",
        abstract: "Print the ExpertPool CustomResourceDefinition generated from the spec types (Manifests/crd/expertpools.yaml)."
    )

    @Option(name: .shortAndLong, help: "Write to this file instead of stdout.") var output: String?

    func run() throws {
        let text = ExpertPoolCRD.yaml
        if let output {
            do { try text.write(toFile: output, atomically: true, encoding: .utf8) } catch { throw CommandFailure("cannot write \(output): \(error.localizedDescription)") }
        } else {
            FileHandle.standardOutput.write(Data(text.utf8))
        }
    }
}
