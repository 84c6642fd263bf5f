import Foundation
import JSON
import Kube
import KubeTestServer
import Testing

/// What an informer's handler saw, checked against the server afterwards.
final class InformerLog: @unchecked Sendable {
    private let lock = NSLock()
    private(set) var entries: [(kind: String, key: String, version: String)] = []
    /// The state the handlers were told about, key → resourceVersion.
    private(set) var view: [String: String] = [:]
    private(set) var problems: [String] = []

    func record(_ event: InformerEvent) {
        lock.withLock {
            let object = event.object
            let key = object.key, version = object.resourceVersion ?? ""
            switch event {
            case .added:
                if view[key] != nil { problems.append("ADDED \(key) while known at \(view[key]!)") }
                view[key] = version
                entries.append(("added", key, version))
            case .updated(let old, _):
                if view[key] != old.resourceVersion { problems.append("UPDATED \(key) from \(old.resourceVersion ?? "") but known at \(view[key] ?? "nothing")") }
                if old.resourceVersion == version { problems.append("UPDATED \(key) to the version it had (\(version)): a duplicate") }
                view[key] = version
                entries.append(("updated", key, version))
            case .deleted:
                if view[key] == nil { problems.append("DELETED \(key) that was not known") }
                view[key] = nil
                entries.append(("deleted", key, version))
            case .resync:
                entries.append(("resync", key, version))
            }
        }
    }
    var snapshot: (view: [String: String], problems: [String], entries: [(kind: String, key: String, version: String)]) {
        lock.withLock { (view, problems, entries) }
    }
}

@Suite("Informer: reflector, store, handlers, recovery from faults")
struct InformerTests {
    @Test("Syncs the existing objects, then follows adds, updates and deletes; indexes answer")
    func follows() async throws {
        let api = try await APIFixture.start()
        defer { Task { await api.close() } }
        let client = api.client
        _ = try await client.create(.configMaps, configMap("a", labels: ["shard": "0"]))
        let informer = Informer(client: client, type: .configMaps, configuration: .init(namespace: "default"),
                                indexers: ["shard": { [$0.labels["shard"] ?? ""] }])
        let log = InformerLog()
        informer.addHandler { log.record($0) }
        let run = Task { await informer.run() }
        defer { run.cancel() }
        await informer.waitForSync()
        #expect(informer.store.get(namespace: "default", name: "a") != nil)
        _ = try await client.create(.configMaps, configMap("b", labels: ["shard": "1"]))
        _ = try await client.patch(.configMaps, "a", .merge(["metadata": ["labels": ["shard": "1"]]]))
        _ = try await client.delete(.configMaps, "b")
        #expect(await eventually { log.snapshot.entries.map(\.kind) == ["added", "added", "updated", "deleted"] })
        #expect(informer.store.byIndex("shard", "1").map(\.name) == ["a"])
        #expect(informer.store.byIndex("shard", "0").isEmpty)
        #expect(log.snapshot.problems.isEmpty)
    }

    /// With compaction, changes made while the informer was cut off are seen only as the re-list's
    /// difference (an object born and deleted in the gap is never seen — as with client-go); without
    /// it, resuming from the last version replays every single change.
    @Test("Recovers from dropped watches, 500s, 429s and compaction (410) without losing or duplicating an event",
          arguments: [false, true])
    func faults(compaction: Bool) async throws {
        let api = try await APIFixture.start { $0.bookmarkInterval = .milliseconds(50) }
        defer { Task { await api.close() } }
        let client = api.client
        var configuration = Informer.Configuration(namespace: "default")
        configuration.backoff = .milliseconds(10)
        configuration.maxBackoff = .milliseconds(100)
        configuration.pageSize = 7
        let informer = Informer(client: client, type: .configMaps, configuration: configuration)
        let log = InformerLog()
        informer.addHandler { log.record($0) }
        for index in 0..<20 { _ = try await client.create(.configMaps, configMap("pre-\(index)")) }
        let run = Task { await informer.run() }
        defer { run.cancel() }
        await informer.waitForSync()

        // A writer changes objects throughout while the server misbehaves in every way it can.
        for round in 0..<30 {
            _ = try await client.create(.configMaps, configMap("obj-\(round)", data: ["round": String(round)]))
            if round >= 2 { _ = try await client.patch(.configMaps, "obj-\(round - 2)", .merge(["data": ["touched": "yes"]])) }
            if round >= 5 { _ = try await client.delete(.configMaps, "obj-\(round - 5)") }
            if round % 2 == 1 { _ = try await client.delete(.configMaps, "pre-\(round / 2)") }
            switch round % 6 {
            case 0: api.server.dropWatches()
            case 2:
                if compaction { api.server.expireWatches() } else { api.server.dropWatches() }
            case 3: api.server.failNext(2, status: 500) { method, path in method == "GET" && path.hasSuffix("/configmaps") }
            case 4: api.server.failNext(1, status: 429, retryAfterSeconds: 0) { method, _ in method == "GET" }
            default: break
            }
            try await Task.sleep(for: .milliseconds(15))
        }
        // Injected failures the informer has not met yet may still be armed: read the truth patiently.
        var patient = KubeClient.Configuration.testing
        patient.maxRetries = 50
        let truth = try await KubeClient(connection: api.server.connection, configuration: patient)
            .list(.configMaps, namespace: "default").items
        let expected = Dictionary(uniqueKeysWithValues: truth.map { ($0.key, $0.resourceVersion ?? "") })
        #expect(await eventually { log.snapshot.view == expected })
        let snapshot = log.snapshot
        #expect(snapshot.problems.isEmpty, "\(snapshot.problems)")
        // No object was reported deleted twice.
        let deletes = snapshot.entries.filter { $0.kind == "deleted" }.map(\.key)
        #expect(deletes.count == Set(deletes).count)
        let stats = informer.statistics
        #expect(stats.watches > 5)
        if compaction {
            #expect(stats.relistsAfterGone >= 1)
        } else {
            // Every change was delivered: each object's add, its update, its delete.
            #expect(stats.relistsAfterGone == 0)
            let allDeleted = Set((0..<25).map { "default/obj-\($0)" } + (0..<15).map { "default/pre-\($0)" })
            #expect(Set(deletes) == allDeleted)
            let updated = Set(snapshot.entries.filter { $0.kind == "updated" }.map(\.key))
            #expect(updated == Set((0..<28).map { "default/obj-\($0)" }))
            #expect(snapshot.entries.filter { $0.kind == "added" }.count == 50)
        }
        // The store equals the server.
        #expect(Set(informer.store.list().map { "\($0.key)@\($0.resourceVersion ?? "")" }) == Set(truth.map { "\($0.key)@\($0.resourceVersion ?? "")" }))
    }

    @Test("Resync hands every object out again")
    func resync() async throws {
        let api = try await APIFixture.start()
        defer { Task { await api.close() } }
        _ = try await api.client.create(.configMaps, configMap("a"))
        let informer = Informer(client: api.client, type: .configMaps, configuration: .init(resyncPeriod: .milliseconds(50)))
        let log = InformerLog()
        informer.addHandler { log.record($0) }
        let run = Task { await informer.run() }
        defer { run.cancel() }
        #expect(await eventually { log.snapshot.entries.filter { $0.kind == "resync" && $0.key == "default/a" }.count >= 2 })
    }
}

@Suite("Work queue: dedupe, one worker per key, per-key backoff")
struct WorkQueueTests {
    @Test("A key waits once however often it is added")
    func dedupe() async {
        let queue = WorkQueue<String>()
        for _ in 0..<5 { await queue.add("a") }
        await queue.add("b")
        #expect(await queue.count == 2)
        #expect(await queue.next() == "a")
        #expect(await queue.next() == "b")
    }

    @Test("A key added while processed is not handed out again until done, then once")
    func noConcurrentSameKey() async throws {
        let queue = WorkQueue<String>()
        await queue.add("a")
        let key = await queue.next()
        #expect(key == "a")
        await queue.add("a")
        await queue.add("a")
        #expect(await queue.count == 0)
        // A second worker waiting now gets nothing until "a" is done.
        let waiter = Task { await queue.next() }
        try await Task.sleep(for: .milliseconds(50))
        await queue.done("a")
        #expect(await waiter.value == "a")
        await queue.done("a")
        #expect(await queue.count == 0)
    }

    @Test("Many workers never process one key at the same time")
    func workers() async {
        let queue = WorkQueue<Int>()
        let inFlight = InFlight()
        await withTaskGroup(of: Void.self) { group in
            for _ in 0..<4 {
                group.addTask {
                    while let key = await queue.next() {
                        inFlight.enter(key)
                        try? await Task.sleep(for: .microseconds(200))
                        inFlight.leave(key)
                        await queue.done(key)
                    }
                }
            }
            for round in 0..<300 {
                await queue.add(round % 5)
                if round % 10 == 9 { try? await Task.sleep(for: .milliseconds(1)) }
            }
            try? await Task.sleep(for: .milliseconds(100))
            await queue.shutDown()
        }
        #expect(inFlight.overlaps == 0)
        #expect(inFlight.processed > 5)
    }

    @Test("Backoff per key: 5 ms doubling to 1000 s, forgotten on success", arguments: [
        (1, 0.005), (2, 0.010), (3, 0.020), (10, 2.56), (18, 655.36), (19, 1000.0), (60, 1000.0),
    ])
    func backoff(failures: Int, seconds: Double) {
        let delay = WorkQueue<String>.Backoff().delay(afterFailures: failures)
        let measured = Double(delay.components.seconds) + Double(delay.components.attoseconds) * 1e-18
        #expect(abs(measured - seconds) < 1e-6)
    }

    @Test("addRateLimited delays by the failure count; forget resets it")
    func rateLimitedRequeue() async throws {
        let queue = WorkQueue<String>(backoff: .init(baseDelay: .milliseconds(40), maxDelay: .seconds(10)))
        await queue.addRateLimited("a")
        await queue.addRateLimited("a")
        #expect(await queue.failureCount("a") == 2)
        #expect(await queue.count == 0)
        let start = ContinuousClock.now
        #expect(await queue.next() == "a")
        #expect(ContinuousClock.now - start >= .milliseconds(35))  // the first schedule (40 ms) wins
        await queue.done("a")
        await queue.forget("a")
        #expect(await queue.failureCount("a") == 0)
    }

    @Test("Shut down: waiting workers get nil")
    func shutDown() async {
        let queue = WorkQueue<String>()
        let waiter = Task { await queue.next() }
        try? await Task.sleep(for: .milliseconds(20))
        await queue.shutDown()
        #expect(await waiter.value == nil)
        await queue.add("late")
        #expect(await queue.next() == nil)
    }
}

final class InFlight: @unchecked Sendable {
    private let lock = NSLock()
    private var current = Set<Int>()
    private(set) var overlaps = 0
    private(set) var processed = 0
    func enter(_ key: Int) { lock.withLock { if !current.insert(key).inserted { overlaps += 1 }; processed += 1 } }
    func leave(_ key: Int) { lock.withLock { _ = current.remove(key) } }
}
