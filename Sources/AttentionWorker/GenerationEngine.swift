import Foundation
import MoE
import Transport

/// Continuous batching over one decoder: each step gathers one token of every decoding sequence
/// and chunks of the prompts being prefilled (up to `maxBatchTokens`), runs them through the model
/// as one batch, so that every MoE layer sends one batch of tokens to the experts, and samples the
/// sequences whose prompt is done. Sequences join and leave between steps.
///
/// Requests beyond `maxRunning` wait in a queue of at most `maxWaiting`; past that, `submit`
/// refuses with `SubmitError.overloaded` (HTTP 429), so nothing is dropped silently.
///
/// The model, its KV caches and (remote) its dispatcher are used by one thread only: the engine
/// thread (`start`) or the caller of `generate`.
public final class GenerationEngine: @unchecked Sendable {
    /// Limits of the scheduler, with defaults for a CPU worker.
    public struct Configuration: Sendable {
        /// Sequences generating at once.
        public var maxRunning = 64
        /// Tokens in one step (decodes first, then prompt chunks); at least `maxRunning`.
        public var maxBatchTokens = 512
        /// Requests that may wait beyond the free running places before new ones get 429.
        public var maxWaiting = 1024
        /// Longest prompt + generation; nil: the model's `max_position_embeddings`.
        public var maxContext: Int?
        /// Bytes of KV cache (f32) all running sequences may hold together.
        public var kvCacheBytes = 4 << 30

        public init() {}

        public var problem: String? {
            if maxRunning < 1 { return "max running sequences must be at least 1" }
            if maxBatchTokens < maxRunning { return "max batch tokens (\(maxBatchTokens)) must be at least max running sequences (\(maxRunning))" }
            if maxWaiting < 0 { return "max waiting requests must be at least 0" }
            if let maxContext, maxContext < 2 { return "max context must be at least 2" }
            return nil
        }
    }

    /// Running totals, for benchmarks and logs.
    public struct Statistics: Sendable, Equatable {
        public var steps = 0
        public var promptTokens = 0
        public var generatedTokens = 0
        public var failedRequests = 0
        /// Expert servers marked down by the dispatcher (remote experts).
        public var failovers = 0
        /// Steps that only decoded (no prompt tokens), and the distinct routed experts their
        /// layers ran, summed: the expert weight a decode step reads.
        public var decodeSteps = 0
        public var decodeExpertsTouched = 0
        /// Where the MoE layers' time went.
        public var moePhases = MoEPhaseTimes()
    }

    /// Lets a submitter stop its sequence (a client that went away).
    public struct Handle: Sendable {
        let id: UInt64
        weak var engine: GenerationEngine?
        public func cancel() { engine?.cancel(id) }
    }

    public let config: ModelConfig
    public let configuration: Configuration
    /// The model's name as clients see it (the checkpoint directory's last component).
    public let modelName: String
    private let model: DecoderModel
    private let maxContext: Int
    private let endOfSequence: Set<Int>

    private let condition = NSCondition()
    private var waiting: [Sequence] = []
    private var cancelled: Set<UInt64> = []
    private var nextID: UInt64 = 0
    private var accepting = true
    private var stopNow = false
    private var statistics = Statistics()
    private var thread: Thread?
    private var finished = false
    /// Sequences admitted and not yet retired (read by submitters, under the lock).
    private var runningCount = 0
    /// Engine-thread state.
    private var running: [Sequence] = []
    private var cacheBytesInUse = 0

    /// Loads the model in `directory`, its routed experts local or behind `dispatcher`.
    public convenience init(modelDirectory directory: String, experts: ExpertSource, configuration: Configuration = Configuration()) throws {
        if let problem = configuration.problem { throw SubmitError.invalid(problem, param: nil) }
        let weights = try DecoderWeights(directory: directory, localExperts: experts.isLocal)
        let placement: RoutedExpertPlacement
        switch experts {
        case .local: placement = RoutedExpertPlacement()
        case let .remote(membership, dispatcher, wireDType):
            // Only experts of this very checkpoint are ever combined into this model.
            var dispatcher = dispatcher
            if dispatcher.modelDigest == nil { dispatcher.modelDigest = try ModelDigest.compute(directory: directory).bytes }
            placement = RoutedExpertPlacement(dispatcher: Dispatcher(membership: membership, configuration: dispatcher), wireDType: wireDType)
        }
        self.init(model: DecoderModel(weights: weights, placement: placement), configuration: configuration,
                  name: URL(fileURLWithPath: directory).standardizedFileURL.lastPathComponent)
    }

    init(model: DecoderModel, configuration: Configuration, name: String) {
        self.model = model
        self.config = model.config
        self.configuration = configuration
        modelName = name
        maxContext = min(configuration.maxContext ?? model.config.maxPositions, model.config.maxPositions)
        endOfSequence = Set(model.config.eosTokenIDs)
    }

    /// Where routed experts run.
    public var expertMode: ExpertMode { model.placement.mode }

    /// Totals so far.
    public var stats: Statistics {
        condition.lock()
        defer { condition.unlock() }
        return statistics
    }

    /// Whether new requests are taken (false once shutdown began).
    public var isAccepting: Bool {
        condition.lock()
        defer { condition.unlock() }
        return accepting
    }

    /// Data-plane failovers so far (remote experts).
    public var failovers: Int { stats.failovers }

    // MARK: Submitting

    /// Queues `request`; `events` receives its tokens and its end, on the engine thread.
    @discardableResult
    public func submit(_ request: GenerationRequest, events: @escaping @Sendable (GenerationEvent) -> Void) throws(SubmitError) -> Handle {
        try submit(request, queueLimit: true, events: events)
    }

    private func submit(_ request: GenerationRequest, queueLimit: Bool, events: @escaping @Sendable (GenerationEvent) -> Void) throws(SubmitError) -> Handle {
        try validate(request)
        condition.lock()
        defer { condition.unlock() }
        guard accepting else { throw .stopping }
        // Free running places first, then up to `maxWaiting` more.
        guard !queueLimit || runningCount + waiting.count < capacity else {
            throw .overloaded(waiting: waiting.count)
        }
        nextID += 1
        waiting.append(Sequence(id: nextID, request: request, events: events))
        condition.signal()
        return Handle(id: nextID, engine: self)
    }

    /// Queues all of `requests` or none: each is checked first, and they go in under one lock, so
    /// that the next step sees all of them (a request with several prompts is never half
    /// admitted, and a benchmark's batch starts together). `events` receives each request's
    /// events with its index, on the engine thread.
    @discardableResult
    public func submit(_ requests: [GenerationRequest], events: @escaping @Sendable (Int, GenerationEvent) -> Void) throws(SubmitError) -> [Handle] {
        for request in requests { try validate(request) }
        condition.lock()
        defer { condition.unlock() }
        guard accepting else { throw .stopping }
        guard runningCount + waiting.count + requests.count <= capacity else {
            throw .overloaded(waiting: waiting.count)
        }
        var handles: [Handle] = []
        for (index, request) in requests.enumerated() {
            nextID += 1
            waiting.append(Sequence(id: nextID, request: request, events: { events(index, $0) }))
            handles.append(Handle(id: nextID, engine: self))
        }
        condition.signal()
        return handles
    }

    /// The most sequences the engine holds at once, running and waiting: a request with more
    /// prompts can never be taken whole.
    public var capacity: Int { configuration.maxRunning + configuration.maxWaiting }

    /// `submit` as an async stream; ending the stream's iteration (or `handle.cancel()`) cancels
    /// the sequence.
    public func stream(_ request: GenerationRequest) throws(SubmitError) -> (events: AsyncStream<GenerationEvent>, handle: Handle) {
        let (stream, continuation) = AsyncStream<GenerationEvent>.makeStream()
        let handle = try submit(request) { event in
            continuation.yield(event)
            switch event {
            case .token: break
            case .finished, .failed: continuation.finish()
            }
        }
        continuation.onTermination = { reason in
            if case .cancelled = reason { handle.cancel() }
        }
        return (stream, handle)
    }

    private func validate(_ request: GenerationRequest) throws(SubmitError) {
        guard !request.prompt.isEmpty else { throw .invalid("prompt must hold at least one token id", param: "prompt") }
        if let bad = request.prompt.first(where: { $0 < 0 || $0 >= config.vocabSize }) {
            throw .invalid("prompt token id \(bad) is outside the vocabulary (0..<\(config.vocabSize))", param: "prompt")
        }
        guard request.maxTokens >= 1 else { throw .invalid("max_tokens must be at least 1 (got \(request.maxTokens))", param: "max_tokens") }
        guard request.prompt.count < maxContext else {
            throw .invalid("the prompt (\(request.prompt.count) tokens) leaves no room to generate in the context of \(maxContext) tokens", param: "prompt")
        }
        guard request.maxTokens <= maxContext - request.prompt.count else {
            throw .invalid("prompt (\(request.prompt.count) tokens) + max_tokens (\(request.maxTokens)) exceeds the context of \(maxContext) tokens", param: "max_tokens")
        }
        if let problem = request.sampling.problem { throw .invalid(problem, param: problem.split(separator: " ").first.map(String.init)) }
        guard cacheBytes(request) <= configuration.kvCacheBytes else {
            throw .invalid("the request needs \(cacheBytes(request)) bytes of KV cache, more than the worker's \(configuration.kvCacheBytes)", param: "max_tokens")
        }
    }

    private func cacheBytes(_ request: GenerationRequest) -> Int {
        KVCache.byteCount(layers: config.layerCount, capacity: request.prompt.count + request.maxTokens,
                          keyWidth: model.cacheWidths.key, valueWidth: model.cacheWidths.value)
    }

    private func cancel(_ id: UInt64) {
        condition.lock()
        cancelled.insert(id)
        condition.signal()
        condition.unlock()
    }

    // MARK: Running

    /// Starts the engine thread.
    public func start() {
        condition.lock()
        defer { condition.unlock() }
        precondition(thread == nil, "engine already started")
        let thread = Thread { [self] in
            runLoop()
        }
        thread.name = "eaas-engine"
        thread.stackSize = 8 << 20
        self.thread = thread
        thread.start()
    }

    /// Stops taking requests; with `drain`, finishes every accepted one first, else fails them.
    /// Returns once the engine thread has ended.
    public func shutdown(drain: Bool) {
        condition.lock()
        accepting = false
        if !drain { stopNow = true }
        condition.broadcast()
        let started = thread != nil
        while started && !finished { condition.wait() }
        condition.unlock()
        model.placement.close()
    }

    private func runLoop() {
        while true {
            condition.lock()
            while waiting.isEmpty && running.isEmpty && cancelled.isEmpty && accepting && !stopNow { condition.wait() }
            let idleAndClosed = !accepting && waiting.isEmpty && running.isEmpty
            if stopNow || idleAndClosed {
                let abandoned = waiting
                waiting.removeAll()
                condition.unlock()
                for sequence in abandoned + running where !sequence.done { sequence.events(.failed(.shuttingDown)) }
                running.removeAll()
                condition.lock()
                runningCount = 0
                finished = true
                condition.broadcast()
                condition.unlock()
                return
            }
            condition.unlock()
            step()
        }
    }

    /// Runs `requests` to completion on the calling thread (the engine must not be started).
    /// Throws the first failure.
    public func generate(_ requests: [GenerationRequest]) throws -> [GenerationResult] {
        precondition(thread == nil, "generate runs the engine on the calling thread; this one was started")
        let results = ResultBox(count: requests.count)
        for (index, request) in requests.enumerated() {
            // All of them are the caller's own work: they queue without the waiting limit.
            _ = try submit(request, queueLimit: false) { event in results.record(event, at: index, promptTokens: request.prompt.count) }
        }
        while true {
            condition.lock()
            let idle = waiting.isEmpty && running.isEmpty
            condition.unlock()
            if idle { break }
            step()
        }
        return try results.finished()
    }

    // MARK: One step

    /// Admits waiting sequences, builds one batch, runs it, samples, retires finished sequences.
    func step() {
        condition.lock()
        let gone = cancelled
        cancelled.removeAll()
        var dropped: [Sequence] = []
        waiting.removeAll { sequence in
            guard gone.contains(sequence.id) else { return false }
            dropped.append(sequence)
            return true
        }
        while running.count < configuration.maxRunning, let next = waiting.first,
              cacheBytesInUse + cacheBytes(next.request) <= configuration.kvCacheBytes {
            waiting.removeFirst()
            running.append(next)
            runningCount += 1
            cacheBytesInUse += cacheBytes(next.request)
        }
        condition.unlock()
        for sequence in running where gone.contains(sequence.id) && !sequence.done {
            sequence.done = true
            dropped.append(sequence)
        }
        // Every sequence ends with one event, a cancelled one too.
        for sequence in dropped { sequence.events(.failed(.cancelled)) }
        retire()

        var batch = StepBatch()
        var sampled: [(sequence: Sequence, row: Int)] = []
        var budget = configuration.maxBatchTokens
        for sequence in running where sequence.isDecoding && budget > 0 {
            let cache = sequence.cache(model)
            batch.append(cache, tokens: [Int32(sequence.generated.last!)])
            sampled.append((sequence, batch.count - 1))
            budget -= 1
        }
        var promptTokens = 0
        for sequence in running where !sequence.isDecoding && budget > 0 {
            let cache = sequence.cache(model)
            let chunk = min(budget, sequence.request.prompt.count - cache.length)
            batch.append(cache, tokens: sequence.request.prompt[cache.length..<(cache.length + chunk)].lazy.map { Int32($0) })
            budget -= chunk
            promptTokens += chunk
            if cache.length + chunk == sequence.request.prompt.count { sampled.append((sequence, batch.count - 1)) }
        }
        guard batch.count > 0 else { return }
        let touchedBefore = model.placement.expertsTouched
        let generated = run(batch, sampled: sampled)
        let touched = model.placement.expertsTouched - touchedBefore
        condition.lock()
        if promptTokens == 0 {
            statistics.decodeSteps += 1
            statistics.decodeExpertsTouched += touched
        }
        statistics.steps += 1
        statistics.promptTokens += promptTokens
        statistics.generatedTokens += generated
        statistics.failovers = model.placement.failovers
        statistics.moePhases = model.placement.phases
        condition.unlock()
        retire()
    }

    /// Runs one step's batch and hands each sampled sequence its token; returns how many tokens
    /// were generated.
    ///
    /// A step a pod refused for its values (one sequence's hidden states overflow the experts,
    /// say) is run again one sequence at a time, so that only the sequence at fault fails: a
    /// failed step leaves every cache as it was (lengths grow only once a step is done), so the
    /// retry recomputes the same positions. Other failures (no replica in time) fail the step's
    /// sequences at once, since running them apart would meet the same cause.
    private func run(_ batch: StepBatch, sampled: [(sequence: Sequence, row: Int)]) -> Int {
        let logits: [Float]
        do {
            logits = try model.forward(batch, logitRows: sampled.map(\.row))
        } catch {
            let failure = SequenceFailure.step(error)
            if case .stepFailed(_, retryable: false) = failure, error is Dispatcher.StepError, batch.segments.count > 1 {
                return batch.segments.reduce(0) { total, segment in
                    var alone = StepBatch()
                    alone.append(segment.cache, tokens: batch.tokens[segment.firstRow..<(segment.firstRow + segment.count)])
                    let rows = sampled.filter { $0.sequence.kvCache === segment.cache }.map { (sequence: $0.sequence, row: alone.count - 1) }
                    return total + run(alone, sampled: rows)
                }
            }
            // The step's sequences cannot continue.
            for segment in batch.segments {
                if let sequence = running.first(where: { $0.kvCache === segment.cache }) {
                    sequence.events(.failed(failure))
                    sequence.done = true
                    sequence.failed = true
                }
            }
            return 0
        }
        let vocab = config.vocabSize
        var generated = 0
        logits.withUnsafeBufferPointer { all in
            for (index, entry) in sampled.enumerated() {
                let sequence = entry.sequence
                guard let token = sequence.sampler.next(UnsafeBufferPointer(rebasing: all[(index * vocab)..<((index + 1) * vocab)])) else {
                    sequence.events(.failed(.nonFiniteLogits))
                    sequence.done = true
                    sequence.failed = true
                    continue
                }
                sequence.generated.append(token)
                generated += 1
                sequence.events(.token(token))
                let stop = sequence.request.stopTokenIDs.contains(token) || (!sequence.request.ignoreEOS && endOfSequence.contains(token))
                if stop || sequence.generated.count == sequence.request.maxTokens {
                    sequence.events(.finished(stop ? .stop : .length, promptTokens: sequence.request.prompt.count,
                                              completionTokens: sequence.generated.count))
                    sequence.done = true
                }
            }
        }
        return generated
    }

    /// Drops finished, failed and cancelled sequences and gives back their cache.
    private func retire() {
        var failed = 0, retired = 0
        running.removeAll { sequence in
            guard sequence.done else { return false }
            cacheBytesInUse -= cacheBytes(sequence.request)
            if sequence.failed { failed += 1 }
            retired += 1
            return true
        }
        guard retired > 0 else { return }
        condition.lock()
        statistics.failedRequests += failed
        runningCount -= retired
        condition.unlock()
    }
}

/// Where an engine's routed experts run.
public enum ExpertSource: Sendable {
    /// In the worker's process (monolithic).
    case local
    /// On expert pods found through `membership`, hidden states sent as `wireDType`.
    case remote(membership: MembershipSource, dispatcher: Dispatcher.Configuration, wireDType: WireDType)

    var isLocal: Bool { if case .local = self { true } else { false } }
}

/// One sequence in the engine.
private final class Sequence {
    let id: UInt64
    let request: GenerationRequest
    let events: @Sendable (GenerationEvent) -> Void
    var sampler: Sampler
    var generated: [Int] = []
    var kvCache: KVCache?
    var done = false
    var failed = false

    init(id: UInt64, request: GenerationRequest, events: @escaping @Sendable (GenerationEvent) -> Void) {
        self.id = id
        self.request = request
        self.events = events
        sampler = Sampler(request.sampling)
    }

    /// Prompt fully processed and at least one token sampled: feeds its last token next.
    var isDecoding: Bool { !generated.isEmpty }

    /// The cache, allocated at the first step the sequence takes part in.
    func cache(_ model: DecoderModel) -> KVCache {
        if let kvCache { return kvCache }
        let cache = model.makeCache(capacity: request.prompt.count + request.maxTokens)
        kvCache = cache
        return cache
    }
}

/// Collects the events of `generate`'s requests.
private final class ResultBox: @unchecked Sendable {
    private let lock = NSLock()
    private var tokens: [[Int]]
    private var outcomes: [Result<(FinishReason, Int), SubmitError>?]

    init(count: Int) {
        tokens = Array(repeating: [], count: count)
        outcomes = Array(repeating: nil, count: count)
    }

    func record(_ event: GenerationEvent, at index: Int, promptTokens: Int) {
        lock.lock()
        defer { lock.unlock() }
        switch event {
        case .token(let token): tokens[index].append(token)
        case .finished(let reason, let prompt, _): outcomes[index] = .success((reason, prompt))
        case .failed(let failure): outcomes[index] = .failure(.invalid(failure.description, param: nil))
        }
    }

    func finished() throws -> [GenerationResult] {
        lock.lock()
        defer { lock.unlock() }
        return try outcomes.enumerated().map { index, outcome in
            switch outcome {
            case .success(let (reason, prompt))?: return GenerationResult(tokens: tokens[index], finishReason: reason, promptTokens: prompt)
            case .failure(let error)?: throw GenerationFailure(request: index, reason: error.description)
            case nil: throw GenerationFailure(request: index, reason: "did not finish")
            }
        }
    }
}

/// A request of `GenerationEngine.generate` that did not complete.
public struct GenerationFailure: Error, CustomStringConvertible, Sendable {
    public let request: Int
    public let reason: String
    public var description: String { "request \(request): \(reason)" }
}
