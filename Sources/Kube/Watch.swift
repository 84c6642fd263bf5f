import CCurl
import JSON

/// One change from a watch.
public enum WatchEvent: Sendable {
    case added(KubeObject)
    case modified(KubeObject)
    case deleted(KubeObject)
    /// Nothing changed, but the watch has seen everything up to this resourceVersion: resume from it.
    case bookmark(resourceVersion: String)

    /// The object's resourceVersion, or the bookmark's.
    public var resourceVersion: String? {
        switch self {
        case .added(let object), .modified(let object), .deleted(let object): object.resourceVersion
        case .bookmark(let version): version
        }
    }
}

/// Options of a watch.
public struct WatchOptions: Sendable {
    public var labelSelector: String?
    public var fieldSelector: String?
    /// Changes after this version; nil: a synthetic ADDED for every current object first.
    public var resourceVersion: String?
    /// Ask for BOOKMARK events so that a resume after a quiet period does not fall behind compaction.
    public var allowBookmarks = true
    /// The server ends the watch after this long (clients then resume); nil: the server's default.
    public var timeoutSeconds: Int?
    public init(labelSelector: String? = nil, fieldSelector: String? = nil, resourceVersion: String? = nil,
                allowBookmarks: Bool = true, timeoutSeconds: Int? = nil) {
        self.labelSelector = labelSelector
        self.fieldSelector = fieldSelector
        self.resourceVersion = resourceVersion
        self.allowBookmarks = allowBookmarks
        self.timeoutSeconds = timeoutSeconds
    }
}

extension KubeClient {
    /// Watches objects of `type` (`namespace` nil: all namespaces) as one streaming HTTP transfer.
    /// The sequence ends when the server closes the watch; it throws a `KubeAPIError` for an error
    /// event (`.gone`/`.expired`: the version is compacted, list again) or an error answer.
    /// Cancelling the consuming task, or dropping the sequence, stops the transfer at once.
    public func watch(_ type: ResourceType, namespace: String? = nil, options: WatchOptions = WatchOptions()) -> AsyncThrowingStream<WatchEvent, Error> {
        var query: [(String, String)] = [("watch", "true")]
        if let labelSelector = options.labelSelector { query.append(("labelSelector", labelSelector)) }
        if let fieldSelector = options.fieldSelector { query.append(("fieldSelector", fieldSelector)) }
        if let resourceVersion = options.resourceVersion { query.append(("resourceVersion", resourceVersion)) }
        if options.allowBookmarks { query.append(("allowWatchBookmarks", "true")) }
        if let timeoutSeconds = options.timeoutSeconds { query.append(("timeoutSeconds", String(timeoutSeconds))) }
        let request = HTTPRequest(method: "GET", path: type.path(namespace: type.namespaced ? namespace : nil), query: query)

        let (stream, continuation) = AsyncThrowingStream<WatchEvent, Error>.makeStream()
        let transfer: CurlTransfer
        do { transfer = try CurlTransfer() } catch {
            continuation.finish(throwing: error)
            return stream
        }
        // A server that asked to end the watch at timeoutSeconds but whose close never arrives (a dead
        // connection) is given up on a little later; without timeoutSeconds, TCP keepalive notices.
        let total = options.timeoutSeconds.map { Duration.seconds($0 + 30) }
        connection.configure(transfer, for: request, token: bearerToken,
                             userAgent: configuration.userAgent, connectTimeout: configuration.connectTimeout, totalTimeout: total)
        let decoder = WatchStreamDecoder(continuation: continuation)
        transfer.onHeaderLine = { decoder.headers.consume($0) }
        transfer.onBody = { decoder.consume($0) }
        transfer.onFinish = { result in decoder.finish(result, request: request) }
        continuation.onTermination = { _ in CurlLoop.shared.cancel(transfer) }
        CurlLoop.shared.start(transfer)
        return stream
    }
}

/// Splits a watch body into JSON lines and hands each decoded event to the stream (curl thread only).
private final class WatchStreamDecoder: @unchecked Sendable {
    let continuation: AsyncThrowingStream<WatchEvent, Error>.Continuation
    var headers = ResponseHeaders()
    private var buffer: [UInt8] = []
    private var failed = false

    init(continuation: AsyncThrowingStream<WatchEvent, Error>.Continuation) { self.continuation = continuation }

    func consume(_ bytes: UnsafeRawBufferPointer) -> Bool {
        buffer.append(contentsOf: bytes)
        // An error answer is one Status document: keep it whole for `finish`.
        guard headers.status == 200 else { return true }
        var start = 0
        while let newline = buffer[start...].firstIndex(of: UInt8(ascii: "\n")) {
            if newline > start, !decodeLine(start..<newline) { return false }
            start = newline + 1
        }
        buffer.removeFirst(start)
        return true
    }

    /// Returns false (aborting the transfer) after an error event or an unreadable line.
    private func decodeLine(_ range: Range<Int>) -> Bool {
        let parsed = buffer.withUnsafeBufferPointer { try? JSONValue.parse(bytes: UnsafeBufferPointer(rebasing: $0[range])) }
        guard let event = parsed, let type = event["type"]?.string, let object = event["object"] else {
            fail(KubeClientError.decoding("watch: a line is not a watch event: \(String(decoding: buffer[range].prefix(200), as: UTF8.self))"))
            return false
        }
        switch type {
        case "ADDED": continuation.yield(.added(KubeObject(object)))
        case "MODIFIED": continuation.yield(.modified(KubeObject(object)))
        case "DELETED": continuation.yield(.deleted(KubeObject(object)))
        case "BOOKMARK": continuation.yield(.bookmark(resourceVersion: object[path: ["metadata", "resourceVersion"]]?.string ?? ""))
        case "ERROR":
            fail(KubeAPIError(status: object))
            return false
        default:
            fail(KubeClientError.decoding("watch: unknown event type \(type)"))
            return false
        }
        return true
    }

    private func fail(_ error: Error) {
        failed = true
        continuation.finish(throwing: error)
    }

    func finish(_ result: Result<Int, KubeClientError>, request: HTTPRequest) {
        guard !failed else { return }
        switch result {
        case .success(200):
            continuation.finish()
        case .success(let status):
            continuation.finish(throwing: KubeAPIError(httpStatus: status, body: buffer,
                                                       retryAfterHeader: headers.fields["retry-after"].flatMap { Int($0) }))
        case .failure(.cancelled):
            continuation.finish()
        case .failure(.timedOut):
            continuation.finish()  // our own deadline after timeoutSeconds: the watch simply ends
        case .failure(let error):
            continuation.finish(throwing: error)
        }
    }
}
