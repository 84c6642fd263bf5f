import ArgumentParser
import Foundation
import JSON
import Kube
import KubeTestServer

/// `eaas bench informer`: the Kubernetes client's informer with many objects, against the test API
/// server in this process over loopback HTTP. Measures the initial list (objects/s), the watch
/// (events/s, each a ~1 KB object parsed, stored and handed to a handler), the store's memory per
/// object, and a full re-list after the watch's version is compacted. References measured in the
/// same run: parsing the same watch lines with nothing else (the decode limit), and the objects'
/// JSON size (the memory floor).
struct InformerBenchCommand: AsyncParsableCommand {
    static let configuration = CommandConfiguration(
        commandName: "informer",
        abstract: "Informer list/watch throughput and memory with many objects (against an in-process test API server).",
        discussion: "Run from a release build (swift build -c release); debug numbers mean nothing."
    )

    @Option(help: "Objects (ConfigMaps of about 1 KB) in the store.") var objects: Int = 10_000
    @Option(help: "Changes streamed through the watch.") var updates: Int = 20_000
    @Flag(help: "Print one JSON document instead of a table.") var json = false

    func validate() throws {
        guard objects >= 1, objects <= 1_000_000 else { throw ValidationError("--objects must be between 1 and 1000000") }
        guard updates >= 1, updates <= 10_000_000 else { throw ValidationError("--updates must be between 1 and 10000000") }
    }

    func run() async throws {
        #if DEBUG
        FileHandle.standardError.write(Data("warning: this is a debug build; its numbers mean nothing (swift build -c release)\n".utf8))
        #endif
        var configuration = TestAPIServer.Configuration()
        configuration.logLimit = max(100_000, updates + objects)
        let server = try await TestAPIServer(configuration: configuration)
        var clientConfiguration = KubeClient.Configuration()
        clientConfiguration.qps = 0  // measure the client, not its politeness
        let client = KubeClient(connection: server.connection, configuration: clientConfiguration)

        // Load the server directly (no HTTP): the bench is about reading.
        var objectBytes = 0
        for index in 0..<objects {
            let written = try server.write(.configMaps, Self.object(index, revision: 0))
            objectBytes += written.json.compact.utf8.count
        }
        let baseline = Self.residentBytes()

        let counter = EventCounter()
        let informer = Informer(client: client, type: .configMaps, configuration: .init(namespace: "default"))
        informer.addHandler { counter.count($0) }
        let listStart = ContinuousClock.now
        let run = Task { await informer.run() }
        await informer.waitForSync()
        let listSeconds = Self.seconds(ContinuousClock.now - listStart)
        let afterSync = Self.residentBytes()

        // Changes committed while the informer is cut off, then delivered as one backlog when its
        // watch resumes: the rate is the whole path (server encoding, HTTP, parsing, store, handler),
        // not the test server's commit rate.
        counter.reset()
        server.pauseNewWatches(true)
        server.dropWatches()
        let writeStart = ContinuousClock.now
        for update in 0..<updates {
            try server.write(.configMaps, Self.object(update % objects, revision: update + 1))
        }
        let writeSeconds = Self.seconds(ContinuousClock.now - writeStart)
        let watchStart = ContinuousClock.now
        server.pauseNewWatches(false)
        try await Self.wait("the watch to deliver \(updates) changes") { counter.updates >= updates }
        let watchSeconds = Self.seconds(ContinuousClock.now - watchStart)

        // The decode limit: the same kind of watch lines, parsed and nothing else.
        let line = Array((#"{"type":"MODIFIED","object":"# + Self.object(7, revision: 7).json.compact + "}\n").utf8)
        let parseRounds = min(updates, 20_000)
        let parseSeconds = timeSeconds {
            for _ in 0..<parseRounds {
                _ = line.withUnsafeBufferPointer { try? JSONValue.parse(bytes: UnsafeBufferPointer(rebasing: $0.dropLast())) }
            }
        }

        // A re-list after compaction: the watch resumes from a version that is gone (410).
        counter.reset()
        let relistsBefore = informer.statistics.relistsAfterGone
        server.expireWatches()
        let relistStart = ContinuousClock.now
        try await Self.wait("the informer to list again after a 410") {
            informer.statistics.relistsAfterGone > relistsBefore && informer.hasSynced && informer.statistics.lists >= 2
        }
        let relistSeconds = Self.seconds(ContinuousClock.now - relistStart)
        run.cancel()
        await run.value
        await server.shutdown()

        let listRate = Double(objects) / listSeconds
        let eventRate = Double(updates) / watchSeconds
        let parseRate = Double(parseRounds) / parseSeconds
        let storeBytes = max(0, afterSync - baseline)
        var report = BenchReport(bench: "informer")
        report.results = [[
            "objects": objects, "updates": updates, "object_json_bytes": objectBytes / objects,
            "list_seconds": listSeconds, "list_objects_per_s": listRate,
            "watch_events_per_s": eventRate, "server_writes_per_s": Double(updates) / writeSeconds, "parse_only_events_per_s": parseRate, "watch_over_parse": eventRate / parseRate,
            "store_rss_bytes": storeBytes, "rss_bytes_per_object": storeBytes / objects,
            "rss_over_json_bytes": Double(storeBytes) / Double(objectBytes),
            "relist_after_410_seconds": relistSeconds, "events_missed": counter.problems,
        ]]
        report.summary = ["list_objects_per_s": listRate, "watch_events_per_s": eventRate,
                          "rss_bytes_per_object": storeBytes / objects, "watch_over_parse": eventRate / parseRate]
        if json {
            print(try report.json())
            return
        }
        var table = TextTable(columns: ["measure", "value", "reference", "ratio"])
        table.rows = [
            ["initial list", String(format: "%.0f objects/s (%.2f s)", listRate, listSeconds), "", ""],
            ["watch", String(format: "%.0f events/s", eventRate), String(format: "%.0f parse-only/s", parseRate), String(format: "%.2f", eventRate / parseRate)],
            ["(server commits)", String(format: "%.0f writes/s", Double(updates) / writeSeconds), "", ""],
            ["store memory", "\(storeBytes / objects) B/object", "\(objectBytes / objects) B JSON", String(format: "%.2f", Double(storeBytes) / Double(objectBytes))],
            ["re-list after 410", String(format: "%.2f s", relistSeconds), "", ""],
        ]
        print("informer: \(objects) ConfigMaps of ~\(objectBytes / objects) B, \(updates) changes (test API server in process, loopback HTTP)")
        print(table.render())
    }

    /// A ConfigMap shaped like a small real object: labels, annotations, a few data keys.
    static func object(_ index: Int, revision: Int) -> KubeObject {
        var object = KubeObject(.configMaps, name: "bench-\(index)", namespace: "default",
                                labels: ["app": "eaas", "shard": String(index % 16), "tier": "expert", "revision": String(revision)])
        object.annotations = ["eaas.dev/note": String(repeating: "n", count: 120), "eaas.dev/index": String(index)]
        object["data"] = .object(Dictionary(uniqueKeysWithValues: (0..<4).map {
            ("key-\($0)", JSONValue.string(String(repeating: Character(Unicode.Scalar(UInt8(97 + $0))), count: 150)))
        }))
        return object
    }

    /// Polls `condition` every millisecond; gives up after a minute with an error naming what was awaited.
    static func wait(_ what: String, _ condition: () -> Bool) async throws {
        let deadline = ContinuousClock.now + .seconds(60)
        while !condition() {
            guard ContinuousClock.now < deadline else { throw CommandFailure("timed out waiting for \(what)") }
            try await Task.sleep(for: .milliseconds(1))
        }
    }

    static func residentBytes() -> Int {
        guard let text = try? String(contentsOfFile: "/proc/self/statm", encoding: .utf8) else { return 0 }
        let fields = text.split(separator: " ")
        return fields.count > 1 ? (Int(fields[1]) ?? 0) * Int(sysconf(Int32(_SC_PAGESIZE))) : 0
    }

    static func seconds(_ duration: Duration) -> Double { duration.seconds }
}

/// Counts the informer's updates and notes any event out of order.
final class EventCounter: @unchecked Sendable {
    private let lock = NSLock()
    private var updated = 0
    private var odd = 0
    func count(_ event: InformerEvent) {
        lock.withLock {
            switch event {
            case .updated: updated += 1
            case .added, .deleted: odd += 1  // none expected while only updates are written
            case .resync: break
            }
        }
    }
    func reset() { lock.withLock { updated = 0; odd = 0 } }
    var updates: Int { lock.withLock { updated } }
    var problems: Int { lock.withLock { odd } }
}
