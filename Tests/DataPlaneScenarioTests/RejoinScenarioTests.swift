import Foundation
import Testing
import Transport

/// A sole replica restarted on its own address is used again as soon as it is back.
@Suite("Data plane: a restarted sole replica rejoins", .serialized)
struct RejoinScenarioTests {
    final class Client: @unchecked Sendable {
        let lock = NSLock()
        var successes: [ContinuousClock.Instant] = []
        var failures: [String] = []
        var stopped = false
        let done = DispatchSemaphore(value: 0)

        init(server: ServerInfo, token: String) {
            Thread { [self] in
                var configuration = Dispatcher.Configuration(poolToken: Array(token.utf8), clientID: 5)
                configuration.maximumTimeout = .seconds(2)
                // Longer than the restart takes: the old rule would leave the pod unused this long.
                configuration.downFor = .seconds(3)
                // Long enough for a pod process to start again on a loaded two-core machine: what is
                // checked is that no step fails while it does, not how fast a process starts.
                configuration.noReplicaWait = .seconds(20)
                let dispatcher = Dispatcher(membership: StaticMembership(servers: [server]), configuration: configuration)
                let states = [Float](repeating: 0.5, count: 16)
                while !lock.withLock({ stopped }) {
                    do {
                        let sums = try states.withUnsafeBytes {
                            try dispatcher.step(layer: 0, tokens: 1, topK: 2, ids: [0, 1], weights: [0.5, 0.25], states: $0, hidden: 16, dtype: .f32)
                        }
                        // Expert e adds e: 0.5·(x+0) + 0.25·(x+1).
                        if sums.allSatisfy({ abs($0 - (0.5 * 0.5 + 0.25 * 1.5)) < 1e-6 }) {
                            lock.withLock { successes.append(.now) }
                        } else {
                            lock.withLock { failures.append("wrong sums \(sums.prefix(2))") }
                        }
                    } catch {
                        lock.withLock { failures.append("\(error)") }
                    }
                }
                dispatcher.close()
                done.signal()
            }.start()
        }

        var count: Int { lock.withLock { successes.count } }
        func firstSuccess(after instant: ContinuousClock.Instant) -> ContinuousClock.Instant? { lock.withLock { successes.first { $0 > instant } } }
        func stop() -> [String] {
            lock.withLock { stopped = true }
            done.wait()
            return lock.withLock { failures }
        }
    }

    @Test("SIGKILLed and restarted on the same address, the only replica is used within a second of being back; no step fails")
    func restartedReplicaRejoins() throws {
        let first = try ServerProcess(id: 61, experts: [0, 1], hidden: 16, token: "rejoin-pool", delayMicroseconds: 0)
        let address = first.address
        let client = Client(server: ServerInfo(id: "sole", address: address, experts: [HostedExpert(layer: 0, expert: 0), HostedExpert(layer: 0, expert: 1)]),
                            token: "rejoin-pool")
        let deadline = ContinuousClock.now + .seconds(20)
        while client.count < 20, ContinuousClock.now < deadline { Thread.sleep(forTimeInterval: 0.01) }
        first.kill(SIGKILL)
        first.cleanUp()
        // The step in progress waits (no other replica) while the pod restarts.
        Thread.sleep(forTimeInterval: 1.0)
        let second = try ServerProcess(id: 61, experts: [0, 1], hidden: 16, token: "rejoin-pool", delayMicroseconds: 0, listen: address)
        defer { second.cleanUp() }
        let back = ContinuousClock.now
        while client.firstSuccess(after: back) == nil, ContinuousClock.now - back < .seconds(6) { Thread.sleep(forTimeInterval: 0.01) }
        let failures = client.stop()
        let rejoined = client.firstSuccess(after: back).map { $0 - back }
        print("rejoin: the restarted replica answered \(rejoined.map { "\($0)" } ?? "never") after it was back (down back-off \(Duration.seconds(3)))")
        #expect(failures.isEmpty, "\(failures.prefix(3))")
        #expect(rejoined != nil && rejoined! < .seconds(1), "rejoined after \(String(describing: rejoined))")
    }
}
