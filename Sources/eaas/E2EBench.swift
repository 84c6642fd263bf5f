import ArgumentParser
import AttentionWorker
import Foundation
import MoE
import Transport

/// `eaas bench e2e`: decode throughput of the whole serving path on a realistically shaped model,
/// monolithic (experts in the worker) against remote experts over `shm` and `tcp`, in one run;
/// then throughput over time while an expert pod is SIGKILLed, and the loss over the window.
struct E2EBenchCommand: ParsableCommand {
    static let configuration = CommandConfiguration(
        commandName: "e2e",
        abstract: "Decode throughput: monolithic vs remote experts (shm, tcp), the overlap configuration, and the loss when a pod is killed.",
        discussion: """
        The model is a seeded random Qwen3-MoE checkpoint of the given shape (written once into \
        --cache-dir), or --model. Remote runs start --pods `eaas expert-pod` processes, each hosting \
        every expert (so every expert has --pods replicas); the time of each MoE layer is printed per phase, \
        the pods' own compute among them. The overlap configuration pins a worker to one CPU and one pod to \
        the others and decodes with 1 and 2 pipelined micro-batches (and auto), beside the ideal speedup. \
        The failure run keeps --failure-batch \
        sequences generating for --failure-seconds and SIGKILLs the pod serving them halfway; the loss compares \
        tokens/s in the halves before and after the kill against the same run without the kill, and each sequence's \
        tokens are compared with that run's; --failure-pairs repeats the pair (the killed pod replaced) and reports the median. \
        With --vllm PYTHON, the same checkpoint, \
        prompts and batch sizes run through vLLM (CPU, in the checkpoint's dtype; also fp32 with --vllm-fp32) in the same sitting.
        """
    )

    @Option(help: "Checkpoint directory (default: a generated one of the shape below).") var model: String?
    @Option(help: "Hidden size.") var hidden: Int = 2048
    @Option(help: "Routed expert FFN size.") var expertFfn: Int = 1408
    @Option(help: "Routed experts per layer.") var experts: Int = 64
    @Option(help: "Experts per token.") var topK: Int = 6
    @Option(help: "Decoder layers (all MoE).") var layers: Int = 4
    @Option(help: "Attention heads.") var heads: Int = 16
    @Option(help: "Key/value heads.") var kvHeads: Int = 4
    @Option(help: "Vocabulary size.") var vocab: Int = 32000
    @Option(help: "Weight dtype of the generated checkpoint: bf16, f16 or f32.") var dtype: String = "bf16"
    @Option(help: "Where generated checkpoints are kept between runs.") var cacheDir: String = NSTemporaryDirectory() + "eaas-bench-e2e"
    @Option(help: "Batch sizes (sequences decoding together), comma-separated; the JSON summary uses the largest.") var batchSizes: String = "1,8,32"
    @Option(help: "Prompt tokens per sequence.") var promptTokens: Int = 16
    @Option(help: "Decode steps measured per sequence (after its first token).") var decodeTokens: Int = 32
    @Option(help: "Prompt tokens per sequence of the prefill runs.") var prefillTokens: Int = 512
    @Option(help: "Batch sizes of the prefill runs, comma-separated ('none': no prefill runs).") var prefillBatchSizes: String = "1,8"
    @Option(help: "Most prompt tokens one prefill step takes, ours and vLLM's (its max_num_batched_tokens; 4096 is its CPU default).") var prefillBatchTokens: Int = 4096
    @Option(help: "Expert pods for the remote runs (each hosts every expert).") var pods: Int = 2
    @Option(help: "Hidden-state dtype on the wire (f32, bf16, f16).") var wireDtype: String = "bf16"
    @Option(help: "Sequences kept generating in the failure run (default: the largest batch size).") var failureBatch: Int?
    @Option(help: "Seconds of the failure run; one pod is killed halfway.") var failureSeconds: Double = 30
    @Option(help: "Pairs of failure runs (each: the run without the kill, then with it; the killed pod is replaced between pairs); the loss reported is their median.") var failurePairs: Int = 1
    @Option(help: "Tokens of load a pod already in a step may carry before the step adds another pod; the pods share this host's cores, so the default keeps each step on one pod.") var contactCost: Int = 1 << 20
    @Option(help: "Rounds of the side-by-side measurement (modes interleaved); each mode's median is reported.") var repeats: Int = 3
    @Option(help: "Batch sizes of the overlap configuration (worker pinned to one CPU, one pod to the others; 1 and 2 micro-batches), comma-separated, each at least 2; default those of --batch-sizes that are; 'none' skips it. The summary's overlap_* keys are the first's.") var overlapBatchSizes: String?
    @Option(help: "Python with vLLM (e.g. a venv's bin/python): also run vLLM on the same model and prompts, in the checkpoint's dtype.") var vllm: String?
    @Flag(help: "With --vllm: also run vLLM with fp32 weights (its dtype=float32), reported beside the checkpoint-dtype run.") var vllmFp32 = false
    @Flag(help: "Print one JSON document instead of tables.") var json = false

    func validate() throws {
        guard try !sizes().isEmpty else { throw ValidationError("--batch-sizes is empty") }
        let prefill = try prefillSizes()
        guard prefillTokens >= 1 else { throw ValidationError("--prefill-tokens must be at least 1") }
        if let largest = prefill.max(), prefillBatchTokens < largest {
            throw ValidationError("--prefill-batch-tokens (\(prefillBatchTokens)) must be at least the largest prefill batch (\(largest))")
        }
        guard hidden >= 1, expertFfn >= 1, experts >= 1, layers >= 1, heads >= 1, kvHeads >= 1, vocab >= 2 else {
            throw ValidationError("model sizes must be at least 1")
        }
        guard (1...experts).contains(topK) else { throw ValidationError("--top-k must be between 1 and --experts") }
        guard DType(userSpelling: dtype)?.isComputeType == true else { throw ValidationError("--dtype '\(dtype)' is not bf16, f16 or f32") }
        guard ["f32": 1, "bf16": 1, "f16": 1][wireDtype] != nil else { throw ValidationError("--wire-dtype '\(wireDtype)' is not f32, bf16 or f16") }
        guard promptTokens >= 1, decodeTokens >= 1 else { throw ValidationError("--prompt-tokens and --decode-tokens must be at least 1") }
        guard pods >= 2 else { throw ValidationError("--pods must be at least 2 (the failure run kills one)") }
        guard repeats >= 1 else { throw ValidationError("--repeats must be at least 1") }
        if let failureBatch, failureBatch < 1 { throw ValidationError("--failure-batch must be at least 1") }
        guard failureSeconds >= 2 else { throw ValidationError("--failure-seconds must be at least 2") }
        guard failurePairs >= 1 else { throw ValidationError("--failure-pairs must be at least 1") }
        if let overlapBatchSizes, overlapBatchSizes != "none" {
            guard try Self.positiveList(overlapBatchSizes, option: "--overlap-batch-sizes").allSatisfy({ $0 >= 2 }) else {
                throw ValidationError("--overlap-batch-sizes '\(overlapBatchSizes)': each must be at least 2 (two micro-batches of whole sequences)")
            }
        }
    }

    func sizes() throws -> [Int] { try Self.positiveList(batchSizes, option: "--batch-sizes") }

    func overlapSizes() throws -> [Int] {
        guard let overlapBatchSizes else { return try sizes().filter { $0 >= 2 } }
        return overlapBatchSizes == "none" ? [] : try Self.positiveList(overlapBatchSizes, option: "--overlap-batch-sizes")
    }

    func prefillSizes() throws -> [Int] {
        prefillBatchSizes.trimmingCharacters(in: .whitespaces) == "none" ? [] : try Self.positiveList(prefillBatchSizes, option: "--prefill-batch-sizes")
    }

    static func positiveList(_ text: String, option: String) throws -> [Int] {
        try text.split(separator: ",").map {
            guard let n = Int($0.trimmingCharacters(in: .whitespaces)), n >= 1 else { throw ValidationError("\(option) '\(text)' is not a list of positive integers") }
            return n
        }
    }

    func run() throws {
        let sizes = try sizes()
        let directory = try model ?? generatedModel()
        let config = try ModelConfig.load(directory: directory)
        let largest = sizes.max()!
        var engineConfiguration = GenerationEngine.Configuration()
        engineConfiguration.maxRunning = max(largest, failureBatch ?? largest)
        engineConfiguration.maxBatchTokens = max(engineConfiguration.maxRunning, min(2048, largest * promptTokens))
        let token = "bench-e2e-\(UInt64.random(in: 0...UInt64.max))"
        log("measuring this machine: read bandwidth and peak FLOP rates on \(BLAS.threads) threads")
        var limits = MachineLimits.measure(threads: BLAS.threads)
        let cost = try StepCost(directory: directory)
        log(String(format: "memory read %.1f GB/s, f32 FMA peak %.0f GFLOP/s, bf16 dot peak %@; a decode step reads %.0f MB of dense weights, %.1f MB per routed expert",
                   limits.readGBps, limits.f32GFlops, limits.bf16GFlops.map { String(format: "%.0f GFLOP/s", $0) } ?? "none",
                   cost.denseBytes / 1e6, cost.expertBytes / 1e6))
        log("model \(directory): \(config.architecture.cliName), hidden \(config.hiddenSize), \(config.expertCount) experts top-\(config.router.topK), \(config.layerCount) layers")

        // Pods first (they map the checkpoint while the monolithic engine loads).
        var podProcesses: [EaasChild] = []
        defer { podProcesses.forEach { $0.stop() } }
        func startPod() throws -> EaasChild {
            try EaasChild(
                arguments: ["expert-pod", "--model", directory, "--shard", "0-\(config.expertCount - 1)", "--listen", "127.0.0.1:0",
                            "--transport", "shm", "--metrics-host", "127.0.0.1", "--metrics-port", "0", "--wire-dtype", wireDtype,
                            "--max-batch-tokens", "\(max(1024, engineConfiguration.maxBatchTokens))", "--grace-seconds", "2",
                            "--log-level", "error"],
                environment: ["EAAS_POOL_TOKEN": token])
        }
        func endpoint(of pod: EaasChild) throws -> (data: String, metrics: String) {
            let words = try pod.firstLine().split(separator: " ")
            guard words.count == 4, words[0] == "listening" else { throw CommandFailure("expert-pod did not start: \(words.joined(separator: " "))") }
            return (String(words[1]), String(words[3]))
        }
        for _ in 0..<pods { podProcesses.append(try startPod()) }
        var endpoints = try podProcesses.map(endpoint)
        let addresses = endpoints.map(\.data)
        // The shm engine's membership, which the failure pairs change: a killed pod's replacement joins it.
        var shmMembership: SettableMembership?
        func remote(_ backend: BackendKind) throws -> GenerationEngine {
            var dispatcher = Dispatcher.Configuration(poolToken: Array(token.utf8), clientID: UInt64.random(in: 1...UInt64.max))
            dispatcher.backend = backend
            dispatcher.contactCost = contactCost
            dispatcher.modelDigest = try ModelDigest.compute(directory: directory).bytes
            dispatcher.maxBatchTokens = UInt32(engineConfiguration.maxBatchTokens)
            let found = try ExpertPods.staticMembership(addresses: addresses, config: config, dispatcher: dispatcher)
            let membership: MembershipSource
            if backend == .shm {
                let settable = SettableMembership(found.view)
                shmMembership = settable
                membership = settable
            } else {
                membership = found
            }
            let wire: WireDType = ["f32": .f32, "bf16": .bf16, "f16": .f16][wireDtype]!
            return try GenerationEngine(modelDirectory: directory, experts: .remote(membership: membership, dispatcher: dispatcher, wireDType: wire),
                                        configuration: engineConfiguration)
        }
        let engines: [(String, GenerationEngine)] = [
            ("monolithic", try GenerationEngine(modelDirectory: directory, experts: .local, configuration: engineConfiguration)),
            ("remote shm", try remote(.shm)),
            ("remote tcp", try remote(.tcp)),
        ]
        for (_, engine) in engines { engine.start() }
        defer { for (_, engine) in engines { engine.shutdown(drain: false) } }

        // Warm up: every expert's pages in memory, connections open, buffers grown.
        for (name, engine) in engines {
            log("warming up \(name)")
            _ = try DecodeRun.measure(engine, batch: largest, promptTokens: promptTokens, decodeTokens: 2, vocab: config.vocabSize, seed: 1)
        }
        var table = TextTable(columns: ["batch", "monolithic tok/s", "remote shm tok/s", "remote tcp tok/s", "shm/mono", "tcp/mono",
                                        "experts/step", "roofline tok/s", "mono/roofline"])
        var rows: [[String: Any]] = []
        var last: [Double] = []
        // Per mode, where the MoE layers' time went in the decode runs of the last batch size.
        var phases = [MoEPhaseTimes](repeating: MoEPhaseTimes(), count: engines.count)
        // Per mode, the pods' compute in those runs (their eaas_busy_seconds_total): the part of a
        // remote layer's wait that is the experts' own work; the rest is the data plane.
        var podBusy = [Double](repeating: 0, count: engines.count)
        func podBusySeconds() -> Double {
            endpoints.reduce(0) { $0 + ((try? PodBenchCommand.httpGet("http://\($1.metrics)/metrics")).map { PodBenchCommand.metric($0, "eaas_busy_seconds_total") } ?? 0) }
        }
        for batch in sizes {
            phases = [MoEPhaseTimes](repeating: MoEPhaseTimes(), count: engines.count)
            podBusy = [Double](repeating: 0, count: engines.count)
            // Interleaved rounds, so that a slow moment of this shared machine hits every mode alike.
            var samples = [[Double]](repeating: [], count: engines.count)
            var decodeSteps = 0, touched = 0
            for round in 0..<repeats {
                for (index, (name, engine)) in engines.enumerated() {
                    let before = engine.stats
                    let busyBefore = index == 0 ? 0 : podBusySeconds()
                    defer {
                        phases[index] += engine.stats.moePhases - before.moePhases
                        if index > 0 { podBusy[index] += podBusySeconds() - busyBefore }
                        if index == 0 {
                            decodeSteps += engine.stats.decodeSteps - before.decodeSteps
                            touched += engine.stats.decodeExpertsTouched - before.decodeExpertsTouched
                        }
                    }
                    let rate = try DecodeRun.measure(engine, batch: batch, promptTokens: promptTokens, decodeTokens: decodeTokens,
                                                     vocab: config.vocabSize, seed: UInt64(batch * 100 + round))
                    log(String(format: "batch %d %@ round %d: %.1f tok/s", batch, name, round + 1, rate))
                    samples[index].append(rate)
                }
            }
            let rates = samples.map(\.median)
            last = rates
            // The experts the monolithic engine's decode steps actually ran (all layers).
            let touchedPerStep = Double(touched) / Double(max(1, decodeSteps))
            rows.append(["batch": batch, "monolithic_tok_s": rates[0], "remote_shm_tok_s": rates[1], "remote_tcp_tok_s": rates[2],
                         "remote_shm_over_monolithic": rates[1] / rates[0], "remote_tcp_over_monolithic": rates[2] / rates[0],
                         "experts_touched_per_step": touchedPerStep])
            // Probed again after every batch size: a slow moment of this shared machine during one
            // probe must not lower the limit the figures are held to (the best of the probes counts).
            limits = limits.best(with: MachineLimits.measure(threads: BLAS.threads))
        }
        log(String(format: "machine, best of %d probes: memory read %.1f GB/s, f32 FMA peak %.0f GFLOP/s, bf16 dot peak %@", sizes.count + 1,
                   limits.readGBps, limits.f32GFlops, limits.bf16GFlops.map { String(format: "%.0f GFLOP/s", $0) } ?? "none"))
        for index in rows.indices {
            let rates = ["monolithic_tok_s", "remote_shm_tok_s", "remote_tcp_tok_s"].map { rows[index][$0] as! Double }
            let touchedPerStep = rows[index]["experts_touched_per_step"] as! Double
            let roofline = cost.rooflineTokensPerSecond(batch: sizes[index], context: Double(promptTokens) + Double(decodeTokens) / 2,
                                                        expertsTouched: touchedPerStep, limits: limits)
            rows[index]["roofline_tok_s"] = roofline
            rows[index]["roofline_fraction"] = rates[0] / roofline
            table.rows.append(["\(sizes[index])"] + rates.map { String(format: "%.1f", $0) } + [String(format: "%.2f", rates[1] / rates[0]), String(format: "%.2f", rates[2] / rates[0])]
                              + [String(format: "%.1f", touchedPerStep), String(format: "%.1f", roofline), String(format: "%.2f", rates[0] / roofline)])
        }

        let prefillSizes = try prefillSizes()
        var prefillRows: [[String: Any]] = []
        if !prefillSizes.isEmpty {
            // Its own monolithic engine: prompt chunks of up to --prefill-batch-tokens, as vLLM's.
            var configuration = GenerationEngine.Configuration()
            configuration.maxRunning = prefillSizes.max()!
            configuration.maxBatchTokens = prefillBatchTokens
            let engine = try GenerationEngine(modelDirectory: directory, experts: .local, configuration: configuration)
            engine.start()
            defer { engine.shutdown(drain: false) }
            log("prefill: warming up (\(prefillTokens)-token prompts, steps of up to \(prefillBatchTokens) tokens)")
            _ = try PrefillRun.measure(engine, batch: prefillSizes.max()!, promptTokens: prefillTokens, vocab: config.vocabSize, seed: 5)
            for batch in prefillSizes {
                var outcomes: [PrefillRun.Outcome] = []
                for round in 0..<repeats {
                    outcomes.append(try PrefillRun.measure(engine, batch: batch, promptTokens: prefillTokens, vocab: config.vocabSize, seed: UInt64(batch)))
                    log(String(format: "prefill batch %d round %d: %.1f tok/s, %.0f ms", batch, round + 1, outcomes.last!.tokensPerSecond, outcomes.last!.seconds * 1e3))
                }
                let median = outcomes.sorted { $0.seconds < $1.seconds }[outcomes.count / 2]
                prefillRows.append(["batch": batch, "prompt_tokens": prefillTokens, "monolithic_prefill_tok_s": median.tokensPerSecond,
                                    "ttft_ms": median.seconds * 1e3])
            }
        }

        // Attention and experts on separate cores, with and without the ping-pong micro-batches.
        let overlapSizes = try overlapSizes()
        var overlap: OverlapRun.Measurement?
        var overlapSkipped: String?
        if overlapSizes.isEmpty {
            overlapSkipped = "no batch size of at least 2"
        } else if let reason = OverlapRun.unavailable {
            overlapSkipped = reason
            log("overlap configuration skipped: \(reason)")
        } else {
            overlap = try OverlapRun.run(model: directory, batches: overlapSizes, promptTokens: promptTokens, decodeTokens: decodeTokens,
                                         repeats: repeats, wireDtype: wireDtype, maxBatchTokens: engineConfiguration.maxBatchTokens, log: log)
        }
        /// The monolithic engine's rate (both CPUs) at `batch`, when it was one of the batch sizes.
        func monolithic(at batch: Int) -> Double? { rows.first { $0["batch"] as? Int == batch }?["monolithic_tok_s"] as? Double }
        let overlapRuns = overlap?.entries(monolithic: monolithic) ?? []
        for entry in overlapRuns {
            if let index = rows.firstIndex(where: { $0["batch"] as? Int == entry["batch"] as? Int }) {
                for key in ["overlap_tok_s", "overlap_speedup", "overlap_ideal_speedup", "overlap_over_monolithic"] { rows[index][key] = entry[key] }
            }
        }

        let failureSequences = failureBatch ?? largest
        func requestsServed() -> [Double] {
            endpoints.map { (try? PodBenchCommand.httpGet("http://\($0.metrics)/metrics")).map { PodBenchCommand.metric($0, "eaas_requests_total") } ?? 0 }
        }
        // Pairs: the same sequences without a failure first (the reference for the failure run's
        // tokens and rate), then with the busy pod killed; before the next pair the killed pod is
        // replaced by a new one (as its ReplicaSet would), which joins the membership.
        var pairRuns: [(reference: FailureRun.Outcome, failure: FailureRun.Outcome, loss: Double)] = []
        var sameTokens = (identical: true, compared: 0)
        for pair in 0..<failurePairs {
            log("failure run \(pair + 1) of \(failurePairs), reference: \(failureSequences) sequences for \(failureSeconds) s over shm, no pod killed")
            let reference = try FailureRun.measure(engines[1].1, batch: failureSequences, seconds: failureSeconds, promptTokens: promptTokens,
                                                   vocab: config.vocabSize, kill: nil)
            log("failure run \(pair + 1) of \(failurePairs): the same, the busiest of \(pods) pods killed at \(failureSeconds / 2) s")
            let servedBefore = requestsServed()
            var killed: Int?
            let failure = try FailureRun.measure(engines[1].1, batch: failureSequences, seconds: failureSeconds, promptTokens: promptTokens,
                                                 vocab: config.vocabSize) {
                // The worker keeps to the replica that served last: the pod to kill is the one busy in this run.
                let served = zip(requestsServed(), servedBefore).map { $0 - $1 }
                let busiest = served.indices.max { served[$0] < served[$1] }!
                podProcesses[busiest].kill()
                killed = busiest
            }
            let same = FailureRun.compare(failure.completed, with: reference.completed)
            sameTokens = (sameTokens.identical && same.identical, sameTokens.compared + same.compared)
            // Both runs take the same steps, so the reference's own change from the first half to the
            // second (sequences grow older: longer contexts, more attention) is not the failure's.
            pairRuns.append((reference, failure, FailureRun.pairedLoss(failure, reference: reference)))
            if pair + 1 < failurePairs, let killed {
                let replacement = try startPod()
                podProcesses[killed] = replacement
                endpoints[killed] = try endpoint(of: replacement)
                // Every pod now alive, the replacement asked over the data plane what it hosts.
                var dispatcher = Dispatcher.Configuration(poolToken: Array(token.utf8), clientID: UInt64.random(in: 1...UInt64.max))
                dispatcher.backend = .shm
                shmMembership?.set(try ExpertPods.staticMembership(addresses: endpoints.map(\.data), config: config, dispatcher: dispatcher).view)
            }
        }
        // The first pair's series and rates; the loss is the pairs' median; failures and the
        // smallest bucket over every pair.
        let (reference, failure) = (pairRuns[0].reference, pairRuns[0].failure)
        let failureLoss = pairRuns.map(\.loss).median
        let failedRequests = pairRuns.reduce(0) { $0 + $1.failure.failedRequests + $1.reference.failedRequests }
        let failovers = pairRuns.reduce(0) { $0 + $1.failure.failovers }
        let minBucket = pairRuns.map(\.failure.minBucketOverMedian).min()!

        // vLLM in the checkpoint's dtype (the like-for-like comparison), and in fp32 when asked.
        var vllmRuns: [(key: String, dtype: String)] = []
        if vllm != nil {
            let checkpoint = config.dtype ?? .f32
            let native = checkpoint == .bf16 ? "bfloat16" : checkpoint == .f16 ? "float16" : "float32"
            vllmRuns.append((checkpoint == .bf16 ? "bf16" : checkpoint == .f16 ? "f16" : "fp32", native))
            if vllmFp32 && native != "float32" { vllmRuns.append(("fp32", "float32")) }
        }
        for (key, dtype) in vllmRuns {
            log("vLLM (\(dtype)): \(vllm!)")
            let measured = try VLLMRun.measure(python: vllm!, model: directory, sizes: sizes, promptTokens: promptTokens, decodeTokens: decodeTokens,
                                               prefill: (sizes: prefillSizes, promptTokens: prefillTokens, batchTokens: prefillBatchTokens), dtype: dtype)
            for (index, row) in measured.prefill.enumerated() where index < prefillRows.count {
                guard let rate = row["vllm_prefill_tok_s"] as? Double, let seconds = row["vllm_prefill_seconds"] as? Double else { continue }
                prefillRows[index]["vllm_\(key)_prefill_tok_s"] = rate
                prefillRows[index]["vllm_\(key)_ttft_ms"] = seconds * 1e3
                prefillRows[index]["monolithic_over_vllm_\(key)_prefill"] = (prefillRows[index]["monolithic_prefill_tok_s"] as! Double) / rate
            }
            for (index, row) in measured.decode.enumerated() {
                guard let rate = row["vllm_tok_s"] as? Double else { continue }
                let mono = rows[index]["monolithic_tok_s"] as! Double
                rows[index]["vllm_\(key)_tok_s"] = rate
                rows[index]["monolithic_over_vllm_\(key)"] = mono / rate
                if key == vllmRuns[0].key {
                    rows[index]["vllm_tok_s"] = rate
                    rows[index]["monolithic_over_vllm"] = mono / rate
                }
            }
        }

        /// Per MoE layer call of mode `index`: its phases, and (remote) the pods' compute within the wait.
        func phaseMilliseconds(_ index: Int) -> [String: Double] {
            var ms = phases[index].millisecondsPerLayer
            ms["pod_compute"] = podBusy[index] * 1e3 / Double(max(1, phases[index].layers))
            return ms
        }
        var report = BenchReport(bench: "e2e")
        report.results = rows
        let overlapSummary = overlap?.summary(monolithic: monolithic) ?? ["overlap_runs": [] as [Any], "overlap_skipped": overlapSkipped ?? "not run"]
        report.summary = [
            "model": ["directory": directory, "architecture": config.architecture.cliName, "hidden": config.hiddenSize, "expert_ffn": config.expertFFNSize,
                      "experts": config.expertCount, "top_k": config.router.topK, "layers": config.layerCount, "dtype": config.dtype?.rawValue ?? "?"],
            "batch": largest, "prompt_tokens": promptTokens, "decode_tokens": decodeTokens, "pods": pods, "wire_dtype": wireDtype,
            "monolithic_tok_s": last[0], "remote_shm_tok_s": last[1], "remote_tcp_tok_s": last[2],
            "remote_shm_over_monolithic": last[1] / last[0], "remote_tcp_over_monolithic": last[2] / last[0],
            "failure_loss_fraction": failureLoss, "failure_loss_unpaired_fraction": failure.loss, "failed_requests": failedRequests,
            "failure_pairs": failurePairs, "failure_pair_loss_fractions": pairRuns.map(\.loss),
            "failure_before_tok_s": failure.before, "failure_after_tok_s": failure.after, "failure_failovers": failovers,
            "failure_series_tok_s": failure.series, "failure_series_bucket_seconds": failure.bucket, "failure_kill_at_seconds": failure.killAt,
            "failure_min_bucket_over_median": minBucket, "failure_tokens_identical": sameTokens.identical,
            "failure_sequences_compared": sameTokens.compared, "failure_reference_series_tok_s": reference.series,
            "failure_reference_min_bucket_over_median": reference.minBucketOverMedian, "failure_reference_loss_fraction": reference.loss,
            "memory_read_gbps": limits.readGBps, "f32_peak_gflops": limits.f32GFlops, "bf16_peak_gflops": limits.bf16GFlops ?? 0,
            "threads": limits.threads, "prefill": prefillRows, "prefill_batch_tokens": prefillBatchTokens,
            "matmul": MatmulPrecision.process.effective.rawValue,
            // Per MoE layer call of the largest batch's decode runs, remote over shm; every mode below.
            "phase_ms": phaseMilliseconds(1),
            "phase_ms_by_mode": Dictionary(uniqueKeysWithValues: zip(["monolithic", "remote_shm", "remote_tcp"], phases.indices.map(phaseMilliseconds))),
        ].merging(overlapSummary) { $1 }
        if json {
            print(try report.json())
            return
        }
        print(table.render())
        if !vllmRuns.isEmpty {
            let keys = vllmRuns.map(\.key)
            var comparison = TextTable(columns: ["batch", "monolithic tok/s"] + keys.map { "vLLM \($0) tok/s" } + keys.map { "mono/vLLM \($0)" } + ["roofline tok/s"])
            for row in rows {
                let rates = keys.map { row["vllm_\($0)_tok_s"] as? Double }
                comparison.rows.append(["\(row["batch"]!)", String(format: "%.1f", row["monolithic_tok_s"] as! Double)]
                                       + rates.map { $0.map { String(format: "%.1f", $0) } ?? "-" }
                                       + rates.map { $0.map { String(format: "%.2f", (row["monolithic_tok_s"] as! Double) / $0) } ?? "-" }
                                       + [String(format: "%.1f", row["roofline_tok_s"] as! Double)])
            }
            print("\n" + comparison.render())
        }
        if !prefillRows.isEmpty {
            let keys = vllmRuns.map(\.key)
            var prefill = TextTable(columns: ["prefill batch", "prompt tokens", "monolithic tok/s", "TTFT ms"]
                                    + keys.flatMap { ["vLLM \($0) tok/s", "vLLM \($0) TTFT ms", "mono/vLLM \($0)"] })
            for row in prefillRows {
                prefill.rows.append(["\(row["batch"]!)", "\(row["prompt_tokens"]!)", String(format: "%.1f", row["monolithic_prefill_tok_s"] as! Double),
                                     String(format: "%.1f", row["ttft_ms"] as! Double)]
                                    + keys.flatMap { key -> [String] in
                                        guard let rate = row["vllm_\(key)_prefill_tok_s"] as? Double, let ttft = row["vllm_\(key)_ttft_ms"] as? Double else { return ["-", "-", "-"] }
                                        return [String(format: "%.1f", rate), String(format: "%.1f", ttft),
                                                String(format: "%.2f", (row["monolithic_prefill_tok_s"] as! Double) / rate)]
                                    })
            }
            print("\n" + prefill.render())
        }
        let phaseKeys = ["gate", "narrow", "dispatch", "wait", "pod_compute", "copy", "combine", "local_experts"]
        var phaseTable = TextTable(columns: ["ms per MoE layer, batch \(largest)"] + phaseKeys)
        for (index, (name, _)) in engines.enumerated() {
            let ms = phaseMilliseconds(index)
            phaseTable.rows.append([name] + phaseKeys.map { String(format: "%.3f", ms[$0] ?? 0) })
        }
        print("\n" + phaseTable.render())
        print("(wait: from the requests sent until the answers are in; pod_compute: the pods' own compute within it, eaas_busy_seconds_total; the rest of the wait is the data plane's round trip and wake-ups)")
        print(String(format: "\nthis machine (best of the run's probes): memory read %.1f GB/s on %d threads, f32 FMA peak %.0f GFLOP/s, bf16 dot peak %@",
                     limits.readGBps, limits.threads, limits.f32GFlops, limits.bf16GFlops.map { String(format: "%.0f GFLOP/s", $0) } ?? "none"))
        print("matmul: \(MatmulPrecision.process.summary)")
        print("\n" + (overlap?.render(monolithic: monolithic) ?? "overlap configuration skipped: \(overlapSkipped ?? "not run")"))
        print(String(format: "\nfailure run (shm, batch %d): %.1f tok/s before the kill, %.1f after; loss against the run without the kill %.2f%%%@, %d failed requests, %d failovers",
                     failureSequences, failure.before, failure.after, failureLoss * 100,
                     failurePairs > 1 ? " (median of \(failurePairs) pairs: " + pairRuns.map { String(format: "%.2f%%", $0.loss * 100) }.joined(separator: ", ") + ")" : "",
                     failedRequests, failovers))
        print(String(format: "tok/s per %.2f s: ", failure.bucket) + failure.series.map { String(format: "%.0f", $0) }.joined(separator: " ") + String(format: " (kill at %.1f s)", failure.killAt))
        print("the same without the kill: " + reference.series.map { String(format: "%.0f", $0) }.joined(separator: " ")
              + String(format: " (%.1f tok/s before the middle, %.1f after: %.2f%% lower)", reference.before, reference.after, reference.loss * 100))
        print(String(format: "smallest bucket from the first decode token on ÷ median: %.2f with the kill (every pair), %.2f without (the first); ", minBucket,
                     reference.minBucketOverMedian)
              + "tokens of the \(sameTokens.compared) sequences both runs of a pair completed: \(sameTokens.identical ? "identical" : "DIFFERENT")")
    }

    private func log(_ text: String) {
        FileHandle.standardError.write(Data("[e2e] \(text)\n".utf8))
    }

    /// The checkpoint of the options' shape in the cache directory, written when missing.
    private func generatedModel() throws -> String {
        let name = "qwen3-moe-h\(hidden)-f\(expertFfn)-e\(experts)-k\(topK)-l\(layers)-a\(heads)x\(kvHeads)-v\(vocab)-\(dtype)"
        let directory = cacheDir + "/" + name
        if FileManager.default.fileExists(atPath: directory + "/config.json"), (try? Checkpoint(directory: directory)) != nil { return directory }
        log("writing \(directory) (once)")
        var spec = RandomModelSpec(architecture: .qwen3Moe, layers: layers, experts: experts, topK: topK, hidden: hidden)
        spec.expertFFN = expertFfn
        spec.heads = heads
        spec.keyValueHeads = kvHeads
        spec.vocab = vocab
        spec.dtype = DType(userSpelling: dtype)!
        spec.seed = 2048
        try? FileManager.default.removeItem(atPath: directory)
        _ = try RandomModel.write(spec, to: directory)
        return directory
    }
}
