import Foundation
import Logging
import MoE
import Testing
import Transport
@testable import ExpertPod

/// Which model a pod serves, and answers a pod must never give.
@Suite("Expert pod: model identity and finite answers")
struct PodIdentityTests {
    /// A second checkpoint of the fixture's exact shape with other weights (another seed).
    static let otherDirectory: String = {
        let path = FileManager.default.temporaryDirectory.appendingPathComponent("eaas-pod-fixture-other-\(getpid())").path
        var spec = RandomModelSpec(architecture: .qwen3Moe, layers: 2, experts: PodFixture.experts, topK: 2, hidden: PodFixture.hidden)
        spec.dtype = .f32
        spec.expertFFN = 32
        spec.seed = 8
        spec.weightStd = 0.2
        _ = try! RandomModel.write(spec, to: path)
        return path
    }()

    /// A whole expert pod (as `eaas expert-pod` builds it) on `directory`, serving.
    static func pod(_ directory: String) throws -> ExpertPod {
        var configuration = PodConfiguration(model: directory, shard: try ShardSpec(parsing: "0-7"), poolToken: Array("identity-token".utf8))
        configuration.host = "127.0.0.1"
        configuration.port = 0
        configuration.offerShm = false
        configuration.wireDType = .f32
        let pod = try ExpertPod(configuration: configuration, logger: Logger(label: "test"))
        pod.service.server.start()
        return pod
    }

    @Test("Two same-shape checkpoints with different weights: the worker refuses the other's pod, naming both models, and never combines it")
    func otherModelRefused() throws {
        let mine = try ModelDigest.compute(directory: PodFixture.directory)
        let theirs = try ModelDigest.compute(directory: Self.otherDirectory)
        #expect(mine != theirs)
        #expect(try ModelDigest.compute(directory: PodFixture.directory) == mine, "the digest is a pure function of the files")
        let good = try Self.pod(PodFixture.directory), other = try Self.pod(Self.otherDirectory)
        defer { good.service.server.stop(); other.service.server.stop() }
        var dispatcher = Dispatcher.Configuration(poolToken: Array("identity-token".utf8), clientID: 4)
        dispatcher.modelDigest = mine.bytes
        let goodAddress = "127.0.0.1:\(good.service.server.port)", otherAddress = "127.0.0.1:\(other.service.server.port)"

        // The handshake (what a static list and membership verification ask) refuses it, naming both digests.
        do {
            _ = try ServerLinks.probe(address: otherAddress, configuration: dispatcher)
            Issue.record("a pod of another model was accepted")
        } catch {
            #expect("\(error)".contains(mine.description) && "\(error)".contains(theirs.description), "\(error)")
        }
        #expect(try ServerLinks.probe(address: goodAddress, configuration: dispatcher).modelDigest == mine.bytes)

        // The dispatcher itself refuses it too (the last line of defence), and serves from its own.
        let experts = (0..<8).map { HostedExpert(layer: 1, expert: UInt16($0)) }
        let onlyOther = Dispatcher(membership: StaticMembership(servers: [ServerInfo(id: "other", address: otherAddress, experts: experts)]),
                                   configuration: dispatcher)
        defer { onlyOther.close() }
        let states = PodFixture.states(tokens: 1, seed: 9)
        #expect(throws: Dispatcher.StepError.self) {
            _ = try states.withUnsafeBytes { try onlyOther.step(layer: 1, tokens: 1, topK: 2, ids: [0, 1], weights: [0.5, 0.5], states: $0, hidden: PodFixture.hidden, dtype: .f32) }
        }
        let own = Dispatcher(membership: StaticMembership(servers: [ServerInfo(id: "good", address: goodAddress, experts: experts)]), configuration: dispatcher)
        defer { own.close() }
        let sums = try states.withUnsafeBytes { try own.step(layer: 1, tokens: 1, topK: 2, ids: [0, 1], weights: [0.5, 0.5], states: $0, hidden: PodFixture.hidden, dtype: .f32) }
        #expect(sums.count == PodFixture.hidden && sums.allSatisfy(\.isFinite))
    }

    @Test("Large finite hidden values whose sums overflow get invalidValues; the batch's other request is answered")
    func overflowRefused() throws {
        // Both requests (2 + 3 tokens) fill one batch of 5; the wait only bounds a slow machine.
        let (server, _) = try PodFixture.server(shard: "0-7", maxBatchTokens: 5, maxWait: .seconds(30))
        defer { server.stop() }
        let hostile = try connectPod(server), normal = try connectPod(server)
        defer { hostile.close(); normal.close() }
        // The largest finite values (bf16 0x7f7f widens to 3.39e38): every product overflows.
        let huge = [Float](repeating: Float(bitPattern: 0x7f7f_0000), count: 2 * PodFixture.hidden)
        try hostile.write(podRequest(sequence: 1, layer: 0, ids: [0, 1, 2, 3], weights: [0.5, 0.5, 0.5, 0.5], states: huge, slots: 2))
        try normal.write(podRequest(sequence: 2, layer: 0, ids: [0, 1, 2, 3, 4, 5], weights: [0.5, 0.5, 0.5, 0.5, 0.5, 0.5],
                                    states: PodFixture.states(tokens: 3, seed: 1), slots: 2))
        guard case .error(let error) = try Frame.decode(try #require(try hostile.readFrame())) else {
            Issue.record("non-finite sums were answered")
            return
        }
        #expect(error.code == .invalidValues && error.sequence == 1 && error.message.contains("not finite"), "\(error.message)")
        guard case .response(let response) = try Frame.decode(try #require(try normal.readFrame())) else {
            Issue.record("the batch's other request failed too")
            return
        }
        #expect(response.header.sequence == 2 && (0..<(3 * PodFixture.hidden)).allSatisfy { response.sum($0).isFinite })
    }
}
