import Foundation
import Hummingbird
import JSON
import Kube
import NIOCore

/// Turns HTTP requests into API calls on `APIState`: URL routing as the API server's (core group
/// under /api, others under /apis), query options, body decoding, and Status errors.
struct APIResponder: Sendable {
    let state: APIState
    let faults: FaultInjector
    let audit: AuditLog
    let configuration: TestAPIServer.Configuration
    let port = PortBox()

    func respond(to request: Request, context: BasicRequestContext) async throws -> Response {
        var request = request
        let method = request.method.rawValue
        let path = request.uri.path
        let delay = faults.currentDelay
        if delay > .zero { try await Task.sleep(for: delay) }
        if let token = configuration.requiredBearerToken, request.headers[.authorization] != "Bearer \(token)" {
            return Self.error(APIError(code: 401, reason: "Unauthorized", message: "Unauthorized"))
        }
        if let failure = faults.failure(method: method, path: path) {
            return Self.error(APIError(code: failure.status, reason: Self.reason(for: failure.status), message: "injected failure (\(failure.status))",
                                       retryAfterSeconds: failure.retryAfterSeconds))
        }
        let query = Self.parseQuery(request.uri.query ?? "")
        let bodyBuffer = try await request.collectBody(upTo: 64 << 20)
        let body = Array(bodyBuffer.readableBytesView)
        do {
            return try await route(method: method, path: path, query: query, body: body,
                                   contentType: request.headers[.contentType], userAgent: request.headers[.userAgent],
                                   accept: request.headers[.accept])
        } catch let error as APIError {
            return Self.error(error)
        }
    }

    static func reason(for status: Int) -> String {
        switch status {
        case 401: "Unauthorized"
        case 403: "Forbidden"
        case 404: "NotFound"
        case 409: "Conflict"
        case 429: "TooManyRequests"
        case 500: "InternalError"
        case 503: "ServiceUnavailable"
        case 504: "Timeout"
        default: ""
        }
    }

    /// Query parameters as Go's `url.ParseQuery` reads them (`+` is a space).
    static func parseQuery(_ query: String) -> [String: String] {
        var result: [String: String] = [:]
        for pair in query.split(separator: "&") {
            let parts = pair.split(separator: "=", maxSplits: 1, omittingEmptySubsequences: false)
            func decode(_ text: Substring) -> String {
                let spaced = text.replacingOccurrences(of: "+", with: " ")
                return spaced.removingPercentEncoding ?? spaced
            }
            let key = decode(parts[0])
            if result[key] == nil { result[key] = parts.count > 1 ? decode(parts[1]) : "" }
        }
        return result
    }

    // MARK: Routing

    private func route(method: String, path: String, query: [String: String], body: [UInt8], contentType: String?,
                       userAgent: String?, accept: String?) async throws -> Response {
        let segments = path.split(separator: "/").map { String($0).removingPercentEncoding ?? String($0) }
        switch segments.first {
        case nil: return Self.json(["paths": .array(["/api", "/api/v1", "/apis", "/version", "/healthz"])])
        case "version": return Self.json(Discovery.version)
        case "healthz", "readyz", "livez": return Response(status: .ok, body: ResponseBody(byteBuffer: ByteBuffer(string: "ok")))
        case "openapi" where segments.count >= 2 && segments[1] == "v3":
            if segments.count == 2 { return Self.json(OpenAPIDocuments.root(state.allServed)) }
            let group = segments[2] == "api" ? "" : (segments.count > 4 ? segments[3] : "")
            let version = segments.last ?? ""
            guard let document = OpenAPIDocuments.document(group: group, version: version, state.allServed) else { throw APIError.pathNotFound() }
            return Self.json(document)
        case "testing" where method == "POST": return try testingAction(segments.dropFirst().first ?? "")
        case "api":
            if segments.count == 1 { return Self.json(Discovery.coreVersions(port: port.port)) }
            guard segments[1] == "v1" else { throw APIError.pathNotFound() }
            if segments.count == 2 { return Self.json(Discovery.resourceList(group: "", version: "v1", state.allServed)) }
            return try await resourceRequest(group: "", version: "v1", rest: Array(segments.dropFirst(2)), method: method,
                                             query: query, body: body, contentType: contentType, userAgent: userAgent, accept: accept)
        case "apis":
            if segments.count == 1 { return Self.json(Discovery.groupList(state.allServed)) }
            let group = segments[1]
            if segments.count == 2 {
                guard let document = Discovery.group(group, state.allServed) else { throw APIError.pathNotFound() }
                return Self.json(document)
            }
            let version = segments[2]
            if segments.count == 3 {
                guard state.allServed.contains(where: { $0.type.group == group && $0.type.version == version }) else { throw APIError.pathNotFound() }
                return Self.json(Discovery.resourceList(group: group, version: version, state.allServed))
            }
            return try await resourceRequest(group: group, version: version, rest: Array(segments.dropFirst(3)), method: method,
                                             query: query, body: body, contentType: contentType, userAgent: userAgent, accept: accept)
        default:
            throw APIError.pathNotFound()
        }
    }

    private func testingAction(_ action: String) throws(APIError) -> Response {
        switch action {
        case "compact": state.compact()
        case "drop-watches": state.dropWatches()
        case "expire-watches": state.expireWatches()
        default: throw .pathNotFound()
        }
        return Self.json(["kind": "Status", "apiVersion": "v1", "status": "Success", "metadata": [:],
                          "details": ["revision": .int(state.currentRevision)]])
    }

    /// `[namespaces/{ns}/]{plural}[/{name}[/{subresource}]]` under a group version.
    private func resourceRequest(group: String, version: String, rest: [String], method: String, query: [String: String],
                                 body: [UInt8], contentType: String?, userAgent: String?, accept: String? = nil) async throws -> Response {
        // kubectl asks for a Table to print; custom resources with printer columns get one.
        let wantsTable = accept?.contains("as=Table") == true
        var rest = rest
        var namespace: String?
        // `namespaces/x` alone (or with a subresource) is the Namespace object; with a plural after it, a scope.
        if group.isEmpty, rest.count >= 3, rest[0] == "namespaces", state.resource(group: "", version: "v1", plural: rest[2]) != nil {
            namespace = rest[1]
            rest.removeFirst(2)
        } else if !group.isEmpty, rest.count >= 3, rest[0] == "namespaces" {
            namespace = rest[1]
            rest.removeFirst(2)
        }
        guard let plural = rest.first, let resource = state.resource(group: group, version: version, plural: plural) else {
            throw APIError.pathNotFound()
        }
        if namespace != nil && !resource.type.namespaced { throw APIError.pathNotFound() }
        let name = rest.count > 1 ? rest[1] : nil
        var subresource: Subresource?
        if rest.count > 2 {
            guard rest.count == 3, let known = Subresource(rawValue: rest[2]) else { throw APIError.pathNotFound() }
            subresource = known
            if known == .status && !resource.hasStatus || known == .scale && resource.scale == nil { throw APIError.pathNotFound() }
        }
        if resource.type.namespaced, name != nil, namespace == nil { throw APIError.pathNotFound() }

        let agent = userAgent.map { String($0.split(separator: "/").first ?? "") } ?? ""
        func record(_ verb: String) {
            audit.append(.init(verb: verb, group: group, resource: plural + (subresource.map { "/\($0.rawValue)" } ?? ""),
                               namespace: namespace, userAgent: agent))
        }
        switch (method, name) {
        case ("GET", nil): record(query["watch"] == "true" || query["watch"] == "1" ? "watch" : "list")
        case ("GET", _): record("get")
        case ("POST", _): record("create")
        case ("PUT", _): record("update")
        case ("PATCH", _): record("patch")
        case ("DELETE", _): record("delete")
        default: break
        }
        let manager = query["fieldManager"].flatMap { $0.isEmpty ? nil : $0 }
            ?? userAgent.map { String($0.split(separator: "/").first ?? "unknown").prefix(128).description } ?? "unknown"
        let write = WriteRequest(manager: manager, dryRun: query["dryRun"] == "All", force: query["force"] == "true")
        if let name, method == "PUT" || method == "PATCH", let race = faults.takeRace(path: resource.type.path(namespace: namespace, name: name)) {
            var current = try state.get(resource, namespace: namespace, name: name)
            race.change(&current)
            _ = try state.update(resource, namespace: namespace, name: name, body: current, subresource: nil,
                                 request: WriteRequest(manager: "racing-writer"))
        }

        switch (method, name) {
        case ("GET", nil):
            let labels = try LabelSelector(parsing: query["labelSelector"] ?? "")
            let fields = try FieldSelector(parsing: query["fieldSelector"] ?? "", kind: resource.type.kind)
            if query["watch"] == "true" || query["watch"] == "1" {
                while faults.newWatchesPaused { try await Task.sleep(for: .milliseconds(1)) }
                return watchResponse(resource, namespace: namespace, labels: labels, fields: fields, query: query)
            }
            let list = try state.list(resource, namespace: namespace, labels: labels, fields: fields,
                                      limit: query["limit"].flatMap { Int($0) }, continueToken: query["continue"])
            if wantsTable, resource.isCustom, subresource == nil {
                return Self.json(PrinterTable.table(resource, objects: list["items"]?.array ?? [], metadata: list["metadata"] ?? [:]))
            }
            return Self.json(list)
        case ("GET", let name?):
            let object = try state.get(resource, namespace: namespace, name: name)
            if wantsTable, resource.isCustom, subresource == nil {
                return Self.json(PrinterTable.table(resource, objects: [object], metadata: [:]))
            }
            return Self.json(subresource == .scale ? state.scaleView(resource, object) : object)
        case ("POST", nil):
            return Self.json(try state.create(resource, namespace: namespace, body: try Self.decode(body, contentType: contentType),
                                              manager: manager, dryRun: write.dryRun), status: .created)
        case ("PUT", let name?):
            return Self.json(try state.update(resource, namespace: namespace, name: name, body: try Self.decode(body, contentType: contentType),
                                              subresource: subresource, request: write))
        case ("PATCH", let name?):
            guard let type = PatchType(contentType: contentType ?? "") else {
                throw APIError.unsupportedMediaType("the body of the request was in an unknown format - accepted media types include: application/json-patch+json, application/merge-patch+json, application/apply-patch+yaml, application/strategic-merge-patch+json")
            }
            let patchBody = type == .apply ? try Self.decodeYAML(body) : try Self.decode(body, contentType: "application/json")
            let existed = (try? state.get(resource, namespace: namespace, name: name)) != nil
            // Server-side apply that makes a new object needs `create` as well as `patch`.
            if !existed, type == .apply { record("create") }
            let result = try state.patch(resource, namespace: namespace, name: name, type: type, body: patchBody,
                                         subresource: subresource, request: write)
            return Self.json(result, status: existed ? .ok : .created)
        case ("DELETE", let name?):
            var options = DeleteRequest(dryRun: query["dryRun"] == "All")
            let optionsBody = body.isEmpty ? JSONValue.object([:]) : try Self.decode(body, contentType: contentType)
            let policy = optionsBody["propagationPolicy"]?.string ?? query["propagationPolicy"]
            if let policy {
                guard let known = DeleteRequest.Propagation(rawValue: policy) else {
                    throw APIError.badRequest("propagationPolicy: Unsupported value: \"\(policy)\": supported values: \"Foreground\", \"Background\", \"Orphan\"")
                }
                options.propagation = known
            } else if optionsBody["orphanDependents"]?.bool == true || query["orphanDependents"] == "true" {
                options.propagation = .orphan
            }
            options.preconditionUID = optionsBody[path: ["preconditions", "uid"]]?.string
            options.preconditionResourceVersion = optionsBody[path: ["preconditions", "resourceVersion"]]?.string
            if optionsBody["dryRun"]?.array?.contains("All") == true { options.dryRun = true }
            return Self.json(try state.delete(resource, namespace: namespace, name: name, request: options))
        default:
            throw APIError.methodNotAllowed("the server does not allow this method on the requested resource")
        }
    }

    // MARK: Watch

    private func watchResponse(_ resource: ServedResource, namespace: String?, labels: LabelSelector, fields: FieldSelector,
                               query: [String: String]) -> Response {
        let (id, stream) = state.watch(resource, namespace: namespace, labels: labels, fields: fields, resourceVersion: query["resourceVersion"])
        let bookmarks = query["allowWatchBookmarks"] == "true"
        let timeout = query["timeoutSeconds"].flatMap { Int($0) }.map { Duration.seconds($0) } ?? configuration.defaultWatchTimeout
        let interval = configuration.bookmarkInterval
        let state = self.state
        let body = ResponseBody { writer in
            // Every interval: a bookmark if asked for, else a bare newline (JSON streams allow blank
            // lines) — either way a client that went away is noticed by the failed write.
            let ticker = Task {
                while !Task.isCancelled {
                    try await Task.sleep(for: interval)
                    if bookmarks { state.bookmark(resource, watcher: id) } else { state.heartbeat(resource, watcher: id) }
                }
            }
            let deadline = Task {
                try await Task.sleep(for: timeout)
                state.endWatch(resource, watcher: id)
            }
            defer {
                ticker.cancel()
                deadline.cancel()
                state.endWatch(resource, watcher: id)
            }
            for await message in stream {
                let line: JSONValue
                switch message {
                case .event(let type, let object): line = ["type": .string(type), "object": object]
                case .error(let status): line = ["type": "ERROR", "object": status]
                case .heartbeat:
                    try await writer.write(ByteBuffer(string: "\n"))
                    continue
                }
                try await writer.write(ByteBuffer(string: line.compact + "\n"))
                if case .error = message { break }
            }
            try await writer.finish(nil)
        }
        return Response(status: .ok, headers: [.contentType: "application/json", .cacheControl: "no-cache, private"], body: body)
    }

    // MARK: Encoding

    static func decode(_ body: [UInt8], contentType: String?) throws(APIError) -> JSONValue {
        if let contentType, contentType.lowercased().contains("yaml") { return try decodeYAML(body) }
        do { return try JSONValue.parse(String(decoding: body, as: UTF8.self)) } catch {
            throw .badRequest("the body of the request could not be decoded as JSON: \(error)")
        }
    }

    static func decodeYAML(_ body: [UInt8]) throws(APIError) -> JSONValue {
        do { return try YAML.parse(String(decoding: body, as: UTF8.self)) } catch {
            throw .badRequest("the body of the request could not be decoded as YAML: \(error)")
        }
    }

    static func json(_ value: JSONValue, status: HTTPResponse.Status = .ok) -> Response {
        Response(status: status, headers: [.contentType: "application/json"], body: ResponseBody(byteBuffer: ByteBuffer(string: value.compact)))
    }

    static func error(_ error: APIError) -> Response {
        var headers: HTTPFields = [.contentType: "application/json"]
        if let retryAfter = error.retryAfterSeconds { headers[.retryAfter] = String(retryAfter) }
        return Response(status: HTTPResponse.Status(code: error.code), headers: headers,
                        body: ResponseBody(byteBuffer: ByteBuffer(string: error.status.compact)))
    }
}
