import Foundation
import JSON
import Kube
import KubeTestServer
import Testing

@Suite("Watch: streaming events, bookmarks, 410, selectors, cancellation")
struct WatchTests {
    /// Collects events of a watch on a task of its own.
    final class Recorder: @unchecked Sendable {
        private let lock = NSLock()
        private var events: [WatchEvent] = []
        private var error: Error?
        private var ended = false
        var snapshot: [WatchEvent] { lock.withLock { events } }
        var failure: Error? { lock.withLock { error } }
        var hasEnded: Bool { lock.withLock { ended } }

        func consume(_ stream: AsyncThrowingStream<WatchEvent, Error>) -> Task<Void, Never> {
            Task {
                do {
                    for try await event in stream { lock.withLock { events.append(event) } }
                } catch { lock.withLock { self.error = error } }
                lock.withLock { ended = true }
            }
        }
        /// (type, name) of the non-bookmark events.
        var changes: [String] {
            snapshot.compactMap { event in
                switch event {
                case .added(let object): "ADDED \(object.name ?? "")"
                case .modified(let object): "MODIFIED \(object.name ?? "")"
                case .deleted(let object): "DELETED \(object.name ?? "")"
                case .bookmark: nil
                }
            }
        }
    }

    @Test("Synthetic ADDED without a version; changes after a version; bookmarks; the server's timeout ends the stream")
    func eventsAndBookmarks() async throws {
        let api = try await APIFixture.start { $0.bookmarkInterval = .milliseconds(100) }
        defer { Task { await api.close() } }
        let client = api.client
        _ = try await client.create(.configMaps, configMap("before"))
        let list = try await client.list(.configMaps, namespace: "default")

        // The server ends both watches after 10 s: long enough for the changes below on a loaded
        // machine (with 2 s, the fresh watch once ended before the delete reached it).
        let fresh = Recorder(), resumed = Recorder()
        let freshTask = fresh.consume(client.watch(.configMaps, namespace: "default", options: WatchOptions(timeoutSeconds: 10)))
        let resumedTask = resumed.consume(client.watch(.configMaps, namespace: "default",
                                                       options: WatchOptions(resourceVersion: list.resourceVersion, timeoutSeconds: 10)))
        #expect(await eventually { fresh.changes == ["ADDED before"] })
        _ = try await client.create(.configMaps, configMap("after"))
        _ = try await client.patch(.configMaps, "after", .merge(["data": ["k": "v"]]))
        _ = try await client.delete(.configMaps, "before")
        let expected = ["ADDED after", "MODIFIED after", "DELETED before"]
        #expect(await eventually { resumed.changes == expected })
        #expect(await eventually { fresh.changes == ["ADDED before"] + expected })
        #expect(await eventually { resumed.snapshot.contains { if case .bookmark = $0 { true } else { false } } })
        // The bookmark's version is the latest revision: a resume from it loses nothing.
        _ = await (freshTask.value, resumedTask.value)
        #expect(fresh.failure == nil && resumed.failure == nil)
        #expect(await eventually { api.server.openWatchCount == 0 })
    }

    @Test("A watch from a compacted version fails with 410 Gone/Expired")
    func compactedVersion() async throws {
        let api = try await APIFixture.start()
        defer { Task { await api.close() } }
        let old = try await api.client.list(.configMaps).resourceVersion
        _ = try await api.client.create(.configMaps, configMap("a"))
        api.server.compact()
        let recorder = Recorder()
        await recorder.consume(api.client.watch(.configMaps, options: WatchOptions(resourceVersion: old))).value
        let error = try #require(recorder.failure as? KubeAPIError)
        #expect(error.code == 410)
        #expect(error.reason == .expired || error.reason == .gone)
    }

    @Test("A label-selector watch sees objects enter and leave the selection as ADDED and DELETED")
    func selectorTransitions() async throws {
        let api = try await APIFixture.start()
        defer { Task { await api.close() } }
        let client = api.client
        let version = try await client.list(.configMaps).resourceVersion
        let recorder = Recorder()
        let task = recorder.consume(client.watch(.configMaps, namespace: "default",
                                                 options: WatchOptions(labelSelector: "role=expert", resourceVersion: version)))
        _ = try await client.create(.configMaps, configMap("x", labels: ["role": "other"]))
        _ = try await client.patch(.configMaps, "x", .merge(["metadata": ["labels": ["role": "expert"]]]))
        _ = try await client.patch(.configMaps, "x", .merge(["data": ["a": "b"]]))
        _ = try await client.patch(.configMaps, "x", .merge(["metadata": ["labels": ["role": "other"]]]))
        #expect(await eventually { recorder.changes == ["ADDED x", "MODIFIED x", "DELETED x"] })
        task.cancel()
    }

    @Test("Cancelling the consuming task ends the stream without an error and the server sees the watch go")
    func cancellation() async throws {
        let api = try await APIFixture.start()
        defer { Task { await api.close() } }
        let recorder = Recorder()
        let task = recorder.consume(api.client.watch(.configMaps))
        #expect(await eventually { api.server.openWatchCount == 1 })
        task.cancel()
        await task.value  // the stream ended: the transfer was stopped rather than left running
        #expect(recorder.hasEnded)
        #expect(recorder.failure == nil)
        #expect(await eventually { api.server.openWatchCount == 0 })
    }

    @Test("A dropped watch ends the stream cleanly; resuming from the last version replays what was missed")
    func dropAndResume() async throws {
        let api = try await APIFixture.start()
        defer { Task { await api.close() } }
        let client = api.client
        let first = Recorder()
        let task = first.consume(client.watch(.configMaps, namespace: "default", options: WatchOptions(resourceVersion: try await client.list(.configMaps).resourceVersion)))
        _ = try await client.create(.configMaps, configMap("one"))
        #expect(await eventually { first.changes == ["ADDED one"] })
        api.server.dropWatches()
        await task.value
        #expect(first.failure == nil)
        _ = try await client.create(.configMaps, configMap("two"))
        let resumed = Recorder()
        let last = try #require(first.snapshot.last?.resourceVersion)
        let resumeTask = resumed.consume(client.watch(.configMaps, namespace: "default", options: WatchOptions(resourceVersion: last)))
        #expect(await eventually { resumed.changes == ["ADDED two"] })
        resumeTask.cancel()
    }
}
