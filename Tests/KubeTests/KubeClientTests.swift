import Foundation
import JSON
@testable import Kube
import KubeTestServer
import Testing

@Suite("Kube client: REST verbs and errors against the test API server")
struct KubeClientTests {
    @Test("Discovery and /version answer")
    func discovery() async throws {
        let api = try await APIFixture.start()
        defer { Task { await api.close() } }
        let version = try await api.client.version()
        #expect(version["major"]?.string == "1")
        #expect(version["gitVersion"]?.string?.hasPrefix("v1.") == true)
    }

    @Test("Create, get, update, delete, with the typed error of each mistake")
    func crudAndErrors() async throws {
        let api = try await APIFixture.start()
        defer { Task { await api.close() } }
        let client = api.client
        let created = try await client.create(.configMaps, configMap("settings", data: ["a": "1"]))
        #expect(created.uid?.isEmpty == false)
        #expect(created.resourceVersion?.isEmpty == false)
        #expect(created.namespace == "default")

        let read = try await client.get(.configMaps, "settings", namespace: "default")
        #expect(read[path: "data", "a"]?.string == "1")

        var changed = read
        changed[path: "data", "a"] = "2"
        let updated = try await client.update(.configMaps, changed)
        #expect(updated.resourceVersion != read.resourceVersion)

        // The first read is now stale: optimistic concurrency refuses it.
        var stale = read
        stale[path: "data", "a"] = "3"
        await #expect { try await client.update(.configMaps, stale) } throws: { ($0 as? KubeAPIError)?.reason == .conflict }

        await #expect { try await client.create(.configMaps, configMap("settings")) } throws: {
            ($0 as? KubeAPIError)?.reason == .alreadyExists && ($0 as? KubeAPIError)?.code == 409
        }
        await #expect { try await client.get(.configMaps, "missing") } throws: {
            let error = $0 as? KubeAPIError
            return error?.reason == .notFound && error?.code == 404 && error?.message.contains("missing") == true
        }
        await #expect { try await client.create(.configMaps, configMap("Bad_Name")) } throws: {
            let error = $0 as? KubeAPIError
            return error?.reason == .invalid && error?.causes.first?.field == "metadata.name"
        }
        await #expect { try await client.create(.configMaps, configMap("x", namespace: "nowhere")) } throws: {
            ($0 as? KubeAPIError)?.reason == .notFound
        }

        let result = try await client.delete(.configMaps, "settings")
        guard case .deleted = result else { Issue.record("expected the object to be gone, got \(result)"); return }
        await #expect { try await client.get(.configMaps, "settings") } throws: { ($0 as? KubeAPIError)?.reason == .notFound }
        await #expect { try await client.delete(.configMaps, "settings") } throws: { ($0 as? KubeAPIError)?.reason == .notFound }
    }

    @Test("Label and field selectors; pages with continue come from one snapshot; an expired token is 410")
    func listSelectorsAndPaging() async throws {
        let api = try await APIFixture.start()
        defer { Task { await api.close() } }
        let client = api.client
        for index in 0..<10 {
            _ = try await client.create(.configMaps, configMap(String(format: "cm-%02d", index),
                                                              labels: ["tier": index % 2 == 0 ? "even" : "odd", "index": String(index)]))
        }
        #expect(try await client.list(.configMaps, namespace: "default", options: ListOptions(labelSelector: "tier=even")).items.count == 5)
        #expect(try await client.list(.configMaps, namespace: "default", options: ListOptions(labelSelector: "tier!=even,index in (1,3,4)")).items.count == 2)
        #expect(try await client.list(.configMaps, namespace: "default", options: ListOptions(labelSelector: "!tier")).items.isEmpty)
        let byName = try await client.list(.configMaps, namespace: "default", options: ListOptions(fieldSelector: "metadata.name=cm-03"))
        #expect(byName.items.map(\.name) == ["cm-03"])
        await #expect { try await client.list(.configMaps, options: ListOptions(fieldSelector: "data.a=1")) } throws: {
            ($0 as? KubeAPIError)?.reason == .badRequest
        }

        let first = try await client.list(.configMaps, namespace: "default", options: ListOptions(limit: 4))
        #expect(first.items.count == 4)
        #expect(first.remainingItemCount == 6)
        let token = try #require(first.continueToken)
        // Written after the first page: not part of the snapshot the pages come from.
        _ = try await client.create(.configMaps, configMap("cm-99"))
        _ = try await client.delete(.configMaps, "cm-09")
        var names = first.items.compactMap(\.name)
        var next: String? = token
        while let continueToken = next {
            let page = try await client.list(.configMaps, namespace: "default", options: ListOptions(limit: 4, continueToken: continueToken))
            names += page.items.compactMap(\.name)
            next = page.continueToken
        }
        #expect(names == (0..<10).map { String(format: "cm-%02d", $0) })

        api.server.compact()
        await #expect { try await client.list(.configMaps, namespace: "default", options: ListOptions(limit: 4, continueToken: token)) } throws: {
            let reason = ($0 as? KubeAPIError)?.reason
            return reason == .expired || reason == .gone
        }
        let all = try await client.listAll(.configMaps, namespace: "default", pageSize: 3)
        #expect(all.items.count == 10)
    }

    @Test("Merge, JSON and strategic merge patches; strategic merge refused for custom resources")
    func patches() async throws {
        let api = try await APIFixture.start()
        defer { Task { await api.close() } }
        let client = api.client
        _ = try await client.create(.deployments, deployment("web"))
        let merged = try await client.patch(.deployments, "web", .merge(["metadata": ["labels": ["team": "a"]]]))
        #expect(merged.labels == ["app": "web", "team": "a"])

        let patched = try await client.patch(.deployments, "web", .json([
            ["op": "test", "path": "/spec/replicas", "value": 1],
            ["op": "replace", "path": "/spec/replicas", "value": 3],
        ]))
        #expect(patched[path: "spec", "replicas"]?.int == 3)
        await #expect { try await client.patch(.deployments, "web", .json([["op": "test", "path": "/spec/replicas", "value": 7]])) } throws: {
            ($0 as? KubeAPIError)?.reason == .invalid
        }

        // Strategic merge: containers merge by name, so a sidecar is added beside "web".
        let strategic = try await client.patch(.deployments, "web", .strategic([
            "spec": ["template": ["spec": ["containers": [["name": "sidecar", "image": "busybox"], ["name": "web", "image": "nginx:1.26"]]]]],
        ]))
        let containers = strategic[path: "spec", "template", "spec", "containers"]?.array ?? []
        #expect(Set(containers.compactMap { $0["name"]?.string }) == ["web", "sidecar"])
        #expect(containers.first { $0["name"]?.string == "web" }?["image"]?.string == "nginx:1.26")

        _ = try await client.create(.customResourceDefinitions, widgetCRD)
        _ = try await client.create(widgets, widget("w1"))
        await #expect { try await client.patch(widgets, "w1", .strategic(["spec": ["color": "red"]])) } throws: {
            ($0 as? KubeAPIError)?.reason == .unsupportedMediaType
        }
        let red = try await client.patch(widgets, "w1", .merge(["spec": ["color": "red", "size": 2]]))
        #expect(red[path: "spec", "color"]?.string == "red")
        #expect(red[path: "spec", "size"]?.int == 2)
    }

    @Test("Server-side apply creates, updates, reports a conflict with the other manager's field, and takes it with force")
    func serverSideApply() async throws {
        let api = try await APIFixture.start()
        defer { Task { await api.close() } }
        let client = api.client
        var intent = deployment("api", replicas: 2)
        let created = try await client.patch(.deployments, "api", .apply(intent.json, fieldManager: "deployer"))
        #expect(created[path: "spec", "replicas"]?.int == 2)
        #expect(created[path: "metadata", "managedFields"]?.array?.first?["manager"]?.string == "deployer")

        // Another manager changes replicas through the scale subresource…
        try await client.setScale(.deployments, "api", replicas: 5, options: WriteOptions(fieldManager: "autoscaler"))
        // …so the deployer's apply of a different count conflicts, naming the field and the manager.
        intent[path: "spec", "replicas"] = 3
        await #expect { try await client.patch(.deployments, "api", .apply(intent.json, fieldManager: "deployer")) } throws: {
            let error = $0 as? KubeAPIError
            return error?.reason == .conflict && error?.causes.contains { $0.field == ".spec.replicas" } == true
                && error?.message.contains("autoscaler") == true
        }
        let forced = try await client.patch(.deployments, "api", .apply(intent.json, fieldManager: "deployer", force: true))
        #expect(forced[path: "spec", "replicas"]?.int == 3)

        // Dropping a label from the applied configuration removes it.
        intent.labels = [:]
        let relabelled = try await client.patch(.deployments, "api", .apply(intent.json, fieldManager: "deployer", force: true))
        #expect(relabelled.labels["app"] == nil)
    }

    @Test("Status and scale subresources: generation moves with spec changes only")
    func subresources() async throws {
        let api = try await APIFixture.start()
        defer { Task { await api.close() } }
        let client = api.client
        _ = try await client.create(.customResourceDefinitions, widgetCRD)
        var created = widget("w1", replicas: 1)
        created["status"] = ["replicas": 9]  // ignored on create: status has its own subresource
        let stored = try await client.create(widgets, created)
        #expect(stored.generation == 1)
        #expect(stored["status"] == nil)

        var withStatus = stored
        withStatus["status"] = ["replicas": 1, "phase": "Ready"]
        let statusWritten = try await client.updateStatus(widgets, withStatus)
        #expect(statusWritten.generation == 1)
        #expect(statusWritten[path: "status", "phase"]?.string == "Ready")

        // A main-resource update cannot change status, and its spec change bumps generation.
        var edited = statusWritten
        edited[path: "spec", "color"] = "green"
        edited[path: "status", "phase"] = "Hacked"
        let afterEdit = try await client.update(widgets, edited)
        #expect(afterEdit.generation == 2)
        #expect(afterEdit[path: "status", "phase"]?.string == "Ready")

        // A metadata-only change does not bump generation.
        let labelled = try await client.patch(widgets, "w1", .merge(["metadata": ["labels": ["x": "y"]]]))
        #expect(labelled.generation == 2)

        let patchedStatus = try await client.patchStatus(widgets, "w1", .merge(["status": ["replicas": 2]]))
        #expect(patchedStatus[path: "status", "replicas"]?.int == 2)
        #expect(patchedStatus.generation == 2)

        let scale = try await client.scale(widgets, "w1")
        #expect(scale == Scale(replicas: 1, statusReplicas: 2, selector: nil, resourceVersion: patchedStatus.resourceVersion))
        let scaled = try await client.setScale(widgets, "w1", replicas: 4)
        #expect(scaled.replicas == 4)
        let afterScale = try await client.get(widgets, "w1")
        #expect(afterScale[path: "spec", "replicas"]?.int == 4)
        #expect(afterScale.generation == 3)

        // updateScale with a stale resourceVersion conflicts.
        await #expect { try await client.updateScale(widgets, "w1", scale) } throws: { ($0 as? KubeAPIError)?.reason == .conflict }

        _ = try await client.create(.deployments, deployment("web", replicas: 2))
        let deploymentScale = try await client.scale(.deployments, "web")
        #expect(deploymentScale.replicas == 2)
        #expect(deploymentScale.selector == "app=web")
    }

    @Test("Finalizers hold a deleted object until they are removed")
    func finalizers() async throws {
        let api = try await APIFixture.start()
        defer { Task { await api.close() } }
        let client = api.client
        var object = configMap("held")
        object.finalizers = ["example.com/cleanup"]
        _ = try await client.create(.configMaps, object)
        let result = try await client.delete(.configMaps, "held")
        guard case .pending(let pending) = result else { Issue.record("expected a pending deletion, got \(result)"); return }
        #expect(pending.deletionTimestamp != nil)

        var adding = try await client.get(.configMaps, "held")
        adding.finalizers = ["example.com/cleanup", "example.com/another"]
        await #expect { try await client.update(.configMaps, adding) } throws: { ($0 as? KubeAPIError)?.reason == .invalid }

        var releasing = try await client.get(.configMaps, "held")
        releasing.finalizers = []
        _ = try await client.update(.configMaps, releasing)
        await #expect { try await client.get(.configMaps, "held") } throws: { ($0 as? KubeAPIError)?.reason == .notFound }
    }

    @Test("Owner references: background, foreground and orphan deletion", arguments: [
        DeleteOptions.Propagation.background, .foreground, .orphan,
    ])
    func garbageCollection(policy: DeleteOptions.Propagation) async throws {
        let api = try await APIFixture.start()
        defer { Task { await api.close() } }
        let client = api.client
        let owner = try await client.create(.deployments, deployment("owner"))
        for index in 0..<3 {
            var child = configMap("child-\(index)")
            child.ownerReferences = [owner.controllerReference()]
            _ = try await client.create(.configMaps, child)
        }
        // A held dependent keeps a foreground owner until it is released.
        var held = configMap("held-child")
        held.ownerReferences = [owner.controllerReference()]
        held.finalizers = ["example.com/hold"]
        _ = try await client.create(.configMaps, held)

        let result = try await client.delete(.deployments, "owner", options: DeleteOptions(propagationPolicy: policy))
        let remaining = { try await client.list(.configMaps, namespace: "default").items.compactMap(\.name).sorted() }
        switch policy {
        case .background:
            guard case .deleted = result else { Issue.record("owner should be gone: \(result)"); return }
            #expect(try await remaining() == ["held-child"])  // deleting, held by its finalizer
            #expect(try await client.get(.configMaps, "held-child").deletionTimestamp != nil)
        case .foreground:
            guard case .pending(let pending) = result else { Issue.record("owner should wait for its dependents: \(result)"); return }
            #expect(pending.finalizers.contains("foregroundDeletion"))
            #expect(try await remaining() == ["held-child"])
            #expect(try await client.get(.deployments, "owner").deletionTimestamp != nil)
            var release = try await client.get(.configMaps, "held-child")
            release.finalizers = []
            _ = try await client.update(.configMaps, release)
            await #expect { try await client.get(.deployments, "owner") } throws: { ($0 as? KubeAPIError)?.reason == .notFound }
        case .orphan:
            await #expect { try await client.get(.deployments, "owner") } throws: { ($0 as? KubeAPIError)?.reason == .notFound }
            let children = try await client.list(.configMaps, namespace: "default").items
            #expect(children.count == 4)
            #expect(children.allSatisfy { $0.ownerReferences.isEmpty })
        }
    }

    @Test("A namespace's deletion removes its contents")
    func namespaceDeletion() async throws {
        let api = try await APIFixture.start()
        defer { Task { await api.close() } }
        let client = api.client
        _ = try await client.create(.namespaces, KubeObject(.namespaces, name: "team"))
        _ = try await client.create(.configMaps, configMap("a", namespace: "team"))
        _ = try await client.delete(.namespaces, "team")
        #expect(try await client.list(.configMaps, namespace: "team").items.isEmpty)
        await #expect { try await client.get(.namespaces, "team") } throws: { ($0 as? KubeAPIError)?.reason == .notFound }
    }

    @Test("Retries: 5xx and 429 on reads are retried; a create is not retried after a 500; limits are respected")
    func retries() async throws {
        let api = try await APIFixture.start()
        defer { Task { await api.close() } }
        let client = api.client
        _ = try await client.create(.configMaps, configMap("a"))
        api.server.failNext(2, status: 500) { method, _ in method == "GET" }
        #expect(try await client.get(.configMaps, "a").name == "a")
        api.server.failNext(1, status: 429, retryAfterSeconds: 0) { method, _ in method == "GET" }
        #expect(try await client.get(.configMaps, "a").name == "a")
        api.server.failNext(2, status: 503) { method, _ in method == "POST" }
        #expect(try await client.create(.configMaps, configMap("b")).name == "b")  // 503: not acted on, safe to resend

        api.server.failNext(1, status: 500) { method, _ in method == "POST" }
        await #expect { try await client.create(.configMaps, configMap("c")) } throws: { ($0 as? KubeAPIError)?.reason == .internalError }

        var noRetries = KubeClient.Configuration.testing
        noRetries.maxRetries = 0
        let impatient = KubeClient(connection: api.server.connection, configuration: noRetries)
        api.server.failNext(1, status: 429, retryAfterSeconds: 3) { method, _ in method == "GET" }
        await #expect { try await impatient.get(.configMaps, "a") } throws: {
            let error = $0 as? KubeAPIError
            return error?.reason == .tooManyRequests && error?.retryAfterSeconds == 3
        }
    }

    @Test("A racing second writer turns a read-modify-write into a 409; a re-read then succeeds; delays are applied")
    func racingWriterAndDelay() async throws {
        let api = try await APIFixture.start()
        defer { Task { await api.close() } }
        let client = api.client
        _ = try await client.create(.configMaps, configMap("contended", data: ["owner": "none"]))
        var mine = try await client.get(.configMaps, "contended")
        api.server.raceNextWrite(to: .configMaps, "contended") { $0[path: ["data", "owner"]] = "them" }
        mine[path: "data", "owner"] = "me"
        await #expect { try await client.update(.configMaps, mine) } throws: { ($0 as? KubeAPIError)?.reason == .conflict }
        #expect(try await client.get(.configMaps, "contended")[path: "data", "owner"]?.string == "them")
        var fresh = try await client.get(.configMaps, "contended")
        fresh[path: "data", "owner"] = "me"
        #expect(try await client.update(.configMaps, fresh)[path: "data", "owner"]?.string == "me")

        api.server.setDelay(.milliseconds(200))
        let start = ContinuousClock.now
        _ = try await client.get(.configMaps, "contended")
        #expect(ContinuousClock.now - start >= .milliseconds(190))
        api.server.clearFaults()
    }

    @Test("Connection errors are typed; a refused port is retried and then reported")
    func connectionErrors() async throws {
        var configuration = KubeClient.Configuration.testing
        configuration.maxRetries = 2
        let client = KubeClient(connection: ClusterConnection(server: "http://127.0.0.1:1"), configuration: configuration)
        await #expect { try await client.get(.configMaps, "a") } throws: {
            guard case .unreachable(let message)? = $0 as? KubeClientError else { return false }
            return message.contains("127.0.0.1") || message.lowercased().contains("connect")
        }
    }

    @Test("The token bucket admits a burst, then one request per 1/qps")
    func rateLimiter() {
        let limiter = RateLimiter(qps: 10, burst: 3)
        let start = ContinuousClock.now
        #expect(limiter.reserve(now: start) == .zero)
        #expect(limiter.reserve(now: start) == .zero)
        #expect(limiter.reserve(now: start) == .zero)
        let fourth = limiter.reserve(now: start)
        #expect(fourth > .milliseconds(99) && fourth < .milliseconds(101))
        let fifth = limiter.reserve(now: start)
        #expect(fifth > .milliseconds(199) && fifth < .milliseconds(201))
        // After a quiet second the bucket is full again (capped at the burst).
        #expect(limiter.reserve(now: start + .seconds(2)) == .zero)
    }

    @Test("A bearer token is required and sent")
    func bearerToken() async throws {
        let api = try await APIFixture.start { $0.requiredBearerToken = "s3cret" }
        defer { Task { await api.close() } }
        #expect(try await api.client.list(.configMaps).items.isEmpty)
        let anonymous = KubeClient(connection: ClusterConnection(server: api.server.url), configuration: .testing)
        await #expect { try await anonymous.list(.configMaps) } throws: { ($0 as? KubeAPIError)?.reason == .unauthorized }

        let directory = FileManager.default.temporaryDirectory.appendingPathComponent("kube-token-\(UUID().uuidString)")
        try FileManager.default.createDirectory(at: directory, withIntermediateDirectories: true)
        defer { try? FileManager.default.removeItem(at: directory) }
        try "s3cret\n".write(to: directory.appendingPathComponent("token"), atomically: true, encoding: .utf8)
        let fromFile = KubeClient(connection: ClusterConnection(server: api.server.url, bearerTokenFile: directory.appendingPathComponent("token").path),
                                  configuration: .testing)
        #expect(try await fromFile.list(.configMaps).items.isEmpty)
    }
}
