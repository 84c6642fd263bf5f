import Foundation
import Testing
import Platform
@testable import ExpertPod

#if canImport(Glibc)
import Glibc
#endif

/// The pod-side CPU limit used where no cgroup can be written.
@Suite("CPU pacer: the rate-limit fallback for resources.limits.cpu")
struct CPUPacerTests {
    static func threadCPUSeconds() -> Double {
        var now = timespec()
        clock_gettime(CLOCK_THREAD_CPUTIME_ID, &now)
        return Double(now.tv_sec) + Double(now.tv_nsec) / 1e9
    }

    @Test("A thread that computes and paces uses no more CPU than the limit allows (plus one period's burst)")
    func pacedThreadStaysUnderLimit() async throws {
        // The pacer charges the whole process: other tests' threads only make it stricter, so
        // this bounds from above only, which noise cannot break.
        let (used, wall, throttled) = try await offPool { () -> (Double, Double, Double) in
            let pacer = CPUPacer(cores: 0.2)
            let cpuStart = Self.threadCPUSeconds(), wallStart = CPUPacer.wallSeconds()
            var sink = 0.0
            while CPUPacer.wallSeconds() - wallStart < 1.0 {
                for i in 0..<200_000 { sink += Double(i).squareRoot() }  // ~1 ms of "batch"
                pacer.pace()
            }
            withExtendedLifetime(sink) {}
            return (Self.threadCPUSeconds() - cpuStart, CPUPacer.wallSeconds() - wallStart, pacer.throttledSeconds)
        }
        #expect(used <= 0.2 * wall + 0.02 + 0.05, "used \(used) CPU-s in \(wall) s under a 0.2 CPU limit")
        // Only that it ran at all: on a loaded machine the thread may get little of its 0.2 CPU.
        #expect(used > 0.001, "the paced thread did some work")
        #expect(throttled > 0.3, "most of the second was spent paying back")
    }

    @Test("EAAS_CPU_RATE_LIMIT is read as CPUs; unset is no limit; a bad value is an error naming it", arguments: [
        ("0.25", 0.25 as Double?, nil as String?), ("", nil, nil), ("2", 2, nil),
        ("0", nil, "EAAS_CPU_RATE_LIMIT '0'"), ("-1", nil, "EAAS_CPU_RATE_LIMIT '-1'"), ("lots", nil, "EAAS_CPU_RATE_LIMIT 'lots'"),
        ("nan", nil, "EAAS_CPU_RATE_LIMIT 'nan'"), ("5000", nil, "EAAS_CPU_RATE_LIMIT '5000'"),
    ])
    func environmentLimit(text: String, cores: Double?, error: String?) throws {
        if let error {
            #expect { try CPUPacer.limit(fromEnvironment: ["EAAS_CPU_RATE_LIMIT": text]) } throws: { "\($0)".contains(error) }
        } else {
            #expect(try CPUPacer.limit(fromEnvironment: ["EAAS_CPU_RATE_LIMIT": text]) == cores)
        }
        #expect(try CPUPacer.limit(fromEnvironment: [:]) == nil)
    }
}
