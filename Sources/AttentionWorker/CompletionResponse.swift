import Foundation

/// The JSON shapes of `/v1/completions` answers (OpenAI's `text_completion`). With no tokenizer,
/// `text` is the generated ids written as decimal numbers separated by spaces, and `token_ids`
/// (vLLM's field) holds them as numbers.
struct CompletionBody: Encodable {
    struct Choice: Encodable {
        let index: Int
        let text: String
        let token_ids: [Int]
        let logprobs: String?
        let finish_reason: String?

        func encode(to encoder: Encoder) throws {
            var c = encoder.container(keyedBy: Keys.self)
            try c.encode(index, forKey: .index)
            try c.encode(text, forKey: .text)
            try c.encode(token_ids, forKey: .token_ids)
            try c.encodeNil(forKey: .logprobs)
            if let finish_reason { try c.encode(finish_reason, forKey: .finish_reason) } else { try c.encodeNil(forKey: .finish_reason) }
        }
        enum Keys: String, CodingKey { case index, text, token_ids, logprobs, finish_reason }
    }

    struct Usage: Encodable, Equatable {
        var prompt_tokens = 0
        var completion_tokens = 0
        var total_tokens: Int { prompt_tokens + completion_tokens }

        func encode(to encoder: Encoder) throws {
            var c = encoder.container(keyedBy: Keys.self)
            try c.encode(prompt_tokens, forKey: .prompt_tokens)
            try c.encode(completion_tokens, forKey: .completion_tokens)
            try c.encode(total_tokens, forKey: .total_tokens)
        }
        enum Keys: String, CodingKey { case prompt_tokens, completion_tokens, total_tokens }
    }

    let id: String
    let object = "text_completion"
    let created: Int
    let model: String
    let choices: [Choice]
    let usage: Usage?

    func encode(to encoder: Encoder) throws {
        var c = encoder.container(keyedBy: Keys.self)
        try c.encode(id, forKey: .id)
        try c.encode(object, forKey: .object)
        try c.encode(created, forKey: .created)
        try c.encode(model, forKey: .model)
        try c.encode(choices, forKey: .choices)
        if let usage { try c.encode(usage, forKey: .usage) } else { try c.encodeNil(forKey: .usage) }
    }
    enum Keys: String, CodingKey { case id, object, created, model, choices, usage }

    static func text(_ tokens: [Int]) -> String { tokens.map(String.init).joined(separator: " ") }

    func json() -> Data {
        let encoder = JSONEncoder()
        encoder.outputFormatting = [.withoutEscapingSlashes]
        return (try? encoder.encode(self)) ?? Data()
    }
}
