import Foundation
import Testing
import Transport

/// The data plane between processes on loopback: `eaas transport-server` children serve synthetic
/// experts with replicas; client threads run steps and check every answer in closed form.
@Suite("Data plane across processes", .serialized)
struct DataPlaneScenarioTests {
    static let hidden = 16
    static let experts = 12
    static let token = "scenario-pool"

    /// Three servers; expert e lives on servers e mod 3 and (e + 1) mod 3 (two replicas each).
    func startServers(delayMicroseconds: Int) throws -> [ServerProcess] {
        try (0..<3).map { i in
            try ServerProcess(id: i + 1, experts: (0..<Self.experts).filter { $0 % 3 == i || ($0 + 1) % 3 == i }, hidden: Self.hidden,
                              token: Self.token, delayMicroseconds: delayMicroseconds)
        }
    }

    @Test("A server killed with SIGKILL mid-stream loses nothing: every step is answered once, right", arguments: [BackendKind.tcp, .shm])
    func killedServer(backend: BackendKind) throws {
        let servers = try startServers(delayMicroseconds: 300)
        defer { servers.forEach { $0.cleanUp() } }
        let fleet = ClientFleet(clients: 4, membership: StaticMembership(servers: servers.map(\.info)), backend: backend,
                                token: Self.token, hidden: Self.hidden, experts: Self.experts)
        #expect(fleet.waitForProgress(from: [0, 0, 0, 0], more: 20, timeout: 20), "clients run before the kill")
        servers[1].kill(SIGKILL)
        let atKill = fleet.steps
        #expect(fleet.waitForProgress(from: atKill, more: 30, timeout: 20), "clients go on after the kill")
        let outcome = fleet.stop()
        #expect(outcome.wrong.isEmpty, "\(outcome.wrong)")
        #expect(outcome.failures.isEmpty, "\(outcome.failures)")
        #expect(outcome.failovers >= 1, "the dead server's requests were resent elsewhere")
        #expect(servers[1].waitForExit().status == 128 + SIGKILL)
    }

    @Test("A server drained with SIGTERM sends GOAWAY, loses nothing, and exits once its clients left", arguments: [BackendKind.tcp, .shm])
    func drainedServer(backend: BackendKind) throws {
        let servers = try startServers(delayMicroseconds: 100)
        defer { servers.forEach { $0.cleanUp() } }
        let fleet = ClientFleet(clients: 3, membership: StaticMembership(servers: servers.map(\.info)), backend: backend,
                                token: Self.token, hidden: Self.hidden, experts: Self.experts)
        #expect(fleet.waitForProgress(from: [0, 0, 0], more: 20, timeout: 20))
        servers[0].kill(SIGTERM)
        let exit = servers[0].waitForExit()
        #expect(exit.status == 0 && exit.stderr.contains("every client left"), "\(exit.stderr)")
        let afterExit = fleet.steps
        #expect(fleet.waitForProgress(from: afterExit, more: 20, timeout: 20), "clients go on without the drained server")
        let outcome = fleet.stop()
        #expect(outcome.wrong.isEmpty, "\(outcome.wrong)")
        #expect(outcome.failures.isEmpty, "\(outcome.failures)")
    }
}
