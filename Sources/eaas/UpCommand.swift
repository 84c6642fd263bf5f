import ArgumentParser
import AttentionWorker
import Controller
import Foundation
import JSON
import Kube
import KubeTestServer
import Logging
import MoE
import ServiceLifecycle
import Transport

/// `eaas up`: the whole system on one machine, no cluster. An API server in this process, the
/// same controller and autoscaler as in a cluster, a local runtime that runs pods as `eaas
/// expert-pod` processes on loopback addresses of their own, and an attention worker (finding
/// pods through the pool's EndpointSlices, as in a cluster) under a synthetic load.
struct UpCommand: AsyncParsableCommand {
    static let configuration = CommandConfiguration(
        commandName: "up",
        abstract: "Run the whole system on this machine: API server, controller, expert pods, an attention worker under load.",
        discussion: """
        Without -f it serves an embedded pool on the demo model when scripts/fetch-demo-model has \
        fetched it (SmolLM2-135M-Instruct upcycled to 4 experts: a real model that answers), else on a \
        small seeded model, saying so; a pool file without spec.model.path gets the seeded model. \
        An OpenAI-shaped API (/v1/completions, /v1/chat/completions) listens on 127.0.0.1:--port. The load is phases of SECONDS:RATE (requests per second, each generating \
        --request-tokens tokens); the last phase lasts until Ctrl-C or --duration. kubectl works \
        against it: `kubectl --kubeconfig WORKDIR/kubeconfig get expertpools`.
        """
    )

    @Option(name: .shortAndLong, help: "ExpertPool manifest (YAML; Secrets in it are created too). Default: the embedded pool.") var file: String?
    @Option(help: "Synthetic load: SECONDS:RATE phases (requests per second). Default \(Self.seededLoad), or \(Self.demoLoad) on the demo model (a real model: about a tenth of the tokens/s).")
    var load: String?

    /// The default load: rising and falling within what the model serves on two cores.
    static let seededLoad = "20:2,60:8,90:2"
    static let demoLoad = "20:0.5,60:1.5,90:0.5"
    @Option(help: "Requests running at once before arrivals are shed.") var maxInFlight = 64
    @Option(help: "Stop after this many seconds (default: at Ctrl-C).") var duration: Double?
    @Option(help: "Tokens each synthetic request generates.") var requestTokens = 32
    @Option(help: "Working directory: model, pod logs, kubeconfig (default: a temporary one).") var workdir: String?
    @Option(help: "Port of the embedded API server (0 picks a free one).") var apiPort = 0
    @Option(help: "Port of the OpenAI-shaped API on 127.0.0.1 (0 picks a free one).") var port = 8000
    @Flag(help: "Print a line per shard every 5 s instead of redrawing the table.") var plain = false
    @Option(help: "Log level of the components (their logs go to WORKDIR/eaas.log).") var logLevel = "info"

    func validate() throws {
        _ = try phases()
        guard duration.map({ $0 > 0 }) ?? true else { throw ValidationError("--duration must be positive") }
        guard (1...4096).contains(requestTokens) else { throw ValidationError("--request-tokens must be between 1 and 4096") }
        guard (1...1024).contains(maxInFlight) else { throw ValidationError("--max-in-flight must be between 1 and 1024") }
        guard (0...65_535).contains(apiPort) else { throw ValidationError("--api-port \(apiPort) is not a port") }
        guard (0...65_535).contains(port) else { throw ValidationError("--port \(port) is not a port") }
        guard Logger.Level(rawValue: logLevel) != nil else { throw ValidationError("--log-level '\(logLevel)' is not a log level") }
    }

    /// The load phases: (start second, requests per second).
    func phases(onDemoModel: Bool = false) throws -> [(start: Double, rate: Double)] {
        var start = 0.0
        var result: [(Double, Double)] = []
        for part in (load ?? (onDemoModel ? Self.demoLoad : Self.seededLoad)).split(separator: ",") {
            let fields = part.split(separator: ":")
            guard fields.count == 2, let seconds = Double(fields[0]), seconds > 0, let rate = Double(fields[1]), rate >= 0, rate <= 10_000 else {
                throw ValidationError("--load '\(part)' is not SECONDS:RATE (seconds > 0, 0 <= requests per second <= 10000)")
            }
            result.append((start, rate))
            start += seconds
        }
        guard !result.isEmpty else { throw ValidationError("--load needs at least one SECONDS:RATE phase") }
        return result
    }

    func run() async throws {
        let directory = workdir ?? NSTemporaryDirectory() + "eaas-up-\(getpid())"
        try FileManager.default.createDirectory(atPath: directory, withIntermediateDirectories: true)
        let logger = try Self.fileLogger(path: directory + "/eaas.log", level: Logger.Level(rawValue: logLevel) ?? .info)
        let (pool, extraObjects) = try manifests(directory: directory)
        let system = try await LocalSystem.start(pool: pool, secrets: extraObjects, source: file ?? "embedded pool", directory: directory,
                                                 apiPort: apiPort, logger: logger)
        let (spec, config, engine, server, name, namespace) = (system.spec, system.config, system.engine, system.server, system.name, system.namespace)
        let text: ModelTokenizer?
        do {
            text = try ModelTokenizer.load(modelDirectory: spec.model.path)
            try text?.check(vocabularySize: config.vocabSize)
        } catch { throw ValidationError("spec.model.path \(spec.model.path): \(error)") }
        let chatPrompts = (text?.chatTemplate == nil ? [] : UpQuestions.all).compactMap { try? text?.chatPrompt([.init(role: "user", content: $0)]) }
        let onDemoModel = file == nil && Self.demoModel()?.path == spec.model.path
        let loadGenerator = SyntheticLoad(engine: engine, trace: try LoadTrace.phases(try phases(onDemoModel: onDemoModel)), requestTokens: requestTokens, vocabulary: config.vocabSize,
                                          maxInFlight: maxInFlight, chatPrompts: chatPrompts,
                                          stopTokenIDs: (text?.stopTokenIDs ?? []).union(config.eosTokenIDs),
                                          topics: try TopicRouting.load(directory: spec.model.path).map { TopicMix(routing: $0) })
        var apiLogger = logger
        apiLogger.logLevel = .warning
        let api = WorkerServer.application(engine: engine, tokenizer: text, host: "127.0.0.1", port: port, logger: apiLogger) { channel in
            logger.notice("OpenAI-shaped API listening", metadata: ["address": "127.0.0.1:\(channel.localAddress?.port ?? 0)"])
        }
        let table = UpTable(server: server, pool: name, namespace: namespace, load: loadGenerator, redraw: !plain && isatty(1) == 1,
                            directory: directory)
        FileHandle.standardOutput.write(Data("""
            eaas up: pool \(namespace)/\(name), \(spec.model.experts) experts in \(try spec.plan(poolName: name).get().shards.count) shards, model \(spec.model.path)
            \(Self.modelNote(path: spec.model.path, text: text, port: port))
            API server \(server.url)  (kubectl --kubeconfig \(directory)/kubeconfig get expertpools,deployments,pods)
            logs in \(directory); Ctrl-C stops everything.\n
            """.utf8))

        let services: [ServiceGroupConfiguration.ServiceConfiguration] = system.services + [
            .init(service: api),
            .init(service: loadGenerator, successTerminationBehavior: .gracefullyShutdownGroup),
            .init(service: table),
            .init(service: StopAfter(seconds: duration), successTerminationBehavior: .gracefullyShutdownGroup),
        ]
        var groupConfiguration = ServiceGroupConfiguration(services: services, gracefulShutdownSignals: [.sigterm, .sigint], logger: logger)
        // Requests finish and pods drain within this; past it everything is cancelled.
        groupConfiguration.maximumGracefulShutdownDuration = .seconds(120)
        groupConfiguration.maximumCancellationDuration = .seconds(30)
        let group = ServiceGroup(configuration: groupConfiguration)
        var groupError: (any Error)?
        do { try await group.run() } catch {
            groupError = error
            logger.error("stopped with an error", metadata: ["error": "\(error)"])
        }
        await system.shutdown()
        table.printSummary()
        // Exit 0 only when the run's own check held: no request failed and nothing stopped it early.
        let totals = loadGenerator.totals
        if let groupError {
            print("eaas up: stopped by an error: \(groupError)")
            throw ExitCode(1)
        }
        if totals.failed > 0 {
            print("eaas up: \(totals.failed) of \(totals.finished + totals.failed) requests failed")
            throw ExitCode(1)
        }
    }

    /// What the banner says about the model: how to talk to it, or how to get one that answers.
    static func modelNote(path: String, text: ModelTokenizer?, port: Int) -> String {
        let address = port == 0 ? "127.0.0.1:<port in eaas.log>" : "127.0.0.1:\(port)"
        guard let text, text.chatTemplate != nil else {
            return "a model without a tokenizer: the API at http://\(address)/v1 takes token ids (scripts/fetch-demo-model fetches SmolLM2, which eaas up then serves)"
        }
        return """
            chat with it: curl -s \(address)/v1/chat/completions -d '{"messages": [{"role": "user", "content": "What is the capital of France?"}], "max_tokens": 32}'
            """
    }

    /// The demo model scripts/fetch-demo-model writes (`$EAAS_DEMO_MODEL` to point elsewhere), if it is there.
    static func demoModel() -> (path: String, experts: Int)? {
        let path = ProcessInfo.processInfo.environment["EAAS_DEMO_MODEL"]
            ?? (NSHomeDirectory() as NSString).appendingPathComponent(".cache/eaas/demo/smollm2-upcycled")
        guard FileManager.default.fileExists(atPath: path + "/tokenizer.json"),
              let config = try? ModelConfig.load(directory: path) else { return nil }
        return (path, config.router.experts)
    }

    /// The seeded model `eaas up` writes when none is given: Qwen3-MoE, 2 layers, 8 experts, top-2,
    /// 4 topics (so its synthetic load routes unevenly, and drifts, through the router).
    static func seededModel(directory: String) throws -> (path: String, experts: Int) {
        (try topicModel(at: directory + "/model", hidden: 256, expertFFN: 512, seed: 7), 8)
    }

    /// Writes (unless it is there) a Qwen3-MoE checkpoint of 2 layers, 8 experts top-2 and 4
    /// topics at `path`.
    static func topicModel(at path: String, hidden: Int, expertFFN: Int, seed: UInt64) throws -> String {
        if !FileManager.default.fileExists(atPath: path + "/config.json") {
            var spec = RandomModelSpec(architecture: .qwen3Moe, layers: 2, experts: 8, topK: 2, hidden: hidden)
            spec.expertFFN = expertFFN
            spec.seed = seed
            spec.topics = 4
            try RandomModel.write(spec, to: path)
        }
        return path
    }

    /// The pool (and Secrets) to create: from -f, or the embedded default on a seeded model.
    func manifests(directory: String) throws -> (KubeObject, [KubeObject]) {
        guard let file else {
            // The demo model if it was fetched (a real model, slower: a lower target per replica), else the seeded one.
            let demo = Self.demoModel()
            let (model, experts) = try demo ?? Self.seededModel(directory: directory)
            let pool = KubeObject(ExpertPoolCRD.resource, name: "local", namespace: "default", fields: ["spec": [
                "model": ["path": .string(model), "experts": .int(experts)],
                "shards": ["expertsPerShard": .int(max(1, experts / 2))],
                "replicas": ["min": 1, "max": 3],
                "autoscaling": ["target": demo == nil ? 400 : 2000, "scrapeIntervalSeconds": 2, "behavior": ["scaleDown": ["stabilizationWindowSeconds": 20]]],
                "transport": ["backend": "shm", "port": 7070, "metricsPort": 9090],
                "poolTokenSecret": ["name": "local-pool-token"],
                "drainSeconds": 5,
            ]])
            return (pool, [])
        }
        let text: String
        do { text = try String(contentsOfFile: file, encoding: .utf8) } catch { throw ValidationError("-f \(file): cannot read (\(error.localizedDescription))") }
        let documents: [JSONValue]
        do { documents = try YAML.parseDocuments(text) } catch { throw ValidationError("-f \(file): \(error)") }
        let objects = documents.filter { $0 != .null }.map(KubeObject.init)
        let pools = objects.filter { $0.kind == ExpertPoolCRD.kind }
        guard pools.count == 1, var pool = pools.first else { throw ValidationError("-f \(file): needs exactly one ExpertPool, found \(pools.count)") }
        let others = objects.filter { $0.kind != ExpertPoolCRD.kind }
        if let other = others.first(where: { $0.kind != "Secret" }) {
            throw ValidationError("-f \(file): only an ExpertPool and Secrets run locally, not \(other.kind ?? "an object without kind")")
        }
        guard pool.apiVersion == ExpertPoolCRD.resource.apiVersion else {
            throw ValidationError("-f \(file): apiVersion must be \(ExpertPoolCRD.resource.apiVersion), got \(pool.apiVersion ?? "none")")
        }
        if pool.namespace == nil { pool.json[path: ["metadata", "namespace"]] = "default" }
        // No model given: the seeded one (its path and expert count filled in).
        if pool.json[path: ["spec", "model", "path"]] == nil {
            let seeded = try Self.seededModel(directory: directory)
            pool.json[path: ["spec", "model", "path"]] = .string(seeded.path)
            pool.json[path: ["spec", "model", "experts"]] = .int(seeded.experts)
        }
        return (pool, others)
    }

    static func fileLogger(path: String, level: Logger.Level) throws -> Logger {
        guard FileManager.default.createFile(atPath: path, contents: nil) else { throw ValidationError("cannot create the log file \(path)") }
        let handle = try FileHandle(forWritingTo: URL(fileURLWithPath: path))
        var logger = Logger(label: "eaas.up") { label in FileLogHandler(handle: handle, label: label, level: level) }
        logger.logLevel = level
        return logger
    }
}

/// A log handler appending lines to a file (the terminal belongs to the table).
struct FileLogHandler: LogHandler {
    let handle: FileHandle
    let label: String
    var logLevel: Logger.Level
    var metadata: Logger.Metadata = [:]

    init(handle: FileHandle, label: String, level: Logger.Level) {
        self.handle = handle
        self.label = label
        logLevel = level
    }

    subscript(metadataKey key: String) -> Logger.Metadata.Value? {
        get { metadata[key] }
        set { metadata[key] = newValue }
    }

    func log(event: LogEvent) {
        let all = metadata.merging(event.metadata ?? [:]) { $1 }
        let fields = all.keys.sorted().map { "\($0)=\(all[$0]!)" }.joined(separator: " ")
        handle.write(Data("\(PoolReconciler.timestamp()) \(event.level) \(label): \(event.message) \(fields)\n".utf8))
    }
}

/// Ends the group after a number of seconds (or never).
struct StopAfter: Service {
    let seconds: Double?
    func run() async throws {
        guard let seconds else {
            try? await gracefulShutdown()
            return
        }
        try? await cancelWhenGracefulShutdown { try await Task.sleep(for: .milliseconds(Int(seconds * 1000))) }
    }
}
