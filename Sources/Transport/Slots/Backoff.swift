import CPlatform

#if canImport(Glibc)
import Glibc
#endif

/// Polling that spins briefly, then yields, then sleeps in growing steps up to `maxSleep`: cheap
/// when the answer is microseconds away, gentle on the CPU when it is not.
struct Backoff {
    private var round = 0
    /// Spinning pays only when another CPU runs the peer meanwhile: a process confined to one
    /// CPU (as by `taskset` or a one-core container) goes straight to yielding.
    static let spins = eaas_allowed_cpu_count() > 1 ? 2000 : 0
    static let maxSleepNanoseconds = 50_000

    mutating func pause() {
        round += 1
        if round < Self.spins { return }
        if round < Self.spins + 100 {
            sched_yield()
            return
        }
        let step = min(Self.maxSleepNanoseconds, 1000 << min(6, (round - Self.spins - 100) / 64))
        var request = timespec(tv_sec: 0, tv_nsec: step)
        nanosleep(&request, nil)
    }
}
