import AttentionWorker
import Controller
import Foundation
import JSON
import Kube
import Logging
import MoE
import Platform
import ServiceLifecycle

/// What the calibration at the peak fixed before any policy ran.
struct ElasticCalibration {
    /// SLO targets (seconds): twice the calibration's p99.
    var ttftTarget: Double
    var tpotTarget: Double
    /// Autoscaling target (expert-tokens/s per replica): the busiest replica's load at the peak.
    var target: Double
    /// What the calibration measured.
    var ttftP99: Double
    var tpotP99: Double
    var servedFraction: Double
}

/// One second of a policy's run.
struct ElasticSample {
    var seconds: Double
    var demand: Double
    var pods: Int
    var readyPods: Int
    var placementRevision: Int
    /// Expert-tokens each expert computed since the previous sample (all layers).
    var expertTokens: [Double]
    /// The busiest shard's load per ready replica (expert-tokens/s), as the controller saw it.
    var peakLoadPerReplica: Double
    /// A placement rollout was under way (the previous grouping's shards still up beside the new).
    var rollingOut = false
}

/// A policy's outcome over the trace.
struct ElasticRun {
    var policy: ElasticPolicy
    var samples: [ElasticSample]
    var podSeconds: Double
    /// Pod-seconds of the samples taken while a placement rollout was under way (every pod then
    /// counts, old grouping and new).
    var rolloutPodSeconds: Double
    var cpuSeconds: Double
    var tokens: Int
    var failed: Int
    var requests: [SyntheticLoad.FinishedRequest]
    var shed: [Double]
    var failureMessages: [String]
    /// The last placement (load-aware): each shard's experts and planned replicas.
    var placement: PlacementStatus?
    /// Seconds into the trace at which that placement's revision first showed.
    var placementChangedAt: Double?
    var windowSeconds: Int

    /// Fraction of requests meeting both SLO targets; shed and failed requests miss.
    func sloAttainment(_ calibration: ElasticCalibration) -> Double {
        let met = requests.filter { $0.ttft <= calibration.ttftTarget && ($0.tpot ?? 0) <= calibration.tpotTarget }.count
        let total = requests.count + shed.count + failed
        return total == 0 ? 0 : Double(met) / Double(total)
    }

    var ttftP99: Double { Self.p99(requests.map(\.ttft)) }
    var tpotP99: Double { Self.p99(requests.compactMap(\.tpot)) }

    static func p99(_ values: [Double]) -> Double {
        guard !values.isEmpty else { return 0 }
        let sorted = values.sorted()
        return sorted[min(sorted.count - 1, Int(Double(sorted.count) * 0.99))]
    }

    /// Placement revisions the run went through (each a make-before-break rollout).
    var rollouts: Int { max(0, (samples.last?.placementRevision ?? 0) - (samples.first?.placementRevision ?? 0)) }

    /// Each expert's total expert-tokens over the run.
    var expertTotals: [Double] { Self.expertSums(samples) }

    /// Each expert's expert-tokens summed over `samples`.
    static func expertSums(_ samples: [ElasticSample]) -> [Double] {
        samples.reduce(into: [Double](repeating: 0, count: samples.first?.expertTokens.count ?? 0)) { total, sample in
            for (expert, tokens) in sample.expertTokens.enumerated() { total[expert] += tokens }
        }
    }

    /// Replicas the last plan gives each expert (a shard's replicas count for each of its experts).
    func expertReplicas(experts: Int) -> [Int] {
        var replicas = [Int](repeating: 0, count: experts)
        for shard in placement?.shards ?? [] { for expert in shard.experts where expert < experts { replicas[expert] += shard.replicas } }
        return replicas
    }

    /// Each expert's load over the planner's window before the last plan took effect.
    var windowExpertLoad: [Double] {
        guard let changed = placementChangedAt else { return [] }
        return Self.expertSums(samples.filter { $0.seconds <= changed && $0.seconds > changed - Double(windowSeconds) - 5 })
    }
}

/// Runs the calibration and each policy on a fresh local system.
final class ElasticRunner: @unchecked Sendable {
    let model: String
    let directory: String
    let trace: LoadTrace
    let cpuLimit: Double
    let maxReplicas: Int
    let requestTokens: Int
    let minImprovement: Double
    let cgroups: Bool
    let logger: Logger
    let quiet: Bool
    private(set) var enforcement = "rate-limit"
    /// The metrics port the pools here give their pods (each pod has a loopback address of its
    /// own); the sampler reads each pod's port from its spec.
    static let metricsPort = 9090

    init(model: String, directory: String, trace: LoadTrace, cpuLimit: Double, maxReplicas: Int, requestTokens: Int, minImprovement: Double,
         cgroups: Bool, logger: Logger, quiet: Bool) {
        self.minImprovement = minImprovement
        self.model = model
        self.directory = directory
        self.trace = trace
        self.cpuLimit = cpuLimit
        self.maxReplicas = maxReplicas
        self.requestTokens = requestTokens
        self.cgroups = cgroups
        self.logger = logger
        self.quiet = quiet
    }

    /// Windows scale with the trace, so that a short trace still shows scaling and re-placement.
    var scaleDownWindow: Int { max(10, Int(trace.duration / 30)) }
    var placementWindow: Int { max(10, Int(trace.duration / 20)) }
    var placementInterval: Int { max(20, Int(trace.duration / 6)) }

    func say(_ text: String) {
        if !quiet { FileHandle.standardError.write(Data((text + "\n").utf8)) }
    }

    /// The pool a policy runs: 8 experts in contiguous shards of 2, pods under `cpuLimit`.
    func pool(_ policy: ElasticPolicy, target: Double, experts: Int) -> KubeObject {
        var spec: JSONValue = [
            "model": ["path": .string(model), "experts": .int(experts)],
            "shards": ["expertsPerShard": 2],
            "replicas": ["min": .int(policy == .static ? maxReplicas : 1), "max": .int(maxReplicas)],
            "autoscaling": ["enabled": .bool(policy != .static), "target": .double(max(1, target)), "scrapeIntervalSeconds": 2,
                            "behavior": ["scaleDown": ["stabilizationWindowSeconds": .int(scaleDownWindow)]]],
            "transport": ["backend": "shm", "port": 7070, "metricsPort": .int(Self.metricsPort)],
            "poolTokenSecret": ["name": "bench-pool-token"],
            "drainSeconds": 2,
            "template": ["resources": ["limits": ["cpu": .string("\(Int((cpuLimit * 1000).rounded()))m")]]],
        ]
        if policy == .loadAware {
            spec["placement"] = ["mode": "loadAware", "windowSeconds": .int(placementWindow), "minIntervalSeconds": .int(placementInterval),
                                 "minImprovement": .double(minImprovement), "maxExpertsPerShard": 8]
        }
        return KubeObject(ExpertPoolCRD.resource, name: "bench", namespace: "default", fields: ["spec": spec])
    }

    /// Every shard at the maximum, the trace's peak rate held: fixes the SLO targets and the
    /// autoscaling target, and checks that the peak provisioning keeps up.
    func calibrate(seconds: Double) async throws -> ElasticCalibration {
        let peak = trace.points.filter { $0.seconds <= trace.duration }.max { $0.rate < $1.rate }!
        let constant = try LoadTrace(points: [.init(seconds: 0, rate: peak.rate, topicWeights: peak.topicWeights)], interpolation: .step, duration: seconds)
        say("calibration: \(String(format: "%.1f", peak.rate)) requests/s for \(Int(seconds)) s, every shard at \(maxReplicas) replicas")
        let run = try await replay(.static, trace: constant, target: 1, label: "calibration")
        let settled = run.requests.filter { $0.sentAt >= seconds / 4 }
        guard !settled.isEmpty, run.failed == 0 else {
            throw CommandFailure("calibration: \(run.failed) requests failed, \(settled.count) finished (\(run.failureMessages.first ?? "see \(directory)/eaas.log"))")
        }
        let demanded = peak.rate * seconds * Double(requestTokens)
        let served = Double(run.tokens) / demanded
        guard served >= 0.8, run.shed.isEmpty else {
            throw CommandFailure(String(format: "calibration: at the peak every shard at %d replicas served %.0f%% of the tokens asked for (%d shed): lower --peak-rate or raise --cpu-limit or --max-replicas",
                                        maxReplicas, served * 100, run.shed.count))
        }
        let loads = run.samples.filter { $0.seconds >= seconds / 2 }.map(\.peakLoadPerReplica).filter { $0 > 0 }.sorted()
        guard !loads.isEmpty else { throw CommandFailure("calibration: the controller saw no load on any shard (see \(directory)/eaas.log)") }
        let ttft = ElasticRun.p99(settled.map(\.ttft)), tpot = ElasticRun.p99(settled.compactMap(\.tpot))
        return ElasticCalibration(ttftTarget: 2 * ttft, tpotTarget: 2 * tpot, target: loads[loads.count / 2], ttftP99: ttft, tpotP99: tpot,
                                  servedFraction: served)
    }

    /// The trace under `policy`.
    func run(_ policy: ElasticPolicy, calibration: ElasticCalibration) async throws -> ElasticRun {
        say("\(policy.rawValue): replaying \(Int(trace.duration)) s")
        return try await replay(policy, trace: trace, target: calibration.target, label: policy.rawValue)
    }

    private func replay(_ policy: ElasticPolicy, trace: LoadTrace, target: Double, label: String) async throws -> ElasticRun {
        let config = try ModelConfig.load(directory: model)
        let runDirectory = directory + "/" + label
        try FileManager.default.createDirectory(atPath: runDirectory, withIntermediateDirectories: true)
        var runLogger = logger
        runLogger[metadataKey: "run"] = "\(label)"
        let system = try await LocalSystem.start(pool: pool(policy, target: target, experts: config.router.experts), secrets: [],
                                                 source: "bench pool", directory: runDirectory, cgroups: cgroups, logger: runLogger)
        enforcement = system.runtime.cpuEnforcement.description
        let load = SyntheticLoad(engine: system.engine, trace: trace, requestTokens: requestTokens, vocabulary: config.vocabSize,
                                 maxInFlight: 256, topics: try TopicRouting.load(directory: model).map { TopicMix(routing: $0) }, endsWithTrace: true)
        let driver = ElasticDriver(system: system, load: load, trace: trace, experts: config.router.experts, maxReplicas: policy == .static ? maxReplicas : 1)
        var configuration = ServiceGroupConfiguration(services: system.services + [
            .init(service: driver, successTerminationBehavior: .gracefullyShutdownGroup, failureTerminationBehavior: .gracefullyShutdownGroup),
        ], gracefulShutdownSignals: [.sigterm, .sigint], logger: runLogger)
        configuration.maximumGracefulShutdownDuration = .seconds(60)
        configuration.maximumCancellationDuration = .seconds(20)
        do { try await ServiceGroup(configuration: configuration).run() } catch {
            await system.shutdown()
            throw error
        }
        await system.shutdown()
        if let problem = driver.problem { throw CommandFailure("\(label): \(problem)") }
        let totals = load.totals
        let outcomes = load.outcomes
        let samples = driver.samples
        var podSeconds = 0.0, rolloutPodSeconds = 0.0
        for (a, b) in zip(samples, samples.dropFirst()) {
            podSeconds += Double(a.pods) * (b.seconds - a.seconds)
            if a.rollingOut { rolloutPodSeconds += Double(a.pods) * (b.seconds - a.seconds) }
        }
        let revision = samples.last?.placementRevision ?? 0
        return ElasticRun(policy: policy, samples: samples, podSeconds: podSeconds, rolloutPodSeconds: rolloutPodSeconds,
                          cpuSeconds: driver.cpuSeconds, tokens: totals.tokens,
                          failed: totals.failed, requests: outcomes.finished, shed: outcomes.shed, failureMessages: load.failureMessages,
                          placement: driver.lastStatus?.placement,
                          placementChangedAt: revision > 0 ? samples.first { $0.placementRevision == revision }?.seconds : nil,
                          windowSeconds: placementWindow)
    }
}

/// Waits for the pool to serve, then plays the trace while sampling pods, readiness, placement
/// and per-expert load once a second.
final class ElasticDriver: Service, @unchecked Sendable {
    let system: LocalSystem
    let load: SyntheticLoad
    let trace: LoadTrace
    let experts: Int
    /// Ready replicas each shard needs before the trace starts.
    let startReplicas: Int
    private let lock = NSLock()
    private var recorded: [ElasticSample] = []
    private var lastCounters: [String: [Int: Double]] = [:]
    private var lastRead: [String: ContinuousClock.Instant] = [:]
    // Written by the run and its sampler, read by the runner once the group has stopped: all under the lock.
    private var measuredCPUSeconds = 0.0
    private var stopProblem: String?
    private var latestStatus: ExpertPoolStatus?
    /// CPU-seconds the pods used while the trace played.
    var cpuSeconds: Double { lock.withLock { measuredCPUSeconds } }
    /// Why the trace never started, if it did not.
    var problem: String? { lock.withLock { stopProblem } }
    /// The pool's status at the last sample.
    var lastStatus: ExpertPoolStatus? { lock.withLock { latestStatus } }

    init(system: LocalSystem, load: SyntheticLoad, trace: LoadTrace, experts: Int, maxReplicas: Int) {
        self.system = system
        self.load = load
        self.trace = trace
        self.experts = experts
        startReplicas = maxReplicas
    }

    var samples: [ElasticSample] { lock.withLock { recorded } }

    func run() async throws {
        let deadline = ContinuousClock.now + .seconds(180)
        while !ready() {
            guard ContinuousClock.now < deadline else {
                lock.withLock { stopProblem = "the pool's pods were not all ready within 180 s (see the logs in \(system.directory))" }
                return
            }
            do { try await cancelWhenGracefulShutdown { try await Task.sleep(for: .milliseconds(200)) } } catch { return }
        }
        _ = await sample()  // the pods' counters before the trace: only what the trace adds counts
        lock.withLock { recorded.removeAll() }
        let cpuBefore = system.runtime.cpuSeconds()
        let done = ManagedFlag()
        await withTaskGroup(of: Void.self) { group in
            group.addTask {
                try? await self.load.run()
                _ = done.setOnce()
            }
            group.addTask {
                var next = ContinuousClock.now
                while !done.isSet {
                    let sample = await self.sample()
                    self.lock.withLock { self.recorded.append(sample) }
                    next += .seconds(1)
                    while ContinuousClock.now < next, !done.isSet { try? await Task.sleep(for: .milliseconds(50)) }
                }
                let last = await self.sample()
                self.lock.withLock { self.recorded.append(last) }
            }
        }
        let used = system.runtime.cpuSeconds() - cpuBefore
        lock.withLock { measuredCPUSeconds = used }
    }

    /// Every shard the controller planned has `startReplicas` ready and the worker sees them all.
    private func ready() -> Bool {
        guard let status = system.status, !status.shards.isEmpty else { return false }
        return status.shards.allSatisfy { $0.readyReplicas >= startReplicas }
            && system.membership.current().servers.count >= status.shards.count * startReplicas
    }

    private func sample() async -> ElasticSample {
        let seconds = load.elapsed
        let status = system.status
        lock.withLock { latestStatus = status }
        let pods = system.server.objects(.pods, namespace: system.namespace)
        // Each ready pod's per-expert counters, read in parallel; the growth since the last read is this second's load.
        var shardOf: [String: String] = [:]
        let addresses: [(String, String)] = pods.compactMap { pod in
            let view = PodView(pod)
            guard let name = pod.name, let ip = view.podIP, view.hasReadyCondition, let port = view.containerPort(named: "metrics") else { return nil }
            shardOf[name] = pod.labels[PoolLabels.shard] ?? name
            return (name, "http://\(ip):\(port)/metrics")
        }
        let counters = await withTaskGroup(of: (String, [Int: Double])?.self) { group in
            for (name, url) in addresses {
                group.addTask {
                    guard let response = try? await PlainHTTP.get(url, timeout: .seconds(2)),
                          let counters = PodCounters(prometheusText: response.text) else { return nil }
                    return (name, counters.expertTokens)
                }
            }
            var all: [String: [Int: Double]] = [:]
            for await result in group { if let (name, values) = result { all[name] = values } }
            return all
        }
        var perExpert = [Double](repeating: 0, count: experts)
        // Each shard's expert-tokens/s per ready replica, from the pods' own counters (the
        // controller does not scrape a pool that does not autoscale).
        var shardRates: [String: (tokens: Double, replicas: Int)] = [:]
        let now = ContinuousClock.now
        lock.withLock {
            for (name, values) in counters {
                let previous = lastCounters[name] ?? [:]
                var grown = 0.0
                for (expert, value) in values where expert < experts {
                    let delta = max(0, value - (previous[expert] ?? 0))
                    perExpert[expert] += delta
                    grown += delta
                }
                if !previous.isEmpty, let at = lastRead[name], now - at > .milliseconds(200) {
                    let shard = shardOf[name] ?? name
                    shardRates[shard, default: (0, 0)].tokens += grown / (now - at).seconds
                    shardRates[shard, default: (0, 0)].replicas += 1
                }
                lastCounters[name] = values
                lastRead[name] = now
            }
        }
        let peakLoad = shardRates.values.map { $0.tokens / Double(max(1, $0.replicas)) }.max() ?? 0
        return ElasticSample(seconds: seconds, demand: trace.rate(at: seconds), pods: pods.count,
                             readyPods: status?.shards.reduce(0) { $0 + $1.readyReplicas } ?? 0,
                             placementRevision: status?.placement?.revision ?? 0, expertTokens: perExpert, peakLoadPerReplica: peakLoad,
                             rollingOut: status?.placement?.retiring.isEmpty == false)
    }
}
