import Atomics
import Foundation

/// The one thread that computes for a `DataPlaneServer`: it gathers the ready requests of all
/// clients (published slots and requests handed over by the TCP connections) into one batch of
/// up to `maxBatchTokens` tokens, waiting up to `maxWait` for more once the first arrived, has the
/// computer run the batch, and answers each request: straight into its slot, or back to its
/// connection's thread.
///
/// It also owns the slots: resets for departed clients and peers for new `verbs` clients are
/// queued to it and applied between batches, so that slot state has a single writer.
final class ServingEngine: @unchecked Sendable {
    /// A TCP request waiting for its answer; the connection thread blocks on `done`.
    final class Submission: @unchecked Sendable {
        let request: RequestView
        /// Where the answer frame is written (large enough for it).
        let output: UnsafeMutableRawBufferPointer
        let arrived = ContinuousClock.now
        private let done = DispatchSemaphore(value: 0)
        private let finished = ManagedAtomic(false)
        /// Set before `finish()`: the answer frame's length, or why there is none.
        var result: Result<Int, ComputeFailure> = .failure(ComputeFailure(.internalError, "not computed"))

        init(request: RequestView, output: UnsafeMutableRawBufferPointer) {
            self.request = request
            self.output = output
        }

        func finish(_ result: Result<Int, ComputeFailure>) {
            self.result = result
            finished.store(true, ordering: .releasing)
            done.signal()
        }

        /// Waits for the answer: spins a little first, since answers to small requests come back
        /// sooner than a sleeping thread wakes up.
        func wait() {
            for _ in 0..<(Backoff.spins * 10) where finished.load(ordering: .acquiring) { return }
            done.wait()
        }
    }


    private let computer: ExpertComputer
    private let slots: SlotServer?
    private let check: (RequestView) throws -> Void
    private let maxBatchTokens: Int
    private let maxWait: Duration
    private let limits: WireLimits
    private let report: (ServingReport) -> Void

    private let condition = NSCondition()
    /// For shared-memory slots: idle, the engine sleeps on this futex until a client rings (or
    /// a TCP submission, reset or stop does) instead of polling.
    private let doorbell: Doorbell?
    /// The doorbell counter seen when sleep was announced; nil while awake.
    private var announcedSleep: UInt32?
    /// When the engine last ran out of work, and the smoothed gap from then to the next request:
    /// a worker's next MoE layer comes after its attention (milliseconds), and spinning through
    /// that would take a core from the worker (or from another pod) sharing this host.
    private var idleSince: ContinuousClock.Instant?
    private var typicalGap: Duration = .zero
    private var submissions: [Submission] = []
    private var resets: [(slot: Int, peer: SlotPeer?, done: (UInt16) -> Void)] = []
    private var running = true
    /// Routing copied out of slots for the current batch (clients may overwrite their slots).
    private let routing: UnsafeMutableRawBufferPointer
    /// When the engine last looked at the slots: a slot request found now arrived after that
    /// (its latency is counted from there, an upper bound that includes its wait in the queue).
    private var lastScan = ContinuousClock.now

    init(computer: ExpertComputer, slots: SlotServer?, maxBatchTokens: Int, maxSlotsPerToken: Int, maxWait: Duration,
         limits: WireLimits, check: @escaping (RequestView) throws -> Void, report: @escaping (ServingReport) -> Void) {
        self.computer = computer
        self.slots = slots
        self.maxBatchTokens = maxBatchTokens
        self.maxWait = maxWait
        self.limits = limits
        self.check = check
        self.report = report
        doorbell = slots?.region.map { Doorbell(regionBase: $0.base) }
        // A batch may run one request past maxBatchTokens (a taken slot request is never put back).
        routing = .allocate(byteCount: 2 * maxBatchTokens * maxSlotsPerToken * 6 + 64 * (slots?.layout.slots ?? 0) + 64, alignment: 64)
    }

    deinit { routing.deallocate() }

    /// Hands a TCP request to the engine; the caller waits on `submission.done`.
    func submit(_ submission: Submission) {
        condition.lock()
        if running {
            submissions.append(submission)
            condition.signal()
            condition.unlock()
            doorbell?.ring()
        } else {
            condition.unlock()
            submission.finish(.failure(ComputeFailure(.draining, "the server is stopping")))
        }
    }

    /// Resets `slot` (with `peer` for a `verbs` client) between batches; `done` gets its new epoch.
    func reset(slot: Int, peer: SlotPeer?, done: @escaping (UInt16) -> Void) {
        condition.lock()
        resets.append((slot, peer, done))
        condition.signal()
        condition.unlock()
        doorbell?.ring()
    }

    /// Stops the loop; requests still queued are answered with `draining`.
    func stop() {
        condition.lock()
        running = false
        condition.signal()
        condition.unlock()
        doorbell?.ring()
    }

    // MARK: The loop

    private enum Item {
        case slot(slot: Int, sequence: UInt64, out: UnsafeMutableRawBufferPointer, arrived: ContinuousClock.Instant)
        case tcp(Submission)
    }

    func run() {
        var idleRounds = 0
        while true {
            condition.lock()
            let open = running
            let pendingResets = resets
            resets.removeAll()
            condition.unlock()
            for reset in pendingResets { reset.done(slots?.reset(slot: reset.slot, peer: reset.peer) ?? 0) }
            guard open else { break }
            let (items, views) = gather()
            guard !items.isEmpty else {
                idle(&idleRounds)
                continue
            }
            idleRounds = 0
            if let since = idleSince {
                typicalGap = typicalGap + (ContinuousClock.now - since - typicalGap) / 4
                idleSince = nil
            }
            if announcedSleep != nil {
                announcedSleep = nil
                doorbell?.awake()
            }
            compute(items, views)
        }
        condition.lock()
        let left = submissions
        submissions.removeAll()
        condition.unlock()
        for submission in left { submission.finish(.failure(ComputeFailure(.draining, "the server is stopping"))) }
    }

    /// Spins (as `Backoff` does), yields, then sleeps on the condition in growing steps up to
    /// 50 µs, looking at the slots after each; a TCP submission wakes it at once. Without slots
    /// it sleeps until a submission comes, once the spinning is over: a busy server picks up the
    /// next request without being woken.
    private func idle(_ rounds: inout Int) {
        rounds += 1
        if rounds == 1 {
            idleSince = ContinuousClock.now
            // Requests usually come long after the last answer: go straight to sleep (a doorbell
            // wakes in tens of microseconds, a small share of such a gap).
            if doorbell != nil, typicalGap > .microseconds(300) { rounds = Backoff.spins + 100 }
        }
        if rounds < Backoff.spins { return }
        if rounds < Backoff.spins + 100 {
            sched_yield()
            return
        }
        if let doorbell {
            // Announce the sleep, look at the slots once more (the loop's next gather), and only
            // then sleep: a client that published meanwhile either is seen or rings.
            guard let seen = announcedSleep else {
                announcedSleep = doorbell.announceSleep()
                return
            }
            condition.lock()
            let pending = !submissions.isEmpty || !resets.isEmpty || !running
            condition.unlock()
            if !pending { doorbell.sleep(seen: seen, timeout: .milliseconds(100)) }
            announcedSleep = nil
            doorbell.awake()
            return
        }
        let step = slots == nil ? 5_000_000 : min(Backoff.maxSleepNanoseconds, 1000 << min(6, (rounds - Backoff.spins - 100) / 64))
        condition.lock()
        if submissions.isEmpty && resets.isEmpty && running { _ = condition.wait(until: Date(timeIntervalSinceNow: Double(step) * 1e-9)) }
        condition.unlock()
    }

    /// The ready requests, up to a batch, waiting up to `maxWait` after the first for more.
    /// Requests that fail their checks are answered at once and not returned.
    private func gather() -> ([Item], [RequestView]) {
        var items: [Item] = [], views: [RequestView] = []
        var tokens = 0
        var routingUsed = 0
        var firstArrival: ContinuousClock.Instant?
        while tokens < maxBatchTokens {
            var found = false
            let previousScan = lastScan
            lastScan = ContinuousClock.now
            while tokens < maxBatchTokens, let slots, let (slot, sequence, bytes) = slots.nextRequest() {
                found = true
                let arrived = previousScan
                var reserved = 0
                do {
                    guard case .request(let view) = try Frame.decode(bytes, limits: limits) else {
                        throw ComputeFailure(.malformedFrame, "a slot holds request frames only")
                    }
                    guard view.header.sequence == sequence else {
                        throw ComputeFailure(.malformedFrame, "request sequence \(view.header.sequence) differs from its slot's \(sequence)")
                    }
                    // Shape and size first, so that a request refused costs no room in the batch.
                    try check(view)
                    // A private copy of the routing, validated again: the client may rewrite its slot at any time.
                    let need = (view.ids.count + view.weights.count + 63) / 64 * 64
                    guard routingUsed + need <= routing.count else { throw ComputeFailure(.tooManyTokens, "request too large for this server's slots") }
                    let copy = try view.withRoutingCopied(to: UnsafeMutableRawBufferPointer(rebasing: routing[routingUsed..<(routingUsed + need)]), frame: "request")
                    routingUsed += need
                    reserved = need
                    try check(copy)
                    let out = try slots.responseBuffer(slot: slot, sequence: sequence)
                    items.append(.slot(slot: slot, sequence: sequence, out: out, arrived: arrived))
                    views.append(copy)
                    tokens += copy.header.tokens
                } catch {
                    routingUsed -= reserved
                    let failure = error as? ComputeFailure ?? ComputeFailure(.malformedFrame, "\(error)")
                    answerSlot(slot: slot, sequence: sequence, failure: failure)
                    report(ServingReport(requests: 0, tokens: 0, busy: .zero, answers: [(ContinuousClock.now - arrived, failure.code)], queued: 0))
                }
            }
            condition.lock()
            while tokens < maxBatchTokens, !submissions.isEmpty {
                let submission = submissions.removeFirst()
                items.append(.tcp(submission))
                views.append(submission.request)
                tokens += submission.request.header.tokens
                found = true
            }
            condition.unlock()
            if found, firstArrival == nil { firstArrival = ContinuousClock.now }
            guard let first = firstArrival, maxWait > .zero, ContinuousClock.now - first < maxWait else { break }
            if !found { Thread.sleep(forTimeInterval: 0.000_005) }
        }
        return (items, views)
    }

    private func compute(_ items: [Item], _ views: [RequestView]) {
        var batch: [ComputeItem] = []
        batch.reserveCapacity(items.count)
        for (item, view) in zip(items, views) {
            let out: UnsafeMutableRawBufferPointer
            switch item {
            case .slot(_, _, let o, _): out = o
            case .tcp(let submission): out = submission.output
            }
            let header = ResponseHeader(sequence: view.header.sequence, tokens: view.header.tokens, hidden: view.header.hidden)
            let offset = FrameEncoder.encodeResponseHeader(header, into: out)
            let count = header.tokens * header.hidden
            batch.append(ComputeItem(request: view, sums: UnsafeMutableBufferPointer(start: (out.baseAddress! + offset).bindMemory(to: Float.self, capacity: count), count: count)))
        }
        let started = ContinuousClock.now
        let failures = computer.compute(batch)
        let busy = ContinuousClock.now - started
        // Reported before the answers go out, so that whoever got an answer also sees it counted.
        let now = ContinuousClock.now
        let answers = items.enumerated().map { index, item -> (latency: Duration, failure: WireErrorCode?) in
            switch item {
            case .slot(_, _, _, let arrived): (now - arrived, failures[index]?.code)
            case .tcp(let submission): (now - submission.arrived, failures[index]?.code)
            }
        }
        condition.lock()
        let queued = submissions.count
        condition.unlock()
        report(ServingReport(requests: items.count, tokens: views.reduce(0) { $0 + $1.header.tokens }, busy: busy, answers: answers, queued: queued))
        for (index, item) in items.enumerated() {
            let failure = failures[index]
            let length = ResponseHeader(sequence: 0, tokens: views[index].header.tokens, hidden: views[index].header.hidden).frameSize
            switch item {
            case let .slot(slot, sequence, _, _):
                if let failure {
                    answerSlot(slot: slot, sequence: sequence, failure: failure)
                } else if let slots, slots.isCurrent(slot: slot, sequence: sequence) {
                    // A torn read (the client moved on mid-request) is never published.
                    try? slots.publishResponse(slot: slot, sequence: sequence, length: length)
                }
            case .tcp(let submission):
                submission.finish(failure.map { .failure($0) } ?? .success(length))
            }
        }
    }

    /// Answers a slot request with an error frame.
    private func answerSlot(slot: Int, sequence: UInt64, failure: ComputeFailure) {
        guard let slots else { return }
        let frame = FrameEncoder.encode(ErrorFrame(sequence: sequence, code: failure.code, message: failure.message))
        guard let out = try? slots.responseBuffer(slot: slot, sequence: sequence) else { return }
        let length = min(frame.count, out.count)
        frame.withUnsafeBytes { out.baseAddress!.copyMemory(from: $0.baseAddress!, byteCount: length) }
        guard slots.isCurrent(slot: slot, sequence: sequence) else { return }
        try? slots.publishResponse(slot: slot, sequence: sequence, length: length)
    }
}
