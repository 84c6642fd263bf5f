import Foundation
import Testing
@testable import Transport

/// A stand-in for an RDMA queue pair: each side has its own memory, and a push copies the named
/// bytes of the local slot into the peer's slot (as an RDMA WRITE would), logging what it did.
final class CopyingPeer: SlotPeer {
    let from: UnsafeMutableRawPointer
    let to: UnsafeMutableRawPointer
    var log: [(offset: Int, count: Int, settle: Bool)] = []
    /// When set, pushes fail as a broken queue pair would.
    var broken = false

    init(from: UnsafeMutableRawPointer, to: UnsafeMutableRawPointer) {
        self.from = from
        self.to = to
    }

    func push(offset: Int, count: Int, settle: Bool) throws {
        if broken { throw TransportError.unreachable(address: "peer", reason: "queue pair in error state") }
        log.append((offset, count, settle))
        (to + offset).copyMemory(from: from + offset, byteCount: count)
    }
}

/// Owns raw zeroed memory for a test.
final class TestMemory {
    let base: UnsafeMutableRawPointer
    init(_ count: Int) {
        base = .allocate(byteCount: count, alignment: 64)
        base.initializeMemory(as: UInt8.self, repeating: 0, count: count)
    }
    deinit { base.deallocate() }
}

@Suite("Slots over separate memories (the verbs model)")
struct SlotPeerTests {
    @Test("Requests and answers cross between two memories only through pushes, payload before flag")
    func roundTripThroughPushes() throws {
        let layout = SlotLayout(slots: 3, requestCapacity: 512, responseCapacity: 512)
        let serverMemory = TestMemory(layout.totalSize), clientMemory = TestMemory(layout.slotStride)
        let slotStart = serverMemory.base + layout.requestFlag(2)
        let toServer = CopyingPeer(from: clientMemory.base, to: slotStart)
        let toClient = CopyingPeer(from: slotStart, to: clientMemory.base)
        let server = SlotServer(layout: layout, base: serverMemory.base)
        let epoch = server.reset(slot: 2, peer: toClient)
        let client = ClientSlot(slot: 2, epoch: epoch, layout: layout, base: clientMemory.base, peer: toServer, owner: clientMemory)

        for sequence in UInt64(1)...3 {
            let tokens = Int(sequence), hidden = 4
            let ids = (0..<tokens).map { UInt16($0 % 3) }, weights = (0..<tokens).map { Float($0 + 1) / 2 }
            let states = (0..<(tokens * hidden)).map { Float($0) }
            let header = RequestHeader(sequence: sequence, layer: 0, dtype: .f32, slotsPerToken: 1, tokens: tokens, hidden: hidden)
            toServer.log.removeAll()
            try client.beginRequest(sequence: sequence)
            let length = ids.withUnsafeBufferPointer { i in weights.withUnsafeBufferPointer { w in states.withUnsafeBytes { s in
                FrameEncoder.encodeRequest(header, ids: i, weights: w, states: s, into: client.requestBuffer) } } }
            #expect(server.nextRequest() == nil, "nothing is published before the flag is pushed")
            try client.publishRequest(sequence: sequence, length: length)
            // The marker, then the payload, then the flag line (flag + length), settled.
            #expect(toServer.log.map(\.offset) == [0, SlotLayout.line, 0])
            #expect(toServer.log.map(\.count) == [8, length, 16])
            #expect(toServer.log.map(\.settle) == [false, false, true])

            let taken = try #require(server.nextRequest())
            #expect(taken.slot == 2 && taken.sequence == sequence)
            guard case .request(let view) = try Frame.decode(taken.bytes) else { Issue.record("not a request"); return }
            let (answer, sums) = testAnswer(view)
            #expect(client.pollResponse(sequence: sequence) == nil)
            try server.respond(slot: 2, sequence: sequence) { buffer in sums.withUnsafeBufferPointer { FrameEncoder.encodeResponse(answer, sums: $0, into: buffer) } }
            let bytes = try #require(client.pollResponse(sequence: sequence))
            guard case .response(let response) = try Frame.decode(bytes) else { Issue.record("not a response"); return }
            #expect((0..<sums.count).map(response.sum) == expectedSums(ids: ids, weights: weights, states: states, tokens: tokens, slots: 1, hidden: hidden))
        }
    }

    @Test("A peer that fails makes publishing throw, and the server never sees a request")
    func brokenPeer() throws {
        let layout = SlotLayout(slots: 1, requestCapacity: 64, responseCapacity: 64)
        let serverMemory = TestMemory(layout.totalSize), clientMemory = TestMemory(layout.slotStride)
        let peer = CopyingPeer(from: clientMemory.base, to: serverMemory.base + layout.requestFlag(0))
        let server = SlotServer(layout: layout, base: serverMemory.base)
        let client = ClientSlot(slot: 0, epoch: 0, layout: layout, base: clientMemory.base, peer: peer, owner: clientMemory)
        try client.beginRequest(sequence: 1)
        peer.broken = true
        #expect(throws: TransportError.self) { try client.publishRequest(sequence: 1, length: 8) }
        #expect(server.nextRequest() == nil)
    }
}
