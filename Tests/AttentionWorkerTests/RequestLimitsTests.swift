import Testing
@testable import AttentionWorker

@Suite("Worker request limits: deadlines and stalled streams")
struct RequestLimitsTests {
    /// What happens on a connection.
    enum Event: String, Sendable, CustomTestStringConvertible {
        case open, head, end, answered
        func step(_ deadlines: inout RequestDeadlines) -> RequestDeadlines.Action {
            switch self {
            case .open: deadlines.opened()
            case .head: deadlines.readHead()
            case .end: deadlines.readEnd()
            case .answered: deadlines.wroteEnd()
            }
        }
        var testDescription: String { rawValue }
    }

    @Test("the timer runs while a request is read, stops while it is answered, and restarts for the next one",
          arguments: [
              // One request on a connection, then keep-alive: headers, body, answer, idle again.
              ([Event.open, .head, .end, .answered], [RequestDeadlines.Action.arm(.seconds(10)), .arm(.seconds(30)), .disarm, .arm(.seconds(10))]),
              // Pipelined: the second request's headers arrive while the first is answered.
              ([Event.open, .head, .end, .head, .answered, .end, .answered], [.arm(.seconds(10)), .arm(.seconds(30)), .disarm, .arm(.seconds(30)), .none, .disarm, .arm(.seconds(10))]),
              // An early answer (413 before the body is whole) leaves the body deadline running.
              ([Event.open, .head, .answered], [.arm(.seconds(10)), .arm(.seconds(30)), .none]),
          ])
    func deadlines(events: [Event], expected: [RequestDeadlines.Action]) {
        var deadlines = RequestDeadlines(header: .seconds(10), body: .seconds(30))
        let actions = events.map { $0.step(&deadlines) }
        #expect(actions == expected, "\(events.map(\.rawValue))")
    }

    @Test("a write waiting past the stall limit, or too many unsent events, abandons the stream once")
    func streamWatch() {
        let watch = StreamWriteWatch(stallLimit: .seconds(2), maxUnsent: 3)
        let start = ContinuousClock.now
        #expect(watch.queued())
        watch.writing()
        #expect(watch.checkStall(now: start + .seconds(1)) == nil)
        watch.wrote()
        #expect(watch.checkStall(now: start + .seconds(5)) == nil, "no write in progress is no stall")
        watch.writing()
        #expect(watch.checkStall(now: .now + .seconds(3)) == .writeStalled(.seconds(2)))
        #expect(!watch.queued(), "an abandoned stream takes no more events")

        let slow = StreamWriteWatch(stallLimit: .seconds(60), maxUnsent: 3)
        #expect(slow.queued() && slow.queued() && slow.queued())
        #expect(!slow.queued())
        #expect(slow.reason == .tooManyUnsent(3))
        slow.wrote()
        #expect(!slow.queued(), "once abandoned, always abandoned")
    }

    @Test("limits out of range are named")
    func limitProblems() {
        var limits = WorkerServer.Limits()
        #expect(limits.problem == nil)
        limits.headerTimeout = .zero
        #expect(limits.problem?.contains("header timeout") == true)
        limits = WorkerServer.Limits()
        limits.sendBufferBytes = 10
        #expect(limits.problem?.contains("send buffer") == true)
    }
}
