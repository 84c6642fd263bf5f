import Foundation
import Testing
@testable import MoE

/// The MoE math against what Hugging Face transformers computed for the same checkpoints and
/// inputs (Tests/Fixtures/make_fixtures.py). Tolerance: 1e-5 absolute on every f32 value (the
/// issue asks 1e-4; the largest difference seen is 2.4e-7).
@Suite("Parity with Hugging Face transformers")
struct TransformersParityTests {
    static let tolerance: Float = 1e-5
    static let fixtures = ["mixtral", "qwen2-moe", "qwen3-moe", "qwen3-moe-fused", "qwen3-moe-bf16", "olmoe", "deepseek-v2", "deepseek-v3", "deepseek-v3-yarn-fp8"]

    @Test("Router logits, chosen experts, weights and block output match transformers", arguments: fixtures)
    func moeBlockMatches(fixture: String) throws {
        let directory = fixturesDirectory + "/" + fixture
        let config = try ModelConfig.load(directory: directory)
        let checkpoint = try Checkpoint(directory: directory)
        let expected = try SafeTensorsFile(path: directory + "/expected.safetensors")
        let layers = Set(expected.tensors.keys.compactMap { name -> Int? in
            let parts = name.split(separator: ".")
            return parts.count >= 2 ? Int(parts[1]) : nil
        }).sorted()
        #expect(layers == config.moeLayers, "fixture layers \(layers) vs config's MoE layers \(config.moeLayers)")
        let scratch = ExpertScratch()
        for layer in layers {
            let input = try expected.tensor("layers.\(layer).input").floats()
            let tokens = input.count / config.hiddenSize
            let moe = try MoELayer(checkpoint: checkpoint, config: config, layer: layer)

            let (logits, routing) = input.withUnsafeBufferPointer { moe.route($0, tokens: tokens, scratch: scratch) }
            let expectedLogits = try expected.tensor("layers.\(layer).router_logits").floats()
            #expect(maxAbsDifference(logits, expectedLogits) <= Self.tolerance, "\(fixture) layer \(layer): router logits")

            // Compare the choice as sets: order the k picks by expert id, as the fixture does.
            let k = routing.topK
            let expectedIds = try expected.tensor("layers.\(layer).topk_ids").integers().map { Int32($0) }
            let expectedWeights = try expected.tensor("layers.\(layer).topk_weights").floats()
            var ids: [Int32] = [], weights: [Float] = []
            for t in 0..<tokens {
                let picks = (0..<k).map { (routing.ids[t * k + $0], routing.weights[t * k + $0]) }.sorted { $0.0 < $1.0 }
                ids += picks.map(\.0)
                weights += picks.map(\.1)
            }
            #expect(ids == expectedIds, "\(fixture) layer \(layer): chosen experts")
            #expect(maxAbsDifference(weights, expectedWeights) <= Self.tolerance, "\(fixture) layer \(layer): routing weights")

            let (output, _) = try input.withUnsafeBufferPointer { try moe.forward($0, tokens: tokens, scratch: scratch) }
            let expectedOutput = try expected.tensor("layers.\(layer).output").floats()
            let error = maxAbsDifference(output, expectedOutput)
            #expect(error <= Self.tolerance, "\(fixture) layer \(layer): block output differs by \(error)")
        }
    }

    @Test("The fixtures cover every gating variant the issue names")
    func fixturesCoverTheVariants() throws {
        let configs = try Self.fixtures.map { try ModelConfig.load(directory: fixturesDirectory + "/" + $0) }
        #expect(configs.contains { $0.router.renormalize && $0.router.scoring == .softmax })
        #expect(configs.contains { !$0.router.renormalize && $0.router.scoring == .softmax })
        #expect(configs.contains { $0.sharedExpertGated })
        #expect(configs.contains { $0.sharedFFNSize > 0 && !$0.sharedExpertGated })
        #expect(configs.contains { $0.router.groupRanking == .maxScore && $0.router.scalingFactor != 1 })
        #expect(configs.contains { $0.router.groupRanking == .sumOfTopTwo && $0.router.usesCorrectionBias && $0.router.scoring == .sigmoid })
        #expect(configs.contains { $0.moeLayers.count < $0.layerCount })
        let bf16 = try Checkpoint(directory: fixturesDirectory + "/qwen3-moe-bf16")
        #expect(bf16.info("model.layers.0.mlp.experts.0.gate_proj.weight")?.dtype == .bf16)
        let sharded = try Checkpoint(directory: fixturesDirectory + "/deepseek-v3")
        #expect(sharded.files.count > 1)
        let fused = try Checkpoint(directory: fixturesDirectory + "/qwen3-moe-fused")
        #expect(fused.contains("model.layers.0.mlp.experts.gate_up_proj"))
    }
}
