import AttentionWorker
import Foundation

/// Prefill of one batch of long prompts, for `eaas bench e2e`: the batch's prompts are submitted
/// together, each asking for one token, and timed from the submission to the last sequence's
/// first token (vLLM's side times `generate(max_tokens=1)` on the same prompts the same way).
enum PrefillRun {
    struct Outcome {
        /// Prompt tokens of the batch over the time to its last first token.
        var tokensPerSecond: Double
        /// Submission to the last sequence's first token (for batch 1, the time to first token).
        var seconds: Double
    }

    static func measure(_ engine: GenerationEngine, batch: Int, promptTokens: Int, vocab: Int, seed: UInt64) throws -> Outcome {
        let prompts = DecodeRun.prompts(batch: batch, promptTokens: promptTokens, vocab: vocab, seed: seed)
        let waiter = FirstTokens(count: batch)
        let start = Timeline.now()
        for (index, prompt) in prompts.enumerated() {
            try engine.submit(GenerationRequest(prompt: prompt, maxTokens: 1, ignoreEOS: true)) { event in
                waiter.record(event, sequence: index)
            }
        }
        let last = try waiter.wait()
        let seconds = max(last - start, 1e-9)
        return Outcome(tokensPerSecond: Double(batch * promptTokens) / seconds, seconds: seconds)
    }

    /// When each sequence's first token came; a failure of any is the run's.
    final class FirstTokens: @unchecked Sendable {
        private let condition = NSCondition()
        private var times: [Double?]
        private var ended: [Bool]
        private var failure: String?

        init(count: Int) {
            times = Array(repeating: nil, count: count)
            ended = Array(repeating: false, count: count)
        }

        func record(_ event: GenerationEvent, sequence: Int) {
            let time = Timeline.now()
            condition.lock()
            defer { condition.unlock() }
            switch event {
            case .token: if times[sequence] == nil { times[sequence] = time }
            case .finished: ended[sequence] = true
            case .failed(let reason): ended[sequence] = true; failure = reason.description
            }
            condition.broadcast()
        }

        /// Waits until every sequence ended; the time of the last first token.
        func wait() throws -> Double {
            condition.lock()
            defer { condition.unlock() }
            while !ended.allSatisfy({ $0 }) { condition.wait() }
            if let failure { throw CommandFailure("prefill failed: \(failure)") }
            guard let last = times.compactMap({ $0 }).max(), times.allSatisfy({ $0 != nil }) else {
                throw CommandFailure("prefill ended without a first token for every sequence")
            }
            return last
        }
    }
}
