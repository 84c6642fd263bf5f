import Foundation
import JSON

/// What a watcher is sent: a watch event line, or the end of the watch.
enum WatchMessage: Sendable {
    case event(type: String, object: JSONValue)
    /// An ERROR event with this Status, after which the watch closes.
    case error(JSONValue)
    /// Nothing to send: a blank line that shows whether the client is still there.
    case heartbeat
}

/// One committed change in a collection's log, with the object before and after (for a delete,
/// `new` is the object's last state), so that watches can filter by selectors and lists can be
/// served at an older revision.
struct StoredEvent: Sendable {
    enum Kind: String, Sendable { case added = "ADDED", modified = "MODIFIED", deleted = "DELETED" }
    let revision: Int
    let kind: Kind
    let key: String
    let old: JSONValue?
    let new: JSONValue
}

/// A watch in progress: which objects it wants and where its messages go.
struct Watcher: Sendable {
    let matches: @Sendable (JSONValue) -> Bool
    let continuation: AsyncStream<WatchMessage>.Continuation
    /// The API version the client watches (objects are stored version-independently).
    let apiVersion: String

    /// Sends `event` if this watcher sees it: a change in or out of its selector is an ADDED or
    /// DELETED for it, as the API server's cache does it.
    func deliver(_ event: StoredEvent) {
        let before = event.old.map(matches) ?? false
        let after = event.kind == .deleted ? false : matches(event.new)
        let type: String
        switch (event.kind, before, after) {
        case (.deleted, true, _): type = "DELETED"
        case (.deleted, false, _): return
        case (_, false, true): type = "ADDED"
        case (_, true, true): type = "MODIFIED"
        case (_, true, false): type = "DELETED"
        default: return
        }
        continuation.yield(.event(type: type, object: withAPIVersion(event.new, apiVersion)))
    }
}

/// The objects of one resource (across its served versions), in key order, with the change log
/// that lets a watch resume and a paged list read one snapshot.
/// Guarded by `APIState.lock`.
final class ObjectCollection: @unchecked Sendable {
    var objects: [String: JSONValue] = [:]
    var log: [StoredEvent] = []
    /// Revisions up to here are compacted: a watch or continue from before is answered 410.
    var compactedThrough = 0
    var watchers: [Int: Watcher] = [:]

    /// The objects as they were at `revision` (nil if the log no longer reaches back that far).
    func snapshot(at revision: Int) -> [String: JSONValue]? {
        guard revision >= compactedThrough else { return nil }
        var state = objects
        for event in log.reversed() where event.revision > revision {
            switch event.kind {
            case .added: state[event.key] = nil
            case .modified, .deleted: state[event.key] = event.old
            }
        }
        return state
    }

    /// Keeps the log bounded, as etcd compaction does.
    func trimLog(keeping limit: Int) {
        guard log.count > limit else { return }
        let dropped = log.count - limit
        compactedThrough = max(compactedThrough, log[dropped - 1].revision)
        log.removeFirst(dropped)
    }

    /// Sends `event` to each watcher that sees it.
    func notify(_ event: StoredEvent) {
        for watcher in watchers.values { watcher.deliver(event) }
    }
}

/// Objects are stored once per resource; each answer carries the version the client asked for.
func withAPIVersion(_ object: JSONValue, _ apiVersion: String) -> JSONValue {
    guard object["apiVersion"]?.string != apiVersion else { return object }
    var object = object
    object["apiVersion"] = .string(apiVersion)
    return object
}
