/// One decoded frame of any kind. Request and response views point into the decoded bytes.
public enum Frame {
    case handshake(Handshake)
    case handshakeReply(HandshakeReply)
    case request(RequestView)
    case response(ResponseView)
    case error(ErrorFrame)
    case goAway(GoAway)

    /// Decodes a whole frame (16-byte header + payload). The header's length must match the bytes
    /// exactly; every field is validated (see each message's decoder).
    public static func decode(_ bytes: UnsafeRawBufferPointer, limits: WireLimits = WireLimits()) throws -> Frame {
        let header = try FrameHeader.decode(bytes, maxPayload: limits.maxPayload)
        guard bytes.count - FrameHeader.size == header.payloadLength else {
            throw WireError.invalid(frame: "header", field: "length", reason: "says \(header.payloadLength) payload bytes but the frame holds \(bytes.count - FrameHeader.size)")
        }
        let payload = UnsafeRawBufferPointer(rebasing: bytes[FrameHeader.size...])
        switch header.kind {
        case .handshake:
            var r = ByteReader(payload, frame: "handshake")
            return .handshake(try Handshake.decode(&r, limits: limits))
        case .handshakeReply:
            var r = ByteReader(payload, frame: "handshake reply")
            return .handshakeReply(try HandshakeReply.decode(&r, limits: limits))
        case .request:
            var r = ByteReader(payload, frame: "request")
            return .request(try RequestView.decode(&r, limits: limits))
        case .response:
            var r = ByteReader(payload, frame: "response")
            return .response(try ResponseView.decode(&r, limits: limits))
        case .error:
            var r = ByteReader(payload, frame: "error")
            return .error(try ErrorFrame.decode(&r, limits: limits))
        case .goAway:
            var r = ByteReader(payload, frame: "goaway")
            return .goAway(try GoAway.decode(&r, limits: limits))
        }
    }
}

/// Encoders. The `into:` forms write into a caller's buffer (the hot path: a registered slot or a
/// reused send buffer) and return the bytes written; the others return a new array.
public enum FrameEncoder {
    public static func encode(_ message: Handshake) -> [UInt8] {
        encodeSmall(.handshake, size: message.payloadSize) { message.encodePayload(into: &$0) }
    }

    public static func encode(_ message: HandshakeReply) -> [UInt8] {
        encodeSmall(.handshakeReply, size: message.payloadSize) { message.encodePayload(into: &$0) }
    }

    public static func encode(_ message: ErrorFrame) -> [UInt8] {
        encodeSmall(.error, size: message.payloadSize) { message.encodePayload(into: &$0) }
    }

    public static func encode(_ message: GoAway) -> [UInt8] {
        encodeSmall(.goAway, size: message.payloadSize) { message.encodePayload(into: &$0) }
    }

    /// Writes a request frame into `buffer` (at least `header.frameSize` bytes).
    /// - Parameters:
    ///   - ids: `[tokens, slots]` expert ids, `RequestHeader.emptySlot` for unused slots.
    ///   - weights: `[tokens, slots]` gate weights (0 in unused slots).
    ///   - states: `[tokens, hidden]` hidden states, already in `header.dtype`.
    @discardableResult
    public static func encodeRequest(
        _ header: RequestHeader, ids: UnsafeBufferPointer<UInt16>, weights: UnsafeBufferPointer<Float>,
        states: UnsafeRawBufferPointer, into buffer: UnsafeMutableRawBufferPointer
    ) -> Int {
        precondition(states.count == header.stateBytes, "request states do not match the header")
        let offset = encodeRequestRouting(header, ids: ids, weights: weights, into: buffer)
        if let source = states.baseAddress { (buffer.baseAddress! + offset).copyMemory(from: source, byteCount: states.count) }
        return offset + states.count
    }

    /// Writes everything of a request frame but its hidden states into `buffer` (at least
    /// `header.frameSize` bytes) and returns where the `[tokens, hidden]` states go, so that a
    /// sender can gather them straight into the frame (or the slot) without a staging copy.
    public static func encodeRequestRouting(
        _ header: RequestHeader, ids: UnsafeBufferPointer<UInt16>, weights: UnsafeBufferPointer<Float>,
        into buffer: UnsafeMutableRawBufferPointer
    ) -> Int {
        let pairs = header.tokens * header.slotsPerToken
        precondition(ids.count == pairs && weights.count == pairs, "request arrays do not match the header")
        precondition(buffer.count >= header.frameSize, "request buffer too small")
        var w = ByteWriter(buffer)
        FrameHeader(kind: .request, payloadLength: header.payloadSize).encode(into: &w)
        w.u64(header.sequence)
        w.u16(header.layer)
        w.u8(header.dtype.rawValue)
        w.u8(UInt8(header.slotsPerToken))
        w.u32(UInt32(header.tokens))
        w.u32(UInt32(header.hidden))
        w.u32(0)
        for id in ids { w.u16(id) }
        for _ in (pairs * 2)..<header.idBytes { w.u8(0) }
        for weight in weights { w.u32(weight.bitPattern) }
        return w.offset
    }

    /// Writes a response frame into `buffer` (at least `header.frameSize` bytes); `sums` is `[tokens, hidden]`.
    @discardableResult
    public static func encodeResponse(_ header: ResponseHeader, sums: UnsafeBufferPointer<Float>, into buffer: UnsafeMutableRawBufferPointer) -> Int {
        precondition(sums.count == header.tokens * header.hidden, "sums do not match the header")
        let offset = encodeResponseHeader(header, into: buffer)
        // Little-endian hosts: f32 bytes as they are.
        if let source = sums.baseAddress { (buffer.baseAddress! + offset).copyMemory(from: source, byteCount: sums.count * 4) }
        return header.frameSize
    }

    /// Writes a response frame's headers into `buffer` (at least `header.frameSize` bytes) and
    /// returns where its `[tokens, hidden]` f32 sums go, so that a server can compute straight
    /// into the frame.
    public static func encodeResponseHeader(_ header: ResponseHeader, into buffer: UnsafeMutableRawBufferPointer) -> Int {
        precondition(buffer.count >= header.frameSize, "response buffer too small")
        var w = ByteWriter(buffer)
        FrameHeader(kind: .response, payloadLength: header.payloadSize).encode(into: &w)
        w.u64(header.sequence)
        w.u32(UInt32(header.tokens))
        w.u32(UInt32(header.hidden))
        return w.offset
    }

    private static func encodeSmall(_ kind: FrameHeader.Kind, size: Int, _ body: (inout ByteWriter) -> Void) -> [UInt8] {
        var bytes = [UInt8](repeating: 0, count: FrameHeader.size + size)
        bytes.withUnsafeMutableBytes { raw in
            var w = ByteWriter(raw)
            FrameHeader(kind: kind, payloadLength: size).encode(into: &w)
            body(&w)
            precondition(w.offset == raw.count, "encoded size mismatch for \(kind)")
        }
        return bytes
    }
}
