import Atomics

#if canImport(Glibc)
import Glibc
#endif

/// Polling that spins briefly, then yields, then sleeps in growing steps up to `maxSleep`: cheap
/// when the answer is microseconds away, gentle on the CPU when it is not.
struct Backoff {
    private var round = 0
    static let spins = 2000
    static let maxSleepNanoseconds = 50_000

    mutating func pause() {
        round += 1
        if round < Self.spins { return }
        if round < Self.spins + 100 {
            sched_yield()
            return
        }
        let step = min(Self.maxSleepNanoseconds, 1000 << min(6, (round - Self.spins - 100) / 64))
        var request = timespec(tv_sec: 0, tv_nsec: step)
        nanosleep(&request, nil)
    }
}

/// One client's slot in a server's shared-memory slot region: it encodes its request frame in
/// place, publishes it with the flag, and waits for the response flag with the same sequence.
/// Zero copies: the server decodes the request where the client wrote it, and the client decodes
/// the response where the server wrote it.
public struct ShmClientSlot: @unchecked Sendable {
    public let slot: Int
    let layout: SlotLayout
    let base: UnsafeMutableRawPointer
    /// Held so that the mapping outlives every slot that points into it.
    let region: SharedRegion

    /// Opens slot `slot` of the region at `region` (mapped by the caller).
    public init(region: SharedRegion, slot: Int) throws {
        let layout = try SlotLayout.readHeader(region.base, count: region.count, path: region.path)
        guard slot >= 0, slot < layout.slots else {
            throw TransportError.badRegion(path: region.path, reason: "has no slot \(slot) (it has \(layout.slots))")
        }
        self.slot = slot
        self.layout = layout
        self.region = region
        base = region.base
    }

    /// Where to encode the next request frame (`layout.requestCapacity` bytes).
    public var requestBuffer: UnsafeMutableRawBufferPointer {
        UnsafeMutableRawBufferPointer(start: base + layout.requestData(slot), count: layout.requestCapacity)
    }

    /// Marks the request area as being written for `sequence`; call before writing its bytes.
    /// Sequences start at 1 and grow per slot (0 means "never written").
    public func beginRequest(sequence: UInt64) {
        precondition(sequence >= 1 && sequence < 1 << 63, "slot sequences run from 1 to 2^63 - 1")
        flag(layout.requestFlag(slot)).store(SlotFlag.writing(sequence), ordering: .sequentiallyConsistent)
        // Seqlock write side: the marker must be visible before any byte of the new request.
        atomicMemoryFence(ordering: .releasing)
    }

    /// Publishes the `length` bytes written into `requestBuffer` as request `sequence`: length
    /// first, then the flag with release ordering, so the server never sees the flag before the bytes.
    public func publishRequest(sequence: UInt64, length: Int) {
        precondition(length >= 0 && length <= layout.requestCapacity, "request of \(length) bytes does not fit the slot")
        base.storeBytes(of: UInt64(length), toByteOffset: layout.requestFlag(slot) + 8, as: UInt64.self)
        flag(layout.requestFlag(slot)).store(SlotFlag.ready(sequence), ordering: .releasing)
    }

    /// The response to `sequence` if it has arrived (bytes in place, valid until the next request).
    public func pollResponse(sequence: UInt64) -> UnsafeRawBufferPointer? {
        let value = flag(layout.responseFlag(slot)).load(ordering: .acquiring)
        guard SlotFlag.readySequence(value) == sequence else { return nil }
        let length = Int(base.load(fromByteOffset: layout.responseFlag(slot) + 8, as: UInt64.self))
        return UnsafeRawBufferPointer(start: base + layout.responseData(slot), count: min(length, layout.responseCapacity))
    }

    /// Waits for the response to `sequence`, spinning then backing off; throws `.timedOut`.
    public func waitResponse(sequence: UInt64, timeout: Duration) throws -> UnsafeRawBufferPointer {
        let clock = ContinuousClock()
        let deadline = clock.now + timeout
        var backoff = Backoff()
        while true {
            if let bytes = pollResponse(sequence: sequence) { return bytes }
            if clock.now >= deadline { throw TransportError.timedOut(sequence: sequence, after: timeout) }
            backoff.pause()
        }
    }

    private func flag(_ offset: Int) -> UnsafeAtomic<UInt64> {
        UnsafeAtomic(at: (base + offset).assumingMemoryBound(to: UInt64.AtomicRepresentation.self))
    }
}

/// The server's view of its slot region: it finds requests that are published and newer than the
/// last it took from each slot (late duplicates of an old sequence are ignored), and publishes
/// responses. One thread polls; nothing here allocates.
public final class ShmServerSlots: @unchecked Sendable {
    public let region: SharedRegion
    public let layout: SlotLayout
    private var lastTaken: [UInt64]
    private var cursor = 0

    /// Creates the region at `path` with `layout` and writes its header.
    public init(path: String, layout: SlotLayout) throws {
        region = try SharedRegion.create(path: path, size: layout.totalSize) { layout.writeHeader($0) }
        self.layout = layout
        lastTaken = [UInt64](repeating: 0, count: layout.slots)
    }

    /// A published request newer than the last taken from its slot, scanning slots round-robin
    /// from where the previous call stopped so that no client starves the others.
    ///
    /// The bytes stay in the client's slot. A client that gave up on a request may overwrite them
    /// while they are read, so a server copies out and validates the routing (ids, weights) before
    /// it relies on it, and drops its answer unless `isCurrent` still holds afterwards.
    public func nextRequest() -> (slot: Int, sequence: UInt64, bytes: UnsafeRawBufferPointer)? {
        for step in 0..<layout.slots {
            let slot = (cursor + step) % layout.slots
            let value = flag(layout.requestFlag(slot)).load(ordering: .acquiring)
            guard let sequence = SlotFlag.readySequence(value), sequence > lastTaken[slot] else { continue }
            lastTaken[slot] = sequence
            cursor = (slot + 1) % layout.slots
            let length = Int(region.base.load(fromByteOffset: layout.requestFlag(slot) + 8, as: UInt64.self))
            let bytes = UnsafeRawBufferPointer(start: region.base + layout.requestData(slot), count: min(length, layout.requestCapacity))
            return (slot, sequence, bytes)
        }
        return nil
    }

    /// Waits up to `timeout` for the next published request, spinning briefly and then backing off
    /// (yield, then sleeps growing to 50 µs) so that an idle server leaves its core to others.
    public func waitForRequest(timeout: Duration) -> (slot: Int, sequence: UInt64, bytes: UnsafeRawBufferPointer)? {
        let clock = ContinuousClock()
        let deadline = clock.now + timeout
        var backoff = Backoff()
        while true {
            if let request = nextRequest() { return request }
            if clock.now >= deadline { return nil }
            backoff.pause()
        }
    }

    /// Whether request `sequence` is still the one in `slot`: false when the client began another
    /// request meanwhile (it gave up on this one), so the bytes read may be torn and the answer
    /// must be dropped.
    public func isCurrent(slot: Int, sequence: UInt64) -> Bool {
        // Seqlock read side: the reads of the slot's bytes must not move past this check.
        atomicMemoryFence(ordering: .acquiring)
        return flag(layout.requestFlag(slot)).load(ordering: .sequentiallyConsistent) == SlotFlag.ready(sequence)
    }

    /// Clears slot `slot` for a new client: its flags go back to "never written" and its sequence
    /// history is forgotten, so neither an old request nor an old answer can be mistaken for new.
    public func reset(slot: Int) {
        flag(layout.requestFlag(slot)).store(0, ordering: .sequentiallyConsistent)
        flag(layout.responseFlag(slot)).store(0, ordering: .sequentiallyConsistent)
        lastTaken[slot] = 0
    }

    /// Writes the response to request `sequence` of `slot` with `write` (which returns the bytes
    /// it wrote into the buffer) and publishes it, bytes before flag.
    public func respond(slot: Int, sequence: UInt64, _ write: (UnsafeMutableRawBufferPointer) -> Int) {
        let offset = layout.responseFlag(slot)
        flag(offset).store(SlotFlag.writing(sequence), ordering: .sequentiallyConsistent)
        let buffer = UnsafeMutableRawBufferPointer(start: region.base + layout.responseData(slot), count: layout.responseCapacity)
        let length = write(buffer)
        precondition(length >= 0 && length <= layout.responseCapacity, "response of \(length) bytes does not fit the slot")
        region.base.storeBytes(of: UInt64(length), toByteOffset: offset + 8, as: UInt64.self)
        flag(offset).store(SlotFlag.ready(sequence), ordering: .releasing)
    }

    /// Unmaps and removes the region.
    public func close() { region.close() }

    private func flag(_ offset: Int) -> UnsafeAtomic<UInt64> {
        UnsafeAtomic(at: (region.base + offset).assumingMemoryBound(to: UInt64.AtomicRepresentation.self))
    }
}
