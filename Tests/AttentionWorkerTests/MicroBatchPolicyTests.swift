import Testing
@testable import AttentionWorker

@Suite("Micro-batch policy: split where splitting measured faster")
struct MicroBatchPolicyTests {
    struct Case: CustomTestStringConvertible {
        let name: String
        /// Seconds a step takes whole and split.
        let whole: Double
        let split: Double
        /// Of 32 steps after the first two (one each way), how many are split.
        let splits: Int
        var testDescription: String { name }
    }

    static let cases: [Case] = [
        .init(name: "splitting faster: split, but for the one in 16 that checks the other way", whole: 0.20, split: 0.17, splits: 30),
        .init(name: "splitting slower: whole, but for the one in 16 that checks splitting", whole: 0.45, split: 0.55, splits: 2),
    ]

    @Test("each way is tried first, then the faster is used and the slower checked every 16th step", arguments: cases)
    func choosesTheFaster(_ row: Case) {
        var policy = MicroBatchPolicy()
        #expect(policy.split(tokens: 8) == false, "unmeasured: whole first")
        policy.record(tokens: 8, split: false, seconds: row.whole)
        #expect(policy.split(tokens: 8) == true, "then split once")
        policy.record(tokens: 8, split: true, seconds: row.split)
        var splits = 0
        for _ in 0..<32 {
            let split = policy.split(tokens: 8)
            if split { splits += 1 }
            policy.record(tokens: 8, split: split, seconds: split ? row.split : row.whole)
        }
        #expect(splits == row.splits)
    }

    @Test("a change is noticed: when splitting turns slow, the checks move the policy back to whole steps")
    func adapts() {
        var policy = MicroBatchPolicy()
        policy.record(tokens: 8, split: false, seconds: 0.2)
        policy.record(tokens: 8, split: true, seconds: 0.1)
        var last = true
        for _ in 0..<200 {
            last = policy.split(tokens: 8)
            policy.record(tokens: 8, split: last, seconds: last ? 0.4 : 0.2)
        }
        #expect(policy.estimates[MicroBatchPolicy.bucket(tokens: 8)]!.split! > 0.2)
        #expect(last == false || policy.estimates[8]!.decisions % 16 == 0, "whole steps again, but for a check")
    }

    @Test("step sizes are kept apart: exact up to 64 tokens, powers of two beyond", arguments: [
        (1, 1), (8, 8), (64, 64), (65, 71), (128, 71), (129, 72), (512, 73),
    ])
    func buckets(tokens: Int, bucket: Int) {
        #expect(MicroBatchPolicy.bucket(tokens: tokens) == bucket)
    }

    @Test("the scheduler asks the policy under .measured and tells it each step's time; one sequence is never split")
    func schedulerMeasures() {
        var scheduler = Scheduler(limits: .init(maxRunning: 4, maxBatchTokens: 16, kvCacheBytes: 100, microBatching: .measured))
        for id in 1...2 { scheduler.add(SchedulerTests.entry(UInt64(id), prompt: 1, max: 40)) }
        var shapes: [Int] = []
        for _ in 0..<20 {
            let plan = scheduler.schedule()
            shapes.append(plan.microBatches.count)
            // Split steps take 0.1 s, whole ones 0.2 s.
            scheduler.record(plan, seconds: plan.microBatches.count == 2 ? 0.1 : 0.2)
            _ = scheduler.postprocess(plan, outcomes: plan.chunks.map { _ in .sampled(stop: false) })
        }
        #expect(shapes.prefix(2) == [1, 2], "each way once")
        #expect(shapes.dropFirst(2).filter { $0 == 2 }.count >= 16, "then mostly split: \(shapes)")
        var alone = Scheduler(limits: .init(maxRunning: 4, maxBatchTokens: 16, kvCacheBytes: 100, microBatching: .two))
        alone.add(SchedulerTests.entry(9, prompt: 5))
        #expect(alone.schedule().microBatches == [0..<1])
    }
}
