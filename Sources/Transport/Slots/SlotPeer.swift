import Atomics

/// The one remote-memory abstraction the slot protocol runs over: how bytes written into the local
/// copy of a slot reach the peer's copy of the same slot.
///
/// With shared memory both sides map the same bytes, so there is no peer to push to (`nil`
/// everywhere a `SlotPeer?` is taken). With RDMA verbs each side has its own registered copy and a
/// push is an RDMA WRITE into the peer's copy. Offsets are relative to the slot's start
/// (`SlotLayout.slotStride` bytes: request flag line, request bytes, response flag line, response
/// bytes), so both sides address the slot alike whatever else their memory holds.
public protocol SlotPeer: AnyObject {
    /// Copies bytes `[offset, offset + count)` of the local slot to the same bytes of the peer's
    /// slot. Pushes land in the order they were made: a payload pushed before its flag is in
    /// place when the peer sees the flag. `settle` marks the last push of a message: before the
    /// next push returns, that message has left the local memory (so the caller may rewrite it
    /// after starting the next message), and a push never waits on the peer otherwise.
    func push(offset: Int, count: Int, settle: Bool) throws
}

/// One side of one slot: the local bytes and, where the peer has its own copy, how to reach it.
/// The flag protocol (a seqlock word per direction, see `SlotFlag`) lives here once for every
/// backend.
struct SlotSide {
    /// Start of the slot in local memory.
    let base: UnsafeMutableRawPointer
    let layout: SlotLayout
    let peer: SlotPeer?
    /// The slot's current epoch (see `SlotFlag`).
    let epoch: UInt16

    func flag(_ offset: Int) -> UnsafeAtomic<UInt64> {
        UnsafeAtomic(at: (base + offset).assumingMemoryBound(to: UInt64.AtomicRepresentation.self))
    }

    func length(at flagOffset: Int) -> Int { Int(base.load(fromByteOffset: flagOffset + 8, as: UInt64.self)) }

    /// Marks the message behind the flag at `flagOffset` as being rewritten for `sequence`.
    func begin(flagOffset: Int, sequence: UInt64) throws {
        flag(flagOffset).store(SlotFlag.writing(sequence, epoch: epoch), ordering: .sequentiallyConsistent)
        // Seqlock write side: the marker must be visible before any byte of the new message.
        atomicMemoryFence(ordering: .releasing)
        try peer?.push(offset: flagOffset, count: 8, settle: false)
    }

    /// Publishes `length` bytes already written after the flag line at `flagOffset` as `sequence`:
    /// bytes, then length and flag with release ordering, so the reader never sees the flag first.
    func publish(flagOffset: Int, sequence: UInt64, length: Int) throws {
        try peer?.push(offset: flagOffset + SlotLayout.line, count: length, settle: false)
        base.storeBytes(of: UInt64(length), toByteOffset: flagOffset + 8, as: UInt64.self)
        flag(flagOffset).store(SlotFlag.ready(sequence, epoch: epoch), ordering: .releasing)
        // The flag line goes out last; settling it means the local bytes are free to reuse.
        try peer?.push(offset: flagOffset, count: 16, settle: true)
    }
}
