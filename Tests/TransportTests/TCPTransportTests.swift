import Foundation
import Testing
@testable import Transport

/// A real data-plane server with synthetic experts (expert e adds e to each state, so answers are
/// `expectedSums`), started on loopback. Stop it with `stop()`.
func startServer(token: String, experts: [HostedExpert] = (0..<9).map { HostedExpert(layer: 0, expert: UInt16($0)) }, hidden: Int = 4,
                 offerShm: Bool = true, id: UInt64 = 1) throws -> DataPlaneServer {
    var configuration = DataPlaneServer.Configuration(poolToken: Array(token.utf8), serverID: id)
    configuration.offerShm = offerShm
    configuration.slots = 8
    configuration.maxBatchTokens = 64
    let server = try DataPlaneServer(computer: SyntheticExperts(experts: experts, hidden: hidden, dtype: .f32), configuration: configuration)
    server.start()
    return server
}

/// Encodes a request of `tokens` tokens (two slots, the second empty on odd tokens), f32 states.
func tcpRequest(sequence: UInt64, tokens: Int, hidden: Int = 4, salt: Int = 0) -> (frame: [UInt8], expected: [Float]) {
    let slots = 2
    let ids = (0..<(tokens * slots)).map { $0 % slots == 1 && ($0 / slots) % 2 == 1 ? RequestHeader.emptySlot : UInt16(($0 + salt) % 9) }
    let weights = ids.enumerated().map { $0.element == RequestHeader.emptySlot ? Float(0) : Float($0.offset % 5 + 1) / 4 }
    let states = (0..<(tokens * hidden)).map { Float(($0 + salt) % 13) / 2 }
    let header = RequestHeader(sequence: sequence, layer: 0, dtype: .f32, slotsPerToken: slots, tokens: tokens, hidden: hidden)
    var frame = [UInt8](repeating: 0, count: header.frameSize)
    _ = ids.withUnsafeBufferPointer { i in weights.withUnsafeBufferPointer { w in states.withUnsafeBytes { s in
        frame.withUnsafeMutableBytes { FrameEncoder.encodeRequest(header, ids: i, weights: w, states: s, into: $0) } } } }
    return (frame, expectedSums(ids: ids, weights: weights, states: states, tokens: tokens, slots: slots, hidden: hidden))
}

@Suite("TCP transport on loopback")
struct TCPTransportTests {
    func handshake(_ connection: FrameConnection, token: String) throws -> Frame? {
        try connection.write(FrameEncoder.encode(Handshake(clientID: 7, maxBatchTokens: 64, poolToken: Array(token.utf8))))
        guard let bytes = try connection.readFrame() else { return nil }
        return try Frame.decode(bytes)
    }

    @Test("Pipelined requests from several clients are all answered, in order, with the right sums")
    func pipelinedClients() async throws {
        let server = try startServer(token: "pool-secret")
        defer { server.stop() }
        let port = server.port
        try await withThrowingTaskGroup(of: Int.self) { group in
            for client in 0..<3 {
                group.addTask {
                    let connection = try FrameConnection.connect(host: "127.0.0.1", port: port)
                    defer { connection.close() }
                    guard case .handshakeReply(let reply) = try handshake(connection, token: "pool-secret") else { return -1 }
                    #expect(reply.backend == .tcp && reply.hidden == 4)
                    var expected: [UInt64: [Float]] = [:]
                    var nextToSend: UInt64 = 1, answered = 0
                    let total: UInt64 = 60, window: UInt64 = 8
                    while answered < Int(total) {
                        // Keep up to `window` requests in flight on the one connection.
                        while nextToSend <= total, nextToSend - UInt64(answered) <= window {
                            let (frame, sums) = tcpRequest(sequence: nextToSend, tokens: 1 + Int(nextToSend % 7), salt: client)
                            expected[nextToSend] = sums
                            try connection.write(frame)
                            nextToSend += 1
                        }
                        guard let bytes = try connection.readFrame(), case .response(let response) = try Frame.decode(bytes) else { return -1 }
                        #expect(response.header.sequence == UInt64(answered + 1), "responses come back in request order")
                        let sums = expected.removeValue(forKey: response.header.sequence) ?? []
                        #expect((0..<sums.count).map(response.sum) == sums)
                        answered += 1
                    }
                    return answered
                }
            }
            var total = 0
            for try await count in group { total += count }
            #expect(total == 180)
        }
    }

    @Test("A wrong pool token is refused with a clear error and the connection is closed")
    func wrongToken() throws {
        let server = try startServer(token: "pool-secret")
        defer { server.stop() }
        let connection = try FrameConnection.connect(host: "127.0.0.1", port: server.port)
        defer { connection.close() }
        guard case .error(let error) = try handshake(connection, token: "guess") else { Issue.record("expected an error frame"); return }
        #expect(error.code == .unauthorized && error.message.contains("pool token"))
        #expect(try connection.readFrame() == nil)
    }

    @Test("A malformed request gets an error naming the field, and the same connection keeps being served")
    func malformedRequestThenValid() throws {
        let server = try startServer(token: "t")
        defer { server.stop() }
        let connection = try FrameConnection.connect(host: "127.0.0.1", port: server.port)
        defer { connection.close() }
        _ = try handshake(connection, token: "t")
        var (bad, _) = tcpRequest(sequence: 1, tokens: 2)
        bad.replaceSubrange((16 + 24 + 8)..<(16 + 24 + 12), with: [0, 0, 0xc0, 0x7f])  // token 0 slot 0 weight = NaN
        try connection.write(bad)
        guard let reply = try connection.readFrame(), case .error(let error) = try Frame.decode(reply) else { Issue.record("expected an error"); return }
        #expect(error.code == .malformedFrame && error.message.contains("'weights'") && error.message.contains("nan"))
        let (good, sums) = tcpRequest(sequence: 2, tokens: 2)
        try connection.write(good)
        guard let answer = try connection.readFrame(), case .response(let response) = try Frame.decode(answer) else { Issue.record("expected a response"); return }
        #expect(response.header.sequence == 2 && (0..<sums.count).map(response.sum) == sums)
    }

    @Test("A stream that is not EaaS frames is told why and closed")
    func garbageStream() throws {
        let server = try startServer(token: "t")
        defer { server.stop() }
        let connection = try FrameConnection.connect(host: "127.0.0.1", port: server.port)
        defer { connection.close() }
        try connection.write(Array("GET / HTTP/1.1\r\nHost: x\r\n\r\n".utf8))
        guard let reply = try connection.readFrame(), case .error(let error) = try Frame.decode(reply) else { Issue.record("expected an error"); return }
        #expect(error.code == .malformedFrame && error.message.contains("'magic'"))
        #expect(try connection.readFrame() == nil)
    }

    @Test("A peer speaking another protocol version is refused as such")
    func versionMismatch() throws {
        let server = try startServer(token: "t")
        defer { server.stop() }
        let connection = try FrameConnection.connect(host: "127.0.0.1", port: server.port)
        defer { connection.close() }
        var hello = FrameEncoder.encode(Handshake(clientID: 1, maxBatchTokens: 1, poolToken: Array("t".utf8)))
        hello[4] = 9
        try connection.write(hello)
        guard let reply = try connection.readFrame(), case .error(let error) = try Frame.decode(reply) else { Issue.record("expected an error"); return }
        #expect(error.code == .versionMismatch && error.message.contains("this build speaks version \(FrameHeader.currentVersion)"))
    }

    @Test("Connecting where nothing listens fails with the address and the reason")
    func connectionRefused() throws {
        let listener = try Socket.listen(host: "127.0.0.1", port: 0)
        let port = listener.localPort
        listener.close()
        #expect { try FrameConnection.connect(host: "127.0.0.1", port: port) } throws: {
            "\($0)".contains("connect 127.0.0.1:\(port)") && "\($0)".contains("refused")
        }
    }
}
