import Foundation
import Testing
import Transport

#if canImport(Glibc)
import Glibc
#endif

/// A pre-authentication flood against a real `eaas transport-server` process: 1,000 connections
/// that trickle one byte at a time while a real client runs steps.
@Suite("Data plane under a slowloris flood", .serialized)
struct SlowlorisScenarioTests {
    /// `Threads:` and `VmRSS:` (KiB) of process `pid`.
    static func threadsAndResident(_ pid: Int32) -> (threads: Int, residentKiB: Int) {
        let status = (try? String(contentsOfFile: "/proc/\(pid)/status", encoding: .utf8)) ?? ""
        func field(_ name: String) -> Int {
            status.split(separator: "\n").first { $0.hasPrefix(name) }.flatMap { Int($0.split(whereSeparator: \.isWhitespace)[1]) } ?? -1
        }
        return (field("Threads:"), field("VmRSS:"))
    }

    /// A non-blocking connection from `source` that has sent nothing yet (nil if refused at once).
    static func slowConnection(port: Int, source: String) -> Int32? {
        let fd = socket(AF_INET, Int32(SOCK_STREAM.rawValue), 0)
        var local = sockaddr_in(), remote = sockaddr_in()
        local.sin_family = sa_family_t(AF_INET)
        inet_pton(AF_INET, source, &local.sin_addr)
        remote.sin_family = sa_family_t(AF_INET)
        remote.sin_port = UInt16(port).bigEndian
        inet_pton(AF_INET, "127.0.0.1", &remote.sin_addr)
        let ok = withUnsafePointer(to: &local) { $0.withMemoryRebound(to: sockaddr.self, capacity: 1) { bind(fd, $0, socklen_t(MemoryLayout<sockaddr_in>.size)) } } == 0
            && withUnsafePointer(to: &remote) { $0.withMemoryRebound(to: sockaddr.self, capacity: 1) { connect(fd, $0, socklen_t(MemoryLayout<sockaddr_in>.size)) } } == 0
        guard ok else {
            close(fd)
            return nil
        }
        _ = fcntl(fd, F_SETFL, fcntl(fd, F_GETFL) | O_NONBLOCK)
        return fd
    }

    @Test("1,000 slow unauthenticated connections: the real client's steps go on, the server's threads and memory stay bounded")
    func slowlorisFlood() throws {
        // This process holds the attackers' descriptors.
        var limit = rlimit()
        getrlimit(__rlimit_resource_t(RLIMIT_NOFILE.rawValue), &limit)
        if limit.rlim_cur < 4096 {
            limit.rlim_cur = min(limit.rlim_max, 4096)
            setrlimit(__rlimit_resource_t(RLIMIT_NOFILE.rawValue), &limit)
        }
        let server = try ServerProcess(id: 41, experts: Array(0..<4), hidden: 16, token: "slowloris-pool", delayMicroseconds: 0)
        defer { server.cleanUp() }
        let fleet = ClientFleet(clients: 1, membership: StaticMembership(servers: [server.info]), backend: .tcp,
                                token: "slowloris-pool", hidden: 16, experts: 4)
        #expect(fleet.waitForProgress(from: [0], more: 20, timeout: 20), "the client runs before the flood")
        let before = Self.threadsAndResident(server.process.pid)

        // 1,000 connections from four source addresses, each sending one byte of a handshake
        // header every 500 ms: far under any per-read timeout, never a whole handshake.
        let hello = FrameEncoder.encode(Handshake(clientID: 1, maxBatchTokens: 8, poolToken: Array("slowloris-pool".utf8)))
        var open: [(fd: Int32, sent: Int)] = []
        var refusedAtOnce = 0
        for i in 0..<1000 {
            if let fd = Self.slowConnection(port: Int(server.address.split(separator: ":").last!)!, source: "127.0.0.\(50 + i % 4)") {
                open.append((fd, 0))
            } else {
                refusedAtOnce += 1
            }
        }
        let flood = ContinuousClock.now
        let atFlood = fleet.steps
        var peak = Self.threadsAndResident(server.process.pid)
        var closedByServer = 0
        var buffer = [UInt8](repeating: 0, count: 512)
        while ContinuousClock.now - flood < .seconds(6) {
            var still: [(fd: Int32, sent: Int)] = []
            for var connection in open {
                // EOF or a reset: the server let go of it.
                let n = recv(connection.fd, &buffer, buffer.count, 0)
                if n == 0 || (n < 0 && errno != EAGAIN && errno != EWOULDBLOCK) {
                    close(connection.fd)
                    closedByServer += 1
                    continue
                }
                if connection.sent < hello.count - 1 {
                    _ = send(connection.fd, [hello[connection.sent]], 1, Int32(MSG_NOSIGNAL))
                    connection.sent += 1
                }
                still.append(connection)
            }
            open = still
            let now = Self.threadsAndResident(server.process.pid)
            peak = (max(peak.threads, now.threads), max(peak.residentKiB, now.residentKiB))
            Thread.sleep(forTimeInterval: 0.5)
        }
        let stepsDuringFlood = fleet.steps[0] - atFlood[0]
        for connection in open { close(connection.fd) }
        let outcome = fleet.stop()
        print("slowloris: server threads \(before.threads) before, \(peak.threads) at peak; resident \(before.residentKiB / 1024) MiB before, "
              + "\(peak.residentKiB / 1024) MiB at peak; \(closedByServer) of 1000 connections closed by the server within 6 s, "
              + "\(open.count) still open at the end; the client ran \(stepsDuringFlood) steps meanwhile")
        #expect(outcome.failures.isEmpty, "\(outcome.failures)")
        #expect(outcome.wrong.isEmpty, "\(outcome.wrong)")
        #expect(stepsDuringFlood >= 50, "the real client's steps stalled: \(stepsDuringFlood) in 6 s")
        // One thread per connection would be 1,000 more; the gate holds them all on one.
        #expect(peak.threads <= before.threads + 8, "threads \(before.threads) → \(peak.threads)")
        #expect(peak.residentKiB <= before.residentKiB + 64 * 1024, "resident \(before.residentKiB) KiB → \(peak.residentKiB) KiB")
        // The whole handshake has one deadline (3 s): none of the trickling connections lasts 6 s.
        #expect(open.isEmpty, "\(open.count) trickling connections outlived the handshake deadline")
        #expect(refusedAtOnce + closedByServer == 1000)
    }
}
