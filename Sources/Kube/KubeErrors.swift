import JSON

/// An error the API server answered with, read from its `Status` object (or from the HTTP status
/// when the body is not one). Switch on `reason` to handle the cases clients care about.
public struct KubeAPIError: Error, CustomStringConvertible, Sendable {
    /// `Status.reason`, the machine-readable cause (`metav1.StatusReason`).
    public enum Reason: String, Sendable {
        case badRequest = "BadRequest"
        case unauthorized = "Unauthorized"
        case forbidden = "Forbidden"
        case notFound = "NotFound"
        case methodNotAllowed = "MethodNotAllowed"
        case notAcceptable = "NotAcceptable"
        case alreadyExists = "AlreadyExists"
        case conflict = "Conflict"
        /// The requested resourceVersion is older than the server keeps: re-list.
        case gone = "Gone"
        /// Like `gone`, for a continue token or watch version that expired.
        case expired = "Expired"
        case requestEntityTooLarge = "RequestEntityTooLarge"
        case unsupportedMediaType = "UnsupportedMediaType"
        case invalid = "Invalid"
        case tooManyRequests = "TooManyRequests"
        case internalError = "InternalError"
        case serviceUnavailable = "ServiceUnavailable"
        case timeout = "Timeout"
        case serverTimeout = "ServerTimeout"
        case unknown = ""

        /// The reason the API server gives with an HTTP status when its body names none.
        init(httpStatus: Int) {
            switch httpStatus {
            case 400: self = .badRequest
            case 401: self = .unauthorized
            case 403: self = .forbidden
            case 404: self = .notFound
            case 405: self = .methodNotAllowed
            case 406: self = .notAcceptable
            case 409: self = .conflict
            case 410: self = .gone
            case 413: self = .requestEntityTooLarge
            case 415: self = .unsupportedMediaType
            case 422: self = .invalid
            case 429: self = .tooManyRequests
            case 500: self = .internalError
            case 503: self = .serviceUnavailable
            case 504: self = .timeout
            default: self = .unknown
            }
        }
    }

    /// The HTTP status (`Status.code`).
    public let code: Int
    public let reason: Reason
    public let message: String
    /// The whole `Status` object, `details.causes` included, or `.null` when the body was not one.
    public let status: JSONValue
    /// Seconds the server asked to wait (`Retry-After`, or `details.retryAfterSeconds`).
    public let retryAfterSeconds: Int?

    public init(code: Int, reason: Reason, message: String, status: JSONValue = .null, retryAfterSeconds: Int? = nil) {
        self.code = code
        self.reason = reason
        self.message = message
        self.status = status
        self.retryAfterSeconds = retryAfterSeconds
    }

    /// Reads an error response: a `Status` body when there is one.
    init(httpStatus: Int, body: [UInt8], retryAfterHeader: Int?) {
        let parsed = try? JSONValue.parse(String(decoding: body, as: UTF8.self))
        if let parsed, parsed["kind"]?.string == "Status" {
            self.init(status: parsed, fallbackCode: httpStatus, retryAfterHeader: retryAfterHeader)
        } else {
            let text = String(decoding: body.prefix(512), as: UTF8.self)
            self.init(code: httpStatus, reason: Reason(httpStatus: httpStatus),
                      message: text.isEmpty ? "HTTP \(httpStatus)" : text, retryAfterSeconds: retryAfterHeader)
        }
    }

    /// Reads a `Status` object, as sent in a response body or a watch `ERROR` event.
    public init(status: JSONValue, fallbackCode: Int = 500, retryAfterHeader: Int? = nil) {
        let code = status["code"]?.int ?? fallbackCode
        let reason = status["reason"]?.string.flatMap(Reason.init(rawValue:)) ?? Reason(httpStatus: code)
        self.init(code: code, reason: reason, message: status["message"]?.string ?? "HTTP \(code)", status: status,
                  retryAfterSeconds: retryAfterHeader ?? status[path: ["details", "retryAfterSeconds"]]?.int)
    }

    /// `Status.details.causes`: for `Invalid` and apply conflicts, one entry per field at fault.
    public var causes: [(field: String, message: String)] {
        (status[path: ["details", "causes"]]?.array ?? []).map {
            ($0["field"]?.string ?? "", $0["message"]?.string ?? "")
        }
    }

    public var description: String { "\(code) \(reason == .unknown ? "error" : reason.rawValue): \(message)" }
}

/// A failure on this side of the API: configuration, connection, or a response that could not be read.
public enum KubeClientError: Error, CustomStringConvertible, Sendable, Equatable {
    /// libcurl could not complete the transfer (TLS, a timeout, a connection reset …); the request
    /// may have reached the server.
    case transport(String)
    /// The request did not finish within its time limit (it may have reached the server).
    case timedOut(String)
    /// The server could not be reached at all (name not resolved, connection refused): nothing was sent.
    case unreachable(String)
    /// The response was not the JSON the API promises.
    case decoding(String)
    /// A request that cannot be made as asked (a namespaced kind without a namespace …).
    case invalidRequest(String)
    /// The task that made the request was cancelled.
    case cancelled

    public var description: String {
        switch self {
        case .transport(let message): "connection to the API server failed: \(message)"
        case .unreachable(let message): "API server unreachable: \(message)"
        case .timedOut(let message): "API request timed out: \(message)"
        case .decoding(let message): "unreadable API response: \(message)"
        case .invalidRequest(let message): "invalid request: \(message)"
        case .cancelled: "request cancelled"
        }
    }
}
