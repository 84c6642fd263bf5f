import CBLAS
import Foundation

/// This machine's limits, measured where a benchmark runs so that its figures can be printed as a
/// fraction of what the hardware allows: memory read bandwidth and peak f32 / bf16 FLOP rates on
/// `threads` threads.
public struct MachineLimits: Sendable, Equatable {
    /// Streaming read of a buffer far larger than the caches, all threads at once (GB/s, 1e9).
    public var readGBps: Double
    /// Peak f32 fused multiply-add rate (GFLOP/s); 0 without FMA.
    public var f32GFlops: Double
    /// Peak bf16 dot-product rate (`vdpbf16ps`, GFLOP/s); nil where the CPU lacks it.
    public var bf16GFlops: Double?
    public var threads: Int

    /// The higher of each limit: what the machine showed it can do in either probe.
    public func best(with other: MachineLimits) -> MachineLimits {
        MachineLimits(readGBps: max(readGBps, other.readGBps), f32GFlops: max(f32GFlops, other.f32GFlops),
                      bf16GFlops: bf16GFlops.map { max($0, other.bf16GFlops ?? 0) } ?? other.bf16GFlops, threads: threads)
    }

    /// Measures the limits on `threads` threads (about a second).
    public static func measure(threads: Int, readBytes: Int = 1 << 30) -> MachineLimits {
        MachineLimits(readGBps: readBandwidth(threads: threads, bytes: readBytes),
                      f32GFlops: peak(threads: threads, bf16: false) ?? 0,
                      bf16GFlops: peak(threads: threads, bf16: true),
                      threads: threads)
    }

    /// The best of three passes of every thread streaming its share of one buffer.
    static func readBandwidth(threads: Int, bytes: Int) -> Double {
        let share = (bytes / max(1, threads)) & ~4095
        let pointer = UncheckedPointer(UnsafeMutableRawPointer.allocate(byteCount: share * threads, alignment: 4096))
        defer { pointer.raw.deallocate() }
        // Touched first, by the threads that read it, so that no page fault is timed.
        DispatchQueue.concurrentPerform(iterations: threads) { i in _ = memset(pointer.raw + i * share, Int32(i + 1), share) }
        var best = 0.0
        for _ in 0..<3 {
            let started = ContinuousClock.now
            DispatchQueue.concurrentPerform(iterations: threads) { i in
                pointer.sink(eaas_probe_read(pointer.raw + i * share, share))
            }
            best = max(best, Double(share * threads) / (ContinuousClock.now - started).seconds / 1e9)
        }
        return best
    }

    /// Peak rate of FMA (or `vdpbf16ps`) chains in registers on every thread at once.
    static func peak(threads: Int, bf16: Bool) -> Double? {
        let rounds = 20_000_000
        var lanes: Int32 = 0
        _ = bf16 ? eaas_probe_dpbf16(1, &lanes) : eaas_probe_fma(1, &lanes)
        guard lanes > 0 else { return nil }
        let flopsPerLane = bf16 ? 4.0 : 2.0
        let sink = UncheckedPointer(UnsafeMutableRawPointer.allocate(byteCount: 64, alignment: 64))
        defer { sink.raw.deallocate() }
        var best = 0.0
        for _ in 0..<2 {
            let started = ContinuousClock.now
            DispatchQueue.concurrentPerform(iterations: threads) { _ in
                var ignored: Int32 = 0
                sink.sink(bf16 ? eaas_probe_dpbf16(rounds, &ignored) : eaas_probe_fma(rounds, &ignored))
            }
            let flops = Double(rounds) * 12 * Double(lanes) * flopsPerLane * Double(threads)
            best = max(best, flops / (ContinuousClock.now - started).seconds / 1e9)
        }
        return best
    }
}

/// A raw pointer handed to the probe threads, and a place their results go so that the compiler
/// keeps the work.
private struct UncheckedPointer: @unchecked Sendable {
    let raw: UnsafeMutableRawPointer
    init(_ raw: UnsafeMutableRawPointer) { self.raw = raw }
    func sink(_ value: Double) { raw.storeBytes(of: value, as: Double.self) }
}

extension Duration {
    /// The duration in seconds, as a Double.
    var seconds: Double { Double(components.seconds) + Double(components.attoseconds) * 1e-18 }
}
