import Foundation
import Testing
@testable import Transport

/// A step's routing over `experts` experts: token t goes to `topK` distinct experts.
func routing(tokens: Int, topK: Int, experts: Int, salt: Int) -> (ids: [Int32], weights: [Float]) {
    var ids: [Int32] = [], weights: [Float] = []
    for t in 0..<tokens {
        for j in 0..<topK {
            ids.append(Int32((t * 3 + j * (experts / topK) + salt) % experts))
            weights.append(Float((t + j + salt) % 5 + 1) / 8)
        }
    }
    return (ids, weights)
}

/// What the test servers compute for the whole step: Σ over every (token, expert) of w · (id + x).
func wholeStep(ids: [Int32], weights: [Float], states: [Float], tokens: Int, topK: Int, hidden: Int) -> [Float] {
    expectedSums(ids: ids.map { UInt16($0) }, weights: weights, states: states, tokens: tokens, slots: topK, hidden: hidden)
}

@Suite("Dispatcher against data-plane servers, over tcp and shm")
struct DispatcherTests {
    static let hidden = 4

    func servers(_ count: Int, experts: Int, replicas: Int) throws -> ([DataPlaneServer], StaticMembership) {
        let hosted = (0..<count).map { i in
            // Expert e lives on servers e, e+1, … (mod count): `replicas` copies each.
            (0..<experts).filter { e in (0..<replicas).contains { (e + $0) % count == i } }.map { HostedExpert(layer: 2, expert: UInt16($0)) }
        }
        let running = try (0..<count).map { try startServer(token: "pool", experts: hosted[$0], hidden: Self.hidden, id: UInt64($0)) }
        let infos = running.enumerated().map { i, server in ServerInfo(id: "pod-\(i)", address: "127.0.0.1:\(server.port)", experts: hosted[i]) }
        return (running, StaticMembership(servers: infos))
    }

    func run(_ dispatcher: Dispatcher, steps: Int, experts: Int, onStep: (Int) -> Void = { _ in }) throws {
        for step in 0..<steps {
            onStep(step)
            let tokens = 1 + step % 9, topK = 4
            let (ids, weights) = routing(tokens: tokens, topK: topK, experts: experts, salt: step)
            let states = (0..<(tokens * Self.hidden)).map { Float(($0 + step) % 17) / 4 }
            let sums = try states.withUnsafeBytes {
                try dispatcher.step(layer: 2, tokens: tokens, topK: topK, ids: ids, weights: weights, states: $0, hidden: Self.hidden, dtype: .f32)
            }
            let expected = wholeStep(ids: ids, weights: weights, states: states, tokens: tokens, topK: topK, hidden: Self.hidden)
            #expect(maxDifference(sums, expected) < 1e-4, "step \(step)")
        }
    }

    func maxDifference(_ a: [Float], _ b: [Float]) -> Float { zip(a, b).map { abs($0 - $1) }.max() ?? .infinity }

    func configuration(_ backend: BackendKind, client: UInt64) -> Dispatcher.Configuration {
        var configuration = Dispatcher.Configuration(poolToken: Array("pool".utf8), clientID: client)
        configuration.backend = backend
        return configuration
    }

    @Test("Steps spread over several servers come back combined and right", arguments: [BackendKind.tcp, .shm])
    func steps(backend: BackendKind) throws {
        let (running, membership) = try servers(3, experts: 12, replicas: 1)
        defer { running.forEach { $0.stop() } }
        let dispatcher = Dispatcher(membership: membership, configuration: configuration(backend, client: 1))
        defer { dispatcher.close() }
        try run(dispatcher, steps: 40, experts: 12)
        #expect(running.allSatisfy { $0.served > 0 })
        #expect((0..<3).allSatisfy { dispatcher.backend(of: "pod-\($0)") == backend })
        #expect(dispatcher.failovers == 0)
    }

    @Test("A server that dies mid-run loses nothing: its tokens go to the other replica at once", arguments: [BackendKind.tcp, .shm])
    func failover(backend: BackendKind) throws {
        let (running, membership) = try servers(3, experts: 12, replicas: 2)
        defer { running.forEach { $0.stop() } }
        let dispatcher = Dispatcher(membership: membership, configuration: configuration(backend, client: 2))
        defer { dispatcher.close() }
        try run(dispatcher, steps: 60, experts: 12) { step in
            if step == 20 { running[1].stop() }
        }
        #expect(dispatcher.failovers >= 1)
    }

    @Test("A draining server (GOAWAY) gets no new work once it has said so, and its clients leave it", arguments: [BackendKind.tcp, .shm])
    func goAway(backend: BackendKind) throws {
        let (running, membership) = try servers(2, experts: 8, replicas: 2)
        defer { running.forEach { $0.stop() } }
        var configuration = configuration(backend, client: 3)
        configuration.downFor = .seconds(60)
        let dispatcher = Dispatcher(membership: membership, configuration: configuration)
        defer { dispatcher.close() }
        try run(dispatcher, steps: 10, experts: 8)
        #expect(running[0].clientCount == 1)
        let drained = DispatchSemaphore(value: 0)
        final class Outcome: @unchecked Sendable { var allLeft = false }
        let outcome = Outcome()
        Thread {
            outcome.allLeft = running[0].drain(timeout: .seconds(10))
            drained.signal()
        }.start()
        // A successful poll consumes the signal: remember it rather than wait for a second one.
        var finished = false
        while running[0].clientCount > 0 {
            if drained.wait(timeout: .now()) == .success { finished = true; break }
            try run(dispatcher, steps: 1, experts: 8)  // at most one more answer from pod-0, with its GOAWAY
        }
        if !finished { drained.wait() }
        #expect(outcome.allLeft, "the client closed its link after the GOAWAY")
        let before = running[0].served
        try run(dispatcher, steps: 20, experts: 8)
        #expect(running[0].served == before, "no work after GOAWAY")
    }

    @Test("A replica that accepts but never answers is abandoned after its timeout; the step completes elsewhere")
    func hungReplica() throws {
        let good = try startServer(token: "pool", experts: (0..<4).map { HostedExpert(layer: 2, expert: UInt16($0)) }, hidden: Self.hidden)
        defer { good.stop() }
        // A server that accepts connections and reads, but never writes a byte.
        let silent = try Socket.listen(host: "127.0.0.1", port: 0)
        final class Held: @unchecked Sendable {
            let lock = NSLock()
            var sockets: [Socket] = []
        }
        let held = Held()
        let done = DispatchSemaphore(value: 0)
        Thread {
            while let socket = try? silent.accept() { held.lock.lock(); held.sockets.append(socket); held.lock.unlock() }
            done.signal()
        }.start()
        defer {
            silent.shutdown()
            done.wait()
            silent.close()
            held.lock.lock(); held.sockets.forEach { $0.close() }; held.lock.unlock()
        }
        let experts = (0..<4).map { HostedExpert(layer: 2, expert: UInt16($0)) }
        let membership = StaticMembership(servers: [
            ServerInfo(id: "a-silent", address: "127.0.0.1:\(silent.localPort)", experts: experts),
            ServerInfo(id: "b-good", address: "127.0.0.1:\(good.port)", experts: experts),
        ])
        var configuration = Dispatcher.Configuration(poolToken: Array("pool".utf8), clientID: 6)
        configuration.maximumTimeout = .milliseconds(300)
        let dispatcher = Dispatcher(membership: membership, configuration: configuration)
        defer { dispatcher.close() }
        let start = ContinuousClock.now
        try run(dispatcher, steps: 6, experts: 4)
        #expect(ContinuousClock.now - start < .seconds(5))
        #expect(good.served >= 6)
    }

    @Test("A step that cannot finish by its deadline says what failed at each server")
    func stepDeadline() throws {
        let membership = StaticMembership(servers: [ServerInfo(id: "gone", address: "127.0.0.1:1", experts: [HostedExpert(layer: 2, expert: 0)])])
        var configuration = Dispatcher.Configuration(poolToken: Array("t".utf8), clientID: 7)
        configuration.stepDeadline = .milliseconds(200)
        configuration.downFor = .milliseconds(20)
        configuration.noReplicaWait = .seconds(10)
        let dispatcher = Dispatcher(membership: membership, configuration: configuration)
        defer { dispatcher.close() }
        let states = [Float](repeating: 1, count: Self.hidden)
        #expect {
            try states.withUnsafeBytes { try dispatcher.step(layer: 2, tokens: 1, topK: 1, ids: [0], weights: [1], states: $0, hidden: Self.hidden, dtype: .f32) }
        } throws: { error in
            "\(error)".contains("step not finished within") && "\(error)".contains("gone: connect 127.0.0.1:1")
        }
    }

    @Test("With no replica of an expert left, a step waits its bounded time and names the expert")
    func noReplica() throws {
        let (running, membership) = try servers(1, experts: 4, replicas: 1)
        var configuration = Dispatcher.Configuration(poolToken: Array("pool".utf8), clientID: 4)
        configuration.noReplicaWait = .milliseconds(300)
        let dispatcher = Dispatcher(membership: membership, configuration: configuration)
        defer { dispatcher.close() }
        running[0].stop()
        let start = ContinuousClock.now
        let states = [Float](repeating: 1, count: Self.hidden)
        #expect {
            try states.withUnsafeBytes {
                try dispatcher.step(layer: 2, tokens: 1, topK: 1, ids: [3], weights: [1], states: $0, hidden: Self.hidden, dtype: .f32)
            }
        } throws: { error in
            "\(error)".contains("no ready replica hosts expert 3 of layer 2")
        }
        #expect(ContinuousClock.now - start >= .milliseconds(300))
    }

    @Test("A wrong pool token is a clear refusal, not a silent failover")
    func wrongToken() throws {
        let (running, membership) = try servers(1, experts: 2, replicas: 1)
        defer { running.forEach { $0.stop() } }
        let dispatcher = Dispatcher(membership: membership, configuration: .init(poolToken: Array("nope".utf8), clientID: 5))
        defer { dispatcher.close() }
        let states = [Float](repeating: 1, count: Self.hidden)
        #expect {
            try states.withUnsafeBytes { try dispatcher.step(layer: 2, tokens: 1, topK: 1, ids: [0], weights: [1], states: $0, hidden: Self.hidden, dtype: .f32) }
        } throws: { error in
            "\(error)".contains("refused") && "\(error)".contains("wrong pool token")
        }
    }
}
