import CPlatform

#if canImport(Glibc)
import Glibc
#endif

/// Polling that spins briefly, then yields, then sleeps: cheap when the answer is microseconds
/// away, gentle on the CPU when it is not. Sleeps grow with the time already waited (a sixteenth
/// of it, from 1 µs to 1 ms), so a wait costs at most about 6 % more than the answer took, while
/// clients waiting on a busy server leave its CPUs to the computation.
struct Backoff {
    private var round = 0
    private var started: ContinuousClock.Instant?
    /// Sleep this long first, when the answer is known not to come sooner (see `init(sleepUntil:)`).
    private var firstSleep: Duration = .zero
    /// A descriptor that ends any sleep when it becomes readable or hangs up (a link's control
    /// connection: a GOAWAY, an error frame, or the server's death is seen at once, not after
    /// the sleep), and whether it did.
    private var wakeDescriptor: Int32?
    private var woken = false

    /// Whether the descriptor ended a sleep since the last call.
    mutating func takeWake() -> Bool {
        defer { woken = false }
        return woken
    }

    init() {}

    /// A backoff for an answer not expected before `instant`: when that is more than 200 µs
    /// away, it sleeps until then at once instead of spinning, so that waiting clients do not
    /// take CPU (and preempt compute threads) from a server busy with their own requests.
    init(sleepUntil instant: ContinuousClock.Instant, wakeOn descriptor: Int32? = nil) {
        let ahead = instant - .now
        if ahead > .microseconds(200) { firstSleep = ahead }
        wakeDescriptor = descriptor
    }
    /// Spinning pays only when another CPU runs the peer meanwhile: a process confined to one
    /// CPU (as by `taskset` or a one-core container) goes straight to yielding.
    static let spins = eaas_allowed_cpu_count() > 1 ? 2000 : 0
    static let maxSleepNanoseconds = 50_000

    mutating func pause() {
        if firstSleep > .zero {
            let (seconds, attoseconds) = firstSleep.components
            firstSleep = .zero
            round = Self.spins + 100  // straight on to proportional sleeps
            sleep(nanoseconds: seconds * 1_000_000_000 + attoseconds / 1_000_000_000)
            // The answer is due about now: the proportional sleeps start small from here, not
            // sized by the time slept through (which made them overshoot by a sixteenth of it).
            started = .now
            return
        }
        round += 1
        if round < Self.spins { return }
        if round < Self.spins + 100 {
            if started == nil { started = .now }
            sched_yield()
            return
        }
        let waited = ContinuousClock.now - (started ?? .now)
        let nanoseconds = waited.components.seconds * 1_000_000_000 + waited.components.attoseconds / 1_000_000_000
        sleep(nanoseconds: min(1_000_000, max(1000, nanoseconds / 16)))
    }

    private mutating func sleep(nanoseconds: Int64) {
        if let wakeDescriptor {
            if eaas_sleep_unless_readable(wakeDescriptor, nanoseconds) != 0 { woken = true }
            return
        }
        _ = eaas_sleep_ns(nanoseconds)
    }
}
