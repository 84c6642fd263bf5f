import ArgumentParser
import CBLAS
import Foundation
import MoE

/// `eaas bench experts`: the grouped expert FFN (route-free: balanced assignment, gather, SwiGLU
/// GEMM chain, weighted combine) against bare `cblas_sgemm` doing the same FLOPs on f32 weights of
/// the same shapes, interleaved in one run.
struct ExpertsBenchCommand: ParsableCommand {
    static let configuration = CommandConfiguration(
        commandName: "experts",
        abstract: "Grouped expert FFN GFLOP/s and its ratio to bare cblas_sgemm on the same FLOPs.",
        discussion: "Run from a release build (swift build -c release); debug numbers mean nothing."
    )

    @Option(help: "Shapes as HIDDENxFFNxEXPERTSxTOPK, comma-separated.")
    var shapes: String = "2048x1408x64x6,4096x14336x8x2"
    @Option(help: "Tokens per step, comma-separated (default: 1,8,64,256,512 plus the steps that give 64 and 128 tokens per expert).")
    var tokens: String?
    @Option(help: "Weight dtypes to run, comma-separated (f32, bf16, f16).")
    var dtypes: String = "f32,bf16"
    @Option(help: "Seconds to spend measuring each side of each row (at least 3 runs each).")
    var seconds: Double = 1.0
    @Option(help: "BLAS threads (default: all cores).")
    var threads: Int?
    @Flag(help: "Print one JSON document instead of a table.")
    var json = false

    struct Shape {
        let hidden: Int, ffn: Int, experts: Int, topK: Int
        var label: String { "h\(hidden)-f\(ffn)-e\(experts)-k\(topK)" }
    }

    func parsedShapes() throws -> [Shape] {
        try shapes.split(separator: ",").map { text in
            let parts = text.split(separator: "x", omittingEmptySubsequences: false).map { Int($0) ?? -1 }
            guard parts.count == 4, parts.allSatisfy({ $0 > 0 }), parts[3] <= parts[2] else {
                throw ValidationError("--shapes: '\(text)' is not HIDDENxFFNxEXPERTSxTOPK with top-k ≤ experts")
            }
            return Shape(hidden: parts[0], ffn: parts[1], experts: parts[2], topK: parts[3])
        }
    }

    func validate() throws {
        _ = try parsedShapes()
        if let tokens, tokens.split(separator: ",").contains(where: { Int($0).map { $0 <= 0 } ?? true }) {
            throw ValidationError("--tokens: '\(tokens)' is not a list of positive integers")
        }
        for name in dtypes.split(separator: ",") where DType(userSpelling: String(name)) == nil {
            throw ValidationError("--dtypes: '\(name)' is not f32, f16 or bf16")
        }
        guard seconds > 0 else { throw ValidationError("--seconds must be positive") }
    }

    /// Steps for a shape: the given list, or the default plus the steps that reach 64 and 128 tokens per expert.
    func steps(for shape: Shape) -> [Int] {
        if let tokens { return tokens.split(separator: ",").compactMap { Int($0) } }
        var steps = [1, 8, 64, 256, 512]
        for perExpert in [64, 128] {
            let exact = (perExpert * shape.experts + shape.topK - 1) / shape.topK
            // Round up to a step whose assignments spread evenly over the experts.
            var t = exact
            while (t * shape.topK) % shape.experts != 0 { t += 1 }
            steps.append(t)
        }
        return Array(Set(steps)).sorted()
    }

    func run() throws {
        #if DEBUG
        FileHandle.standardError.write(Data("warning: this is a debug build; its numbers mean nothing (swift build -c release)\n".utf8))
        #endif
        if let threads { BLAS.threads = threads }
        var report = BenchReport(bench: "experts")
        let limits = MachineLimits.measure(threads: BLAS.threads)
        report.summary["memory_read_gbps"] = limits.readGBps
        report.summary["matmul"] = MatmulPrecision.process.effective.rawValue
        report.summary["f32_peak_gflops"] = limits.f32GFlops
        report.summary["bf16_peak_gflops"] = limits.bf16GFlops ?? 0
        var table = TextTable(columns: ["shape", "dtype", "tokens", "tok/expert", "ms/step", "GFLOP/s", "sgemm GFLOP/s", "ratio", "weight GB/s", "of read bw"])
        for shape in try parsedShapes() {
            let bench = try ExpertsBench(shape: shape)
            for dtypeName in dtypes.split(separator: ",") {
                let dtype = DType(userSpelling: String(dtypeName))!
                let experts = bench.experts(as: dtype)
                for t in steps(for: shape) {
                    let row = bench.measure(experts: experts, tokens: t, seconds: seconds)
                    let perExpert = Double(t * shape.topK) / Double(shape.experts)
                    // Every weight byte of the experts the step touches is read once.
                    let touched = min(shape.experts, t * shape.topK)
                    let weightGBps = Double(touched * 3 * shape.hidden * shape.ffn * dtype.byteSize) / row.seconds / 1e9
                    report.results.append([
                        "shape": shape.label, "dtype": dtype.rawValue, "tokens": t, "tokens_per_expert": perExpert,
                        "gflops": row.gflops, "sgemm_gflops": row.sgemmGflops, "ratio_to_sgemm": row.ratio,
                        "ms_per_step": row.seconds * 1e3, "weight_gbps": weightGBps, "bandwidth_fraction": weightGBps / limits.readGBps,
                    ])
                    table.rows.append([shape.label, dtype.rawValue, "\(t)", String(format: "%.1f", perExpert), String(format: "%.2f", row.seconds * 1e3),
                                       String(format: "%.1f", row.gflops), String(format: "%.1f", row.sgemmGflops), String(format: "%.3f", row.ratio),
                                       String(format: "%.1f", weightGBps), String(format: "%.2f", weightGBps / limits.readGBps)])
                    // Progress on stderr, so that stdout stays one JSON document with --json.
                    FileHandle.standardError.write(Data("  \(table.rows.last!.joined(separator: " "))\n".utf8))
                }
            }
        }
        for dtype in Set(report.results.compactMap { $0["dtype"] as? String }) {
            let ratios = report.results.filter { ($0["dtype"] as? String) == dtype && (($0["tokens_per_expert"] as? Double) ?? 0) >= 64 }
                .compactMap { $0["ratio_to_sgemm"] as? Double }
            if let worst = ratios.min() { report.summary["min_ratio_from_64_tokens_per_expert_\(dtype.lowercased())"] = worst }
        }
        if json {
            print(try report.json())
        } else {
            print(table.render())
            for (key, value) in report.summary.sorted(by: { $0.key < $1.key }) { print("\(key): \((value as? Double).map { String(format: "%.3f", $0) } ?? "\(value)")") }
            print(String(format: "this machine: memory read %.1f GB/s on %d threads, f32 FMA peak %.0f GFLOP/s, bf16 dot peak %@",
                         limits.readGBps, limits.threads, limits.f32GFlops, limits.bf16GFlops.map { String(format: "%.0f GFLOP/s", $0) } ?? "none"))
        }
    }
}

/// The data of one shape: f32 master weights for every expert (also the sgemm reference's), a
/// balanced routing, and inputs.
final class ExpertsBench {
    let shape: ExpertsBenchCommand.Shape
    let master: WeightStorage
    let scratch = ExpertScratch()

    init(shape: ExpertsBenchCommand.Shape) throws {
        self.shape = shape
        let perExpert = 3 * shape.ffn * shape.hidden
        master = WeightStorage(byteCount: shape.experts * perExpert * 4)
        nonisolated(unsafe) let floats = master.bytes.bindMemory(to: Float.self)
        // Deterministic, cheap, non-trivial values: a scaled sine of the index (values ~ ±0.02).
        DispatchQueue.concurrentPerform(iterations: shape.experts) { e in
            let base = e * perExpert
            for i in 0..<perExpert { floats[base + i] = 0.02 * sinf(Float((base + i) % 1_000_003) * 0.618) }
        }
    }

    /// Layout per expert in `master`: gate `[F, H]`, up `[F, H]` (adjacent, so gate+up is one `[2F, H]`), down `[H, F]`.
    func experts(as dtype: DType) -> [ExpertWeights] {
        let f = shape.ffn, h = shape.hidden, perExpert = 3 * f * h
        let storage: WeightStorage
        if dtype == .f32 {
            storage = master
        } else {
            storage = WeightStorage(byteCount: shape.experts * perExpert * dtype.byteSize)
            nonisolated(unsafe) let source = UnsafeBufferPointer(master.bytes.bindMemory(to: Float.self))
            DispatchQueue.concurrentPerform(iterations: shape.experts) { e in
                let chunk = UnsafeBufferPointer(rebasing: source[(e * perExpert)..<((e + 1) * perExpert)])
                let bytes = FloatConversion.encode(chunk, as: dtype)
                bytes.withUnsafeBytes { (storage.bytes.baseAddress! + e * perExpert * dtype.byteSize).copyMemory(from: $0.baseAddress!, byteCount: $0.count) }
            }
        }
        let size = dtype.byteSize
        return (0..<shape.experts).map { e in
            let base = e * perExpert * size
            return try! ExpertWeights(
                gate: storage.matrix(name: "gate\(e)", dtype: dtype, rows: f, cols: h, offset: base),
                up: storage.matrix(name: "up\(e)", dtype: dtype, rows: f, cols: h, offset: base + f * h * size),
                down: storage.matrix(name: "down\(e)", dtype: dtype, rows: h, cols: f, offset: base + 2 * f * h * size),
                hidden: h, ffn: f, file: "bench")
        }
    }

    struct Row { let seconds: Double; let gflops: Double; let sgemmGflops: Double; let ratio: Double }

    func measure(experts: [ExpertWeights], tokens: Int, seconds: Double) -> Row {
        let h = shape.hidden, f = shape.ffn, k = shape.topK, e = shape.experts
        // Balanced routing: token t's j-th expert is (t·k + j) mod E, weight 1/k.
        let routing = Routing(tokens: tokens, topK: k, ids: (0..<(tokens * k)).map { Int32($0 % e) },
                              weights: [Float](repeating: 1 / Float(k), count: tokens * k))
        let input = (0..<(tokens * h)).map { Float(($0 * 7919) % 1000) / 1000 - 0.5 }
        var output = [Float](repeating: 0, count: tokens * h)
        var counts = [Int](repeating: 0, count: e)
        for id in routing.ids { counts[Int(id)] += 1 }
        let flops = 6.0 * Double(tokens * k) * Double(f) * Double(h)

        // Reference buffers: the same per-expert GEMM shapes on the f32 master weights.
        let maxCount = counts.max() ?? 0
        let refInput = [Float](repeating: 0.1, count: max(1, maxCount * h))
        var refGateUp = [Float](repeating: 0, count: max(1, maxCount * 2 * f))
        var refOutput = [Float](repeating: 0, count: max(1, maxCount * h))
        let master = self.master.bytes.bindMemory(to: Float.self).baseAddress!

        func ours() {
            output.withUnsafeMutableBufferPointer { out in
                input.withUnsafeBufferPointer { x in
                    try! RoutedExperts.accumulate(input: x.baseAddress!, hidden: h, routing: routing, expertCount: e, activation: .silu,
                                                  experts: { experts[$0] }, output: out.baseAddress!, scratch: scratch)
                }
            }
        }
        func reference() {
            // OpenBLAS on its own, multi-threaded as a user would call it (our kernels keep it on one
            // thread and split the work themselves).
            BLAS.withLibraryThreads(BLAS.threads) { referenceBody() }
        }
        func referenceBody() {
            refGateUp.withUnsafeMutableBufferPointer { gu in
                refOutput.withUnsafeMutableBufferPointer { y in
                    refInput.withUnsafeBufferPointer { x in
                        for expert in 0..<e where counts[expert] > 0 {
                            let w = master + expert * 3 * f * h
                            BLAS.gemmTransposedB(m: counts[expert], n: 2 * f, k: h, a: x.baseAddress!, lda: h, b: w, ldb: h, c: gu.baseAddress!, ldc: 2 * f)
                            BLAS.gemmTransposedB(m: counts[expert], n: h, k: f, a: gu.baseAddress!, lda: 2 * f, b: w + 2 * f * h, ldb: f, c: y.baseAddress!, ldc: h)
                        }
                    }
                }
            }
        }
        ours(); reference()  // warm up: page in weights, size scratch
        var oursTimes: [Double] = [], refTimes: [Double] = []
        var spent = 0.0
        while oursTimes.count < 3 || spent < 2 * seconds {
            // Alternate which side goes first so drift on a shared machine moves both alike.
            if oursTimes.count % 2 == 0 {
                oursTimes.append(timeSeconds(ours)); refTimes.append(timeSeconds(reference))
            } else {
                refTimes.append(timeSeconds(reference)); oursTimes.append(timeSeconds(ours))
            }
            spent += oursTimes.last! + refTimes.last!
            if oursTimes.count >= 50 { break }
        }
        let t = oursTimes.median, r = refTimes.median
        return Row(seconds: t, gflops: flops / t / 1e9, sgemmGflops: flops / r / 1e9, ratio: r / t)
    }
}
