import Foundation
import MoE
import Transport

/// Continuous batching over one decoder: each step runs the `Scheduler`'s plan (one token of every
/// decoding sequence and chunks of the prompts being prefilled, up to `maxBatchTokens`) through
/// the model as one batch, so that every MoE layer sends one batch of tokens to the experts, and
/// samples the sequences whose prompt is done. Sequences join and leave between steps. The
/// scheduler decides; the engine keeps the thread, submission, cancellation and each sequence's
/// tokens, sampler and cache.
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
        /// Whether steps are split into two micro-batches pipelined against remote experts: the
        /// pods compute one half's experts while this worker runs the other half's attention. It
        /// pays where the pods have cores of their own and the worker's share of a step is large;
        /// each half's experts read their weights again, which on weight-bound pods can cost
        /// more than it saves (`.measured` decides per step size). Local experts are never split.
        public var microBatching = MicroBatching.one

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
    /// Runs each step's plan through the model (engine thread only).
    private let runner: StepRunner

    /// Guards everything below: submitters and the engine thread share it.
    private let condition = NSCondition()
    private var scheduler: Scheduler
    /// Every sequence the scheduler holds, by id.
    private var sequences: [UInt64: GenerationSequence] = [:]
    private var cancelled: Set<UInt64> = []
    private var nextID: UInt64 = 0
    private var accepting = true
    private var stopNow = false
    private var statistics = Statistics()
    private var thread: Thread?
    private var finished = false

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
            // One dispatcher per micro-batch in flight, each its own client of the pods.
            let lanes = (0..<(configuration.microBatching == .one ? 1 : 2)).map { lane in
                var own = dispatcher
                own.clientID = dispatcher.clientID &+ UInt64(lane)
                return Dispatcher(membership: membership, configuration: own)
            }
            placement = RoutedExpertPlacement(dispatchers: lanes, wireDType: wireDType)
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
        runner = StepRunner(model: model)
        scheduler = Scheduler(limits: .init(maxRunning: configuration.maxRunning, maxBatchTokens: configuration.maxBatchTokens,
                                            kvCacheBytes: configuration.kvCacheBytes,
                                            microBatching: model.placement.lanes > 1 ? configuration.microBatching : .one))
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
        guard !queueLimit || scheduler.count < capacity else {
            throw .overloaded(waiting: scheduler.waiting.count)
        }
        let id = enqueue(request, events: events)
        condition.signal()
        return Handle(id: id, engine: self)
    }

    /// Hands `request` to the scheduler (under the lock).
    private func enqueue(_ request: GenerationRequest, events: @escaping @Sendable (GenerationEvent) -> Void) -> UInt64 {
        nextID += 1
        sequences[nextID] = GenerationSequence(id: nextID, request: request, events: events)
        scheduler.add(.init(id: nextID, promptLength: request.prompt.count, maxTokens: request.maxTokens, cacheBytes: cacheBytes(request)))
        return nextID
    }

    /// Queues all of `requests` or none: each is checked first (a refusal of one of several names
    /// it, `prompt[i]: …`), and they go in under one lock, so that the next step sees all of them
    /// (a request with several prompts is never half admitted, and a benchmark's batch starts
    /// together). `events` receives each request's events with its index, on the engine thread.
    @discardableResult
    public func submit(_ requests: [GenerationRequest], events: @escaping @Sendable (Int, GenerationEvent) -> Void) throws(SubmitError) -> [Handle] {
        for (index, request) in requests.enumerated() {
            do throws(SubmitError) {
                try validate(request)
            } catch {
                if case let .invalid(message, param) = error, requests.count > 1 { throw .invalid("prompt[\(index)]: \(message)", param: param) }
                throw error
            }
        }
        condition.lock()
        defer { condition.unlock() }
        guard accepting else { throw .stopping }
        guard scheduler.count + requests.count <= capacity else {
            throw .overloaded(waiting: scheduler.waiting.count)
        }
        let handles = requests.enumerated().map { index, request in
            Handle(id: enqueue(request, events: { events(index, $0) }), engine: self)
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
            while scheduler.isIdle && cancelled.isEmpty && accepting && !stopNow { condition.wait() }
            let idleAndClosed = !accepting && scheduler.isIdle
            if stopNow || idleAndClosed {
                let abandoned = scheduler.abandonAll().compactMap { sequences[$0] }
                sequences.removeAll()
                condition.unlock()
                for sequence in abandoned { sequence.events(.failed(.shuttingDown)) }
                condition.lock()
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
            let idle = scheduler.isIdle
            condition.unlock()
            if idle { break }
            step()
        }
        return try results.finished()
    }

    // MARK: One step

    /// Takes the scheduler's next plan, runs it, samples, and tells the scheduler how it went.
    func step() {
        condition.lock()
        let ended = scheduler.cancel(cancelled).compactMap { sequences[$0] }
        cancelled.removeAll()
        // Cancelled sequences give their cache back before admission.
        statistics.failedRequests += retire()
        let plan = scheduler.schedule()
        let members = plan.chunks.map { sequences[$0.id]! }
        condition.unlock()
        // Every sequence ends with one event, a cancelled one too.
        for sequence in ended { sequence.events(.failed(.cancelled)) }
        guard !plan.isEmpty else { return }

        let touchedBefore = model.placement.expertsTouched
        let started = ContinuousClock.now
        let outcomes = runner.run(Array(zip(plan.chunks, members)), microBatches: plan.microBatches)
        let took = (ContinuousClock.now - started).components
        let seconds = Double(took.seconds) + Double(took.attoseconds) * 1e-18
        let touched = model.placement.expertsTouched - touchedBefore

        condition.lock()
        scheduler.record(plan, seconds: seconds)
        let finishedSequences = scheduler.postprocess(plan, outcomes: outcomes).map { (sequences[$0.id]!, $0.reason) }
        let failed = retire()
        if plan.promptTokens == 0 {
            statistics.decodeSteps += 1
            statistics.decodeExpertsTouched += touched
        }
        statistics.steps += 1
        statistics.promptTokens += plan.promptTokens
        statistics.generatedTokens += outcomes.count { if case .sampled = $0 { true } else { false } }
        statistics.failedRequests += failed
        statistics.failovers = model.placement.failovers
        statistics.moePhases = model.placement.phases
        condition.unlock()
        for (sequence, reason) in finishedSequences {
            sequence.events(.finished(reason, promptTokens: sequence.request.prompt.count, completionTokens: sequence.generated.count))
        }
    }

    /// Lets the scheduler drop its done sequences (under the lock); returns how many failed.
    private func retire() -> Int {
        let retired = scheduler.retire()
        for id in retired.ids { sequences[id] = nil }
        return retired.failed
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
