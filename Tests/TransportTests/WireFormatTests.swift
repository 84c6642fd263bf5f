import Foundation
import Testing
@testable import Transport

/// A request of `tokens` tokens with two slots each (the second empty for odd tokens), bf16 states.
func sampleRequest(tokens: Int = 3, hidden: Int = 5, sequence: UInt64 = 42) -> [UInt8] {
    let header = RequestHeader(sequence: sequence, layer: 7, dtype: .bf16, slotsPerToken: 2, tokens: tokens, hidden: hidden)
    var ids: [UInt16] = [], weights: [Float] = []
    for t in 0..<tokens {
        ids += [UInt16(t % 4), t % 2 == 1 ? RequestHeader.emptySlot : UInt16(4 + t % 3)]
        weights += [0.25 * Float(t + 1), t % 2 == 1 ? 0 : 0.5]
    }
    let states = (0..<(tokens * hidden)).map { UInt16(0x3f80 + $0) }  // bf16 1.0, 1.0078, …
    var frame = [UInt8](repeating: 0xAA, count: header.frameSize)
    let written = ids.withUnsafeBufferPointer { i in
        weights.withUnsafeBufferPointer { w in
            states.withUnsafeBytes { s in frame.withUnsafeMutableBytes { FrameEncoder.encodeRequest(header, ids: i, weights: w, states: s, into: $0) } }
        }
    }
    precondition(written == header.frameSize)
    return frame
}

func sampleResponse() -> [UInt8] {
    let header = ResponseHeader(sequence: 9, tokens: 2, hidden: 3)
    let sums: [Float] = [1, -2, 3.5, 0, .greatestFiniteMagnitude, -0.125]
    var frame = [UInt8](repeating: 0, count: header.frameSize)
    _ = sums.withUnsafeBufferPointer { s in frame.withUnsafeMutableBytes { FrameEncoder.encodeResponse(header, sums: s, into: $0) } }
    return frame
}

let sampleHandshake = Handshake(clientID: 0x0123_4567_89ab_cdef, maxBatchTokens: 512, poolToken: Array("s3cret-pool".utf8),
                                backend: .verbs, backendInfo: [1, 2, 3, 4, 5])
let sampleReply = HandshakeReply(serverID: 77, hidden: 4096, dtype: .bf16, backend: .shm,
                                 experts: [HostedExpert(layer: 0, expert: 3), HostedExpert(layer: 1, expert: 3)], slot: 5,
                                 backendInfo: Array("/dev/shm/eaas-pod-3".utf8))
let sampleError = ErrorFrame(sequence: 42, code: .unknownExpert, message: "expert 9 of layer 7 is not hosted here (hosts 3)")
let sampleGoAway = GoAway(deadlineMilliseconds: 30_000, reason: "SIGTERM: draining")

/// Every valid sample frame, by name.
let samples: [(String, [UInt8])] = [
    ("handshake", FrameEncoder.encode(sampleHandshake)), ("handshake reply", FrameEncoder.encode(sampleReply)),
    ("request", sampleRequest()), ("response", sampleResponse()),
    ("error", FrameEncoder.encode(sampleError)), ("goaway", FrameEncoder.encode(sampleGoAway)),
]

func decode(_ bytes: [UInt8], limits: WireLimits = WireLimits()) throws -> Frame {
    try bytes.withUnsafeBytes { try Frame.decode($0, limits: limits) }
}

@Suite("Wire format")
struct WireFormatTests {
    @Test("Handshake, reply, error and GOAWAY frames decode to what was encoded")
    func smallFramesRoundTrip() throws {
        guard case .handshake(let h) = try decode(FrameEncoder.encode(sampleHandshake)) else { Issue.record("not a handshake"); return }
        #expect(h == sampleHandshake)
        guard case .handshakeReply(let r) = try decode(FrameEncoder.encode(sampleReply)) else { Issue.record("not a reply"); return }
        #expect(r == sampleReply)
        guard case .error(let e) = try decode(FrameEncoder.encode(sampleError)) else { Issue.record("not an error"); return }
        #expect(e == sampleError)
        guard case .goAway(let g) = try decode(FrameEncoder.encode(sampleGoAway)) else { Issue.record("not a goaway"); return }
        #expect(g == sampleGoAway)
    }

    @Test("A request decodes in place: header, expert slots, weights and hidden-state bytes")
    func requestRoundTrip() throws {
        let bytes = sampleRequest(tokens: 3, hidden: 5)
        #expect(Array(bytes.prefix(4)) == Array("EAAS".utf8))
        try bytes.withUnsafeBytes { raw in
            guard case .request(let view) = try Frame.decode(raw) else { Issue.record("not a request"); return }
            #expect(view.header == RequestHeader(sequence: 42, layer: 7, dtype: .bf16, slotsPerToken: 2, tokens: 3, hidden: 5))
            #expect(view.expert(token: 0, slot: 0) == 0 && view.expert(token: 0, slot: 1) == 4)
            #expect(view.expert(token: 1, slot: 0) == 1 && view.expert(token: 1, slot: 1) == nil)
            #expect(view.weight(token: 2, slot: 0) == 0.75 && view.weight(token: 1, slot: 1) == 0)
            #expect(view.states.count == 3 * 5 * 2)
            #expect(view.states.loadUnaligned(fromByteOffset: 2 * 14, as: UInt16.self) == 0x3f80 + 14)
            // Zero copy: the states point into the frame's own bytes.
            #expect(view.states.baseAddress! >= raw.baseAddress! && view.states.baseAddress! < raw.baseAddress! + raw.count)
        }
    }

    @Test("A response decodes its f32 sums exactly")
    func responseRoundTrip() throws {
        try sampleResponse().withUnsafeBytes { raw in
            guard case .response(let view) = try Frame.decode(raw) else { Issue.record("not a response"); return }
            #expect(view.header == ResponseHeader(sequence: 9, tokens: 2, hidden: 3))
            #expect((0..<6).map(view.sum) == [1, -2, 3.5, 0, .greatestFiniteMagnitude, -0.125])
        }
    }

    @Test("Every truncation of every frame kind is refused with an error, never a crash", arguments: samples.map(\.0))
    func truncationsAreRefused(kind: String) {
        let bytes = samples.first { $0.0 == kind }!.1
        for length in 0..<bytes.count {
            #expect(throws: WireError.self, "\(kind) cut to \(length) bytes") { try decode(Array(bytes.prefix(length))) }
        }
        #expect(throws: WireError.self, "\(kind) with a trailing byte") { try decode(bytes + [0]) }
        // The same truncations with the header's length made to agree, so that the payload's own
        // field checks are what refuses them.
        for length in FrameHeader.size..<bytes.count {
            var cut = Array(bytes.prefix(length))
            let payload = UInt32(length - FrameHeader.size)
            cut.replaceSubrange(8..<12, with: withUnsafeBytes(of: payload.littleEndian) { Array($0) })
            #expect(throws: WireError.self, "\(kind) payload cut to \(payload) bytes") { try decode(cut) }
        }
    }

    @Test("Random bytes and random corruptions of valid frames give an error or a valid frame, never a crash")
    func randomInputNeverCrashes() {
        var state: UInt64 = 0x5eed
        func next() -> UInt64 {
            state = state &* 6_364_136_223_846_793_005 &+ 1_442_695_040_888_963_407
            return state >> 11
        }
        var refused = 0
        for round in 0..<6000 {
            var bytes: [UInt8]
            if round % 3 == 0 {
                bytes = (0..<Int(next() % 96)).map { _ in UInt8(truncatingIfNeeded: next()) }
            } else {
                bytes = samples[Int(next() % UInt64(samples.count))].1
                for _ in 0...(next() % 3) {
                    let i = Int(next() % UInt64(bytes.count))
                    bytes[i] = UInt8(truncatingIfNeeded: next())
                }
            }
            do { _ = try decode(bytes) } catch is WireError { refused += 1 } catch { Issue.record("unexpected error type \(error)") }
        }
        #expect(refused > 3000)
    }

    /// A valid sample with bytes at `offset` (from the frame start) replaced, and the field the error must name.
    static let corruptions: [(String, String, Int, [UInt8], String)] = [
        ("bad magic", "request", 0, [0x47, 0x45, 0x54, 0x20], "'magic'"),
        ("newer version", "request", 4, [9, 0], "'version' is 9; this build speaks version 2"),
        ("unknown kind", "request", 6, [99, 0], "'kind' 99 is not a known frame kind"),
        ("reserved header word", "goaway", 12, [1], "'reserved' is not zero"),
        ("unknown dtype", "request", 16 + 10, [9], "'dtype' 9 is not f32"),
        ("zero slots", "request", 16 + 11, [0], "'slots_per_token' 0 is outside"),
        ("zero tokens", "request", 16 + 12, [0, 0, 0, 0], "'tokens' 0 is outside"),
        ("tokens disagree with length", "request", 16 + 12, [4, 0, 0, 0], "'length' is"),
        ("hidden disagrees with length", "request", 16 + 16, [6, 0, 0, 0], "'length' is"),
        ("request reserved word", "request", 16 + 20, [1, 0, 0, 0], "'reserved' is not zero"),
        ("expert twice in a token", "request", 16 + 24 + 2, [0, 0], "token 0 names expert 0 twice"),
        ("emptied slot keeps its weight", "request", 16 + 24 + 4, [0xFF, 0xFF], "token 1 slot 0 is empty but has weight 0.5"),
        ("weight in an empty slot", "request", 16 + 24 + 12 + 12, [0, 0, 0x80, 0x3f], "token 1 slot 1 is empty but has weight 1.0"),
        ("NaN weight", "request", 16 + 24 + 12, [0, 0, 0xc0, 0x7f], "token 0 expert 0 has weight nan"),
        ("infinite weight", "request", 16 + 24 + 12 + 4, [0, 0, 0x80, 0x7f], "token 0 expert 4 has weight inf"),
        ("zero hidden in reply", "handshake reply", 16 + 8, [0, 0, 0, 0], "'hidden' 0 is outside"),
        ("unknown backend", "handshake reply", 16 + 13, [7], "'backend' 7 is not shm"),
        ("no hosted experts", "handshake reply", 16 + 14, [0, 0, 0, 0], "'expert_count' 0 is outside"),
        ("zero max batch", "handshake", 16 + 8, [0, 0, 0, 0], "'max_batch_tokens' must be at least 1"),
        ("unknown error code", "error", 16 + 8, [0xee, 0], "'code' 238 is not a known error code"),
        ("invalid UTF-8 message", "error", 16 + 12, [0xff, 0xfe], "'message' is not valid UTF-8"),
    ]

    @Test("Each bad field is refused with an error naming it", arguments: corruptions.map(\.0))
    func badFieldIsNamed(name: String) {
        let (_, kind, offset, replacement, fragment) = Self.corruptions.first { $0.0 == name }!
        var bytes = samples.first { $0.0 == kind }!.1
        bytes.replaceSubrange(offset..<(offset + replacement.count), with: replacement)
        #expect {
            try decode(bytes)
        } throws: { error in
            "\(error)".contains(fragment)
        }
    }

    @Test("A token whose slots are all empty, or an expert id's padding that is not zero, is refused")
    func emptyTokenAndPadding() {
        let header = RequestHeader(sequence: 1, layer: 0, dtype: .f32, slotsPerToken: 1, tokens: 3, hidden: 1)
        let ids: [UInt16] = [2, RequestHeader.emptySlot, 5]
        let weights: [Float] = [1, 0, 1]
        let states: [Float] = [0.5, 0.5, 0.5]
        var bytes = [UInt8](repeating: 0, count: header.frameSize)
        _ = ids.withUnsafeBufferPointer { i in weights.withUnsafeBufferPointer { w in states.withUnsafeBytes { s in
            bytes.withUnsafeMutableBytes { FrameEncoder.encodeRequest(header, ids: i, weights: w, states: s, into: $0) } } } }
        #expect { try decode(bytes) } throws: { "\($0)".contains("token 1 names no expert") }
        bytes[16 + 24 + 2] = 0x02  // token 1 names expert 2: valid again, but now the padding after 3 ids is dirty
        bytes[16 + 24 + 6] = 0x01
        #expect { try decode(bytes) } throws: { "\($0)".contains("padding byte 6 is not zero") }
    }

    @Test("Limits are enforced before any length is trusted")
    func limitsBound() {
        var limits = WireLimits()
        limits.maxPayload = 64
        #expect { try decode(sampleRequest(tokens: 3, hidden: 40), limits: limits) } throws: { "\($0)".contains("exceeds the limit of 64 bytes") }
        limits = WireLimits()
        limits.maxTokens = 2
        #expect { try decode(sampleRequest(tokens: 3), limits: limits) } throws: { "\($0)".contains("'tokens' 3 is outside 1...2") }
        limits = WireLimits()
        limits.maxText = 4
        #expect { try decode(FrameEncoder.encode(sampleHandshake), limits: limits) } throws: { "\($0)".contains("'pool_token_length' 11 exceeds 4") }
    }

    @Test("Pool tokens compare equal only when identical")
    func poolTokens() {
        let token = Array("s3cret".utf8)
        #expect(PoolToken.matches(token, token))
        #expect(!PoolToken.matches(Array("s3creT".utf8), token))
        #expect(!PoolToken.matches(Array("s3cre".utf8), token))
        #expect(!PoolToken.matches(token + [0], token))
        #expect(!PoolToken.matches([UInt8](repeating: 0, count: 256), []))
        #expect(PoolToken.matches([], []))
    }
}
