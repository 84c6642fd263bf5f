import Foundation
import Testing
@testable import MoE

/// `model init --topics`: skew that comes through the model's own router.
@Suite("Topic routing in generated checkpoints")
struct TopicRoutingTests {
    @Test("Vocabulary ranges, expert subsets and directions: every token has one topic, every topic its experts")
    func partition() {
        let topics = TopicRouting(topics: 3, vocab: 10, experts: 8)
        #expect((0..<3).map { Array(topics.tokens(of: $0)) } == [[0, 1, 2, 3], [4, 5, 6], [7, 8, 9]])
        #expect((0..<10).map(topics.topic(of:)) == [0, 0, 0, 0, 1, 1, 1, 2, 2, 2])
        #expect((0..<3).map(topics.experts(of:)) == [[0, 3, 6], [1, 4, 7], [2, 5]])
        let u = TopicRouting.direction(topic: 1, hidden: 64)
        #expect(abs(u.reduce(0) { $0 + $1 * $1 } - 1) < 1e-5)
        #expect(u == TopicRouting.direction(topic: 1, hidden: 64))
        let v = TopicRouting.direction(topic: 2, hidden: 64)
        #expect(abs(zip(u, v).reduce(0) { $0 + $1.0 * $1.1 }) < 0.5, "topics' directions are far from parallel")
    }

    @Test("A topic's tokens, normalized as the MoE layer sees them, are routed to that topic's experts in every layer")
    func routerFollowsTopic() throws {
        let directory = NSTemporaryDirectory() + "eaas-topics-\(UUID().uuidString)"
        defer { try? FileManager.default.removeItem(atPath: directory) }
        var spec = RandomModelSpec(architecture: .qwen3Moe, layers: 2, experts: 16, topK: 2, hidden: 128)
        spec.vocab = 512
        spec.topics = 4
        try RandomModel.write(spec, to: directory)
        let topics = try #require(try TopicRouting.load(directory: directory))
        #expect(topics.topics == 4 && topics.vocab == 512 && topics.experts == 16)
        let checkpoint = try Checkpoint(directory: directory)
        let embedding = try checkpoint.tensor("model.embed_tokens.weight").floats()
        let hidden = 128
        var onTopic = 0, total = 0
        for layer in 0..<2 {
            let router = try checkpoint.tensor("model.layers.\(layer).mlp.gate.weight").floats()
            for token in stride(from: 0, to: 512, by: 7) {
                let row = Array(embedding[token * hidden..<(token + 1) * hidden])
                let rms = (row.reduce(0) { $0 + $1 * $1 } / Float(hidden)).squareRoot()
                let normalized = row.map { $0 / rms }
                let logits = (0..<16).map { e in zip(router[e * hidden..<(e + 1) * hidden], normalized).reduce(0) { $0 + $1.0 * $1.1 } }
                let top = logits.indices.sorted { logits[$0] > logits[$1] }.prefix(2)
                let wanted = Set(topics.experts(of: topics.topic(of: token)))
                onTopic += top.filter(wanted.contains).count
                total += 2
            }
        }
        #expect(Double(onTopic) / Double(total) > 0.95, "\(onTopic) of \(total) routings on the token's topic")
        // A checkpoint without topics has none, and its config does not mention them.
        spec.topics = 0
        try RandomModel.write(spec, to: directory + "/plain")
        #expect(try TopicRouting.load(directory: directory + "/plain") == nil)
        #expect(!(try String(contentsOfFile: directory + "/plain/config.json", encoding: .utf8)).contains("eaas_topics"))
    }

    @Test("Topics that leave a topic fewer experts than top-k are refused, naming the option")
    func refused() {
        var spec = RandomModelSpec(architecture: .qwen3Moe, layers: 1, experts: 8, topK: 4, hidden: 64)
        spec.topics = 4
        #expect { try spec.configJSON() } throws: { "\($0)".contains("--topics 4") }
        spec.topics = 1
        #expect { try spec.configJSON() } throws: { "\($0)".contains("--topics 1") }
    }
}

@Suite("Topic mix: Zipf popularity that drifts")
struct TopicMixTests {
    let mix = TopicMix(routing: TopicRouting(topics: 4, vocab: 400, experts: 8), exponent: 1, driftSeconds: 10)

    @Test("Weights follow 1/rank and sum to 1; every drift period the ranking moves on by one topic", arguments: [
        (0.0, [12, 6, 4, 3]), (9.9, [12, 6, 4, 3]), (10.0, [3, 12, 6, 4]), (35.0, [6, 4, 3, 12]), (45.0, [12, 6, 4, 3]),
    ] as [(Double, [Double])])
    func weights(seconds: Double, expected: [Double]) {
        let weights = mix.weights(at: seconds)  // expected in 25ths
        #expect(zip(weights, expected).allSatisfy { abs($0 - $1 / 25) < 1e-12 }, "\(weights)")
    }

    @Test("Draws land on topics in proportion to their weights, and prompts stay in the topic's tokens")
    func draws() {
        #expect(mix.topic(at: 0, draw: 0) == 0)
        #expect(mix.topic(at: 0, draw: 0.47) == 0)
        #expect(mix.topic(at: 0, draw: 0.49) == 1)
        #expect(mix.topic(at: 0, draw: 0.999) == 3)
        #expect(mix.topic(at: 0, draw: 0.2) == 0)
        #expect(mix.topic(at: 10, draw: 0.2) == 1, "after one drift topic 1 is the most asked")
        var generator = SystemRandomNumberGenerator()
        let prompt = mix.prompt(topic: 2, length: 64, using: &generator)
        #expect(prompt.count == 64 && prompt.allSatisfy { (200..<300).contains($0) })
    }
}
