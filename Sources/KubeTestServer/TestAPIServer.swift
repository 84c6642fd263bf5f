import Foundation
import Hummingbird
import JSON
import Kube
import Logging
import NIOCore

/// A Kubernetes API server in memory on a loopback port, for tests and for trying clients by hand
/// (`swift run kube-test-apiserver`). It keeps the API's documented semantics — discovery,
/// resourceVersions, list paging, watches with bookmarks and 410, selectors, optimistic concurrency,
/// the four patch types, CRDs, status and scale subresources, finalizers and owner garbage collection
/// — and can inject faults. It runs no controllers and no pods.
public final class TestAPIServer: Sendable {
    /// Server behaviour.
    public struct Configuration: Sendable {
        /// Port on 127.0.0.1; 0 picks a free one (see `port`).
        public var port = 0
        /// How often a watch that asked for bookmarks gets one. The real server sends one about a minute.
        public var bookmarkInterval: Duration = .seconds(1)
        /// How long a watch lasts without `timeoutSeconds`.
        public var defaultWatchTimeout: Duration = .seconds(1800)
        /// When set, every request must carry `Authorization: Bearer <token>` (else 401).
        public var requiredBearerToken: String?
        /// Changes kept per resource for watch resumption before older ones are compacted.
        public var logLimit = 100_000
        public init() {}
    }

    let state: APIState
    let faults = FaultInjector()
    /// Every resource request, as RBAC would see it.
    public let audit = AuditLog()
    public let configuration: Configuration
    private let runTask = ManagedTask()
    private let boundPort = PortBox()

    /// Starts the server and returns once it accepts connections.
    public init(configuration: Configuration = Configuration()) async throws {
        self.configuration = configuration
        state = APIState(logLimit: configuration.logLimit)
        let responder = APIResponder(state: state, faults: faults, audit: audit, configuration: configuration)
        let ready = AsyncStream<Int>.makeStream()
        let application = Application(
            responder: CallbackResponder { request, context in try await responder.respond(to: request, context: context) },
            configuration: .init(address: .hostname("127.0.0.1", port: configuration.port), serverName: "kube-test-apiserver"),
            onServerRunning: { channel in
                ready.continuation.yield(channel.localAddress?.port ?? 0)
                ready.continuation.finish()
            },
            logger: .init(label: "kube-test-apiserver", factory: { _ in SwiftLogNoOpLogHandler() })
        )
        runTask.task = Task {
            defer { ready.continuation.finish() }  // a server that could not start ends the wait below
            // No signal handling of its own: whoever embeds the server (a test, `eaas up`, the
            // kube-test-apiserver command) decides what SIGTERM means and calls `shutdown()`.
            try await application.runService(gracefulShutdownSignals: [])
        }
        var iterator = ready.stream.makeAsyncIterator()
        guard let port = await iterator.next(), port > 0 else { throw KubeClientError.transport("the test API server did not start") }
        boundPort.port = port
        responder.port.port = port
    }

    /// The port it listens on (127.0.0.1).
    public var port: Int { boundPort.port }
    /// `http://127.0.0.1:<port>`.
    public var url: String { "http://127.0.0.1:\(port)" }
    /// A connection for `KubeClient` (with the required token, if any).
    public var connection: ClusterConnection {
        ClusterConnection(server: url, bearerToken: configuration.requiredBearerToken)
    }

    /// A kubeconfig document for real clients (kubectl, the Python client) pointing here.
    public func kubeconfig(namespace: String = "default") -> String {
        var user = "{}"
        if let token = configuration.requiredBearerToken { user = "{token: \"\(token)\"}" }
        return """
        apiVersion: v1
        kind: Config
        clusters:
        - name: test
          cluster: {server: "\(url)"}
        users:
        - name: test
          user: \(user)
        contexts:
        - name: test
          context: {cluster: test, user: test, namespace: \(namespace)}
        current-context: test

        """
    }

    /// Stops serving; open watches end.
    public func shutdown() async {
        state.dropWatches()
        runTask.task?.cancel()
        _ = await runTask.task?.result
    }

    // MARK: Direct access (no HTTP)

    /// Creates or replaces an object in process, as a controller the server does not run would
    /// (a kubelet reporting pod status, a bulk load for a benchmark). Same rules as the API: a new
    /// resourceVersion, generation, watchers told. `type` must be served.
    @discardableResult
    public func write(_ type: ResourceType, _ object: KubeObject, manager: String = "test") throws -> KubeObject {
        guard let resource = state.resource(group: type.group, version: type.version, plural: type.plural) else {
            throw KubeAPIError(code: 404, reason: .notFound, message: "\(type) is not served")
        }
        let namespace = type.namespaced ? (object.namespace ?? "default") : nil
        do {
            if let name = object.name, (try? state.get(resource, namespace: namespace, name: name)) != nil {
                var replacement = object
                replacement.resourceVersion = nil
                if resource.isCustom { replacement.resourceVersion = try state.get(resource, namespace: namespace, name: name)[path: ["metadata", "resourceVersion"]]?.string }
                var written = KubeObject(try state.update(resource, namespace: namespace, name: name, body: replacement.json,
                                                          subresource: nil, request: WriteRequest(manager: manager)))
                if resource.hasStatus, let status = object["status"] {
                    written["status"] = status
                    written = KubeObject(try state.update(resource, namespace: namespace, name: name, body: written.json,
                                                          subresource: .status, request: WriteRequest(manager: manager)))
                }
                return written
            }
            var created = KubeObject(try state.create(resource, namespace: namespace, body: object.json, manager: manager, dryRun: false))
            if resource.hasStatus, let status = object["status"], let name = created.name {
                created["status"] = status
                created = KubeObject(try state.update(resource, namespace: namespace, name: name, body: created.json,
                                                      subresource: .status, request: WriteRequest(manager: manager)))
            }
            return created
        } catch {
            throw KubeAPIError(status: error.status)
        }
    }

    /// The stored object, if any (no HTTP).
    public func object(_ type: ResourceType, _ name: String, namespace: String? = "default") -> KubeObject? {
        guard let resource = state.resource(group: type.group, version: type.version, plural: type.plural) else { return nil }
        return (try? state.get(resource, namespace: type.namespaced ? namespace : nil, name: name)).map(KubeObject.init)
    }

    /// The stored objects of a type in a namespace (no HTTP).
    public func objects(_ type: ResourceType, namespace: String? = "default") -> [KubeObject] {
        guard let resource = state.resource(group: type.group, version: type.version, plural: type.plural),
              let labels = try? LabelSelector(parsing: ""), let fields = try? FieldSelector(parsing: "", kind: type.kind),
              let list = try? state.list(resource, namespace: type.namespaced ? namespace : nil, labels: labels, fields: fields, limit: nil, continueToken: nil)
        else { return [] }
        return (list["items"]?.array ?? []).map(KubeObject.init)
    }

    // MARK: Inspection and faults

    /// The last revision written.
    public var revision: Int { state.currentRevision }
    /// Watches currently open.
    public var openWatchCount: Int { state.openWatchCount }

    /// Compacts every change log: a watch or continue token from before now is answered 410.
    public func compact() { state.compact() }
    /// Moves the revision on, compacts and cuts every watch in one step: every resuming watcher
    /// meets a 410 and must list again (a plain `compact` leaves a watcher that had seen everything
    /// able to resume).
    public func expireWatches() { state.expireWatches() }
    /// Ends every open watch, as an API server restart or a load balancer timeout would.
    public func dropWatches() { state.dropWatches() }
    /// The next `count` requests for which `matching(method, path)` holds are answered `status`
    /// (e.g. 500, or 429 with Retry-After) without being acted on.
    public func failNext(_ count: Int, status: Int = 500, retryAfterSeconds: Int? = nil,
                         matching: @escaping @Sendable (_ method: String, _ path: String) -> Bool = { _, _ in true }) {
        faults.add(FaultInjector.Failure(remaining: count, status: status, retryAfterSeconds: retryAfterSeconds, matches: matching))
    }
    /// While paused, new watch requests wait before they start (writes go on), as if the clients
    /// were cut off; on resume they catch up from their resourceVersion.
    public func pauseNewWatches(_ paused: Bool) { faults.setWatchesPaused(paused) }
    /// Disarms every injected failure, delay and race.
    public func clearFaults() { faults.clear() }
    /// Every response waits this long first (zero: none).
    public func setDelay(_ delay: Duration) { faults.setDelay(delay) }
    /// Just before the next write (PUT or PATCH) to `name`, another writer changes it with `change`:
    /// the client's write then races a newer version (and gets 409 if it named the old one).
    public func raceNextWrite(to type: ResourceType, _ name: String, namespace: String? = nil,
                              change: @escaping @Sendable (inout JSONValue) -> Void) {
        faults.addRace(FaultInjector.Race(path: type.path(namespace: type.namespaced ? (namespace ?? "default") : nil, name: name), change: change))
    }
}

/// Holds the running application's task.
final class ManagedTask: @unchecked Sendable {
    private let lock = NSLock()
    private var _task: Task<Void, Error>?
    var task: Task<Void, Error>? {
        get { lock.withLock { _task } }
        set { lock.withLock { _task = newValue } }
    }
}

final class PortBox: @unchecked Sendable {
    private let lock = NSLock()
    private var _port = 0
    var port: Int {
        get { lock.withLock { _port } }
        set { lock.withLock { _port = newValue } }
    }
}

/// Failures, delays and racing writers waiting to be injected.
final class FaultInjector: @unchecked Sendable {
    struct Failure {
        var remaining: Int
        let status: Int
        let retryAfterSeconds: Int?
        let matches: @Sendable (String, String) -> Bool
    }
    struct Race {
        let path: String
        let change: @Sendable (inout JSONValue) -> Void
    }
    private let lock = NSLock()
    private var failures: [Failure] = []
    private var races: [Race] = []
    private var delay: Duration = .zero
    private var watchesPaused = false
    func setWatchesPaused(_ value: Bool) { lock.withLock { watchesPaused = value } }
    var newWatchesPaused: Bool { lock.withLock { watchesPaused } }

    func add(_ failure: Failure) { lock.withLock { failures.append(failure) } }
    func addRace(_ race: Race) { lock.withLock { races.append(race) } }
    func setDelay(_ value: Duration) { lock.withLock { delay = value } }
    func clear() {
        lock.withLock {
            failures.removeAll()
            races.removeAll()
            delay = .zero
            watchesPaused = false
        }
    }
    var currentDelay: Duration { lock.withLock { delay } }

    /// The failure to answer this request with, if one is armed for it.
    func failure(method: String, path: String) -> Failure? {
        lock.withLock {
            guard let index = failures.firstIndex(where: { $0.remaining > 0 && $0.matches(method, path) }) else { return nil }
            failures[index].remaining -= 1
            let failure = failures[index]
            if failures[index].remaining == 0 { failures.remove(at: index) }
            return failure
        }
    }

    func takeRace(path: String) -> Race? {
        lock.withLock {
            guard let index = races.firstIndex(where: { $0.path == path }) else { return nil }
            return races.remove(at: index)
        }
    }
}

/// What each client asked of the API, in RBAC's terms, so tests can check that a role grants
/// exactly what a component uses.
public final class AuditLog: @unchecked Sendable {
    /// One request: `verb` as RBAC names it (`get`, `list`, `watch`, `create`, `update`, `patch`,
    /// `delete`), the resource with its subresource (`expertpools/status`), and the client's
    /// User-Agent (its product token).
    public struct Record: Sendable, Hashable {
        public var verb: String
        public var group: String
        public var resource: String
        public var namespace: String?
        public var userAgent: String
    }
    private let lock = NSLock()
    private var entries: [Record] = []

    func append(_ record: Record) { lock.withLock { entries.append(record) } }

    /// Everything recorded so far.
    public var records: [Record] { lock.withLock { entries } }
}
