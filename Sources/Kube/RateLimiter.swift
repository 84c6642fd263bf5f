import Foundation

/// A token bucket (client-go's `flowcontrol` QPS/burst): up to `burst` requests at once, then
/// `qps` per second. Each caller reserves its token under a lock and sleeps off its own debt, so
/// waiting callers are served in arrival order without a queue.
final class RateLimiter: @unchecked Sendable {
    private let qps: Double
    private let burst: Double
    private let lock = NSLock()
    private var tokens: Double
    private var updated = ContinuousClock.now

    /// `qps` ≤ 0 turns limiting off.
    init(qps: Double, burst: Int) {
        self.qps = qps
        self.burst = Double(max(burst, 1))
        tokens = Double(max(burst, 1))
    }

    /// How long the caller must wait for its token (already reserved when this returns).
    func reserve(now: ContinuousClock.Instant = .now) -> Duration {
        guard qps > 0 else { return .zero }
        return lock.withLock {
            let elapsed = now - updated
            let seconds = elapsed.seconds
            tokens = min(burst, tokens + seconds * qps)
            updated = now
            tokens -= 1
            return tokens >= 0 ? .zero : .nanoseconds(Int64(-tokens / qps * 1e9))
        }
    }

    /// Waits for a token.
    func acquire() async throws {
        let wait = reserve()
        if wait > .zero { try await Task.sleep(for: wait) }
    }
}
