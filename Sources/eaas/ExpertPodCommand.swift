import ArgumentParser
import ExpertPod
import Foundation
import Hummingbird
import Logging
import ServiceLifecycle
import Transport

/// `eaas expert-pod`: the binary of every expert pod. Loads its shard of a checkpoint, serves it
/// on the data plane, exports load on HTTP, drains on SIGTERM.
struct ExpertPodCommand: AsyncParsableCommand {
    static let configuration = CommandConfiguration(
        commandName: "expert-pod",
        abstract: "Serve a shard of an MoE model's experts on the data plane, with metrics and health on HTTP.",
        discussion: """
        Prints 'listening HOST:PORT metrics HOST:PORT' on stdout once both are up. The pool token \
        comes from --pool-token-file or EAAS_POOL_TOKEN. SIGTERM: /readyz turns 503, clients get \
        GOAWAY, in-flight work finishes, and the pod exits 0 within --grace-seconds.
        """
    )

    @Option(help: "Checkpoint directory (config.json + safetensors).") var model: String
    @Option(help: "Experts to serve: EXPERTS[@LAYERS], e.g. 0,1 or 4-7@0-11 (all MoE layers without @).") var shard: String
    @Option(help: "Data-plane address HOST:PORT (port 0 picks a free one).") var listen: String = "0.0.0.0:7070"
    @Option(help: "Backends offered: tcp, shm (tcp + shared-memory slots) or verbs (tcp + RDMA; needs a device).") var transport: String = "shm"
    @Option(help: "HTTP port for /metrics, /healthz, /readyz, /v1/shard (0 picks a free one).") var metricsPort: Int = 9090
    @Option(help: "HTTP address to bind.") var metricsHost: String = "0.0.0.0"
    @Option(help: "File holding the pool token (default: $EAAS_POOL_TOKEN).") var poolTokenFile: String?
    @Option(help: "Hidden-state dtype on the wire: f32, bf16 or f16.") var wireDtype: String = "bf16"
    @Option(help: "Largest batch in tokens (also the largest request).") var maxBatchTokens: Int = 512
    @Option(help: "Microseconds a batch waits for more requests once one arrived (0: compute what is ready).") var maxWaitUs: Int = 0
    @Option(help: "Shared-memory slots: the most shm/verbs clients at once.") var slots: Int = 32
    @Option(help: "Seconds SIGTERM waits for clients to leave.") var graceSeconds: Double = 30
    @Option(help: "Log level: trace, debug, info, notice, warning, error, critical.") var logLevel: String = "info"
    @Option(help: "CPUs to pace compute to where no cgroup enforces the pod's limit (default: $EAAS_CPU_RATE_LIMIT, which the local runtime sets).")
    var cpuRateLimit: Double?
    @Option(help: "Unix socket (mode 0600) on which `eaas drain --socket PATH`, the preStop hook, drains the pod; then the pod exits.") var drainSocket: String?

    func validate() throws {
        _ = try hostPort()
        _ = try shardSpec()
        guard ["tcp", "shm", "verbs"].contains(transport) else { throw ValidationError("--transport '\(transport)' is not tcp, shm or verbs") }
        guard (0...65_535).contains(metricsPort) else { throw ValidationError("--metrics-port \(metricsPort) is not a port") }
        guard wireType() != nil else { throw ValidationError("--wire-dtype '\(wireDtype)' is not f32, bf16 or f16") }
        guard (1...65_536).contains(maxBatchTokens) else { throw ValidationError("--max-batch-tokens must be between 1 and 65536") }
        guard maxWaitUs >= 0, graceSeconds >= 0 else { throw ValidationError("--max-wait-us and --grace-seconds cannot be negative") }
        guard (1...4096).contains(slots) else { throw ValidationError("--slots must be between 1 and 4096") }
        _ = try paceLimit()
        guard Logger.Level(rawValue: logLevel) != nil else { throw ValidationError("--log-level '\(logLevel)' is not a log level") }
    }

    func hostPort() throws -> (String, Int) {
        guard let colon = listen.lastIndex(of: ":"), let port = Int(listen[listen.index(after: colon)...]), (0...65_535).contains(port) else {
            throw ValidationError("--listen '\(listen)' is not HOST:PORT")
        }
        return (String(listen[..<colon]), port)
    }

    func shardSpec() throws -> ShardSpec {
        do { return try ShardSpec(parsing: shard) } catch { throw ValidationError("--shard: \(error)") }
    }

    /// CPUs to pace compute to: `--cpu-rate-limit`, else `$EAAS_CPU_RATE_LIMIT`; nil when neither is set.
    func paceLimit() throws -> Double? {
        if let cpuRateLimit {
            guard cpuRateLimit > 0 && cpuRateLimit <= 1024 else { throw ValidationError("--cpu-rate-limit \(cpuRateLimit) is not a number of CPUs between 0 and 1024") }
            return cpuRateLimit
        }
        do { return try CPUPacer.limit() } catch { throw ValidationError("\(error)") }
    }

    func wireType() -> WireDType? { ["f32": .f32, "bf16": .bf16, "f16": .f16][wireDtype] }

    func run() async throws {
        var logger = Logger(label: "eaas.expert-pod")
        logger.logLevel = Logger.Level(rawValue: logLevel) ?? .info
        let (host, port) = try hostPort()
        var configuration = PodConfiguration(model: model, shard: try shardSpec(), poolToken: try PoolTokenSource.read(file: poolTokenFile))
        configuration.host = host
        configuration.port = port
        configuration.offerShm = transport == "shm"
        configuration.offerVerbs = transport == "verbs"
        configuration.wireDType = wireType()!
        configuration.maxBatchTokens = maxBatchTokens
        configuration.maxWait = .microseconds(maxWaitUs)
        configuration.slots = slots
        configuration.gracePeriod = .milliseconds(Int64(graceSeconds * 1000))
        configuration.cpuRateLimit = try paceLimit()

        let pod = try ExpertPod(configuration: configuration, logger: logger)
        // The drain control is local only (see DrainSocket); a drained pod then stops itself, the
        // way SIGTERM stops it (the second drain finds the first one done).
        let drainControl = try drainSocket.map { path in
            try DrainSocket(path: path, drain: { [service = pod.service] in await service.drain() },
                            onDrained: { kill(getpid(), SIGTERM) })
        }
        defer { drainControl?.close() }
        let announced = ManagedFlag()
        let application = Application(
            router: pod.router(transports: transport == "tcp" ? ["tcp"] : ["tcp", transport]),
            configuration: .init(address: .hostname(metricsHost, port: metricsPort), serverName: "eaas-expert-pod"),
            onServerRunning: { channel in
                guard announced.setOnce() else { return }
                let metrics = channel.localAddress?.port ?? metricsPort
                // Unbuffered, so that a parent process reading the pipe sees it at once.
                FileHandle.standardOutput.write(Data("listening \(host):\(pod.service.server.port) metrics \(metricsHost):\(metrics)\n".utf8))
            },
            logger: logger
        )
        // Shut down in reverse order: the data plane drains first while HTTP still answers
        // (/readyz says 503 meanwhile), then HTTP stops.
        let group = ServiceGroup(configuration: .init(
            services: [.init(service: application), .init(service: pod.service)],
            gracefulShutdownSignals: [.sigterm, .sigint],
            logger: logger
        ))
        try await group.run()
    }
}

/// Where a pool token comes from: a file (its bytes) or `EAAS_POOL_TOKEN`, never the command line.
/// Its length is checked here, where it is loaded; warnings (a file others can read, a short
/// token) go to standard error.
enum PoolTokenSource {
    static func read(file: String?) throws -> [UInt8] {
        do {
            let loaded = try PoolToken.load(file: file)
            for warning in loaded.warnings { FileHandle.standardError.write(Data("warning: \(warning)\n".utf8)) }
            return loaded.token
        } catch let error as PoolTokenError {
            throw ValidationError(error.description)
        }
    }
}

/// A flag set once across threads.
final class ManagedFlag: @unchecked Sendable {
    private let lock = NSLock()
    private var set = false
    var isSet: Bool {
        lock.lock()
        defer { lock.unlock() }
        return set
    }

    func setOnce() -> Bool {
        lock.lock()
        defer { lock.unlock() }
        guard !set else { return false }
        set = true
        return true
    }
}

/// `eaas drain`: the expert pod's preStop hook. Asks the pod through its local drain socket to
/// drain (readyz 503, GOAWAY, clients move away) and returns once it has; the pod then exits.
struct DrainCommand: ParsableCommand {
    static let configuration = CommandConfiguration(
        commandName: "drain",
        abstract: "Drain an expert pod through its local drain socket (the preStop hook) and wait until it has drained.",
        discussion: "Exits 0 when every client left, 1 when the pod's drain timed out or the pod could not be reached."
    )

    @Option(help: "The pod's --drain-socket path.") var socket: String
    @Option(help: "Seconds to wait for the pod's answer.") var timeoutSeconds: Double = 60

    func validate() throws {
        guard timeoutSeconds > 0 else { throw ValidationError("--timeout-seconds must be positive") }
    }

    func run() throws {
        let answer: String
        do {
            answer = try DrainSocket.request(path: socket, timeout: .milliseconds(Int64(timeoutSeconds * 1000)))
        } catch {
            FileHandle.standardError.write(Data("eaas drain: \(error)\n".utf8))
            throw ExitCode(1)
        }
        print(answer)
        guard answer == "drained" else { throw ExitCode(1) }
    }
}
