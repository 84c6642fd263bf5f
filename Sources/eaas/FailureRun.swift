import AttentionWorker
import Foundation

/// Keeps `batch` sequences generating (a finished one is replaced at once) for `seconds`, calls
/// `kill` halfway, and counts tokens per time bucket.
///
/// The sequences are the same in every run: the k-th one submitted has prompt k (mod the prompt
/// set) and a length from k alone, spread over 32–96 tokens so that sequences end and start a few
/// at a time, as they do in real traffic. With one length for all (the first version of this
/// run), every sequence ended in the same step and the next step prefilled all of their
/// replacements with no decode beside it: a second or two at zero tokens whenever the first
/// generation ended, which lands after the kill and was read as a failover stall.
/// The first batch goes in with one submission, and replacements are submitted from the finish
/// event (on the engine thread, before its next step), so the steps, and with them every
/// sequence's tokens, do not depend on timing: a run with a failure can be compared token for
/// token with one without.
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
        /// The smallest bucket from the first decode token to the run's end, over the median bucket.
        var minBucketOverMedian: Double
        /// Tokens of every sequence that completed while the load was kept, by submission index.
        var completed: [Int: [Int]]
    }

    /// The length of the k-th sequence a run of `batch` slots submits. Replacements are spread
    /// evenly over 32–96 tokens. The first `batch` sequences are as long as what is left of a
    /// sequence found running at a random moment (the residual life of those lengths: its
    /// quantiles `64p` below the middle, `32 + 64(1 - √(2 - 2p))` above), so sequences end at the
    /// steady rate from the start, and the window before the kill holds as many prefills as the
    /// window after it.
    static func maxTokens(_ k: Int, batch: Int) -> Int {
        guard k < batch else { return 32 + (k * 37) % 65 }
        let p = (Double(k) + 0.5) / Double(batch)
        let length = p < 0.5 ? 64 * p : 32 + 64 * (1 - (2 - 2 * p).squareRoot())
        return max(1, Int(length.rounded()))
    }

    static func measure(_ engine: GenerationEngine, batch: Int, seconds: Double, promptTokens: Int, vocab: Int, kill: (() -> Void)?) throws -> Outcome {
        let bucket = max(0.25, seconds / 30)
        let counter = TokenCounter(bucket: bucket, buckets: Int((seconds / bucket).rounded(.up)) + 1)
        let failedBefore = engine.stats.failedRequests, failoversBefore = engine.failovers
        let keeper = LoadKeeper(engine: engine, batch: batch, counter: counter,
                                prompts: DecodeRun.prompts(batch: 64, promptTokens: promptTokens, vocab: vocab, seed: 77))
        counter.start()
        keeper.submitFirst()
        Thread.sleep(forTimeInterval: seconds / 2)
        let killedAt = counter.elapsed  // before the signal: what follows is the failure's cost
        kill?()
        Thread.sleep(forTimeInterval: max(0, seconds - counter.elapsed))
        let stoppedAt = counter.elapsed
        keeper.stopAndWait()
        // Both windows run from one step's end to another's, so neither is off by a partial step;
        // "after" starts at the last step that ended before the kill, so it holds the whole stall.
        // The first tenth of the run (ramp-up, prefills) is left out.
        let steps = counter.stepEnds()
        let beforeSteps = steps.filter { $0.time >= seconds / 10 && $0.time <= killedAt }
        let afterSteps = steps.filter { $0.time > (beforeSteps.last?.time ?? killedAt) && $0.time <= stoppedAt }
        func rate(_ window: [(time: Double, tokens: Int)], from start: Double?) -> Double {
            guard let start, let end = window.last?.time, end > start else { return 0 }
            return Double(window.filter { $0.time > start }.map(\.tokens).reduce(0, +)) / (end - start)
        }
        let before = rate(beforeSteps, from: beforeSteps.first?.time)
        let after = rate(afterSteps, from: beforeSteps.last?.time)
        let series = counter.rates()
        return Outcome(before: before, after: after, loss: before > 0 ? max(0, 1 - after / before) : 1,
                       failedRequests: max(counter.failures, engine.stats.failedRequests - failedBefore),
                       failovers: engine.failovers - failoversBefore, series: series, killAt: killedAt, bucket: bucket,
                       minBucketOverMedian: minBucketOverMedian(series, bucket: bucket, from: counter.firstDecodeAt ?? stoppedAt, to: stoppedAt),
                       completed: keeper.completed())
    }

    /// The smallest of the buckets lying wholly between `start` and `end`, over their median
    /// (0 when there are none, or the median is 0).
    static func minBucketOverMedian(_ series: [Double], bucket: Double, from start: Double, to end: Double) -> Double {
        let first = Int((start / bucket).rounded(.up)), last = Int((end / bucket).rounded(.down)) - 1
        guard first <= last, last < series.count else { return 0 }
        let whole = series[first...last].sorted()
        let median = whole[whole.count / 2]
        return median > 0 ? whole[0] / median : 0
    }

    /// The failure's cost: how much the rate after the kill fell against the rate before it,
    /// beyond the same fall in `reference`, the same sequences without a kill (0 at best).
    static func pairedLoss(_ run: Outcome, reference: Outcome) -> Double {
        guard run.before > 0, reference.before > 0, reference.after > 0 else { return 1 }
        return max(0, 1 - (run.after / run.before) / (reference.after / reference.before))
    }

    /// Whether every sequence both runs completed has the same tokens in each, and how many there were.
    static func compare(_ run: [Int: [Int]], with reference: [Int: [Int]]) -> (identical: Bool, compared: Int) {
        let common = Set(run.keys).intersection(reference.keys)
        return (!common.isEmpty && common.allSatisfy { run[$0] == reference[$0] }, common.count)
    }
}

/// Keeps `batch` sequences in the engine: each slot submits the next sequence when its last ends.
final class LoadKeeper: @unchecked Sendable {
    let engine: GenerationEngine
    let batch: Int
    let counter: TokenCounter
    let prompts: [[Int]]
    private let stopped = ManagedFlag()
    private let lock = NSLock()
    private var submitted = 0
    private var tokens: [Int: [Int]] = [:]
    private var finished: Set<Int> = []
    /// Per sequence, the engine step its last token came in.
    private var lastStep: [Int: Int] = [:]
    /// The engine's step count when resubmitting stopped: every step before it took the same
    /// sequences in any run; from it on, replacements may be missing.
    private var stopStep = Int.max

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
        let steps = engine.stats.steps
        lock.lock()
        stopStep = steps
        lock.unlock()
        outstanding.lock()
        let deadline = Date().addingTimeInterval(60)
        while running > 0, outstanding.wait(until: deadline) {}
        outstanding.unlock()
    }

    /// The tokens of every sequence that completed before resubmitting stopped, by submission
    /// index. Those that ran on are left out: the steps after the stop lack the replacements, and
    /// a token's bits depend on which sequences share its steps (an expert's group size picks
    /// its kernel), so they may differ from another run's without anything being wrong.
    func completed() -> [Int: [Int]] {
        lock.lock()
        defer { lock.unlock() }
        return tokens.filter { finished.contains($0.key) && lastStep[$0.key, default: .max] < stopStep }
    }

    private func next() -> (index: Int, request: GenerationRequest) {
        lock.lock()
        defer { lock.unlock() }
        let k = submitted
        submitted += 1
        return (k, GenerationRequest(prompt: prompts[k % prompts.count], maxTokens: FailureRun.maxTokens(k, batch: batch), ignoreEOS: true))
    }

    /// The first `batch` sequences, in one submission: the first step takes all of them.
    func submitFirst() {
        let first = (0..<batch).map { _ in next() }
        outstanding.lock()
        running += batch
        outstanding.unlock()
        do {
            _ = try engine.submit(first.map(\.request)) { [self] index, event in handle(event, of: first[index].index) }
        } catch {
            for _ in first {
                counter.fail()
                ended()
            }
        }
    }

    private func submit() {
        guard !stopped.isSet else { return }
        let (k, request) = next()
        outstanding.lock()
        running += 1
        outstanding.unlock()
        do {
            try engine.submit(request) { [self] event in handle(event, of: k) }
        } catch {
            counter.fail()
            ended()
        }
    }

    private func handle(_ event: GenerationEvent, of k: Int) {
        switch event {
        case .token(let token):
            lock.lock()
            tokens[k, default: []].append(token)
            lastStep[k] = engine.stats.steps
            let decoded = tokens[k]!.count > 1
            lock.unlock()
            counter.add(step: engine.stats.steps, decode: decoded)
        case .finished, .failed:
            if case .failed = event { counter.fail() } else {
                lock.lock()
                finished.insert(k)
                lock.unlock()
            }
            ended()
            submit()
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
    /// When the first token of a sequence's decode (its second token) came.
    private var firstDecode: Double?
    var firstDecodeAt: Double? {
        lock.lock()
        defer { lock.unlock() }
        return firstDecode
    }

    init(bucket: Double, buckets: Int) {
        self.bucket = bucket
        counts = Array(repeating: 0, count: buckets)
    }

    func start() { origin = Timeline.now() }
    var elapsed: Double { Timeline.now() - origin }

    func add(step: Int, decode: Bool) {
        let time = elapsed
        let index = Int(time / bucket)
        lock.lock()
        if decode, firstDecode == nil { firstDecode = time }
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

