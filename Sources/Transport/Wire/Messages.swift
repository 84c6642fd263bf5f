/// The frames of the EaaS data plane (version 1). All integers are little-endian; every decoder
/// checks each field against `WireLimits` and the frame's exact length before returning, and a
/// failure is a `WireError` naming the frame and the field.

/// A client's opening frame: who it is, the pool's shared secret, the largest batch it sends, and
/// the backend it asks for with that backend's connection data (its queue pair and registered
/// memory for `verbs`; nothing for `shm` and `tcp`).
public struct Handshake: Sendable, Equatable {
    public var clientID: UInt64
    public var maxBatchTokens: UInt32
    /// The pool token (shared secret). Compare it with `PoolToken.matches`, never with `==`.
    public var poolToken: [UInt8]
    /// The backend the client wants; a server that cannot offer it answers with `tcp`.
    public var backend: BackendKind
    public var backendInfo: [UInt8]

    public init(clientID: UInt64, maxBatchTokens: UInt32, poolToken: [UInt8], backend: BackendKind = .tcp, backendInfo: [UInt8] = []) {
        self.clientID = clientID
        self.maxBatchTokens = maxBatchTokens
        self.poolToken = poolToken
        self.backend = backend
        self.backendInfo = backendInfo
    }

    public var payloadSize: Int { 8 + 4 + 2 + poolToken.count + 1 + 4 + backendInfo.count }

    func encodePayload(into w: inout ByteWriter) {
        w.u64(clientID)
        w.u32(maxBatchTokens)
        w.u16(UInt16(poolToken.count))
        w.raw(poolToken)
        w.u8(backend.rawValue)
        w.u32(UInt32(backendInfo.count))
        w.raw(backendInfo)
    }

    static func decode(_ r: inout ByteReader, limits: WireLimits) throws -> Handshake {
        let client = try r.u64("client_id")
        let maxBatch = try r.u32("max_batch_tokens")
        guard maxBatch >= 1 else { throw WireError.invalid(frame: r.frame, field: "max_batch_tokens", reason: "must be at least 1") }
        let length = try r.u16("pool_token_length", atMost: limits.maxText)
        let token = [UInt8](try r.slice(length, "pool_token"))
        let backend = try BackendKind.decode(&r)
        let infoLength = try r.u32("backend_info_length", in: 0...limits.maxText)
        let info = [UInt8](try r.slice(infoLength, "backend_info"))
        try r.expectEnd()
        return Handshake(clientID: client, maxBatchTokens: maxBatch, poolToken: token, backend: backend, backendInfo: info)
    }
}

/// The transport a server offers a client in its handshake reply.
public enum BackendKind: UInt8, Sendable, CaseIterable, CustomStringConvertible {
    case shm = 1
    case tcp = 2
    case verbs = 3

    public var description: String {
        switch self {
        case .shm: "shm"
        case .tcp: "tcp"
        case .verbs: "verbs"
        }
    }

    static func decode(_ r: inout ByteReader) throws -> BackendKind {
        let raw = try r.u8("backend")
        guard let backend = BackendKind(rawValue: raw) else { throw WireError.invalid(frame: r.frame, field: "backend", reason: "\(raw) is not shm (1), tcp (2) or verbs (3)") }
        return backend
    }
}

/// One expert a server hosts: `(MoE layer, expert id)`.
public struct HostedExpert: Sendable, Hashable, Comparable {
    public var layer: UInt16
    public var expert: UInt16

    public init(layer: UInt16, expert: UInt16) {
        self.layer = layer
        self.expert = expert
    }

    public static func < (a: HostedExpert, b: HostedExpert) -> Bool { (a.layer, a.expert) < (b.layer, b.expert) }
}

/// The server's acceptance: what it hosts, the shape it expects, and the slot it gives the client.
public struct HandshakeReply: Sendable, Equatable {
    public var serverID: UInt64
    public var hidden: UInt32
    public var dtype: WireDType
    public var backend: BackendKind
    public var experts: [HostedExpert]
    /// The client's slot index in the server's backend, and the slot's epoch, which the client
    /// puts in every slot flag (for `tcp`, both 0).
    public var slot: UInt32
    public var epoch: UInt16
    /// Backend-specific connection data (shm file path, verbs qpn/psn/gid/rkey/address).
    public var backendInfo: [UInt8]
    /// Which checkpoint the server's experts come from (MoE's `ModelDigest`, 16 bytes), or empty
    /// for a server with no model (synthetic experts). A client of a model refuses a server
    /// whose digest is not its own.
    public var modelDigest: [UInt8]

    public init(serverID: UInt64, hidden: UInt32, dtype: WireDType, backend: BackendKind, experts: [HostedExpert], slot: UInt32,
                epoch: UInt16 = 0, backendInfo: [UInt8], modelDigest: [UInt8] = []) {
        precondition(modelDigest.count <= Self.maxDigest, "a model digest is at most \(Self.maxDigest) bytes")
        self.modelDigest = modelDigest
        self.serverID = serverID
        self.hidden = hidden
        self.dtype = dtype
        self.backend = backend
        self.experts = experts
        self.slot = slot
        self.epoch = epoch
        self.backendInfo = backendInfo
    }

    /// Longest model digest on the wire.
    public static let maxDigest = 64

    public var payloadSize: Int { 8 + 4 + 1 + 1 + 4 + 4 * experts.count + 4 + 2 + 4 + backendInfo.count + 1 + modelDigest.count }

    func encodePayload(into w: inout ByteWriter) {
        w.u64(serverID)
        w.u32(hidden)
        w.u8(dtype.rawValue)
        w.u8(backend.rawValue)
        w.u32(UInt32(experts.count))
        for e in experts {
            w.u16(e.layer)
            w.u16(e.expert)
        }
        w.u32(slot)
        w.u16(epoch)
        w.u32(UInt32(backendInfo.count))
        w.raw(backendInfo)
        w.u8(UInt8(modelDigest.count))
        w.raw(modelDigest)
    }

    static func decode(_ r: inout ByteReader, limits: WireLimits) throws -> HandshakeReply {
        let server = try r.u64("server_id")
        let hidden = UInt32(try r.u32("hidden", in: 1...limits.maxHidden))
        let rawType = try r.u8("dtype")
        guard let dtype = WireDType(rawValue: rawType) else { throw WireError.invalid(frame: r.frame, field: "dtype", reason: "\(rawType) is not f32 (1), bf16 (2) or f16 (3)") }
        let backend = try BackendKind.decode(&r)
        let count = try r.u32("expert_count", in: 1...limits.maxHostedExperts)
        try r.need(4 * count, "experts")
        var experts: [HostedExpert] = []
        experts.reserveCapacity(count)
        for _ in 0..<count { experts.append(HostedExpert(layer: try r.u16("experts.layer"), expert: try r.u16("experts.expert"))) }
        let slot = try r.u32("slot")
        let epoch = try r.u16("epoch")
        let infoLength = try r.u32("backend_info_length", in: 0...limits.maxText)
        let info = [UInt8](try r.slice(infoLength, "backend_info"))
        let digestLength = Int(try r.u8("model_digest_length"))
        guard digestLength <= maxDigest else { throw WireError.invalid(frame: r.frame, field: "model_digest_length", reason: "\(digestLength) exceeds \(maxDigest)") }
        let digest = [UInt8](try r.slice(digestLength, "model_digest"))
        try r.expectEnd()
        return HandshakeReply(serverID: server, hidden: hidden, dtype: dtype, backend: backend, experts: experts, slot: slot, epoch: epoch,
                              backendInfo: info, modelDigest: digest)
    }
}

/// Why a server refused a request, a handshake or a frame.
public enum WireErrorCode: UInt16, Sendable, CaseIterable {
    case malformedFrame = 1
    case unauthorized = 2
    case versionMismatch = 3
    case unknownExpert = 4
    case shapeMismatch = 5
    case tooManyTokens = 6
    case invalidValues = 7
    case overloaded = 8
    case draining = 9
    case internalError = 10
}

/// An error answer: for the request `sequence` (0 when not about a request), a code and a message.
public struct ErrorFrame: Sendable, Equatable {
    public var sequence: UInt64
    public var code: WireErrorCode
    public var message: String

    public init(sequence: UInt64, code: WireErrorCode, message: String) {
        self.sequence = sequence
        self.code = code
        // Long messages are cut at a character boundary to fit the 16-bit length.
        var text = message
        while text.utf8.count > Int(UInt16.max) { text.removeLast() }
        self.message = text
    }

    public var payloadSize: Int { 8 + 2 + 2 + message.utf8.count }

    func encodePayload(into w: inout ByteWriter) {
        w.u64(sequence)
        w.u16(code.rawValue)
        w.u16(UInt16(message.utf8.count))
        w.raw(Array(message.utf8))
    }

    static func decode(_ r: inout ByteReader, limits: WireLimits) throws -> ErrorFrame {
        let sequence = try r.u64("sequence")
        let rawCode = try r.u16("code")
        guard let code = WireErrorCode(rawValue: rawCode) else { throw WireError.invalid(frame: r.frame, field: "code", reason: "\(rawCode) is not a known error code") }
        let length = try r.u16("message_length", atMost: limits.maxText)
        let message = try r.string(length, "message")
        try r.expectEnd()
        return ErrorFrame(sequence: sequence, code: code, message: message)
    }
}

/// The server is draining: send nothing new; what is in flight will still be answered until
/// `deadlineMilliseconds` from now.
public struct GoAway: Sendable, Equatable {
    public var deadlineMilliseconds: UInt32
    public var reason: String

    public init(deadlineMilliseconds: UInt32, reason: String) {
        self.deadlineMilliseconds = deadlineMilliseconds
        var text = reason
        while text.utf8.count > Int(UInt16.max) { text.removeLast() }
        self.reason = text
    }

    public var payloadSize: Int { 4 + 2 + reason.utf8.count }

    func encodePayload(into w: inout ByteWriter) {
        w.u32(deadlineMilliseconds)
        w.u16(UInt16(reason.utf8.count))
        w.raw(Array(reason.utf8))
    }

    static func decode(_ r: inout ByteReader, limits: WireLimits) throws -> GoAway {
        let deadline = try r.u32("deadline_ms")
        let length = try r.u16("reason_length", atMost: limits.maxText)
        let reason = try r.string(length, "reason")
        try r.expectEnd()
        return GoAway(deadlineMilliseconds: deadline, reason: reason)
    }
}
