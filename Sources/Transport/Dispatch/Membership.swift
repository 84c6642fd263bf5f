import Foundation

/// One expert server as the client sees it.
public struct ServerInfo: Sendable, Hashable, Codable {
    /// Stable name (the pod name in Kubernetes, `host:port` otherwise).
    public var id: String
    /// Where to reach it: `host:port` of its handshake listener.
    public var address: String
    /// The experts it hosts.
    public var experts: [HostedExpert]
    /// False while it is draining or failing health checks; no new work goes to it.
    public var ready: Bool

    public init(id: String, address: String, experts: [HostedExpert], ready: Bool = true) {
        self.id = id
        self.address = address
        self.experts = experts
        self.ready = ready
    }
}

extension HostedExpert: Codable {
    enum CodingKeys: String, CodingKey { case layer, expert }

    public init(from decoder: Decoder) throws {
        let c = try decoder.container(keyedBy: CodingKeys.self)
        self.init(layer: try c.decode(UInt16.self, forKey: .layer), expert: try c.decode(UInt16.self, forKey: .expert))
    }

    public func encode(to encoder: Encoder) throws {
        var c = encoder.container(keyedBy: CodingKeys.self)
        try c.encode(layer, forKey: .layer)
        try c.encode(expert, forKey: .expert)
    }
}

/// Which servers host which experts, at one moment: what the dispatcher chooses replicas from.
public struct MembershipView: Sendable, Equatable {
    public let servers: [ServerInfo]
    /// For each hosted expert, the indices into `servers` of the ready servers hosting it, ascending.
    private let replicas: [HostedExpert: [Int]]

    public init(servers: [ServerInfo]) {
        self.servers = servers.sorted { $0.id < $1.id }
        var replicas: [HostedExpert: [Int]] = [:]
        for (index, server) in self.servers.enumerated() where server.ready {
            for expert in Set(server.experts) { replicas[expert, default: []].append(index) }
        }
        self.replicas = replicas
    }

    /// Indices of the ready servers that host `expert` (empty when none does).
    public func replicas(of expert: HostedExpert) -> [Int] { replicas[expert] ?? [] }

    /// Every expert some ready server hosts.
    public var hostedExperts: Set<HostedExpert> { Set(replicas.keys) }
}

/// Where the dispatcher learns the membership: a static list, a file, or (later) Kubernetes
/// EndpointSlices. `current()` is cheap; `changes()` yields each new view.
public protocol MembershipSource: Sendable {
    func current() -> MembershipView
    func changes() -> AsyncStream<MembershipView>
}

/// A fixed membership given on the command line or in code.
public struct StaticMembership: MembershipSource {
    public let view: MembershipView

    public init(servers: [ServerInfo]) { view = MembershipView(servers: servers) }

    public func current() -> MembershipView { view }

    public func changes() -> AsyncStream<MembershipView> {
        AsyncStream { continuation in
            continuation.yield(view)
            continuation.finish()
        }
    }
}

/// A bad membership file: the message names the file and what is wrong.
public struct MembershipError: Error, CustomStringConvertible, Sendable {
    public let description: String
}

/// Membership read from a JSON file (`{"servers": [{"id", "address", "experts": [{"layer", "expert"}], "ready"}]}`)
/// and re-read whenever its modification time or size changes. A file that fails to parse keeps
/// the last good view (and is reported through `lastError`), so a half-written edit never empties
/// the membership.
public final class FileMembership: MembershipSource, @unchecked Sendable {
    public let path: String
    public let pollInterval: Duration
    private let lock = NSLock()
    private var view: MembershipView
    private var stamp: (Date, Int)?
    private var error: MembershipError?

    /// Reads `path` now; a missing or malformed file is an error here (there is no last good view yet).
    public init(path: String, pollInterval: Duration = .milliseconds(500)) throws {
        self.path = path
        self.pollInterval = pollInterval
        let (view, stamp) = try Self.read(path)
        self.view = view
        self.stamp = stamp
    }

    /// When the file was last looked at by `current()`.
    private var lastLook = ContinuousClock.now

    /// The current view; the file is looked at again (one `stat`) when `pollInterval` has passed
    /// since the last look, so a reader that only calls this still follows the file.
    public func current() -> MembershipView {
        let now = ContinuousClock.now
        lock.lock()
        let due = now - lastLook >= pollInterval
        if due { lastLook = now }
        lock.unlock()
        if due { refresh() }
        lock.lock()
        defer { lock.unlock() }
        return view
    }

    /// Why the last re-read failed, if it did.
    public var lastError: MembershipError? {
        lock.lock()
        defer { lock.unlock() }
        return error
    }

    /// Re-reads the file if it changed; returns the new view when it did and parsed.
    @discardableResult
    public func refresh() -> MembershipView? {
        let attributes = try? FileManager.default.attributesOfItem(atPath: path)
        let newStamp = ((attributes?[.modificationDate] as? Date) ?? .distantPast, (attributes?[.size] as? Int) ?? -1)
        lock.lock()
        let unchanged = stamp.map { $0 == newStamp } ?? false
        lock.unlock()
        if unchanged { return nil }
        do {
            let (fresh, readStamp) = try Self.read(path)
            lock.lock()
            defer { lock.unlock() }
            stamp = readStamp
            error = nil
            guard fresh != view else { return nil }
            view = fresh
            return fresh
        } catch {
            lock.lock()
            self.error = error as? MembershipError ?? MembershipError(description: "\(path): \(error)")
            stamp = newStamp
            lock.unlock()
            return nil
        }
    }

    /// Yields the current view, then each change found by polling every `pollInterval`.
    public func changes() -> AsyncStream<MembershipView> {
        AsyncStream { continuation in
            continuation.yield(current())
            let task = Task {
                while !Task.isCancelled {
                    try? await Task.sleep(for: pollInterval)
                    if let view = refresh() { continuation.yield(view) }
                }
                continuation.finish()
            }
            continuation.onTermination = { _ in task.cancel() }
        }
    }

    private struct FileFormat: Decodable { let servers: [ServerInfo] }

    private static func read(_ path: String) throws -> (MembershipView, (Date, Int)) {
        let attributes = try? FileManager.default.attributesOfItem(atPath: path)
        let stamp = ((attributes?[.modificationDate] as? Date) ?? .distantPast, (attributes?[.size] as? Int) ?? -1)
        let data: Data
        do { data = try Data(contentsOf: URL(fileURLWithPath: path)) } catch {
            throw MembershipError(description: "\(path): cannot read (\(error.localizedDescription))")
        }
        let file: FileFormat
        do { file = try JSONDecoder().decode(FileFormat.self, from: data) } catch {
            throw MembershipError(description: "\(path): not a membership file: \(describe(error))")
        }
        var seen = Set<String>()
        for server in file.servers {
            guard !server.id.isEmpty, seen.insert(server.id).inserted else {
                throw MembershipError(description: "\(path): server id '\(server.id)' is empty or appears twice")
            }
            guard server.address.contains(":") else {
                throw MembershipError(description: "\(path): server '\(server.id)' address '\(server.address)' is not host:port")
            }
        }
        return (MembershipView(servers: file.servers), stamp)
    }

    private static func describe(_ error: Error) -> String {
        switch error as? DecodingError {
        case .keyNotFound(let key, let context)?: "missing '\(key.stringValue)' at \(context.codingPath.map(\.stringValue).joined(separator: "."))"
        case .typeMismatch(_, let context)?, .valueNotFound(_, let context)?, .dataCorrupted(let context)?:
            "\(context.debugDescription) at \(context.codingPath.map(\.stringValue).joined(separator: "."))"
        default: "\(error)"
        }
    }
}
