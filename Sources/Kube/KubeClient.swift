import CCurl
import Foundation
import JSON

/// A Kubernetes API client: REST verbs on any kind, subresources, watches, client-side rate
/// limiting and retries. Every transfer runs on libcurl's multi interface on one thread of its own.
public final class KubeClient: Sendable {
    /// Client behaviour; the defaults suit a controller (client-go's 5 QPS / 10 burst is too low for
    /// one that scales many shards at once).
    public struct Configuration: Sendable {
        /// Sustained requests per second (≤ 0: unlimited). Default 50.
        public var qps: Double = 50
        /// Requests allowed at once above `qps`. Default 100.
        public var burst: Int = 100
        /// Retries after 429, 5xx or a failed connection (with backoff). Default 5.
        public var maxRetries: Int = 5
        /// First retry delay when the server gives no Retry-After; doubles up to `maxRetryDelay`.
        public var retryDelay: Duration = .milliseconds(100)
        public var maxRetryDelay: Duration = .seconds(5)
        /// Limit for a whole non-watch request. Default 30 s.
        public var requestTimeout: Duration = .seconds(30)
        public var connectTimeout: Duration = .seconds(10)
        public var userAgent = "eaas/1 (libcurl)"
        public init() {}
    }

    public let connection: ClusterConnection
    public let configuration: Configuration
    private let limiter: RateLimiter
    private let tokenFile: TokenFileCache?

    public init(connection: ClusterConnection, configuration: Configuration = Configuration()) {
        self.connection = connection
        self.configuration = configuration
        limiter = RateLimiter(qps: configuration.qps, burst: configuration.burst)
        tokenFile = connection.bearerTokenFile.map(TokenFileCache.init(path:))
    }

    /// The namespace a call means: the one given, else the object's, else the connection's default.
    func namespace(for type: ResourceType, _ namespace: String?) -> String? {
        type.namespaced ? (namespace ?? connection.namespace) : nil
    }

    // MARK: Sending

    /// The token to send now: the inline one, else the token file's current content.
    var bearerToken: String? { tokenFile?.current ?? connection.bearerToken }

    /// Sends `request` once and collects the whole response.
    func send(_ request: HTTPRequest) async throws -> HTTPResponse {
        let transfer = try CurlTransfer()
        connection.configure(transfer, for: request, token: bearerToken,
                             userAgent: configuration.userAgent, connectTimeout: configuration.connectTimeout,
                             totalTimeout: configuration.requestTimeout)
        let collector = ResponseCollector()
        transfer.onHeaderLine = { collector.headers.consume($0) }
        transfer.onBody = { collector.body.append(contentsOf: $0); return true }
        return try await withTaskCancellationHandler {
            try await withCheckedThrowingContinuation { (continuation: CheckedContinuation<HTTPResponse, Error>) in
                transfer.onFinish = { result in
                    switch result {
                    case .success(let status):
                        continuation.resume(returning: HTTPResponse(status: status, headers: collector.headers.fields, body: collector.body))
                    case .failure(let error): continuation.resume(throwing: error)
                    }
                }
                CurlLoop.shared.start(transfer)
            }
        } onCancel: {
            CurlLoop.shared.cancel(transfer)
        }
    }

    /// Sends `request` under the rate limit, retrying what is safe to retry, and returns the body of
    /// a 2xx answer; anything else becomes a `KubeAPIError`.
    func call(_ request: HTTPRequest) async throws -> [UInt8] {
        var attempt = 0
        while true {
            try await limiter.acquire()
            let delay: Duration
            do {
                let response = try await send(request)
                if (200..<300).contains(response.status) { return response.body }
                let error = KubeAPIError(httpStatus: response.status, body: response.body,
                                         retryAfterHeader: response.headers["retry-after"].flatMap { Int($0) })
                guard attempt < configuration.maxRetries, Self.mayRetry(status: response.status, method: request.method) else { throw error }
                delay = error.retryAfterSeconds.map { .seconds($0) } ?? backoff(attempt)
            } catch let error as KubeClientError {
                // A request that may have reached the server is only sent again if it is a read.
                switch error {
                case .unreachable: break
                case .transport where request.method == "GET", .timedOut where request.method == "GET": break
                default: throw error
                }
                guard attempt < configuration.maxRetries else { throw error }
                delay = backoff(attempt)
            }
            attempt += 1
            try await Task.sleep(for: delay)
        }
    }

    /// 429 and 503 mean the server did not act on the request; after other 5xx answers it may have
    /// (a JSON patch applied twice, a delete answered 404 the second time), so only reads go again.
    static func mayRetry(status: Int, method: String) -> Bool {
        switch status {
        case 429, 503: true
        case 500, 502, 504: method == "GET"
        default: false
        }
    }

    private func backoff(_ attempt: Int) -> Duration {
        let base = configuration.retryDelay * (1 << min(attempt, 20))
        let capped = min(base, configuration.maxRetryDelay)
        return capped * Double.random(in: 0.8...1.2)
    }

    func callJSON(_ request: HTTPRequest) async throws -> JSONValue {
        let body = try await call(request)
        do {
            return try body.withUnsafeBufferPointer { try JSONValue.parse(bytes: $0) }
        } catch {
            throw KubeClientError.decoding("\(request.method) \(request.path): \(error)")
        }
    }

    func callObject(_ request: HTTPRequest) async throws -> KubeObject {
        let json = try await callJSON(request)
        guard case .object = json else { throw KubeClientError.decoding("\(request.method) \(request.path): not a JSON object") }
        return KubeObject(json)
    }
}

/// Where a transfer's callbacks (on the curl thread) put the response until it finishes.
private final class ResponseCollector: @unchecked Sendable {
    var headers = ResponseHeaders()
    var body: [UInt8] = []
}
