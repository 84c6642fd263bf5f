import ArgumentParser
import Controller
import Foundation
import JSON
import Kube
import Logging
import MoE
import ServiceLifecycle

/// `eaas bench elastic`: the paper's compute saving, measured. The whole local system (API
/// server, controller, pods under CPU limits, attention worker) replays one trace under each
/// policy in turn, and the pod-seconds, CPU-seconds and SLO attainment of each are compared.
struct ElasticBenchCommand: AsyncParsableCommand {
    static let configuration = CommandConfiguration(
        commandName: "elastic",
        abstract: "Replay a trace under static, per-shard autoscaling and load-aware placement; compare pod-seconds at a held SLO.",
        discussion: """
        A calibration at the trace's peak rate (every shard at --max-replicas) fixes, before any \
        policy runs, the SLO targets (twice the calibration's p99 time to first token and per \
        output token) and the autoscaling target (the busiest replica's load at the peak). Then \
        each policy replays the trace on a fresh system: static (every shard at --max-replicas), \
        shard-hpa (contiguous shards, each autoscaled), load-aware (placement from measured \
        per-expert load, autoscaled). Pod-seconds count every pod that exists, starting or draining.
        """
    )

    @Option(help: "Seconds the built-in trace (a compressed day) lasts (default 600; a --trace file's last time is its length).") var duration: Double?
    @Option(help: "Trace CSV: seconds,requests_per_second[,one weight per topic]; replaces the built-in trace.") var trace: String?
    @Option(help: "Peak requests per second of the built-in trace (default 12; a --trace file gives its own rates).") var peakRate: Double?
    @Option(help: "CPU limit of every expert pod, in CPUs.") var cpuLimit: Double = 0.2
    @Option(help: "Replicas per shard when provisioned for the peak (static), and the autoscalers' maximum.") var maxReplicas = 3
    @Option(help: "Tokens each request generates.") var requestTokens = 16
    @Option(help: "Policies to run, in order: static, shard-hpa, load-aware (comma-separated).") var policies = "static,shard-hpa,load-aware"
    @Option(help: "Seconds of load at the peak rate in the calibration.") var calibrationSeconds: Double = 20
    @Option(help: "Load-aware placement re-plans when the new grouping lowers the peak load per replica by this fraction.")
    var minImprovement = 0.1
    @Option(help: "How pod CPU limits are enforced: auto (a cgroup where one can be written) or rate-limit (pods pace themselves).")
    var cpuEnforcement = "auto"
    @Option(help: "Working directory: model, logs, the picture (default: a temporary one).") var workdir: String?
    @Option(help: "Where to write the picture (default: WORKDIR/elastic.svg).") var svg: String?
    @Flag(help: "Print one JSON document instead of the table.") var json = false

    func validate() throws {
        if let trace, duration != nil || peakRate != nil {
            // Said rather than ignored: the file's own times and rates are what is replayed.
            throw ValidationError("--\(duration != nil ? "duration" : "peak-rate") shapes the built-in trace; --trace \(trace) gives its own length and rates, so leave it out")
        }
        if let duration, !(30...86_400).contains(duration) { throw ValidationError("--duration must be between 30 and 86400 seconds") }
        if let peakRate, !(peakRate > 0 && peakRate <= 1000) { throw ValidationError("--peak-rate must be above 0 and at most 1000 requests/s") }
        guard cpuLimit >= 0.01, cpuLimit <= 64 else { throw ValidationError("--cpu-limit \(cpuLimit) is not between 0.01 and 64 CPUs") }
        guard (1...16).contains(maxReplicas) else { throw ValidationError("--max-replicas must be between 1 and 16") }
        guard (2...1024).contains(requestTokens) else { throw ValidationError("--request-tokens must be between 2 and 1024") }
        guard calibrationSeconds >= 5, calibrationSeconds <= 600 else { throw ValidationError("--calibration-seconds must be between 5 and 600") }
        guard ["auto", "rate-limit"].contains(cpuEnforcement) else { throw ValidationError("--cpu-enforcement must be auto or rate-limit") }
        guard minImprovement >= 0, minImprovement < 1 else { throw ValidationError("--min-improvement must be in [0, 1)") }
        _ = try selectedPolicies()
    }

    func selectedPolicies() throws -> [ElasticPolicy] {
        let names = policies.split(separator: ",").map { $0.trimmingCharacters(in: .whitespaces) }
        let chosen = try names.map { name in
            guard let policy = ElasticPolicy(rawValue: name) else {
                throw ValidationError("--policies: '\(name)' is not one of static, shard-hpa, load-aware")
            }
            return policy
        }
        guard !chosen.isEmpty, Set(chosen).count == chosen.count else { throw ValidationError("--policies needs distinct policies") }
        return chosen
    }

    func run() async throws {
        let directory = workdir ?? NSTemporaryDirectory() + "eaas-elastic-\(getpid())"
        try FileManager.default.createDirectory(atPath: directory, withIntermediateDirectories: true)
        let logger = try UpCommand.fileLogger(path: directory + "/eaas.log", level: .info)
        let model = try Self.benchModel(directory: directory)
        let routing = try TopicRouting.load(directory: model)
        let loadTrace: LoadTrace
        if let trace {
            let text: String
            do { text = try String(contentsOfFile: trace, encoding: .utf8) } catch { throw ValidationError("--trace \(trace): cannot read (\(error.localizedDescription))") }
            do { loadTrace = try LoadTrace.csv(text, topics: routing?.topics ?? 0) } catch { throw ValidationError("--trace \(trace): \(error)") }
        } else {
            loadTrace = try LoadTrace.diurnal(duration: duration ?? 600, peakRate: peakRate ?? 12, topics: routing?.topics ?? 0)
        }
        let runner = ElasticRunner(model: model, directory: directory, trace: loadTrace, cpuLimit: cpuLimit, maxReplicas: maxReplicas,
                                   requestTokens: requestTokens, minImprovement: minImprovement, cgroups: cpuEnforcement == "auto", logger: logger, quiet: json)
        let calibration = try await runner.calibrate(seconds: calibrationSeconds)
        var runs: [ElasticRun] = []
        for policy in try selectedPolicies() { runs.append(try await runner.run(policy, calibration: calibration)) }
        let picture = svg ?? directory + "/elastic.svg"
        try ElasticChart.svg(trace: loadTrace, runs: runs, slo: calibration).write(toFile: picture, atomically: true, encoding: .utf8)
        let report = ElasticReport(trace: loadTrace, calibration: calibration, runs: runs, cpuLimit: cpuLimit, maxReplicas: maxReplicas,
                                   enforcement: runner.enforcement, picture: picture)
        print(json ? try report.json() : report.text())
        if runs.contains(where: { $0.failed > 0 }) { throw ExitCode(1) }
    }

    /// The bench's model: Qwen3-MoE, 2 layers, 8 experts top-2, 4 topics, wide enough experts that
    /// a pod's CPU is what a replica adds.
    static func benchModel(directory: String) throws -> String {
        try UpCommand.topicModel(at: directory + "/model", hidden: 512, expertFFN: 1024, seed: 11)
    }
}

/// The three ways of provisioning the expert pods that the bench compares.
enum ElasticPolicy: String, Sendable {
    /// Every shard at the peak's replica count, all the time.
    case `static`
    /// Contiguous shards, each scaled from its own load.
    case shardHPA = "shard-hpa"
    /// Shards regrouped from measured per-expert load, each scaled from its load.
    case loadAware = "load-aware"
}
