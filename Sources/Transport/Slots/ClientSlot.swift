/// One client's slot in a server's slot memory: it encodes its request frame in place, publishes
/// it with the flag, and waits for the response flag with the same sequence.
///
/// Over shared memory the slot is the server's own bytes: zero copies, the server decodes the
/// request where the client wrote it and the client the response where the server wrote it. Over
/// verbs the slot is the client's registered copy, and `peer` writes it into the server's.
public struct ClientSlot: @unchecked Sendable {
    public let slot: Int
    public let layout: SlotLayout
    let side: SlotSide
    /// Holds the memory `side` points into, so that it outlives every slot that uses it.
    let owner: AnyObject
    /// Wakes a sleeping server (shared memory only; a `verbs` server polls).
    let doorbell: Doorbell?

    /// Opens slot `slot` of the shared region `region` (mapped by the caller), in the epoch the
    /// server gave it to this client.
    public init(region: SharedRegion, slot: Int, epoch: UInt16) throws {
        let layout = try SlotLayout.readHeader(region.base, count: region.count, path: region.path)
        guard slot >= 0, slot < layout.slots else {
            throw TransportError.badRegion(path: region.path, reason: "has no slot \(slot) (it has \(layout.slots))")
        }
        self.init(slot: slot, epoch: epoch, layout: layout, base: region.base + layout.requestFlag(slot), peer: nil, owner: region,
                  doorbell: Doorbell(regionBase: region.base))
    }

    /// A slot whose local copy starts at `base` (`layout.slotStride` bytes, zeroed) and reaches the
    /// server's copy through `peer`.
    public init(slot: Int, epoch: UInt16, layout: SlotLayout, base: UnsafeMutableRawPointer, peer: SlotPeer?, owner: AnyObject) {
        self.init(slot: slot, epoch: epoch, layout: layout, base: base, peer: peer, owner: owner, doorbell: nil)
    }

    init(slot: Int, epoch: UInt16, layout: SlotLayout, base: UnsafeMutableRawPointer, peer: SlotPeer?, owner: AnyObject, doorbell: Doorbell?) {
        self.slot = slot
        self.layout = layout
        side = SlotSide(base: base, layout: layout, peer: peer, epoch: epoch)
        self.owner = owner
        self.doorbell = doorbell
    }

    /// Where to encode the next request frame (`layout.requestCapacity` bytes).
    public var requestBuffer: UnsafeMutableRawBufferPointer {
        UnsafeMutableRawBufferPointer(start: side.base + SlotLayout.line, count: layout.requestCapacity)
    }

    /// Marks the request area as being written for `sequence`; call before writing its bytes.
    /// Sequences start at 1 and grow per slot (0 means "never written").
    public func beginRequest(sequence: UInt64) throws {
        precondition(sequence >= 1 && sequence <= SlotFlag.maxSequence, "slot sequences run from 1 to 2^47 - 1")
        try side.begin(flagOffset: 0, sequence: sequence)
    }

    /// Publishes the `length` bytes written into `requestBuffer` as request `sequence`.
    public func publishRequest(sequence: UInt64, length: Int) throws {
        precondition(length >= 0 && length <= layout.requestCapacity, "request of \(length) bytes does not fit the slot")
        try side.publish(flagOffset: 0, sequence: sequence, length: length)
        doorbell?.ring()
    }

    /// The response to `sequence` if it has arrived (bytes in place, valid until the next request).
    public func pollResponse(sequence: UInt64) -> UnsafeRawBufferPointer? {
        let offset = layout.slotResponseFlag
        let value = side.flag(offset).load(ordering: .acquiring)
        guard SlotFlag.readySequence(value, epoch: side.epoch) == sequence else { return nil }
        return UnsafeRawBufferPointer(start: side.base + offset + SlotLayout.line, count: min(side.length(at: offset), layout.responseCapacity))
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
}
