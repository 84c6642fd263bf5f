import AttentionWorker
import Foundation

/// Keeps `batch` sequences generating (a finished one is replaced at once) for `seconds`, calls
/// `kill` halfway, and counts tokens per time bucket.
enum FailureRun {

    struct Outcome {
        var before: Double
        var after: Double
        var loss: Double
        var failedRequests: Int
        var failovers: Int
        var series: [Double]
        var killAt: Double
        var bucket: Double
    }

    static func measure(_ engine: GenerationEngine, batch: Int, seconds: Double, promptTokens: Int, vocab: Int, kill: () -> Void) throws -> Outcome {
        let bucket = max(0.25, seconds / 30)
        let counter = TokenCounter(bucket: bucket, buckets: Int((seconds / bucket).rounded(.up)) + 1)
        let failedBefore = engine.stats.failedRequests, failoversBefore = engine.failovers
        let keeper = LoadKeeper(engine: engine, batch: batch, counter: counter,
                                prompts: DecodeRun.prompts(batch: 64, promptTokens: promptTokens, vocab: vocab, seed: 77))
        counter.start()
        for slot in 0..<batch { keeper.submit(slot: slot) }
        Thread.sleep(forTimeInterval: seconds / 2)
        let killedAt = counter.elapsed  // before the signal: what follows is the failure's cost
        kill()
        Thread.sleep(forTimeInterval: max(0, seconds - counter.elapsed))
        keeper.stopAndWait()
        // Both windows run from one step's end to another's, so neither is off by a partial step;
        // "after" starts at the last step that ended before the kill, so it holds the whole stall.
        // The first tenth of the run (ramp-up, prefills) is left out.
        let steps = counter.stepEnds()
        let beforeSteps = steps.filter { $0.time >= seconds / 10 && $0.time <= killedAt }
        let afterSteps = steps.filter { $0.time > (beforeSteps.last?.time ?? killedAt) }
        func rate(_ window: [(time: Double, tokens: Int)], from start: Double?) -> Double {
            guard let start, let end = window.last?.time, end > start else { return 0 }
            return Double(window.filter { $0.time > start }.map(\.tokens).reduce(0, +)) / (end - start)
        }
        let before = rate(beforeSteps, from: beforeSteps.first?.time)
        let after = rate(afterSteps, from: beforeSteps.last?.time)
        return Outcome(before: before, after: after, loss: before > 0 ? max(0, 1 - after / before) : 1,
                       failedRequests: max(counter.failures, engine.stats.failedRequests - failedBefore),
                       failovers: engine.failovers - failoversBefore, series: counter.rates(), killAt: killedAt, bucket: bucket)
    }
}

/// Keeps `batch` sequences in the engine: each slot submits a new sequence when its last ends.
final class LoadKeeper: @unchecked Sendable {
    let engine: GenerationEngine
    let batch: Int
    let counter: TokenCounter
    let prompts: [[Int]]
    private let stopped = ManagedFlag()
    private let lock = NSLock()
    private var submitted = 0

    init(engine: GenerationEngine, batch: Int, counter: TokenCounter, prompts: [[Int]]) {
        self.engine = engine
        self.batch = batch
        self.counter = counter
        self.prompts = prompts
    }

    private let outstanding = NSCondition()
    private var running = 0

    /// Stops resubmitting and waits (up to a minute) until the sequences still running ended, so
    /// that they do not load the machine for what is measured next.
    func stopAndWait() {
        _ = stopped.setOnce()
        outstanding.lock()
        let deadline = Date().addingTimeInterval(60)
        while running > 0, outstanding.wait(until: deadline) {}
        outstanding.unlock()
    }

    func submit(slot: Int) {
        guard !stopped.isSet else { return }
        lock.lock()
        let prompt = prompts[submitted % prompts.count]
        submitted += 1
        lock.unlock()
        outstanding.lock()
        running += 1
        outstanding.unlock()
        do {
            try engine.submit(GenerationRequest(prompt: prompt, maxTokens: 64, ignoreEOS: true)) { [self] event in
                switch event {
                case .token: counter.add(step: engine.stats.steps)
                case .finished, .failed:
                    if case .failed = event { counter.fail() }
                    ended()
                    submit(slot: slot)
                }
            }
        } catch {
            counter.fail()
            ended()
        }
    }

    private func ended() {
        outstanding.lock()
        running -= 1
        outstanding.broadcast()
        outstanding.unlock()
    }
}

/// Tokens per time bucket since `start`.
final class TokenCounter: @unchecked Sendable {
    private let lock = NSLock()
    private let bucket: Double
    private var counts: [Int]
    /// Per engine step: its tokens and when its last token came.
    private var steps: [Int: (tokens: Int, time: Double)] = [:]
    private var origin = 0.0
    private(set) var failures = 0

    init(bucket: Double, buckets: Int) {
        self.bucket = bucket
        counts = Array(repeating: 0, count: buckets)
    }

    func start() { origin = Timeline.now() }
    var elapsed: Double { Timeline.now() - origin }

    func add(step: Int) {
        let time = elapsed
        let index = Int(time / bucket)
        lock.lock()
        if index < counts.count { counts[index] += 1 }
        steps[step, default: (0, time)].tokens += 1
        steps[step]!.time = time
        lock.unlock()
    }

    func fail() {
        lock.lock()
        failures += 1
        lock.unlock()
    }

    /// Each engine step's end (its last token, seconds since `start()`) and tokens, in time order.
    func stepEnds() -> [(time: Double, tokens: Int)] {
        lock.lock()
        defer { lock.unlock() }
        return steps.values.map { (time: $0.time, tokens: $0.tokens) }.sorted { $0.time < $1.time }
    }

    /// Tokens/s per bucket.
    func rates() -> [Double] {
        lock.lock()
        defer { lock.unlock() }
        return counts.map { Double($0) / bucket }
    }
}

