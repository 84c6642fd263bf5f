/// Bounds-checked little-endian reading of a frame. Every read either returns a value inside the
/// buffer or throws a `WireError` naming the field, so no input can make a decoder read past its
/// bytes.
struct ByteReader {
    let bytes: UnsafeRawBufferPointer
    private(set) var offset = 0
    /// What is being decoded, for error messages ("request", "handshake", …).
    let frame: String

    init(_ bytes: UnsafeRawBufferPointer, frame: String) {
        self.bytes = bytes
        self.frame = frame
    }

    var remaining: Int { bytes.count - offset }

    mutating func need(_ count: Int, _ field: String) throws {
        guard count >= 0, count <= remaining else {
            throw WireError.truncated(frame: frame, field: field, needed: count, available: remaining)
        }
    }

    mutating func u8(_ field: String) throws -> UInt8 {
        try need(1, field)
        defer { offset += 1 }
        return bytes[offset]
    }

    mutating func u16(_ field: String) throws -> UInt16 {
        try need(2, field)
        defer { offset += 2 }
        return UInt16(littleEndian: bytes.loadUnaligned(fromByteOffset: offset, as: UInt16.self))
    }

    mutating func u32(_ field: String) throws -> UInt32 {
        try need(4, field)
        defer { offset += 4 }
        return UInt32(littleEndian: bytes.loadUnaligned(fromByteOffset: offset, as: UInt32.self))
    }

    mutating func u64(_ field: String) throws -> UInt64 {
        try need(8, field)
        defer { offset += 8 }
        return UInt64(littleEndian: bytes.loadUnaligned(fromByteOffset: offset, as: UInt64.self))
    }

    /// A u32 count or size that must lie in `range`.
    mutating func u32(_ field: String, in range: ClosedRange<Int>) throws -> Int {
        let value = Int(try u32(field))
        guard range.contains(value) else {
            throw WireError.invalid(frame: frame, field: field, reason: "\(value) is outside \(range.lowerBound)...\(range.upperBound)")
        }
        return value
    }

    /// A u16 length that must not exceed `limit`.
    mutating func u16(_ field: String, atMost limit: Int) throws -> Int {
        let value = Int(try u16(field))
        guard value <= limit else { throw WireError.invalid(frame: frame, field: field, reason: "\(value) exceeds \(limit)") }
        return value
    }

    /// `count` bytes in place (no copy).
    mutating func slice(_ count: Int, _ field: String) throws -> UnsafeRawBufferPointer {
        try need(count, field)
        defer { offset += count }
        return UnsafeRawBufferPointer(rebasing: bytes[offset..<(offset + count)])
    }

    /// A UTF-8 string of `count` bytes.
    mutating func string(_ count: Int, _ field: String) throws -> String {
        let raw = try slice(count, field)
        guard let text = String(validating: raw, as: UTF8.self) else {
            throw WireError.invalid(frame: frame, field: field, reason: "is not valid UTF-8")
        }
        return text
    }

    /// Fails unless every byte was consumed: a frame with trailing bytes is malformed.
    func expectEnd() throws {
        guard remaining == 0 else {
            throw WireError.invalid(frame: frame, field: "length", reason: "has \(remaining) unexpected trailing bytes")
        }
    }
}

/// Little-endian writing into a caller's buffer (no allocation). The caller sizes the buffer with
/// the message's `encodedSize`; writing past it is a programming error and traps.
struct ByteWriter {
    let bytes: UnsafeMutableRawBufferPointer
    private(set) var offset = 0

    init(_ bytes: UnsafeMutableRawBufferPointer) { self.bytes = bytes }

    mutating func u8(_ value: UInt8) {
        precondition(offset + 1 <= bytes.count, "frame buffer too small")
        bytes[offset] = value
        offset += 1
    }

    mutating func u16(_ value: UInt16) { put(value.littleEndian) }
    mutating func u32(_ value: UInt32) { put(value.littleEndian) }
    mutating func u64(_ value: UInt64) { put(value.littleEndian) }

    mutating func raw(_ source: UnsafeRawBufferPointer) {
        precondition(offset + source.count <= bytes.count, "frame buffer too small")
        if let base = source.baseAddress, !source.isEmpty {
            (bytes.baseAddress! + offset).copyMemory(from: base, byteCount: source.count)
        }
        offset += source.count
    }

    mutating func raw(_ source: [UInt8]) { source.withUnsafeBytes { raw($0) } }

    private mutating func put<T: FixedWidthInteger>(_ value: T) {
        let size = MemoryLayout<T>.size
        precondition(offset + size <= bytes.count, "frame buffer too small")
        bytes.storeBytes(of: value, toByteOffset: offset, as: T.self)
        offset += size
    }
}

/// A frame that cannot be used, and why. The message names the frame and the field.
public enum WireError: Error, CustomStringConvertible, Sendable, Equatable {
    case truncated(frame: String, field: String, needed: Int, available: Int)
    case invalid(frame: String, field: String, reason: String)

    /// The field the decoder stopped at.
    public var field: String {
        switch self {
        case let .truncated(_, field, _, _), let .invalid(_, field, _): field
        }
    }

    public var description: String {
        switch self {
        case let .truncated(frame, field, needed, available):
            "\(frame) frame: field '\(field)' needs \(needed) bytes but only \(available) remain"
        case let .invalid(frame, field, reason):
            "\(frame) frame: field '\(field)' \(reason)"
        }
    }
}
