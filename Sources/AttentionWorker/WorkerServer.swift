import Hummingbird
import HummingbirdCore
import Logging
import NIOCore

/// The worker's HTTP server: `WorkerHTTP`'s routes behind the limits a hostile or careless
/// client meets.
public enum WorkerServer {
    /// How much a client may cost the worker. Defaults suit clients on a cluster network.
    public struct Limits: Sendable, Equatable {
        /// A request's headers must be whole within this of the connection opening or the end of
        /// the previous answer (also the keep-alive idle limit).
        public var headerTimeout: Duration = .seconds(10)
        /// A request's body must be whole within this of its headers (16 MiB at 0.5 MB/s).
        public var bodyTimeout: Duration = .seconds(30)
        /// A streamed answer whose client reads nothing for this long is abandoned: its
        /// sequences are cancelled and the connection closed.
        public var streamStallTimeout: Duration = .seconds(15)
        /// A streamed answer with more events than this waiting for its client is abandoned.
        public var maxUnsentEvents = 4096
        /// The socket send buffer of each connection: small, so that a client that stops reading
        /// blocks writes (and is seen) after tens of kilobytes, not megabytes.
        public var sendBufferBytes = 64 << 10

        public init() {}

        /// What is wrong with these limits, if anything.
        public var problem: String? {
            for (name, value) in [("header timeout", headerTimeout), ("body timeout", bodyTimeout), ("stream stall timeout", streamStallTimeout)]
            where value <= .zero || value > .seconds(86_400) {
                return "the \(name) must be more than 0 s and at most a day (got \(value))"
            }
            if maxUnsentEvents < 1 { return "the unsent-event limit must be at least 1 (got \(maxUnsentEvents))" }
            if sendBufferBytes < 4096 || sendBufferBytes > 64 << 20 { return "the send buffer must be 4 KiB to 64 MiB (got \(sendBufferBytes) bytes)" }
            return nil
        }
    }

    /// The HTTP application serving `engine` on `host:port`.
    public static func application(engine: GenerationEngine, tokenizer: ModelTokenizer? = nil, host: String, port: Int, limits: Limits = Limits(), logger: Logger,
                                   onServerRunning: @escaping @Sendable (any Channel) async -> Void = { _ in })
        -> some ApplicationProtocol {
        let deadlines = RequestDeadlines(header: limits.headerTimeout, body: limits.bodyTimeout)
        let sendBuffer = limits.sendBufferBytes
        let onExpiry: @Sendable (RequestDeadlines.Phase) -> Void = { phase in
            switch phase {
            case .awaitingHead: logger.debug("closed a connection whose request headers did not come within the header timeout")
            case .readingBody: logger.notice("closed a connection whose request body did not come within the body timeout")
            case .answering: break
            }
        }
        return Application(
            router: WorkerHTTP.router(engine: engine, tokenizer: tokenizer, limits: limits, logger: logger),
            server: .http1(configuration: .init(additionalChannelHandlers: [
                RequestDeadlineHandler(deadlines: deadlines, sendBufferBytes: sendBuffer, onExpiry: onExpiry),
            ])),
            configuration: .init(address: .hostname(host, port: port), serverName: "eaas-worker"),
            onServerRunning: onServerRunning,
            logger: logger
        )
    }
}

/// The request context of the worker's routes: Hummingbird's basic one plus the connection, so
/// that an abandoned stream can close it.
public struct WorkerRequestContext: RequestContext {
    public var coreContext: CoreRequestContextStorage
    /// The connection the request came on.
    public let channel: any Channel

    public init(source: ApplicationRequestContextSource) {
        coreContext = .init(source: source)
        channel = source.channel
    }
}
