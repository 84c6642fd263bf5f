import CoreMetrics
import Prometheus

/// The controller's own metrics, in Prometheus text on `eaas controller`'s `/metrics`
/// (swift-metrics on a registry of its own, so several controllers can live in one test process):
///
/// - `eaas_controller_reconciles_total{result="success"|"error"}` and
///   `eaas_controller_reconcile_seconds` (histogram);
/// - `eaas_controller_queue_depth`: pool keys waiting;
/// - `eaas_controller_scrapes_total{result="ok"|"failed"}`: pod `/metrics` reads;
/// - `eaas_controller_scalings_total{direction="up"|"down"}`: replica changes decided;
/// - `eaas_controller_leader`: 1 while this instance leads (or runs without election).
public final class ControllerMetrics: @unchecked Sendable {
    public let registry = PrometheusCollectorRegistry()
    private let reconciled: CoreMetrics.Counter
    private let failed: CoreMetrics.Counter
    private let reconcileTime: CoreMetrics.Timer
    private let queueDepth: CoreMetrics.Gauge
    private let scrapesOK: CoreMetrics.Counter
    private let scrapesFailed: CoreMetrics.Counter
    private let scaledUp: CoreMetrics.Counter
    private let scaledDown: CoreMetrics.Counter
    private let leader: CoreMetrics.Gauge

    public init() {
        var factory = PrometheusMetricsFactory(registry: registry)
        factory.durationHistogramBuckets["eaas_controller_reconcile_seconds"] = [
            .milliseconds(1), .milliseconds(5), .milliseconds(10), .milliseconds(25), .milliseconds(50), .milliseconds(100),
            .milliseconds(250), .milliseconds(500), .seconds(1), .seconds(5),
        ]
        reconciled = CoreMetrics.Counter(label: "eaas_controller_reconciles_total", dimensions: [("result", "success")], factory: factory)
        failed = CoreMetrics.Counter(label: "eaas_controller_reconciles_total", dimensions: [("result", "error")], factory: factory)
        reconcileTime = CoreMetrics.Timer(label: "eaas_controller_reconcile_seconds", factory: factory)
        queueDepth = CoreMetrics.Gauge(label: "eaas_controller_queue_depth", factory: factory)
        scrapesOK = CoreMetrics.Counter(label: "eaas_controller_scrapes_total", dimensions: [("result", "ok")], factory: factory)
        scrapesFailed = CoreMetrics.Counter(label: "eaas_controller_scrapes_total", dimensions: [("result", "failed")], factory: factory)
        scaledUp = CoreMetrics.Counter(label: "eaas_controller_scalings_total", dimensions: [("direction", "up")], factory: factory)
        scaledDown = CoreMetrics.Counter(label: "eaas_controller_scalings_total", dimensions: [("direction", "down")], factory: factory)
        leader = CoreMetrics.Gauge(label: "eaas_controller_leader", factory: factory)
    }

    func reconcile(succeeded: Bool, seconds: Double) {
        (succeeded ? reconciled : failed).increment()
        reconcileTime.recordNanoseconds(Int64(seconds * 1e9))
    }

    func queue(depth: Int) { queueDepth.record(depth) }
    func scrape(succeeded: Bool) { (succeeded ? scrapesOK : scrapesFailed).increment() }
    func scaled(up: Bool) { (up ? scaledUp : scaledDown).increment() }
    func leading(_ leading: Bool) { leader.record(leading ? 1 : 0) }

    /// The Prometheus text exposition.
    public func text() -> String { registry.emitToString() }
}
