import Foundation
import MoE
import Transport
@testable import ExpertPod

/// A small random Qwen3-MoE checkpoint (8 experts, top-2, hidden 64, f32, two MoE layers) written
/// once per test process.
enum PodFixture {
    static let hidden = 64
    static let experts = 8
    static let directory: String = {
        let path = FileManager.default.temporaryDirectory.appendingPathComponent("eaas-pod-fixture-\(getpid())").path
        var spec = RandomModelSpec(architecture: .qwen3Moe, layers: 2, experts: experts, topK: 2, hidden: hidden)
        spec.dtype = .f32
        spec.expertFFN = 32
        spec.seed = 7
        spec.weightStd = 0.2
        _ = try! RandomModel.write(spec, to: path)
        return path
    }()

    /// A started data-plane server around a shard of the fixture.
    static func server(shard: String, dtype: WireDType = .f32, maxBatchTokens: Int = 64, maxWait: Duration = .zero,
                       observer: (@Sendable (ServingReport) -> Void)? = nil) throws -> (DataPlaneServer, ShardComputer) {
        let computer = ShardComputer(shard: try ExpertShard(directory: directory, spec: try ShardSpec(parsing: shard)), dtype: dtype)
        var configuration = DataPlaneServer.Configuration(poolToken: Array("pod".utf8), serverID: 1)
        configuration.maxBatchTokens = maxBatchTokens
        configuration.maxWait = maxWait
        configuration.slots = 4
        let server = try DataPlaneServer(computer: computer, configuration: configuration, observer: observer)
        server.start()
        return (server, computer)
    }

    /// Seeded hidden states `[tokens, hidden]`.
    static func states(tokens: Int, seed: UInt64) -> [Float] {
        var state = seed &* 0x9e37_79b9_7f4a_7c15 | 1
        return (0..<(tokens * hidden)).map { _ in
            state = state &* 6_364_136_223_846_793_005 &+ 1_442_695_040_888_963_407
            return Float(Double(state >> 11) / Double(1 << 53)) * 2 - 1
        }
    }
}

/// A tcp connection to a server, handshaken.
func connectPod(_ server: DataPlaneServer) throws -> FrameConnection {
    let connection = try FrameConnection.connect(host: "127.0.0.1", port: server.port)
    try connection.write(FrameEncoder.encode(Handshake(clientID: 1, maxBatchTokens: 64, poolToken: Array("pod".utf8))))
    guard let bytes = try connection.readFrame(), case .handshakeReply = try Frame.decode(bytes) else {
        throw TransportError.unreachable(address: "pod", reason: "no handshake reply")
    }
    return connection
}

/// A request frame: `ids`/`weights` `[tokens, slots]`, f32 states.
func podRequest(sequence: UInt64, layer: UInt16, ids: [UInt16], weights: [Float], states: [Float], slots: Int, hidden: Int = PodFixture.hidden) -> [UInt8] {
    let tokens = ids.count / slots
    let header = RequestHeader(sequence: sequence, layer: layer, dtype: .f32, slotsPerToken: slots, tokens: tokens, hidden: hidden)
    var frame = [UInt8](repeating: 0, count: header.frameSize)
    _ = ids.withUnsafeBufferPointer { i in weights.withUnsafeBufferPointer { w in states.withUnsafeBytes { s in
        frame.withUnsafeMutableBytes { FrameEncoder.encodeRequest(header, ids: i, weights: w, states: s, into: $0) } } } }
    return frame
}
