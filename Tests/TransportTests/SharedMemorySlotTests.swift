import Foundation
import Testing
@testable import Transport

/// A test server's "experts": the sum for token t is Σ_s w[t,s] · (id[t,s] + x[t,h]).
func expectedSums(ids: [UInt16], weights: [Float], states: [Float], tokens: Int, slots: Int, hidden: Int) -> [Float] {
    var out = [Float](repeating: 0, count: tokens * hidden)
    for t in 0..<tokens {
        for s in 0..<slots where ids[t * slots + s] != RequestHeader.emptySlot {
            for h in 0..<hidden { out[t * hidden + h] += weights[t * slots + s] * (Float(ids[t * slots + s]) + states[t * hidden + h]) }
        }
    }
    return out
}

/// What the test servers answer to a request (f32 states): its response header and `expectedSums`.
func testAnswer(_ view: RequestView) -> (ResponseHeader, [Float]) {
    let h = view.header
    var ids: [UInt16] = [], weights: [Float] = []
    for t in 0..<h.tokens {
        for s in 0..<h.slotsPerToken {
            ids.append(view.expert(token: t, slot: s) ?? RequestHeader.emptySlot)
            weights.append(view.weight(token: t, slot: s))
        }
    }
    let states = (0..<(h.tokens * h.hidden)).map { view.states.loadUnaligned(fromByteOffset: 4 * $0, as: Float.self) }
    let sums = expectedSums(ids: ids, weights: weights, states: states, tokens: h.tokens, slots: h.slotsPerToken, hidden: h.hidden)
    return (ResponseHeader(sequence: h.sequence, tokens: h.tokens, hidden: h.hidden), sums)
}

/// Serves every request in `server` until `stop` is set: decode in place, compute, answer in place.
func serve(_ server: SlotServer, until stop: ManagedAtomicFlag) -> Int {
    var served = 0
    var sums = [Float](repeating: 0, count: 4096)
    while !stop.isSet {
        guard let (slot, sequence, bytes) = server.waitForRequest(timeout: .milliseconds(20)) else { continue }
        guard case .request(let view) = try? Frame.decode(bytes) else { continue }
        let (h, result) = testAnswer(view)
        for i in result.indices { sums[i] = result[i] }
        guard server.isCurrent(slot: slot, sequence: sequence) else { continue }
        _ = try? server.respond(slot: slot, sequence: sequence) { buffer in
            sums.withUnsafeBufferPointer {
                FrameEncoder.encodeResponse(h, sums: UnsafeBufferPointer(rebasing: $0[0..<(h.tokens * h.hidden)]), into: buffer)
            }
        }
        served += 1
    }
    return served
}

/// A stop flag shared with the serving thread.
final class ManagedAtomicFlag: @unchecked Sendable {
    private let lock = NSLock()
    private var value = false
    var isSet: Bool { lock.lock(); defer { lock.unlock() }; return value }
    func set() { lock.lock(); value = true; lock.unlock() }
}

func regionPath() -> String { "/dev/shm/eaas-test-\(UUID().uuidString)" }

/// A server region with `slots` slots of 64 bytes, and a client on slot `slot` through its own mapping.
func withSlots(_ slots: Int, client slot: Int, _ body: (SlotServer, ClientSlot) throws -> Void) throws {
    let path = regionPath()
    let server = try SlotServer(path: path, layout: SlotLayout(slots: slots, requestCapacity: 64, responseCapacity: 64))
    defer { server.close() }
    let region = try SharedRegion.open(path: path)
    defer { region.close() }
    try body(server, try ClientSlot(region: region, slot: slot, epoch: 0))
}

@Suite("Shared-memory slots")
struct SharedMemorySlotTests {
    @Test("The layout keeps every flag and data area on its own cache lines, in bounds, without overlap")
    func layoutArithmetic() {
        let layout = SlotLayout(slots: 3, requestCapacity: 100, responseCapacity: 65)
        var areas: [Range<Int>] = [0..<64]
        for s in 0..<3 {
            for start in [layout.requestFlag(s), layout.requestData(s), layout.responseFlag(s), layout.responseData(s)] { #expect(start % 64 == 0) }
            areas += [layout.requestFlag(s)..<(layout.requestFlag(s) + 16), layout.requestData(s)..<(layout.requestData(s) + 100),
                      layout.responseFlag(s)..<(layout.responseFlag(s) + 16), layout.responseData(s)..<(layout.responseData(s) + 65)]
        }
        for (i, a) in areas.enumerated() {
            #expect(a.upperBound <= layout.totalSize)
            for b in areas[(i + 1)...] { #expect(!a.overlaps(b), "\(a) overlaps \(b)") }
        }
    }

    @Test("Clients on their own mappings get every answer right, exactly once, while one thread serves them all")
    func manyClientsRoundTrip() async throws {
        let path = regionPath()
        let layout = SlotLayout(slots: 4, requestCapacity: 4096, responseCapacity: 4096)
        let server = try SlotServer(path: path, layout: layout)
        let stop = ManagedAtomicFlag()
        let finished = DispatchSemaphore(value: 0)
        let serving = Thread {
            _ = serve(server, until: stop)
            finished.signal()
        }
        serving.start()
        // Stop the serving thread and wait for it before the region is unmapped under it.
        defer {
            stop.set()
            finished.wait()
            server.close()
        }
        try await withThrowingTaskGroup(of: Int.self) { group in
            for slot in 0..<4 {
                group.addTask {
                    let region = try SharedRegion.open(path: path)
                    defer { region.close() }
                    let client = try ClientSlot(region: region, slot: slot, epoch: 0)
                    var answered = 0
                    for sequence in UInt64(1)...200 {
                        let tokens = 1 + Int(sequence % 5), hidden = 8, slots = 2
                        let ids = (0..<(tokens * slots)).map { $0 % 3 == 2 && $0 % slots == 1 ? RequestHeader.emptySlot : UInt16(($0 + slot) % 7) }
                        let weights = ids.enumerated().map { $0.element == RequestHeader.emptySlot ? Float(0) : Float($0.offset + 1) / 8 }
                        let states = (0..<(tokens * hidden)).map { Float($0 % 11) - Float(slot) }
                        let header = RequestHeader(sequence: sequence, layer: 1, dtype: .f32, slotsPerToken: slots, tokens: tokens, hidden: hidden)
                        try client.beginRequest(sequence: sequence)
                        let length = ids.withUnsafeBufferPointer { i in weights.withUnsafeBufferPointer { w in states.withUnsafeBytes { s in
                            FrameEncoder.encodeRequest(header, ids: i, weights: w, states: s, into: client.requestBuffer) } } }
                        try client.publishRequest(sequence: sequence, length: length)
                        let bytes = try client.waitResponse(sequence: sequence, timeout: .seconds(10))
                        guard case .response(let response) = try Frame.decode(bytes) else { throw TransportError.timedOut(sequence: sequence, after: .zero) }
                        let expected = expectedSums(ids: ids, weights: weights, states: states, tokens: tokens, slots: slots, hidden: hidden)
                        #expect(response.header.sequence == sequence)
                        #expect((0..<expected.count).map(response.sum) == expected)
                        answered += 1
                    }
                    return answered
                }
            }
            var total = 0
            for try await count in group { total += count }
            #expect(total == 800)
        }
    }

    @Test("A resend of a taken sequence and a late older sequence are ignored; the next sequence is taken")
    func duplicatesDropped() throws {
        try withSlots(2, client: 1) { server, client in
            #expect(server.nextRequest() == nil)
            for (sequence, taken) in [(UInt64(5), true), (5, false), (4, false), (6, true), (6, false)] {
                try client.beginRequest(sequence: sequence)
                client.requestBuffer[0] = UInt8(sequence)
                try client.publishRequest(sequence: sequence, length: 1)
                let next = server.nextRequest()
                #expect((next != nil) == taken, "sequence \(sequence)")
                if let next { #expect(next.slot == 1 && next.sequence == sequence && next.bytes.first == UInt8(sequence)) }
            }
        }
    }

    @Test("A request the client has moved past is no longer current, so its answer is dropped")
    func supersededRequest() throws {
        try withSlots(1, client: 0) { server, client in
            try client.beginRequest(sequence: 1)
            try client.publishRequest(sequence: 1, length: 8)
            let taken = try #require(server.nextRequest())
            #expect(server.isCurrent(slot: 0, sequence: taken.sequence))
            try client.beginRequest(sequence: 2)  // the client gave up on 1 and is writing 2 over it
            #expect(!server.isCurrent(slot: 0, sequence: 1))
            #expect(server.nextRequest() == nil, "2 is not published yet")
            // A response to an older sequence never satisfies a newer wait.
            try server.respond(slot: 0, sequence: 1) { _ in 0 }
            #expect(client.pollResponse(sequence: 2) == nil)
            #expect(client.pollResponse(sequence: 1) != nil)
        }
    }

    @Test("A reset slot starts a new epoch: the departed client's late writes and old answers are ignored")
    func resetSlot() throws {
        try withSlots(1, client: 0) { server, client in
            for sequence in UInt64(1)...5 {
                try client.beginRequest(sequence: sequence)
                try client.publishRequest(sequence: sequence, length: 0)
                _ = server.nextRequest()
            }
            try server.respond(slot: 0, sequence: 5) { _ in 0 }
            let epoch = server.reset(slot: 0)
            #expect(epoch == 1)
            #expect(client.pollResponse(sequence: 5) == nil, "the old answer is gone")
            // The departed client, still writing: a high sequence in the old epoch.
            try client.beginRequest(sequence: 900)
            try client.publishRequest(sequence: 900, length: 0)
            #expect(server.nextRequest() == nil, "a write of the old epoch is not a request")
            let newcomer = ClientSlot(slot: 0, epoch: epoch, layout: client.layout, base: client.side.base, peer: nil, owner: client.owner)
            try newcomer.beginRequest(sequence: 1)
            try newcomer.publishRequest(sequence: 1, length: 0)
            #expect(server.nextRequest()?.sequence == 1, "the new client's first request is taken")
            try server.respond(slot: 0, sequence: 1) { _ in 0 }
            #expect(newcomer.pollResponse(sequence: 1) != nil)
            #expect(client.pollResponse(sequence: 1) == nil, "the old client never sees the new epoch's answers")
        }
    }

    @Test("Waiting for an answer that never comes times out")
    func timeout() throws {
        try withSlots(1, client: 0) { server, client in
            let start = ContinuousClock.now
            #expect(throws: TransportError.timedOut(sequence: 3, after: .milliseconds(50))) { try client.waitResponse(sequence: 3, timeout: .milliseconds(50)) }
            #expect(ContinuousClock.now - start >= .milliseconds(50))
        }
    }

    @Test("Regions that are not slot regions, missing slots, and taken paths are refused by name")
    func badRegions() throws {
        let path = regionPath()
        let server = try SlotServer(path: path, layout: SlotLayout(slots: 2, requestCapacity: 64, responseCapacity: 64))
        defer { server.close() }
        #expect { try SlotServer(path: path, layout: SlotLayout(slots: 1, requestCapacity: 8, responseCapacity: 8)) } throws: {
            "\($0)".contains("create \(path)") && "\($0)".contains("exists")
        }
        let region = try SharedRegion.open(path: path)
        defer { region.close() }
        #expect { try ClientSlot(region: region, slot: 2, epoch: 0) } throws: { "\($0)".contains("has no slot 2 (it has 2)") }
        let garbage = regionPath()
        try Data(repeating: 7, count: 4096).write(to: URL(fileURLWithPath: garbage))
        defer { unlink(garbage) }
        let other = try SharedRegion.open(path: garbage)
        defer { other.close() }
        #expect { try ClientSlot(region: other, slot: 0, epoch: 0) } throws: { "\($0)".contains("not an EaaS slot region") }
        #expect { try SharedRegion.open(path: regionPath()) } throws: { "\($0)".contains("No such file") }
    }

    @Test("Closing the server removes its region file")
    func closeRemovesFile() throws {
        let path = regionPath()
        let server = try SlotServer(path: path, layout: SlotLayout(slots: 1, requestCapacity: 8, responseCapacity: 8))
        #expect(FileManager.default.fileExists(atPath: path))
        server.close()
        #expect(!FileManager.default.fileExists(atPath: path))
    }
}

@Suite("Polling back-off")
struct BackoffTests {
    @Test("a sleep ends as soon as the wake descriptor is readable (a GOAWAY, a hang-up), and says so once; without it the sleep runs out")
    func wakeDescriptor() throws {
        var ends: [Int32] = [0, 0]
        try #require(pipe(&ends) == 0)
        defer { close(ends[0]); close(ends[1]) }
        // Nothing to read: the short first sleep passes and nothing woke it.
        var quiet = Backoff(sleepUntil: .now + .milliseconds(5), wakeOn: ends[0])
        quiet.pause()
        let quietWoke = quiet.takeWake()
        #expect(!quietWoke)
        // Readable before the sleep: a 60 s first sleep returns at once, woken.
        var byte: UInt8 = 1
        #expect(write(ends[1], &byte, 1) == 1)
        let started = ContinuousClock.now
        var woken = Backoff(sleepUntil: .now + .seconds(60), wakeOn: ends[0])
        woken.pause()
        #expect(ContinuousClock.now - started < .seconds(30), "the sleep ran instead of ending on the readable descriptor")
        let first = woken.takeWake(), second = woken.takeWake()
        #expect(first)
        #expect(!second, "a wake is reported once")
        // The writer's end closing (the server's death) wakes it too.
        #expect(read(ends[0], &byte, 1) == 1)
        close(ends[1])
        ends[1] = -1
        var hungUp = Backoff(sleepUntil: .now + .seconds(60), wakeOn: ends[0])
        hungUp.pause()
        let hungUpWoke = hungUp.takeWake()
        #expect(hungUpWoke)
    }
}
