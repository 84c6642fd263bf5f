import JSON
import Foundation
import MoE
import Text

/// A `POST /v1/completions` body (OpenAI's shape; prompts as text when the worker has a
/// tokenizer, else as token ids), validated: every problem is a `CompletionError` naming the field.
public struct CompletionRequest: Sendable, Equatable {
    /// One or more prompts, as ids (`prompt` as text, a list of texts, a list of ids, or a list of such lists).
    public var prompts: [[Int]]
    /// Strings that end a completion (matched in the text across tokens, not included in it).
    public var stopStrings: [String] = []
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

    /// Most stop strings, and the longest one (in characters).
    public static let maxStopStrings = 16
    public static let maxStopLength = 1_000

    /// Parses and checks a request body; `seed` is used when the body gives none. With a tokenizer,
    /// prompts may be text and `stop` strings are allowed.
    public init(json body: Data, seed: UInt64, tokenizer: ModelTokenizer? = nil) throws(CompletionError) {
        let fields = try Self.object(body)
        guard let prompt = fields["prompt"], prompt != .null else {
            throw .invalid(tokenizer == nil ? "'prompt' is required: a list of token ids, or a list of such lists"
                                            : "'prompt' is required: a string, a list of strings, or token ids", param: "prompt")
        }
        try self.init(fields: fields, prompts: try Self.prompts(prompt, tokenizer: tokenizer), seed: seed, tokenizer: tokenizer)
    }

    /// The body as a JSON object.
    static func object(_ body: Data) throws(CompletionError) -> [String: JSONValue] {
        guard let value = try? JSONValue.parse(body) else { throw .invalid("the body is not valid JSON", param: nil) }
        guard let fields = value.object else { throw .invalid("the body must be a JSON object", param: nil) }
        return fields
    }

    /// Everything but the prompt, shared with chat completions.
    init(fields: [String: JSONValue], prompts: [[Int]], seed: UInt64, tokenizer: ModelTokenizer?,
         maxTokensKeys: [String] = ["max_tokens"]) throws(CompletionError) {
        self.prompts = prompts
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

        if let model = field("model") {
            guard let name = model.string else { throw .invalid("'model' must be a string", param: "model") }
            self.model = name
        }
        var maxTokens = Self.defaultMaxTokens
        var maxTokensKey = maxTokensKeys[0]
        for key in maxTokensKeys {
            if let n = try integer(key) { maxTokens = n; maxTokensKey = key; break }
        }
        self.maxTokens = maxTokens
        guard maxTokens >= 1 else { throw .invalid("'\(maxTokensKey)' must be at least 1 (got \(maxTokens))", param: maxTokensKey) }
        if let n = try integer("n"), n != 1 { throw .invalid("'n' must be 1 (one completion per prompt; send several prompts instead)", param: "n") }
        if let bestOf = try integer("best_of"), bestOf != 1 { throw .invalid("'best_of' is not supported", param: "best_of") }
        if let echo = try boolean("echo"), echo { throw .invalid("'echo' is not supported", param: "echo") }
        if field("logprobs") != nil { throw .invalid("'logprobs' is not supported", param: "logprobs") }
        if field("suffix") != nil { throw .invalid("'suffix' is not supported", param: "suffix") }
        if let stop = field("stop"), stop != .array([]) {
            guard tokenizer != nil else {
                throw .invalid("'stop' strings need a tokenizer, which this worker does not have; use 'stop_token_ids'", param: "stop")
            }
            guard let strings = Self.strings(stop) else { throw .invalid("'stop' must be a string or a list of strings", param: "stop") }
            guard strings.count <= Self.maxStopStrings else { throw .invalid("'stop' has \(strings.count) strings; at most \(Self.maxStopStrings)", param: "stop") }
            for s in strings where s.isEmpty || s.unicodeScalars.count > Self.maxStopLength {
                throw .invalid("each 'stop' string must have 1 to \(Self.maxStopLength) characters", param: "stop")
            }
            stopStrings = strings
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
        // Text requests also stop at the tokenizer's end-of-sequence token.
        if let tokenizer, !ignoreEOS { stopTokenIDs.formUnion(tokenizer.stopTokenIDs) }
    }

    /// A string or a list of strings (OpenAI's `prompt` and `stop`), else nil.
    private static func strings(_ value: JSONValue) -> [String]? {
        if let one = value.string { return [one] }
        guard let list = value.array else { return nil }
        let strings = list.compactMap(\.string)
        return strings.count == list.count ? strings : nil
    }

    private static func prompts(_ value: JSONValue, tokenizer: ModelTokenizer?) throws(CompletionError) -> [[Int]] {
        if value.string != nil || value.array?.first?.string != nil {
            guard let tokenizer else {
                throw .invalid("'prompt' must be token ids: this worker has no tokenizer (send a list of integers, or a list of such lists)", param: "prompt")
            }
            guard let texts = Self.strings(value) else {
                throw .invalid("'prompt' must be a string, a list of strings, or token ids (not a mix)", param: "prompt")
            }
            var prompts: [[Int]] = []
            for (index, text) in texts.enumerated() {
                let ids = tokenizer.tokenizer.encode(text)
                guard !ids.isEmpty else { throw .invalid("'prompt\(texts.count > 1 ? "[\(index)]" : "")' is empty", param: "prompt") }
                prompts.append(ids)
            }
            return prompts
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

/// A `POST /v1/chat/completions` body: the messages rendered with the model's chat template
/// (generation prompt added) into one prompt, and the completion fields as `/v1/completions` has them
/// (`max_completion_tokens` or `max_tokens`).
public struct ChatCompletionRequest: Sendable, Equatable {
    public var messages: [ChatTemplate.Message]
    public var completion: CompletionRequest

    /// Most messages, and the most characters of text in them all.
    public static let maxMessages = 4_096

    public init(json body: Data, seed: UInt64, tokenizer: ModelTokenizer?) throws(CompletionError) {
        let fields = try CompletionRequest.object(body)
        guard let tokenizer else { throw .invalid("this worker has no tokenizer, so it cannot take chat messages; use /v1/completions with token ids", param: nil) }
        guard tokenizer.chatTemplate != nil else { throw .invalid("this model has no chat template; use /v1/completions", param: nil) }
        guard let list = fields["messages"]?.array, !list.isEmpty else {
            throw .invalid("'messages' is required: a non-empty list of {role, content}", param: "messages")
        }
        guard list.count <= Self.maxMessages else { throw .invalid("'messages' has \(list.count) entries; at most \(Self.maxMessages)", param: "messages") }
        for key in ["tools", "tool_choice", "response_format", "functions"] where fields[key] != nil && fields[key] != .null && fields[key] != .array([]) {
            throw .invalid("'\(key)' is not supported", param: key)
        }
        var messages: [ChatTemplate.Message] = []
        for (i, m) in list.enumerated() {
            guard let object = m.object else { throw .invalid("'messages[\(i)]' must be an object", param: "messages") }
            guard let role = object["role"]?.string, !role.isEmpty, role.count <= 64 else {
                throw .invalid("'messages[\(i)].role' must be a non-empty string", param: "messages")
            }
            var content: String?
            switch object["content"] {
            case nil, .null?: content = nil
            case .string(let s)?: content = s
            case .array(let parts)?:
                var text = ""
                for (k, part) in parts.enumerated() {
                    guard part["type"]?.string == "text", let t = part["text"]?.string else {
                        throw .invalid("'messages[\(i)].content[\(k)]': only {\"type\": \"text\", \"text\": …} parts are supported", param: "messages")
                    }
                    text += t
                }
                content = text
            default:
                throw .invalid("'messages[\(i)].content' must be a string, a list of text parts, or null", param: "messages")
            }
            let extra = object.keys.sorted().filter { $0 != "role" && $0 != "content" }.map { ($0, object[$0]!) }
            messages.append(ChatTemplate.Message(role: role, content: content, extra: extra))
        }
        let prompt: [Int]
        do { prompt = try tokenizer.chatPrompt(messages) } catch {
            throw .invalid("the chat template could not render these messages: \(error.message)", param: "messages")
        }
        guard !prompt.isEmpty else { throw .invalid("the messages render to an empty prompt", param: "messages") }
        var rest = fields
        rest["prompt"] = nil
        self.messages = messages
        completion = try CompletionRequest(fields: rest, prompts: [prompt], seed: seed, tokenizer: tokenizer,
                                           maxTokensKeys: ["max_completion_tokens", "max_tokens"])
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
