import Foundation
import Transport

#if canImport(Glibc)
import Glibc
#endif

/// The fallback for a CPU limit where the kernel's CPU controller cannot be written (no cgroup
/// delegated, not root): the pod paces itself. After each batch it credits `cores` CPU-seconds per
/// second of wall time and debits the CPU time the whole process used (every thread, as a CFS quota
/// counts the group); when the balance is negative the engine thread sleeps until it is paid back.
/// The balance is capped at one CFS period's quota (100 ms × `cores`), so an idle pod cannot bank
/// a burst the kernel would not allow either. Set by `EAAS_CPU_RATE_LIMIT` or `--cpu-rate-limit`.
public final class CPUPacer: @unchecked Sendable {
    /// CPUs the process may use on average.
    public let cores: Double
    private let burst: Double
    private var balance: Double
    private var lastWall: Double
    private var lastCPU: Double
    /// Seconds slept so far (the analogue of cgroup `throttled_time`).
    public private(set) var throttledSeconds = 0.0

    public init(cores: Double) {
        precondition(cores > 0, "a CPU rate limit must be positive")
        self.cores = cores
        burst = cores * 0.1
        balance = burst
        lastWall = Self.wallSeconds()
        lastCPU = Self.processCPUSeconds()
    }

    /// Charges what ran since the last call and sleeps off any overdraft.
    public func pace() {
        let wall = Self.wallSeconds(), cpu = Self.processCPUSeconds()
        balance = min(burst, balance + (wall - lastWall) * cores - (cpu - lastCPU))
        lastWall = wall
        lastCPU = cpu
        guard balance < 0 else { return }
        // The next call credits the time slept.
        let pause = -balance / cores
        throttledSeconds += pause
        usleep(useconds_t(min(10, pause) * 1e6))
    }

    static func wallSeconds() -> Double {
        var now = timespec()
        clock_gettime(CLOCK_MONOTONIC, &now)
        return Double(now.tv_sec) + Double(now.tv_nsec) / 1e9
    }

    static func processCPUSeconds() -> Double {
        var now = timespec()
        clock_gettime(CLOCK_PROCESS_CPUTIME_ID, &now)
        return Double(now.tv_sec) + Double(now.tv_nsec) / 1e9
    }

    /// The limit from `EAAS_CPU_RATE_LIMIT` (CPUs, e.g. `0.25`), nil when unset; an unreadable
    /// value is an error naming it.
    public static func limit(fromEnvironment environment: [String: String] = ProcessInfo.processInfo.environment) throws -> Double? {
        guard let text = environment["EAAS_CPU_RATE_LIMIT"], !text.isEmpty else { return nil }
        guard let cores = Double(text), cores.isFinite, cores > 0, cores <= 1024 else {
            throw PacerError("EAAS_CPU_RATE_LIMIT '\(text)' is not a number of CPUs between 0 and 1024")
        }
        return cores
    }
}

/// A bad CPU rate limit.
public struct PacerError: Error, CustomStringConvertible, Sendable {
    public let description: String
    public init(_ description: String) { self.description = description }
}

/// An `ExpertComputer` whose batches are paced by a `CPUPacer`.
public final class PacedComputer: ExpertComputer {
    public let inner: ExpertComputer
    public let pacer: CPUPacer

    public init(_ inner: ExpertComputer, pacer: CPUPacer) {
        self.inner = inner
        self.pacer = pacer
    }

    public var experts: [HostedExpert] { inner.experts }
    public var hidden: Int { inner.hidden }
    public var dtype: WireDType { inner.dtype }

    public func compute(_ batch: [ComputeItem]) -> [ComputeFailure?] {
        let failures = inner.compute(batch)
        pacer.pace()
        return failures
    }
}
