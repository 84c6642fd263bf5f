import JSON

/// A parsed label selector (`app=web,tier!=cache,env in (a,b),!canary`), matched as the API server does.
struct LabelSelector: Sendable {
    enum Requirement: Sendable {
        case equals(String, String)
        case notEquals(String, String)
        case `in`(String, Set<String>)
        case notIn(String, Set<String>)
        case exists(String)
        case doesNotExist(String)
    }
    var requirements: [Requirement] = []

    init(parsing text: String) throws(APIError) {
        for term in Self.splitTerms(text) {
            let term = term.trimmingCharacters(in: .whitespaces)
            if term.isEmpty { continue }
            requirements.append(try Self.requirement(term))
        }
    }

    /// Splits on commas outside parentheses.
    private static func splitTerms(_ text: String) -> [String] {
        var terms: [String] = [], current = "", depth = 0
        for character in text {
            if character == "(" { depth += 1 } else if character == ")" { depth -= 1 }
            if character == ",", depth == 0 { terms.append(current); current = "" } else { current.append(character) }
        }
        terms.append(current)
        return terms
    }

    private static func requirement(_ term: String) throws(APIError) -> Requirement {
        let bad = APIError.badRequest("unable to parse requirement: \"\(term)\" is not a valid label selector term")
        if term.hasPrefix("!") {
            let key = String(term.dropFirst()).trimmingCharacters(in: .whitespaces)
            guard isLabelKey(key) else { throw bad }
            return .doesNotExist(key)
        }
        for (op, make) in [("!=", Requirement.notEquals), ("==", Requirement.equals), ("=", Requirement.equals)] as [(String, (String, String) -> Requirement)] {
            if let range = term.range(of: op) {
                let key = term[..<range.lowerBound].trimmingCharacters(in: .whitespaces)
                let value = term[range.upperBound...].trimmingCharacters(in: .whitespaces)
                guard isLabelKey(key), isLabelValue(value) else { throw bad }
                return make(key, value)
            }
        }
        for (word, negated) in [(" notin ", true), (" in ", false)] {
            if let range = term.range(of: word) {
                let key = term[..<range.lowerBound].trimmingCharacters(in: .whitespaces)
                let rest = term[range.upperBound...].trimmingCharacters(in: .whitespaces)
                guard isLabelKey(key), rest.hasPrefix("("), rest.hasSuffix(")") else { throw bad }
                let values = Set(rest.dropFirst().dropLast().split(separator: ",").map { $0.trimmingCharacters(in: .whitespaces) })
                guard values.allSatisfy(isLabelValue) else { throw bad }
                return negated ? .notIn(key, values) : .in(key, values)
            }
        }
        guard isLabelKey(term) else { throw bad }
        return .exists(term)
    }

    static func isLabelKey(_ key: String) -> Bool {
        guard !key.isEmpty else { return false }
        let parts = key.split(separator: "/", omittingEmptySubsequences: false)
        guard parts.count <= 2, let name = parts.last, !name.isEmpty, name.count <= 63 else { return false }
        return name.allSatisfy { $0.isLetter || $0.isNumber || "-_.".contains($0) } && (parts.count == 1 || !parts[0].isEmpty)
    }

    static func isLabelValue(_ value: String) -> Bool {
        value.count <= 63 && value.allSatisfy { $0.isLetter || $0.isNumber || "-_.".contains($0) }
    }

    func matches(_ labels: [String: String]) -> Bool {
        requirements.allSatisfy { requirement in
            switch requirement {
            case .equals(let key, let value): labels[key] == value
            case .notEquals(let key, let value): labels[key] != value
            case .in(let key, let values): labels[key].map(values.contains) ?? false
            case .notIn(let key, let values): !(labels[key].map(values.contains) ?? false)
            case .exists(let key): labels[key] != nil
            case .doesNotExist(let key): labels[key] == nil
            }
        }
    }
}

/// A parsed field selector (`metadata.name=web-0,status.phase!=Failed`). Like the API server, only
/// the fields each kind indexes may be used; others are a 400.
struct FieldSelector: Sendable {
    struct Requirement: Sendable {
        var path: [String]
        var value: String
        var negated: Bool
    }
    var requirements: [Requirement] = []

    /// Fields beyond `metadata.name` and `metadata.namespace` that a kind supports.
    static let extraFields: [String: Set<String>] = [
        "Pod": ["spec.nodeName", "spec.restartPolicy", "spec.schedulerName", "spec.serviceAccountName", "status.phase",
                "status.podIP", "status.nominatedNodeName"],
        "Event": ["involvedObject.kind", "involvedObject.namespace", "involvedObject.name", "involvedObject.uid",
                  "involvedObject.apiVersion", "involvedObject.resourceVersion", "involvedObject.fieldPath", "reason",
                  "reportingComponent", "source", "type"],
        "Secret": ["type"],
        "Namespace": ["status.phase"],
    ]

    init(parsing text: String, kind: String) throws(APIError) {
        for term in text.split(separator: ",") {
            let term = term.trimmingCharacters(in: .whitespaces)
            if term.isEmpty { continue }
            var field = "", value = "", negated = false
            if let range = term.range(of: "!=") {
                field = String(term[..<range.lowerBound]); value = String(term[range.upperBound...]); negated = true
            } else if let range = term.range(of: "==") ?? term.range(of: "=") {
                field = String(term[..<range.lowerBound]); value = String(term[range.upperBound...])
            } else {
                throw .badRequest("invalid field selector term \"\(term)\": expected field=value or field!=value")
            }
            field = field.trimmingCharacters(in: .whitespaces)
            guard field == "metadata.name" || field == "metadata.namespace" || Self.extraFields[kind]?.contains(field) == true else {
                throw .badRequest("field label not supported: \(field)")
            }
            requirements.append(Requirement(path: field.split(separator: ".").map(String.init),
                                            value: value.trimmingCharacters(in: .whitespaces), negated: negated))
        }
    }

    func matches(_ object: JSONValue) -> Bool {
        requirements.allSatisfy { requirement in
            let actual: String
            switch object[path: requirement.path] {
            case .string(let text)?: actual = text
            case .int(let number)?: actual = String(number)
            case .bool(let flag)?: actual = String(flag)
            default: actual = ""
            }
            return (actual == requirement.value) != requirement.negated
        }
    }
}
