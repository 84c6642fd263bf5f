import CBLAS
import Foundation
import Synchronization

/// A decode step's routed experts (every group of at most `ExpertFFN.skinnyPassRows` tokens) as
/// row blocks of their weight matrices, taken by the compute threads from one shared counter.
///
/// Phase one runs every active expert's gate and up rows, phase two every expert's down rows, with
/// the activation between them: two joins per layer instead of one per matrix, and no thread idles
/// at single-core bandwidth while another finishes a large share (static shares of whole experts
/// left the last expert of the slower thread streaming alone). A group takes the skinny kernel or,
/// where `ExpertScratch.usesBF16Dot` says so, the bf16 dot products on its activations rounded once
/// per phase; either kernel computes each output row the same way whatever block it falls in, so
/// the results are bit for bit those of running the experts one by one through `ExpertFFN.run`.
final class DecodeExpertWork: @unchecked Sendable {
    /// Rows of one work item (`ExpertFFN.decodeBlockRows`).
    static let blockRows = ExpertFFN.decodeBlockRows

    private enum Job {
        case skinny(SkinnyJob)
        case bf16Dot(BF16DotJob)
    }

    private struct Item {
        let job: Job
        let begin: Int
        let end: Int
    }

    private let next = Atomic<Int>(0)
    private var items: [Item] = []
    /// Activation rows of the bf16-dot groups, rounded to bf16 (phase one's, then phase two's).
    private let narrowed = ScratchBuffer<UInt16>()

    /// Runs `experts[i]` on `tokens[i]` rows of `gathered` (rows `offsets[i]…`, `hidden` wide) into
    /// the same rows of `results`, using `gateUp` (`rows × 2F`) and `activated` (`rows × F`) as the
    /// intermediate buffers, on `threads` threads; a matrix takes the bf16 dot products where
    /// `usesBF16Dot(matrix, tokens)`, as in `ExpertFFN.multiply`.
    func run(experts: [ExpertWeights], offsets: [Int], tokens: [Int], activation: Activation, hidden: Int,
             gathered: UnsafePointer<Float>, gateUp: UnsafeMutablePointer<Float>, activated: UnsafeMutablePointer<Float>,
             results: UnsafeMutablePointer<Float>, threads: Int, usesBF16Dot: (WeightMatrix, Int) -> Bool) {
        // Phase one: gate and up, written side by side per token as ExpertFFN.run does.
        items.removeAll(keepingCapacity: true)
        var intermediate = 0
        var intermediates: [Int] = []
        intermediates.reserveCapacity(experts.count)
        var narrowedRows = 0, narrowedWidth = 0
        for (i, expert) in experts.enumerated() {
            intermediates.append(intermediate)
            intermediate += tokens[i] * expert.ffn
            narrowedRows += tokens[i]
            narrowedWidth = max(narrowedWidth, max(hidden, expert.ffn))
        }
        // Room for every group's rows, rounded ones or not: nothing is allocated in the loops below.
        let narrowedBase = narrowed.reserve(max(1, narrowedRows * narrowedWidth))
        var narrowedNext = narrowedBase
        for (i, expert) in experts.enumerated() {
            let ffn = expert.ffn, n = tokens[i]
            let x = gathered + offsets[i] * hidden, y = gateUp + intermediates[i] * 2
            let gateDot = usesBF16Dot(expert.gate, n), upDot = usesBF16Dot(expert.up, n)
            if gateDot || upDot {
                for t in 0..<n { eaas_narrow_bf16(x + t * hidden, narrowedNext + t * hidden, hidden) }
            }
            if gateDot {
                addBF16Dot(expert.gate, input: narrowedNext, output: y, outputStride: 2 * ffn, tokens: n)
            } else {
                addSkinny(expert.gate, input: x, inputStride: hidden, output: y, outputStride: 2 * ffn, tokens: n)
            }
            if upDot {
                addBF16Dot(expert.up, input: narrowedNext, output: y + ffn, outputStride: 2 * ffn, tokens: n)
            } else {
                addSkinny(expert.up, input: x, inputStride: hidden, output: y + ffn, outputStride: 2 * ffn, tokens: n)
            }
            if gateDot || upDot { narrowedNext += n * hidden }
        }
        runItems(threads: threads)
        for (i, expert) in experts.enumerated() {
            let ffn = expert.ffn, base = intermediates[i]
            for t in 0..<tokens[i] {
                let row = gateUp + base * 2 + t * 2 * ffn
                ExpertFFN.applyActivation(activation, gate: row, up: row + ffn, out: activated + base + t * ffn, count: ffn)
            }
        }
        // Phase two: down (phase one's rounded rows are no longer read).
        items.removeAll(keepingCapacity: true)
        narrowedNext = narrowedBase
        for (i, expert) in experts.enumerated() {
            let ffn = expert.ffn, x = activated + intermediates[i], y = results + offsets[i] * hidden
            if usesBF16Dot(expert.down, tokens[i]) {
                for t in 0..<tokens[i] { eaas_narrow_bf16(x + t * ffn, narrowedNext + t * ffn, ffn) }
                addBF16Dot(expert.down, input: narrowedNext, output: y, outputStride: hidden, tokens: tokens[i])
                narrowedNext += tokens[i] * ffn
            } else {
                addSkinny(expert.down, input: x, inputStride: ffn, output: y, outputStride: hidden, tokens: tokens[i])
            }
        }
        runItems(threads: threads)
    }

    private func addSkinny(_ weight: WeightMatrix, input: UnsafePointer<Float>, inputStride: Int,
                           output: UnsafeMutablePointer<Float>, outputStride: Int, tokens: Int) {
        let type: Int32 = weight.dtype == .f32 ? 0 : weight.dtype == .bf16 ? 1 : 2
        addBlocks(.skinny(SkinnyJob(type: type, w: weight.base, cols: weight.cols, x: input, lda: inputStride, y: output,
                                    ldc: outputStride, rows: Int32(tokens))), rows: weight.rows)
    }

    /// `input` holds `tokens` rows of `weight.cols` bf16 values, contiguous.
    private func addBF16Dot(_ weight: WeightMatrix, input: UnsafePointer<UInt16>, output: UnsafeMutablePointer<Float>,
                            outputStride: Int, tokens: Int) {
        addBlocks(.bf16Dot(BF16DotJob(w: weight.base.assumingMemoryBound(to: UInt16.self), cols: weight.cols, x: input,
                                      y: output, ldc: outputStride, rows: tokens)), rows: weight.rows)
    }

    private func addBlocks(_ job: Job, rows: Int) {
        var begin = 0
        while begin < rows {
            let end = min(rows, begin + Self.blockRows)
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
            switch item.job {
            case .skinny(let job): job.run(item.begin, item.end)
            case .bf16Dot(let job): job.run(item.begin, item.end)
            }
        }
    }
}
