import JSON
import Foundation
import MoE

/// A `POST /v1/completions` body (OpenAI's shape; prompts as token ids, since the worker has no
/// tokenizer), validated: every problem is a `CompletionError` naming the field.
public struct CompletionRequest: Sendable, Equatable {
    /// One or more prompts (`prompt` as a list of ids, or a list of such lists).
    public var prompts: [[Int]]
    public var model: String?
    public var maxTokens: Int
    public var sampling: SamplingParameters
    public var stream: Bool
    /// `stream_options.include_usage`: a last chunk with `usage` and no choices.
    public var includeUsage: Bool
    /// vLLM's extensions: extra stop tokens, and generating through end-of-sequence tokens.
    public var stopTokenIDs: Set<Int>
    public var ignoreEOS: Bool

    /// OpenAI's default `max_tokens`.
    public static let defaultMaxTokens = 16

    /// Parses and checks a request body; `seed` is used when the body gives none.
    public init(json body: Data, seed: UInt64) throws(CompletionError) {
        guard let value = try? JSONValue.parse(body) else { throw .invalid("the body is not valid JSON", param: nil) }
        guard let fields = value.object else { throw .invalid("the body must be a JSON object", param: nil) }
        func field(_ name: String) -> JSONValue? {
            guard let value = fields[name], value != .null else { return nil }
            return value
        }
        func integer(_ name: String) throws(CompletionError) -> Int? {
            guard let value = field(name) else { return nil }
            guard let int = value.int else { throw .invalid("'\(name)' must be an integer (got \(value))", param: name) }
            return int
        }
        func number(_ name: String) throws(CompletionError) -> Double? {
            guard let value = field(name) else { return nil }
            guard let double = value.double else { throw .invalid("'\(name)' must be a number (got \(value))", param: name) }
            return double
        }
        func boolean(_ name: String) throws(CompletionError) -> Bool? {
            guard let value = field(name) else { return nil }
            guard let bool = value.bool else { throw .invalid("'\(name)' must be true or false (got \(value))", param: name) }
            return bool
        }

        guard let prompt = field("prompt") else { throw .invalid("'prompt' is required: a list of token ids, or a list of such lists", param: "prompt") }
        prompts = try Self.prompts(prompt)
        if let model = field("model") {
            guard let name = model.string else { throw .invalid("'model' must be a string", param: "model") }
            self.model = name
        }
        maxTokens = try integer("max_tokens") ?? Self.defaultMaxTokens
        guard maxTokens >= 1 else { throw .invalid("'max_tokens' must be at least 1 (got \(maxTokens))", param: "max_tokens") }
        if let n = try integer("n"), n != 1 { throw .invalid("'n' must be 1 (one completion per prompt; send several prompts instead)", param: "n") }
        if let bestOf = try integer("best_of"), bestOf != 1 { throw .invalid("'best_of' is not supported", param: "best_of") }
        if let echo = try boolean("echo"), echo { throw .invalid("'echo' is not supported", param: "echo") }
        if field("logprobs") != nil { throw .invalid("'logprobs' is not supported", param: "logprobs") }
        if field("suffix") != nil { throw .invalid("'suffix' is not supported", param: "suffix") }
        if let stop = field("stop"), stop != .array([]) {
            throw .invalid("'stop' strings need a tokenizer, which this worker does not have; use 'stop_token_ids'", param: "stop")
        }
        let temperature = try number("temperature") ?? 1
        let topP = try number("top_p") ?? 1
        var topK = try integer("top_k") ?? 0
        if topK == -1 { topK = 0 }  // vLLM's "disabled"
        var requestSeed = seed
        if let given = field("seed") {
            guard let int = given.int else { throw .invalid("'seed' must be an integer (got \(given))", param: "seed") }
            requestSeed = UInt64(bitPattern: Int64(int))
        }
        sampling = SamplingParameters(temperature: temperature, topP: topP, topK: topK, seed: requestSeed)
        if let problem = sampling.problem {
            let param = problem.hasPrefix("temperature") ? "temperature" : problem.hasPrefix("top_p") ? "top_p" : "top_k"
            throw .invalid(problem, param: param)
        }
        stream = try boolean("stream") ?? false
        includeUsage = false
        if let options = field("stream_options") {
            guard let object = options.object else { throw .invalid("'stream_options' must be an object", param: "stream_options") }
            if let include = object["include_usage"], include != .null {
                guard let flag = include.bool else { throw .invalid("'stream_options.include_usage' must be true or false", param: "stream_options") }
                includeUsage = flag
            }
        }
        stopTokenIDs = []
        if let stops = field("stop_token_ids") {
            guard let list = stops.array, list.allSatisfy({ $0.int != nil }) else {
                throw .invalid("'stop_token_ids' must be a list of integers", param: "stop_token_ids")
            }
            stopTokenIDs = Set(list.map { $0.int! })
        }
        ignoreEOS = try boolean("ignore_eos") ?? false
    }

    private static func prompts(_ value: JSONValue) throws(CompletionError) -> [[Int]] {
        if value.string != nil || value.array?.first?.string != nil {
            throw .invalid("'prompt' must be token ids: this worker has no tokenizer (send a list of integers, or a list of such lists)", param: "prompt")
        }
        guard let items = value.array, !items.isEmpty else {
            throw .invalid("'prompt' must be a non-empty list of token ids, or a list of such lists", param: "prompt")
        }
        if items.allSatisfy({ $0.int != nil }) { return [items.map { $0.int! }] }
        var prompts: [[Int]] = []
        for (index, item) in items.enumerated() {
            guard let ids = item.array, !ids.isEmpty, ids.allSatisfy({ $0.int != nil }) else {
                throw .invalid("'prompt[\(index)]' must be a non-empty list of integer token ids", param: "prompt")
            }
            prompts.append(ids.map { $0.int! })
        }
        return prompts
    }

    /// The engine requests, one per prompt.
    public var generationRequests: [GenerationRequest] {
        prompts.enumerated().map { index, prompt in
            var sampling = self.sampling
            // Distinct but reproducible streams for the prompts of one request.
            sampling.seed = sampling.seed &+ UInt64(index) &* 0x9E37_79B9_7F4A_7C15
            return GenerationRequest(prompt: prompt, maxTokens: maxTokens, sampling: sampling, stopTokenIDs: stopTokenIDs, ignoreEOS: ignoreEOS)
        }
    }
}

/// A refused request, as OpenAI reports it: HTTP status, message, offending parameter.
public struct CompletionError: Error, CustomStringConvertible, Sendable, Equatable {
    public let status: Int
    public let type: String
    public let message: String
    public let param: String?

    public var description: String { message }

    public static func invalid(_ message: String, param: String?) -> CompletionError {
        CompletionError(status: 400, type: "invalid_request_error", message: message, param: param)
    }

    /// The JSON error body.
    public var body: Data {
        let error = ErrorBody(error: .init(message: message, type: type, param: param, code: nil))
        return (try? JSONEncoder().encode(error)) ?? Data("{\"error\":{\"message\":\"error\"}}".utf8)
    }

    struct ErrorBody: Encodable {
        struct Detail: Encodable {
            let message: String
            let type: String
            let param: String?
            let code: String?
        }
        let error: Detail
    }
}
