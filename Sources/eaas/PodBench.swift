import ArgumentParser
import ExpertPod
import Foundation
import Platform
import Kube
#if canImport(FoundationNetworking)
import FoundationNetworking
#endif
import MoE
import Transport

/// `eaas bench pod`: one `eaas expert-pod` process driven by several client processes, against
/// the bare expert kernel (`RoutedExperts.accumulate`, the grouped GEMM chain the pod runs) on the
/// batch sizes the pod reached, measured in the same run; for each shard size.
struct PodBenchCommand: ParsableCommand {
    static let configuration = CommandConfiguration(
        commandName: "pod",
        abstract: "Expert-pod throughput under several client processes against the bare expert kernel, latency, memory per shard size.",
        discussion: """
        Without --model it writes a seeded random Qwen3-MoE checkpoint (hidden 1024, 16 experts, \
        top-4, bf16) to a temporary directory. Run from a release build (swift build -c release).
        """
    )

    @Option(help: "Checkpoint directory (default: a generated one).") var model: String?
    @Option(name: .customLong("shard"), help: "Shard to measure (repeatable): EXPERTS[@LAYERS].") var shards: [String] = ["0-1@0", "0-7@0", "0-15@0"]
    @Option(help: "Client processes driving the pod.") var clients: Int = 4
    @Option(help: "Tokens per client request.") var requestTokens: Int = 8
    @Option(help: "Seconds each shard size is driven.") var seconds: Double = 3
    @Option(help: "Data-plane backend the clients use: shm or tcp.") var transport: String = "shm"
    @Option(help: "Replicas of each shard; clients are spread over them as the dispatcher spreads workers.") var replicas: Int = 1
    @Option(help: "CPUs each replica may use (a CFS quota in a cgroup per pod, as a kubelet enforces resources.limits.cpu; the pod paces itself where no cgroup can be written). Without it pods are unlimited and the bare kernel is measured beside them.")
    var cpuLimit: Double?
    @Option(help: "How --cpu-limit is enforced: auto (a cgroup where one can be written, else rate-limit) or rate-limit (the pods pace themselves).")
    var cpuEnforcement: String = "auto"
    @Flag(help: "Print one JSON document instead of a table.") var json = false

    func validate() throws {
        guard clients >= 1, clients <= 64 else { throw ValidationError("--clients must be between 1 and 64") }
        guard requestTokens >= 1, requestTokens <= 512 else { throw ValidationError("--request-tokens must be between 1 and 512") }
        guard seconds > 0 else { throw ValidationError("--seconds must be positive") }
        guard ["auto", "rate-limit"].contains(cpuEnforcement) else { throw ValidationError("--cpu-enforcement '\(cpuEnforcement)' is not auto or rate-limit") }
        guard (1...16).contains(replicas) else { throw ValidationError("--replicas must be between 1 and 16") }
        if let cpuLimit, !(cpuLimit >= 0.01 && cpuLimit <= 64) { throw ValidationError("--cpu-limit \(cpuLimit) is not between 0.01 and 64 CPUs") }
        guard ["shm", "tcp"].contains(transport) else { throw ValidationError("--transport '\(transport)' is not shm or tcp") }
        for shard in shards {
            do { _ = try ShardSpec(parsing: shard) } catch { throw ValidationError("--shard: \(error)") }
        }
    }

    func run() throws {
        #if DEBUG
        FileHandle.standardError.write(Data("warning: this is a debug build; its numbers mean nothing (swift build -c release)\n".utf8))
        #endif
        let directory = try model ?? Self.generatedModel()
        var report = BenchReport(bench: "pod")
        let capacity = cpuLimit.map { _ in PodBenchCapacity(cgroups: cpuEnforcement == "auto") }
        defer { capacity?.close() }
        if let capacity {
            report.summary["capacity_enforcement"] = capacity.enforcement.rawValue
            FileHandle.standardError.write(Data("CPU limit \(cpuLimit!) per replica, enforced by \(capacity.enforcement)\(capacity.reason.map { " (\($0))" } ?? "")\n".utf8))
        }
        var table = TextTable(columns: ["shard", "experts", "replicas", "batch tok", "pod tok/s", "kernel tok/s", "efficiency", "busy", "cpu s", "p50 µs", "p99 µs", "rss MiB", "weights MiB"])
        for shard in shards {
            let row = try measure(shard: shard, model: directory, capacity: capacity)
            report.results.append(row)
            let kernel = row["kernel_tokens_per_s"] as? Double
            table.rows.append([shard, "\(row["experts"]!)", "\(replicas)", String(format: "%.1f", row["mean_batch_tokens"] as! Double),
                               String(format: "%.0f", row["pod_tokens_per_s"] as! Double), kernel.map { String(format: "%.0f", $0) } ?? "-",
                               (row["batching_efficiency"] as? Double).map { String(format: "%.3f", $0) } ?? "-",
                               String(format: "%.2f", row["pod_busy_fraction"] as! Double),
                               (row["pod_cpu_seconds"] as? Double).map { String(format: "%.2f", $0) } ?? "-",
                               String(format: "%.0f", row["p50_us"] as! Double),
                               String(format: "%.0f", row["p99_us"] as! Double), String(format: "%.1f", Double(row["rss_bytes"] as! Int) / 1_048_576),
                               String(format: "%.1f", Double(row["weight_bytes"] as! Int) / 1_048_576)])
            FileHandle.standardError.write(Data("  \(table.rows.last!.joined(separator: " "))\n".utf8))
        }
        if json {
            print(try report.json())
        } else {
            print(table.render())
        }
    }

    static func generatedModel() throws -> String {
        let path = FileManager.default.temporaryDirectory.appendingPathComponent("eaas-bench-pod-model").path
        if FileManager.default.fileExists(atPath: path + "/config.json") { return path }
        var spec = RandomModelSpec(architecture: .qwen3Moe, layers: 1, experts: 16, topK: 4, hidden: 1024)
        spec.expertFFN = 1024
        spec.seed = 11
        try RandomModel.write(spec, to: path)
        return path
    }

    /// Runs the shard's replicas and their clients, then (unlimited pods only) the kernel on the
    /// batch sizes reached.
    func measure(shard: String, model: String, capacity: PodBenchCapacity?) throws -> [String: Any] {
        let spec = try ShardSpec(parsing: shard)
        let config = try ModelConfig.load(directory: model)
        let layer = spec.layers?.first ?? config.moeLayers.first!
        let topK = min(config.router.topK, spec.experts.count)
        // The pods listen on loopback, where any local user could reach them: a token nobody can guess.
        let token = String(decoding: PoolToken.random(), as: UTF8.self)
        var pods: [EaasChild] = []
        var groups: [CPUControlGroup?] = []  // one per pod, nil where none limits it
        defer {
            pods.forEach { $0.stop() }  // a group is removed once its processes are gone
            groups.forEach { $0?.remove() }
        }
        var addresses: [String] = [], metricsAddresses: [String] = []
        for replica in 0..<replicas {
            var environment = ["EAAS_POOL_TOKEN": token]
            var group: CPUControlGroup?
            if let capacity, let cpuLimit {
                group = try capacity.group("pod-\(replica)", cores: cpuLimit)
                if group == nil {
                    environment["EAAS_CPU_RATE_LIMIT"] = "\(cpuLimit)"
                }
            }
            groups.append(group)  // before the pod starts, so that a failed start still removes it
            let pod = try EaasChild(arguments: ["expert-pod", "--model", model, "--shard", shard, "--listen", "127.0.0.1:0", "--transport", transport,
                                                "--metrics-host", "127.0.0.1", "--metrics-port", "0", "--log-level", "warning",
                                                "--max-batch-tokens", "\(max(512, clients * requestTokens))"],
                                    environment: environment, cpuGroup: group)
            pods.append(pod)
            let words = try pod.firstLine().split(separator: " ")
            guard words.count == 4, words[0] == "listening" else { throw ValidationError("expert-pod did not start: \(words.joined(separator: " "))") }
            addresses.append(String(words[1]))
            metricsAddresses.append(String(words[3]))
        }
        let podsCPUSeconds = { zip(pods, groups).map { ProcessCPUTime.seconds(group: $1, pid: $0.pid) } }
        let cpuBefore = podsCPUSeconds()
        let children = try (0..<clients).map { client in
            try EaasChild(arguments: ["bench", "pod-client", "--address", addresses[client % replicas], "--layer", "\(layer)",
                                      "--experts", spec.experts.map(String.init).joined(separator: ","), "--top-k", "\(topK)",
                                      "--hidden", "\(config.hiddenSize)", "--tokens", "\(requestTokens)", "--seconds", "\(seconds)",
                                      "--client-id", "\(client + 1)", "--transport", transport],
                          environment: ["EAAS_POOL_TOKEN": token])
        }
        defer { children.forEach { $0.stop() } }
        var latencies: [Double] = []
        var tokens = 0
        var elapsed = 0.0
        for child in children {
            let output = try child.waitForOutput()
            guard let document = try JSONSerialization.jsonObject(with: Data(output.utf8)) as? [String: Any],
                  let samples = document["latencies_us"] as? [Double], let done = document["tokens"] as? Int, let time = document["seconds"] as? Double else {
                throw ValidationError("a bench client failed: \(output.prefix(400))")
            }
            latencies += samples
            tokens += done
            elapsed = max(elapsed, time)
        }
        let cpuUsed = zip(podsCPUSeconds(), cpuBefore)
            .reduce(0.0) { $0 + (($1.0 ?? 0) - ($1.1 ?? 0)) }
        var texts: [String] = []
        for address in metricsAddresses { texts.append(try Self.httpGet("http://\(address)/metrics")) }
        let batches = texts.reduce(0) { $0 + Self.metric($1, "eaas_batch_tokens_count") }
        let batchTokens = texts.reduce(0) { $0 + Self.metric($1, "eaas_batch_tokens_sum") }
        let busy = texts.reduce(0) { $0 + Self.metric($1, "eaas_busy_seconds_total") }
        let rss = Self.residentBytes(pid: pods[0].pid)
        let meanBatch = batches > 0 ? batchTokens / batches : 0
        pods.forEach { $0.stop() }  // the kernel gets the machine to itself, as the pods had
        let shardWeights = try ExpertShard(directory: model, spec: spec)
        latencies.sort()
        let podRate = Double(tokens) / elapsed
        var row: [String: Any] = [
            "shard": shard, "experts": shardWeights.hosted.count, "clients": clients, "request_tokens": requestTokens, "replicas": replicas,
            "mean_batch_tokens": meanBatch, "pod_tokens_per_s": podRate, "pod_busy_fraction": busy / elapsed / Double(replicas),
            "pod_tokens_per_busy_s": busy > 0 ? Double(tokens) / busy : 0, "pod_cpu_seconds": cpuUsed,
            "tokens_per_cpu_second": cpuUsed > 0 ? Double(tokens) / cpuUsed : 0,
            "batches": Int(batches), "p50_us": latencies.percentile(0.5), "p99_us": latencies.percentile(0.99),
            "rss_bytes": rss, "weight_bytes": shardWeights.weightBytes,
        ]
        if let cpuLimit {
            row["cpu_limit"] = cpuLimit
            row["cpu_limit_fraction_used"] = cpuUsed / (elapsed * cpuLimit * Double(replicas))
        } else {
            // The kernel on the pods' own mix of batch sizes: each size timed, weighted by the
            // tokens computed in batches of that size (a limited pod has no like-for-like kernel).
            var kernelSeconds = 0.0, kernelTokens = 0.0
            var sizes: [Int: Int] = [:]
            for text in texts { for (size, count) in Self.batchSizes(text) { sizes[size, default: 0] += count } }
            for (size, count) in sizes.sorted(by: { $0.key < $1.key }) {
                let requests = max(1, Int((Double(size) / Double(requestTokens)).rounded()))
                let rate = try Self.kernelTokensPerSecond(shard: shardWeights, layer: layer, requests: requests, requestTokens: requestTokens, topK: topK)
                kernelTokens += Double(count * requests * requestTokens)
                kernelSeconds += Double(count * requests * requestTokens) / rate
            }
            let kernel = kernelSeconds > 0 ? kernelTokens / kernelSeconds : 0
            row["kernel_tokens_per_s"] = kernel
            row["batching_efficiency"] = podRate / (kernel * Double(replicas))
        }
        return row
    }

    /// Tokens per second of the bare kernel on batches like the pod's: `requests` client requests
    /// of `requestTokens` tokens each, routed exactly as the clients route them, input already f32.
    static func kernelTokensPerSecond(shard: ExpertShard, layer: Int, requests: Int, requestTokens: Int, topK: Int) throws -> Double {
        let hidden = shard.config.hiddenSize
        let experts = shard.spec.experts.map { UInt16($0) }
        let batchTokens = requests * requestTokens
        var ids: [Int32] = []
        for client in 0..<requests {
            ids += PodClientCommand.routing(experts: experts, tokens: requestTokens, topK: topK, step: 1, client: UInt64(client + 1))
        }
        let weights = [Float](repeating: 1 / Float(topK), count: ids.count)
        let routing = Routing(tokens: batchTokens, topK: topK, ids: ids, weights: weights)
        let input = (0..<(batchTokens * hidden)).map { Float($0 % 17) / 17 - 0.5 }
        var output = [Float](repeating: 0, count: batchTokens * hidden)
        let scratch = ExpertScratch()
        let loader = ExpertLoader(checkpoint: shard.checkpoint, config: shard.config)
        let weightsOf = try Dictionary(uniqueKeysWithValues: experts.map { (Int($0), try loader.expert(layer: layer, expert: Int($0))) })
        func once() throws {
            try RoutedExperts.accumulate(input: input, hidden: hidden, routing: routing, expertCount: shard.config.expertCount,
                                         activation: shard.config.activation, experts: { weightsOf[$0] }, output: &output, scratch: scratch)
        }
        try once()
        var samples: [Double] = []
        var spent = 0.0
        while samples.count < 5 || (spent < 2 && samples.count < 200) {
            let t = try timeSeconds { try once() }
            samples.append(t)
            spent += t
        }
        return Double(batchTokens) / samples.median
    }

    static func httpGet(_ url: String) throws -> String {
        final class Box: @unchecked Sendable { var text: String?; var error: Error? }
        let box = Box(), done = DispatchSemaphore(value: 0)
        URLSession.shared.dataTask(with: URL(string: url)!) { data, _, error in
            box.text = data.map { String(decoding: $0, as: UTF8.self) }
            box.error = error
            done.signal()
        }.resume()
        done.wait()
        if let error = box.error { throw error }
        return box.text ?? ""
    }

    /// Batches per size from the `eaas_batch_tokens` histogram (sizes are bucket bounds).
    static func batchSizes(_ text: String) -> [(size: Int, count: Int)] {
        var cumulative: [(Int, Int)] = []
        for line in text.split(separator: "\n") where line.hasPrefix("eaas_batch_tokens_bucket{le=\"") {
            let bound = line.dropFirst("eaas_batch_tokens_bucket{le=\"".count).prefix { $0 != "\"" }
            guard let size = Double(bound), size.isFinite, let count = Int(line.split(separator: " ").last ?? "") else { continue }
            cumulative.append((Int(size), count))
        }
        cumulative.sort { $0.0 < $1.0 }
        var sizes: [(Int, Int)] = [], below = 0
        for (size, count) in cumulative {
            if count > below { sizes.append((size, count - below)) }
            below = count
        }
        return sizes
    }

    /// The value of an unlabelled metric line `NAME VALUE` in Prometheus text.
    static func metric(_ text: String, _ name: String) -> Double {
        for line in text.split(separator: "\n") where line.hasPrefix(name + " ") {
            return Double(line.split(separator: " ").last ?? "") ?? 0
        }
        return 0
    }

    static func residentBytes(pid: Int32) -> Int {
        guard let status = try? String(contentsOfFile: "/proc/\(pid)/status", encoding: .utf8),
              let line = status.split(separator: "\n").first(where: { $0.hasPrefix("VmRSS:") }),
              let kb = Int(line.split(whereSeparator: \.isWhitespace).dropFirst().first ?? "") else { return 0 }
        return kb * 1024
    }
}

/// `eaas bench pod-client`: one client process of `eaas bench pod`: runs steps against one pod for
/// a while through the dispatcher and prints its latencies as JSON.
struct PodClientCommand: ParsableCommand {
    static let configuration = CommandConfiguration(commandName: "pod-client", abstract: "One client process of `eaas bench pod`.", shouldDisplay: false)

    @Option var address: String
    @Option var layer: Int
    @Option var experts: String
    @Option var topK: Int
    @Option var hidden: Int
    @Option var tokens: Int
    @Option var seconds: Double
    @Option var clientID: UInt64
    @Option var transport: String = "shm"

    func run() throws {
        let ids = experts.split(separator: ",").compactMap { UInt16($0) }
        guard !ids.isEmpty, topK >= 1, topK <= ids.count else { throw ValidationError("--experts and --top-k do not fit") }
        var configuration = Dispatcher.Configuration(poolToken: try PoolTokenSource.read(file: nil), clientID: clientID)
        configuration.backend = transport == "tcp" ? .tcp : .shm
        let membership = StaticMembership(servers: [ServerInfo(id: "pod", address: address, experts: ids.map { HostedExpert(layer: UInt16(layer), expert: $0) })])
        let dispatcher = Dispatcher(membership: membership, configuration: configuration)
        defer { dispatcher.close() }
        // bf16 states, top-k distinct experts of the shard per token, shifting each step.
        let states = (0..<(tokens * hidden)).map { UInt16(0x3c00 + ($0 * 31 + Int(clientID)) % 512) }
        var latencies: [Double] = []
        var done = 0, step = 0
        let clock = ContinuousClock(), start = clock.now
        while clock.now - start < .milliseconds(Int64(seconds * 1000)) {
            step += 1
            let routed = Self.routing(experts: ids, tokens: tokens, topK: topK, step: step, client: clientID)
            let weights = [Float](repeating: 1 / Float(topK), count: tokens * topK)
            let began = clock.now
            _ = try states.withUnsafeBytes {
                try dispatcher.step(layer: UInt16(layer), tokens: tokens, topK: topK, ids: routed, weights: weights, states: $0, hidden: hidden, dtype: .bf16)
            }
            let took = clock.now - began
            latencies.append(Double(took.components.seconds) * 1e6 + Double(took.components.attoseconds) * 1e-12)
            done += tokens
        }
        let elapsed = clock.now - start
        let document: [String: Any] = ["tokens": done, "steps": step, "latencies_us": latencies,
                                       "seconds": elapsed.seconds]
        print(String(decoding: try JSONSerialization.data(withJSONObject: document), as: UTF8.self))
    }

    /// Token t of step `step` goes to `topK` consecutive experts of the shard from a start that
    /// moves with the token, the step and the client: every expert gets work, spread evenly.
    static func routing(experts: [UInt16], tokens: Int, topK: Int, step: Int, client: UInt64) -> [Int32] {
        var routed: [Int32] = []
        routed.reserveCapacity(tokens * topK)
        for t in 0..<tokens { for j in 0..<topK { routed.append(Int32(experts[(t * 7 + j + step + Int(client)) % experts.count])) } }
        return routed
    }
}

/// Where `eaas bench pod --cpu-limit` puts its pods: a cgroup each where this machine lets us write
/// one (as a kubelet would), else nowhere (the pods pace themselves, `EAAS_CPU_RATE_LIMIT`).
final class PodBenchCapacity {
    let root: CPUControllerRoot?
    let reason: String?

    init(cgroups: Bool) {
        guard cgroups else {
            root = nil
            reason = "--cpu-enforcement rate-limit"
            return
        }
        do {
            root = try CPUControllerRoot.discover(name: "eaas-\(getpid())-bench")
            reason = nil
        } catch {
            root = nil
            reason = error.description
        }
    }

    var enforcement: CPUEnforcement { root?.enforcement ?? .rateLimit }

    /// A group limited to `cores`, or nil where pods must pace themselves.
    func group(_ name: String, cores: Double) throws -> CPUControlGroup? {
        guard let root else { return nil }
        do { return try root.makeGroup(name, cores: cores) } catch { throw CommandFailure("cannot create the CPU cgroup \(name): \(error)") }
    }

    func close() { root?.remove() }
}

/// A child `eaas` process with its stdout read. It dies with this process (parent-death signal),
/// so a benchmark stopped by SIGTERM or SIGKILL leaves no pod running.
final class EaasChild {
    let process: Platform.ChildProcess
    private let output = Pipe()
    private var buffered = Data()

    /// Runs `eaas arguments…`; with `cpus` (a `taskset -c` list such as "1"), pinned to those CPUs
    /// from its first instruction, so that its compute threads are sized to them.
    /// With `cpuGroup`, it runs in that cgroup from its first instruction.
    init(arguments: [String], environment: [String: String], cpus: String? = nil, cpuGroup: CPUControlGroup? = nil) throws {
        var executable = URL(fileURLWithPath: CommandLine.arguments[0]).resolvingSymlinksInPath().path
        var arguments = arguments
        if let cpus {
            guard let taskset = Self.taskset else { throw CommandFailure("pinning a child to CPUs \(cpus) needs taskset (util-linux), not found on PATH") }
            arguments = ["-c", cpus, executable] + arguments
            executable = taskset
        }
        process = try Platform.ChildProcess(executable: executable, arguments: arguments,
                                            environment: ProcessInfo.processInfo.environment.merging(environment) { $1 },
                                            standardOutput: .pipe(output), cpuGroup: cpuGroup)
    }

    var pid: Int32 { process.pid }

    /// `taskset` on PATH, if any.
    static let taskset: String? = (ProcessInfo.processInfo.environment["PATH"] ?? "/usr/bin:/bin").split(separator: ":")
        .map { "\($0)/taskset" }.first { FileManager.default.isExecutableFile(atPath: $0) }

    /// The first line it prints.
    func firstLine() throws -> String {
        while !buffered.contains(UInt8(ascii: "\n")) {
            let chunk = output.fileHandleForReading.availableData
            if chunk.isEmpty { break }
            buffered.append(chunk)
        }
        return String(decoding: buffered.prefix { $0 != UInt8(ascii: "\n") }, as: UTF8.self)
    }

    /// Everything it prints, once it exits.
    func waitForOutput() throws -> String {
        buffered.append(output.fileHandleForReading.readDataToEndOfFile())
        process.waitUntilExit()
        return String(decoding: buffered, as: UTF8.self)
    }

    /// SIGKILL, then waits, and removes the shared region a killed pod cannot.
    func kill() {
        process.kill()
        process.waitUntilExit()
        DataPlaneServer.removeRegions(leftBy: process.pid)
    }

    /// SIGTERM, then waits.
    func stop() {
        process.terminate()
        process.waitUntilExit()
    }
}

extension Array where Element == Double {
    /// The value at quantile `q` of a sorted array (nearest rank).
    func percentile(_ q: Double) -> Double {
        guard !isEmpty else { return 0 }
        return self[Swift.min(count - 1, Int((q * Double(count)).rounded(.up)) - 1 < 0 ? 0 : Int((q * Double(count)).rounded(.up)) - 1)]
    }
}
