import CBLAS
import Foundation
import Synchronization

/// A decode step's routed experts (every group small enough for the skinny kernel) as row blocks
/// of their weight matrices, taken by the compute threads from one shared counter.
///
/// Phase one runs every active expert's gate and up rows, phase two every expert's down rows, with
/// the activation between them: two joins per layer instead of one per matrix, and no thread idles
/// at single-core bandwidth while another finishes a large share (static shares of whole experts
/// left the last expert of the slower thread streaming alone). Each output row is one skinny-kernel
/// sum whatever block it falls in, so the results are bit for bit those of running the experts one
/// by one.
final class DecodeExpertWork: @unchecked Sendable {
    /// Rows of one work item: 128 rows of a 2048-wide bf16 matrix are 512 KiB, about 20 µs of
    /// streaming, so the threads finish a phase within a few microseconds of each other.
    static let blockRows = 128

    private struct Item {
        let job: SkinnyJob
        let begin: Int
        let end: Int
    }

    private let next = Atomic<Int>(0)
    private var items: [Item] = []

    /// Runs `experts[i]` on `tokens[i]` rows of `gathered` (rows `offsets[i]…`, `hidden` wide) into
    /// the same rows of `results`, using `gateUp` (`rows × 2F`) and `activated` (`rows × F`) as the
    /// intermediate buffers, on `threads` threads.
    func run(experts: [ExpertWeights], offsets: [Int], tokens: [Int], activation: Activation, hidden: Int,
             gathered: UnsafePointer<Float>, gateUp: UnsafeMutablePointer<Float>, activated: UnsafeMutablePointer<Float>,
             results: UnsafeMutablePointer<Float>, threads: Int) {
        // Phase one: gate and up, written side by side per token as ExpertFFN.run does.
        items.removeAll(keepingCapacity: true)
        var intermediate = 0
        var intermediates: [Int] = []
        intermediates.reserveCapacity(experts.count)
        for (i, expert) in experts.enumerated() {
            let ffn = expert.ffn
            intermediates.append(intermediate)
            let x = gathered + offsets[i] * hidden, y = gateUp + intermediate * 2
            add(expert.gate, input: x, inputStride: hidden, output: y, outputStride: 2 * ffn, tokens: tokens[i])
            add(expert.up, input: x, inputStride: hidden, output: y + ffn, outputStride: 2 * ffn, tokens: tokens[i])
            intermediate += tokens[i] * ffn
        }
        runItems(threads: threads)
        for (i, expert) in experts.enumerated() {
            let ffn = expert.ffn, base = intermediates[i]
            for t in 0..<tokens[i] {
                let row = gateUp + base * 2 + t * 2 * ffn
                ExpertFFN.applyActivation(activation, gate: row, up: row + ffn, out: activated + base + t * ffn, count: ffn)
            }
        }
        // Phase two: down.
        items.removeAll(keepingCapacity: true)
        for (i, expert) in experts.enumerated() {
            add(expert.down, input: activated + intermediates[i], inputStride: expert.ffn,
                output: results + offsets[i] * hidden, outputStride: hidden, tokens: tokens[i])
        }
        runItems(threads: threads)
    }

    private func add(_ weight: WeightMatrix, input: UnsafePointer<Float>, inputStride: Int,
                     output: UnsafeMutablePointer<Float>, outputStride: Int, tokens: Int) {
        let type: Int32 = weight.dtype == .f32 ? 0 : weight.dtype == .bf16 ? 1 : 2
        let job = SkinnyJob(type: type, w: weight.base, cols: weight.cols, x: input, lda: inputStride, y: output, ldc: outputStride, rows: Int32(tokens))
        var begin = 0
        while begin < weight.rows {
            let end = min(weight.rows, begin + Self.blockRows)
            items.append(Item(job: job, begin: begin, end: end))
            begin = end
        }
    }

    private func runItems(threads: Int) {
        next.store(0, ordering: .relaxed)
        if threads <= 1 {
            drain()
        } else {
            DispatchQueue.concurrentPerform(iterations: threads) { _ in self.drain() }
        }
    }

    /// Runs items until none is left (items are not changed while threads drain them).
    private func drain() {
        while true {
            let index = next.wrappingAdd(1, ordering: .relaxed).oldValue
            guard index < items.count else { return }
            let item = items[index]
            item.job.run(item.begin, item.end)
        }
    }
}
