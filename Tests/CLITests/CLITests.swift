import Foundation
import Platform
import Testing

/// The `eaas` binary run as a user runs it: exit status, what it prints, what it refuses.
@Suite("eaas command line")
struct CLITests {
    /// The `eaas` built beside this test bundle.
    static let binary: String = {
        var directory = URL(fileURLWithPath: CommandLine.arguments[0]).deletingLastPathComponent()
        // The xctest bundle may be a directory (macOS) or a file (Linux) in the products folder.
        if directory.lastPathComponent.hasSuffix(".xctest") || directory.lastPathComponent == "MacOS" {
            directory = directory.deletingLastPathComponent()
        }
        for candidate in [directory, directory.deletingLastPathComponent()] {
            let path = candidate.appendingPathComponent("eaas").path
            if FileManager.default.isExecutableFile(atPath: path) { return path }
        }
        return directory.appendingPathComponent("eaas").path
    }()

    struct Result {
        let status: Int32
        let stdout: String
        let stderr: String
    }

    /// Runs `eaas arguments` to its end. The waiting happens on a thread of its own, never on
    /// the test pool's: a bench that runs a minute must not hold one of the few threads the
    /// other tests' timers need (on two cores, two such waits starved every scenario test).
    static func run(_ arguments: [String], environment: [String: String] = [:]) async throws -> Result {
        try await withCheckedThrowingContinuation { continuation in
            Thread {
                continuation.resume(with: Swift.Result<CLITests.Result, Error> { try runBlocking(arguments, environment: environment) })
            }.start()
        }
    }

    private static func runBlocking(_ arguments: [String], environment: [String: String]) throws -> Result {
        let out = Pipe(), err = Pipe()
        let process = try ChildProcess(executable: binary, arguments: arguments, environment: ProcessInfo.processInfo.environment.merging(environment) { $1 },
                                       standardOutput: .pipe(out), standardError: .pipe(err))
        // stderr is read on a thread of its own, so that neither pipe can fill while the other is read.
        final class Box: @unchecked Sendable { var data = Data() }
        let errors = Box(), read = DispatchSemaphore(value: 0)
        Thread { errors.data = err.fileHandleForReading.readDataToEndOfFile(); read.signal() }.start()
        let stdout = out.fileHandleForReading.readDataToEndOfFile()
        read.wait()
        let stderr = errors.data
        process.waitUntilExit()
        return Result(status: process.terminationStatus, stdout: String(decoding: stdout, as: UTF8.self), stderr: String(decoding: stderr, as: UTF8.self))
    }

    static func temporaryDirectory() throws -> String {
        let path = NSTemporaryDirectory() + "eaas-cli-\(UUID().uuidString)"
        try FileManager.default.createDirectory(atPath: path, withIntermediateDirectories: true)
        return path
    }

    @Test("model init writes a checkpoint that model inspect reads and checks")
    func initThenInspect() async throws {
        let dir = try Self.temporaryDirectory()
        defer { try? FileManager.default.removeItem(atPath: dir) }
        let made = try await Self.run(["model", "init", "--arch", "deepseek-v3", "--layers", "3", "--experts", "16", "--top-k", "4",
                                 "--hidden", "64", "--dense-layers", "1", "--max-shard-size", "64KB", "--out", dir + "/m"])
        #expect(made.status == 0, "\(made.stderr)")
        #expect(made.stdout.contains("wrote DeepseekV3ForCausalLM"))
        #expect(FileManager.default.fileExists(atPath: dir + "/m/model.safetensors.index.json"))
        let inspected = try await Self.run(["model", "inspect", dir + "/m"])
        #expect(inspected.status == 0, "\(inspected.stderr)")
        for fragment in ["DeepseekV3ForCausalLM", "moe layers     1-2 of 0-2", "16 routed", "top-4", "sigmoid scores + correction bias",
                         "router, experts and shared experts are present"] {
            #expect(inspected.stdout.contains(fragment), "inspect output lacks '\(fragment)':\n\(inspected.stdout)")
        }
        // Nothing already written is lost: a second init into the same place is refused without --force.
        let again = try await Self.run(["model", "init", "--arch", "mixtral", "--layers", "1", "--experts", "2", "--top-k", "1", "--hidden", "32", "--out", dir + "/m"])
        #expect(again.status != 0 && again.stderr.contains("already holds a checkpoint") && again.stderr.contains("--force"))
        #expect(again.stderr.contains("model.safetensors.index.json"))
        // --force replaces the sharded checkpoint with a single file and leaves no stale shard or index.
        let forced = try await Self.run(["model", "init", "--arch", "mixtral", "--layers", "1", "--experts", "2", "--top-k", "1", "--hidden", "32",
                                   "--out", dir + "/m", "--force"])
        #expect(forced.status == 0, "\(forced.stderr)")
        let files = try FileManager.default.contentsOfDirectory(atPath: dir + "/m").sorted()
        #expect(files == ["config.json", "model.safetensors"])
        let inspectedAgain = try await Self.run(["model", "inspect", dir + "/m"])
        #expect(inspectedAgain.stdout.contains("MixtralForCausalLM") && inspectedAgain.stdout.contains("shapes"))
    }

    @Test("Weights without a config.json are not overwritten either")
    func bareWeightsAreKept() async throws {
        let dir = try Self.temporaryDirectory()
        defer { try? FileManager.default.removeItem(atPath: dir) }
        try Data([1, 2, 3]).write(to: URL(fileURLWithPath: dir + "/model.safetensors"))
        let result = try await Self.run(["model", "init", "--arch", "olmoe", "--layers", "1", "--experts", "2", "--top-k", "1", "--hidden", "32", "--out", dir])
        #expect(result.status != 0 && result.stderr.contains("model.safetensors"))
        #expect(try Data(contentsOf: URL(fileURLWithPath: dir + "/model.safetensors")) == Data([1, 2, 3]))
    }

    @Test("Bad arguments are refused with the option named", arguments: [
        (["model", "init", "--arch", "llama", "--layers", "1", "--experts", "2", "--top-k", "1", "--hidden", "32", "--out", "/tmp/x"], "unknown --arch 'llama'"),
        (["model", "init", "--arch", "olmoe", "--layers", "1", "--experts", "2", "--top-k", "3", "--hidden", "32", "--out", "/tmp/eaas-never"], "--top-k 3 must be between 1 and --experts 2"),
        (["model", "init", "--arch", "olmoe", "--layers", "1", "--experts", "2", "--top-k", "1", "--hidden", "32", "--dtype", "f8", "--out", "/tmp/x"], "--dtype 'f8'"),
        (["model", "inspect", "/nonexistent/eaas-model"], "/nonexistent/eaas-model/config.json: cannot read"),
        (["bench", "experts", "--shapes", "64x32"], "--shapes: '64x32'"),
        (["bench", "experts", "--shapes", "1x2xfoox3x4"], "--shapes: '1x2xfoox3x4'"),
        (["bench", "transport", "--backend", "verbs"], "--backend 'verbs' is not shm or tcp"),
        (["model", "init", "--arch", "qwen3-moe", "--layers", "1", "--experts", "2", "--top-k", "1", "--hidden", "32", "--heads", "0", "--out", "/tmp/eaas-never"], "--heads, --kv-heads"),
        (["model", "init", "--arch", "qwen3-moe", "--layers", "1", "--experts", "2", "--top-k", "1", "--hidden", "32", "--max-shard-size", "1e300GB", "--out", "/tmp/eaas-never"], "--max-shard-size '1e300GB'"),
        (["generate", "--model", "/tmp/x", "--prompt-ids", "1,two"], "--prompt-ids '1,two'"),
        (["generate", "--model", "/tmp/x", "--prompt-ids", "1", "--experts", "remote"], "--membership FILE, --expert-servers HOST:PORT,… or --pool NAME"),
        (["generate", "--model", "/tmp/x", "--prompt-ids", "1", "--membership", "m.json"], "need --experts remote"),
        (["generate", "--model", "/tmp/x", "--prompt-ids", "1", "--temperature", "-1"], "temperature"),
        (["generate", "--model", "/nonexistent/eaas-model", "--prompt-ids", "1"], "/nonexistent/eaas-model/config.json: cannot read"),
        (["worker", "--model", "/tmp/x", "--max-running", "8", "--max-batch-tokens", "4"], "max batch tokens (4) must be at least max running sequences (8)"),
        (["worker", "--model", "/tmp/x", "--experts", "both"], "--experts 'both' is not local or remote"),
        (["bench", "e2e", "--batch-sizes", "1,x"], "--batch-sizes '1,x'"),
        (["bench", "e2e", "--pods", "1"], "--pods must be at least 2"),
        (["bench", "e2e", "--prefill-batch-sizes", "1,0"], "--prefill-batch-sizes '1,0'"),
        (["bench", "e2e", "--prefill-batch-sizes", "8", "--prefill-batch-tokens", "4"], "--prefill-batch-tokens (4) must be at least the largest prefill batch (8)"),
        (["bench", "e2e", "--overlap-batch-sizes", "8,1"], "--overlap-batch-sizes '8,1': each must be at least 2"),
        (["bench", "overlap-worker", "--model", "/tmp/x", "--expert-servers", "127.0.0.1:1", "--pod-metrics", "127.0.0.1:2", "--batch-sizes", "1"], "--batch-sizes must each be at least 2"),
        (["generate", "--model", "/tmp/x", "--prompt-ids", "1", "--micro-batches", "3"], "--micro-batches must be 1, 2 or auto (got '3')"),
        (["generate", "--model", "/tmp/x", "--prompt-ids", "1", "--micro-batches", "2"], "--micro-batches 2 needs --experts remote"),
    ])
    func refusesBadArguments(arguments: [String], fragment: String) async throws {
        let result = try await Self.run(arguments)
        #expect(result.status != 0)
        #expect(result.stderr.contains(fragment), "stderr: \(result.stderr)")
    }

    @Test("bench transport --json prints one document with the fields the issue names, for shm and tcp", arguments: ["shm", "tcp"])
    func transportBenchJSON(backend: String) async throws {
        let result = try await Self.run(["bench", "transport", "--backend", backend, "--tokens", "1,4", "--hidden", "64", "--seconds", "0.01", "--json"])
        #expect(result.status == 0, "\(result.stderr)")
        let document = try JSONSerialization.jsonObject(with: Data(result.stdout.utf8)) as? [String: Any]
        #expect(document?["bench"] as? String == "transport")
        #expect((document?["dispatcher_ns_per_token_expert"] as? Double ?? 0) > 0)
        let rows = document?["results"] as? [[String: Any]] ?? []
        #expect(rows.count == 2)
        for row in rows {
            for key in ["tokens", "bytes", "rtt_us", "gbps", "limit_gbps", "ratio_to_limit"] { #expect(row[key] != nil, "row lacks \(key)") }
            #expect((row["rtt_us"] as? Double ?? 0) > 0)
        }
        #expect(rows.first?["bytes"] as? Int == (16 + 24 + 4 + 4 + 64 * 2) + (16 + 16 + 64 * 4))
    }

    @Test("bench e2e --json on a tiny model prints the throughput, ratio and failure fields the issue names, and the failure run keeps every token")
    func e2eBenchJSON() async throws {
        let cache = try Self.temporaryDirectory()
        defer { try? FileManager.default.removeItem(atPath: cache) }
        let result = try await Self.run(["bench", "e2e", "--hidden", "64", "--expert-ffn", "32", "--experts", "8", "--top-k", "2", "--layers", "2",
                                   "--heads", "4", "--kv-heads", "2", "--vocab", "256", "--batch-sizes", "1,4", "--decode-tokens", "4",
                                   "--prefill-tokens", "40", "--prefill-batch-sizes", "1,3", "--prefill-batch-tokens", "64",
                                   "--failure-seconds", "2", "--failure-pairs", "2", "--cache-dir", cache, "--json"])
        #expect(result.status == 0, "\(result.stderr)")
        let document = try JSONSerialization.jsonObject(with: Data(result.stdout.utf8)) as? [String: Any]
        #expect(document?["bench"] as? String == "e2e")
        for key in ["monolithic_tok_s", "remote_shm_tok_s", "remote_tcp_tok_s", "remote_shm_over_monolithic", "remote_tcp_over_monolithic", "failure_loss_fraction"] {
            #expect((document?[key] as? Double ?? -1) >= 0, "\(key) missing or negative")
        }
        #expect(document?["failed_requests"] as? Int == 0)
        #expect((document?["results"] as? [[String: Any]])?.map { $0["batch"] as? Int } == [1, 4])
        #expect((document?["failure_failovers"] as? Int ?? 0) >= 2, "a killed pod was not noticed in each of the two pairs")
        // Two pairs, the killed pod replaced between them; the loss is their median.
        let pairLosses = document?["failure_pair_loss_fractions"] as? [Double] ?? []
        #expect(pairLosses.count == 2 && document?["failure_pairs"] as? Int == 2)
        if pairLosses.count == 2 {
            #expect(abs((document?["failure_loss_fraction"] as? Double ?? -1) - (pairLosses[0] + pairLosses[1]) / 2) < 1e-9)
        }
        // The failure run against the same sequences without the kill: token for token the same.
        #expect(document?["failure_tokens_identical"] as? Bool == true)
        #expect((document?["failure_sequences_compared"] as? Int ?? 0) >= 1)
        let minBucket = document?["failure_min_bucket_over_median"] as? Double ?? -1
        #expect(minBucket >= 0 && minBucket <= 1, "smallest bucket over median: \(minBucket)")
        #expect((document?["failure_reference_series_tok_s"] as? [Double])?.isEmpty == false)
        // Where a remote MoE layer's time goes, per phase; the remote modes waited on their pods.
        let phaseMS = document?["phase_ms"] as? [String: Double] ?? [:]
        #expect(Set(phaseMS.keys).isSuperset(of: ["gate", "narrow", "dispatch", "wait", "combine", "copy"]), "phase_ms: \(phaseMS)")
        #expect((phaseMS["wait"] ?? 0) > 0 && (phaseMS["gate"] ?? 0) > 0)
        // The pods' own compute is read from their metrics: part of the wait, never more than it by much.
        let podCompute = phaseMS["pod_compute"] ?? 0
        #expect(podCompute > 0 && podCompute < (phaseMS["wait"] ?? 0) + (phaseMS["dispatch"] ?? 0) + 0.5, "pod compute \(podCompute) ms per layer: \(phaseMS)")
        // The overlap configuration (worker and pod pinned apart) at batch 4, with 1 and 2 micro-batches.
        if let skipped = document?["overlap_skipped"] as? String {
            #expect(OverlapRunAvailability.cpus < 2, "overlap skipped on a machine with \(OverlapRunAvailability.cpus) CPUs: \(skipped)")
        } else {
            #expect((document?["overlap_runs"] as? [[String: Any]])?.map { $0["batch"] as? Int } == [4])
            #expect(document?["overlap_batch"] as? Int == 4)
            for key in ["overlap_tok_s", "overlap_plain_tok_s", "overlap_speedup", "overlap_attention_ms_per_step", "overlap_experts_ms_per_step",
                        "overlap_pod_compute_ms_per_step", "overlap_over_monolithic", "overlap_auto_tok_s"] {
                #expect((document?[key] as? Double ?? 0) > 0, "\(key) missing or not positive")
            }
            #expect((document?["overlap_ideal_speedup"] as? Double ?? 0) >= 1)
            #expect(document?["overlap_worker_threads"] as? Int == 1, "the pinned worker sized its compute threads to its one CPU")
        }
        // The roofline beside the figures: this machine's read bandwidth, and per batch the experts
        // the decode steps ran (at most every expert of every layer) and the fraction achieved.
        #expect((document?["memory_read_gbps"] as? Double ?? 0) > 0.1)
        for row in document?["results"] as? [[String: Any]] ?? [] {
            let touched = row["experts_touched_per_step"] as? Double ?? -1
            #expect(touched > 0 && touched <= 16, "experts touched per step: \(touched)")
            #expect((row["roofline_tok_s"] as? Double ?? 0) > 0)
            let fraction = row["roofline_fraction"] as? Double ?? -1
            #expect(fraction > 0 && fraction < 1.5, "roofline fraction \(fraction)")
        }
        // Prefill rows: 40-token prompts at batch 1 and 3 (the second in two steps of at most 64 tokens).
        let prefill = document?["prefill"] as? [[String: Any]] ?? []
        #expect(prefill.map { $0["batch"] as? Int } == [1, 3])
        for row in prefill {
            #expect(row["prompt_tokens"] as? Int == 40)
            let rate = row["monolithic_prefill_tok_s"] as? Double ?? 0, ttft = row["ttft_ms"] as? Double ?? 0
            #expect(rate > 0 && ttft > 0)
            // tokens/s and the time to the last first token describe the same run.
            let tokens = Double(40 * (row["batch"] as? Int ?? 0))
            #expect(abs(rate * ttft / 1e3 - tokens) < 1e-6 * tokens)
        }
    }

    @Test("Under a CPU limit per replica, doubling a shard's replicas (and its clients) roughly doubles what it serves", arguments: ["auto", "rate-limit"])
    func benchPodReplicasAddCapacity(enforcement: String) async throws {
        let dir = try Self.temporaryDirectory()
        defer { try? FileManager.default.removeItem(atPath: dir) }
        let made = try await Self.run(["model", "init", "--arch", "qwen3-moe", "--layers", "1", "--experts", "8", "--top-k", "2",
                                 "--hidden", "256", "--ffn", "256", "--out", dir + "/m"])
        #expect(made.status == 0, "\(made.stderr)")
        func served(replicas: Int) async throws -> (tokensPerSecond: Double, enforcement: String?, fractionUsed: Double) {
            let result = try await Self.run(["bench", "pod", "--model", dir + "/m", "--shard", "0-7@0", "--cpu-limit", "0.25", "--cpu-enforcement", enforcement,
                                       "--replicas", "\(replicas)", "--clients", "\(4 * replicas)", "--seconds", "2", "--transport", "tcp", "--json"],
                                      environment: ["EAAS_POOL_TOKEN": "cli-test-pool-token-0123456789"])
            #expect(result.status == 0, "\(result.stderr)")
            let document = try JSONSerialization.jsonObject(with: Data(result.stdout.utf8)) as? [String: Any]
            let row = (document?["results"] as? [[String: Any]])?.first
            return (row?["pod_tokens_per_s"] as? Double ?? 0, document?["capacity_enforcement"] as? String,
                    row?["cpu_limit_fraction_used"] as? Double ?? 0)
        }
        // Pairs (1 replica, then 2) until one is measured with every replica running on most of
        // its quota. The rest of the suite shares the two cores: a pair measured while it is busy
        // starves the pods below their limit (or the clients that load them), and then the machine,
        // not the quota, sets the rate. Replicas that add no capacity (one shared quota, clients
        // all on one replica) use at most about half of it each and never make such a pair, so
        // this still fails on them, once the deadline passes; the quota ceiling is checked on
        // every measurement.
        var pairs: [String] = []
        let deadline = ContinuousClock.now + .seconds(240)
        repeat {
            let one = try await served(replicas: 1), two = try await served(replicas: 2)
            if enforcement == "rate-limit" {
                #expect(one.enforcement == "rate-limit")
            } else {
                #expect(["cgroup-v1", "cgroup-v2", "rate-limit"].contains(one.enforcement ?? "none"))
            }
            // The limit is a ceiling: a replica never uses much more than its quota, whoever enforces it
            // (the CPU window also holds the clients' start, which the elapsed time does not; unlimited, a pod would use ~4×).
            #expect(one.fractionUsed <= 1.35 && two.fractionUsed <= 1.35, "quota used: \(one.fractionUsed), \(two.fractionUsed)")
            let ratio = two.tokensPerSecond / max(one.tokensPerSecond, 1e-9)
            let starved = min(one.fractionUsed, two.fractionUsed) < 0.7
            pairs.append("1 replica \(one.tokensPerSecond) tok/s on \(one.fractionUsed) of its quota, 2 replicas \(two.tokensPerSecond) tok/s on "
                         + "\(two.fractionUsed) of theirs (×\(ratio))\(starved ? ", starved" : "")")
            if !starved && ratio > 1.4 && ratio < 2.8 { return }
            try await Task.sleep(for: .seconds(2))
        } while ContinuousClock.now < deadline
        Issue.record("no pair of measurements with every replica on at least 0.7 of its quota had 2 replicas serve 1.4–2.8× one: \(pairs.joined(separator: "; "))")
    }

    @Test("bench elastic, a day squeezed into 70 s under load-aware placement: nothing fails, pods follow the demand, the plan gives the hottest expert the most replicas, the picture is written")
    func benchElasticShort() async throws {
        let dir = try Self.temporaryDirectory()
        defer { try? FileManager.default.removeItem(atPath: dir) }
        // A day squeezed into 70 s: night, a rise to the peak from 20 s to 35 s, night again from 40 s,
        // so that scale-down (10 s stabilization) has time to show. Light enough to share the machine with the suite.
        try "seconds,requests_per_second\n0,1.5\n15,1.5\n20,6\n35,6\n40,1.5\n70,1.5\n".write(toFile: dir + "/day.csv", atomically: true, encoding: .utf8)
        let result = try await Self.run(["bench", "elastic", "--trace", dir + "/day.csv", "--calibration-seconds", "10", "--policies", "load-aware",
                                   "--min-improvement", "0", "--workdir", dir, "--json"],
                                  environment: ["EAAS_POOL_TOKEN": "cli-test-pool-token-0123456789"])
        #expect(result.status == 0, "\(result.stderr.suffix(3000))")
        let document = try #require(try JSONSerialization.jsonObject(with: Data(result.stdout.utf8)) as? [String: Any], "\(result.stdout.prefix(2000))")
        let policies = try #require(document["policies"] as? [[String: Any]])
        let summary = try #require(document["summary"] as? [String: Any])
        #expect(policies.map { $0["name"] as? String } == ["load-aware"])
        let run = try #require(policies.first)
        #expect(run["failed_requests"] as? Int == 0)
        #expect((run["requests"] as? Int ?? 0) > 100)
        #expect((run["pod_seconds"] as? Double ?? 0) > 60 && (run["cpu_seconds"] as? Double ?? 0) > 0)
        // The trace's own arithmetic: mean (1.5·15 + 3.75·5 + 6·15 + 3.75·5 + 1.5·30) / 70 requests/s, peak 6.
        let ideal = summary["ideal_saving"] as? Double ?? 0
        #expect(abs(ideal - (1 - (22.5 + 18.75 + 90 + 18.75 + 45) / 70 / 6)) < 1e-9, "ideal saving \(ideal)")
        #expect(["cgroup-v1", "cgroup-v2", "rate-limit"].contains(summary["capacity_enforcement"] as? String ?? "none"))
        let top5 = summary["top5_expert_share"] as? Double ?? 0
        #expect(top5 > 0.625 && top5 <= 1, "4 topics, Zipf 1.2: the five busiest of 8 experts take more than 5/8 (\(top5))")
        // Replicas follow the trace: up from the night's count towards the afternoon's peak, and down again before the night.
        let ready = (run["series"] as? [[String: Any]] ?? []).compactMap { $0["ready_pods"] as? Int }
        let most = ready.max() ?? 0
        #expect(ready.count > 50 && ready.first! < most && ready.last! < most, "ready pods each second: \(ready)")
        // The plan from measured load gives the expert that was hottest over its window the most replicas.
        let placement = try #require(summary["placement"] as? [String: Any], "no placement was planned: \(summary)")
        let replicas = placement["expert_replicas"] as? [Int] ?? []
        #expect(placement["hottest_expert_replicas"] as? Int == replicas.max(), "\(placement)")
        // A plan was rolled out: the run counts its re-plans and the pod-seconds spent while a
        // rollout was under way (some, and less than the whole run's).
        let rollouts = run["rollouts"] as? Int ?? 0
        #expect(rollouts >= 1 && rollouts <= placement["revision"] as? Int ?? 0, "\(rollouts) rollouts, last plan \(placement["revision"] ?? "none")")
        let rolloutPodSeconds = run["rollout_pod_seconds"] as? Double ?? -1
        #expect(rolloutPodSeconds > 0 && rolloutPodSeconds < (run["pod_seconds"] as? Double ?? 0), "rollout pod-seconds \(rolloutPodSeconds)")
        let picture = try String(contentsOfFile: try #require(summary["picture"] as? String), encoding: .utf8)
        #expect(picture.hasPrefix("<svg") && picture.contains("load-aware"))
    }

    @Test("bench elastic refuses an unknown policy, a trace it cannot read, --duration beside --trace and a day too short, naming what is wrong")
    func benchElasticRefusesBadInput() async throws {
        let dir = try Self.temporaryDirectory()
        defer { try? FileManager.default.removeItem(atPath: dir) }
        let policy = try await Self.run(["bench", "elastic", "--policies", "static,autoscale"])
        #expect(policy.status != 0 && policy.stderr.contains("'autoscale' is not one of static, shard-hpa, load-aware"), "\(policy.stderr)")
        try "seconds,rps\n0,2\n30,abc\n".write(toFile: dir + "/trace.csv", atomically: true, encoding: .utf8)
        let trace = try await Self.run(["bench", "elastic", "--trace", dir + "/trace.csv", "--workdir", dir])
        #expect(trace.status != 0 && trace.stderr.contains("line 3"), "\(trace.stderr)")
        // A file gives its own length: --duration beside it is refused, not ignored.
        let both = try await Self.run(["bench", "elastic", "--trace", dir + "/trace.csv", "--duration", "120", "--workdir", dir])
        #expect(both.status != 0 && both.stderr.contains("--duration shapes the built-in trace"), "\(both.stderr)")
        let short = try await Self.run(["bench", "elastic", "--duration", "5", "--workdir", dir])
        #expect(short.status != 0 && short.stderr.contains("--duration must be between 30 and 86400 seconds"), "\(short.stderr)")
    }

    @Test("generate prints the greedy tokens of a fixture, as transformers does")
    func generateFixture() async throws {
        let fixture = URL(fileURLWithPath: #filePath).deletingLastPathComponent().deletingLastPathComponent().appendingPathComponent("Fixtures/qwen2-moe").path
        let result = try await Self.run(["generate", "--model", fixture, "--prompt-ids", "54,20,20,61,49,39,26", "--max-tokens", "16", "--ignore-eos", "--json"])
        #expect(result.status == 0, "\(result.stderr)")
        let document = try JSONSerialization.jsonObject(with: Data(result.stdout.utf8)) as? [String: Any]
        let sequence = (document?["sequences"] as? [[String: Any]])?.first
        // Tests/Fixtures/qwen2-moe/generation.safetensors (make_fixtures.py)
        #expect(sequence?["token_ids"] as? [Int] == [32, 52, 16, 58, 38, 25, 25, 52, 52, 52, 52, 52, 16, 13, 43, 27])
        #expect(sequence?["finish_reason"] as? String == "length")
    }

    @Test("bench experts --json prints one document with the fields the issue names")
    func benchJSON() async throws {
        let result = try await Self.run(["bench", "experts", "--shapes", "64x48x4x2", "--tokens", "1,16,128", "--dtypes", "f32,bf16", "--seconds", "0.01", "--json"])
        #expect(result.status == 0, "\(result.stderr)")
        let document = try JSONSerialization.jsonObject(with: Data(result.stdout.utf8)) as? [String: Any]
        #expect(document?["bench"] as? String == "experts")
        #expect((document?["machine"] as? [String: Any])?["cores"] != nil)
        let rows = document?["results"] as? [[String: Any]] ?? []
        #expect(rows.count == 6)
        for row in rows {
            for key in ["shape", "tokens_per_expert", "gflops", "sgemm_gflops", "ratio_to_sgemm", "weight_gbps", "bandwidth_fraction"] { #expect(row[key] != nil, "row lacks \(key)") }
            #expect((row["ratio_to_sgemm"] as? Double ?? 0) > 0)
        }
        #expect(rows.first?["shape"] as? String == "h64-f48-e4-k2")
        #expect(rows.first?["tokens_per_expert"] as? Double == 0.5)
        #expect((document?["memory_read_gbps"] as? Double ?? 0) > 0.1)
        #expect(["bf16", "exact"].contains(document?["matmul"] as? String ?? ""))
    }

    @Test("bench experts as a table prints every summary line, the matmul precision among them, and exits 0")
    func benchTable() async throws {
        let result = try await Self.run(["bench", "experts", "--shapes", "64x48x4x2", "--tokens", "1,128", "--dtypes", "bf16", "--seconds", "0.01"],
                                  environment: ["EAAS_MATMUL": "exact"])
        #expect(result.status == 0, "\(result.stderr)")
        #expect(result.stdout.contains("matmul: exact"), "\(result.stdout)")
        #expect(result.stdout.contains("memory_read_gbps: "))
    }

    @Test("EAAS_MATMUL that is neither bf16 nor exact stops a command that multiplies, naming the value")
    func refusesBadMatmul() async throws {
        let result = try await Self.run(["bench", "experts", "--shapes", "64x48x4x2", "--tokens", "1", "--dtypes", "bf16", "--seconds", "0.01"],
                                  environment: ["EAAS_MATMUL": "fast"])
        #expect(result.status == 2)
        #expect(result.stderr.contains("EAAS_MATMUL='fast' is not 'bf16' or 'exact'"), "\(result.stderr)")
    }

    @Test("expert-pod refuses bad options, shards the model cannot serve, and a missing pool token, each by name")
    func expertPodRefusals() async throws {
        let dir = try Self.temporaryDirectory()
        defer { try? FileManager.default.removeItem(atPath: dir) }
        let made = try await Self.run(["model", "init", "--arch", "qwen3-moe", "--layers", "1", "--experts", "4", "--top-k", "2", "--hidden", "32", "--out", dir + "/m"])
        #expect(made.status == 0, "\(made.stderr)")
        try Data("secret\n".utf8).write(to: URL(fileURLWithPath: dir + "/token"))
        let cases: [([String], String)] = [
            (["--shard", "1-x"], "'1-x' is not an id or an ascending range of experts"),
            (["--shard", "0", "--transport", "udp"], "--transport 'udp' is not tcp, shm or verbs"),
            (["--shard", "0", "--listen", "nowhere"], "--listen 'nowhere' is not HOST:PORT"),
            (["--shard", "9", "--pool-token-file", dir + "/token"], "expert 9 does not exist (the model has 4 experts, 0-3)"),
            (["--shard", "0", "--pool-token-file", dir + "/missing"], "--pool-token-file \(dir)/missing cannot be read"),
        ]
        for (options, message) in cases {
            let result = try await Self.run(["expert-pod", "--model", dir + "/m", "--listen", "127.0.0.1:0", "--metrics-port", "0"] + options)
            #expect(result.status != 0 && result.stderr.contains(message), "\(options): \(result.stderr)")
        }
    }

    @Test("model inspect exits 1 when an expert tensor is missing, and says why on its last line")
    func inspectFailsOnMissingExpert() async throws {
        let dir = try Self.temporaryDirectory()
        defer { try? FileManager.default.removeItem(atPath: dir) }
        let made = try await Self.run(["model", "init", "--arch", "qwen3-moe", "--layers", "1", "--experts", "4", "--top-k", "2", "--hidden", "32", "--out", dir + "/m"])
        #expect(made.status == 0, "\(made.stderr)")
        // Rename one expert tensor in the header (same length, so every offset stays right): the
        // checkpoint still parses, but expert 1 of layer 0 has no down projection.
        let path = dir + "/m/model.safetensors"
        var bytes = try Data(contentsOf: URL(fileURLWithPath: path))
        let name = Data("model.layers.0.mlp.experts.1.down_proj.weight".utf8)
        let range = try #require(bytes.range(of: name), "the checkpoint has no tensor \(String(decoding: name, as: UTF8.self))")
        bytes.replaceSubrange(range, with: Data("model.layers.0.mlp.experts.1.down_proj.weighx".utf8))
        try bytes.write(to: URL(fileURLWithPath: path))

        let inspected = try await Self.run(["model", "inspect", dir + "/m"])
        #expect(inspected.status == 1, "exit \(inspected.status): \(inspected.stdout)")
        let last = inspected.stdout.split(separator: "\n").last.map(String.init) ?? ""
        #expect(last.contains("failed the check") && last.contains("experts.1.down_proj"), "last line: \(last)")
    }

    /// `kube-test-apiserver`, built beside `eaas`.
    static let apiServerBinary = URL(fileURLWithPath: binary).deletingLastPathComponent().appendingPathComponent("kube-test-apiserver").path

    @Test("kube-test-apiserver stops cleanly (exit 0) on SIGTERM and on SIGINT", arguments: [SIGTERM, SIGINT])
    func apiServerStopsOnSignal(signal: Int32) async throws {
        let out = Pipe(), err = Pipe()
        let server = try ChildProcess(executable: Self.apiServerBinary, arguments: ["0"], standardOutput: .pipe(out), standardError: .pipe(err))
        defer { server.kill(); server.waitUntilExit() }
        var line = Data()
        while !line.contains(UInt8(ascii: "\n")) {
            let chunk = out.fileHandleForReading.availableData
            if chunk.isEmpty { break }
            line.append(chunk)
        }
        #expect(String(decoding: line, as: UTF8.self).hasPrefix("kube-test-apiserver listening on http://"))
        server.send(signal)
        let status = await server.exit(within: .seconds(10))
        #expect(status == 0, "kube-test-apiserver did not stop on signal \(signal) (status \(status.map(String.init) ?? "still running"))")
        let stderr = String(decoding: err.fileHandleForReading.readDataToEndOfFile(), as: UTF8.self)
        #expect(stderr.contains("signal \(signal), stopping"), "\(stderr)")
    }
}

/// How many CPUs this test process may use (the overlap configuration needs two).
enum OverlapRunAvailability {
    static var cpus: Int { ProcessInfo.processInfo.activeProcessorCount }
}
