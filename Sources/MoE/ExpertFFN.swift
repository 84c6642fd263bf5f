import CBLAS
import Foundation
import Synchronization

/// Reusable buffers for expert computation, grown on demand and never shrunk, so that steady-state
/// steps allocate nothing. One per thread: it is not shareable.
public final class ExpertScratch {
    let input = FloatBuffer()
    let gateUp = FloatBuffer()
    let activated = FloatBuffer()
    let output = FloatBuffer()
    /// Input and output of an expert with more tokens than a skinny pass (one at a time).
    let largeInput = FloatBuffer()
    let largeOutput = FloatBuffer()
    let block = FloatBuffer()
    let logits = FloatBuffer()
    /// Activations rounded to bf16 for the `bf16` precision's GEMMs.
    let narrowed = ScratchBuffer<UInt16>()
    var counts: [Int] = []
    var slots: [Int] = []
    /// The decode path's work items (made on first use).
    lazy var decodeWork = DecodeExpertWork()
    /// How GEMMs of more than `skinnyPassRows` rows on bf16 weights multiply.
    public var matmul: MatmulPrecision
    /// Fewest rows a GEMM takes the bf16 dot products at (tests lower it to reach every product).
    var bf16DotMinimumRows = MatmulPrecision.bf16MinimumRows

    public init(matmul: MatmulPrecision = .process) {
        self.matmul = matmul
    }

    /// Whether `tokens` rows times `weight` take the bf16 dot products.
    func usesBF16Dot(_ weight: WeightMatrix, tokens: Int) -> Bool {
        weight.dtype == .bf16 && tokens >= bf16DotMinimumRows && matmul.effective == .bf16
    }
}

typealias FloatBuffer = ScratchBuffer<Float>

/// A growable, uninitialised buffer.
final class ScratchBuffer<Element> {
    private(set) var pointer = UnsafeMutablePointer<Element>.allocate(capacity: 1)
    private(set) var capacity = 1

    /// A pointer to at least `count` elements (contents not preserved when it grows).
    func reserve(_ count: Int) -> UnsafeMutablePointer<Element> {
        if count > capacity {
            pointer.deallocate()
            capacity = max(count, capacity * 2)
            pointer = .allocate(capacity: capacity)
        }
        return pointer
    }

    deinit { pointer.deallocate() }
}

/// The expert FFN on BLAS: `y = down(act(gate(x)) * up(x))` for a group of tokens routed to one expert.
///
/// Weights stay in their checkpoint dtype (in the mapped file). Three paths, by group size and
/// `MatmulPrecision`:
/// - up to `skinnyPassRows` tokens (decode): a skinny GEMM kernel reads each weight row once, widening
///   bf16/f16 in registers, in blocks of output rows that the compute threads take as they go
///   (`parallelBlocks`). The step is bound by memory bandwidth, so 16-bit weights move half the
///   bytes of f32.
/// - more tokens: `cblas_sgemm`. f32 weights feed it straight from the file; bf16/f16 weights are
///   widened tile by tile (`tileRows` × `tileCols`, by all compute threads) into a scratch buffer that
///   `cblas_sgemm` then consumes, accumulating over the tiles along K, so that the widening pass
///   stays small next to the GEMM and OpenBLAS repacks the activations only a few times per matrix.
/// - at least `MatmulPrecision.bf16MinimumRows` tokens on bf16 weights under `MatmulPrecision.bf16`
///   (the default where the CPU has avx512_bf16), before either of the above: the activations are
///   rounded to bf16 once and multiplied with `vdpbf16ps` straight from the checkpoint
///   (`eaas_bf16dot_gemm`), in blocks taken as the threads go up to `skinnyPassRows` tokens and in
///   one band per thread past it: twice the FMA rate, and no widened copy of the weights.
public enum ExpertFFN {
    /// Most activation rows one skinny pass takes; larger groups take widened tiles and sgemm.
    /// Measured on this 2-core Zen (AVX-512, `eaas bench experts`): at 16 and 32 tokens an expert
    /// one fused pass beat widening + sgemm, which writes and rereads every weight as f32.
    public static let skinnyPassRows = Int(EAAS_SKINNY_MAX_ROWS)

    /// Weight tiles widened for the sgemm path: up to 1024 rows × 2048 columns (8 MiB of f32,
    /// within the last-level cache). Measured on 2 cores (Zen, AVX2) against 256-512-row bands and
    /// 1024 × 1024 tiles: fewer, larger tiles repack the activations less and hand off between
    /// threads less often, and still leave the widened tile in cache for sgemm's packing.
    static let tileRows = 1024
    static let tileCols = 2048

    /// Runs the expert on `tokens` rows of `input` (`[tokens, hidden]`, contiguous) into `output`
    /// (`[tokens, hidden]`, overwritten).
    public static func run(
        _ expert: ExpertWeights, activation: Activation, tokens: Int,
        input: UnsafePointer<Float>, output: UnsafeMutablePointer<Float>, scratch: ExpertScratch, threads: Int? = nil
    ) {
        let threads = threads ?? BLAS.threads
        guard tokens > 0 else { return }
        let hidden = expert.hidden, ffn = expert.ffn
        let gateUp = scratch.gateUp.reserve(tokens * 2 * ffn)
        if expert.gate.isFollowed(by: expert.up) {
            // One GEMM for gate and up together: [tokens, 2F] = x · [gate; up]ᵀ.
            let fused = WeightMatrix(name: expert.gate.name, dtype: expert.gate.dtype, rows: 2 * ffn, cols: hidden,
                                     base: expert.gate.base, owner: expert.gate.owner)
            multiply(input, lda: hidden, tokens: tokens, by: fused, into: gateUp, ldc: 2 * ffn, scratch: scratch, threads: threads)
        } else {
            multiply(input, lda: hidden, tokens: tokens, by: expert.gate, into: gateUp, ldc: 2 * ffn, scratch: scratch, threads: threads)
            multiply(input, lda: hidden, tokens: tokens, by: expert.up, into: gateUp + ffn, ldc: 2 * ffn, scratch: scratch, threads: threads)
        }
        let activated = scratch.activated.reserve(tokens * ffn)
        for t in 0..<tokens {
            applyActivation(activation, gate: gateUp + t * 2 * ffn, up: gateUp + t * 2 * ffn + ffn, out: activated + t * ffn, count: ffn)
        }
        multiply(activated, lda: ffn, tokens: tokens, by: expert.down, into: output, ldc: hidden, scratch: scratch, threads: threads)
    }

    /// `C[tokens, W.rows] = A[tokens, W.cols] · Wᵀ` in one pass over W with the skinny kernel
    /// (`tokens` ≤ `skinnyPassRows`), in blocks of output rows taken by `threads` threads.
    static func skinny(
        _ a: UnsafePointer<Float>, lda: Int, tokens: Int, by weight: WeightMatrix,
        into c: UnsafeMutablePointer<Float>, ldc: Int, threads: Int = BLAS.threads
    ) {
        precondition(tokens <= skinnyPassRows, "skinny pass of \(tokens) rows")
        let type: Int32 = weight.dtype == .f32 ? 0 : weight.dtype == .bf16 ? 1 : 2
        let job = SkinnyJob(type: type, w: weight.base, cols: weight.cols, x: a, lda: lda, y: c, ldc: ldc, rows: Int32(tokens))
        parallelBlocks(weight.rows, blockRows: decodeBlockRows, threads: threads) { begin, end in job.run(begin, end) }
    }

    /// `C[tokens, W.rows] = A[tokens, W.cols] · Wᵀ`, widening W band by band when it is not f32.
    static func multiply(
        _ a: UnsafePointer<Float>, lda: Int, tokens: Int, by weight: WeightMatrix,
        into c: UnsafeMutablePointer<Float>, ldc: Int, scratch: ExpertScratch, threads: Int = BLAS.threads
    ) {
        if scratch.usesBF16Dot(weight, tokens: tokens) {
            // The activations rounded to bf16 once, then blocks or bands of weight rows straight
            // from the checkpoint (`MatmulPrecision.bf16`).
            let cols = weight.cols, narrowed = scratch.narrowed.reserve(tokens * cols)
            for t in 0..<tokens { eaas_narrow_bf16(a + t * lda, narrowed + t * cols, cols) }
            let job = BF16DotJob(w: weight.base.assumingMemoryBound(to: UInt16.self), cols: cols, x: narrowed, y: c, ldc: ldc, rows: tokens)
            if tokens <= skinnyPassRows {
                // Bandwidth-bound like the skinny pass: blocks taken as the threads go. Larger
                // products keep one band per thread (each block would pack the activations again).
                parallelBlocks(weight.rows, blockRows: decodeBlockRows, threads: threads) { begin, end in job.run(begin, end) }
            } else {
                parallelRows(weight.rows, minimumPerChunk: 64, threads: threads) { begin, end in job.run(begin, end) }
            }
            return
        }
        if tokens <= skinnyPassRows {
            skinny(a, lda: lda, tokens: tokens, by: weight, into: c, ldc: ldc, threads: threads)
            return
        }
        // OpenBLAS runs on one thread (`BLAS`): each compute thread multiplies its own band of
        // weight rows (output columns).
        if weight.dtype == .f32 {
            let b = weight.base.assumingMemoryBound(to: Float.self), cols = weight.cols
            let job = GemmJob(a: a, lda: lda, tokens: tokens, b: b, cols: cols, c: c, ldc: ldc)
            parallelRows(weight.rows, minimumPerChunk: 64, threads: threads) { begin, end in
                job.run(rows: begin..<end, b: job.b + begin * cols, ldb: cols, kOffset: 0, k: cols, accumulate: false)
            }
            return
        }
        // Tiles of the weight, [tileRows, tileCols], are widened into the scratch buffer and
        // multiplied with beta = 1 across the column (K) tiles. Large row tiles keep OpenBLAS's
        // repacking of the activations (once per call) small; bounded column tiles keep the
        // widened tile in cache whatever the matrix width.
        let tileRows = min(weight.rows, Self.tileRows), tileCols = min(weight.cols, Self.tileCols)
        let buffer = scratch.block.reserve(tileRows * tileCols)
        var row = 0
        while row < weight.rows {
            let rows = min(tileRows, weight.rows - row)
            var col = 0
            while col < weight.cols {
                let cols = min(tileCols, weight.cols - col)
                let widen = WidenJob(dtype: weight.dtype, source: weight.base, sourceCols: weight.cols, firstRow: row, firstCol: col,
                                     cols: cols, destination: buffer)
                let job = GemmJob(a: a, lda: lda, tokens: tokens, b: UnsafePointer(buffer), cols: cols, c: c + row, ldc: ldc)
                let accumulate = col > 0, kOffset = col
                // Each thread widens its band of the tile and multiplies it while it is in its cache.
                parallelRows(rows, minimumPerChunk: 64, threads: threads) { begin, end in
                    widen.run(begin, end)
                    job.run(rows: begin..<end, b: job.b + begin * cols, ldb: cols, kOffset: kOffset, k: cols, accumulate: accumulate)
                }
                col += cols
            }
            row += rows
        }
    }

    /// Rows of a block in `parallelBlocks`: 128 rows of a 2048-wide bf16 matrix are 512 KiB, about
    /// 15 µs of streaming, so the threads finish within a few microseconds of each other.
    static let decodeBlockRows = 128

    /// Splits `rows` into blocks of `blockRows` that `threads` threads take from a shared counter as
    /// they go, running `body(begin, end)` on each: a thread slowed down (another process on its
    /// core, a page fault) takes fewer blocks instead of holding the others at the join, which a
    /// static share per thread did (the LM head and attention of a decode step).
    static func parallelBlocks(_ rows: Int, blockRows: Int, threads: Int = BLAS.threads, _ body: @Sendable (Int, Int) -> Void) {
        let blocks = (rows + blockRows - 1) / blockRows
        let workers = max(1, min(threads, blocks))
        if workers == 1 {
            body(0, rows)
            return
        }
        let next = BlockCounter()
        DispatchQueue.concurrentPerform(iterations: workers) { _ in
            while true {
                let block = next.take()
                guard block < blocks else { return }
                body(block * blockRows, min(rows, (block + 1) * blockRows))
            }
        }
    }

    /// Splits `rows` into one contiguous chunk per compute thread (the BLAS thread count) and runs
    /// `body(begin, end)` on each, in parallel when there is more than one chunk.
    static func parallelRows(_ rows: Int, minimumPerChunk: Int, threads: Int = BLAS.threads, _ body: @Sendable (Int, Int) -> Void) {
        let chunks = max(1, min(threads, rows / max(1, minimumPerChunk)))
        if chunks == 1 {
            body(0, rows)
            return
        }
        DispatchQueue.concurrentPerform(iterations: chunks) { i in
            body(rows * i / chunks, rows * (i + 1) / chunks)
        }
    }

    /// `out = act(gate) * up`, element-wise over `count` values.
    static func applyActivation(
        _ activation: Activation, gate: UnsafePointer<Float>, up: UnsafePointer<Float>,
        out: UnsafeMutablePointer<Float>, count: Int
    ) {
        switch activation {
        case .silu:
            eaas_silu_mul(gate, up, out, count)
        case .relu:
            for i in 0..<count { out[i] = max(gate[i], 0) * up[i] }
        case .gelu:
            for i in 0..<count {
                let g = gate[i]
                out[i] = 0.5 * g * (1 + erff(g * 0.70710678118654752)) * up[i]
            }
        case .geluTanh:
            for i in 0..<count {
                let g = gate[i]
                out[i] = 0.5 * g * (1 + tanhf(0.79788456080286536 * (g + 0.044715 * g * g * g))) * up[i]
            }
        }
    }
}

/// The next block to take in `ExpertFFN.parallelBlocks`.
private final class BlockCounter: Sendable {
    private let next = Atomic<Int>(0)

    func take() -> Int { next.wrappingAdd(1, ordering: .relaxed).oldValue }
}

/// One skinny GEMM call's operands, handed to the compute threads; each writes disjoint output columns.
/// One skinny-kernel product; `run` computes output rows `[begin, end)`.
struct SkinnyJob: @unchecked Sendable {
    let type: Int32
    let w: UnsafeRawPointer
    let cols: Int
    let x: UnsafePointer<Float>
    let lda: Int
    let y: UnsafeMutablePointer<Float>
    let ldc: Int
    let rows: Int32

    func run(_ begin: Int, _ end: Int) {
        eaas_skinny_gemm(type, w, cols, x, lda, y, ldc, rows, begin, end, cols)
    }
}

/// One bf16 dot-product GEMM, `C[rows, n] = X[rows, cols] · W[n, cols]ᵀ`; `run` computes the
/// outputs `n` in `[begin, end)`.
struct BF16DotJob: @unchecked Sendable {
    let w: UnsafePointer<UInt16>
    let cols: Int
    let x: UnsafePointer<UInt16>
    let y: UnsafeMutablePointer<Float>
    let ldc: Int
    let rows: Int

    func run(_ begin: Int, _ end: Int) {
        eaas_bf16dot_gemm(w, cols, x, cols, y, ldc, rows, begin, end, cols, 0)
    }
}

/// One sgemm `C[tokens, rows] (+)= A[tokens, kOffset..<kOffset+k] · B[rows, k]ᵀ` over a band of
/// weight rows, handed to a compute thread.
private struct GemmJob: @unchecked Sendable {
    let a: UnsafePointer<Float>
    let lda: Int
    let tokens: Int
    let b: UnsafePointer<Float>
    let cols: Int
    let c: UnsafeMutablePointer<Float>
    let ldc: Int

    func run(rows: Range<Int>, b band: UnsafePointer<Float>, ldb: Int, kOffset: Int, k: Int, accumulate: Bool) {
        BLAS.gemmTransposedB(m: tokens, n: rows.count, k: k, a: a + kOffset, lda: lda, b: band, ldb: ldb,
                             c: c + rows.lowerBound, ldc: ldc, accumulate: accumulate)
    }
}

/// Widening of a weight tile (`cols` columns from `firstCol`, rows from `firstRow`) into a dense
/// `[rows, cols]` buffer, split by rows across the compute threads.
private struct WidenJob: @unchecked Sendable {
    let dtype: DType
    let source: UnsafeRawPointer
    let sourceCols: Int
    let firstRow: Int
    let firstCol: Int
    let cols: Int
    let destination: UnsafeMutablePointer<Float>

    func run(_ begin: Int, _ end: Int) {
        let size = dtype.byteSize
        for i in begin..<end {
            let from = source + ((firstRow + i) * sourceCols + firstCol) * size
            FloatConversion.widen(dtype, from: from, to: destination + i * cols, count: cols)
        }
    }
}
