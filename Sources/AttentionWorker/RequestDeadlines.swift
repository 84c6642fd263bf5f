import HummingbirdCore
import NIOCore
import NIOHTTPTypes

/// How long a client may take to send a request, as a value that says what to do with the one
/// timer a connection has.
///
/// The headers must be complete within `header` of the connection opening, or of the end of the
/// previous answer (so it is the keep-alive idle limit too, as Apache's `KeepAliveTimeout`); the
/// body within `body` of the headers. An answer may take as long as it needs (a stream is watched
/// by the worker's stream relay instead). A connection past its deadline is closed.
///
/// These are deadlines, not idle timers: a client trickling one byte a second (slowloris) gets
/// no more time than one that sends nothing.
struct RequestDeadlines: Sendable, Equatable {
    var header: Duration
    var body: Duration

    enum Phase: Sendable, Equatable {
        /// Waiting for a request's headers (the timer runs).
        case awaitingHead
        /// Headers read, the body not yet whole (the timer runs).
        case readingBody
        /// The request is read; its answer is being written (no timer).
        case answering
    }

    enum Action: Sendable, Equatable {
        /// (Re)start the timer: close the connection after this long.
        case arm(Duration)
        /// Stop the timer.
        case disarm
        case none
    }

    private(set) var phase = Phase.awaitingHead
    /// Requests read whole whose answers have not ended.
    private(set) var unanswered = 0

    init(header: Duration, body: Duration) {
        self.header = header
        self.body = body
    }

    /// The connection is open.
    mutating func opened() -> Action { .arm(header) }

    /// A request's headers were read.
    mutating func readHead() -> Action {
        phase = .readingBody
        return .arm(body)
    }

    /// A request's body ended.
    mutating func readEnd() -> Action {
        unanswered += 1
        phase = .answering
        return .disarm
    }

    /// An answer ended. With nothing left to answer, the next request's headers are awaited.
    mutating func wroteEnd() -> Action {
        unanswered = max(0, unanswered - 1)
        guard unanswered == 0, phase == .answering else { return .none }
        phase = .awaitingHead
        return .arm(header)
    }
}

/// Applies `RequestDeadlines` to an HTTP/1 connection (after HTTP decoding), and sets a small
/// socket send buffer so that a client that stops reading is seen as a stalled write soon, not
/// after megabytes of kernel buffer.
final class RequestDeadlineHandler: ChannelDuplexHandler, RemovableChannelHandler {
    typealias InboundIn = HTTPRequestPart
    typealias InboundOut = HTTPRequestPart
    typealias OutboundIn = HTTPResponsePart
    typealias OutboundOut = HTTPResponsePart

    private var deadlines: RequestDeadlines
    private let sendBufferBytes: Int?
    private var timer: Scheduled<Void>?
    private let onExpiry: @Sendable (RequestDeadlines.Phase) -> Void

    /// `onExpiry` is told which phase ran out (for a log line) when a connection is closed.
    init(deadlines: RequestDeadlines, sendBufferBytes: Int?, onExpiry: @escaping @Sendable (RequestDeadlines.Phase) -> Void = { _ in }) {
        self.deadlines = deadlines
        self.sendBufferBytes = sendBufferBytes
        self.onExpiry = onExpiry
    }

    func handlerAdded(context: ChannelHandlerContext) {
        if let sendBufferBytes {
            try? context.channel.syncOptions?.setOption(ChannelOptions.socketOption(.so_sndbuf), value: SocketOptionValue(sendBufferBytes))
        }
        apply(deadlines.opened(), context)
    }

    func handlerRemoved(context: ChannelHandlerContext) { disarm() }

    func channelInactive(context: ChannelHandlerContext) {
        disarm()
        context.fireChannelInactive()
    }

    func channelRead(context: ChannelHandlerContext, data: NIOAny) {
        switch unwrapInboundIn(data) {
        case .head: apply(deadlines.readHead(), context)
        case .end: apply(deadlines.readEnd(), context)
        case .body: break
        }
        context.fireChannelRead(data)
    }

    func write(context: ChannelHandlerContext, data: NIOAny, promise: EventLoopPromise<Void>?) {
        if case .end = unwrapOutboundIn(data) { apply(deadlines.wroteEnd(), context) }
        context.write(data, promise: promise)
    }

    private func apply(_ action: RequestDeadlines.Action, _ context: ChannelHandlerContext) {
        switch action {
        case .none: break
        case .disarm: disarm()
        case .arm(let limit):
            disarm()
            let phase = deadlines.phase
            let onExpiry = onExpiry
            timer = context.eventLoop.assumeIsolated().scheduleTask(in: TimeAmount(limit)) {
                onExpiry(phase)
                context.close(promise: nil)
            }
        }
    }

    private func disarm() {
        timer?.cancel()
        timer = nil
    }
}
