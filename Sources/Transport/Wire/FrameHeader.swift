/// Every frame starts with this 16-byte header, little-endian:
///
/// | bytes | field |
/// |---|---|
/// | 0..<4 | magic `EAAS` (0x45 0x41 0x41 0x53) |
/// | 4..<6 | protocol version |
/// | 6..<8 | frame kind |
/// | 8..<12 | payload length in bytes (after the header) |
/// | 12..<16 | reserved, zero |
public struct FrameHeader: Sendable, Equatable {
    public static let size = 16
    public static let magic: UInt32 = 0x5341_4145  // "EAAS" read as a little-endian u32
    /// The version this build speaks. 2: the handshake reply carries the server's model digest.
    public static let currentVersion: UInt16 = 2

    public enum Kind: UInt16, Sendable, CaseIterable {
        case handshake = 1
        case handshakeReply = 2
        case request = 3
        case response = 4
        case error = 5
        case goAway = 6
    }

    public var version: UInt16
    public var kind: Kind
    public var payloadLength: Int

    public init(kind: Kind, payloadLength: Int, version: UInt16 = FrameHeader.currentVersion) {
        self.version = version
        self.kind = kind
        self.payloadLength = payloadLength
    }

    /// Reads and checks a header: magic, a version this build speaks, a known kind, a payload no
    /// larger than `maxPayload`, a zero reserved word.
    public static func decode(_ bytes: UnsafeRawBufferPointer, maxPayload: Int) throws -> FrameHeader {
        var reader = ByteReader(bytes, frame: "header")
        let magic = try reader.u32("magic")
        guard magic == Self.magic else {
            throw WireError.invalid(frame: "header", field: "magic", reason: "is 0x\(String(magic, radix: 16)), not EAAS: not an EaaS peer or a desynchronised stream")
        }
        let version = try reader.u16("version")
        guard version == currentVersion else {
            throw WireError.invalid(frame: "header", field: "version", reason: "is \(version); this build speaks version \(currentVersion)")
        }
        let rawKind = try reader.u16("kind")
        guard let kind = Kind(rawValue: rawKind) else {
            throw WireError.invalid(frame: "header", field: "kind", reason: "\(rawKind) is not a known frame kind")
        }
        let length = Int(try reader.u32("length"))
        guard length <= maxPayload else {
            throw WireError.invalid(frame: "header", field: "length", reason: "\(length) exceeds the limit of \(maxPayload) bytes")
        }
        guard try reader.u32("reserved") == 0 else {
            throw WireError.invalid(frame: "header", field: "reserved", reason: "is not zero")
        }
        return FrameHeader(kind: kind, payloadLength: length, version: version)
    }

    func encode(into writer: inout ByteWriter) {
        writer.u32(Self.magic)
        writer.u16(version)
        writer.u16(kind.rawValue)
        writer.u32(UInt32(payloadLength))
        writer.u32(0)
    }
}

/// Element types of hidden states on the wire.
public enum WireDType: UInt8, Sendable, CaseIterable {
    case f32 = 1
    case bf16 = 2
    case f16 = 3

    public var byteSize: Int { self == .f32 ? 4 : 2 }
}
