import Foundation
import JSON

/// Traffic with topics, made the way real traffic makes skew: through the model's own router.
/// A checkpoint written with `topics: N` splits its vocabulary into N equal ranges; tokens of
/// topic `t` carry a shared direction `u_t` in their embedding, the router of every MoE layer
/// favours experts `e ≡ t (mod N)` along that direction, and the LM head favours tokens of the
/// same topic, so a prompt drawn from a topic keeps routing to that topic's experts while it
/// decodes. Which experts are hot then depends only on which topics the traffic asks about.
/// The count is written to `config.json` as `eaas_topics` (an extra key transformers keeps).
public struct TopicRouting: Sendable, Equatable {
    public let topics: Int
    public let vocab: Int
    public let experts: Int
    /// Length of each topic's direction in an embedding row: well above the random part
    /// (`weightStd × √hidden`), so that the normalized hidden state points along it.
    static let embeddingScale: Float = 1
    /// Router weight along the topic direction for the topic's experts.
    static let routerScale: Float = 0.15
    /// LM-head weight along the topic direction for the topic's tokens.
    static let headScale: Float = 0.15

    public init(topics: Int, vocab: Int, experts: Int) {
        self.topics = topics
        self.vocab = vocab
        self.experts = experts
    }

    /// The topics of a checkpoint `eaas model init --topics` wrote; nil for any other checkpoint.
    public static func load(directory: String) throws -> TopicRouting? {
        let config = try ModelConfig.load(directory: directory)
        guard let data = FileManager.default.contents(atPath: directory + "/config.json"),
              let topics = try JSONValue.parse(String(decoding: data, as: UTF8.self))["eaas_topics"]?.int, topics >= 2 else { return nil }
        return TopicRouting(topics: topics, vocab: config.vocabSize, experts: config.expertCount)
    }

    /// The topic of token `id`.
    public func topic(of id: Int) -> Int { min(topics - 1, id * topics / vocab) }

    /// The token ids of topic `t`.
    public func tokens(of topic: Int) -> Range<Int> {
        (topic * vocab + topics - 1) / topics..<((topic + 1) * vocab + topics - 1) / topics
    }

    /// The experts topic `t`'s tokens are routed to.
    public func experts(of topic: Int) -> [Int] { Array(stride(from: topic, to: experts, by: topics)) }

    /// `u_t`: a unit vector of random signs, the same for a given topic and size.
    public static func direction(topic: Int, hidden: Int) -> [Float] {
        var rng = SplitMix64(seed: 0x7091_c5 &+ UInt64(topic) &* 0x9e37_79b9_7f4a_7c15)
        let value = 1 / Float(hidden).squareRoot()
        return (0..<hidden).map { _ in rng.next() & 1 == 0 ? value : -value }
    }

    /// Adds the topic structure to a tensor of the random checkpoint, by its name and shape.
    func shape(_ name: String, values: inout [Float], shape: [Int]) {
        guard shape.count == 2 else { return }
        let rows = shape[0], hidden = shape[1]
        let directions = (0..<topics).map { Self.direction(topic: $0, hidden: hidden) }
        func add(row: Int, topic: Int, scale: Float) {
            for column in 0..<hidden { values[row * hidden + column] += scale * directions[topic][column] }
        }
        if name == "model.embed_tokens.weight" || name == "lm_head.weight", rows == vocab {
            let scale = name == "lm_head.weight" ? Self.headScale : Self.embeddingScale
            for row in 0..<rows { add(row: row, topic: topic(of: row), scale: scale) }
        } else if name.hasSuffix(".gate.weight"), rows == experts {  // the router: `mlp.gate`, Mixtral's `block_sparse_moe.gate`
            for row in 0..<rows { add(row: row, topic: row % topics, scale: Self.routerScale) }
        }
    }
}
