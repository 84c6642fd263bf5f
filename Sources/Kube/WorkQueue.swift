/// The controller work queue (client-go's rate-limited `workqueue`): a key waits at most once
/// however often it is added, is never handed to two workers at once (an add while it is being
/// processed runs it again afterwards), and a key that keeps failing is retried with per-key
/// exponential backoff until `forget` is called on success.
public actor WorkQueue<Key: Hashable & Sendable> {
    /// Per-key backoff: `baseDelay` doubled per consecutive failure, capped at `maxDelay`
    /// (client-go's defaults: 5 ms to 1000 s).
    public struct Backoff: Sendable {
        public var baseDelay: Duration = .milliseconds(5)
        public var maxDelay: Duration = .seconds(1000)
        public init(baseDelay: Duration = .milliseconds(5), maxDelay: Duration = .seconds(1000)) {
            self.baseDelay = baseDelay
            self.maxDelay = maxDelay
        }
        /// The delay before retry number `failures` (1 for the first failure).
        public func delay(afterFailures failures: Int) -> Duration {
            guard failures > 0 else { return .zero }
            let exponent = min(failures - 1, 40)
            let capped = min(baseDelay.seconds * pow2(exponent), maxDelay.seconds)
            return .nanoseconds(Int64(capped * 1e9))
        }
        private func pow2(_ exponent: Int) -> Double { Double(sign: .plus, exponent: exponent, significand: 1) }
    }

    private let backoff: Backoff
    private var ready: [Key] = []
    private var readyHead = 0
    /// Keys waiting (in `ready`) or re-added while processing.
    private var dirty = Set<Key>()
    private var processing = Set<Key>()
    /// Keys scheduled for later, with the instant each is due.
    private var scheduled: [Key: ContinuousClock.Instant] = [:]
    private var failures: [Key: Int] = [:]
    private var waiters: [(id: Int, continuation: CheckedContinuation<Key?, Never>)] = []
    private var nextWaiterID = 0
    private var isShutDown = false

    public init(backoff: Backoff = Backoff()) { self.backoff = backoff }

    /// Queues `key` (a no-op when it already waits).
    public func add(_ key: Key) {
        guard !isShutDown, !dirty.contains(key) else { return }
        dirty.insert(key)
        scheduled[key] = nil
        if processing.contains(key) { return }  // queued again by `done`
        if let waiter = waiters.first {
            waiters.removeFirst()
            dirty.remove(key)
            processing.insert(key)
            waiter.continuation.resume(returning: key)
        } else {
            ready.append(key)
        }
    }

    /// Queues `key` after `delay` (an earlier schedule of the same key wins).
    public func add(_ key: Key, after delay: Duration) {
        guard !isShutDown else { return }
        guard delay > .zero else { add(key); return }
        let due = ContinuousClock.now + delay
        if let existing = scheduled[key], existing <= due { return }
        scheduled[key] = due
        Task { [weak self] in
            try? await Task.sleep(until: due, clock: .continuous)
            await self?.fire(key, due: due)
        }
    }

    private func fire(_ key: Key, due: ContinuousClock.Instant) {
        guard scheduled[key] == due else { return }
        scheduled[key] = nil
        add(key)
    }

    /// Queues `key` after its backoff delay and counts the failure.
    public func addRateLimited(_ key: Key) {
        let count = (failures[key] ?? 0) + 1
        failures[key] = count
        add(key, after: backoff.delay(afterFailures: count))
    }

    /// Clears `key`'s failure count (call after it was processed successfully).
    public func forget(_ key: Key) { failures[key] = nil }

    /// Consecutive failures of `key` so far.
    public func failureCount(_ key: Key) -> Int { failures[key] ?? 0 }

    /// The next key to process, waiting for one; nil once the queue is shut down (or the task is
    /// cancelled). Call `done` when finished with it.
    public func next() async -> Key? {
        if let key = takeReady() { return key }
        if isShutDown || Task.isCancelled { return nil }
        nextWaiterID += 1
        let id = nextWaiterID
        return await withTaskCancellationHandler {
            await withCheckedContinuation { continuation in
                if Task.isCancelled { continuation.resume(returning: nil); return }
                waiters.append((id, continuation))
            }
        } onCancel: {
            Task { await self.cancelWaiter(id) }
        }
    }

    private func takeReady() -> Key? {
        guard readyHead < ready.count else { return nil }
        let key = ready[readyHead]
        readyHead += 1
        if readyHead > 1024, readyHead * 2 > ready.count {
            ready.removeFirst(readyHead)
            readyHead = 0
        }
        dirty.remove(key)
        processing.insert(key)
        return key
    }

    private func cancelWaiter(_ id: Int) {
        guard let index = waiters.firstIndex(where: { $0.id == id }) else { return }
        waiters.remove(at: index).continuation.resume(returning: nil)
    }

    /// Marks `key` finished; if it was added meanwhile, it is queued again now.
    public func done(_ key: Key) {
        guard processing.remove(key) != nil else { return }  // not handed out: nothing to finish
        if dirty.contains(key) {
            dirty.remove(key)
            add(key)
        }
    }

    /// Keys waiting to be processed (not counting scheduled ones).
    public var count: Int { ready.count - readyHead }
    /// Keys being processed now.
    public var processingCount: Int { processing.count }

    /// Stops handing out keys: waiting and future `next()` calls return nil.
    public func shutDown() {
        isShutDown = true
        for waiter in waiters { waiter.continuation.resume(returning: nil) }
        waiters.removeAll()
    }
}
