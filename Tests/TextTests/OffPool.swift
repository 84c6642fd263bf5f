import Foundation

/// Runs blocking or long CPU work (a tokenizer pass over a corpus, a model, a child process waited
/// for) on a thread of its own and awaits it, so that no Swift concurrency thread is held: on two
/// cores the pool has two, and scenario tests polling files and sockets meanwhile must keep running.
/// Expectations are checked by the caller on what `body` returns.
func offPool<T: Sendable>(_ body: @escaping @Sendable () throws -> T) async throws -> T {
    try await withCheckedThrowingContinuation { continuation in
        let thread = Thread { continuation.resume(with: Result { try body() }) }
        thread.stackSize = 8 << 20
        thread.start()
    }
}
