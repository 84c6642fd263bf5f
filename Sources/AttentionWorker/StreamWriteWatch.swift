import Foundation

/// Watches one server-sent-events answer for a client that stopped reading.
///
/// A stream's writes wait when the socket's buffers are full; tokens then pile up between the
/// engine and the writer. Rather than generating to `max_tokens` for nobody while holding a
/// running place, the stream is abandoned (its sequences cancelled, its connection closed) when
/// one write has waited `stallLimit`, or when more than `maxUnsent` events wait to be written.
final class StreamWriteWatch: @unchecked Sendable {
    /// Why a stream was abandoned.
    enum Abandoned: Sendable, Equatable, CustomStringConvertible {
        case writeStalled(Duration)
        case tooManyUnsent(Int)

        var description: String {
            switch self {
            case .writeStalled(let limit): "the client read nothing for \(limit)"
            case .tooManyUnsent(let count): "more than \(count) events waited for a client that reads too slowly"
            }
        }
    }

    let stallLimit: Duration
    let maxUnsent: Int
    private let lock = NSLock()
    private var writeStarted: ContinuousClock.Instant?
    private var unsent = 0
    private var abandoned: Abandoned?

    init(stallLimit: Duration, maxUnsent: Int) {
        self.stallLimit = stallLimit
        self.maxUnsent = maxUnsent
    }

    /// An event is ready to be written. False once the stream is abandoned (this event included).
    func queued() -> Bool {
        lock.withLock {
            guard abandoned == nil else { return false }
            unsent += 1
            if unsent > maxUnsent { abandoned = .tooManyUnsent(maxUnsent) }
            return abandoned == nil
        }
    }

    func writing() { lock.withLock { writeStarted = .now } }

    func wrote() {
        lock.withLock {
            writeStarted = nil
            unsent = max(0, unsent - 1)
        }
    }

    /// Checks the write in progress; records and returns the reason when it has waited too long.
    func checkStall(now: ContinuousClock.Instant = .now) -> Abandoned? {
        lock.withLock {
            if abandoned == nil, let started = writeStarted, now - started >= stallLimit { abandoned = .writeStalled(stallLimit) }
            return abandoned
        }
    }

    var reason: Abandoned? { lock.withLock { abandoned } }
}
