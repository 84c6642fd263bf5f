import ArgumentParser
import AttentionWorker
import CPlatform
import Foundation
import MoE
import Transport

/// The overlap configuration of `eaas bench e2e`: the attention worker and the expert pods on
/// separate cores, as on separate machines. `run` starts one pod (every expert) pinned to the
/// last allowed CPU and this binary's `bench overlap-worker` pinned to the first, and reads its
/// figures back.
enum OverlapRun {
    /// What the worker measured: per batch size, side by side in one process.
    struct Report: Decodable {
        /// The worker's compute threads (1 when pinned).
        let threads: Int
        let runs: [Outcome]
    }

    /// One batch size, with one micro-batch per step and with two.
    struct Outcome: Decodable {
        let batch: Int
        /// Decode tokens/s with one micro-batch per step, and with two pipelined.
        let plainTokS: Double
        let overlapTokS: Double
        /// With `--micro-batches auto`: split where splitting measured faster.
        let autoTokS: Double
        /// Per step of the one-micro-batch run: the worker's own compute, and the time spent on
        /// the experts (dispatch, waiting, copies, combine).
        let attentionMsPerStep: Double
        let expertsMsPerStep: Double
        /// The two-micro-batch run's time on the experts per step, as the worker waits for them
        /// (what overlap did not hide).
        let overlapExpertsMsPerStep: Double
        /// The pod's compute per step (its `eaas_busy_seconds_total`), with one micro-batch and
        /// with two: each micro-batch reads the weights of the experts its tokens chose, so two
        /// halves read more expert weight than the whole batch did.
        let podComputeMsPerStep: Double
        let overlapPodComputeMsPerStep: Double

        /// `(A + E) / max(A, E)`: what perfect overlap of the measured phases would give.
        var idealSpeedup: Double {
            (attentionMsPerStep + expertsMsPerStep) / max(attentionMsPerStep, expertsMsPerStep, 1e-9)
        }
        var speedup: Double { overlapTokS / plainTokS }
        var autoSpeedup: Double { autoTokS / plainTokS }

        enum CodingKeys: String, CodingKey {
            case plainTokS = "plain_tok_s", overlapTokS = "overlap_tok_s", attentionMsPerStep = "attention_ms_per_step"
            case batch, autoTokS = "auto_tok_s", expertsMsPerStep = "experts_ms_per_step", overlapExpertsMsPerStep = "overlap_experts_ms_per_step"
            case podComputeMsPerStep = "pod_compute_ms_per_step", overlapPodComputeMsPerStep = "overlap_pod_compute_ms_per_step"
        }
    }

    /// The CPUs this process may run on, ascending.
    static func allowedCPUs() -> [Int] {
        var ids = [Int32](repeating: 0, count: 1024)
        let found = Int(eaas_allowed_cpus(&ids, Int32(ids.count)))
        return found > 0 ? ids.prefix(min(found, ids.count)).map(Int.init) : []
    }

    /// Why the configuration cannot run here, if it cannot.
    static var unavailable: String? {
        let cpus = allowedCPUs().count
        if cpus < 2 { return "needs two CPUs (one for the worker, one for the pods); this process may use \(cpus)" }
        if EaasChild.taskset == nil { return "needs taskset (util-linux) to pin the worker and the pods" }
        return nil
    }

    /// The configuration's figures and where it ran, ready for `bench e2e`'s report.
    struct Measurement {
        let report: Report
        let workerCPU: Int
        let podCPUs: String

        /// Per batch, its JSON entry; `monolithic(batch)` is the monolithic engine's rate on both
        /// CPUs at that batch, when it was measured.
        func entries(monolithic: (Int) -> Double?) -> [[String: Any]] {
            report.runs.map { run in
                var entry: [String: Any] = [
                    "batch": run.batch, "overlap_tok_s": run.overlapTokS, "overlap_plain_tok_s": run.plainTokS, "overlap_speedup": run.speedup,
                    "overlap_auto_tok_s": run.autoTokS, "overlap_auto_speedup": run.autoSpeedup,
                    "overlap_ideal_speedup": run.idealSpeedup, "overlap_speedup_over_ideal": run.speedup / run.idealSpeedup,
                    "overlap_attention_ms_per_step": run.attentionMsPerStep, "overlap_experts_ms_per_step": run.expertsMsPerStep,
                    "overlap_pipelined_experts_ms_per_step": run.overlapExpertsMsPerStep,
                    "overlap_pod_compute_ms_per_step": run.podComputeMsPerStep, "overlap_pipelined_pod_compute_ms_per_step": run.overlapPodComputeMsPerStep,
                ]
                if let mono = monolithic(run.batch) { entry["overlap_over_monolithic"] = run.overlapTokS / mono }
                return entry
            }
        }

        /// The summary keys: the first batch's figures at the top level (the keys scripts read),
        /// every batch in `overlap_runs`, and where the worker and the pod ran.
        func summary(monolithic: (Int) -> Double?) -> [String: Any] {
            let runs = entries(monolithic: monolithic)
            var summary: [String: Any] = ["overlap_runs": runs, "overlap_worker_cpu": workerCPU, "overlap_pod_cpus": podCPUs,
                                          "overlap_worker_threads": report.threads]
            if let first = runs.first {
                summary.merge(first.filter { $0.key != "batch" }) { $1 }
                summary["overlap_batch"] = first["batch"]
            }
            return summary
        }

        /// The table `bench e2e` prints.
        func render(monolithic: (Int) -> Double?) -> String {
            var table = TextTable(columns: ["batch", "1 micro-batch tok/s", "2 pipelined tok/s", "speedup", "ideal", "of ideal", "auto tok/s", "auto speedup",
                                            "A ms", "E ms", "pod ms/step 1", "pod ms/step 2", "monolithic 2 CPUs tok/s", "2 pipelined/mono"])
            for run in report.runs {
                let mono = monolithic(run.batch)
                table.rows.append(["\(run.batch)", String(format: "%.1f", run.plainTokS), String(format: "%.1f", run.overlapTokS),
                                   String(format: "%.2f", run.speedup), String(format: "%.2f", run.idealSpeedup), String(format: "%.2f", run.speedup / run.idealSpeedup),
                                   String(format: "%.1f", run.autoTokS), String(format: "%.2f", run.autoSpeedup),
                                   String(format: "%.1f", run.attentionMsPerStep), String(format: "%.1f", run.expertsMsPerStep),
                                   String(format: "%.1f", run.podComputeMsPerStep), String(format: "%.1f", run.overlapPodComputeMsPerStep),
                                   mono.map { String(format: "%.1f", $0) } ?? "-", mono.map { String(format: "%.2f", run.overlapTokS / $0) } ?? "-"])
            }
            return "overlap: the worker on CPU \(workerCPU) (\(report.threads) compute thread), one pod on CPU \(podCPUs), shm; "
                + "A = the worker's own time per step, E = its time on the experts, with 1 micro-batch; ideal = (A+E)/max(A,E)\n"
                + table.render()
                + "\n(pod ms/step: its compute per step, eaas_busy_seconds_total; two micro-batches each read the weights of the experts their own tokens chose. "
                + "auto: `--micro-batches auto`, split where splitting measured faster for that step size)"
        }
    }

    static func run(model: String, batches: [Int], promptTokens: Int, decodeTokens: Int, repeats: Int, wireDtype: String,
                    maxBatchTokens: Int, log: (String) -> Void) throws -> Measurement {
        let cpus = allowedCPUs()
        let workerCPU = cpus[0]
        let podCPUs = cpus.dropFirst().map(String.init).joined(separator: ",")
        let token = "bench-overlap-\(UInt64.random(in: 0...UInt64.max))"
        let config = try ModelConfig.load(directory: model)
        log("overlap: one pod pinned to CPU \(podCPUs), the worker to CPU \(workerCPU); batch \(batches.map(String.init).joined(separator: ", ")), 1 and 2 micro-batches")
        let pod = try EaasChild(
            arguments: ["expert-pod", "--model", model, "--shard", "0-\(config.expertCount - 1)", "--listen", "127.0.0.1:0",
                        "--transport", "shm", "--metrics-host", "127.0.0.1", "--metrics-port", "0", "--wire-dtype", wireDtype,
                        "--max-batch-tokens", "\(max(1024, maxBatchTokens))", "--grace-seconds", "2", "--log-level", "error"],
            environment: ["EAAS_POOL_TOKEN": token], cpus: podCPUs)
        defer { pod.stop() }
        let words = try pod.firstLine().split(separator: " ")
        guard words.count == 4, words[0] == "listening" else { throw CommandFailure("expert-pod did not start: \(words.joined(separator: " "))") }
        let worker = try EaasChild(
            arguments: ["bench", "overlap-worker", "--model", model, "--expert-servers", String(words[1]), "--pod-metrics", String(words[3]), "--batch-sizes", batches.map(String.init).joined(separator: ","),
                        "--prompt-tokens", "\(promptTokens)", "--decode-tokens", "\(decodeTokens)", "--repeats", "\(repeats)",
                        "--wire-dtype", wireDtype],
            environment: ["EAAS_POOL_TOKEN": token], cpus: "\(workerCPU)")
        let output = try worker.waitForOutput()
        guard worker.process.terminationStatus == 0, let line = output.split(separator: "\n").last(where: { $0.hasPrefix("{") }) else {
            throw CommandFailure("the overlap worker failed (exit \(worker.process.terminationStatus)): \(output.suffix(2000))")
        }
        return Measurement(report: try JSONDecoder().decode(Report.self, from: Data(line.utf8)), workerCPU: workerCPU, podCPUs: podCPUs)
    }
}

/// `eaas bench overlap-worker`: `bench e2e`'s overlap configuration, run pinned by its parent.
/// Decodes the same batch against the pods with one micro-batch per step, with two pipelined,
/// and with the measured choice between them (`auto`), in interleaved rounds, and prints one
/// JSON line of rates and per-step phase times.
struct OverlapWorkerCommand: ParsableCommand {
    static let configuration = CommandConfiguration(
        commandName: "overlap-worker",
        abstract: "bench e2e's overlap configuration: decode against pods with 1 and 2 micro-batches, one JSON line (run it pinned, e.g. taskset -c 0).",
        shouldDisplay: false)

    @Option(help: "Checkpoint directory.") var model: String
    @Option(help: "Expert pod addresses HOST:PORT, comma-separated (token in $EAAS_POOL_TOKEN).") var expertServers: String
    @Option(help: "The pods' metrics addresses HOST:PORT, comma-separated: their compute time per step is read from eaas_busy_seconds_total.") var podMetrics: String
    @Option(help: "Batch sizes (sequences decoding together), comma-separated, each at least 2.") var batchSizes: String
    @Option(help: "Prompt tokens per sequence.") var promptTokens: Int = 16
    @Option(help: "Decode steps measured per sequence.") var decodeTokens: Int = 32
    @Option(help: "Interleaved rounds; the median rate of each mode is reported.") var repeats: Int = 3
    @Option(help: "Hidden-state dtype on the wire (f32, bf16, f16).") var wireDtype: String = "bf16"

    func validate() throws {
        let sizes = try E2EBenchCommand.positiveList(batchSizes, option: "--batch-sizes")
        guard !sizes.isEmpty, sizes.allSatisfy({ $0 >= 2 }) else { throw ValidationError("--batch-sizes must each be at least 2 (two micro-batches of whole sequences)") }
        guard promptTokens >= 1, decodeTokens >= 2, repeats >= 1 else { throw ValidationError("--prompt-tokens, --decode-tokens (≥ 2) and --repeats must be positive") }
        guard ["f32", "bf16", "f16"].contains(wireDtype) else { throw ValidationError("--wire-dtype '\(wireDtype)' is not f32, bf16 or f16") }
    }

    func run() throws {
        let config = try ModelConfig.load(directory: model)
        let sizes = try E2EBenchCommand.positiveList(batchSizes, option: "--batch-sizes")
        let largest = sizes.max()!
        var dispatcher = Dispatcher.Configuration(poolToken: try PoolTokenSource.read(file: nil), clientID: UInt64.random(in: 1...UInt64.max))
        dispatcher.backend = .shm
        dispatcher.contactCost = 1 << 20
        dispatcher.modelDigest = try ModelDigest.compute(directory: model).bytes
        var configuration = GenerationEngine.Configuration()
        configuration.maxRunning = largest
        configuration.maxBatchTokens = max(largest, min(2048, largest * promptTokens))
        dispatcher.maxBatchTokens = UInt32(configuration.maxBatchTokens)
        let membership = try ExpertPods.staticMembership(addresses: expertServers.split(separator: ",").map(String.init), config: config, dispatcher: dispatcher)
        let wire: WireDType = ["f32": .f32, "bf16": .bf16, "f16": .f16][wireDtype]!
        let engines = try [MicroBatching.one, .two, .measured].map { micro -> GenerationEngine in
            configuration.microBatching = micro
            return try GenerationEngine(modelDirectory: model, experts: .remote(membership: membership, dispatcher: dispatcher, wireDType: wire),
                                        configuration: configuration)
        }
        for engine in engines { engine.start() }
        defer { for engine in engines { engine.shutdown(drain: false) } }
        for engine in engines {
            _ = try DecodeRun.measure(engine, batch: largest, promptTokens: promptTokens, decodeTokens: 2, vocab: config.vocabSize, seed: 1)
        }
        let metrics = podMetrics.split(separator: ",").map { "http://\($0)/metrics" }
        // Read on the engine thread at the window's start: one HTTP GET, well under a step.
        let busySeconds: @Sendable () -> Double = {
            metrics.reduce(0) { $0 + ((try? PodBenchCommand.httpGet($1)).map { PodBenchCommand.metric($0, "eaas_busy_seconds_total") } ?? 0) }
        }
        /// Per step over every round: (time outside the experts, time on the experts), in ms.
        func split(_ runs: [DecodeRun.Window]) -> (attention: Double, experts: Double) {
            let steps = Double(max(1, runs.reduce(0) { $0 + $1.steps }))
            let seconds = runs.reduce(0) { $0 + $1.seconds }
            let remote = runs.reduce(StepPhaseTimes()) { $0 + $1.phases.remote }
            let experts = (remote.dispatch + remote.wait + remote.copy + remote.combine).seconds
            return ((seconds - experts) * 1e3 / steps, experts * 1e3 / steps)
        }
        func podCompute(_ runs: [DecodeRun.Window]) -> Double {
            runs.reduce(0) { $0 + ($1.probed ?? 0) } * 1e3 / Double(max(1, runs.reduce(0) { $0 + $1.probedSteps }))
        }
        _ = busySeconds()  // the first request sets up the HTTP client: not inside a measured window
        var runs: [[String: Any]] = []
        for batch in sizes {
            var windows = [[DecodeRun.Window]](repeating: [], count: engines.count)
            for round in 0..<repeats {
                for (index, engine) in engines.enumerated() {
                    windows[index].append(try DecodeRun.measureWindow(engine, batch: batch, promptTokens: promptTokens, decodeTokens: decodeTokens,
                                                                      vocab: config.vocabSize, seed: UInt64(batch * 100 + round), probe: busySeconds))
                }
            }
            let plain = split(windows[0]), overlapped = split(windows[1])
            runs.append([
                "batch": batch, "plain_tok_s": windows[0].map(\.rate).median, "overlap_tok_s": windows[1].map(\.rate).median,
                "auto_tok_s": windows[2].map(\.rate).median,
                "attention_ms_per_step": plain.attention, "experts_ms_per_step": plain.experts, "overlap_experts_ms_per_step": overlapped.experts,
                "pod_compute_ms_per_step": podCompute(windows[0]), "overlap_pod_compute_ms_per_step": podCompute(windows[1]),
            ])
        }
        let document: [String: Any] = ["threads": BLAS.threads, "runs": runs]
        print(String(decoding: try JSONSerialization.data(withJSONObject: document, options: [.sortedKeys]), as: UTF8.self))
    }
}
