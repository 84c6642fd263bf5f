import Foundation
import MoE
import Testing
import Transport
@testable import ExpertPod

@Suite("Expert pod: shard, batching, bad input")
struct ExpertPodTests {
    @Test("A shard loads only its experts, in every MoE layer or the ones named")
    func shardLoading() throws {
        let all = try ExpertShard(directory: PodFixture.directory, spec: try ShardSpec(parsing: "1,3"))
        #expect(all.hosted == [0, 1].flatMap { l in [1, 3].map { HostedExpert(layer: UInt16(l), expert: UInt16($0)) } })
        let one = try ExpertShard(directory: PodFixture.directory, spec: try ShardSpec(parsing: "0-3@1"))
        #expect(one.hosted == (0..<4).map { HostedExpert(layer: 1, expert: UInt16($0)) })
        #expect(one.weightBytes == all.weightBytes, "4 experts of one layer weigh as much as 2 experts of two")
    }

    @Test("Shards the model cannot serve are refused by name")
    func shardMismatch() throws {
        #expect { try ExpertShard(directory: PodFixture.directory, spec: try ShardSpec(parsing: "7-8")) } throws: {
            "\($0)".contains("expert 8 does not exist (the model has 8 experts, 0-7)")
        }
        #expect { try ExpertShard(directory: PodFixture.directory, spec: try ShardSpec(parsing: "0@2")) } throws: {
            "\($0)".contains("layer 2 is not an MoE layer")
        }
    }

    @Test("Two pods with half the experts each answer a step exactly as the monolithic layer does")
    func parityWithMonolithicLayer() throws {
        let (a, _) = try PodFixture.server(shard: "0-3")
        let (b, _) = try PodFixture.server(shard: "4-7")
        defer { a.stop(); b.stop() }
        let checkpoint = try Checkpoint(directory: PodFixture.directory)
        let config = try ModelConfig.load(directory: PodFixture.directory)
        var client = Dispatcher.Configuration(poolToken: Array("pod".utf8), clientID: 9)
        client.backend = .shm
        let membership = StaticMembership(servers: [
            ServerInfo(id: "a", address: "127.0.0.1:\(a.port)", experts: a.computer.experts),
            ServerInfo(id: "b", address: "127.0.0.1:\(b.port)", experts: b.computer.experts),
        ])
        let dispatcher = Dispatcher(membership: membership, configuration: client)
        defer { dispatcher.close() }
        for layer in 0..<2 {
            let monolithic = try MoELayer(checkpoint: checkpoint, config: config, layer: layer)
            for tokens in [1, 5, 17] {
                let states = PodFixture.states(tokens: tokens, seed: UInt64(layer * 100 + tokens))
                let (expected, routing) = try states.withUnsafeBufferPointer { try monolithic.forward($0, tokens: tokens) }
                let sums = try states.withUnsafeBytes {
                    try dispatcher.step(layer: UInt16(layer), tokens: tokens, topK: routing.topK, ids: routing.ids, weights: routing.weights,
                                        states: $0, hidden: PodFixture.hidden, dtype: .f32)
                }
                let worst = zip(sums, expected).map { abs($0 - $1) / max(1, abs($1)) }.max() ?? .infinity
                #expect(worst < 1e-5, "layer \(layer), \(tokens) tokens: worst relative difference \(worst)")
            }
        }
        #expect(a.served > 0 && b.served > 0)
    }

    @Test("Requests of several clients are merged into one batch and each gets its own answer")
    func batchesAcrossClients() throws {
        final class Largest: @unchecked Sendable {
            let lock = NSLock()
            var requests = 0
        }
        let largest = Largest()
        // The three requests (2 + 3 + 4 tokens) fill a batch of 9; the wait only bounds a slow machine.
        let (server, _) = try PodFixture.server(shard: "0-7", maxBatchTokens: 9, maxWait: .seconds(30)) { report in
            largest.lock.lock(); largest.requests = max(largest.requests, report.requests); largest.lock.unlock()
        }
        defer { server.stop() }
        let solo = try ExpertShard(directory: PodFixture.directory, spec: try ShardSpec(parsing: "0-7"))
        // Connected first, so that the three requests go out together even on a loaded machine;
        // each client on its own thread (they block reading their answers).
        let connections = try (0..<3).map { _ in try connectPod(server) }
        defer { connections.forEach { $0.close() } }
        final class Outcome: @unchecked Sendable {
            let lock = NSLock()
            var worst: [Int: Float] = [:]
        }
        let outcome = Outcome()
        let done = DispatchGroup()
        for client in 0..<3 {
            let connection = connections[client]
            done.enter()
            Thread {
                defer { done.leave() }
                let tokens = 2 + client
                var ids: [UInt16] = []
                for t in 0..<tokens { ids += [UInt16((t + client) % 8), UInt16((t + client + 3) % 8)] }
                let weights = (0..<(2 * tokens)).map { Float($0 % 3 + 1) / 4 }
                let states = PodFixture.states(tokens: tokens, seed: UInt64(client))
                let frame = podRequest(sequence: 1, layer: 0, ids: ids, weights: weights, states: states, slots: 2)
                guard (try? connection.write(frame)) != nil, let bytes = try? connection.readFrame(),
                      case .response(let response)? = try? Frame.decode(bytes) else { return }
                // The same request computed alone, by the same code, must give the same numbers.
                let alone = ShardComputer(shard: solo, dtype: .f32)
                var own = [Float](repeating: 0, count: tokens * PodFixture.hidden)
                frame.withUnsafeBytes { bytes in
                    guard case .request(let view)? = try? Frame.decode(bytes) else { return }
                    own.withUnsafeMutableBufferPointer { _ = alone.compute([ComputeItem(request: view, sums: $0)]) }
                }
                let worst = zip((0..<own.count).map(response.sum), own).map { abs($0 - $1) }.max() ?? .infinity
                outcome.lock.lock(); outcome.worst[client] = worst; outcome.lock.unlock()
            }.start()
        }
        done.wait()
        #expect(outcome.worst.count == 3, "every client got an answer")
        #expect(outcome.worst.values.allSatisfy { $0 < 1e-5 }, "\(outcome.worst)")
        #expect(largest.requests == 3, "the three clients' requests were computed as one batch")
    }

    /// Sends `bad`, expects an error with `code` whose message contains `text`, then checks the
    /// same connection still gets a right answer.
    func expectRefusal(_ bad: [UInt8], code: WireErrorCode, mentioning text: String) throws {
        let (server, _) = try PodFixture.server(shard: "0-3")
        defer { server.stop() }
        let connection = try connectPod(server)
        defer { connection.close() }
        try connection.write(bad)
        guard case .error(let error) = try Frame.decode(try #require(try connection.readFrame())) else {
            Issue.record("expected an error frame"); return
        }
        #expect(error.code == code && error.message.contains(text), "\(error.code): \(error.message)")
        let states = PodFixture.states(tokens: 2, seed: 3)
        try connection.write(podRequest(sequence: 2, layer: 1, ids: [0, 1, 2, 3], weights: [0.5, 0.5, 0.25, 0.75], states: states, slots: 2))
        guard case .response(let response) = try Frame.decode(try #require(try connection.readFrame())) else {
            Issue.record("the pod stopped serving after a bad request"); return
        }
        #expect(response.header.sequence == 2 && response.header.tokens == 2)
        #expect(server.failed == 1, "the refusal is counted")
    }

    @Test("An expert this shard does not host gets unknownExpert, and the pod keeps serving")
    func unknownExpert() throws {
        try expectRefusal(podRequest(sequence: 1, layer: 0, ids: [5], weights: [1], states: PodFixture.states(tokens: 1, seed: 1), slots: 1),
                          code: .unknownExpert, mentioning: "expert 5 of layer 0 is not hosted")
    }

    @Test("A wrong hidden size gets shapeMismatch, and the pod keeps serving")
    func wrongHidden() throws {
        try expectRefusal(podRequest(sequence: 1, layer: 0, ids: [1], weights: [1], states: [Float](repeating: 0.5, count: 32), slots: 1, hidden: 32),
                          code: .shapeMismatch, mentioning: "hidden 32")
    }

    @Test("Too many tokens gets tooManyTokens, and the pod keeps serving")
    func tooManyTokens() throws {
        try expectRefusal(podRequest(sequence: 1, layer: 0, ids: [UInt16](repeating: 1, count: 65), weights: [Float](repeating: 1, count: 65),
                                     states: PodFixture.states(tokens: 65, seed: 2), slots: 1),
                          code: .tooManyTokens, mentioning: "at most 64")
    }

    @Test("A request far larger than any this pod takes is refused on its own, and the pod keeps serving")
    func oversizedRequests() throws {
        // 1000 tokens: the frame is over the read limit, so only its header is looked at.
        try expectRefusal(podRequest(sequence: 1, layer: 0, ids: [UInt16](repeating: 1, count: 1000), weights: [Float](repeating: 1, count: 1000),
                                     states: PodFixture.states(tokens: 1000, seed: 6), slots: 1),
                          code: .tooManyTokens, mentioning: "1000 tokens")
        try expectRefusal(podRequest(sequence: 1, layer: 0, ids: [UInt16](repeating: 1, count: 40), weights: [Float](repeating: 1, count: 40),
                                     states: [Float](repeating: 0.25, count: 40 * 2048), slots: 1, hidden: 2048),
                          code: .shapeMismatch, mentioning: "hidden 2048")
    }

    @Test("A malformed frame gets malformedFrame naming the field, and the pod keeps serving")
    func malformedFrame() throws {
        // Token 0 names expert 1 twice: well framed, invalid.
        let frame = podRequest(sequence: 1, layer: 0, ids: [1, 1], weights: [0.5, 0.5], states: PodFixture.states(tokens: 1, seed: 4), slots: 2)
        try expectRefusal(frame, code: .malformedFrame, mentioning: "names expert 1 twice")
    }

    @Test("NaN or Inf in the hidden states gets invalidValues naming the token, and the pod keeps serving")
    func nonFiniteInput() throws {
        var states = PodFixture.states(tokens: 3, seed: 5)
        states[2 * PodFixture.hidden + 7] = .nan
        try expectRefusal(podRequest(sequence: 1, layer: 0, ids: [0, 1, 2], weights: [1, 1, 1], states: states, slots: 1),
                          code: .invalidValues, mentioning: "token 2 has a non-finite hidden value")
        states[2 * PodFixture.hidden + 7] = -.infinity
        try expectRefusal(podRequest(sequence: 1, layer: 0, ids: [0, 1, 2], weights: [1, 1, 1], states: states, slots: 1),
                          code: .invalidValues, mentioning: "-inf")
    }
}
