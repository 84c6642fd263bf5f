import CCurl
import Foundation

/// Plain HTTP GETs on the process's one curl loop, for things that are not the API server (the
/// controller reads expert pods' `/metrics` with it). No credentials, no retries.
public enum PlainHTTP {
    /// A whole response to a GET.
    public struct Response: Sendable {
        public var status: Int
        public var body: [UInt8]
        public var text: String { String(decoding: body, as: UTF8.self) }
    }

    /// GETs `url`, failing with `KubeClientError` when the connection fails or `timeout` passes;
    /// bodies beyond `maxBytes` abort the transfer. Cancelling the task stops the transfer.
    public static func get(_ url: String, timeout: Duration, maxBytes: Int = 8 << 20) async throws -> Response {
        let transfer = try CurlTransfer()
        let milliseconds = Int(timeout.components.seconds * 1000 + timeout.components.attoseconds / 1_000_000_000_000_000)
        transfer.set(CURLOPT_URL, url)
        transfer.set(CURLOPT_HTTPGET, 1)
        transfer.set(CURLOPT_CONNECTTIMEOUT_MS, max(1, milliseconds))
        transfer.set(CURLOPT_TIMEOUT_MS, max(1, milliseconds))
        transfer.set(CURLOPT_USERAGENT, "eaas/1 (libcurl)")
        let body = BodyBuffer()
        transfer.onBody = { chunk in
            body.bytes.append(contentsOf: chunk)
            return body.bytes.count <= maxBytes
        }
        return try await withTaskCancellationHandler {
            try await withCheckedThrowingContinuation { (continuation: CheckedContinuation<Response, Error>) in
                transfer.onFinish = { result in
                    switch result {
                    case .success(let status): continuation.resume(returning: Response(status: status, body: body.bytes))
                    case .failure(let error): continuation.resume(throwing: error)
                    }
                }
                CurlLoop.shared.start(transfer)
            }
        } onCancel: {
            CurlLoop.shared.cancel(transfer)
        }
    }
}

/// The body as it arrives on the curl thread.
private final class BodyBuffer: @unchecked Sendable {
    var bytes: [UInt8] = []
}
