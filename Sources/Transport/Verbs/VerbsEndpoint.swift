/// What one side of a `verbs` link tells the other in the handshake (`backendInfo`): how to reach
/// its queue pair (lid, gid, qpn, psn, mtu) and its registered slot memory (rkey, address, length),
/// and the slot capacities it was laid out for. The client sends its own in `Handshake`; the
/// server answers with its own in `HandshakeReply`.
///
/// Encoding (63 bytes, little-endian): lid u16 | gid 16 B | qpn u32 | psn u32 | mtu u8 |
/// rkey u32 | address u64 | length u64 | request capacity u64 | response capacity u64.
public struct VerbsEndpoint: Sendable, Equatable {
    public static let encodedSize = 63

    public var lid: UInt16
    /// The port's GID (needed on RoCE and across subnets; all zero on a plain InfiniBand subnet).
    public var gid: [UInt8]
    /// Queue pair number and starting packet sequence number (24 bits each).
    public var qpn: UInt32
    public var psn: UInt32
    /// Path MTU as `ibv_mtu` (1 = 256 B … 5 = 4096 B).
    public var mtu: UInt8
    public var rkey: UInt32
    /// Start of the slot memory the peer writes into, and its length in bytes.
    public var address: UInt64
    public var length: UInt64
    public var requestCapacity: UInt64
    public var responseCapacity: UInt64

    public init(lid: UInt16, gid: [UInt8], qpn: UInt32, psn: UInt32, mtu: UInt8, rkey: UInt32, address: UInt64, length: UInt64,
                requestCapacity: UInt64, responseCapacity: UInt64) {
        precondition(gid.count == 16, "a GID is 16 bytes")
        self.lid = lid
        self.gid = gid
        self.qpn = qpn
        self.psn = psn
        self.mtu = mtu
        self.rkey = rkey
        self.address = address
        self.length = length
        self.requestCapacity = requestCapacity
        self.responseCapacity = responseCapacity
    }

    /// The slot layout these capacities describe (one slot).
    var layout: SlotLayout { SlotLayout(slots: 1, requestCapacity: Int(requestCapacity), responseCapacity: Int(responseCapacity)) }

    public func encoded() -> [UInt8] {
        var bytes = [UInt8](repeating: 0, count: Self.encodedSize)
        bytes.withUnsafeMutableBytes { raw in
            var w = ByteWriter(raw)
            w.u16(lid)
            w.raw(gid)
            w.u32(qpn)
            w.u32(psn)
            w.u8(mtu)
            w.u32(rkey)
            w.u64(address)
            w.u64(length)
            w.u64(requestCapacity)
            w.u64(responseCapacity)
        }
        return bytes
    }

    /// Decodes and checks an endpoint from a handshake's `backendInfo`.
    public static func decode(_ bytes: [UInt8], frame: String) throws -> VerbsEndpoint {
        try bytes.withUnsafeBytes { raw in
            var r = ByteReader(raw, frame: frame)
            let lid = try r.u16("verbs.lid")
            let gid = [UInt8](try r.slice(16, "verbs.gid"))
            let qpn = try r.u32("verbs.qpn")
            let psn = try r.u32("verbs.psn")
            let mtu = try r.u8("verbs.mtu")
            let rkey = try r.u32("verbs.rkey")
            let address = try r.u64("verbs.address")
            let length = try r.u64("verbs.length")
            let request = try r.u64("verbs.request_capacity")
            let response = try r.u64("verbs.response_capacity")
            try r.expectEnd()
            guard qpn < 1 << 24, psn < 1 << 24 else { throw WireError.invalid(frame: frame, field: "verbs.qpn", reason: "qpn \(qpn) or psn \(psn) exceeds 24 bits") }
            guard (1...5).contains(mtu) else { throw WireError.invalid(frame: frame, field: "verbs.mtu", reason: "\(mtu) is not an ibv_mtu (1...5)") }
            guard address != 0, length >= 1, length < 1 << 40, address <= UInt64.max - length else {
                throw WireError.invalid(frame: frame, field: "verbs.length", reason: "memory of \(length) bytes at \(address) is not usable")
            }
            guard request >= 1, response >= 1, request < 1 << 40, response < 1 << 40 else {
                throw WireError.invalid(frame: frame, field: "verbs.request_capacity", reason: "capacities \(request)/\(response) are out of range")
            }
            return VerbsEndpoint(lid: lid, gid: gid, qpn: qpn, psn: psn, mtu: mtu, rkey: rkey, address: address, length: length,
                                 requestCapacity: request, responseCapacity: response)
        }
    }
}
