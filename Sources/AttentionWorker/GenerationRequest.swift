/// One sequence to generate.
public struct GenerationRequest: Sendable, Equatable {
    /// Prompt token ids (at least one).
    public var prompt: [Int]
    /// Most tokens to generate (at least one).
    public var maxTokens: Int
    public var sampling: SamplingParameters
    /// Tokens that end the generation besides the model's end-of-sequence tokens (the stop token is
    /// part of the output, as in vLLM).
    public var stopTokenIDs: Set<Int>
    /// Keep generating through the model's end-of-sequence tokens.
    public var ignoreEOS: Bool

    public init(prompt: [Int], maxTokens: Int, sampling: SamplingParameters = .greedy, stopTokenIDs: Set<Int> = [], ignoreEOS: Bool = false) {
        self.prompt = prompt
        self.maxTokens = maxTokens
        self.sampling = sampling
        self.stopTokenIDs = stopTokenIDs
        self.ignoreEOS = ignoreEOS
    }
}

/// Why a sequence ended (OpenAI's `finish_reason`).
public enum FinishReason: String, Sendable, Equatable {
    /// `maxTokens` reached.
    case length
    /// An end-of-sequence or stop token was generated.
    case stop
}

/// What happens to a submitted sequence, in order: tokens, then exactly one `finished` or `failed`.
public enum GenerationEvent: Sendable, Equatable {
    case token(Int)
    case finished(FinishReason, promptTokens: Int, completionTokens: Int)
    /// The sequence could not be completed (an expert step failed, the worker stopped); tokens
    /// already sent stay valid.
    case failed(SequenceFailure)
}

/// A finished sequence, for callers that wait for the whole result.
public struct GenerationResult: Sendable, Equatable {
    public var tokens: [Int]
    public var finishReason: FinishReason
    public var promptTokens: Int
}

/// Why a request was not accepted.
public enum SubmitError: Error, CustomStringConvertible, Equatable, Sendable {
    /// The request itself is wrong: the message says why, `param` names the field; HTTP 400.
    case invalid(String, param: String?)
    /// The waiting queue is full; HTTP 429. Nothing of the request was kept.
    case overloaded(waiting: Int)
    /// The worker is shutting down; HTTP 503.
    case stopping

    public var description: String {
        switch self {
        case .invalid(let message, _): message
        case .overloaded(let waiting): "the worker is overloaded: \(waiting) requests already wait to start; retry later"
        case .stopping: "the worker is shutting down"
        }
    }
}
