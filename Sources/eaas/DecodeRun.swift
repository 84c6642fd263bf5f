import AttentionWorker
import Foundation

/// One batch of sequences decoding together; tokens/s over the decode steps (first token of the
/// batch's last sequence to the end).
enum DecodeRun {
    static func prompts(batch: Int, promptTokens: Int, vocab: Int, seed: UInt64) -> [[Int]] {
        var state = seed &* 0x9E37_79B9_7F4A_7C15 | 1
        return (0..<batch).map { _ in
            (0..<promptTokens).map { _ in
                state = state &* 6_364_136_223_846_793_005 &+ 1_442_695_040_888_963_407
                return Int((state >> 33) % UInt64(vocab - 3)) + 3
            }
        }
    }

    static func measure(_ engine: GenerationEngine, batch: Int, promptTokens: Int, decodeTokens: Int, vocab: Int, seed: UInt64) throws -> Double {
        try measureWindow(engine, batch: batch, promptTokens: promptTokens, decodeTokens: decodeTokens, vocab: vocab, seed: seed).rate
    }

    /// The decode window of one run: its tokens/s, its length, and where its MoE layers' time went.
    struct Window {
        var rate: Double
        var seconds: Double
        var steps: Int
        var phases: MoEPhaseTimes
        /// The change of `probe` (a pod's busy seconds, say) over the window's steps but its first,
        /// whose work is already done when the window's first token comes; nil without a probe.
        var probed: Double?
        var probedSteps: Int { max(0, steps - 1) }
    }

    /// `measure`, with the MoE phase times of exactly the steps the rate counts.
    static func measureWindow(_ engine: GenerationEngine, batch: Int, promptTokens: Int, decodeTokens: Int, vocab: Int, seed: UInt64,
                              probe: (@Sendable () -> Double)? = nil) throws -> Window {
        let timeline = Timeline(sequences: batch)
        // Taken at the first token of the window's first step: its stats then hold every step before.
        let atStart = Locked<GenerationEngine.Statistics?>(nil)
        let probedAtStart = Locked<Double?>(nil)
        // The probe (an HTTP GET, say) is read off the engine thread, so that its latency never
        // lengthens the window it measures.
        let probing = DispatchGroup()
        timeline.onDecodeStart = {
            atStart.set(engine.stats)
            guard let probe else { return }
            probing.enter()
            DispatchQueue.global().async {
                probedAtStart.set(probe())
                probing.leave()
            }
        }
        for (index, prompt) in prompts(batch: batch, promptTokens: promptTokens, vocab: vocab, seed: seed).enumerated() {
            try engine.submit(GenerationRequest(prompt: prompt, maxTokens: decodeTokens + 1, ignoreEOS: true)) { event in
                // Events come from inside the engine's step, before it counts that step: every token
                // of one step carries the same number.
                timeline.record(event, sequence: index, step: engine.stats.steps)
            }
        }
        let (rate, seconds) = try timeline.decodeWindow()
        let end = engine.stats
        let start = atStart.get() ?? end
        probing.wait()
        let probed = probedAtStart.get().flatMap { first in probe.map { $0() - first } }
        return Window(rate: rate, seconds: seconds, steps: end.steps - start.steps, phases: end.moePhases - start.moePhases, probed: probed)
    }
}

/// A value behind a lock, for a closure on another thread to fill.
final class Locked<Value>: @unchecked Sendable {
    private let lock = NSLock()
    private var value: Value
    init(_ value: Value) { self.value = value }
    func set(_ new: Value) { lock.lock(); value = new; lock.unlock() }
    func get() -> Value { lock.lock(); defer { lock.unlock() }; return value }
}

/// Token events of a batch, tagged with the engine step that produced them.
final class Timeline: @unchecked Sendable {
    private let condition = NSCondition()
    private var firstStep: [Int?]
    /// When each sequence's first token came.
    private var firstTime: [Double?]
    private var done: [Bool]
    private var failure: String?
    /// Per step: tokens and when its last token came.
    private var steps: [Int: (tokens: Int, time: Double)] = [:]
    /// Called (on the engine thread) at the first token of the first step after every sequence
    /// has its first token: where the decode window starts.
    var onDecodeStart: (@Sendable () -> Void)?
    private var decodeStarted = false

    init(sequences: Int) {
        firstStep = Array(repeating: nil, count: sequences)
        firstTime = Array(repeating: nil, count: sequences)
        done = Array(repeating: false, count: sequences)
    }

    static func now() -> Double { Double(DispatchTime.now().uptimeNanoseconds) / 1e9 }

    func record(_ event: GenerationEvent, sequence: Int, step: Int) {
        let time = Self.now()
        condition.lock()
        defer { condition.unlock() }
        switch event {
        case .token:
            if firstStep[sequence] == nil { (firstStep[sequence], firstTime[sequence]) = (step, time) }
            if !decodeStarted, firstStep.allSatisfy({ $0 != nil }), step > firstStep.compactMap({ $0 }).max()! {
                decodeStarted = true
                onDecodeStart?()
            }
            steps[step, default: (0, time)].tokens += 1
            steps[step]!.time = time
        case .finished: done[sequence] = true
        case .failed(let reason): done[sequence] = true; failure = reason.description
        }
        condition.broadcast()
    }

    /// Waits for every sequence, then: tokens of the steps after the one in which the last
    /// sequence got its first token, over the time from that step to the last (decode only:
    /// prefills and staggered starts are left out).
    func decodeRate() throws -> Double { try decodeWindow().rate }

    /// `decodeRate`, and the seconds its window lasted.
    func decodeWindow() throws -> (rate: Double, seconds: Double) {
        condition.lock()
        defer { condition.unlock() }
        try waitForAll()
        guard let start = firstStep.compactMap({ $0 }).max(), let startTime = steps[start]?.time,
              let end = steps.keys.max(), end > start, let endTime = steps[end]?.time else { return (0, 0) }
        let tokens = steps.filter { $0.key > start }.map(\.value.tokens).reduce(0, +)
        let seconds = max(endTime - startTime, 1e-9)
        return (Double(tokens) / seconds, seconds)
    }

    /// Waits for every sequence; when the last of them got its first token.
    func lastFirstTokenTime() throws -> Double {
        condition.lock()
        defer { condition.unlock() }
        try waitForAll()
        guard let last = firstTime.compactMap({ $0 }).max(), firstTime.allSatisfy({ $0 != nil }) else {
            throw CommandFailure("generation ended without a first token for every sequence")
        }
        return last
    }

    /// With the lock held: until every sequence ended; a failure of any is the run's.
    private func waitForAll() throws {
        while !done.allSatisfy({ $0 }) { condition.wait() }
        if let failure { throw CommandFailure("generation failed: \(failure)") }
    }
}
