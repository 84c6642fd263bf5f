import Foundation
import Hummingbird
import Transport

/// What the pod says about itself over HTTP; `ready` flips as the pod starts and drains.
public final class PodStatus: @unchecked Sendable {
    private let lock = NSLock()
    private var isReady = false
    public init() {}
    public var ready: Bool {
        get { lock.lock(); defer { lock.unlock() }; return isReady }
        set { lock.lock(); isReady = newValue; lock.unlock() }
    }
}

/// The body of `/v1/shard`.
public struct ShardDescription: Codable, Sendable, Equatable {
    public struct Expert: Codable, Sendable, Equatable {
        public var layer: Int
        public var expert: Int
    }
    public var shard: String
    public var model: String
    public var experts: [Expert]
    public var dtype: String
    public var hiddenSize: Int
    public var weightBytes: Int
    public var transports: [String]
    /// The checkpoint's `ModelDigest` in hex.
    public var modelDigest: String

    enum CodingKeys: String, CodingKey {
        case shard, model, experts, dtype, transports
        case modelDigest = "model_digest"
        case hiddenSize = "hidden_size"
        case weightBytes = "weight_bytes"
    }
}

/// The pod's HTTP routes on the metrics port: `/metrics`, `/healthz`, `/readyz`, `/v1/shard`.
///
/// Every route is read-only: this port is what Prometheus and the controller scrape, reachable
/// from any pod of the cluster, so nothing here changes the pod's state. Draining goes through
/// the local `DrainSocket` instead.
public enum PodHTTP {
    public static func router(metrics: PodMetrics, status: PodStatus, shard: ShardDescription) -> Router<BasicRequestContext> {
        let router = Router()
        router.get("metrics") { _, _ -> Response in
            var headers = HTTPFields()
            headers[.contentType] = "text/plain; version=0.0.4; charset=utf-8"
            return Response(status: .ok, headers: headers, body: ResponseBody(byteBuffer: ByteBuffer(string: metrics.text())))
        }
        router.get("healthz") { _, _ in "ok\n" }
        router.get("readyz") { _, _ -> Response in
            let ready = status.ready
            return Response(status: ready ? .ok : .serviceUnavailable, body: ResponseBody(byteBuffer: ByteBuffer(string: ready ? "ready\n" : "not ready\n")))
        }
        let body = (try? JSONEncoder().encode(shard)) ?? Data("{}".utf8)
        router.get("v1/shard") { _, _ -> Response in
            var headers = HTTPFields()
            headers[.contentType] = "application/json"
            return Response(status: .ok, headers: headers, body: ResponseBody(byteBuffer: ByteBuffer(bytes: body)))
        }
        return router
    }
}
