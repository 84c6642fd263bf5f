import Foundation
import Kube
import Logging

/// Reads every ready expert pod's `/metrics` once per pool's scrape interval (pod IPs from the Pod
/// informer), turns the counters into per-pod load in the `LoadTracker`, and then asks for the
/// pool to be reconciled, which is when the autoscaler decides.
struct LoadScraper: Sendable {
    let pools: InformerStore
    let pods: InformerStore
    let loads: LoadTracker
    let timeout: Duration
    let metrics: ControllerMetrics
    let logger: Logger
    /// Called with the pool after its pods were scraped.
    let scraped: @Sendable (ObjectRef) async -> Void

    func run() async {
        var last: [ObjectRef: ContinuousClock.Instant] = [:]
        while !Task.isCancelled {
            let now = ContinuousClock.now
            var alive = Set<String>()
            for pool in pools.list() {
                guard pool.deletionTimestamp == nil, let ref = ObjectRef(pool), let spec = try? ExpertPoolSpec(pool: pool.json), spec.autoscaling.enabled else { continue }
                let poolPods = pods.byIndex(InformerStore.namespaceIndex.name, pool.namespace ?? "").filter {
                    $0.labels[PoolLabels.pool] == pool.name
                }
                alive.formUnion(poolPods.compactMap(\.uid))
                if let previous = last[ref], now - previous < .seconds(spec.autoscaling.scrapeIntervalSeconds) { continue }
                last[ref] = now
                await scrape(poolPods.filter { PodView($0).isReady }, port: spec.transport.metricsPort)
                await scraped(ref)
            }
            loads.retain(alive)
            last = last.filter { ref, _ in pools.get(ref) != nil }
            try? await Task.sleep(for: .milliseconds(250))
        }
    }

    /// Scrapes the pods at once; a pod that does not answer in time has no metric this round.
    func scrape(_ pods: [KubeObject], port: Int) async {
        await withTaskGroup(of: Void.self) { group in
            for pod in pods {
                guard let ip = PodView(pod).podIP, let uid = pod.uid else { continue }
                let host = ip.contains(":") ? "[\(ip)]" : ip
                group.addTask {
                    do {
                        let response = try await PlainHTTP.get("http://\(host):\(port)/metrics", timeout: timeout)
                        let at = ContinuousClock.now
                        guard response.status == 200, let counters = PodCounters(prometheusText: response.text) else {
                            logger.debug("no load metrics", metadata: ["pod": "\(pod.key)", "status": "\(response.status)"])
                            loads.markMissing(pod: uid)
                            metrics.scrape(succeeded: false)
                            return
                        }
                        loads.record(pod: uid, counters: counters, now: Self.seconds(at))
                        metrics.scrape(succeeded: true)
                    } catch {
                        logger.debug("scrape failed", metadata: ["pod": "\(pod.key)", "error": "\(error)"])
                        loads.markMissing(pod: uid)
                        metrics.scrape(succeeded: false)
                    }
                }
            }
        }
    }

    private static let origin = ContinuousClock.now
    static func seconds(_ instant: ContinuousClock.Instant) -> Double {
        (instant - origin).seconds
    }
}
