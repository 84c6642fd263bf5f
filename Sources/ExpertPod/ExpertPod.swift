import Foundation
import Hummingbird
import Logging
import MoE
import Transport

/// An expert pod put together: the shard, its computer, the data-plane server with metrics as
/// its observer, the service that runs and drains it, and the HTTP routes.
public final class ExpertPod: @unchecked Sendable {
    public let configuration: PodConfiguration
    public let shard: ExpertShard
    public let metrics: PodMetrics
    public let status = PodStatus()
    public let service: ExpertPodService

    /// Loads the shard and binds the data plane (serving starts when `service` runs).
    public init(configuration: PodConfiguration, logger: Logger) throws {
        self.configuration = configuration
        shard = try ExpertShard(directory: configuration.model, spec: configuration.shard)
        let metrics = PodMetrics(hosted: shard.hosted, modelDigest: shard.digest.description)
        self.metrics = metrics
        let computer = ShardComputer(shard: shard, dtype: configuration.wireDType)
        computer.onExpertTokens = { metrics.record(expert: $0, tokens: $1) }
        var server = DataPlaneServer.Configuration(poolToken: configuration.poolToken, serverID: configuration.serverID)
        server.host = configuration.host
        server.port = configuration.port
        server.offerShm = configuration.offerShm
        server.offerVerbs = configuration.offerVerbs
        server.slots = configuration.slots
        server.maxBatchTokens = configuration.maxBatchTokens
        server.maxSlotsPerToken = min(64, max(8, shard.config.router.topK))
        server.maxWait = configuration.maxWait
        server.modelDigest = shard.digest.bytes
        let refusals = HandshakeRefusalLog { [logger] in logger.warning("\($0)") }
        let paced: ExpertComputer = configuration.cpuRateLimit.map { PacedComputer(computer, pacer: CPUPacer(cores: $0)) } ?? computer
        let dataPlane = try DataPlaneServer(computer: paced, configuration: server, observer: { metrics.record($0) },
                                            refusalObserver: { reason in
                                                metrics.record(refusal: reason)
                                                refusals.note(reason)
                                            })
        metrics.countClients { [weak dataPlane] in dataPlane?.clientCount ?? 0 }
        service = ExpertPodService(server: dataPlane, status: status, gracePeriod: configuration.gracePeriod, logger: logger)
        logger.info("shard loaded", metadata: ["shard": "\(configuration.shard)", "experts": "\(shard.hosted.count)", "weight_bytes": "\(shard.weightBytes)",
                                               "model_digest": "\(shard.digest)", "matmul": "\(MatmulPrecision.process.summary)",
                                               "cpu_rate_limit": "\(configuration.cpuRateLimit.map { "\($0) CPUs (paced by the pod)" } ?? "none")"])
    }

    /// The HTTP routes, describing the shard and the transports offered.
    public func router(transports: [String]) -> Router<BasicRequestContext> {
        let description = ShardDescription(
            shard: "\(configuration.shard)", model: shard.config.architecture.cliName,
            experts: shard.hosted.map { .init(layer: Int($0.layer), expert: Int($0.expert)) },
            dtype: "\(configuration.wireDType)", hiddenSize: shard.config.hiddenSize, weightBytes: shard.weightBytes, transports: transports,
            modelDigest: shard.digest.description)
        return PodHTTP.router(metrics: metrics, status: status, shard: description)
    }
}
