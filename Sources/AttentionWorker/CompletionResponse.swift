import Foundation
import JSON

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

/// One finished choice, before it is written in the completion or the chat shape.
struct AnswerChoice {
    let index: Int
    let text: String
    let tokens: [Int]
    let finishReason: String
}

/// The JSON shapes of `/v1/chat/completions` answers (OpenAI's `chat.completion` and, streamed,
/// `chat.completion.chunk`: the first delta of a choice carries the role, the last its finish reason).
enum ChatAnswer {
    static func usage(_ u: CompletionBody.Usage) -> JSONValue {
        ["prompt_tokens": .int(u.prompt_tokens), "completion_tokens": .int(u.completion_tokens), "total_tokens": .int(u.total_tokens)]
    }

    static func whole(id: String, created: Int, model: String, choices: [AnswerChoice], usage u: CompletionBody.Usage) -> Data {
        let body: JSONValue = [
            "id": .string(id), "object": "chat.completion", "created": .int(created), "model": .string(model),
            "choices": .array(choices.map { c in
                ["index": .int(c.index), "message": ["role": "assistant", "content": .string(c.text)],
                 "logprobs": .null, "finish_reason": .string(c.finishReason)]
            }),
            "usage": usage(u),
        ]
        return body.compactData
    }

    static func chunk(id: String, created: Int, model: String, index: Int, role: String?, content: String?, finishReason: String?) -> Data {
        var delta: [String: JSONValue] = [:]
        if let role { delta["role"] = .string(role) }
        if let content { delta["content"] = .string(content) }
        let body: JSONValue = [
            "id": .string(id), "object": "chat.completion.chunk", "created": .int(created), "model": .string(model),
            "choices": [["index": .int(index), "delta": .object(delta), "logprobs": .null,
                         "finish_reason": finishReason.map { .string($0) } ?? .null]],
        ]
        return body.compactData
    }

    static func usageChunk(id: String, created: Int, model: String, usage u: CompletionBody.Usage) -> Data {
        let body: JSONValue = ["id": .string(id), "object": "chat.completion.chunk", "created": .int(created), "model": .string(model),
                               "choices": [], "usage": usage(u)]
        return body.compactData
    }
}
