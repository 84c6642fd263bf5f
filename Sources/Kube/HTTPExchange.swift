import CCurl
import Foundation

/// One request to the API server, before authentication and TLS settings are added.
struct HTTPRequest: Sendable {
    var method: String
    var path: String
    var query: [(String, String)] = []
    var body: [UInt8]? = nil
    var contentType: String? = nil
    var accept = "application/json"

    var pathAndQuery: String {
        query.isEmpty ? path
            : path + "?" + query.map { "\($0.0)=\($0.1.addingPercentEncodingForPath())" }.joined(separator: "&")
    }
}

/// A whole response: status, headers (names lower-cased) and body.
struct HTTPResponse: Sendable {
    var status: Int
    var headers: [String: String]
    var body: [UInt8]
}

/// Collects the status line and headers of the final response (a `100 Continue` or redirect
/// starts a new set).
struct ResponseHeaders {
    var status = 0
    var fields: [String: String] = [:]

    mutating func consume(_ line: String) {
        if line.hasPrefix("HTTP/") {
            fields = [:]
            let parts = line.split(separator: " ", maxSplits: 2)
            status = parts.count > 1 ? Int(parts[1]) ?? 0 : 0
        } else if let colon = line.firstIndex(of: ":") {
            let name = line[..<colon].lowercased()
            let value = line[line.index(after: colon)...].trimmingCharacters(in: .whitespaces)
            fields[name] = value
        }
    }
}

extension ClusterConnection {
    /// Sets URL, method, headers, credentials, TLS and timeouts of `transfer` for `request`.
    func configure(_ transfer: CurlTransfer, for request: HTTPRequest, token: String?, userAgent: String,
                   connectTimeout: Duration, totalTimeout: Duration?) {
        if let tlsServerName, let url = URLComponents(string: server), let host = url.host, url.scheme == "https" {
            // The certificate is checked against tls-server-name: put that name in the URL and send
            // the connection to the real host (libcurl has no separate SNI/verify name).
            let port = url.port ?? 443
            var named = url
            named.host = tlsServerName
            transfer.set(CURLOPT_URL, (named.string ?? server) + request.pathAndQuery)
            transfer.setConnectTo("\(tlsServerName):\(port):\(host):\(port)")
        } else {
            transfer.set(CURLOPT_URL, server + request.pathAndQuery)
        }
        transfer.set(CURLOPT_USERAGENT, userAgent)
        transfer.set(CURLOPT_CONNECTTIMEOUT_MS, Int(connectTimeout.components.seconds * 1000 + connectTimeout.components.attoseconds / 1_000_000_000_000_000))
        if let totalTimeout {
            transfer.set(CURLOPT_TIMEOUT_MS, Int(totalTimeout.components.seconds * 1000 + totalTimeout.components.attoseconds / 1_000_000_000_000_000))
        }
        transfer.set(CURLOPT_TCP_KEEPALIVE, 1)
        transfer.set(CURLOPT_TCP_KEEPIDLE, 30)
        transfer.set(CURLOPT_TCP_KEEPINTVL, 10)
        transfer.set(CURLOPT_ACCEPT_ENCODING, "")  // whatever libcurl can decode
        switch request.method {
        case "GET": transfer.set(CURLOPT_HTTPGET, 1)
        case "POST": transfer.set(CURLOPT_POST, 1)
        default: transfer.set(CURLOPT_CUSTOMREQUEST, request.method)
        }
        if let body = request.body { transfer.setBody(body) }
        transfer.addHeader("Accept: \(request.accept)")
        if let contentType = request.contentType { transfer.addHeader("Content-Type: \(contentType)") }
        transfer.addHeader("Expect:")  // no 100-continue round trip before large bodies
        if let token, !token.isEmpty {
            transfer.addHeader("Authorization: Bearer \(token)")
        } else if let username, let password {
            transfer.set(CURLOPT_HTTPAUTH, 1)  // CURLAUTH_BASIC, a macro Swift does not import
            transfer.set(CURLOPT_USERNAME, username)
            transfer.set(CURLOPT_PASSWORD, password)
        }
        if let certificateAuthority { transfer.set(CURLOPT_CAINFO_BLOB, blob: certificateAuthority) }
        if let clientCertificate, let clientKey {
            transfer.set(CURLOPT_SSLCERTTYPE, "PEM")
            transfer.set(CURLOPT_SSLCERT_BLOB, blob: clientCertificate)
            transfer.set(CURLOPT_SSLKEYTYPE, "PEM")
            transfer.set(CURLOPT_SSLKEY_BLOB, blob: clientKey)
        }
        if insecureSkipTLSVerify {
            transfer.set(CURLOPT_SSL_VERIFYPEER, 0)
            transfer.set(CURLOPT_SSL_VERIFYHOST, 0)
        }
    }
}

/// The bearer token of a `tokenFile`, read again once a minute as client-go does, so that rotated
/// projected service-account tokens are picked up.
final class TokenFileCache: @unchecked Sendable {
    private let path: String
    private let lock = NSLock()
    private var token: String?
    private var readAt = ContinuousClock.now

    init(path: String) { self.path = path }

    var current: String? {
        lock.withLock {
            if token == nil || ContinuousClock.now - readAt > .seconds(60) {
                if let text = try? String(contentsOfFile: path, encoding: .utf8) {
                    token = text.trimmingCharacters(in: .whitespacesAndNewlines)
                    readAt = .now
                }
            }
            return token
        }
    }
}
