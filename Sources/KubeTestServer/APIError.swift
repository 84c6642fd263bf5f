import JSON

/// An error the test server answers with, written as a `metav1.Status` object exactly as the real
/// API server writes it (clients switch on `reason` and `code`).
struct APIError: Error, Sendable {
    var code: Int
    var reason: String
    var message: String
    var details: JSONValue? = nil
    var retryAfterSeconds: Int? = nil

    var status: JSONValue {
        var status: JSONValue = [
            "kind": "Status", "apiVersion": "v1", "metadata": [:], "status": "Failure",
            "message": .string(message), "reason": .string(reason), "code": .int(code),
        ]
        var details = details
        if let retryAfterSeconds { details = (details ?? [:]); details?["retryAfterSeconds"] = .int(retryAfterSeconds) }
        if let details { status["details"] = details }
        return status
    }

    static func badRequest(_ message: String) -> APIError { APIError(code: 400, reason: "BadRequest", message: message) }
    static func notFound(_ resource: String, _ name: String, group: String = "") -> APIError {
        let qualified = group.isEmpty ? resource : "\(resource).\(group)"
        return APIError(code: 404, reason: "NotFound", message: "\(qualified) \"\(name)\" not found",
                        details: ["name": .string(name), "group": .string(group), "kind": .string(resource)])
    }
    static func pathNotFound() -> APIError { APIError(code: 404, reason: "NotFound", message: "the server could not find the requested resource") }
    static func alreadyExists(_ resource: String, _ name: String, group: String) -> APIError {
        let qualified = group.isEmpty ? resource : "\(resource).\(group)"
        return APIError(code: 409, reason: "AlreadyExists", message: "\(qualified) \"\(name)\" already exists",
                        details: ["name": .string(name), "group": .string(group), "kind": .string(resource)])
    }
    static func conflict(_ resource: String, _ name: String, group: String, _ detail: String = "the object has been modified; please apply your changes to the latest version and try again") -> APIError {
        let qualified = group.isEmpty ? resource : "\(resource).\(group)"
        return APIError(code: 409, reason: "Conflict", message: "Operation cannot be fulfilled on \(qualified) \"\(name)\": \(detail)",
                        details: ["name": .string(name), "group": .string(group), "kind": .string(resource)])
    }
    /// 422 with one cause per bad field, as the API's validation reports them.
    static func invalid(kind: String, name: String, group: String, causes: [(field: String, message: String)]) -> APIError {
        let summary = causes.map { "\($0.field): \($0.message)" }.joined(separator: ", ")
        return APIError(code: 422, reason: "Invalid", message: "\(kind) \"\(name)\" is invalid: \(summary)",
                        details: ["name": .string(name), "group": .string(group), "kind": .string(kind),
                                  "causes": .array(causes.map { ["reason": "FieldValueInvalid", "message": .string($0.message), "field": .string($0.field)] })])
    }
    static func gone(_ message: String) -> APIError { APIError(code: 410, reason: "Expired", message: message) }
    static func methodNotAllowed(_ message: String) -> APIError { APIError(code: 405, reason: "MethodNotAllowed", message: message) }
    static func unsupportedMediaType(_ message: String) -> APIError { APIError(code: 415, reason: "UnsupportedMediaType", message: message) }
}
