import Atomics

/// The server's view of its slot memory: it finds requests that are published and newer than the
/// last it took from each slot (late duplicates of an old sequence are ignored), and publishes
/// responses. One thread polls; nothing here allocates.
///
/// The memory is a shared region for `shm` clients or registered memory for `verbs` clients; in
/// the second case each slot has a `SlotPeer` that writes responses into the client's copy.
public final class SlotServer: @unchecked Sendable {
    public let layout: SlotLayout
    /// Start of the slot memory (`layout.totalSize` bytes, header first).
    public let base: UnsafeMutableRawPointer
    /// The shared region the slots live in, for `shm`.
    public let region: SharedRegion?
    private var peers: [SlotPeer?]
    private var epochs: [UInt16]
    private var lastTaken: [UInt64]
    private var cursor = 0

    /// Creates the shared region at `path` with `layout` and writes its header.
    public convenience init(path: String, layout: SlotLayout) throws {
        let region = try SharedRegion.create(path: path, size: layout.totalSize) { layout.writeHeader($0) }
        self.init(layout: layout, base: region.base, region: region)
    }

    /// Serves slots in memory at `base` that the caller keeps mapped (`layout.totalSize` bytes, zeroed).
    public init(layout: SlotLayout, base: UnsafeMutableRawPointer, region: SharedRegion? = nil) {
        self.layout = layout
        self.base = base
        self.region = region
        if region == nil { layout.writeHeader(base) }
        peers = [SlotPeer?](repeating: nil, count: layout.slots)
        epochs = [UInt16](repeating: 0, count: layout.slots)
        lastTaken = [UInt64](repeating: 0, count: layout.slots)
    }

    private func side(_ slot: Int) -> SlotSide {
        SlotSide(base: base + layout.requestFlag(slot), layout: layout, peer: peers[slot], epoch: epochs[slot])
    }

    /// The epoch slot `slot` is in (its client puts it in every flag).
    public func epoch(of slot: Int) -> UInt16 { epochs[slot] }

    /// A published request newer than the last taken from its slot, scanning slots round-robin
    /// from where the previous call stopped so that no client starves the others.
    ///
    /// The bytes stay in the client's slot. A client that gave up on a request may overwrite them
    /// while they are read, so a server copies out and validates the routing (ids, weights) before
    /// it relies on it, and drops its answer unless `isCurrent` still holds afterwards.
    public func nextRequest() -> (slot: Int, sequence: UInt64, bytes: UnsafeRawBufferPointer)? {
        for step in 0..<layout.slots {
            let slot = (cursor + step) % layout.slots
            let side = side(slot)
            let value = side.flag(0).load(ordering: .acquiring)
            guard let sequence = SlotFlag.readySequence(value, epoch: side.epoch), sequence > lastTaken[slot] else { continue }
            lastTaken[slot] = sequence
            cursor = (slot + 1) % layout.slots
            let bytes = UnsafeRawBufferPointer(start: side.base + SlotLayout.line, count: min(side.length(at: 0), layout.requestCapacity))
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
        let side = side(slot)
        return side.flag(0).load(ordering: .sequentiallyConsistent) == SlotFlag.ready(sequence, epoch: side.epoch)
    }

    /// Clears slot `slot` for a new client reached through `peer` (nil for shared memory) and
    /// returns its new epoch: its flags go back to "never written", its sequence history is
    /// forgotten, and writes of the epoch before (a departed client's, still on their way) are
    /// ignored from now on, so neither an old request nor an old answer can be mistaken for new.
    @discardableResult
    public func reset(slot: Int, peer: SlotPeer? = nil) -> UInt16 {
        epochs[slot] &+= 1
        let side = side(slot)
        side.flag(0).store(0, ordering: .sequentiallyConsistent)
        side.flag(layout.slotResponseFlag).store(0, ordering: .sequentiallyConsistent)
        lastTaken[slot] = 0
        peers[slot] = peer
        return epochs[slot]
    }

    /// Starts the response to request `sequence` of `slot`: marks it as being written and returns
    /// the slot's response area to write the frame into. `publishResponse` finishes it; until
    /// then the client sees no answer, so a response can also be abandoned by never publishing.
    public func responseBuffer(slot: Int, sequence: UInt64) throws -> UnsafeMutableRawBufferPointer {
        let side = side(slot)
        let offset = layout.slotResponseFlag
        try side.begin(flagOffset: offset, sequence: sequence)
        return UnsafeMutableRawBufferPointer(start: side.base + offset + SlotLayout.line, count: layout.responseCapacity)
    }

    /// Publishes the `length` bytes written into `responseBuffer(slot:sequence:)`, bytes before flag.
    public func publishResponse(slot: Int, sequence: UInt64, length: Int) throws {
        precondition(length >= 0 && length <= layout.responseCapacity, "response of \(length) bytes does not fit the slot")
        try side(slot).publish(flagOffset: layout.slotResponseFlag, sequence: sequence, length: length)
    }

    /// Writes and publishes the response to request `sequence` of `slot` in one go: `write` fills
    /// the response area and returns how many bytes it wrote, or nil to abandon the answer.
    /// Returns whether it was published.
    @discardableResult
    public func respond(slot: Int, sequence: UInt64, _ write: (UnsafeMutableRawBufferPointer) -> Int?) throws -> Bool {
        guard let length = write(try responseBuffer(slot: slot, sequence: sequence)) else { return false }
        try publishResponse(slot: slot, sequence: sequence, length: length)
        return true
    }

    /// Unmaps and removes the shared region, if the slots live in one.
    public func close() { region?.close() }
}
