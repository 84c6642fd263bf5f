import Foundation

/// Runs blocking or long CPU work (a model pass, a child process waited for, a paced loop) on a
/// thread of its own and awaits it, so that no Swift concurrency thread is held: on two cores the
/// pool has two, and whatever polls sockets and files meanwhile must keep running.
public func offPool<T: Sendable>(_ body: @escaping @Sendable () throws -> T) async throws -> T {
    try await withCheckedThrowingContinuation { continuation in
        let thread = Thread { continuation.resume(with: Result { try body() }) }
        thread.stackSize = 8 << 20
        thread.start()
    }
}
