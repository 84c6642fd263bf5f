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
        let timeline = Timeline(sequences: batch)
        let start = Timeline.now()
        for (index, prompt) in prompts.enumerated() {
            try engine.submit(GenerationRequest(prompt: prompt, maxTokens: 1, ignoreEOS: true)) { event in
                timeline.record(event, sequence: index, step: engine.stats.steps)
            }
        }
        let seconds = max(try timeline.lastFirstTokenTime() - start, 1e-9)
        return Outcome(tokensPerSecond: Double(batch * promptTokens) / seconds, seconds: seconds)
    }
}
