import CBLAS
import Foundation
import Testing
@testable import MoE

/// The expert FFN and the grouped combine, against a plain double-precision reference.
@Suite("Expert FFN on BLAS")
struct ExpertFFNTests {
    /// `down(silu(gate x) * up x)` in Double, weights given as f32 values.
    static func reference(x: [Float], tokens: Int, hidden: Int, ffn: Int, gate: [Float], up: [Float], down: [Float]) -> [Float] {
        var out = [Float](repeating: 0, count: tokens * hidden)
        for t in 0..<tokens {
            var a = [Double](repeating: 0, count: ffn)
            for f in 0..<ffn {
                var g = 0.0, u = 0.0
                for h in 0..<hidden {
                    g += Double(gate[f * hidden + h]) * Double(x[t * hidden + h])
                    u += Double(up[f * hidden + h]) * Double(x[t * hidden + h])
                }
                a[f] = g / (1 + exp(-g)) * u
            }
            for h in 0..<hidden {
                var y = 0.0
                for f in 0..<ffn { y += Double(down[h * ffn + f]) * a[f] }
                out[t * hidden + h] = Float(y)
            }
        }
        return out
    }

    /// One expert stored as `dtype` in memory, its values rounded to that dtype (returned as f32).
    static func expert(hidden: Int, ffn: Int, dtype: DType, seed: UInt64, adjacentGateUp: Bool = true)
        -> (ExpertWeights, gate: [Float], up: [Float], down: [Float]) {
        var random = TestRandom(seed: seed)
        let gate = random.floats(ffn * hidden, scale: 0.2), up = random.floats(ffn * hidden, scale: 0.2), down = random.floats(hidden * ffn, scale: 0.2)
        let size = dtype.byteSize
        let gap = adjacentGateUp ? 0 : 64
        let storage = WeightStorage(byteCount: (3 * ffn * hidden) * size + gap)
        var rounded: [[Float]] = []
        var offset = 0
        for (i, values) in [gate, up, down].enumerated() {
            let bytes = values.withUnsafeBufferPointer { FloatConversion.encode($0, as: dtype) }
            bytes.withUnsafeBytes { (storage.bytes.baseAddress! + offset).copyMemory(from: $0.baseAddress!, byteCount: $0.count) }
            var back = [Float](repeating: 0, count: values.count)
            FloatConversion.widen(dtype, from: storage.bytes.baseAddress! + offset, to: &back, count: values.count)
            rounded.append(back)
            offset += bytes.count + (i == 0 ? gap : 0)
        }
        let g = storage.matrix(name: "gate", dtype: dtype, rows: ffn, cols: hidden, offset: 0)
        let u = storage.matrix(name: "up", dtype: dtype, rows: ffn, cols: hidden, offset: ffn * hidden * size + gap)
        let d = storage.matrix(name: "down", dtype: dtype, rows: hidden, cols: ffn, offset: 2 * ffn * hidden * size + gap)
        return (try! ExpertWeights(gate: g, up: u, down: d, hidden: hidden, ffn: ffn, file: "test"), rounded[0], rounded[1], rounded[2])
    }

    @Test("One expert matches the reference in every weight dtype, fused or split gate/up, one band or many",
          arguments: [DType.f32, .bf16, .f16], [1, 5, 40])
    func singleExpert(dtype: DType, tokens: Int) {
        // hidden 96 × ffn 2100: a weight band holds at most 131072/96 = 1365 rows at ≤16 tokens, so
        // gate+up (4200 rows) and down span several bands.
        let hidden = 96, ffn = 2100
        for adjacent in [true, false] {
            let (weights, gate, up, down) = Self.expert(hidden: hidden, ffn: ffn, dtype: dtype, seed: 11, adjacentGateUp: adjacent)
            #expect(weights.gate.isFollowed(by: weights.up) == adjacent)
            var random = TestRandom(seed: 12)
            let x = random.floats(tokens * hidden)
            var y = [Float](repeating: .nan, count: tokens * hidden)
            x.withUnsafeBufferPointer { input in
                ExpertFFN.run(weights, activation: .silu, tokens: tokens, input: input.baseAddress!, output: &y, scratch: ExpertScratch(matmul: .exact))
            }
            let expected = Self.reference(x: x, tokens: tokens, hidden: hidden, ffn: ffn, gate: gate, up: up, down: down)
            let error = maxAbsDifference(y, expected)
            #expect(error < 2e-4, "\(dtype) tokens \(tokens) adjacent \(adjacent): error \(error)")
        }
    }

    @Test("Decode products split into blocks that the threads take as they go give the bits of one thread doing all of it, on the skinny pass and the bf16 dot products",
          arguments: [1, 3, 5, ExpertFFN.skinnyPassRows])
    func blockSplitKeepsBits(tokens: Int) {
        // ffn 700: gate+up 1400 rows and down's 130 rows are several blocks, the last one short.
        let hidden = 130, ffn = 700
        let (weights, _, _, _) = Self.expert(hidden: hidden, ffn: ffn, dtype: .bf16, seed: 21)
        var random = TestRandom(seed: 22)
        let x = random.floats(tokens * hidden)
        for matmul in [MatmulPrecision.exact, .bf16] {
            var outputs: [[Float]] = []
            for threads in [1, 2, 3] {
                var y = [Float](repeating: .nan, count: tokens * hidden)
                x.withUnsafeBufferPointer { input in
                    ExpertFFN.run(weights, activation: .silu, tokens: tokens, input: input.baseAddress!, output: &y,
                                  scratch: ExpertScratch(matmul: matmul), threads: threads)
                }
                outputs.append(y)
            }
            #expect(outputs.allSatisfy { $0.map(\.bitPattern) == outputs[0].map(\.bitPattern) }, "\(matmul) tokens \(tokens)")
            #expect(!outputs[0].contains { $0.isNaN }, "\(matmul) tokens \(tokens): an output row was not written")
        }
    }

    @Test("bf16 dot products equal the double-precision sums of the same bf16 values within 1e-5 of Σ|x·w|, for any k, rows and outputs (tails), and a split of rows or outputs changes no bit")
    func bf16DotKernel() {
        var random = TestRandom(seed: 21)
        for k in [1, 2, 31, 32, 33, 70, 200] {
            let n = 45, ldw = k + 3, ldx = k + 5, ldy = n + 2
            let wValues = random.floats(n * ldw), xValues = random.floats(13 * ldx)
            var w = [UInt16](repeating: 0, count: wValues.count), x = [UInt16](repeating: 0, count: xValues.count)
            eaas_narrow_bf16(wValues, &w, w.count)
            eaas_narrow_bf16(xValues, &x, x.count)
            var wide = [Float](repeating: 0, count: w.count), xWide = [Float](repeating: 0, count: x.count)
            eaas_widen_bf16(w, &wide, w.count)
            eaas_widen_bf16(x, &xWide, x.count)
            for rows in [1, 4, 7, 13] {
                var whole = [Float](repeating: .nan, count: rows * ldy)
                eaas_bf16dot_gemm(w, ldw, x, ldx, &whole, ldy, rows, 0, n, k, 0)
                for m in 0..<rows {
                    for j in 0..<n {
                        var sum = 0.0, magnitude = 0.0
                        for i in 0..<k {
                            let product = Double(wide[j * ldw + i]) * Double(xWide[m * ldx + i])
                            sum += product
                            magnitude += abs(product)
                        }
                        #expect(abs(Double(whole[m * ldy + j]) - sum) <= 1e-5 * magnitude + 1e-30, "k \(k) rows \(rows) at (\(m), \(j))")
                    }
                }
                // Outputs split at odd places, rows one at a time from the end, accumulated onto zeros.
                var split = [Float](repeating: 0, count: rows * ldy)
                split.withUnsafeMutableBufferPointer { y in
                    x.withUnsafeBufferPointer { xs in
                        for m in stride(from: rows - 1, through: 0, by: -1) {
                            for (begin, end) in [(0, 3), (3, 44), (44, 45)] {
                                eaas_bf16dot_gemm(w, ldw, xs.baseAddress! + m * ldx, ldx, y.baseAddress! + m * ldy, ldy, 1, begin, end, k, 1)
                            }
                        }
                    }
                }
                for m in 0..<rows {
                    #expect(whole[(m * ldy)..<(m * ldy + n)].map(\.bitPattern) == split[(m * ldy)..<(m * ldy + n)].map(\.bitPattern), "k \(k) rows \(rows): a split changed row \(m)")
                }
            }
        }
    }

    @Test("Under MatmulPrecision.bf16 an expert stays within 1% of its output scale of the exact sums, at every group size and on odd widths (the activations' rounding to bf16 is the only change)",
          arguments: [1, 5, 33, 97])
    func bf16DotExpert(tokens: Int) {
        let hidden = 130, ffn = 75
        let (weights, gate, up, down) = Self.expert(hidden: hidden, ffn: ffn, dtype: .bf16, seed: 31)
        var random = TestRandom(seed: 32)
        let x = random.floats(tokens * hidden)
        let scratch = ExpertScratch(matmul: .bf16)
        scratch.bf16DotMinimumRows = 1
        var y = [Float](repeating: .nan, count: tokens * hidden)
        x.withUnsafeBufferPointer { input in
            ExpertFFN.run(weights, activation: .silu, tokens: tokens, input: input.baseAddress!, output: &y, scratch: scratch)
        }
        let expected = Self.reference(x: x, tokens: tokens, hidden: hidden, ffn: ffn, gate: gate, up: up, down: down)
        let scale = expected.map(abs).max()!
        let error = maxAbsDifference(y, expected)
        #expect(error < 1e-2 * scale, "tokens \(tokens): error \(error) at scale \(scale)")
        // It did round: the exact path is closer (unless this CPU lacks the bf16 dot products).
        if MatmulPrecision.cpuHasBF16Dot {
            var exact = [Float](repeating: .nan, count: tokens * hidden)
            let exactScratch = ExpertScratch(matmul: .exact)
            x.withUnsafeBufferPointer { input in
                ExpertFFN.run(weights, activation: .silu, tokens: tokens, input: input.baseAddress!, output: &exact, scratch: exactScratch)
            }
            #expect(maxAbsDifference(exact, expected) < error, "tokens \(tokens): the bf16 path did not run")
        } else {
            print("bf16DotExpert: this CPU has no avx512_bf16; MatmulPrecision.bf16 ran exact (skipped the rounding check)")
        }
    }

    @Test("The skinny kernel (decode path) agrees with sgemm for 1 to 32 rows, any width, any dtype, and splits without changing a bit; the fused AVX-512 schedule is within a rounding per term of the portable body",
          arguments: [DType.f32, .bf16, .f16])
    func skinnyKernel(dtype: DType) {
        let cols = 203, outRows = 97  // cols not a multiple of 16: the scalar tail runs too
        var random = TestRandom(seed: 21)
        let values = random.floats(outRows * cols, scale: 0.3)
        let bytes = values.withUnsafeBufferPointer { FloatConversion.encode($0, as: dtype) }
        let storage = WeightStorage(byteCount: bytes.count)
        bytes.withUnsafeBytes { storage.bytes.copyMemory(from: $0) }
        let weight = storage.matrix(name: "w", dtype: dtype, rows: outRows, cols: cols)
        let widened = weight.floats()
        let type: Int32 = dtype == .f32 ? 0 : dtype == .bf16 ? 1 : 2
        for rows in 1...ExpertFFN.skinnyPassRows {
            let x = random.floats(rows * cols)
            var skinny = [Float](repeating: .nan, count: rows * outRows)
            var split = [Float](repeating: .nan, count: rows * outRows)
            var reference = [Float](repeating: .nan, count: rows * outRows)
            var portable = [Float](repeating: .nan, count: rows * outRows)
            eaas_skinny_gemm(type, weight.base, cols, x, cols, &skinny, outRows, Int32(rows), 0, outRows, cols)
            // Splits that leave blocks of four weight rows and single rows at both ends.
            eaas_skinny_gemm(type, weight.base, cols, x, cols, &split, outRows, Int32(rows), 0, 41, cols)
            eaas_skinny_gemm(type, weight.base, cols, x, cols, &split, outRows, Int32(rows), 41, 43, cols)
            eaas_skinny_gemm(type, weight.base, cols, x, cols, &split, outRows, Int32(rows), 43, outRows, cols)
            eaas_skinny_gemm_portable(type, weight.base, cols, x, cols, &portable, outRows, Int32(rows), 0, outRows, cols)
            // Fused multiply-adds round once per term instead of twice: each sum may move by a few
            // roundings of the terms' magnitude (Σ|w·x|), never more.
            for m in 0..<rows {
                for n in 0..<outRows {
                    var magnitude: Float = 0
                    for c in 0..<cols { magnitude += abs(widened[n * cols + c] * x[m * cols + c]) }
                    let difference = abs(skinny[m * outRows + n] - portable[m * outRows + n])
                    #expect(difference <= 1e-5 * magnitude, "\(dtype) rows \(rows) [\(m), \(n)]: \(difference) against magnitude \(magnitude)")
                }
            }
            BLAS.gemmTransposedB(m: rows, n: outRows, k: cols, a: x, lda: cols, b: widened, ldb: cols, c: &reference, ldc: outRows)
            #expect(maxAbsDifference(skinny, reference) < 1e-5, "\(dtype) rows \(rows)")
            #expect(skinny.map(\.bitPattern) == split.map(\.bitPattern), "\(dtype) rows \(rows): a split changed the result")
        }
    }

    /// Shapes: small groups only (every expert on the decode path); one expert past the skinny pass
    /// (`skinnyPassRows`) beside small ones, so a layer mixes both paths; odd widths for the kernel tails.
    @Test("Grouped experts equal running each token's experts one by one, summed in ascending expert order, whether an expert's group is small (decode work items) or large (sgemm) or both in one layer",
          arguments: [(tokens: 9, hidden: 16, ffn: 24, skewed: false), (tokens: ExpertFFN.skinnyPassRows + 13, hidden: 130, ffn: 75, skewed: true),
                      (tokens: 3 * ExpertFFN.skinnyPassRows + 1, hidden: 33, ffn: 19, skewed: false)])
    func groupedCombine(shape: (tokens: Int, hidden: Int, ffn: Int, skewed: Bool)) throws {
        let hidden = shape.hidden, ffn = shape.ffn, experts = 5, k = 2, tokens = shape.tokens
        let bank = (0..<experts).map { Self.expert(hidden: hidden, ffn: ffn, dtype: .bf16, seed: UInt64(100 + $0)) }
        var random = TestRandom(seed: 4)
        let x = random.floats(tokens * hidden)
        // Token t uses experts (t, t+2) mod 5 in descending order of preference, to check the sum order is by id;
        // skewed, every token also uses expert 4, whose group then outgrows the skinny pass while the others stay small.
        var ids: [Int32] = []
        for t in 0..<tokens {
            ids += shape.skewed ? [4, Int32(t % 4)] : [Int32((t + 2) % experts), Int32(t % experts)]
        }
        let weights = (0..<(tokens * k)).map { Float($0 % 7 + 1) / 10 }
        let routing = Routing(tokens: tokens, topK: k, ids: ids, weights: weights)
        var out = [Float](repeating: 0, count: tokens * hidden)
        try x.withUnsafeBufferPointer { input in
            try RoutedExperts.accumulate(input: input.baseAddress!, hidden: hidden, routing: routing, expertCount: experts,
                                         activation: .silu, experts: { bank[$0].0 }, output: &out, scratch: ExpertScratch(matmul: .exact))
        }
        let scratch = ExpertScratch(matmul: .exact)
        for t in 0..<tokens {
            var expected = [Float](repeating: 0, count: hidden)
            let picks: [(Int, Float)] = (0..<k).map { (Int(ids[t * k + $0]), weights[t * k + $0]) }.sorted { $0.0 < $1.0 }
            for (e, w) in picks {
                var y = [Float](repeating: 0, count: hidden)
                Array(x[(t * hidden)..<((t + 1) * hidden)]).withUnsafeBufferPointer {
                    ExpertFFN.run(bank[e].0, activation: .silu, tokens: 1, input: $0.baseAddress!, output: &y, scratch: scratch)
                }
                for h in 0..<hidden { expected[h] = expected[h] + w * y[h] }
            }
            #expect(maxAbsDifference(Array(out[(t * hidden)..<((t + 1) * hidden)]), expected) < 1e-5, "token \(t) of \(tokens)")
        }
    }

    /// Group sizes on both sides of `MatmulPrecision.bf16MinimumRows` and of the skinny pass, in one
    /// layer; top-1 routing with weight 1, so that each token's output is its expert's value itself.
    @Test("Under the bf16 precision, the decode work items give every expert's group the bits ExpertFFN.run gives it alone, bf16-dot groups (4+ tokens) and skinny groups side by side, beside a group past the skinny pass, on odd widths")
    func decodeWorkMixesKernels() throws {
        let hidden = 130, ffn = 75
        let sizes = [1, 3, 4, 7, 12, ExpertFFN.skinnyPassRows, ExpertFFN.skinnyPassRows + 8]
        let bank = sizes.indices.map { Self.expert(hidden: hidden, ffn: ffn, dtype: .bf16, seed: UInt64(300 + $0)) }
        // Tokens of the experts interleaved, so that a group's rows are gathered from all over the batch.
        var ids: [Int32] = []
        var remaining = sizes
        while remaining.contains(where: { $0 > 0 }) {
            for e in sizes.indices where remaining[e] > 0 {
                ids.append(Int32(e))
                remaining[e] -= 1
            }
        }
        let tokens = ids.count
        var random = TestRandom(seed: 9)
        let x = random.floats(tokens * hidden)
        let routing = Routing(tokens: tokens, topK: 1, ids: ids, weights: [Float](repeating: 1, count: tokens))
        var out = [Float](repeating: 0, count: tokens * hidden)
        try x.withUnsafeBufferPointer { input in
            try RoutedExperts.accumulate(input: input.baseAddress!, hidden: hidden, routing: routing, expertCount: sizes.count,
                                         activation: .silu, experts: { bank[$0].0 }, output: &out, scratch: ExpertScratch(matmul: .bf16))
        }
        let alone = ExpertScratch(matmul: .bf16)
        for e in sizes.indices {
            let members = (0..<tokens).filter { ids[$0] == Int32(e) }
            let group = members.flatMap { x[($0 * hidden)..<(($0 + 1) * hidden)] }
            var y = [Float](repeating: 0, count: members.count * hidden)
            group.withUnsafeBufferPointer {
                ExpertFFN.run(bank[e].0, activation: .silu, tokens: members.count, input: $0.baseAddress!, output: &y, scratch: alone)
            }
            let grouped = members.flatMap { out[($0 * hidden)..<(($0 + 1) * hidden)] }
            let differing = zip(grouped, y).filter { $0.bitPattern != $1.bitPattern }.count
            #expect(grouped.count == y.count && differing == 0, "expert \(e), \(sizes[e]) tokens: \(differing) of \(y.count) values differ")
        }
    }

    @Test("A token routed to an expert that is not hosted, or out of range, is an error naming the expert")
    func missingExpert() {
        let (weights, _, _, _) = Self.expert(hidden: 8, ffn: 8, dtype: .f32, seed: 1)
        let x = [Float](repeating: 1, count: 8)
        var out = [Float](repeating: 0, count: 8)
        for (id, fragment) in [(Int32(1), "expert 1 is not hosted here"), (Int32(7), "expert 7"), (Int32(-2), "expert -2")] {
            #expect {
                try RoutedExperts.accumulate(input: x, hidden: 8, routing: Routing(tokens: 1, topK: 1, ids: [id], weights: [1]),
                                             expertCount: 2, activation: .silu, experts: { $0 == 0 ? weights : nil }, output: &out, scratch: ExpertScratch())
            } throws: { "\($0)".contains(fragment) }
        }
        // An empty slot (a pod's request naming fewer experts for a token) adds nothing.
        out = [Float](repeating: 3, count: 8)
        #expect(throws: Never.self) {
            try RoutedExperts.accumulate(input: x, hidden: 8, routing: Routing(tokens: 1, topK: 1, ids: [RoutedExperts.emptySlot], weights: [0]),
                                         expertCount: 2, activation: .silu, experts: { $0 == 0 ? weights : nil }, output: &out, scratch: ExpertScratch())
        }
        #expect(out == [Float](repeating: 3, count: 8))
    }

    @Test("Other activations (gelu, gelu tanh, relu) follow their definitions")
    func activations() {
        let gate: [Float] = [-2, -0.5, 0, 0.5, 2], up: [Float] = [1, 2, 3, 4, 5]
        var out = [Float](repeating: 0, count: 5)
        for (activation, f) in [(Activation.relu, { (g: Double) in max(g, 0) }),
                                (.gelu, { (g: Double) in 0.5 * g * (1 + erf(g / 2.0.squareRoot())) }),
                                (.geluTanh, { (g: Double) in 0.5 * g * (1 + tanh(0.7978845608028654 * (g + 0.044715 * g * g * g))) })] {
            ExpertFFN.applyActivation(activation, gate: gate, up: up, out: &out, count: 5)
            for i in 0..<5 { #expect(abs(Double(out[i]) - f(Double(gate[i])) * Double(up[i])) < 1e-5, "\(activation)") }
        }
    }
}
