import Transport

/// Why a sequence could not be completed. Tokens already sent stay valid.
public enum SequenceFailure: Error, Sendable, Equatable, CustomStringConvertible {
    /// Its client cancelled it (or stopped reading its stream).
    case cancelled
    /// The worker is shutting down.
    case shuttingDown
    /// A step it was in failed: `retryable` when the cause is passing (no replica within the
    /// wait, a deadline), not when a pod refused the work itself (its values, its shape).
    case stepFailed(String, retryable: Bool)
    /// The model produced NaN logits for it.
    case nonFiniteLogits

    public var description: String {
        switch self {
        case .cancelled: "cancelled"
        case .shuttingDown: "the worker is shutting down"
        case let .stepFailed(message, _): "generation step failed: \(message)"
        case .nonFiniteLogits: "the model produced NaN logits"
        }
    }

    /// A failed step's error, classified.
    static func step(_ error: Error) -> SequenceFailure {
        if let step = error as? Dispatcher.StepError, case .refused = step { return .stepFailed("\(error)", retryable: false) }
        if error is Dispatcher.StepError || error is TransportError { return .stepFailed("\(error)", retryable: true) }
        return .stepFailed("\(error)", retryable: false)
    }
}

extension CompletionError {
    /// The one mapping of a generation failure to an OpenAI-shaped error, for whole and streamed
    /// answers alike.
    public init(_ failure: SequenceFailure) {
        switch failure {
        case .cancelled: self.init(status: 499, type: "invalid_request_error", message: failure.description, param: nil)
        case .shuttingDown: self.init(status: 503, type: "server_error", message: failure.description, param: nil)
        case .stepFailed(_, let retryable): self.init(status: retryable ? 503 : 500, type: "server_error", message: failure.description, param: nil)
        case .nonFiniteLogits: self.init(status: 500, type: "server_error", message: failure.description, param: nil)
        }
    }

    /// The one mapping of a refused submission.
    public init(_ error: SubmitError) {
        switch error {
        case let .invalid(message, param): self = .invalid(message, param: param)
        case .overloaded: self.init(status: 429, type: "rate_limit_error", message: error.description, param: nil)
        case .stopping: self.init(status: 503, type: "server_error", message: error.description, param: nil)
        }
    }
}
