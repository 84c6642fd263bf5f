import Atomics
import CPlatform

/// How a server sleeping on an idle shared-memory region is woken by a client, without polling:
/// two words in the region header (offset 32: a futex counter, 36: "the server sleeps").
///
/// The server announces it sleeps, looks at its slots once more, then waits on the futex; a client,
/// after publishing a request, rings only when the server said it sleeps (one atomic load on the
/// fast path). Both sides put a sequentially consistent fence between their store and their load,
/// so that either the server's last look sees the request or the client sees the announcement.
struct Doorbell: @unchecked Sendable {
    static let counterOffset = 32
    static let sleepingOffset = 36

    private let counter: UnsafeAtomic<UInt32>
    private let sleeping: UnsafeAtomic<UInt32>
    private let counterAddress: UnsafeMutablePointer<UInt32>

    /// The doorbell of the region whose header starts at `base`.
    init(regionBase base: UnsafeMutableRawPointer) {
        counterAddress = (base + Self.counterOffset).assumingMemoryBound(to: UInt32.self)
        counter = UnsafeAtomic(at: (base + Self.counterOffset).assumingMemoryBound(to: UInt32.AtomicRepresentation.self))
        sleeping = UnsafeAtomic(at: (base + Self.sleepingOffset).assumingMemoryBound(to: UInt32.AtomicRepresentation.self))
    }

    /// Client side, after a request was published: wakes the server if it sleeps.
    func ring() {
        atomicMemoryFence(ordering: .sequentiallyConsistent)
        guard sleeping.load(ordering: .relaxed) != 0 else { return }
        counter.wrappingIncrement(ordering: .sequentiallyConsistent)
        _ = eaas_futex_wake_all(counterAddress)
    }

    /// Server side: announces it is about to sleep; returns the counter to sleep on. The caller
    /// then looks at its slots once more and sleeps only if they are empty.
    func announceSleep() -> UInt32 {
        sleeping.store(1, ordering: .sequentiallyConsistent)
        atomicMemoryFence(ordering: .sequentiallyConsistent)
        return counter.load(ordering: .sequentiallyConsistent)
    }

    /// Server side: sleeps until a ring (the counter moves from `seen`) or `timeout`.
    func sleep(seen: UInt32, timeout: Duration) {
        let (seconds, attoseconds) = timeout.components
        _ = eaas_futex_wait(counterAddress, seen, seconds * 1_000_000_000 + attoseconds / 1_000_000_000)
    }

    /// Server side: awake again; clients stop ringing.
    func awake() { sleeping.store(0, ordering: .relaxed) }
}
