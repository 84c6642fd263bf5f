/// Frames over one TCP connection: each frame is self-delimiting (its 16-byte header carries the
/// payload length), so frames are written back to back and requests can be pipelined. Reads reuse
/// one growing buffer: a returned frame is valid until the next `readFrame()`.
public final class FrameConnection: @unchecked Sendable {
    public let socket: Socket
    /// What the next frames may be. A server keeps these small until the peer's handshake is
    /// accepted, so an unauthenticated peer cannot make it allocate much.
    public var limits: WireLimits
    /// Frames larger than `limits.maxPayload` but at most this big are read past rather than
    /// ending the stream: `readFrame` throws `Oversized` with the frame's first bytes, so a server
    /// can refuse that one request and go on. 0 (the default) ends the stream on any such frame.
    public var skipUpTo = 0
    private var buffer: UnsafeMutableRawBufferPointer

    /// A frame over `limits.maxPayload` (and within `skipUpTo`) that was read past.
    public struct Oversized: Error, CustomStringConvertible {
        public let header: FrameHeader
        /// The payload's first bytes (up to 64).
        public let prefix: [UInt8]
        public let limit: Int
        public var description: String { "a \(header.kind) frame of \(header.payloadLength) bytes exceeds the limit of \(limit) bytes" }
    }

    public init(socket: Socket, limits: WireLimits = WireLimits()) {
        self.socket = socket
        self.limits = limits
        buffer = .allocate(byteCount: 64 << 10, alignment: 64)
    }

    /// Connects to a server.
    public static func connect(host: String, port: Int, limits: WireLimits = WireLimits(), timeout: Duration = .seconds(5)) throws -> FrameConnection {
        FrameConnection(socket: try Socket.connect(host: host, port: port, timeout: timeout), limits: limits)
    }

    /// The next whole frame's bytes (header included), or nil when the peer closed cleanly between
    /// frames. A header that fails validation (bad magic, version, kind or length) throws: the stream
    /// cannot be trusted past it. A payload is read whole even when it later fails to decode, so
    /// the stream stays in step and the caller can answer with an error frame and go on.
    public func readFrame() throws -> UnsafeRawBufferPointer? {
        let head = UnsafeMutableRawBufferPointer(rebasing: buffer[0..<FrameHeader.size])
        guard try socket.readExactly(head) else { return nil }
        let header = try FrameHeader.decode(UnsafeRawBufferPointer(head), maxPayload: max(limits.maxPayload, skipUpTo))
        if header.payloadLength > limits.maxPayload { throw try skip(header) }
        let total = FrameHeader.size + header.payloadLength
        if total > buffer.count {
            let larger = UnsafeMutableRawBufferPointer.allocate(byteCount: max(total, buffer.count * 2), alignment: 64)
            larger.copyMemory(from: UnsafeRawBufferPointer(head))
            buffer.deallocate()
            buffer = larger
        }
        if header.payloadLength > 0 {
            guard try socket.readExactly(UnsafeMutableRawBufferPointer(rebasing: buffer[FrameHeader.size..<total])) else {
                throw TransportError.system(operation: "recv (peer closed mid-frame)", path: socket.label, errno: .connectionReset)
            }
        }
        return UnsafeRawBufferPointer(rebasing: buffer[0..<total])
    }

    /// Reads past the payload of an oversized frame through the buffer it already has (no
    /// allocation), keeping its first bytes; returns the error describing it.
    private func skip(_ header: FrameHeader) throws -> Oversized {
        var left = header.payloadLength
        var prefix: [UInt8] = []
        while left > 0 {
            let chunk = UnsafeMutableRawBufferPointer(rebasing: buffer[0..<min(left, buffer.count)])
            guard try socket.readExactly(chunk) else {
                throw TransportError.system(operation: "recv (peer closed mid-frame)", path: socket.label, errno: .connectionReset)
            }
            if prefix.isEmpty { prefix = Array(chunk.prefix(64)) }
            left -= chunk.count
        }
        return Oversized(header: header, prefix: prefix, limit: limits.maxPayload)
    }

    /// Sends one or more whole frames.
    public func write(_ frame: UnsafeRawBufferPointer) throws { try socket.writeAll(frame) }

    /// Sends a frame held in an array.
    public func write(_ frame: [UInt8]) throws { try frame.withUnsafeBytes { try socket.writeAll($0) } }

    /// Closes the connection.
    public func close() { socket.close() }

    deinit { buffer.deallocate() }
}
