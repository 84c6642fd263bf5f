import Foundation
import Testing
@testable import Transport

/// Whether this host has an RDMA device; tests that need one are skipped (and say so) without.
let hasRDMADevice = (try? RDMADevices.names()) != nil

@Suite("Verbs backend")
struct VerbsTests {
    let endpoint = VerbsEndpoint(lid: 7, gid: Array(0..<16), qpn: 0x12_3456, psn: 0xab_cdef, mtu: 5, rkey: 0xdead_beef,
                                 address: 0x7f00_0000_1000, length: 1 << 20, requestCapacity: 4096, responseCapacity: 8192)

    @Test("An endpoint survives its encoding, and every truncation of it is refused by field")
    func endpointRoundTrip() throws {
        let bytes = endpoint.encoded()
        #expect(bytes.count == VerbsEndpoint.encodedSize)
        #expect(try VerbsEndpoint.decode(bytes, frame: "handshake") == endpoint)
        for cut in 0..<bytes.count {
            #expect(throws: WireError.self) { try VerbsEndpoint.decode(Array(bytes[0..<cut]), frame: "handshake") }
        }
        #expect(throws: WireError.self) { try VerbsEndpoint.decode(bytes + [0], frame: "handshake") }
    }

    @Test("Endpoints with impossible values are refused, naming the field")
    func endpointValidation() {
        var badMTU = endpoint
        badMTU.mtu = 9
        var wideQPN = endpoint
        wideQPN.qpn = 1 << 24
        var noMemory = endpoint
        noMemory.address = 0
        for (bad, field) in [(badMTU, "verbs.mtu"), (wideQPN, "verbs.qpn"), (noMemory, "verbs.length")] {
            #expect { try VerbsEndpoint.decode(bad.encoded(), frame: "handshake") } throws: { "\($0)".contains("'\(field)'") }
        }
    }

    @Test("Random bytes never crash the endpoint decoder")
    func endpointFuzz() {
        var generator = SystemRandomNumberGenerator()
        for _ in 0..<2000 {
            let bytes = (0..<Int.random(in: 0...80, using: &generator)).map { _ in UInt8.random(in: 0...255, using: &generator) }
            _ = try? VerbsEndpoint.decode(bytes, frame: "handshake")
        }
    }

    @Test("Without an RDMA device, a server asked to offer verbs does not start and says why", .enabled(if: !hasRDMADevice))
    func serverWithoutDevice() {
        var configuration = DataPlaneServer.Configuration(poolToken: Array("t".utf8), serverID: 1)
        configuration.offerVerbs = true
        #expect {
            try DataPlaneServer(computer: SyntheticExperts(experts: [HostedExpert(layer: 0, expert: 0)], hidden: 4, dtype: .f32), configuration: configuration)
        } throws: { "\($0)".contains("RDMA verbs transport unavailable") }
    }

    @Test("Without an RDMA device, a dispatcher asked for verbs fails its step with the reason", .enabled(if: !hasRDMADevice))
    func dispatcherWithoutDevice() throws {
        let server = try startServer(token: "t")
        defer { server.stop() }
        var configuration = Dispatcher.Configuration(poolToken: Array("t".utf8), clientID: 1)
        configuration.backend = .verbs
        let dispatcher = Dispatcher(membership: StaticMembership(servers: [
            ServerInfo(id: "a", address: "127.0.0.1:\(server.port)", experts: [HostedExpert(layer: 0, expert: 0)]),
        ]), configuration: configuration)
        defer { dispatcher.close() }
        let states = [Float](repeating: 1, count: 4)
        #expect {
            try states.withUnsafeBytes { try dispatcher.step(layer: 0, tokens: 1, topK: 1, ids: [0], weights: [1], states: $0, hidden: 4, dtype: .f32) }
        } throws: { "\($0)".contains("RDMA verbs transport unavailable") && "\($0)".contains("no RDMA device") }
    }

    @Test("With an RDMA device, steps over verbs queue pairs come back right (loopback on one device)", .enabled(if: hasRDMADevice, "needs an RDMA device; this host has none"))
    func verbsSteps() throws {
        var configuration = DataPlaneServer.Configuration(poolToken: Array("t".utf8), serverID: 1)
        configuration.offerVerbs = true
        configuration.maxBatchTokens = 64
        let experts = (0..<4).map { HostedExpert(layer: 0, expert: UInt16($0)) }
        let server = try DataPlaneServer(computer: SyntheticExperts(experts: experts, hidden: 8, dtype: .f32), configuration: configuration)
        server.start()
        defer { server.stop() }
        var client = Dispatcher.Configuration(poolToken: Array("t".utf8), clientID: 1)
        client.backend = .verbs
        client.verbsSlotTokens = 64
        let dispatcher = Dispatcher(membership: StaticMembership(servers: [ServerInfo(id: "a", address: "127.0.0.1:\(server.port)", experts: experts)]),
                                    configuration: client)
        defer { dispatcher.close() }
        for step in 0..<50 {
            let tokens = 1 + step % 7
            var ids: [Int32] = []
            for t in 0..<tokens { ids += [Int32((t + step) % 4), Int32((t + step + 1) % 4)] }
            let weights = (0..<(2 * tokens)).map { Float($0 % 3 + 1) / 4 }
            let states = (0..<(tokens * 8)).map { Float(($0 + step) % 9) }
            let sums = try states.withUnsafeBytes { try dispatcher.step(layer: 0, tokens: tokens, topK: 2, ids: ids, weights: weights, states: $0, hidden: 8, dtype: .f32) }
            let expected = expectedSums(ids: ids.map { UInt16($0) }, weights: weights, states: states, tokens: tokens, slots: 2, hidden: 8)
            #expect(zip(sums, expected).allSatisfy { abs($0 - $1) < 1e-4 }, "step \(step)")
        }
        #expect(dispatcher.backend(of: "a") == .verbs)
    }
}
