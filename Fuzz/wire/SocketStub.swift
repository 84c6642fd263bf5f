// Compiled into the fuzz build's `Transport` module in place of Sources/Transport/TCP/Socket.swift and
// TransportError.swift (which need swift-system): just what FrameConnection.swift uses, reading the
// fuzz input as the bytes a peer sent. Keep it in step with FrameConnection's use of `Socket`.

/// The peer's bytes, served to `readExactly` as recv would: all of them, then a clean close.
public final class Socket: @unchecked Sendable {
    public let label = "fuzz-peer"
    private let bytes: UnsafeRawBufferPointer
    private var offset = 0

    public init(peerSent bytes: UnsafeRawBufferPointer) { self.bytes = bytes }

    /// Bytes the peer sent that were not read yet.
    public var unread: Int { bytes.count - offset }

    public static func connect(host: String, port: Int, timeout: Duration = .seconds(5)) throws -> Socket {
        throw TransportError.system(operation: "connect", path: "\(host):\(port)", errno: .connectionReset)
    }

    /// Socket.readExactly's contract: false if the peer closed before the first byte, an error if
    /// it closed part-way.
    public func readExactly(_ buffer: UnsafeMutableRawBufferPointer) throws -> Bool {
        if buffer.isEmpty { return true }
        if offset == bytes.count { return false }
        guard buffer.count <= bytes.count - offset else {
            offset = bytes.count
            throw TransportError.system(operation: "recv (peer closed mid-frame)", path: label, errno: .connectionReset)
        }
        buffer.copyMemory(from: UnsafeRawBufferPointer(rebasing: bytes[offset..<(offset + buffer.count)]))
        offset += buffer.count
        return true
    }

    public func writeAll(_ bytes: UnsafeRawBufferPointer) throws {}
    public func close() {}
}

/// swift-system's `Errno`, reduced to the one value FrameConnection names.
public struct Errno: Error, Sendable, Equatable {
    public let rawValue: Int32
    public static let connectionReset = Errno(rawValue: 104)
}

public enum TransportError: Error, Sendable, Equatable {
    case system(operation: String, path: String, errno: Errno)
}
