import Foundation
import JSON
import Kube
import KubeTestServer
import Testing

/// Who leads when; records any moment two candidates lead at once.
final class Leadership: @unchecked Sendable {
    private let lock = NSLock()
    private var current: String?
    private(set) var overlaps: [String] = []
    private(set) var terms: [(identity: String, start: ContinuousClock.Instant, end: ContinuousClock.Instant?)] = []

    func begin(_ identity: String) {
        lock.withLock {
            if let current { overlaps.append("\(identity) started leading while \(current) led") }
            current = identity
            terms.append((identity, .now, nil))
        }
    }
    func end(_ identity: String) {
        lock.withLock {
            if current == identity { current = nil }
            if let index = terms.lastIndex(where: { $0.identity == identity && $0.end == nil }) { terms[index].end = .now }
        }
    }
    var leader: String? { lock.withLock { current } }
    var snapshot: (overlaps: [String], terms: [(identity: String, start: ContinuousClock.Instant, end: ContinuousClock.Instant?)]) {
        lock.withLock { (overlaps, terms) }
    }

    /// The work a leader does: mark the term, then wait to be cancelled.
    func work(_ identity: String) -> @Sendable () async throws -> Void {
        { [self] in
            begin(identity)
            defer { end(identity) }
            while !Task.isCancelled { try? await Task.sleep(for: .milliseconds(20)) }
        }
    }
}

@Suite("Leader election on a Lease", .serialized)
struct LeaderElectionTests {
    static func configuration(_ identity: String, release: Bool = true, lease: Duration = .milliseconds(1500)) -> LeaderElector.Configuration {
        var configuration = LeaderElector.Configuration(leaseName: "eaas-controller", namespace: "default", identity: identity)
        configuration.leaseDuration = lease
        configuration.renewDeadline = lease * 2 / 3
        configuration.retryPeriod = .milliseconds(200)
        configuration.releaseOnCancel = release
        return configuration
    }

    @Test("Defaults are client-go's: 15 s lease, 10 s renew deadline, 2 s retry")
    func defaults() {
        let configuration = LeaderElector.Configuration(leaseName: "x", namespace: "y")
        #expect(configuration.leaseDuration == .seconds(15))
        #expect(configuration.renewDeadline == .seconds(10))
        #expect(configuration.retryPeriod == .seconds(2))
        #expect(!configuration.identity.isEmpty)
    }

    @Test("Two candidates: one leads; when it dies without releasing, the other takes over after the lease runs out")
    func takeoverAfterDeath() async throws {
        let api = try await APIFixture.start()
        defer { Task { await api.close() } }
        let leadership = Leadership()
        let first = LeaderElector(client: api.client, configuration: Self.configuration("a", release: false, lease: .seconds(15)))
        let second = LeaderElector(client: api.client, configuration: Self.configuration("b", release: false, lease: .seconds(15)))
        let runA = Task { try await first.run(leadership.work("a")) }
        #expect(await eventually { leadership.leader == "a" })
        let runB = Task { try await second.run(leadership.work("b")) }
        // More than a lease duration: "a" keeps renewing, "b" waits. The lease is long enough (renew
        // deadline 10 s) that a renewal on a machine loaded by the rest of the suite still makes it
        // (with 10 s, one renewal missing 6.7 s made "a" step down, as it should, and the test fail).
        try await Task.sleep(for: .milliseconds(15500))
        #expect(leadership.leader == "a")
        #expect(!second.isLeader)

        runA.cancel()  // "a" dies (no release)
        _ = await runA.result
        let died = ContinuousClock.now
        #expect(await eventually(timeout: .seconds(25)) { leadership.leader == "b" })
        let takeover = ContinuousClock.now - died
        #expect(takeover < .milliseconds(15000 + 400 + 3000))  // the lease duration, a retry period, and slack for a loaded machine
        let lease = try await api.client.get(.leases, "eaas-controller")
        #expect(lease[path: "spec", "holderIdentity"]?.string == "b")
        #expect(lease[path: "spec", "leaseTransitions"]?.int == 1)
        runB.cancel()
        _ = await runB.result
        #expect(leadership.snapshot.overlaps.isEmpty)
    }

    @Test("A leader that releases on shutdown hands over at once")
    func release() async throws {
        let api = try await APIFixture.start()
        defer { Task { await api.close() } }
        let leadership = Leadership()
        let first = LeaderElector(client: api.client, configuration: Self.configuration("a", lease: .seconds(4)))
        let second = LeaderElector(client: api.client, configuration: Self.configuration("b", lease: .seconds(4)))
        let runA = Task { try await first.run(leadership.work("a")) }
        #expect(await eventually { leadership.leader == "a" })
        let runB = Task { try await second.run(leadership.work("b")) }
        try await Task.sleep(for: .milliseconds(300))
        runA.cancel()
        _ = await runA.result
        let released = ContinuousClock.now
        #expect(await eventually { leadership.leader == "b" })
        // The released lease has a 1 s duration, so "b" need not wait out the 4 s lease.
        #expect(ContinuousClock.now - released < .milliseconds(3000))
        runB.cancel()
        _ = await runB.result
        #expect(leadership.snapshot.overlaps.isEmpty)
    }

    @Test("A leader that cannot renew steps down before anyone else may start: never two leaders")
    func partitionedLeader() async throws {
        let api = try await APIFixture.start()
        defer { Task { await api.close() } }
        let leadership = Leadership()
        let first = LeaderElector(client: api.client, configuration: Self.configuration("a"))
        let runA = Task { try await first.run(leadership.work("a")) }
        #expect(await eventually { leadership.leader == "a" })
        let second = LeaderElector(client: api.client, configuration: Self.configuration("b"))
        let runB = Task { try await second.run(leadership.work("b")) }
        try await Task.sleep(for: .milliseconds(300))
        // Every lease write fails for a while: "a" cannot renew, so it must give up leading.
        api.server.failNext(1000, status: 500) { method, path in method == "PUT" && path.hasSuffix("/leases/eaas-controller") }
        let outcome = await runA.result
        #expect(throws: LeaderElectionError.self) { try outcome.get() }
        #expect(!first.isLeader)
        // "b" saw "a"'s last renewal and waits a whole lease duration from then; meanwhile writes heal.
        api.server.clearFaults()
        #expect(await eventually(timeout: .seconds(5)) { leadership.leader == "b" })
        runB.cancel()
        _ = await runB.result
        #expect(leadership.snapshot.overlaps.isEmpty, "\(leadership.snapshot.overlaps)")
    }

    @Test("Several candidates over many handovers: never two leaders at once")
    func manyCandidates() async throws {
        let api = try await APIFixture.start()
        defer { Task { await api.close() } }
        let leadership = Leadership()
        var runs: [String: Task<Void, Error>] = [:]
        for name in ["a", "b", "c"] {
            let elector = LeaderElector(client: api.client, configuration: Self.configuration(name))
            runs[name] = Task { try await elector.run(leadership.work(name)) }
        }
        var handovers = 0
        for _ in 0..<3 {
            guard await eventually(timeout: .seconds(5), { leadership.leader != nil }), let leader = leadership.leader else { break }
            runs[leader]?.cancel()
            _ = await runs[leader]?.result
            runs[leader] = nil
            handovers += 1
            if runs.isEmpty { break }
        }
        for run in runs.values { run.cancel(); _ = await run.result }
        #expect(handovers == 3)
        #expect(leadership.snapshot.terms.count == 3)
        #expect(leadership.snapshot.overlaps.isEmpty)
    }
}
