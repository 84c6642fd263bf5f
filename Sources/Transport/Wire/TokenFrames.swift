/// The request a client sends a server for one MoE-layer step: the tokens whose experts the server
/// hosts, each with up to `slotsPerToken` (expert id, gate weight) pairs, and their hidden states.
///
/// Payload layout (offsets in bytes):
///
/// | offset | field |
/// |---|---|
/// | 0 | sequence u64 |
/// | 8 | MoE layer u16 |
/// | 10 | dtype u8 (`WireDType`) |
/// | 11 | slots per token u8 |
/// | 12 | tokens u32 |
/// | 16 | hidden u32 |
/// | 20 | reserved u32 = 0 |
/// | 24 | expert ids `[tokens, slots]` u16, `0xFFFF` = empty slot; padded with zeros to 4 bytes |
/// | … | gate weights `[tokens, slots]` f32 (0 in empty slots) |
/// | … | hidden states `[tokens, hidden]` of dtype |
public struct RequestHeader: Sendable, Equatable {
    /// Marks an unused expert slot.
    public static let emptySlot: UInt16 = 0xFFFF
    static let fixedSize = 24

    public var sequence: UInt64
    public var layer: UInt16
    public var dtype: WireDType
    public var slotsPerToken: Int
    public var tokens: Int
    public var hidden: Int

    public init(sequence: UInt64, layer: UInt16, dtype: WireDType, slotsPerToken: Int, tokens: Int, hidden: Int) {
        self.sequence = sequence
        self.layer = layer
        self.dtype = dtype
        self.slotsPerToken = slotsPerToken
        self.tokens = tokens
        self.hidden = hidden
    }

    var idBytes: Int { (tokens * slotsPerToken * 2 + 3) / 4 * 4 }
    var weightsOffset: Int { Self.fixedSize + idBytes }
    var statesOffset: Int { weightsOffset + tokens * slotsPerToken * 4 }
    /// Bytes of hidden states.
    public var stateBytes: Int { tokens * hidden * dtype.byteSize }
    /// Payload bytes (after the frame header).
    public var payloadSize: Int { statesOffset + stateBytes }
    /// Whole frame bytes.
    public var frameSize: Int { FrameHeader.size + payloadSize }
}

/// A decoded request, pointing into the bytes it was decoded from (no copy): valid while they are.
public struct RequestView {
    public let header: RequestHeader
    /// `[tokens, slots]` u16 little-endian.
    public let ids: UnsafeRawBufferPointer
    /// `[tokens, slots]` f32 little-endian.
    public let weights: UnsafeRawBufferPointer
    /// `[tokens, hidden]` in `header.dtype`.
    public let states: UnsafeRawBufferPointer

    /// The expert in slot `slot` of token `token`, or nil for an empty slot.
    public func expert(token: Int, slot: Int) -> UInt16? {
        let id = UInt16(littleEndian: ids.loadUnaligned(fromByteOffset: 2 * (token * header.slotsPerToken + slot), as: UInt16.self))
        return id == RequestHeader.emptySlot ? nil : id
    }

    /// The gate weight in slot `slot` of token `token`.
    public func weight(token: Int, slot: Int) -> Float {
        Float(bitPattern: UInt32(littleEndian: weights.loadUnaligned(fromByteOffset: 4 * (token * header.slotsPerToken + slot), as: UInt32.self)))
    }

    /// Element `index` of token `token`'s hidden state, widened to f32.
    public func state(token: Int, index: Int) -> Float {
        let i = token * header.hidden + index
        switch header.dtype {
        case .f32: return Float(bitPattern: UInt32(littleEndian: states.loadUnaligned(fromByteOffset: 4 * i, as: UInt32.self)))
        case .bf16: return Float(bitPattern: UInt32(UInt16(littleEndian: states.loadUnaligned(fromByteOffset: 2 * i, as: UInt16.self))) << 16)
        case .f16: return Float(Float16(bitPattern: UInt16(littleEndian: states.loadUnaligned(fromByteOffset: 2 * i, as: UInt16.self))))
        }
    }

    /// A copy of this request's routing (ids and weights) in `scratch`, validated again there, with
    /// the states still read in place. A server uses it for requests in shared or remotely written
    /// memory: a client may overwrite those bytes at any moment, and the checks must hold for the
    /// routing that the computation will actually read.
    func withRoutingCopied(to scratch: UnsafeMutableRawBufferPointer, frame: String) throws -> RequestView {
        let count = ids.count + weights.count
        precondition(scratch.count >= count, "routing scratch too small")
        scratch.baseAddress!.copyMemory(from: ids.baseAddress!, byteCount: ids.count)
        (scratch.baseAddress! + ids.count).copyMemory(from: weights.baseAddress!, byteCount: weights.count)
        let copy = RequestView(header: header, ids: UnsafeRawBufferPointer(rebasing: UnsafeRawBufferPointer(scratch)[0..<ids.count]),
                               weights: UnsafeRawBufferPointer(rebasing: UnsafeRawBufferPointer(scratch)[ids.count..<count]), states: states)
        try copy.validateSlots(frame: frame)
        return copy
    }

    static func decode(_ r: inout ByteReader, limits: WireLimits) throws -> RequestView {
        let sequence = try r.u64("sequence")
        let layer = try r.u16("layer")
        let rawType = try r.u8("dtype")
        guard let dtype = WireDType(rawValue: rawType) else { throw WireError.invalid(frame: r.frame, field: "dtype", reason: "\(rawType) is not f32 (1), bf16 (2) or f16 (3)") }
        let slots = Int(try r.u8("slots_per_token"))
        guard slots >= 1, slots <= limits.maxSlotsPerToken else {
            throw WireError.invalid(frame: r.frame, field: "slots_per_token", reason: "\(slots) is outside 1...\(limits.maxSlotsPerToken)")
        }
        let tokens = try r.u32("tokens", in: 1...limits.maxTokens)
        let hidden = try r.u32("hidden", in: 1...limits.maxHidden)
        guard try r.u32("reserved") == 0 else { throw WireError.invalid(frame: r.frame, field: "reserved", reason: "is not zero") }
        let header = RequestHeader(sequence: sequence, layer: layer, dtype: dtype, slotsPerToken: slots, tokens: tokens, hidden: hidden)
        guard r.bytes.count == header.payloadSize else {
            throw WireError.invalid(frame: r.frame, field: "length",
                reason: "is \(r.bytes.count) bytes but \(tokens) tokens × \(slots) slots × hidden \(hidden) of \(dtype) need \(header.payloadSize)")
        }
        let ids = try r.slice(header.idBytes, "expert_ids")
        let weights = try r.slice(tokens * slots * 4, "weights")
        let states = try r.slice(header.stateBytes, "hidden_states")
        try r.expectEnd()
        let view = RequestView(header: header, ids: ids, weights: weights, states: states)
        try view.validateSlots(frame: r.frame)
        return view
    }

    /// Every token names at least one expert, no expert twice, finite weights, zero weight in
    /// empty slots, zero padding.
    func validateSlots(frame: String) throws {
        let slots = header.slotsPerToken
        for t in 0..<header.tokens {
            var used = 0
            for s in 0..<slots {
                let w = weight(token: t, slot: s)
                guard let id = expert(token: t, slot: s) else {
                    guard w == 0 else { throw WireError.invalid(frame: frame, field: "weights", reason: "token \(t) slot \(s) is empty but has weight \(w)") }
                    continue
                }
                used += 1
                guard w.isFinite else { throw WireError.invalid(frame: frame, field: "weights", reason: "token \(t) expert \(id) has weight \(w)") }
                for other in 0..<s where expert(token: t, slot: other) == id {
                    throw WireError.invalid(frame: frame, field: "expert_ids", reason: "token \(t) names expert \(id) twice")
                }
            }
            guard used > 0 else { throw WireError.invalid(frame: frame, field: "expert_ids", reason: "token \(t) names no expert") }
        }
        for pad in (header.tokens * slots * 2)..<ids.count where ids[pad] != 0 {
            throw WireError.invalid(frame: frame, field: "expert_ids", reason: "padding byte \(pad) is not zero")
        }
    }
}

/// The answer to a request: per token, the gate-weighted sum of the outputs of the experts the
/// request named for it, in f32.
///
/// Payload: sequence u64 | tokens u32 | hidden u32 | sums `[tokens, hidden]` f32.
public struct ResponseHeader: Sendable, Equatable {
    static let fixedSize = 16
    public var sequence: UInt64
    public var tokens: Int
    public var hidden: Int

    public init(sequence: UInt64, tokens: Int, hidden: Int) {
        self.sequence = sequence
        self.tokens = tokens
        self.hidden = hidden
    }

    public var payloadSize: Int { Self.fixedSize + tokens * hidden * 4 }
    public var frameSize: Int { FrameHeader.size + payloadSize }
}

/// A decoded response pointing into its bytes (no copy).
public struct ResponseView {
    public let header: ResponseHeader
    /// `[tokens, hidden]` f32 little-endian.
    public let sums: UnsafeRawBufferPointer

    /// Element `index` of the sums.
    public func sum(_ index: Int) -> Float {
        Float(bitPattern: UInt32(littleEndian: sums.loadUnaligned(fromByteOffset: 4 * index, as: UInt32.self)))
    }

    static func decode(_ r: inout ByteReader, limits: WireLimits) throws -> ResponseView {
        let sequence = try r.u64("sequence")
        let tokens = try r.u32("tokens", in: 1...limits.maxTokens)
        let hidden = try r.u32("hidden", in: 1...limits.maxHidden)
        let header = ResponseHeader(sequence: sequence, tokens: tokens, hidden: hidden)
        guard r.bytes.count == header.payloadSize else {
            throw WireError.invalid(frame: r.frame, field: "length", reason: "is \(r.bytes.count) bytes but \(tokens) tokens × hidden \(hidden) need \(header.payloadSize)")
        }
        let sums = try r.slice(tokens * hidden * 4, "sums")
        try r.expectEnd()
        return ResponseView(header: header, sums: sums)
    }
}
