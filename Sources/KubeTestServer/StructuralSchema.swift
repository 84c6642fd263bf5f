import Foundation
import JSON

/// What the API server does to a custom resource with its CRD's structural schema before storing
/// it: unknown fields pruned (unless `x-kubernetes-preserve-unknown-fields`), defaults filled in,
/// then validation (type, required, enum, bounds, lengths, item counts, pattern, and the simple
/// CEL rules of `x-kubernetes-validations`), every failure a cause of one 422 Invalid.
enum StructuralSchema {
    typealias Cause = (field: String, message: String)

    /// Prunes, defaults and validates `object` (the whole resource) against `schema`
    /// (`openAPIV3Schema`); returns the object to store, or the causes.
    static func apply(_ schema: JSONValue, to object: JSONValue) -> (JSONValue, [Cause]) {
        var object = object
        var causes: [Cause] = []
        guard case .object(var members) = object else { return (object, [("", "must be an object")]) }
        // apiVersion, kind and metadata are the server's; everything else follows the schema.
        for (key, member) in members where member == .null && schema[path: ["properties", key, "nullable"]]?.bool != true { members[key] = nil }
        for key in members.keys where !["apiVersion", "kind", "metadata"].contains(key) {
            guard let property = schema[path: ["properties", key]] else {
                if schema["x-kubernetes-preserve-unknown-fields"]?.bool != true { members[key] = nil }
                continue
            }
            members[key] = process(members[key]!, property, path: key, causes: &causes)
        }
        for (key, property) in schema["properties"]?.object ?? [:] where members[key] == nil && !["apiVersion", "kind", "metadata"].contains(key) {
            if let value = property["default"] { members[key] = process(value, property, path: key, causes: &causes) }
        }
        for required in schema["required"]?.array?.compactMap(\.string) ?? [] where members[required] == nil {
            causes.append((required, "Required value"))
        }
        object = .object(members)
        return (object, causes)
    }

    /// One value: pruned and defaulted below, then checked.
    static func process(_ value: JSONValue, _ schema: JSONValue, path: String, causes: inout [Cause]) -> JSONValue {
        var value = value
        let before = causes.count
        check(type: value, schema, path: path, causes: &causes)
        guard causes.count == before else { return value }  // a wrong type says it all
        switch value {
        case .object(var members):
            if let properties = schema["properties"]?.object {
                // A null where the schema does not allow one is dropped before defaulting, as the API server does.
                for (key, member) in members where member == .null && properties[key]?["nullable"]?.bool != true { members[key] = nil }
                for key in members.keys {
                    if let property = properties[key] {
                        members[key] = process(members[key]!, property, path: "\(path).\(key)", causes: &causes)
                    } else if schema["x-kubernetes-preserve-unknown-fields"]?.bool != true {
                        members[key] = nil
                    }
                }
                for (key, property) in properties where members[key] == nil {
                    if let fallback = property["default"] { members[key] = process(fallback, property, path: "\(path).\(key)", causes: &causes) }
                }
            } else if let additional = schema["additionalProperties"], case .object = additional {
                for key in members.keys { members[key] = process(members[key]!, additional, path: "\(path).\(key)", causes: &causes) }
            }
            for required in schema["required"]?.array?.compactMap(\.string) ?? [] where members[required] == nil {
                causes.append(("\(path).\(required)", "Required value"))
            }
            value = .object(members)
        case .array(var items):
            if let itemSchema = schema["items"] {
                for index in items.indices { items[index] = process(items[index], itemSchema, path: "\(path)[\(index)]", causes: &causes) }
            }
            value = .array(items)
        default: break
        }
        check(constraints: value, schema, path: path, causes: &causes)
        for rule in schema["x-kubernetes-validations"]?.array ?? [] {
            guard let text = rule["rule"]?.string else { continue }
            // Rules this small evaluator cannot read are not enforced (a real server would be).
            if let holds = try? CELRule.evaluate(text, self: value), !holds {
                causes.append((path, "Invalid value: \"object\": \(rule["message"]?.string ?? "failed rule: \(text)")"))
            }
        }
        return value
    }

    static func check(type value: JSONValue, _ schema: JSONValue, path: String, causes: inout [Cause]) {
        guard let type = schema["type"]?.string else { return }
        let matches: Bool
        switch (type, value) {
        case ("object", .object), ("array", .array), ("string", .string), ("boolean", .bool), ("integer", .int): matches = true
        case ("integer", .double(let number)): matches = number.rounded() == number
        case ("number", .int), ("number", .double): matches = true
        default: matches = false
        }
        if !matches, !(value == .null && schema["nullable"]?.bool == true) {
            causes.append((path, "Invalid value: \"\(kind(of: value))\": \(path) in body must be of type \(type): \"\(kind(of: value))\""))
        }
    }

    static func check(constraints value: JSONValue, _ schema: JSONValue, path: String, causes: inout [Cause]) {
        if let options = schema["enum"]?.array, !options.contains(value) {
            causes.append((path, "Unsupported value: \(value.compact): supported values: \(options.map(\.compact).joined(separator: ", "))"))
        }
        if let number = value.double {
            if let minimum = schema["minimum"]?.double {
                let exclusive = schema["exclusiveMinimum"]?.bool == true
                if exclusive ? number <= minimum : number < minimum {
                    causes.append((path, "Invalid value: \(value.compact): \(path) in body should be greater than \(exclusive ? "" : "or equal to ")\(format(minimum))"))
                }
            }
            if let maximum = schema["maximum"]?.double {
                let exclusive = schema["exclusiveMaximum"]?.bool == true
                if exclusive ? number >= maximum : number > maximum {
                    causes.append((path, "Invalid value: \(value.compact): \(path) in body should be less than \(exclusive ? "" : "or equal to ")\(format(maximum))"))
                }
            }
        }
        if let text = value.string {
            if let minLength = schema["minLength"]?.int, text.count < minLength {
                causes.append((path, "Invalid value: \(value.compact): \(path) in body should be at least \(minLength) chars long"))
            }
            if let maxLength = schema["maxLength"]?.int, text.count > maxLength {
                causes.append((path, "Too long: may not be more than \(maxLength) bytes"))
            }
            if let pattern = schema["pattern"]?.string, let regex = try? NSRegularExpression(pattern: pattern),
               regex.firstMatch(in: text, range: NSRange(text.startIndex..., in: text)) == nil {
                causes.append((path, "Invalid value: \(value.compact): \(path) in body should match '\(pattern)'"))
            }
        }
        if let items = value.array {
            if let minItems = schema["minItems"]?.int, items.count < minItems {
                causes.append((path, "Invalid value: \(items.count): \(path) in body should have at least \(minItems) items"))
            }
            if let maxItems = schema["maxItems"]?.int, items.count > maxItems {
                causes.append((path, "Too many: \(items.count): must have at most \(maxItems) items"))
            }
        }
    }

    static func kind(of value: JSONValue) -> String {
        switch value {
        case .null: "null"
        case .bool: "boolean"
        case .int: "integer"
        case .double: "number"
        case .string: "string"
        case .array: "array"
        case .object: "object"
        }
    }

    static func format(_ number: Double) -> String {
        number.rounded() == number && abs(number) < 1e15 ? String(Int(number)) : String(number)
    }
}
