import Foundation
import Testing
@testable import Transport

@Suite("Data-plane server")
struct DataPlaneServerTests {
    /// Handshakes asking for `backend`; returns the connection and the reply.
    func connect(_ server: DataPlaneServer, token: String = "t", backend: BackendKind) throws -> (FrameConnection, Frame) {
        let connection = try FrameConnection.connect(host: "127.0.0.1", port: server.port)
        try connection.write(FrameEncoder.encode(Handshake(clientID: 9, maxBatchTokens: 8, poolToken: Array(token.utf8), backend: backend)))
        let bytes = try #require(try connection.readFrame())
        return (connection, try Frame.decode(bytes))
    }

    @Test("A shm client gets a slot in the server's region, and its requests are answered there")
    func shmSlot() throws {
        let server = try startServer(token: "t")
        defer { server.stop() }
        let (connection, reply) = try connect(server, backend: .shm)
        defer { connection.close() }
        guard case .handshakeReply(let accepted) = reply else { Issue.record("expected a reply, got \(reply)"); return }
        #expect(accepted.backend == .shm && String(decoding: accepted.backendInfo, as: UTF8.self) == server.regionPath)
        let region = try SharedRegion.open(path: try #require(server.regionPath))
        defer { region.close() }
        let slot = try ClientSlot(region: region, slot: Int(accepted.slot), epoch: accepted.epoch)
        let (frame, expected) = tcpRequest(sequence: 1, tokens: 3)
        try slot.beginRequest(sequence: 1)
        frame.withUnsafeBytes { slot.requestBuffer.copyMemory(from: $0) }
        try slot.publishRequest(sequence: 1, length: frame.count)
        guard case .response(let response) = try Frame.decode(try slot.waitResponse(sequence: 1, timeout: .seconds(5))) else {
            Issue.record("expected a response"); return
        }
        #expect((0..<expected.count).map(response.sum) == expected)
    }

    @Test("Requests the server cannot take are answered with an error naming why, on both backends")
    func refusedRequests() throws {
        let server = try startServer(token: "t", experts: [HostedExpert(layer: 0, expert: 1)])
        defer { server.stop() }
        // Expert 0 is not hosted here; the request names experts 0 and 1.
        let (frame, _) = tcpRequest(sequence: 4, tokens: 1)
        let (tcp, _) = try connect(server, backend: .tcp)
        defer { tcp.close() }
        try tcp.write(frame)
        guard case .error(let overTCP) = try Frame.decode(try #require(try tcp.readFrame())) else { Issue.record("expected an error"); return }
        #expect(overTCP.sequence == 4 && overTCP.code == .unknownExpert && overTCP.message.contains("expert 0 of layer 0 is not hosted"))

        let (control, reply) = try connect(server, backend: .shm)
        defer { control.close() }
        guard case .handshakeReply(let accepted) = reply else { Issue.record("expected a reply"); return }
        let region = try SharedRegion.open(path: try #require(server.regionPath))
        defer { region.close() }
        let slot = try ClientSlot(region: region, slot: Int(accepted.slot), epoch: accepted.epoch)
        let (wrongShape, _) = tcpRequest(sequence: 5, tokens: 1, hidden: 6)
        try slot.beginRequest(sequence: 5)
        wrongShape.withUnsafeBytes { slot.requestBuffer.copyMemory(from: $0) }
        try slot.publishRequest(sequence: 5, length: wrongShape.count)
        guard case .error(let overSlot) = try Frame.decode(try slot.waitResponse(sequence: 5, timeout: .seconds(5))) else { Issue.record("expected an error"); return }
        #expect(overSlot.code == .shapeMismatch && overSlot.message.contains("hidden 6") && overSlot.message.contains("takes hidden 4"))
        #expect(server.served == 0)
    }

    @Test("Slots of departed clients are handed out again; with none free a client gets tcp")
    func slotsRecycled() throws {
        var configuration = DataPlaneServer.Configuration(poolToken: Array("t".utf8), serverID: 3)
        configuration.slots = 2
        configuration.maxBatchTokens = 8
        let server = try DataPlaneServer(computer: SyntheticExperts(experts: [HostedExpert(layer: 0, expert: 0)], hidden: 4, dtype: .f32),
                                         configuration: configuration)
        server.start()
        defer { server.stop() }
        var open: [FrameConnection] = []
        for _ in 0..<3 {
            let (connection, reply) = try connect(server, backend: .shm)
            open.append(connection)
            guard case .handshakeReply(let accepted) = reply else { Issue.record("expected a reply"); return }
            #expect(accepted.backend == (open.count <= 2 ? .shm : .tcp))
        }
        open.forEach { $0.close() }
        let clock = ContinuousClock(), deadline = clock.now + .seconds(5)
        while server.clientCount > 0, clock.now < deadline { Thread.sleep(forTimeInterval: 0.01) }
        for _ in 0..<2 {
            let (connection, reply) = try connect(server, backend: .shm)
            defer { connection.close() }
            guard case .handshakeReply(let accepted) = reply else { Issue.record("expected a reply"); return }
            #expect(accepted.backend == .shm, "freed slots come back")
        }
    }

    @Test("A draining server tells its clients GOAWAY and refuses new ones by saying it is draining")
    func drainingRefusesNewClients() throws {
        let server = try startServer(token: "t")
        defer { server.stop() }
        let (connection, _) = try connect(server, backend: .tcp)
        let drained = DispatchSemaphore(value: 0)
        Thread {
            server.drain(timeout: .seconds(5))
            drained.signal()
        }.start()
        guard case .goAway(let goAway) = try Frame.decode(try #require(try connection.readFrame())) else { Issue.record("expected GOAWAY"); return }
        #expect(goAway.reason == "draining")
        let (late, reply) = try connect(server, backend: .tcp)
        defer { late.close() }
        guard case .error(let refusal) = reply else { Issue.record("expected a refusal"); return }
        #expect(refusal.code == .draining)
        connection.close()
        #expect(drained.wait(timeout: .now() + 5) == .success, "the drain ends when the last client leaves")
    }

    @Test("Requests from several clients are computed together in one batch")
    func batchesAcrossClients() throws {
        final class Seen: @unchecked Sendable {
            let lock = NSLock()
            var largest = 0
            func record(_ report: ServingReport) { lock.lock(); largest = max(largest, report.requests); lock.unlock() }
        }
        let seen = Seen()
        var configuration = DataPlaneServer.Configuration(poolToken: Array("t".utf8), serverID: 4)
        // Both requests (3 tokens each) fill a batch of 6; the wait only bounds a slow test machine.
        configuration.maxWait = .seconds(5)
        configuration.maxBatchTokens = 6
        let experts = (0..<9).map { HostedExpert(layer: 0, expert: UInt16($0)) }
        let server = try DataPlaneServer(computer: SyntheticExperts(experts: experts, hidden: 4, dtype: .f32), configuration: configuration,
                                         observer: { seen.record($0) })
        server.start()
        defer { server.stop() }
        // Connected first, each client on its own thread: they block reading their answers, and
        // the server holds the first request until the second arrives.
        let connections = try (0..<2).map { _ in try connect(server, backend: .tcp).0 }
        defer { connections.forEach { $0.close() } }
        final class Right: @unchecked Sendable {
            let lock = NSLock()
            var count = 0
        }
        let right = Right()
        let done = DispatchGroup()
        for client in 0..<2 {
            let connection = connections[client]
            done.enter()
            Thread {
                defer { done.leave() }
                let (frame, expected) = tcpRequest(sequence: 1, tokens: 3, salt: client)
                guard (try? connection.write(frame)) != nil, let bytes = try? connection.readFrame(),
                      case .response(let response)? = try? Frame.decode(bytes), (0..<expected.count).map(response.sum) == expected else { return }
                right.lock.lock(); right.count += 1; right.lock.unlock()
            }.start()
        }
        done.wait()
        #expect(right.count == 2)
        #expect(seen.largest == 2)
    }

    @Test("A region left by a killed server of the same id is removed at start; a live one is kept")
    func staleRegionsRemoved() throws {
        let directory = FileManager.default.temporaryDirectory.appendingPathComponent("eaas-regions-\(UUID().uuidString)").path
        try FileManager.default.createDirectory(atPath: directory, withIntermediateDirectories: true)
        defer { try? FileManager.default.removeItem(atPath: directory) }
        let gone = Process()
        gone.executableURL = URL(fileURLWithPath: "/bin/true")
        try gone.run()
        gone.waitUntilExit()
        let stale = "\(directory)/eaas-slots-77-\(gone.processIdentifier)-4000", live = "\(directory)/eaas-slots-77-1-4001"
        let other = "\(directory)/eaas-slots-78-\(gone.processIdentifier)-4002"
        for path in [stale, live, other] { FileManager.default.createFile(atPath: path, contents: Data([1])) }
        var configuration = DataPlaneServer.Configuration(poolToken: Array("t".utf8), serverID: 77)
        configuration.regionDirectory = directory
        let server = try DataPlaneServer(computer: SyntheticExperts(experts: [HostedExpert(layer: 0, expert: 0)], hidden: 4, dtype: .f32),
                                         configuration: configuration)
        defer { server.stop() }
        #expect(!FileManager.default.fileExists(atPath: stale))
        #expect(FileManager.default.fileExists(atPath: live), "pid 1 is alive")
        #expect(FileManager.default.fileExists(atPath: other), "another server id's region is not ours to remove")
    }

    @Test("A drain closes connections that stay idle after GOAWAY, so the server need not wait out its timeout")
    func drainClosesIdleClients() throws {
        var configuration = DataPlaneServer.Configuration(poolToken: Array("t".utf8), serverID: 5)
        configuration.drainSettle = .milliseconds(200)
        let server = try DataPlaneServer(computer: SyntheticExperts(experts: [HostedExpert(layer: 0, expert: 0)], hidden: 4, dtype: .f32),
                                         configuration: configuration)
        server.start()
        defer { server.stop() }
        let (idle, _) = try connect(server, backend: .shm)
        defer { idle.close() }
        let started = ContinuousClock.now
        #expect(server.drain(timeout: .seconds(20)), "every client left")
        #expect(ContinuousClock.now - started < .seconds(5))
        guard case .goAway = try Frame.decode(try #require(try idle.readFrame())) else { Issue.record("expected GOAWAY first"); return }
        #expect(try idle.readFrame() == nil, "then the connection is closed")
    }
}
