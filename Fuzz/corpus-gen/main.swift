// Writes the generated part of the seed corpus (run by Fuzz/make-corpus, compiled together with
// Sources/Transport/Wire/*.swift): frames made by the project's own encoders, and small
// safetensors files. Usage: corpus-gen OUTPUT-DIRECTORY (writes OUTPUT/wire, OUTPUT/safetensors).
import Foundation

let output = URL(fileURLWithPath: CommandLine.arguments.count > 1 ? CommandLine.arguments[1] : "Fuzz/corpus")

func write(_ target: String, _ name: String, _ bytes: [UInt8]) {
    let directory = output.appendingPathComponent(target)
    try! FileManager.default.createDirectory(at: directory, withIntermediateDirectories: true)
    try! Data(bytes).write(to: directory.appendingPathComponent(name))
}

// MARK: wire

let token32 = (0..<32).map { UInt8(truncatingIfNeeded: $0 &* 37 &+ 11) }
let verbsInfo = (0..<40).map { UInt8(truncatingIfNeeded: $0 &* 13) }  // qpn, psn, gid, rkey, address
let digest = (0..<16).map { UInt8(truncatingIfNeeded: 0xC0 &+ $0) }

let handshakes: [(String, Handshake)] = [
    ("handshake-tcp", Handshake(clientID: 1, maxBatchTokens: 256, poolToken: token32)),
    ("handshake-shm", Handshake(clientID: 0x1234_5678_9ABC, maxBatchTokens: 64, poolToken: Array("s3cret".utf8), backend: .shm)),
    ("handshake-verbs", Handshake(clientID: 7, maxBatchTokens: 4096, poolToken: token32, backend: .verbs, backendInfo: verbsInfo)),
    ("handshake-empty-token", Handshake(clientID: 2, maxBatchTokens: 1, poolToken: [])),
]
let replies: [(String, HandshakeReply)] = [
    ("reply-tcp", HandshakeReply(serverID: 9, hidden: 32, dtype: .f32, backend: .tcp,
                                 experts: [HostedExpert(layer: 0, expert: 0), HostedExpert(layer: 0, expert: 1), HostedExpert(layer: 1, expert: 3)],
                                 slot: 0, backendInfo: [], modelDigest: digest)),
    ("reply-shm", HandshakeReply(serverID: 10, hidden: 2048, dtype: .bf16, backend: .shm, experts: [HostedExpert(layer: 3, expert: 60)],
                                 slot: 3, epoch: 7, backendInfo: Array("/dev/shm/eaas-slots-10".utf8))),
    ("reply-verbs", HandshakeReply(serverID: 11, hidden: 7168, dtype: .f16, backend: .verbs,
                                   experts: (0..<8).map { HostedExpert(layer: 2, expert: UInt16($0)) }, slot: 1, epoch: 1, backendInfo: verbsInfo,
                                   modelDigest: digest)),
]
let errors: [(String, ErrorFrame)] = [
    ("error-unauthorized", ErrorFrame(sequence: 0, code: .unauthorized, message: "pool token does not match")),
    ("error-shape", ErrorFrame(sequence: 42, code: .shapeMismatch, message: "hidden 16, this server serves 32")),
    ("error-invalid-values", ErrorFrame(sequence: 43, code: .invalidValues, message: "")),
    ("error-unicode", ErrorFrame(sequence: 44, code: .internalError, message: "ünïcödé ✓ 🚀")),
]
let goAways: [(String, GoAway)] = [("goaway", GoAway(deadlineMilliseconds: 5000, reason: "draining: SIGTERM"))]

/// A request frame: `experts[token]` lists the experts of each token (nil: an empty slot).
func request(sequence: UInt64, layer: UInt16, dtype: WireDType, hidden: Int, experts: [[UInt16?]]) -> [UInt8] {
    let slots = experts[0].count
    let header = RequestHeader(sequence: sequence, layer: layer, dtype: dtype, slotsPerToken: slots, tokens: experts.count, hidden: hidden)
    let ids = experts.flatMap { $0.map { $0 ?? RequestHeader.emptySlot } }
    let weights = experts.flatMap { $0.enumerated().map { $1 == nil ? Float(0) : 1 / Float($0 + 2) } }
    let states = (0..<(header.stateBytes)).map { UInt8(truncatingIfNeeded: $0 &* 29) }
    var frame = [UInt8](repeating: 0, count: header.frameSize)
    ids.withUnsafeBufferPointer { ids in
        weights.withUnsafeBufferPointer { weights in
            states.withUnsafeBytes { states in
                frame.withUnsafeMutableBytes { _ = FrameEncoder.encodeRequest(header, ids: ids, weights: weights, states: states, into: $0) }
            }
        }
    }
    return frame
}

func response(sequence: UInt64, tokens: Int, hidden: Int) -> [UInt8] {
    let header = ResponseHeader(sequence: sequence, tokens: tokens, hidden: hidden)
    let sums = (0..<(tokens * hidden)).map { Float($0) * 0.25 - 1 }
    var frame = [UInt8](repeating: 0, count: header.frameSize)
    sums.withUnsafeBufferPointer { sums in frame.withUnsafeMutableBytes { _ = FrameEncoder.encodeResponse(header, sums: sums, into: $0) } }
    return frame
}

let requests: [(String, [UInt8])] = [
    ("request-f32", request(sequence: 1, layer: 0, dtype: .f32, hidden: 4, experts: [[3]])),
    ("request-bf16-empty-slot", request(sequence: 2, layer: 1, dtype: .bf16, hidden: 8, experts: [[0, 5], [7, nil]])),
    ("request-f16-padded", request(sequence: 3, layer: 2, dtype: .f16, hidden: 2, experts: [[1, 2, 3], [4, nil, 6], [nil, nil, 9]])),
    ("request-8-slots", request(sequence: 4, layer: 27, dtype: .bf16, hidden: 16, experts: [(0..<8).map { UInt16($0 * 8) }])),
]
let responses: [(String, [UInt8])] = [
    ("response-1x4", response(sequence: 1, tokens: 1, hidden: 4)),
    ("response-2x3", response(sequence: 2, tokens: 2, hidden: 3)),
]

for (name, frame) in handshakes { write("wire", name, FrameEncoder.encode(frame)) }
for (name, frame) in replies { write("wire", name, FrameEncoder.encode(frame)) }
for (name, frame) in errors { write("wire", name, FrameEncoder.encode(frame)) }
for (name, frame) in goAways { write("wire", name, FrameEncoder.encode(frame)) }
for (name, frame) in requests + responses { write("wire", name, frame) }

// Streams, as a server reads a connection: a handshake, then requests (FrameConnection's path).
let hello = FrameEncoder.encode(handshakes[0].1)
write("wire", "stream-handshake-requests", hello + requests[0].1 + requests[1].1 + requests[2].1)
write("wire", "stream-handshake-goaway-error", hello + FrameEncoder.encode(goAways[0].1) + FrameEncoder.encode(errors[1].1))
// An oversized request after the handshake, read past whole (skipUpTo), then a good one. The
// wire target's limit after this handshake is 1 << (10 + 256 % 11) = 8 KiB.
var oversized = Array(requests[0].1[0..<16])
oversized.withUnsafeMutableBytes { $0.storeBytes(of: UInt32(9000).littleEndian, toByteOffset: 8, as: UInt32.self) }
write("wire", "stream-oversized-request", hello + oversized + [UInt8](repeating: 0x5A, count: 9000) + requests[0].1)
// Near misses: a handshake one byte short, a request with a non-zero reserved word, a version-1 header.
write("wire", "near-handshake-truncated", Array(hello.dropLast()))
var reserved = requests[1].1
reserved[16 + 20] = 1
write("wire", "near-request-reserved", reserved)
var version1 = hello
version1[4] = 1
write("wire", "near-version-1", version1)

// MARK: safetensors

/// A safetensors file: `tensors` as (name, dtype, shape, element size) laid out in order, with
/// `metadata`, the header padded with `padding` spaces (the format allows trailing spaces).
/// `edit` rewrites the header text (for the near misses).
func safetensors(_ tensors: [(String, String, [Int], Int)], metadata: [String: String]? = nil, padding: Int = 0,
                 edit: (String) -> String = { $0 }) -> [UInt8] {
    var entries: [String] = []
    if let metadata {
        entries.append("\"__metadata__\":{" + metadata.sorted(by: { $0.key < $1.key }).map { "\"\($0.key)\":\"\($0.value)\"" }.joined(separator: ",") + "}")
    }
    var offset = 0
    for (name, dtype, shape, size) in tensors {
        let bytes = shape.reduce(size, *)
        entries.append("\"\(name)\":{\"dtype\":\"\(dtype)\",\"shape\":[\(shape.map(String.init).joined(separator: ","))],\"data_offsets\":[\(offset),\(offset + bytes)]}")
        offset += bytes
    }
    let header = Array(edit("{" + entries.joined(separator: ",") + "}").utf8) + [UInt8](repeating: 0x20, count: padding)
    var file = withUnsafeBytes(of: UInt64(header.count).littleEndian) { Array($0) } + header
    file += (0..<offset).map { UInt8(truncatingIfNeeded: $0 &* 7 &+ 1) }
    return file
}

write("safetensors", "f32-with-metadata", safetensors([("weight", "F32", [2, 3], 4)], metadata: ["format": "pt"]))
write("safetensors", "bf16-f16-experts", safetensors([
    ("model.layers.0.mlp.experts.0.down_proj.weight", "BF16", [4, 8], 2),
    ("model.layers.0.mlp.experts.0.gate_proj.weight", "BF16", [8, 4], 2),
    ("model.layers.0.mlp.experts.0.up_proj.weight", "F16", [8, 4], 2),
    ("model.layers.0.mlp.gate.weight", "F32", [2, 4], 4),
]))
write("safetensors", "every-dtype", safetensors([
    ("f64", "F64", [2], 8), ("f32", "F32", [2], 4), ("f16", "F16", [2], 2), ("bf16", "BF16", [2], 2),
    ("f8e4m3", "F8_E4M3", [2], 1), ("f8e5m2", "F8_E5M2", [2], 1), ("i64", "I64", [2], 8), ("i32", "I32", [2], 4),
    ("i16", "I16", [2], 2), ("i8", "I8", [2], 1), ("u64", "U64", [2], 8), ("u32", "U32", [2], 4), ("u16", "U16", [2], 2),
    ("u8", "U8", [2], 1), ("bool", "BOOL", [2], 1),
]))
write("safetensors", "scalar-and-empty", safetensors([("scalar", "F32", [], 4), ("empty", "F32", [0, 3], 4), ("ids", "I64", [3], 8)], padding: 5))
write("safetensors", "empty-header", safetensors([]))
// Near misses: overlapping tensors, a hole, a size that does not match the shape, a header length past the end.
write("safetensors", "near-overlap", safetensors([("a", "F32", [2], 4), ("b", "F32", [2], 4)]) { $0.replacingOccurrences(of: "[8,16]", with: "[4,12]") })
write("safetensors", "near-hole", safetensors([("a", "U8", [4], 1), ("b", "U8", [4], 1)]) { $0.replacingOccurrences(of: "[4,8]", with: "[5,9]") } + [0])
write("safetensors", "near-wrong-size", safetensors([("a", "I32", [3], 4)]) { $0.replacingOccurrences(of: "[3]", with: "[4]") })
var pastEnd = safetensors([("a", "U8", [1], 1)])
pastEnd[0] = 0xFF
write("safetensors", "near-length-past-end", pastEnd)
