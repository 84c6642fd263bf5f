import Testing
@testable import AttentionWorker

/// The scheduler's policy as tables: no model, no thread, only counts.
@Suite("Scheduler: admission, step plans, outcomes, retirement")
struct SchedulerTests {
    typealias Chunk = Scheduler.StepPlan.Chunk

    /// A sequence of `prompt` tokens generating up to `max`, holding `bytes` of cache.
    static func entry(_ id: UInt64, prompt: Int, max: Int = 4, bytes: Int = 10) -> Scheduler.Entry {
        Scheduler.Entry(id: id, promptLength: prompt, maxTokens: max, cacheBytes: bytes)
    }

    struct AdmissionCase: CustomTestStringConvertible {
        let name: String
        let limits: Scheduler.Limits
        let prompts: [Int]
        let bytes: [Int]
        /// Ids running after the first schedule, and what the first plan holds.
        let running: [UInt64]
        let plan: [Chunk]
        var testDescription: String { name }
    }

    static let admissionCases: [AdmissionCase] = [
        .init(name: "all fit: every prompt whole in one step", limits: .init(maxRunning: 4, maxBatchTokens: 16, kvCacheBytes: 100),
              prompts: [3, 2, 5], bytes: [10, 10, 10], running: [1, 2, 3],
              plan: [Chunk(id: 1, prompt: 0..<3, samples: true), Chunk(id: 2, prompt: 0..<2, samples: true), Chunk(id: 3, prompt: 0..<5, samples: true)]),
        .init(name: "running places bound admission, first come first served", limits: .init(maxRunning: 2, maxBatchTokens: 16, kvCacheBytes: 100),
              prompts: [3, 2, 5], bytes: [10, 10, 10], running: [1, 2],
              plan: [Chunk(id: 1, prompt: 0..<3, samples: true), Chunk(id: 2, prompt: 0..<2, samples: true)]),
        .init(name: "KV bytes bound admission; a later small one does not jump the queue", limits: .init(maxRunning: 4, maxBatchTokens: 16, kvCacheBytes: 50),
              prompts: [3, 2, 1], bytes: [30, 30, 5], running: [1],
              plan: [Chunk(id: 1, prompt: 0..<3, samples: true)]),
        .init(name: "token budget splits the last prompt; the chunk that does not end it samples nothing", limits: .init(maxRunning: 4, maxBatchTokens: 6, kvCacheBytes: 100),
              prompts: [4, 5], bytes: [10, 10], running: [1, 2],
              plan: [Chunk(id: 1, prompt: 0..<4, samples: true), Chunk(id: 2, prompt: 0..<2, samples: false)]),
        .init(name: "a budget spent on the first prompt leaves the second admitted but unplanned", limits: .init(maxRunning: 4, maxBatchTokens: 4, kvCacheBytes: 100),
              prompts: [9, 2], bytes: [10, 10], running: [1, 2],
              plan: [Chunk(id: 1, prompt: 0..<4, samples: false)]),
    ]

    @Test("admission and the first plan", arguments: admissionCases)
    func admission(_ row: AdmissionCase) {
        var scheduler = Scheduler(limits: row.limits)
        for (index, (prompt, bytes)) in zip(row.prompts, row.bytes).enumerated() {
            scheduler.add(Self.entry(UInt64(index + 1), prompt: prompt, bytes: bytes))
        }
        let plan = scheduler.schedule()
        #expect(scheduler.running.map(\.id) == row.running)
        #expect(plan.chunks == row.plan)
        #expect(scheduler.cacheBytesInUse == zip(row.prompts.indices, row.bytes).filter { row.running.contains(UInt64($0.0 + 1)) }.reduce(0) { $0 + $1.1 })
    }

    @Test("decodes come first, then prompt chunks continue where the last step left them")
    func decodesBeforePrefill() {
        var scheduler = Scheduler(limits: .init(maxRunning: 4, maxBatchTokens: 5, kvCacheBytes: 100))
        scheduler.add(Self.entry(1, prompt: 2))
        scheduler.add(Self.entry(2, prompt: 7))
        var plan = scheduler.schedule()
        #expect(plan.chunks == [Chunk(id: 1, prompt: 0..<2, samples: true), Chunk(id: 2, prompt: 0..<3, samples: false)])
        #expect(scheduler.postprocess(plan, outcomes: [.sampled(stop: false), .ran]).isEmpty)
        plan = scheduler.schedule()
        #expect(plan.chunks == [Chunk(id: 1, prompt: nil, samples: true), Chunk(id: 2, prompt: 3..<7, samples: true)])
        #expect(plan.tokens == 5 && plan.promptTokens == 4)
        _ = scheduler.postprocess(plan, outcomes: [.sampled(stop: false), .sampled(stop: false)])
        plan = scheduler.schedule()
        #expect(plan.chunks == [Chunk(id: 1, prompt: nil, samples: true), Chunk(id: 2, prompt: nil, samples: true)])
        #expect(plan.promptTokens == 0)
    }

    struct SplitCase: CustomTestStringConvertible {
        let name: String
        /// Tokens per chunk (1: a decode).
        let tokens: [Int]
        let parts: Int
        let ranges: [Range<Int>]
        var testDescription: String { name }
    }

    static let splitCases: [SplitCase] = [
        .init(name: "decodes halve", tokens: [1, 1, 1, 1], parts: 2, ranges: [0..<2, 2..<4]),
        .init(name: "an odd count puts the extra one in the second half", tokens: [1, 1, 1], parts: 2, ranges: [0..<1, 1..<3]),
        .init(name: "one sequence is never split", tokens: [7], parts: 2, ranges: [0..<1]),
        .init(name: "one part: the whole step", tokens: [1, 1, 1], parts: 1, ranges: [0..<3]),
        .init(name: "a long prompt chunk alone against the decodes", tokens: [1, 1, 1, 9], parts: 2, ranges: [0..<3, 3..<4]),
        .init(name: "a long chunk first", tokens: [9, 1, 1, 1], parts: 2, ranges: [0..<1, 1..<4]),
        .init(name: "no chunks, no micro-batches", tokens: [], parts: 2, ranges: []),
    ]

    @Test("micro-batches: contiguous runs of whole sequences, tokens as even as they allow", arguments: splitCases)
    func split(_ row: SplitCase) {
        let chunks = row.tokens.enumerated().map { index, tokens in
            Chunk(id: UInt64(index), prompt: tokens == 1 ? nil : 0..<tokens, samples: true)
        }
        #expect(Scheduler.split(chunks, into: row.parts) == row.ranges)
    }

    @Test("a plan carries its micro-batches")
    func planMicroBatches() {
        var scheduler = Scheduler(limits: .init(maxRunning: 4, maxBatchTokens: 16, kvCacheBytes: 100, microBatching: .two))
        for id in 1...4 { scheduler.add(Self.entry(UInt64(id), prompt: 2)) }
        let plan = scheduler.schedule()
        #expect(plan.microBatches == [0..<2, 2..<4])
    }

    struct OutcomeCase: CustomTestStringConvertible {
        let name: String
        let maxTokens: Int
        let outcomes: [Scheduler.Outcome]
        let finished: FinishReason?
        let failed: Bool
        let generated: Int
        var testDescription: String { name }
    }

    static let outcomeCases: [OutcomeCase] = [
        .init(name: "runs to max tokens: finished by length", maxTokens: 3, outcomes: [.sampled(stop: false), .sampled(stop: false), .sampled(stop: false)],
              finished: .length, failed: false, generated: 3),
        .init(name: "a stop token ends it early", maxTokens: 5, outcomes: [.sampled(stop: false), .sampled(stop: true)], finished: .stop, failed: false, generated: 2),
        .init(name: "a stop token on the last allowed token says stop", maxTokens: 1, outcomes: [.sampled(stop: true)], finished: .stop, failed: false, generated: 1),
        .init(name: "a failed step fails it and nothing is counted", maxTokens: 5, outcomes: [.sampled(stop: false), .failed], finished: nil, failed: true, generated: 1),
    ]

    @Test("outcomes: tokens counted, finish reasons, failures; retire frees the cache", arguments: outcomeCases)
    func outcomes(_ row: OutcomeCase) {
        var scheduler = Scheduler(limits: .init(maxRunning: 2, maxBatchTokens: 8, kvCacheBytes: 100))
        scheduler.add(Self.entry(7, prompt: 3, max: row.maxTokens, bytes: 40))
        var finished: [(id: UInt64, reason: FinishReason)] = []
        for outcome in row.outcomes {
            let plan = scheduler.schedule()
            #expect(plan.chunks.count == 1)
            finished += scheduler.postprocess(plan, outcomes: [outcome])
        }
        #expect(finished.map(\.reason) == (row.finished.map { [$0] } ?? []))
        #expect(scheduler.running.first?.generated == row.generated)
        #expect(scheduler.running.first?.done == true)
        #expect(scheduler.schedule().isEmpty, "a done sequence is never planned")
        let retired = scheduler.retire()
        #expect(retired.ids == [7] && retired.failed == (row.failed ? 1 : 0))
        #expect(scheduler.isIdle && scheduler.cacheBytesInUse == 0)
    }

    @Test("cancel: a waiting one leaves at once, a running one at retire, neither counts as failed, and each is reported once")
    func cancellation() {
        var scheduler = Scheduler(limits: .init(maxRunning: 1, maxBatchTokens: 8, kvCacheBytes: 100))
        scheduler.add(Self.entry(1, prompt: 2, bytes: 60))
        scheduler.add(Self.entry(2, prompt: 2, bytes: 60))
        _ = scheduler.schedule()
        #expect(scheduler.cancel([2, 1, 9]) == [2, 1], "the unknown id is ignored")
        #expect(scheduler.cancel([1]).isEmpty, "already cancelled")
        #expect(scheduler.waiting.isEmpty && scheduler.running.map(\.id) == [1])
        #expect(scheduler.retire() == (ids: [1], failed: 0))
        // The place and the bytes are free again.
        scheduler.add(Self.entry(3, prompt: 1, bytes: 100))
        #expect(scheduler.schedule().chunks == [Chunk(id: 3, prompt: 0..<1, samples: true)])
    }

    @Test("a plan's chunk whose sequence was cancelled meanwhile is not counted when its outcome arrives")
    func outcomeAfterCancel() {
        var scheduler = Scheduler(limits: .init(maxRunning: 2, maxBatchTokens: 8, kvCacheBytes: 100))
        scheduler.add(Self.entry(1, prompt: 2, max: 1))
        let plan = scheduler.schedule()
        _ = scheduler.cancel([1])
        #expect(scheduler.postprocess(plan, outcomes: [.sampled(stop: false)]).isEmpty)
        #expect(scheduler.running.first?.generated == 0)
    }

    @Test("abandonAll returns every live sequence, waiting and running, and empties the scheduler")
    func abandon() {
        var scheduler = Scheduler(limits: .init(maxRunning: 1, maxBatchTokens: 8, kvCacheBytes: 100))
        scheduler.add(Self.entry(1, prompt: 2))
        scheduler.add(Self.entry(2, prompt: 2))
        _ = scheduler.schedule()
        #expect(scheduler.abandonAll() == [2, 1])
        #expect(scheduler.isIdle && scheduler.cacheBytesInUse == 0)
    }
}
