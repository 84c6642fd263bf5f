import MoE
import Transport

/// Runs one step's plan through the model: builds each micro-batch's batch from its sequences'
/// tokens and caches, runs the decoder, samples, and says how each chunk came out. Policy stays
/// in the `Scheduler`; threads, submission and cancellation in the `GenerationEngine`.
struct StepRunner {
    let model: DecoderModel
    private let config: ModelConfig
    private let endOfSequence: Set<Int>

    init(model: DecoderModel) {
        self.model = model
        config = model.config
        endOfSequence = Set(model.config.eosTokenIDs)
    }

    /// Runs `chunks` through the model as one batch (pipelined as `microBatches`, ranges of
    /// `chunks`, when there are several) and hands each sampled sequence its token (and a failed
    /// one its failure); returns one outcome per chunk.
    ///
    /// A step a pod refused for its values (one sequence's hidden states overflow the experts,
    /// say) is run again one sequence at a time, so that only the sequence at fault fails: a
    /// failed step leaves every cache as it was (lengths grow only once a step is done), so the
    /// retry recomputes the same positions. Other failures (no replica in time) fail the step's
    /// sequences at once, since running them apart would meet the same cause.
    func run(_ chunks: [(chunk: Scheduler.StepPlan.Chunk, sequence: GenerationSequence)], microBatches: [Range<Int>]) -> [Scheduler.Outcome] {
        var batches: [StepBatch] = [], sampledRows: [[Int]] = []
        for range in microBatches {
            var batch = StepBatch(), rows: [Int] = []
            for (chunk, sequence) in chunks[range] {
                let cache = sequence.cache(model)
                if let prompt = chunk.prompt {
                    batch.append(cache, tokens: sequence.request.prompt[prompt].lazy.map { Int32($0) })
                } else {
                    batch.append(cache, tokens: [Int32(sequence.generated.last!)])
                }
                if chunk.samples { rows.append(batch.count - 1) }
            }
            batches.append(batch)
            sampledRows.append(rows)
        }
        let logits: [Float]
        do {
            logits = try model.forward(microBatches: batches, logitRows: sampledRows)
        } catch {
            let failure = SequenceFailure.step(error)
            if case .stepFailed(_, retryable: false) = failure, error is Dispatcher.StepError, chunks.count > 1 {
                return chunks.flatMap { run([$0], microBatches: [0..<1]) }
            }
            // The step's sequences cannot continue.
            for (_, sequence) in chunks { sequence.events(.failed(failure)) }
            return Array(repeating: .failed, count: chunks.count)
        }
        let vocab = config.vocabSize
        var sampled = 0
        return logits.withUnsafeBufferPointer { all in
            chunks.map { chunk, sequence in
                guard chunk.samples else { return .ran }
                defer { sampled += 1 }
                guard let token = sequence.sampler.next(UnsafeBufferPointer(rebasing: all[(sampled * vocab)..<((sampled + 1) * vocab)])) else {
                    sequence.events(.failed(.nonFiniteLogits))
                    return .failed
                }
                sequence.generated.append(token)
                sequence.events(.token(token))
                return .sampled(stop: sequence.request.stopTokenIDs.contains(token) || (!sequence.request.ignoreEOS && endOfSequence.contains(token)))
            }
        }
    }
}

/// One sequence in the engine: its request, where its events go, its sampler, the tokens it has
/// generated and its KV cache (allocated at its first step).
final class GenerationSequence {
    let id: UInt64
    let request: GenerationRequest
    let events: @Sendable (GenerationEvent) -> Void
    var sampler: Sampler
    var generated: [Int] = []
    var kvCache: KVCache?

    init(id: UInt64, request: GenerationRequest, events: @escaping @Sendable (GenerationEvent) -> Void) {
        self.id = id
        self.request = request
        self.events = events
        sampler = Sampler(request.sampling)
    }

    /// The cache, allocated at the first step the sequence takes part in.
    func cache(_ model: DecoderModel) -> KVCache {
        if let kvCache { return kvCache }
        let cache = model.makeCache(capacity: request.prompt.count + request.maxTokens)
        kvCache = cache
        return cache
    }
}
