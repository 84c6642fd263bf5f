import Foundation
import MoE
import Testing
import Transport
@testable import AttentionWorker
@testable import ExpertPod

/// In-process expert servers over a fixture checkpoint: each shard served by `replicas` servers.
final class ExpertServers {
    let servers: [DataPlaneServer]
    let infos: [ServerInfo]

    init(directory: String, shards: [String], replicas: Int = 1, dtype: WireDType = .f32, offerShm: Bool = false, firstID: UInt64 = 1) throws {
        var servers: [DataPlaneServer] = [], infos: [ServerInfo] = []
        var id = firstID
        for shard in shards {
            for _ in 0..<replicas {
                let computer = ShardComputer(shard: try ExpertShard(directory: directory, spec: try ShardSpec(parsing: shard)), dtype: dtype)
                var configuration = DataPlaneServer.Configuration(poolToken: Array("worker-test".utf8), serverID: id)
                configuration.offerShm = offerShm
                configuration.slots = 4
                let server = try DataPlaneServer(computer: computer, configuration: configuration, observer: nil)
                server.start()
                servers.append(server)
                infos.append(ServerInfo(id: "server-\(id)", address: "127.0.0.1:\(server.port)", experts: computer.experts))
                id += 1
            }
        }
        self.servers = servers
        self.infos = infos
    }

    func dispatcher(backend: BackendKind = .tcp) -> Dispatcher.Configuration {
        var configuration = Dispatcher.Configuration(poolToken: Array("worker-test".utf8), clientID: 42)
        configuration.backend = backend
        return configuration
    }

    func stop() { for server in servers { server.stop() } }
}

@Suite("Attention worker with remote experts")
struct RemoteExpertsTests {
    /// Fixture `name` and two servers splitting its experts, so that a token's experts come from
    /// different servers.
    static func twoShards(_ name: String, backend: BackendKind) throws -> (GenerationFixture, ModelConfig, ExpertServers) {
        let fixture = try GenerationFixture(name)
        let config = try ModelConfig.load(directory: fixture.directory)
        let half = config.expertCount / 2
        let pods = try ExpertServers(directory: fixture.directory, shards: ["0-\(half - 1)", "\(half)-\(config.expertCount - 1)"], offerShm: backend == .shm)
        return (fixture, config, pods)
    }

    @Test("remote experts over tcp and shm give the local logits within 1e-4 and the same greedy tokens",
          arguments: ["mixtral", "qwen2-moe", "qwen3-moe", "olmoe", "deepseek-v2", "deepseek-v3"], [BackendKind.tcp, .shm])
    func remoteMatchesLocal(name: String, backend: BackendKind) throws {
        let (fixture, config, pods) = try Self.twoShards(name, backend: backend)
        defer { pods.stop() }
        let dispatcher = Dispatcher(membership: StaticMembership(servers: pods.infos), configuration: pods.dispatcher(backend: backend))
        let remote = DecoderModel(weights: try DecoderWeights(directory: fixture.directory, localExperts: false),
                                  placement: RoutedExpertPlacement(dispatchers: [dispatcher], wireDType: .f32))
        let sequence = fixture.prompt + fixture.generated.dropLast()
        var batch = StepBatch()
        batch.append(remote.makeCache(capacity: sequence.count), tokens: sequence.map { Int32($0) })
        let logits = try remote.forward(batch, logitRows: Array(0..<sequence.count))
        let error = relativeError(logits[...], fixture.logits[...])
        #expect(error < 1e-4, "\(name) over \(backend): remote logits differ from transformers' by \(error)")
        #expect(dispatcher.backend(of: pods.infos[0].id) == backend)

        let membership = try ExpertPods.staticMembership(addresses: pods.infos.map(\.address), config: config, dispatcher: pods.dispatcher(backend: backend))
        #expect(try ExpertPods.wireDType(of: membership.view, config: config, dispatcher: pods.dispatcher()) == .f32)
        let engine = try GenerationEngine(modelDirectory: fixture.directory,
                                          experts: .remote(membership: membership, dispatcher: pods.dispatcher(backend: backend), wireDType: .f32))
        let local = try GenerationEngine(modelDirectory: fixture.directory, experts: .local)
        let requests = [GenerationRequest(prompt: fixture.prompt, maxTokens: 16, ignoreEOS: true)]
            + (0..<4).map { GenerationRequest(prompt: [5 + $0, 9, 11 + $0], maxTokens: 8 + $0, ignoreEOS: true) }
        let remoteResults = try engine.generate(requests)
        #expect(remoteResults == (try local.generate(requests)))
        #expect(remoteResults[0].tokens == fixture.generated)
    }

    @Test("two micro-batches pipelined against the pods (ping-pong) give the tokens of local experts, and each step's MoE layers go out once per micro-batch",
          arguments: ["qwen2-moe", "deepseek-v2"], [BackendKind.tcp, .shm])
    func pipelinedMicroBatches(name: String, backend: BackendKind) throws {
        let (fixture, config, pods) = try Self.twoShards(name, backend: backend)
        defer { pods.stop() }
        let membership = try ExpertPods.staticMembership(addresses: pods.infos.map(\.address), config: config, dispatcher: pods.dispatcher(backend: backend))
        var configuration = GenerationEngine.Configuration()
        configuration.microBatching = .two
        let engine = try GenerationEngine(modelDirectory: fixture.directory,
                                          experts: .remote(membership: membership, dispatcher: pods.dispatcher(backend: backend), wireDType: .f32),
                                          configuration: configuration)
        let requests = [GenerationRequest(prompt: fixture.prompt, maxTokens: 12, ignoreEOS: true)]
            + (0..<4).map { GenerationRequest(prompt: [5 + $0, 9, 11 + $0], maxTokens: 6 + $0, ignoreEOS: true) }
        let pipelined = try engine.generate(requests)
        #expect(pipelined == (try GenerationEngine(modelDirectory: fixture.directory, experts: .local).generate(requests)))
        #expect(pipelined[0].tokens == fixture.generated.prefix(12).map { $0 })
        // Steps with two or more sequences went out as two micro-batches: more MoE layer calls
        // than one per MoE layer per step.
        let moeLayers = (0..<config.layerCount).filter { config.isMoE(layer: $0) }.count
        let stats = engine.stats
        #expect(stats.moePhases.layers > stats.steps * moeLayers, "\(stats.moePhases.layers) MoE layer calls in \(stats.steps) steps of \(moeLayers) MoE layers")
        #expect(stats.moePhases.remote.steps == stats.moePhases.layers)
    }

    @Test("a sequence whose hidden values a pod refuses fails alone with the pod's reason (500); the others in its steps finish with their own tokens")
    func refusedSequenceFailsAlone() async throws {
        // A checkpoint whose embedding row for token 200 is NaN: that token's hidden states and
        // routing weights are not finite, and the pod refuses any request that carries them.
        let directory = FileManager.default.temporaryDirectory.appendingPathComponent("eaas-poisoned-\(UUID().uuidString)").path
        defer { try? FileManager.default.removeItem(atPath: directory) }
        var spec = RandomModelSpec(architecture: .qwen3Moe, layers: 2, experts: 8, topK: 2, hidden: 64)
        spec.dtype = .f32
        spec.expertFFN = 32
        spec.vocab = 256
        spec.seed = 3
        let config = try RandomModel.write(spec, to: directory)
        try Self.poison(directory: directory, tensor: "model.embed_tokens.weight", row: 200, width: config.hiddenSize)

        let pods = try ExpertServers(directory: directory, shards: ["0-7"])
        defer { pods.stop() }
        let membership = try ExpertPods.staticMembership(addresses: pods.infos.map(\.address), config: config, dispatcher: pods.dispatcher())
        let engine = try GenerationEngine(modelDirectory: directory, experts: .remote(membership: membership, dispatcher: pods.dispatcher(), wireDType: .f32))
        let good = [GenerationRequest(prompt: [5, 9, 11], maxTokens: 6, ignoreEOS: true), GenerationRequest(prompt: [6, 9, 12, 4], maxTokens: 5, ignoreEOS: true)]
        let poisoned = GenerationRequest(prompt: [7, 200, 3], maxTokens: 6, ignoreEOS: true)
        // Queued before the engine starts, so that the first step holds all three prompts.
        let streams = try [good[0], poisoned, good[1]].map { try engine.stream($0).events }
        engine.start()
        defer { engine.shutdown(drain: false) }
        var outcomes: [(tokens: [Int], failure: SequenceFailure?)] = []
        for stream in streams {
            var tokens: [Int] = [], failure: SequenceFailure?
            for await event in stream {
                switch event {
                case .token(let token): tokens.append(token)
                case .finished: break
                case .failed(let reason): failure = reason
                }
            }
            outcomes.append((tokens, failure))
        }
        let alone = try GenerationEngine(modelDirectory: directory, experts: .local).generate(good)
        #expect(outcomes[0].failure == nil && outcomes[0].tokens == alone[0].tokens)
        #expect(outcomes[2].failure == nil && outcomes[2].tokens == alone[1].tokens)
        let failure = try #require(outcomes[1].failure, "the poisoned sequence was not failed")
        // (Its routing weights are NaN as well, so the pod names the first bad field it meets.)
        #expect(failure.description.contains("refused the request") && failure.description.lowercased().contains("nan"), "\(failure)")
        #expect(CompletionError(failure).status == 500)
        #expect(outcomes[1].tokens.isEmpty)
    }

    /// Overwrites one row of a tensor of the checkpoint in `directory` with NaN.
    static func poison(directory: String, tensor: String, row: Int, width: Int) throws {
        for file in try FileManager.default.contentsOfDirectory(atPath: directory) where file.hasSuffix(".safetensors") {
            let path = directory + "/" + file
            guard let info = try SafeTensorsFile(path: path).tensors[tensor] else { continue }
            #expect(info.dtype == .f32)
            let handle = try FileHandle(forUpdating: URL(fileURLWithPath: path))
            defer { try? handle.close() }
            let headerLength = try handle.read(upToCount: 8)!.withUnsafeBytes { $0.loadUnaligned(as: UInt64.self).littleEndian }
            try handle.seek(toOffset: 8 + headerLength + UInt64(info.dataOffsets.lowerBound + row * width * 4))
            handle.write([Float](repeating: .nan, count: width).withUnsafeBytes { Data($0) })
            return
        }
        throw SafeTensorsError(file: directory, tensor: tensor, "no such tensor")
    }

    @Test("a membership file is followed while generating: pods listed later take over from pods removed")
    func membershipFileIsFollowed() throws {
        let fixture = try GenerationFixture("qwen3-moe")
        let first = try ExpertServers(directory: fixture.directory, shards: ["0-7"])
        let second = try ExpertServers(directory: fixture.directory, shards: ["0-3", "4-7"], firstID: 10)
        defer {
            first.stop()
            second.stop()
        }
        let path = NSTemporaryDirectory() + "eaas-membership-\(UUID().uuidString).json"
        defer { try? FileManager.default.removeItem(atPath: path) }
        func list(_ servers: [ServerInfo]) throws {
            try JSONEncoder().encode(["servers": servers]).write(to: URL(fileURLWithPath: path), options: .atomic)
        }
        try list(first.infos)
        let membership = try FileMembership(path: path, pollInterval: .milliseconds(20))
        let engine = try GenerationEngine(modelDirectory: fixture.directory,
                                          experts: .remote(membership: membership, dispatcher: first.dispatcher(), wireDType: .f32))
        let request = GenerationRequest(prompt: fixture.prompt, maxTokens: 16, ignoreEOS: true)
        #expect(try engine.generate([request])[0].tokens == fixture.generated)
        // The pods move: the file names the new ones, the old ones go away.
        try list(second.infos)
        Thread.sleep(forTimeInterval: 0.1)
        first.stop()
        #expect(try engine.generate([request])[0].tokens == fixture.generated)
        #expect(engine.failovers == 0, "the worker followed the file instead of failing over")
    }

    @Test("a static list missing an expert is refused at start, naming the expert")
    func staticListMustCoverEveryExpert() throws {
        let fixture = try GenerationFixture("qwen3-moe")
        let config = try ModelConfig.load(directory: fixture.directory)
        let pods = try ExpertServers(directory: fixture.directory, shards: ["0-6"])
        defer { pods.stop() }
        #expect {
            _ = try ExpertPods.staticMembership(addresses: pods.infos.map(\.address), config: config, dispatcher: pods.dispatcher())
        } throws: { "\($0)".contains("expert 7 of layer 1") }
        #expect(throws: (any Error).self) {
            _ = try ExpertPods.staticMembership(addresses: ["127.0.0.1:1"], config: config, dispatcher: pods.dispatcher())
        }
    }
}
