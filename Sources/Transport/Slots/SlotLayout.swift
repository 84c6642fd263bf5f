/// Where everything lives in a server's slot region, the memory each client writes its requests
/// into and reads its responses from (the paper's one-sided model):
///
/// ```
/// header (64 B): magic u64 | version u32 | slots u32 | request capacity u64 | response capacity u64
///                | doorbell counter u32 | server sleeping u32 (see `Doorbell`)
/// slot i:  request flag line (64 B)  | request bytes (request capacity, rounded up to 64)
///          response flag line (64 B) | response bytes (response capacity, rounded up to 64)
/// ```
/// A flag line holds the flag (u64, atomic) and the length of the bytes after it (u64). Flags and
/// data start on their own cache lines so that a client's polling never shares a line with another
/// slot's writes.
public struct SlotLayout: Sendable, Equatable {
    public static let magic: UInt64 = 0x544f_4c53_5341_4145  // "EAASSLOT" as little-endian bytes
    /// 2: the header holds the doorbell a sleeping server is woken by.
    public static let version: UInt32 = 2
    /// Flags and data areas start on lines of this many bytes.
    public static let line = 64

    public let slots: Int
    /// Largest request frame a slot holds, in bytes.
    public let requestCapacity: Int
    /// Largest response frame a slot holds, in bytes.
    public let responseCapacity: Int

    public init(slots: Int, requestCapacity: Int, responseCapacity: Int) {
        precondition(slots >= 1 && requestCapacity >= 1 && responseCapacity >= 1, "a slot layout needs slots and capacities")
        self.slots = slots
        self.requestCapacity = requestCapacity
        self.responseCapacity = responseCapacity
    }

    static func roundUp(_ n: Int) -> Int { (n + line - 1) / line * line }

    var requestStride: Int { Self.line + Self.roundUp(requestCapacity) }
    /// Bytes of one slot: request flag line and bytes, response flag line and bytes.
    public var slotStride: Int { requestStride + Self.line + Self.roundUp(responseCapacity) }
    /// Where the response flag line starts, counted from the slot's start.
    var slotResponseFlag: Int { requestStride }

    /// Bytes the whole region needs.
    public var totalSize: Int { Self.line + slots * slotStride }

    func requestFlag(_ slot: Int) -> Int { Self.line + slot * slotStride }
    func requestData(_ slot: Int) -> Int { requestFlag(slot) + Self.line }
    func responseFlag(_ slot: Int) -> Int { requestFlag(slot) + requestStride }
    func responseData(_ slot: Int) -> Int { responseFlag(slot) + Self.line }

    /// Writes the header at the start of a fresh region.
    func writeHeader(_ base: UnsafeMutableRawPointer) {
        base.storeBytes(of: Self.magic.littleEndian, toByteOffset: 0, as: UInt64.self)
        base.storeBytes(of: Self.version.littleEndian, toByteOffset: 8, as: UInt32.self)
        base.storeBytes(of: UInt32(slots).littleEndian, toByteOffset: 12, as: UInt32.self)
        base.storeBytes(of: UInt64(requestCapacity).littleEndian, toByteOffset: 16, as: UInt64.self)
        base.storeBytes(of: UInt64(responseCapacity).littleEndian, toByteOffset: 24, as: UInt64.self)
    }

    /// Reads and checks the header of a region of `count` bytes.
    static func readHeader(_ base: UnsafeRawPointer, count: Int, path: String) throws -> SlotLayout {
        guard count >= line else { throw TransportError.badRegion(path: path, reason: "is \(count) bytes, smaller than its header") }
        guard UInt64(littleEndian: base.loadUnaligned(fromByteOffset: 0, as: UInt64.self)) == magic else {
            throw TransportError.badRegion(path: path, reason: "is not an EaaS slot region (bad magic)")
        }
        let version = UInt32(littleEndian: base.loadUnaligned(fromByteOffset: 8, as: UInt32.self))
        guard version == Self.version else { throw TransportError.badRegion(path: path, reason: "has layout version \(version); this build reads \(Self.version)") }
        let slots = Int(UInt32(littleEndian: base.loadUnaligned(fromByteOffset: 12, as: UInt32.self)))
        let request = UInt64(littleEndian: base.loadUnaligned(fromByteOffset: 16, as: UInt64.self))
        let response = UInt64(littleEndian: base.loadUnaligned(fromByteOffset: 24, as: UInt64.self))
        guard slots >= 1, slots <= 1 << 16, request >= 1, response >= 1, request < 1 << 40, response < 1 << 40 else {
            throw TransportError.badRegion(path: path, reason: "declares \(slots) slots of \(request)/\(response) bytes")
        }
        let layout = SlotLayout(slots: slots, requestCapacity: Int(request), responseCapacity: Int(response))
        guard layout.totalSize <= count else {
            throw TransportError.badRegion(path: path, reason: "needs \(layout.totalSize) bytes for its slots but is \(count)")
        }
        return layout
    }
}

/// The state a flag word holds: the slot's epoch (16 bits), the sequence (47 bits), and a low bit
/// set while the writer is still writing the bytes behind it (a seqlock), so a reader can tell a
/// finished message from a torn one.
///
/// The epoch changes each time the server hands the slot to a new client, so a write that a
/// departed client still had on its way can never pass for the new client's request or answer.
enum SlotFlag {
    /// Largest sequence a flag holds.
    static let maxSequence: UInt64 = 1 << 47 - 1

    static func writing(_ sequence: UInt64, epoch: UInt16) -> UInt64 { ready(sequence, epoch: epoch) | 1 }
    static func ready(_ sequence: UInt64, epoch: UInt16) -> UInt64 { UInt64(epoch) << 48 | (sequence & maxSequence) << 1 }
    /// The sequence of a finished message of `epoch`, or nil while it is being written, when it
    /// never was, or when it belongs to another epoch.
    static func readySequence(_ value: UInt64, epoch: UInt16) -> UInt64? {
        guard value & 1 == 0, UInt16(value >> 48) == epoch else { return nil }
        let sequence = value >> 1 & maxSequence
        return sequence == 0 ? nil : sequence
    }
}
