import JSON
import Kube
import Controller
import ArgumentParser
import AttentionWorker
import Foundation
import Hummingbird
import Logging
import MoE
import ServiceLifecycle
import Transport

/// Where a worker's routed experts run, shared by `eaas generate`, `eaas worker` and the e2e bench.
struct ExpertOptions: ParsableArguments {
    @Option(help: "Where routed experts run: local (in this process, monolithic) or remote (expert pods).") var experts: String = "local"
    @Option(help: "Remote: membership file ({\"servers\": [{id, address, experts, ready}]}), re-read when it changes.") var membership: String?
    @Option(help: "Remote: expert pod addresses HOST:PORT, comma-separated; each is asked what it hosts.") var expertServers: String?
    @Option(help: "Remote, in Kubernetes: the ExpertPool whose pods to use (its Service's EndpointSlices and shard-plan ConfigMap, watched; `eaas worker` only).") var pool: String?
    @Option(help: "Remote: the pool's namespace (default: $POD_NAMESPACE, else the kubeconfig's).") var poolNamespace: String?
    @Option(help: "Remote: data-plane backend to ask pods for: tcp, shm or verbs.") var transport: String = "shm"
    @Option(help: "Remote: file holding the pool token (default: $EAAS_POOL_TOKEN).") var poolTokenFile: String?
    @Option(help: "Remote: hidden-state dtype on the wire: auto (what the pods expect), f32, bf16 or f16.") var wireDtype: String = "auto"
    @Option(help: "Remote: tokens of load a pod already in a step may carry beyond another replica before the step adds a pod (large: one pod per step, for pods sharing this host's cores).") var contactCost: Int = 64
    @Option(help: "Remote: micro-batches per step, pipelined against the pods: 1, 2 (this worker's attention overlaps the pods' experts; pays where the pods have cores of their own), or auto (2 where measured faster, per step size).") var microBatches: String = "1"

    func validate() throws {
        guard let mode = ExpertMode(rawValue: experts) else { throw ValidationError("--experts '\(experts)' is not local or remote") }
        guard ["tcp", "shm", "verbs"].contains(transport) else { throw ValidationError("--transport '\(transport)' is not tcp, shm or verbs") }
        guard contactCost >= 0 else { throw ValidationError("--contact-cost cannot be negative") }
        guard MicroBatching(rawValue: microBatches) != nil else { throw ValidationError("--micro-batches must be 1, 2 or auto (got '\(microBatches)')") }
        guard wireDtype == "auto" || ["f32", "bf16", "f16"].contains(wireDtype) else {
            throw ValidationError("--wire-dtype '\(wireDtype)' is not auto, f32, bf16 or f16")
        }
        switch mode {
        case .local:
            guard membership == nil, expertServers == nil, pool == nil else { throw ValidationError("--membership, --expert-servers and --pool need --experts remote") }
            guard microBatches == "1" else { throw ValidationError("--micro-batches \(microBatches) needs --experts remote (local experts have nothing to overlap)") }
        case .remote:
            guard [membership, expertServers, pool].compactMap({ $0 }).count == 1 else {
                throw ValidationError("--experts remote needs one of --membership FILE, --expert-servers HOST:PORT,… or --pool NAME")
            }
        }
    }

    /// With `--pool`: the pool's membership from Kubernetes, its caches filled.
    func kubernetesMembership(modelDirectory: String, logger: Logger) async throws -> MembershipSource? {
        guard let pool else { return nil }
        let config = try ModelConfig.load(directory: modelDirectory)
        let connection: ClusterConnection
        do { connection = try ClusterConnection.automatic() } catch { throw CommandFailure("--pool \(pool): cannot connect to Kubernetes: \(error)") }
        let namespace = poolNamespace ?? ProcessInfo.processInfo.environment["POD_NAMESPACE"] ?? connection.namespace
        var dispatcher = Dispatcher.Configuration(poolToken: try PoolTokenSource.read(file: poolTokenFile), clientID: UInt64.random(in: 1...UInt64.max))
        dispatcher.backend = ["tcp": .tcp, "shm": .shm, "verbs": .verbs][transport]!
        dispatcher.modelDigest = try ModelDigest.compute(directory: modelDirectory).bytes
        let probe = dispatcher
        let membership = KubernetesMembership(client: KubeClient(connection: connection), pool: pool, namespace: namespace, layers: config.moeLayers,
                                              verify: KubernetesMembership.handshakeVerifier(configuration: probe, logger: logger), logger: logger)
        guard await membership.start() else { throw CommandFailure("--pool \(pool): watching its EndpointSlices did not start") }
        // Pods join once they have answered a handshake: give the first ones a moment.
        let deadline = ContinuousClock.now + .seconds(20)
        while membership.current().servers.isEmpty, ContinuousClock.now < deadline { try await Task.sleep(for: .milliseconds(100)) }
        return membership
    }

    /// The engine's expert source; remote sources are checked against the pods now. `kubernetes`
    /// is the membership `kubernetesMembership` made.
    func source(modelDirectory: String, kubernetes: MembershipSource? = nil, clientID: UInt64 = UInt64.random(in: 1...UInt64.max)) throws -> ExpertSource {
        guard experts == "remote" else { return .local }
        if pool != nil, kubernetes == nil { throw ValidationError("--pool is for `eaas worker`") }
        let config = try ModelConfig.load(directory: modelDirectory)
        var dispatcher = Dispatcher.Configuration(poolToken: try PoolTokenSource.read(file: poolTokenFile), clientID: clientID)
        dispatcher.backend = ["tcp": .tcp, "shm": .shm, "verbs": .verbs][transport]!
        dispatcher.contactCost = contactCost
        dispatcher.modelDigest = try ModelDigest.compute(directory: modelDirectory).bytes
        let source: MembershipSource
        if let kubernetes {
            source = kubernetes
            let missing = ExpertPods.missingExperts(config: config, view: kubernetes.current())
            if !missing.isEmpty {
                FileHandle.standardError.write(Data("warning: \(missing.count) experts have no ready pod in pool \(pool ?? "") yet; steps wait for them\n".utf8))
            }
        } else if let expertServers {
            let addresses = expertServers.split(separator: ",").map { $0.trimmingCharacters(in: .whitespaces) }.filter { !$0.isEmpty }
            source = try ExpertPods.staticMembership(addresses: addresses, config: config, dispatcher: dispatcher)
        } else {
            let file = try FileMembership(path: membership!)
            let missing = ExpertPods.missingExperts(config: config, view: file.current())
            if !missing.isEmpty {
                FileHandle.standardError.write(Data("warning: \(missing.count) experts have no ready pod in \(membership!) yet; steps wait for them\n".utf8))
            }
            source = file
        }
        let dtype: WireDType
        if let fixed = ["f32": WireDType.f32, "bf16": .bf16, "f16": .f16][wireDtype] {
            dtype = fixed
        } else if let asked = try ExpertPods.wireDType(of: source.current(), config: config, dispatcher: dispatcher) {
            dtype = asked
        } else {
            throw ValidationError("--wire-dtype auto: no expert pod answered; give --wire-dtype to start before the pods")
        }
        return .remote(membership: source, dispatcher: dispatcher, wireDType: dtype)
    }
}

/// Sampling flags of `eaas generate`.
struct SamplingOptions: ParsableArguments {
    @Option(help: "Sampling temperature (0: greedy).") var temperature: Double = 0
    @Option(help: "Nucleus sampling threshold in (0, 1].") var topP: Double = 1
    @Option(help: "Keep only the K most likely tokens (0: all).") var topK: Int = 0
    @Option(help: "Seed of the sampler (the same seed gives the same tokens).") var seed: UInt64 = 0

    var parameters: SamplingParameters { SamplingParameters(temperature: temperature, topP: topP, topK: topK, seed: seed) }

    func validate() throws {
        if let problem = parameters.problem { throw ValidationError(problem) }
    }
}

/// `eaas generate`: run prompts (token ids) through the model once and print the tokens.
/// `eaas generate`: tokens (the default) or the CRD.
struct GenerateCommand: ParsableCommand {
    static let configuration = CommandConfiguration(
        commandName: "generate",
        abstract: "Generate tokens (the default: `eaas generate --model … --prompt-ids …`) or the ExpertPool CRD (`eaas generate crd`).",
        subcommands: [GenerateTokensCommand.self, GenerateCRDCommand.self],
        defaultSubcommand: GenerateTokensCommand.self
    )
}

struct GenerateTokensCommand: ParsableCommand {
    static let configuration = CommandConfiguration(
        commandName: "tokens",
        abstract: "Generate for prompts (text, a chat message, or token ids), experts local or on expert pods.",
        discussion: """
            Repeat --prompt, --chat or --prompt-ids for several sequences: they are generated together with continuous batching.
            --prompt and --chat need a tokenizer (the model directory's tokenizer.json, or --tokenizer); --chat renders one user
            message with the model's chat template. Text prompts print text; --prompt-ids print ids.
            """
    )

    @Option(help: "Checkpoint directory (config.json + safetensors).") var model: String
    @Option(help: "A prompt as comma-separated token ids; repeat for more sequences.") var promptIds: [String] = []
    @Option(help: "A prompt as text; repeat for more sequences.") var prompt: [String] = []
    @Option(help: "A user message, through the model's chat template; repeat for more sequences.") var chat: [String] = []
    @Option(help: "A tokenizer other than the model directory's: tokenizer.json, a directory, or a .gguf file.") var tokenizer: String?
    @Option(help: "Most tokens to generate per sequence.") var maxTokens: Int = 16
    @Flag(help: "Keep generating through the model's end-of-sequence tokens.") var ignoreEos = false
    @Flag(help: "Print JSON instead of one line of ids per sequence.") var json = false
    @OptionGroup var experts: ExpertOptions
    @OptionGroup var sampling: SamplingOptions

    func validate() throws {
        _ = try idPrompts()
        guard !(promptIds.isEmpty && prompt.isEmpty && chat.isEmpty) else { throw ValidationError("give --prompt, --chat or --prompt-ids") }
        guard promptIds.isEmpty || (prompt.isEmpty && chat.isEmpty) else { throw ValidationError("--prompt-ids cannot be mixed with --prompt or --chat") }
        guard maxTokens >= 1 else { throw ValidationError("--max-tokens must be at least 1") }
    }

    /// The prompts as ids, and the tokenizer that made them (nil for --prompt-ids).
    func prompts(modelVocabulary: Int) throws -> ([[Int]], ModelTokenizer?) {
        if !promptIds.isEmpty { return (try idPrompts(), nil) }
        let text: ModelTokenizer
        do {
            guard let loaded = try ModelTokenizer.load(modelDirectory: model, tokenizer: tokenizer) else {
                throw CommandFailure("--prompt and --chat need a tokenizer: \(model) has no tokenizer.json (give --tokenizer)")
            }
            try loaded.check(vocabularySize: modelVocabulary)
            text = loaded
        } catch let failure as CommandFailure { throw failure } catch { throw CommandFailure("--tokenizer: \(error)") }
        var out: [[Int]] = []
        for p in prompt {
            let ids = text.tokenizer.encode(p)
            guard !ids.isEmpty else { throw ValidationError("--prompt '\(p)' is empty") }
            out.append(ids)
        }
        for message in chat {
            do { out.append(try text.chatPrompt([.init(role: "user", content: message)])) } catch { throw CommandFailure("--chat: \(error)") }
        }
        return (out, text)
    }

    func idPrompts() throws -> [[Int]] {
        try promptIds.map { text in
            let parts = text.split(separator: ",", omittingEmptySubsequences: false).map { $0.trimmingCharacters(in: .whitespaces) }
            let ids = parts.compactMap { Int($0) }
            guard !parts.isEmpty, ids.count == parts.count, ids.allSatisfy({ $0 >= 0 }) else {
                throw ValidationError("--prompt-ids '\(text)' is not a comma-separated list of token ids")
            }
            return ids
        }
    }

    func run() throws {
        let engine: GenerationEngine
        do {
            var configuration = GenerationEngine.Configuration()
            configuration.microBatching = MicroBatching(rawValue: experts.microBatches)!
            engine = try GenerationEngine(modelDirectory: model, experts: try experts.source(modelDirectory: model), configuration: configuration)
        } catch let error as ValidationError { throw error } catch { throw CommandFailure("\(error)") }
        let (prompts, text) = try prompts(modelVocabulary: engine.config.vocabSize)
        let stops = ignoreEos ? [] : text?.stopTokenIDs ?? []
        let requests = prompts.map {
            GenerationRequest(prompt: $0, maxTokens: maxTokens, sampling: sampling.parameters, stopTokenIDs: stops, ignoreEOS: ignoreEos)
        }
        let started = ContinuousClock.now
        let results: [GenerationResult]
        do { results = try engine.generate(requests) } catch { throw CommandFailure("\(error)") }
        let seconds = (ContinuousClock.now - started).seconds
        let generated = results.map(\.tokens.count).reduce(0, +)
        if json {
            let body: JSONValue = .object([
                "experts": .string(engine.expertMode.rawValue),
                "sequences": .array(results.enumerated().map { index, result in
                    var fields: [String: JSONValue] = [
                        "prompt_ids": .array(requests[index].prompt.map { .int($0) }), "token_ids": .array(result.tokens.map { .int($0) }),
                        "finish_reason": .string(result.finishReason.rawValue)]
                    if let text { fields["text"] = .string(text.tokenizer.decode(result.tokens, skipSpecialTokens: true)) }
                    return .object(fields)
                }),
                "generated_tokens": .int(generated), "seconds": .double(seconds),
            ])
            print(body.serialized())
        } else {
            for result in results {
                if let text { print(text.tokenizer.decode(result.tokens, skipSpecialTokens: true)) } else { print(result.tokens.map(String.init).joined(separator: ",")) }
            }
            FileHandle.standardError.write(Data(String(format: "%d tokens in %.2f s (%.1f tok/s), experts %@\n", generated, seconds,
                                                       Double(generated) / max(seconds, 1e-9), engine.expertMode.rawValue).utf8))
        }
    }
}

/// A failure at run time (not a usage mistake): printed as `Error: …` without the usage text.
struct CommandFailure: Error, CustomStringConvertible {
    let description: String
    init(_ description: String) { self.description = description }
}


/// `eaas worker`: the attention worker serving `POST /v1/completions`.
struct WorkerCommand: AsyncParsableCommand {
    static let configuration = CommandConfiguration(
        commandName: "worker",
        abstract: "Serve an MoE model's attention side with an OpenAI-shaped API: /v1/completions and /v1/chat/completions.",
        discussion: """
        Prints 'listening HOST:PORT' once the API is up. Requests beyond --max-running queue, up to \
        --max-waiting; past that the worker answers 429 with Retry-After. SIGTERM: /readyz turns 503, \
        new requests get 503, accepted ones finish, then the worker exits.
        """
    )

    @Option(help: "Checkpoint directory (config.json + safetensors; tokenizer.json and tokenizer_config.json give it text and chat).") var model: String
    @Option(help: "A tokenizer other than the model directory's: tokenizer.json, a directory, or a .gguf file.") var tokenizer: String?
    @Option(help: "HTTP address to bind.") var host: String = "0.0.0.0"
    @Option(help: "HTTP port (0 picks a free one).") var port: Int = 8000
    @Option(help: "Sequences generating at once.") var maxRunning: Int = 64
    @Option(help: "Tokens per step (decodes first, then prompt chunks).") var maxBatchTokens: Int = 512
    @Option(help: "Requests that may wait for a running place before new ones get 429.") var maxWaiting: Int = 1024
    @Option(help: "Longest prompt + generation (default: the model's max_position_embeddings).") var maxContext: Int?
    @Option(help: "GiB of KV cache (f32) the running sequences may hold together; a request that needs more is refused.") var kvCacheGib: Double = 4
    @Option(help: "Seconds a client has to send a request's headers (from connecting, or from the previous answer's end: also the keep-alive idle limit).")
    var headerTimeoutSeconds: Double = 10
    @Option(help: "Seconds a client has to send a request's body once its headers are in.") var bodyTimeoutSeconds: Double = 30
    @Option(help: "Seconds a streamed answer may wait for a client that reads nothing before its sequences are cancelled and the connection closed.")
    var streamStallSeconds: Double = 15
    @Option(help: "Log level: trace, debug, info, notice, warning, error, critical.") var logLevel: String = "info"
    @OptionGroup var experts: ExpertOptions

    func validate() throws {
        guard (0...65_535).contains(port) else { throw ValidationError("--port \(port) is not a port") }
        for (name, value) in [("--header-timeout-seconds", headerTimeoutSeconds), ("--body-timeout-seconds", bodyTimeoutSeconds),
                              ("--stream-stall-seconds", streamStallSeconds)] where !(value > 0 && value <= 86_400) {
            throw ValidationError("\(name) must be more than 0 and at most 86400 (got \(value))")
        }
        guard kvCacheGib > 0, kvCacheGib < 1_048_576 else { throw ValidationError("--kv-cache-gib must be a positive number of GiB") }
        if let problem = engineConfiguration().problem { throw ValidationError(problem) }
        guard Logger.Level(rawValue: logLevel) != nil else { throw ValidationError("--log-level '\(logLevel)' is not a log level") }
    }

    func limits() -> WorkerServer.Limits {
        var limits = WorkerServer.Limits()
        limits.headerTimeout = .milliseconds(Int64(headerTimeoutSeconds * 1000))
        limits.bodyTimeout = .milliseconds(Int64(bodyTimeoutSeconds * 1000))
        limits.streamStallTimeout = .milliseconds(Int64(streamStallSeconds * 1000))
        return limits
    }

    func engineConfiguration() -> GenerationEngine.Configuration {
        var configuration = GenerationEngine.Configuration()
        configuration.maxRunning = maxRunning
        configuration.maxBatchTokens = maxBatchTokens
        configuration.maxWaiting = maxWaiting
        configuration.maxContext = maxContext
        configuration.kvCacheBytes = Int(kvCacheGib * Double(1 << 30))
        configuration.microBatching = MicroBatching(rawValue: experts.microBatches)!
        return configuration
    }

    func run() async throws {
        var logger = Logger(label: "eaas.worker")
        logger.logLevel = Logger.Level(rawValue: logLevel) ?? .info
        let engine: GenerationEngine
        do {
            let kubernetes = try await experts.kubernetesMembership(modelDirectory: model, logger: Logger(label: "eaas.worker.membership"))
            engine = try GenerationEngine(modelDirectory: model, experts: try experts.source(modelDirectory: model, kubernetes: kubernetes),
                                          configuration: engineConfiguration())
        } catch let error as ValidationError { throw error } catch { throw CommandFailure("\(error)") }
        logger.info("model loaded", metadata: ["model": "\(model)", "matmul": "\(MatmulPrecision.process.summary)"])
        let text: ModelTokenizer?
        do {
            text = try ModelTokenizer.load(modelDirectory: model, tokenizer: tokenizer)
            try text?.check(vocabularySize: engine.config.vocabSize)
        } catch { throw CommandFailure("--tokenizer: \(error)") }
        if let text {
            logger.info("tokenizer loaded", metadata: ["ids": "\(text.tokenizer.vocabularySize)", "chat template": "\(text.chatTemplate != nil)"])
        } else {
            logger.notice("no tokenizer.json in the model directory: prompts must be token ids and /v1/chat/completions is refused")
        }
        let announced = ManagedFlag()
        let application = WorkerServer.application(engine: engine, tokenizer: text, host: host, port: port, limits: limits(), logger: logger) { channel in
            guard announced.setOnce() else { return }
            FileHandle.standardOutput.write(Data("listening \(host):\(channel.localAddress?.port ?? port) experts \(engine.expertMode.rawValue)\n".utf8))
        }
        // The engine shuts down first (drains accepted requests) while HTTP still streams them.
        let group = ServiceGroup(configuration: .init(
            services: [.init(service: application), .init(service: EngineService(engine: engine))],
            gracefulShutdownSignals: [.sigterm, .sigint],
            logger: logger
        ))
        try await group.run()
    }
}
