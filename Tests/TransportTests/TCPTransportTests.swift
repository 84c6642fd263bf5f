import Foundation
import Testing
@testable import Transport

/// A loopback server speaking the wire protocol the way an expert pod will: a handshake checked
/// against the pool token, then requests answered with `expectedSums`, bad frames answered with an
/// error frame, and a desynchronised stream closed.
final class TestTCPServer: @unchecked Sendable {
    let listener: Socket
    let token: [UInt8]
    private let lock = NSLock()
    private var servedCount = 0
    private var draining = false
    /// Requests answered so far.
    var served: Int { lock.lock(); defer { lock.unlock() }; return servedCount }
    /// From now on, announce GOAWAY before each answer (and keep answering).
    func drain() { lock.lock(); draining = true; lock.unlock() }
    private var connections: [Socket] = []
    private let done = DispatchGroup()

    init(token: String) throws {
        listener = try Socket.listen(host: "127.0.0.1", port: 0)
        self.token = Array(token.utf8)
        done.enter()
        Thread { [self] in
            defer { done.leave() }
            while let socket = try? listener.accept() {
                lock.lock(); connections.append(socket); lock.unlock()
                done.enter()
                Thread { [self] in
                    serve(FrameConnection(socket: socket))
                    done.leave()
                }.start()
            }
        }.start()
    }

    var port: Int { listener.localPort }

    func serve(_ connection: FrameConnection) {
        var handshaken = false
        while true {
            let bytes: UnsafeRawBufferPointer
            do {
                guard let frame = try connection.readFrame() else { return }
                bytes = frame
            } catch let error as WireError {
                // The header itself is bad: say why, then drop the connection (the stream is lost).
                let code: WireErrorCode = "\(error)".contains("'version'") ? .versionMismatch : .malformedFrame
                try? connection.write(FrameEncoder.encode(ErrorFrame(sequence: 0, code: code, message: "\(error)")))
                connection.socket.shutdown()
                return
            } catch {
                return
            }
            do {
                switch try Frame.decode(bytes) {
                case .handshake(let hello) where !handshaken:
                    guard PoolToken.matches(hello.poolToken, token) else {
                        try connection.write(FrameEncoder.encode(ErrorFrame(sequence: 0, code: .unauthorized, message: "wrong pool token")))
                        connection.socket.shutdown()
                        return
                    }
                    handshaken = true
                    try connection.write(FrameEncoder.encode(HandshakeReply(serverID: 1, hidden: 4, dtype: .f32, backend: .tcp,
                                                                            experts: [HostedExpert(layer: 0, expert: 0)], slot: 0, backendInfo: [])))
                case .request(let view) where handshaken:
                    let (header, sums) = testAnswer(view)
                    var out = [UInt8](repeating: 0, count: header.frameSize)
                    _ = sums.withUnsafeBufferPointer { s in out.withUnsafeMutableBytes { FrameEncoder.encodeResponse(header, sums: s, into: $0) } }
                    lock.lock()
                    servedCount += 1
                    let goAway = draining
                    lock.unlock()
                    if goAway { try connection.write(FrameEncoder.encode(GoAway(deadlineMilliseconds: 1000, reason: "draining"))) }
                    try connection.write(out)
                default:
                    try connection.write(FrameEncoder.encode(ErrorFrame(sequence: 0, code: .malformedFrame, message: "unexpected frame")))
                }
            } catch let error as WireError {
                // A well-framed but invalid message: answer it and keep serving this client.
                try? connection.write(FrameEncoder.encode(ErrorFrame(sequence: 0, code: .malformedFrame, message: "\(error)")))
            } catch {
                return
            }
        }
    }

    func stop() {
        listener.shutdown()
        lock.lock()
        for c in connections { c.shutdown() }
        lock.unlock()
        done.wait()
        listener.close()
        lock.lock()
        for c in connections { c.close() }
        lock.unlock()
    }
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
        let server = try TestTCPServer(token: "pool-secret")
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
        let server = try TestTCPServer(token: "pool-secret")
        defer { server.stop() }
        let connection = try FrameConnection.connect(host: "127.0.0.1", port: server.port)
        defer { connection.close() }
        guard case .error(let error) = try handshake(connection, token: "guess") else { Issue.record("expected an error frame"); return }
        #expect(error.code == .unauthorized && error.message.contains("pool token"))
        #expect(try connection.readFrame() == nil)
    }

    @Test("A malformed request gets an error naming the field, and the same connection keeps being served")
    func malformedRequestThenValid() throws {
        let server = try TestTCPServer(token: "t")
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
        let server = try TestTCPServer(token: "t")
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
        let server = try TestTCPServer(token: "t")
        defer { server.stop() }
        let connection = try FrameConnection.connect(host: "127.0.0.1", port: server.port)
        defer { connection.close() }
        var hello = FrameEncoder.encode(Handshake(clientID: 1, maxBatchTokens: 1, poolToken: Array("t".utf8)))
        hello[4] = 9
        try connection.write(hello)
        guard let reply = try connection.readFrame(), case .error(let error) = try Frame.decode(reply) else { Issue.record("expected an error"); return }
        #expect(error.code == .versionMismatch && error.message.contains("this build speaks version 1"))
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
