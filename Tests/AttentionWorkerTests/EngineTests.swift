import Foundation
import MoE
import Testing
@testable import AttentionWorker

@Suite("Generation engine: admission, cancellation, sampling")
struct EngineTests {
    static func engine(maxRunning: Int = 2, maxWaiting: Int = 1) throws -> GenerationEngine {
        var configuration = GenerationEngine.Configuration()
        configuration.maxRunning = maxRunning
        configuration.maxBatchTokens = 64
        configuration.maxWaiting = maxWaiting
        return try GenerationEngine(modelDirectory: WorkerFixture.directory, experts: .local, configuration: configuration)
    }

    @Test("past the running places and the waiting queue a request is refused as overloaded; generate's own requests all queue")
    func overload() throws {
        let engine = try Self.engine(maxRunning: 1, maxWaiting: 1)
        let collected = Collected(count: 3)
        try engine.submit(GenerationRequest(prompt: [3, 4], maxTokens: 2)) { collected.record($0, at: 0) }
        try engine.submit(GenerationRequest(prompt: [3, 4], maxTokens: 2)) { collected.record($0, at: 1) }
        #expect(throws: SubmitError.overloaded(waiting: 2)) {
            try engine.submit(GenerationRequest(prompt: [5], maxTokens: 2)) { collected.record($0, at: 2) }
        }
        // The engine is not started: generate runs it here, the two queued ones included.
        let results = try engine.generate((0..<5).map { GenerationRequest(prompt: [7, $0 + 3], maxTokens: 3, ignoreEOS: true) })
        #expect(results.allSatisfy { $0.tokens.count == 3 })
        #expect(collected.results[0].finished && collected.results[1].finished)
    }

    @Test("a group of requests goes in whole or not at all, each event tagged with its request's index, and the first step takes all of it")
    func groupSubmission() throws {
        let engine = try Self.engine(maxRunning: 3, maxWaiting: 1)
        let collected = Collected(count: 3)
        // Four would need more room than running places plus queue: none of them is kept.
        #expect(throws: SubmitError.overloaded(waiting: 0)) {
            try engine.submit((0..<5).map { GenerationRequest(prompt: [3, $0 + 4], maxTokens: 2) }) { _, _ in }
        }
        // A bad member refuses the group by its field, and nothing of it is kept either.
        #expect(throws: SubmitError.invalid("prompt[1]: max_tokens must be at least 1 (got 0)", param: "max_tokens")) {
            try engine.submit([GenerationRequest(prompt: [3], maxTokens: 2), GenerationRequest(prompt: [4], maxTokens: 0)]) { _, _ in }
        }
        let requests = (0..<3).map { GenerationRequest(prompt: [5, $0 + 6], maxTokens: 2 + $0, ignoreEOS: true) }
        let handles = try engine.submit(requests) { index, event in collected.record(event, at: index) }
        #expect(handles.count == 3)
        engine.step()
        #expect(engine.stats.steps == 1 && engine.stats.promptTokens == 6, "the first step prefilled all three prompts")
        while engine.stats.steps < 10 && !collected.results.allSatisfy(\.finished) { engine.step() }
        let results = collected.results
        #expect(results.map(\.tokens.count) == [2, 3, 4])
        // The same tokens as `generate` gives the same three.
        let alone = try engine.generate(requests)
        #expect(results.map(\.tokens) == alone.map(\.tokens))
    }

    @Test("a cancelled sequence, waiting or running, ends with exactly one failed(cancelled) event and frees its place")
    func cancellation() throws {
        let engine = try Self.engine(maxRunning: 1, maxWaiting: 4)
        let collected = Collected(count: 2)
        let running = try engine.submit(GenerationRequest(prompt: [3, 4, 5], maxTokens: 50, ignoreEOS: true)) { collected.record($0, at: 0) }
        let waiting = try engine.submit(GenerationRequest(prompt: [6], maxTokens: 50, ignoreEOS: true)) { collected.record($0, at: 1) }
        engine.step()
        engine.step()
        waiting.cancel()
        running.cancel()
        engine.step()
        let results = collected.results
        #expect(results[0].failure == "cancelled" && results[0].tokens.count == 2)
        #expect(results[1].failure == "cancelled" && results[1].tokens.isEmpty)
        #expect(try engine.generate([GenerationRequest(prompt: [9], maxTokens: 2)]).first?.tokens.count == 2)
        #expect(engine.stats.failedRequests == 0, "a cancellation is not a failure")
    }

    @Test("bad requests are refused by field, including a max_tokens that would overflow")
    func validation() throws {
        let engine = try Self.engine()
        let cases: [(GenerationRequest, String)] = [
            (GenerationRequest(prompt: [], maxTokens: 1), "at least one token"),
            (GenerationRequest(prompt: [256], maxTokens: 1), "outside the vocabulary (0..<256)"),
            (GenerationRequest(prompt: [1], maxTokens: 0), "max_tokens must be at least 1"),
            (GenerationRequest(prompt: [1], maxTokens: Int.max), "exceeds the context of 4096"),
            (GenerationRequest(prompt: [1], maxTokens: 2, sampling: SamplingParameters(temperature: 1, topP: 0)), "top_p"),
        ]
        for (request, words) in cases {
            #expect { try engine.submit(request) { _ in } } throws: { "\($0)".contains(words) }
        }
    }

    @Test("sampling: top-k 1 and a tiny top-p are greedy, a seed repeats itself, top-k keeps to the k best")
    func sampling() {
        let logits: [Float] = [0.5, 2.0, -1.0, 1.9, 0.0, 1.95, -3.0, 1.0]
        logits.withUnsafeBufferPointer { l in
            for seed in 0..<20 as Range<UInt64> {
                var topOne = Sampler(SamplingParameters(temperature: 1.5, topK: 1, seed: seed))
                var nucleus = Sampler(SamplingParameters(temperature: 1.5, topP: 1e-6, seed: seed))
                #expect(topOne.next(l) == 1 && nucleus.next(l) == 1)
                var topThree = Sampler(SamplingParameters(temperature: 5, topK: 3, seed: seed))
                for _ in 0..<20 { #expect([1, 3, 5].contains(topThree.next(l)!)) }
            }
            var a = Sampler(SamplingParameters(temperature: 1, seed: 42)), b = Sampler(SamplingParameters(temperature: 1, seed: 42))
            let first = (0..<50).map { _ in a.next(l)! }
            #expect(first == (0..<50).map { _ in b.next(l)! })
            #expect(Set(first).count > 2, "temperature 1 draws more than the best few")
            var nan = Sampler(SamplingParameters(temperature: 1, seed: 1))
            #expect([Float.nan, 1].withUnsafeBufferPointer { nan.next($0) } == nil)
        }
    }
}
