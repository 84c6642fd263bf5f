/// Which sequences run in the next step and what each feeds: pure policy over sequence counts,
/// with no model, no cache and no thread, so that its decisions are tested as tables.
///
/// Admission is first come, first served while there are running places and KV-cache bytes
/// (a sequence's cache is sized for its whole prompt and generation, so an admitted sequence never
/// runs out). A step takes one token of every decoding sequence first, then chunks of the prompts
/// being prefilled, in admission order, up to `maxBatchTokens`: decodes never wait behind a long
/// prompt, and a long prompt is spread over several steps.
struct Scheduler: Equatable {
    /// The bounds the scheduler keeps.
    struct Limits: Equatable {
        /// Sequences running at once.
        var maxRunning: Int
        /// Tokens in one step (decodes and prompt chunks together).
        var maxBatchTokens: Int
        /// KV-cache bytes the running sequences hold together.
        var kvCacheBytes: Int
        /// Whether steps are split into two micro-batches (the runner pipelines them against
        /// remote experts).
        var microBatching = MicroBatching.one
    }

    /// What the scheduler knows of one sequence.
    struct Entry: Equatable {
        let id: UInt64
        let promptLength: Int
        let maxTokens: Int
        /// KV-cache bytes it holds while running.
        let cacheBytes: Int
        /// Prompt tokens already in its cache.
        var prefilled = 0
        /// Tokens sampled so far.
        var generated = 0
        var done = false
        var failed = false

        init(id: UInt64, promptLength: Int, maxTokens: Int, cacheBytes: Int) {
            self.id = id
            self.promptLength = promptLength
            self.maxTokens = maxTokens
            self.cacheBytes = cacheBytes
        }

        /// Prompt done and a token sampled: it feeds its last token next.
        var isDecoding: Bool { generated > 0 }
    }

    /// One step's work.
    struct StepPlan: Equatable {
        /// One sequence's part of the step.
        struct Chunk: Equatable {
            let id: UInt64
            /// The prompt positions it feeds, or nil for a decode (its last sampled token).
            let prompt: Range<Int>?
            /// Whether the step samples a token for it: a decode, or a prompt's last chunk.
            let samples: Bool
        }

        var chunks: [Chunk] = []
        /// The micro-batches, as ranges of `chunks`: contiguous, in order, together all of them;
        /// each holds whole sequences.
        var microBatches: [Range<Int>] = []
        /// Prompt tokens in the step.
        var promptTokens: Int { chunks.reduce(0) { $0 + ($1.prompt?.count ?? 0) } }
        /// Tokens in the step.
        var tokens: Int { chunks.reduce(0) { $0 + ($1.prompt?.count ?? 1) } }
        var isEmpty: Bool { chunks.isEmpty }
    }

    /// How one chunk of a step came out.
    enum Outcome: Equatable {
        /// Ran; nothing sampled (a prompt chunk that is not the last).
        case ran
        /// Ran and sampled a token; `stop` when it was a stop or end-of-sequence token.
        case sampled(stop: Bool)
        /// Could not run, or its logits were unusable: the sequence ends failed.
        case failed
    }

    let limits: Limits
    /// Under `.measured`: which steps are split, from their measured times.
    private(set) var splitPolicy = MicroBatchPolicy()
    private(set) var waiting: [Entry] = []
    private(set) var running: [Entry] = []
    private(set) var cacheBytesInUse = 0

    init(limits: Limits) {
        precondition(limits.maxRunning >= 1 && limits.maxBatchTokens >= limits.maxRunning, "invalid scheduler limits")
        self.limits = limits
    }

    /// Sequences held, waiting and running.
    var count: Int { waiting.count + running.count }
    var isIdle: Bool { waiting.isEmpty && running.isEmpty }

    /// Queues a sequence behind those already waiting.
    mutating func add(_ entry: Entry) {
        precondition(entry.cacheBytes <= limits.kvCacheBytes, "sequence \(entry.id) can never fit the KV cache")
        waiting.append(entry)
    }

    /// Ends the sequences `ids`: waiting ones leave at once, running ones are marked done (not
    /// failed) and leave at the next `retire`. Returns the ids that were still live, in the order
    /// they are held, so the caller tells each one it was cancelled exactly once.
    mutating func cancel(_ ids: Set<UInt64>) -> [UInt64] {
        guard !ids.isEmpty else { return [] }
        var ended: [UInt64] = []
        waiting.removeAll { entry in
            guard ids.contains(entry.id) else { return false }
            ended.append(entry.id)
            return true
        }
        for index in running.indices where ids.contains(running[index].id) && !running[index].done {
            running[index].done = true
            ended.append(running[index].id)
        }
        return ended
    }

    /// Admits what fits, then plans the next step: every decoding sequence's next token, then
    /// prompt chunks while the token budget lasts.
    mutating func schedule() -> StepPlan {
        while running.count < limits.maxRunning, let next = waiting.first, cacheBytesInUse + next.cacheBytes <= limits.kvCacheBytes {
            waiting.removeFirst()
            running.append(next)
            cacheBytesInUse += next.cacheBytes
        }
        var plan = StepPlan()
        var budget = limits.maxBatchTokens
        for entry in running where !entry.done && entry.isDecoding && budget > 0 {
            plan.chunks.append(.init(id: entry.id, prompt: nil, samples: true))
            budget -= 1
        }
        for entry in running where !entry.done && !entry.isDecoding && budget > 0 {
            let chunk = min(budget, entry.promptLength - entry.prefilled)
            let end = entry.prefilled + chunk
            plan.chunks.append(.init(id: entry.id, prompt: entry.prefilled..<end, samples: end == entry.promptLength))
            budget -= chunk
        }
        plan.microBatches = Self.split(plan.chunks, into: splits(plan) ? 2 : 1)
        return plan
    }

    /// Whether `plan` runs as two micro-batches.
    private mutating func splits(_ plan: StepPlan) -> Bool {
        guard plan.chunks.count >= 2 else { return false }  // one sequence is never split
        switch limits.microBatching {
        case .one: return false
        case .two: return true
        case .measured: return splitPolicy.split(tokens: plan.tokens)
        }
    }

    /// How long `plan` took to run, for the `.measured` policy.
    mutating func record(_ plan: StepPlan, seconds: Double) {
        guard limits.microBatching == .measured, plan.chunks.count >= 2 else { return }
        splitPolicy.record(tokens: plan.tokens, split: plan.microBatches.count > 1, seconds: seconds)
    }

    /// `chunks` cut into at most `parts` contiguous runs whose token counts are as even as
    /// whole sequences allow (each cut where the tokens before it come closest to their share).
    static func split(_ chunks: [StepPlan.Chunk], into parts: Int) -> [Range<Int>] {
        guard !chunks.isEmpty else { return [] }
        let tokens = chunks.map { $0.prompt?.count ?? 1 }
        let total = tokens.reduce(0, +)
        var cuts: [Int] = [0]
        var before = 0, index = 0
        for part in 1..<max(1, min(parts, chunks.count)) {
            let share = total * part / parts
            // Advance while taking the next chunk brings the tokens before the cut closer to the share.
            while index < chunks.count - 1, abs(before + tokens[index] - share) <= abs(before - share) || index < cuts.last! + 1 {
                before += tokens[index]
                index += 1
            }
            if index > cuts.last!, index < chunks.count { cuts.append(index) }
        }
        cuts.append(chunks.count)
        return zip(cuts, cuts.dropFirst()).map { $0..<$1 }
    }

    /// Applies the outcomes of `plan`'s chunks (one each, in order). Returns the sequences that
    /// finished, with why.
    mutating func postprocess(_ plan: StepPlan, outcomes: [Outcome]) -> [(id: UInt64, reason: FinishReason)] {
        precondition(outcomes.count == plan.chunks.count, "one outcome per chunk")
        var finished: [(id: UInt64, reason: FinishReason)] = []
        // One lookup table per step, not a scan of the running sequences per chunk.
        let indices = Dictionary(uniqueKeysWithValues: running.indices.map { (running[$0].id, $0) })
        for (chunk, outcome) in zip(plan.chunks, outcomes) {
            guard let index = indices[chunk.id], !running[index].done else { continue }
            switch outcome {
            case .failed:
                running[index].done = true
                running[index].failed = true
                continue
            case .ran, .sampled:
                if let prompt = chunk.prompt { running[index].prefilled = prompt.upperBound }
            }
            guard case .sampled(let stop) = outcome else { continue }
            running[index].generated += 1
            if stop || running[index].generated == running[index].maxTokens {
                running[index].done = true
                finished.append((chunk.id, stop ? .stop : .length))
            }
        }
        return finished
    }

    /// Drops finished, failed and cancelled sequences and frees their cache. Returns the ids
    /// retired and how many of them failed.
    mutating func retire() -> (ids: [UInt64], failed: Int) {
        var ids: [UInt64] = [], failed = 0
        running.removeAll { entry in
            guard entry.done else { return false }
            cacheBytesInUse -= entry.cacheBytes
            if entry.failed { failed += 1 }
            ids.append(entry.id)
            return true
        }
        return (ids, failed)
    }

    /// Empties the scheduler (the engine stops): returns every sequence not yet done.
    mutating func abandonAll() -> [UInt64] {
        let live = waiting.map(\.id) + running.filter { !$0.done }.map(\.id)
        waiting.removeAll()
        running.removeAll()
        cacheBytesInUse = 0
        return live
    }
}

/// Whether the engine splits its steps into two micro-batches pipelined against the expert pods
/// (the ping-pong overlap of the worker's attention with the pods' experts).
public enum MicroBatching: String, Sendable, Equatable, CaseIterable {
    /// Every step is one batch.
    case one = "1"
    /// Every step of two sequences or more is split in two.
    case two = "2"
    /// Steps are split where splitting measured faster, per step size (`MicroBatchPolicy`).
    case measured = "auto"
}
