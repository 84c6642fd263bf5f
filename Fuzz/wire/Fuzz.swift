// Fuzz target `wire`: the data plane's frame decoders (Sources/Transport/Wire) and FrameConnection's
// header parsing and buffering (Sources/Transport/TCP/FrameConnection.swift, over SocketStub.swift).
//
// The input is the byte stream a peer sends. It is decoded (1) as one whole frame with
// `Frame.decode` under the default `WireLimits`, and (2) as a stream through `FrameConnection`, the
// way a server reads a connection: small limits until a valid handshake, then the defaults with
// oversized frames read past (`skipUpTo`), every frame decoded with `Frame.decode`.
//
// Besides crashes it checks one property: every frame that decodes re-encodes with the project's
// encoders to exactly its input bytes (the format has one encoding per message), and every element
// a decoded view offers can be read (ASan checks the reads stay inside the input).
import Transport

/// Where the reads of a decoded view go, so that the optimiser keeps them.
nonisolated(unsafe) var sink: Float = 0

/// A server's limits before the handshake (HandshakeGate keeps the payload to about a token's size).
let unauthenticated: WireLimits = {
    var limits = WireLimits()
    limits.maxPayload = 2048
    return limits
}()

/// A client session's limits after the handshake: ClientSession caps the payload at its largest
/// request, here 1 KiB … 1 MiB as the handshake's max_batch_tokens picks (so that inputs reach both
/// reading past whole oversized frames and growing the read buffer).
func authenticated(_ hello: Handshake) -> WireLimits {
    var limits = WireLimits()
    limits.maxPayload = 1 << (10 + Int(hello.maxBatchTokens % 11))
    return limits
}

@_cdecl("LLVMFuzzerTestOneInput")
public func fuzz(_ data: UnsafePointer<UInt8>, _ size: Int) -> CInt {
    let input = UnsafeRawBufferPointer(start: data, count: size)
    if let frame = try? Frame.decode(input) { check(frame, encodes: input) }

    let connection = FrameConnection(socket: Socket(peerSent: input), limits: unauthenticated)
    defer { connection.close() }
    for _ in 0..<64 {
        do {
            guard let bytes = try connection.readFrame() else { break }
            require(bytes.count >= FrameHeader.size && bytes.count <= FrameHeader.size + connection.limits.maxPayload,
                         "readFrame returned \(bytes.count) bytes, outside its limits")
            guard let frame = try? Frame.decode(bytes, limits: connection.limits) else { continue }
            check(frame, encodes: bytes)
            if case .handshake(let hello) = frame, connection.limits == unauthenticated {
                connection.limits = authenticated(hello)
                connection.skipUpTo = WireLimits().maxPayload
            }
        } catch let oversized as FrameConnection.Oversized {
            require(oversized.header.payloadLength > connection.limits.maxPayload && oversized.prefix.count <= 64,
                         "Oversized for a frame within the limits")
        } catch {
            break
        }
    }
    return 0
}

/// Re-encodes `frame` and compares with the bytes it was decoded from.
func check(_ frame: Frame, encodes original: UnsafeRawBufferPointer) {
    let again: [UInt8]
    switch frame {
    case .handshake(let message): again = FrameEncoder.encode(message)
    case .handshakeReply(let message): again = FrameEncoder.encode(message)
    case .error(let message): again = FrameEncoder.encode(message)
    case .goAway(let message): again = FrameEncoder.encode(message)
    case .request(let view):
        let header = view.header
        var ids: [UInt16] = [], weights: [Float] = []
        for token in 0..<header.tokens {
            for slot in 0..<header.slotsPerToken {
                ids.append(view.expert(token: token, slot: slot) ?? RequestHeader.emptySlot)
                weights.append(view.weight(token: token, slot: slot))
            }
            for index in 0..<header.hidden { sink += view.state(token: token, index: index) }
        }
        var bytes = [UInt8](repeating: 0xA5, count: header.frameSize)
        let written = ids.withUnsafeBufferPointer { ids in
            weights.withUnsafeBufferPointer { weights in
                bytes.withUnsafeMutableBytes { FrameEncoder.encodeRequest(header, ids: ids, weights: weights, states: view.states, into: $0) }
            }
        }
        require(written == header.frameSize, "encodeRequest wrote \(written) of \(header.frameSize) bytes")
        again = bytes
    case .response(let view):
        let header = view.header
        let sums = (0..<(header.tokens * header.hidden)).map { view.sum($0) }
        var bytes = [UInt8](repeating: 0xA5, count: header.frameSize)
        let written = sums.withUnsafeBufferPointer { sums in bytes.withUnsafeMutableBytes { FrameEncoder.encodeResponse(header, sums: sums, into: $0) } }
        require(written == header.frameSize, "encodeResponse wrote \(written) of \(header.frameSize) bytes")
        again = bytes
    }
    if !again.elementsEqual(original) {
        fatalError("a decoded \(frame) frame re-encodes to other bytes (\(again.count) bytes, was \(original.count))")
    }
}
