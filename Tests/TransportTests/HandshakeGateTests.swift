import Foundation
import Testing
@testable import Transport

#if canImport(Glibc)
import Glibc
#endif

/// A raw TCP connection from a chosen loopback source address (the whole of 127/8 is loopback),
/// for playing hostile clients.
final class RawConnection {
    let fd: Int32

    init(to port: Int, from source: String = "127.0.0.1") throws {
        fd = socket(AF_INET, Int32(SOCK_STREAM.rawValue), 0)
        var local = sockaddr_in()
        local.sin_family = sa_family_t(AF_INET)
        inet_pton(AF_INET, source, &local.sin_addr)
        var remote = sockaddr_in()
        remote.sin_family = sa_family_t(AF_INET)
        remote.sin_port = UInt16(port).bigEndian
        inet_pton(AF_INET, "127.0.0.1", &remote.sin_addr)
        let bound = withUnsafePointer(to: &local) { $0.withMemoryRebound(to: sockaddr.self, capacity: 1) { bind(fd, $0, socklen_t(MemoryLayout<sockaddr_in>.size)) } }
        let connected = withUnsafePointer(to: &remote) { $0.withMemoryRebound(to: sockaddr.self, capacity: 1) { connect(fd, $0, socklen_t(MemoryLayout<sockaddr_in>.size)) } }
        guard bound == 0, connected == 0 else {
            let code = errno
            close(fd)
            throw TransportError.unreachable(address: "127.0.0.1:\(port)", reason: "raw connect from \(source): errno \(code)")
        }
    }

    func send(_ bytes: [UInt8]) { _ = bytes.withUnsafeBytes { Glibc.send(fd, $0.baseAddress, $0.count, Int32(MSG_NOSIGNAL)) } }

    /// Whether the server has closed the connection (EOF or reset), waiting at most `timeout`;
    /// what it sent first is returned as a decoded error frame, if it was one.
    func closedByServer(within timeout: Duration) -> (closed: Bool, error: ErrorFrame?) {
        var received: [UInt8] = []
        let deadline = ContinuousClock.now + timeout
        var chunk = [UInt8](repeating: 0, count: 4096)
        while ContinuousClock.now < deadline {
            var descriptor = pollfd(fd: fd, events: Int16(POLLIN), revents: 0)
            guard poll(&descriptor, 1, 50) == 1 else { continue }
            let n = recv(fd, &chunk, chunk.count, 0)
            if n > 0 { received += chunk[0..<n]; continue }
            let error = received.withUnsafeBytes { bytes -> ErrorFrame? in
                guard case .error(let frame)? = try? Frame.decode(bytes) else { return nil }
                return frame
            }
            return (true, error)
        }
        return (false, nil)
    }

    deinit { close(fd) }
}

@Suite("Handshake gate: deadlines, caps and refusals before authentication")
struct HandshakeGateTests {
    static func server(_ change: (inout DataPlaneServer.Configuration) -> Void = { _ in }) throws -> DataPlaneServer {
        var configuration = DataPlaneServer.Configuration(poolToken: Array("gate-token".utf8), serverID: 5)
        configuration.offerShm = false
        configuration.maxBatchTokens = 64
        change(&configuration)
        let server = try DataPlaneServer(computer: SyntheticExperts(experts: [HostedExpert(layer: 0, expert: 0)], hidden: 4, dtype: .f32),
                                         configuration: configuration)
        server.start()
        return server
    }

    @Test("A handshake trickled a byte at a time is cut at one deadline for the whole handshake, not per read")
    func slowSenderCut() throws {
        let server = try Self.server { $0.handshakeTimeout = .seconds(1) }
        defer { server.stop() }
        let hello = FrameEncoder.encode(Handshake(clientID: 1, maxBatchTokens: 8, poolToken: Array("gate-token".utf8)))
        let connection = try RawConnection(to: server.port)
        let start = ContinuousClock.now
        // A byte every 150 ms: each read comes well within any per-read timeout, and the whole
        // handshake would take hello.count × 150 ms (≈ 6 s).
        var cut = false
        for byte in hello.dropLast() {
            connection.send([byte])
            if connection.closedByServer(within: .milliseconds(150)).closed {
                cut = true
                break
            }
        }
        let elapsed = ContinuousClock.now - start
        #expect(cut, "the server kept a trickling handshake open")
        #expect(elapsed < .seconds(3), "cut after \(elapsed), past the 1 s deadline")
        #expect(server.handshakeRefusals[.timeout] == 1)
    }

    @Test("Wrong tokens are refused as unauthorized and counted, each of them")
    func wrongTokensCounted() throws {
        let server = try Self.server()
        defer { server.stop() }
        for attempt in 0..<5 {
            let connection = try FrameConnection.connect(host: "127.0.0.1", port: server.port)
            defer { connection.close() }
            try connection.write(FrameEncoder.encode(Handshake(clientID: UInt64(attempt), maxBatchTokens: 8, poolToken: Array("guess-\(attempt)".utf8))))
            guard let bytes = try connection.readFrame(), case .error(let error) = try Frame.decode(bytes) else {
                Issue.record("expected an error frame")
                return
            }
            #expect(error.code == .unauthorized)
        }
        #expect(server.handshakeRefusals[.wrongToken] == 5)
    }

    @Test("Connections beyond the per-address and total caps are closed at once with overloaded")
    func capsEnforced() throws {
        let server = try Self.server {
            $0.maxPendingHandshakes = 6
            $0.maxPendingHandshakesPerAddress = 4
        }
        defer { server.stop() }
        // Four silent connections from one address fill its share…
        let silent = try (0..<4).map { _ in try RawConnection(to: server.port, from: "127.0.0.21") }
        Thread.sleep(forTimeInterval: 0.1)
        let fifth = try RawConnection(to: server.port, from: "127.0.0.21")
        let refused = fifth.closedByServer(within: .seconds(2))
        #expect(refused.closed && refused.error?.code == .overloaded, "\(String(describing: refused.error))")
        // …two from another address fill the total…
        let others = try (0..<2).map { _ in try RawConnection(to: server.port, from: "127.0.0.22") }
        Thread.sleep(forTimeInterval: 0.1)
        let overTotal = try RawConnection(to: server.port, from: "127.0.0.23")
        #expect(overTotal.closedByServer(within: .seconds(2)).error?.code == .overloaded)
        #expect(server.handshakeRefusals[.tooManyFromAddress] == 1)
        #expect(server.handshakeRefusals[.tooManyPending] == 1)
        withExtendedLifetime((silent, others)) {}
    }

    @Test("A client that authenticates is served while others hold their handshakes open")
    func realClientBesideSilentOnes() throws {
        let server = try Self.server { $0.maxPendingHandshakesPerAddress = 8 }
        defer { server.stop() }
        let silent = try (0..<8).map { _ in try RawConnection(to: server.port, from: "127.0.0.31") }
        var configuration = Dispatcher.Configuration(poolToken: Array("gate-token".utf8), clientID: 3)
        configuration.maximumTimeout = .seconds(2)
        let dispatcher = Dispatcher(membership: StaticMembership(servers: [ServerInfo(id: "s", address: "127.0.0.1:\(server.port)",
                                                                                      experts: [HostedExpert(layer: 0, expert: 0)])]),
                                    configuration: configuration)
        defer { dispatcher.close() }
        let states: [Float] = [1, 2, 3, 4]
        let sums = try states.withUnsafeBytes {
            try dispatcher.step(layer: 0, tokens: 1, topK: 1, ids: [0], weights: [0.5], states: $0, hidden: 4, dtype: .f32)
        }
        #expect(sums == [0.5, 1, 1.5, 2])
        withExtendedLifetime(silent) {}
    }
}

@Suite("Pool tokens: bytes, lengths, files")
struct PoolTokenTests {
    static func file(_ bytes: [UInt8], mode: mode_t = 0o600) throws -> String {
        let path = NSTemporaryDirectory() + "eaas-token-\(UUID().uuidString)"
        FileManager.default.createFile(atPath: path, contents: Data(bytes))
        chmod(path, mode)
        return path
    }

    @Test("A generated token is 32 random bytes as 64 hex digits: a new one each time, loaded without a warning")
    func generated() throws {
        let tokens = (0..<64).map { _ in PoolToken.random() }
        #expect(Set(tokens).count == tokens.count)
        for token in tokens {
            #expect(token.count == 64 && token.allSatisfy { (0x30...0x39).contains($0) || (0x61...0x66).contains($0) })
        }
        let loaded = try PoolToken.load(file: nil, environment: ["EAAS_POOL_TOKEN": String(decoding: tokens[0], as: UTF8.self)])
        #expect(loaded.token == tokens[0] && loaded.warnings.isEmpty)
        // Every hex digit turns up: the bytes behind them are not a narrow range.
        #expect(Set(tokens.joined()).count == 16)
    }

    @Test("Two different binary tokens read from files stay different (bytes, never text)")
    func binaryTokens() throws {
        // Both invalid UTF-8: decoded with replacement they would both become "\u{FFFD}\u{FFFD}…".
        let a: [UInt8] = [0xff, 0xfe, 0x80, 0x81] + Array(repeating: 0x90, count: 28)
        let b: [UInt8] = [0xff, 0xfe, 0x80, 0x82] + Array(repeating: 0x91, count: 28)
        let pathA = try Self.file(a), pathB = try Self.file(b)
        defer { unlink(pathA); unlink(pathB) }
        let tokenA = try PoolToken.load(file: pathA).token, tokenB = try PoolToken.load(file: pathB).token
        #expect(tokenA == a && tokenB == b)
        #expect(!PoolToken.matches(tokenA, tokenB))
    }

    @Test("Lengths are checked where a token is loaded: empty and over 4096 bytes are errors naming the source")
    func lengths() throws {
        let long = try Self.file(Array(repeating: 0x41, count: 70_000))
        let empty = try Self.file(Array("\n".utf8))
        defer { unlink(long); unlink(empty) }
        #expect(throws: PoolTokenError.self) { try PoolToken.load(file: long) }
        do { _ = try PoolToken.load(file: long) } catch { #expect("\(error)".contains("70000 bytes") && "\(error)".contains(long)) }
        #expect(throws: PoolTokenError.self) { try PoolToken.load(file: empty) }
        #expect(throws: PoolTokenError.self) { try PoolToken.load(file: nil, environment: [:]) }
        // The server refuses to start with one; the client's step fails with the reason, no crash.
        var configuration = DataPlaneServer.Configuration(poolToken: Array(repeating: 1, count: 70_000), serverID: 1)
        configuration.offerShm = false
        #expect(throws: PoolTokenError.self) {
            try DataPlaneServer(computer: SyntheticExperts(experts: [HostedExpert(layer: 0, expert: 0)], hidden: 4, dtype: .f32), configuration: configuration)
        }
        let server = try startServer(token: "a-real-token-of-some-length")
        defer { server.stop() }
        var client = Dispatcher.Configuration(poolToken: Array(repeating: 0x41, count: 70_000), clientID: 1)
        client.noReplicaWait = .milliseconds(200)
        client.stepDeadline = .seconds(2)
        let dispatcher = Dispatcher(membership: StaticMembership(servers: [ServerInfo(id: "s", address: "127.0.0.1:\(server.port)",
                                                                                      experts: [HostedExpert(layer: 0, expert: 0)])]),
                                    configuration: client)
        defer { dispatcher.close() }
        let states: [Float] = [1, 2, 3, 4]
        do {
            _ = try states.withUnsafeBytes { try dispatcher.step(layer: 0, tokens: 1, topK: 1, ids: [0], weights: [1], states: $0, hidden: 4, dtype: .f32) }
            Issue.record("a step with an oversized token succeeded")
        } catch {
            #expect("\(error)".contains("70000 bytes"), "\(error)")
        }
    }

    @Test("A token file others can read loads with a warning; trailing newline and spaces are not part of it")
    func permissionsAndTrimming() throws {
        let open = try Self.file(Array("token-with-newline-0123456789\n".utf8), mode: 0o644)
        let closed = try Self.file(Array("token-with-newline-0123456789 \r\n".utf8), mode: 0o600)
        defer { unlink(open); unlink(closed) }
        let loose = try PoolToken.load(file: open), tight = try PoolToken.load(file: closed)
        #expect(loose.token == Array("token-with-newline-0123456789".utf8) && loose.token == tight.token)
        #expect(loose.warnings.contains { $0.contains("readable by group or others") && $0.contains("644") })
        #expect(tight.warnings.isEmpty)
        #expect(try PoolToken.load(file: nil, environment: ["EAAS_POOL_TOKEN": "short"]).warnings.contains { $0.contains("only 5 bytes") })
    }
}
