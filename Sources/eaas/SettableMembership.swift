import Foundation
import Transport

/// A membership the benchmark changes as it replaces pods (in a cluster, the EndpointSlices do).
final class SettableMembership: MembershipSource, @unchecked Sendable {
    private let lock = NSLock()
    private var view: MembershipView
    private var watchers: [UUID: AsyncStream<MembershipView>.Continuation] = [:]

    init(_ view: MembershipView) { self.view = view }

    func current() -> MembershipView {
        lock.lock()
        defer { lock.unlock() }
        return view
    }

    /// Replaces the view; watchers get it.
    func set(_ new: MembershipView) {
        lock.lock()
        view = new
        let current = Array(watchers.values)
        lock.unlock()
        for watcher in current { watcher.yield(new) }
    }

    func changes() -> AsyncStream<MembershipView> {
        let (stream, continuation) = AsyncStream<MembershipView>.makeStream()
        let id = UUID()
        lock.lock()
        watchers[id] = continuation
        continuation.yield(view)
        lock.unlock()
        continuation.onTermination = { [weak self] _ in
            guard let self else { return }
            self.lock.lock()
            self.watchers[id] = nil
            self.lock.unlock()
        }
        return stream
    }
}
