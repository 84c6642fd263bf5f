import Foundation
import MoE
import Testing
import Transport
@testable import AttentionWorker

/// Generation through `eaas expert-pod` processes, two replicas of every expert, one pod
/// SIGKILLed while sequences are generating.
@Suite("Generation through a killed expert pod", .serialized)
struct PodFailureTests {
    /// Two shards (experts 0-3, 4-7), each served by two pods.
    static func startPods(backend: String) throws -> [EaasProcess] {
        try ["0-3", "0-3", "4-7", "4-7"].map { shard in
            try EaasProcess(["expert-pod", "--model", WorkerFixture.directory, "--shard", shard, "--listen", "127.0.0.1:0",
                             "--transport", backend, "--metrics-host", "127.0.0.1", "--metrics-port", "0", "--wire-dtype", "f32",
                             "--grace-seconds", "2", "--log-level", "warning"],
                            environment: ["EAAS_POOL_TOKEN": "fault-test"])
        }
    }

    /// `eaas_requests_total` of the pod whose metrics listen at `address`.
    static func requestsServed(metrics address: String) throws -> Int {
        let text = try String(contentsOf: URL(string: "http://\(address)/metrics")!, encoding: .utf8)
        let line = text.split(separator: "\n").first { $0.hasPrefix("eaas_requests_total ") }
        return Int(Double(line?.split(separator: " ").last ?? "0") ?? 0)
    }

    static let requests: [GenerationRequest] = (0..<8).map { i in
        GenerationRequest(prompt: (0..<(4 + i)).map { (7 * $0 + 3 * i) % 250 + 3 }, maxTokens: 120 + 10 * i,
                          sampling: i == 7 ? SamplingParameters(temperature: 0.8, topP: 0.95, seed: 99) : .greedy, ignoreEOS: true)
    }

    @Test("every sequence completes with the tokens of the run without failure", arguments: ["tcp", "shm"])
    func killedPodLosesNothing(backend: String) throws {
        let expected = try GenerationEngine(modelDirectory: WorkerFixture.directory, experts: .local).generate(Self.requests)
        let pods = try Self.startPods(backend: backend)
        defer { for pod in pods { pod.cleanUp() } }
        let config = try ModelConfig.load(directory: WorkerFixture.directory)
        var dispatcher = Dispatcher.Configuration(poolToken: Array("fault-test".utf8), clientID: 7)
        dispatcher.backend = backend == "shm" ? .shm : .tcp
        let membership = try ExpertPods.staticMembership(addresses: pods.map(\.address), config: config, dispatcher: dispatcher)

        // Without failure first: the remote run equals the monolithic one.
        let calm = try GenerationEngine(modelDirectory: WorkerFixture.directory,
                                        experts: .remote(membership: membership, dispatcher: dispatcher, wireDType: .f32))
        #expect(try calm.generate(Self.requests) == expected)

        // Then the same requests on a running engine, a pod killed once a fifth of the tokens are out.
        let engine = try GenerationEngine(modelDirectory: WorkerFixture.directory,
                                          experts: .remote(membership: membership, dispatcher: dispatcher, wireDType: .f32))
        // What the calm run's engine (another client, with its own sticky replicas) had them serve.
        let servedBefore = try pods[0..<2].map { pod in try Self.requestsServed(metrics: pod.announcement[3]) }
        let collected = Collected(count: Self.requests.count)
        engine.start()
        defer { engine.shutdown(drain: false) }
        for (index, request) in Self.requests.enumerated() {
            try engine.submit(request) { collected.record($0, at: index) }
        }
        let total = Self.requests.map(\.maxTokens).reduce(0, +)
        #expect(collected.wait(untilTokens: total / 5, timeout: 60), "generation did not progress")
        // The worker keeps to the replicas it used last: kill the one of experts 0-3 that serves
        // this engine (counted since it started; the calm run's choices say nothing about it).
        let served = try zip(pods[0..<2], servedBefore).map { pod, before in try Self.requestsServed(metrics: pod.announcement[3]) - before }
        let victim = served[0] >= served[1] ? pods[0] : pods[1]
        #expect(served.max()! > 0)
        victim.signal(SIGKILL)
        let killedAt = collected.tokenCount
        #expect(collected.wait(untilDone: 120), "generation did not finish after the kill")
        #expect(killedAt < total, "the pod died after generation ended")
        let results = collected.results
        for (index, result) in results.enumerated() {
            #expect(result.failure == nil, "request \(index) failed: \(result.failure ?? "")")
            #expect(result.tokens == expected[index].tokens, "request \(index) differs from the run without failure")
        }
        #expect(engine.failovers >= 1, "the dispatcher never noticed the dead pod")
        #expect(engine.stats.failedRequests == 0)
    }
}

/// Events of several sequences, gathered across threads.
final class Collected: @unchecked Sendable {
    struct Sequence { var tokens: [Int] = []; var finished = false; var failure: String? }
    private let condition = NSCondition()
    private var sequences: [Sequence]

    init(count: Int) { sequences = Array(repeating: Sequence(), count: count) }

    func record(_ event: GenerationEvent, at index: Int) {
        condition.lock()
        switch event {
        case .token(let token): sequences[index].tokens.append(token)
        case .finished: sequences[index].finished = true
        case .failed(let reason): sequences[index].failure = reason.description; sequences[index].finished = true
        }
        condition.broadcast()
        condition.unlock()
    }

    var tokenCount: Int { condition.lock(); defer { condition.unlock() }; return sequences.map(\.tokens.count).reduce(0, +) }
    var results: [Sequence] { condition.lock(); defer { condition.unlock() }; return sequences }

    func wait(untilTokens count: Int, timeout: TimeInterval) -> Bool {
        wait(timeout) { $0.map(\.tokens.count).reduce(0, +) >= count }
    }

    func wait(untilDone timeout: TimeInterval) -> Bool { wait(timeout) { $0.allSatisfy(\.finished) } }

    private func wait(_ timeout: TimeInterval, _ done: ([Sequence]) -> Bool) -> Bool {
        let deadline = Date().addingTimeInterval(timeout)
        condition.lock()
        defer { condition.unlock() }
        while !done(sequences) {
            if !condition.wait(until: deadline) { return done(sequences) }
        }
        return true
    }
}
