import Foundation
import JSON
import Kube
import KubeTestServer
import Testing

/// The controller runtime against the test API server: which changes reconcile which primary
/// object, the error policy, requeues, the sync wait and cancellation.
@Suite("KubeController: owns, watches, error backoff, requeue, sync")
struct KubeControllerTests {
    /// What the reconciler was called with, and how it should answer.
    final class Calls: @unchecked Sendable {
        private let lock = NSLock()
        private var calls: [(ref: ObjectRef, at: ContinuousClock.Instant)] = []
        private var running: [ObjectRef: Int] = [:]
        private(set) var mostAtOnce = 0
        var answer: @Sendable (ObjectRef, Int) throws -> ReconcileAction = { _, _ in .awaitChange }

        func record(_ ref: ObjectRef) throws -> ReconcileAction {
            let count: Int = lock.withLock {
                calls.append((ref, .now))
                running[ref, default: 0] += 1
                mostAtOnce = max(mostAtOnce, running[ref]!)
                return calls.count { $0.ref == ref }
            }
            defer { lock.withLock { running[ref]! -= 1 } }
            return try answer(ref, count)
        }

        func count(_ ref: ObjectRef) -> Int { lock.withLock { calls.count { $0.ref == ref } } }
        func times(_ ref: ObjectRef) -> [ContinuousClock.Instant] { lock.withLock { calls.filter { $0.ref == ref }.map(\.at) } }
        var refs: Set<ObjectRef> { lock.withLock { Set(calls.map(\.ref)) } }
        func reset() { lock.withLock { calls = [] } }
    }

    static func child(_ name: String, owner: KubeObject?, kind: String = "Widget", controller: Bool = true, labels: [String: String] = [:]) -> KubeObject {
        var object = configMap(name, labels: labels)
        if let owner {
            var reference = owner.controllerReference()
            reference["kind"] = .string(kind)
            reference["controller"] = .bool(controller)
            object.ownerReferences = [reference]
        }
        return object
    }

    struct Running {
        let controller: KubeController
        let task: Task<Void, Never>
        let reports: Reports
    }

    final class Reports: @unchecked Sendable {
        private let lock = NSLock()
        private var all: [ReconcileReport] = []
        func add(_ report: ReconcileReport) { lock.withLock { all.append(report) } }
        var failures: [Int] { lock.withLock { all.filter { $0.error != nil }.map(\.failures) } }
        var successes: Int { lock.withLock { all.count { $0.error == nil } } }
    }

    /// A controller of widgets owning ConfigMaps and watching Secrets (each names its widget in a label).
    static func start(_ api: APIFixture, calls: Calls, workers: Int = 2) async throws -> Running {
        var configuration = KubeController.Configuration(workers: workers)
        configuration.backoff = .init(baseDelay: .milliseconds(50), maxDelay: .seconds(1))
        let controller = KubeController(for: widgets, client: api.client, informer: .init(namespace: "default"), configuration: configuration)
            .owns(.configMaps, .init(namespace: "default"))
            .watches(.secrets, .init(namespace: "default")) { secret in
                secret.labels["widget"].map { [ObjectRef(namespace: secret.namespace, name: $0)] } ?? []
            }
        let reports = Reports()
        let task = Task { await controller.run(reconcile: { try calls.record($0) }, report: { reports.add($0) }) }
        #expect(await eventually { controller.hasSynced })
        return Running(controller: controller, task: task, reports: reports)
    }

    @Test("The primary, what it owns (controller reference of its kind) and what it watches (by the map) each reconcile the right primary; other owners reconcile nothing")
    func changesMapToTheirPrimary() async throws {
        let api = try await APIFixture.start()
        defer { Task { await api.close() } }
        _ = try await api.client.create(.customResourceDefinitions, widgetCRD)
        let a = try await api.client.create(widgets, widget("a"))
        let ab = try await api.client.create(widgets, widget("a-b"))
        let calls = Calls()
        let running = try await Self.start(api, calls: calls)
        defer { running.task.cancel() }
        let refA = ObjectRef(namespace: "default", name: "a"), refAB = ObjectRef(namespace: "default", name: "a-b")
        // The initial list reconciles every primary once.
        #expect(await eventually { calls.count(refA) == 1 && calls.count(refAB) == 1 })
        #expect(running.controller.store(widgets).get(refA)?.name == "a")

        // A child of a-b (a name that starts with a's): only a-b.
        _ = try await api.client.create(.configMaps, Self.child("a-b-plan", owner: ab))
        #expect(await eventually { calls.count(refAB) == 2 })
        // A child of a.
        _ = try await api.client.create(.configMaps, Self.child("a-plan", owner: a))
        #expect(await eventually { calls.count(refA) == 2 })
        // Owned by a's uid but as another kind, or not as controller: nothing.
        _ = try await api.client.create(.configMaps, Self.child("not-mine", owner: a, kind: "Gadget"))
        _ = try await api.client.create(.configMaps, Self.child("not-controller", owner: a, controller: false))
        // A watched Secret names its widget.
        _ = try await api.client.create(.secrets, KubeObject(.secrets, name: "s", namespace: "default", labels: ["widget": "a-b"], fields: ["data": ["k": "dg=="]]))
        #expect(await eventually { calls.count(refAB) == 3 })
        // A change of the primary itself.
        _ = try await api.client.patch(widgets, "a", .merge(["spec": ["color": "red"]]))
        #expect(await eventually { calls.count(refA) == 3 })
        try await Task.sleep(for: .milliseconds(300))
        #expect(calls.count(refA) == 3 && calls.count(refAB) == 3, "the other owners' children reconciled a")
        #expect(calls.refs == [refA, refAB])
    }

    @Test("A failing reconcile is retried after a growing backoff; a success forgets the failures; requeue(after:) comes back without an event")
    func errorPolicyAndRequeue() async throws {
        let api = try await APIFixture.start()
        defer { Task { await api.close() } }
        _ = try await api.client.create(.customResourceDefinitions, widgetCRD)
        _ = try await api.client.create(widgets, widget("flaky"))
        struct Refused: Error {}
        let calls = Calls()
        // Fails three times, then succeeds and asks to be looked at again in 200 ms, twice.
        calls.answer = { _, count in
            if count <= 3 { throw Refused() }
            return count <= 5 ? .requeue(after: .milliseconds(200)) : .awaitChange
        }
        let running = try await Self.start(api, calls: calls)
        defer { running.task.cancel() }
        let ref = ObjectRef(namespace: "default", name: "flaky")
        #expect(await eventually { calls.count(ref) == 6 })
        let times = calls.times(ref)
        let gaps = zip(times.dropFirst(), times).map { ($0 - $1) }
        // Backoff 50, 100, 200 ms after the failures (the queue's doubling), then the requeues.
        #expect(gaps[0] >= .milliseconds(45) && gaps[1] >= .milliseconds(95) && gaps[2] >= .milliseconds(195), "\(gaps)")
        #expect(gaps[3] >= .milliseconds(195) && gaps[4] >= .milliseconds(195), "requeue(after:) waited: \(gaps)")
        #expect(running.reports.failures == [1, 2, 3])
        #expect(running.reports.successes == 3)
        try await Task.sleep(for: .milliseconds(500))
        #expect(calls.count(ref) == 6, "awaitChange: nothing more without a change")
        #expect(await running.controller.queue.failureCount(ref) == 0, "a success forgets the failures")
    }

    @Test("Reconciles start once every cache is filled, never two at once for one object, and cancellation ends run")
    func syncOnePerObjectAndCancel() async throws {
        let api = try await APIFixture.start()
        defer { Task { await api.close() } }
        _ = try await api.client.create(.customResourceDefinitions, widgetCRD)
        let owner = try await api.client.create(widgets, widget("w"))
        for index in 0..<20 { _ = try await api.client.create(.configMaps, Self.child("c\(index)", owner: owner)) }
        let calls = Calls()
        let seenChildren = Counter()
        let store = Box<InformerStore>()
        calls.answer = { _, _ in
            // The owned cache is full before the first reconcile.
            seenChildren.set(store.value?.list().count ?? -1)
            Thread.sleep(forTimeInterval: 0.02)
            return .awaitChange
        }
        var configuration = KubeController.Configuration(workers: 4)
        configuration.backoff = .init(baseDelay: .milliseconds(10))
        let controller = KubeController(for: widgets, client: api.client, configuration: configuration).owns(.configMaps)
        store.value = controller.store(.configMaps)
        let task = Task { await controller.run(reconcile: { try calls.record($0) }) }
        let ref = ObjectRef(namespace: "default", name: "w")
        #expect(await eventually { calls.count(ref) >= 1 })
        #expect(seenChildren.first == 20, "the first reconcile saw \(seenChildren.first) of 20 children")
        // A burst of changes to its children while it reconciles: one at a time, and fewer runs than changes.
        for index in 0..<20 { _ = try await api.client.patch(.configMaps, "c\(index)", .merge(["data": ["k": .string("\(index)")]])) }
        try await Task.sleep(for: .milliseconds(500))
        #expect(calls.mostAtOnce == 1)
        #expect(calls.count(ref) >= 2 && calls.count(ref) <= 21, "\(calls.count(ref)) reconciles")
        task.cancel()
        await task.value
        #expect(!controller.hasSynced)
    }
}

/// The first value set, from any thread.
final class Counter: @unchecked Sendable {
    private let lock = NSLock()
    private var value: Int?
    func set(_ new: Int) { lock.withLock { if value == nil { value = new } } }
    var first: Int { lock.withLock { value ?? -1 } }
}

/// A value set once after creation, read from the reconciler.
final class Box<T>: @unchecked Sendable {
    private let lock = NSLock()
    private var stored: T?
    var value: T? {
        get { lock.withLock { stored } }
        set { lock.withLock { stored = newValue } }
    }
}
