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
    @Test("remote experts over tcp and shm give the local logits within 1e-4 and the same greedy tokens",
          arguments: ["mixtral", "qwen2-moe", "qwen3-moe", "olmoe", "deepseek-v2", "deepseek-v3"], [BackendKind.tcp, .shm])
    func remoteMatchesLocal(name: String, backend: BackendKind) throws {
        let fixture = try GenerationFixture(name)
        let config = try ModelConfig.load(directory: fixture.directory)
        // Two shards splitting the experts, so that a token's experts come from different servers.
        let half = config.expertCount / 2
        let pods = try ExpertServers(directory: fixture.directory, shards: ["0-\(half - 1)", "\(half)-\(config.expertCount - 1)"], offerShm: backend == .shm)
        defer { pods.stop() }
        let dispatcher = Dispatcher(membership: StaticMembership(servers: pods.infos), configuration: pods.dispatcher(backend: backend))
        let remote = DecoderModel(weights: try DecoderWeights(directory: fixture.directory, localExperts: false),
                                  placement: RoutedExpertPlacement(dispatcher: dispatcher, wireDType: .f32))
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
