import Foundation
@testable import MoE
import Testing
@testable import AttentionWorker

/// Where the committed fixtures live (Tests/Fixtures).
let fixturesDirectory: String = {
    URL(fileURLWithPath: #filePath).deletingLastPathComponent().deletingLastPathComponent().appendingPathComponent("Fixtures").path
}()

/// transformers' whole-model logits and greedy continuation (Tests/Fixtures/make_fixtures.py).
struct GenerationFixture {
    let directory: String
    let prompt: [Int]
    let generated: [Int]
    /// `[prompt + 15, vocab]`.
    let logits: [Float]

    init(_ name: String) throws {
        directory = fixturesDirectory + "/" + name
        let file = try SafeTensorsFile(path: directory + "/generation.safetensors")
        prompt = try file.tensor("prompt_ids").integers().map { Int($0) }
        generated = try file.tensor("generated_ids").integers().map { Int($0) }
        logits = try file.tensor("logits").floats()
    }
}

/// Largest |a - b| over max(1, largest |b|): logits are compared relative to their scale.
func relativeError(_ a: ArraySlice<Float>, _ b: ArraySlice<Float>) -> Float {
    precondition(a.count == b.count)
    var worst: Float = 0, scale: Float = 1
    for (x, y) in zip(a, b) {
        if (x - y).isNaN { return .infinity }
        worst = max(worst, abs(x - y))
        scale = max(scale, abs(y))
    }
    return worst / scale
}

@Suite("Attention worker against transformers")
struct TransformersGenerationTests {
    static let architectures = ["mixtral", "qwen2-moe", "qwen3-moe", "qwen3-moe-bf16", "olmoe", "deepseek-v2", "deepseek-v3", "deepseek-v3-yarn-fp8"]

    @Test("the whole model's logits over prompt and continuation match transformers within 1e-4", arguments: architectures)
    func logitsMatch(name: String) throws {
        let fixture = try GenerationFixture(name)
        let logits = try Self.teacherForcedLogits(fixture, matmul: .exact)
        let error = relativeError(logits[...], fixture.logits[...])
        #expect(error < 1e-4, "\(name): prefill logits differ by \(error)")
    }

    /// The logits of every position of prompt + continuation in one forward; `minimumRows` lowers
    /// where the bf16 dot products start (to reach every GEMM of a short fixture).
    static func teacherForcedLogits(_ fixture: GenerationFixture, matmul: MatmulPrecision, minimumRows: Int? = nil) throws -> [Float] {
        let model = DecoderModel(weights: try DecoderWeights(directory: fixture.directory, localExperts: true), placement: RoutedExpertPlacement())
        model.expertScratch.matmul = matmul
        if let minimumRows { model.expertScratch.bf16DotMinimumRows = minimumRows }
        let sequence = fixture.prompt + fixture.generated.dropLast()
        let cache = model.makeCache(capacity: sequence.count)
        var batch = StepBatch()
        batch.append(cache, tokens: sequence.map { Int32($0) })
        return try model.forward(batch, logitRows: Array(0..<sequence.count))
    }

    /// The bf16 fast path's stated tolerance for whole-model logits (relative to their scale).
    static let bf16DotTolerance: Float = 1e-2

    @Test("with bf16 dot products on every GEMM (MatmulPrecision.bf16, even one row), the bf16 checkpoint's logits stay within 1e-2 of transformers' and every argmax whose margin exceeds that is transformers'")
    func bf16DotWithinTolerance() throws {
        guard MatmulPrecision.cpuHasBF16Dot else {
            print("bf16DotWithinTolerance skipped: this CPU has no avx512_bf16 (MatmulPrecision.bf16 runs exact here)")
            return
        }
        let fixture = try GenerationFixture("qwen3-moe-bf16")
        let logits = try Self.teacherForcedLogits(fixture, matmul: .bf16, minimumRows: 1)
        let sequence = fixture.prompt + fixture.generated.dropLast()
        let error = relativeError(logits[...], fixture.logits[...])
        #expect(error < Self.bf16DotTolerance, "logits differ by \(error)")
        #expect(error > 1e-6, "logits equal to f32's: the bf16 path did not run")
        let vocab = logits.count / sequence.count
        let scale = max(1, fixture.logits.map(abs).max()!)
        for row in 0..<sequence.count {
            let ours = logits[(row * vocab)..<((row + 1) * vocab)], theirs = fixture.logits[(row * vocab)..<((row + 1) * vocab)]
            let ranked = theirs.indices.sorted { theirs[$0] > theirs[$1] }
            guard theirs[ranked[0]] - theirs[ranked[1]] > 2 * Self.bf16DotTolerance * scale else { continue }
            #expect(ours.indices.max { ours[$0] < ours[$1] } == ranked[0], "row \(row): argmax differs")
        }
        print("bf16DotWithinTolerance: logits within \(error) of transformers' (f32 reference on the bf16 weights)")
    }

    @Test("decoding token by token through the KV cache gives transformers' logits at every step", arguments: architectures)
    func incrementalDecodeMatches(name: String) throws {
        let fixture = try GenerationFixture(name)
        let model = DecoderModel(weights: try DecoderWeights(directory: fixture.directory, localExperts: true), placement: RoutedExpertPlacement())
        let vocab = model.config.vocabSize
        let cache = model.makeCache(capacity: fixture.prompt.count + fixture.generated.count)
        var batch = StepBatch()
        // The prompt in two chunks (chunked prefill), then one token per step.
        let split = fixture.prompt.count / 2
        batch.append(cache, tokens: fixture.prompt[..<split].map { Int32($0) })
        _ = try model.forward(batch, logitRows: [])
        batch = StepBatch()
        batch.append(cache, tokens: fixture.prompt[split...].map { Int32($0) })
        var last = try model.forward(batch, logitRows: [batch.count - 1])
        for (step, token) in fixture.generated.enumerated() {
            let row = fixture.prompt.count - 1 + step
            let error = relativeError(last[...], fixture.logits[(row * vocab)..<((row + 1) * vocab)])
            #expect(error < 1e-4, "\(name): step \(step) logits differ by \(error)")
            #expect(Sampler.argmax(last.withUnsafeBufferPointer { $0 }) == token, "\(name): step \(step) picks another token")
            guard step < fixture.generated.count - 1 else { break }
            batch = StepBatch()
            batch.append(cache, tokens: [Int32(token)])
            last = try model.forward(batch, logitRows: [0])
        }
    }

    @Test("greedy generation through the engine gives transformers' 16 tokens", arguments: architectures)
    func greedyTokensMatch(name: String) throws {
        let fixture = try GenerationFixture(name)
        let engine = try GenerationEngine(modelDirectory: fixture.directory, experts: .local)
        let request = GenerationRequest(prompt: fixture.prompt, maxTokens: fixture.generated.count, ignoreEOS: true)
        // Alone, and batched with other sequences (prefill and decode mixed): the same tokens.
        let alone = try engine.generate([request])
        #expect(alone[0].tokens == fixture.generated)
        #expect(alone[0].finishReason == .length)
        let others = (0..<5).map { i in GenerationRequest(prompt: Array(repeating: 3 + i, count: 3 + 2 * i), maxTokens: 4 + i, ignoreEOS: true) }
        let mixed = try engine.generate(others + [request] + others)
        #expect(mixed[5].tokens == fixture.generated)
        #expect(mixed[0].tokens == mixed[6].tokens)
    }
}
