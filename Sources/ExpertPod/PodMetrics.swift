import Foundation
import CoreMetrics
import Prometheus
import Transport

/// An expert pod's metrics, in Prometheus text on `/metrics`: swift-metrics types backed by a
/// registry of the pod's own (not the process-global bootstrap, so several pods can live in one
/// test process).
///
/// - `eaas_expert_tokens_total{layer,expert}`: tokens each hosted expert computed (the load the
///   autoscaler reads);
/// - `eaas_requests_total`, `eaas_request_errors_total{code}`;
/// - `eaas_batch_tokens` (histogram): tokens per computed batch;
/// - `eaas_request_latency_seconds` (histogram): arrival to answer;
/// - `eaas_busy_seconds_total`: time spent computing; `eaas_queue_depth`: tcp requests waiting;
/// - `eaas_handshake_refusals_total{reason}`: connections turned away before they became
///   clients (wrong token, malformed, timeout, caps, draining);
/// - `eaas_model_info{digest}` (always 1): the `ModelDigest` of the checkpoint served, so that
///   the controller can say when a pool's pods serve different checkpoints;
/// - `eaas_clients`: data-plane clients (attention workers) connected now, read at each scrape:
///   a model rollout retires the old revision's pods once no worker uses them.
public final class PodMetrics: @unchecked Sendable {
    public let registry = PrometheusCollectorRegistry()
    private let requests: CoreMetrics.Counter
    private let busy: CoreMetrics.FloatingPointCounter
    private let queueDepth: CoreMetrics.Gauge
    private let batchTokens: CoreMetrics.Recorder
    private let latency: CoreMetrics.Timer
    private let expertTokens: [HostedExpert: CoreMetrics.Counter]
    private let errors: [WireErrorCode: CoreMetrics.Counter]
    private let refusals: [HandshakeRefusal: CoreMetrics.Counter]

    private let modelInfo: CoreMetrics.Gauge?
    private let clients: CoreMetrics.Gauge
    private let clientLock = NSLock()
    nonisolated(unsafe) private var clientCount: (@Sendable () -> Int)?

    public init(hosted: [HostedExpert], modelDigest: String? = nil) {
        var factory = PrometheusMetricsFactory(registry: registry)
        // Powers of two and the points halfway (in log) between: fine enough to rebuild the mix
        // of batch sizes a benchmark compares against.
        factory.valueHistogramBuckets["eaas_batch_tokens"] = [1, 2, 3, 4, 6, 8, 12, 16, 24, 32, 48, 64, 96, 128, 192, 256, 384, 512,
                                                              768, 1024, 1536, 2048, 3072, 4096]
        factory.durationHistogramBuckets["eaas_request_latency_seconds"] = [
            .microseconds(10), .microseconds(50), .microseconds(100), .microseconds(250), .microseconds(500),
            .milliseconds(1), .milliseconds(2), .milliseconds(5), .milliseconds(10), .milliseconds(25),
            .milliseconds(50), .milliseconds(100), .milliseconds(250), .seconds(1),
        ]
        requests = CoreMetrics.Counter(label: "eaas_requests_total", factory: factory)
        busy = CoreMetrics.FloatingPointCounter(label: "eaas_busy_seconds_total", factory: factory)
        queueDepth = CoreMetrics.Gauge(label: "eaas_queue_depth", factory: factory)
        batchTokens = CoreMetrics.Recorder(label: "eaas_batch_tokens", aggregate: true, factory: factory)
        latency = CoreMetrics.Timer(label: "eaas_request_latency_seconds", factory: factory)
        var expertTokens: [HostedExpert: CoreMetrics.Counter] = [:]
        for expert in hosted {
            expertTokens[expert] = CoreMetrics.Counter(label: "eaas_expert_tokens_total", dimensions: [("layer", "\(expert.layer)"), ("expert", "\(expert.expert)")],
                                           factory: factory)
        }
        self.expertTokens = expertTokens
        var errors: [WireErrorCode: CoreMetrics.Counter] = [:]
        for code in WireErrorCode.allCases {
            errors[code] = CoreMetrics.Counter(label: "eaas_request_errors_total", dimensions: [("code", "\(code)")], factory: factory)
        }
        self.errors = errors
        var refusals: [HandshakeRefusal: CoreMetrics.Counter] = [:]
        for reason in HandshakeRefusal.allCases {
            refusals[reason] = CoreMetrics.Counter(label: "eaas_handshake_refusals_total", dimensions: [("reason", reason.rawValue)], factory: factory)
        }
        self.refusals = refusals
        modelInfo = modelDigest.map { CoreMetrics.Gauge(label: "eaas_model_info", dimensions: [("digest", $0)], factory: factory) }
        modelInfo?.record(1)
        clients = CoreMetrics.Gauge(label: "eaas_clients", factory: factory)
        clients.record(0)
    }

    /// Where `eaas_clients` is read from (the data-plane server, once it exists).
    public func countClients(with count: @escaping @Sendable () -> Int) { clientLock.withLock { clientCount = count } }

    /// Counts a connection turned away before it became a client.
    public func record(refusal reason: HandshakeRefusal) { refusals[reason]?.increment() }

    /// Records one batch the data-plane server computed (or one request it refused).
    public func record(_ report: ServingReport) {
        if report.requests > 0 {
            batchTokens.record(report.tokens)
            busy.increment(by: Double(report.busy.components.seconds) + Double(report.busy.components.attoseconds) * 1e-18)
        }
        for answer in report.answers {
            requests.increment()
            latency.recordNanoseconds(Int64(answer.latency.components.seconds) * 1_000_000_000 + answer.latency.components.attoseconds / 1_000_000_000)
            if let code = answer.failure { errors[code]?.increment() }
        }
        // Refusals carry no queue reading; only computed batches say how many wait.
        if report.requests > 0 { queueDepth.record(report.queued) }
    }

    /// Records the tokens one expert computed in a batch.
    public func record(expert: HostedExpert, tokens: Int) { expertTokens[expert]?.increment(by: tokens) }

    /// The Prometheus text exposition.
    public func text() -> String {
        if let count = clientLock.withLock({ clientCount }) { clients.record(count()) }
        return registry.emitToString()
    }
}
