import Foundation
import Logging
import ServiceLifecycle
import Transport

/// How an expert pod runs, with the defaults `eaas expert-pod` uses.
public struct PodConfiguration: Sendable {
    /// Checkpoint directory and the experts to serve from it.
    public var model: String
    public var shard: ShardSpec
    /// Data-plane address; the port may be 0 (a free one, printed at start).
    public var host = "0.0.0.0"
    public var port = 7070
    /// Backends offered besides `tcp`: `shm` slots (default), and `verbs` when asked (needs an
    /// RDMA device; the pod refuses to start without one).
    public var offerShm = true
    public var offerVerbs = false
    /// The dtype workers send hidden states in.
    public var wireDType = WireDType.bf16
    /// Largest batch in tokens, and how long a batch waits for more requests once one arrived.
    public var maxBatchTokens = 512
    public var maxWait: Duration = .zero
    public var slots = 32
    /// How long SIGTERM waits for clients to move away before the pod exits anyway.
    public var gracePeriod: Duration = .seconds(30)
    public var poolToken: [UInt8]
    public var serverID: UInt64 = UInt64(getpid())
    /// CPUs the pod paces its compute to (`CPUPacer`), where no cgroup enforces its limit; nil: none.
    public var cpuRateLimit: Double?

    public init(model: String, shard: ShardSpec, poolToken: [UInt8]) {
        self.model = model
        self.shard = shard
        self.poolToken = poolToken
    }
}

/// The data plane of an expert pod as a `Service`: it serves until the service group shuts down
/// gracefully (SIGTERM), then marks the pod not ready, sends GOAWAY, lets in-flight work finish and
/// clients move away within the grace period, and stops.
public final class ExpertPodService: Service, @unchecked Sendable {
    public let server: DataPlaneServer
    public let status: PodStatus
    let logger: Logger
    let gracePeriod: Duration

    public init(server: DataPlaneServer, status: PodStatus, gracePeriod: Duration, logger: Logger) {
        self.server = server
        self.status = status
        self.gracePeriod = gracePeriod
        self.logger = logger
    }

    public func run() async throws {
        server.start()
        status.ready = true
        logger.info("serving", metadata: ["port": "\(server.port)", "experts": "\(server.computer.experts.count)"])
        // Sleeps until SIGTERM (or the group ends); cancellation means the same.
        try? await gracefulShutdown()
        let allLeft = await drain(reason: "SIGTERM: draining")
        // Stopping joins the server's threads: off the cooperative pool too.
        let server = self.server
        await withCheckedContinuation { (continuation: CheckedContinuation<Void, Never>) in
            Thread {
                server.stop()
                continuation.resume()
            }.start()
        }
        logger.info("stopped", metadata: ["clients_left": "\(allLeft)", "served": "\(server.served)", "failed": "\(server.failed)"])
    }

    private let drainLock = NSLock()
    private var drainTask: Task<Bool, Never>?

    /// Marks the pod not ready, sends GOAWAY and waits (on a thread of its own) until clients have
    /// left or most of the grace period has passed; true if they all left. The preStop hook
    /// (`/drain`) and SIGTERM both come here: the second caller waits for the first drain.
    public func drain(reason: String = "preStop: draining") async -> Bool {
        let task: Task<Bool, Never> = drainLock.withLock {
            if let drainTask { return drainTask }
            let server = self.server
            let status = self.status
            let logger = self.logger
            let gracePeriod = self.gracePeriod
            let task = Task<Bool, Never> {
                status.ready = false
                logger.info("draining", metadata: ["grace": "\(gracePeriod)", "clients": "\(server.clientCount)"])
                // Draining blocks (it waits for clients to leave), so it runs on a thread of its own, not
                // on the cooperative pool that HTTP and the service group need meanwhile. It keeps a
                // margin of the grace period for stopping, so the pod exits before Kubernetes kills it.
                let margin = min(gracePeriod / 5, .seconds(3))
                let drainFor = gracePeriod - margin
                return await withCheckedContinuation { continuation in
                    Thread { continuation.resume(returning: server.drain(timeout: drainFor, reason: reason)) }.start()
                }
            }
            drainTask = task
            return task
        }
        return await task.value
    }
}
