import JSON

/// A mistake in an `ExpertPool` as written: the JSON path of the field and what is wrong with it.
public struct SpecError: Error, Equatable, Sendable, CustomStringConvertible {
    /// Dotted path of the field (`spec.replicas.min`).
    public var field: String
    public var message: String
    public init(field: String, message: String) {
        self.field = field
        self.message = message
    }
    public var description: String { "\(field): \(message)" }
}

/// A value that can sit in a spec: it describes itself as OpenAPI v3 schema and reads and writes
/// itself as JSON. The CRD's schema, the decoder and the encoder all come from these conformances,
/// so the three cannot drift apart.
public protocol SpecValue: Equatable, Sendable {
    /// The OpenAPI v3 schema of the value (without description or default; fields add those).
    static var openAPISchema: JSONValue { get }
    /// Reads the value; `path` names it in errors.
    init(specJSON: JSONValue, path: String) throws(SpecError)
    /// The value as JSON.
    var specJSON: JSONValue { get }
}

/// A spec object whose fields are declared once, as `fields`: the schema (with each field's
/// description, constraints and default), strict decoding (unknown fields are errors, absent
/// ones keep the default of `init()`) and encoding all follow from that list.
public protocol SpecObject: SpecValue {
    init()
    static var fields: [SpecField<Self>] { get }
    /// Rules for the API server in CEL (`x-kubernetes-validations`); the controller checks the same
    /// rules itself, since not every API server evaluates them.
    static var celRules: [(rule: String, message: String)] { get }
}

extension SpecObject {
    public static var celRules: [(rule: String, message: String)] { [] }

    public static var openAPISchema: JSONValue {
        var properties: [String: JSONValue] = [:]
        var required: [JSONValue] = []
        let defaults = Self()
        for field in fields {
            properties[field.name] = field.schema(defaults)
            if field.required { required.append(.string(field.name)) }
        }
        var schema: [String: JSONValue] = ["type": "object", "properties": .object(properties)]
        if !required.isEmpty { schema["required"] = .array(required) }
        if !celRules.isEmpty {
            schema["x-kubernetes-validations"] = .array(celRules.map { .object(["rule": .string($0.rule), "message": .string($0.message)]) })
        }
        return .object(schema)
    }

    public init(specJSON: JSONValue, path: String) throws(SpecError) {
        guard case .object(let members) = specJSON else { throw SpecError(field: path, message: "must be an object") }
        self.init()
        let fields = Self.fields
        let known = Set(fields.map(\.name))
        if let unknown = members.keys.sorted().first(where: { !known.contains($0) }) {
            throw SpecError(field: Self.join(path, unknown), message: "unknown field (known: \(fields.map(\.name).joined(separator: ", ")))")
        }
        for field in fields {
            let value = members[field.name]
            if value == nil || value == .null {
                if field.required { throw SpecError(field: Self.join(path, field.name), message: "is required") }
                continue
            }
            try field.decode(&self, value!, Self.join(path, field.name))
        }
    }

    public var specJSON: JSONValue {
        var members: [String: JSONValue] = [:]
        for field in Self.fields {
            if let value = field.encode(self) { members[field.name] = value }
        }
        return .object(members)
    }

    static func join(_ path: String, _ name: String) -> String { path.isEmpty ? name : "\(path).\(name)" }
}

/// One field of a `SpecObject`: its JSON name, schema, and how to read and write it.
public struct SpecField<Root> {
    let name: String
    let required: Bool
    let schema: (Root) -> JSONValue
    let decode: (inout Root, JSONValue, String) throws(SpecError) -> Void
    let encode: (Root) -> JSONValue?

    /// A field of type `V`. `constraints` are merged into its schema (`minimum`, `maxLength`, …)
    /// and checked when decoding; the default written to the schema is `V`'s value in `Root()`.
    public static func field<V: SpecValue>(_ name: String, _ keyPath: WritableKeyPath<Root, V>, _ doc: String,
                                           required: Bool = false, constraints: [String: JSONValue] = [:]) -> SpecField<Root> {
        SpecField(
            name: name, required: required,
            schema: { defaults in
                var schema = V.openAPISchema.object ?? [:]
                schema["description"] = .string(doc)
                for (key, value) in constraints { schema[key] = value }
                if !required, let value = SpecDefaults.schemaDefault(defaults[keyPath: keyPath].specJSON) { schema["default"] = value }
                return .object(schema)
            },
            decode: { (root: inout Root, json: JSONValue, path: String) throws(SpecError) in
                let value = try V(specJSON: json, path: path)
                try SpecConstraints.check(value.specJSON, constraints, path: path)
                root[keyPath: keyPath] = value
            },
            encode: { root in root[keyPath: keyPath].specJSON }
        )
    }

    /// An optional field: absent by default, no default in the schema.
    public static func field<V: SpecValue>(_ name: String, _ keyPath: WritableKeyPath<Root, V?>, _ doc: String,
                                           constraints: [String: JSONValue] = [:]) -> SpecField<Root> {
        SpecField(
            name: name, required: false,
            schema: { _ in
                var schema = V.openAPISchema.object ?? [:]
                schema["description"] = .string(doc)
                for (key, value) in constraints { schema[key] = value }
                return .object(schema)
            },
            decode: { (root: inout Root, json: JSONValue, path: String) throws(SpecError) in
                let value = try V(specJSON: json, path: path)
                try SpecConstraints.check(value.specJSON, constraints, path: path)
                root[keyPath: keyPath] = value
            },
            encode: { root in root[keyPath: keyPath]?.specJSON }
        )
    }
}

enum SpecDefaults {
    /// Scalars and non-empty lists are written as schema defaults; objects as `{}`, so that the API
    /// server fills in their fields' own defaults when the object is left out; empty lists and maps not at all.
    static func schemaDefault(_ value: JSONValue) -> JSONValue? {
        switch value {
        case .object: return .object([:])
        case .array(let items): return items.isEmpty ? nil : value
        case .null: return nil
        default: return value
        }
    }
}

/// The subset of OpenAPI constraints fields use, checked on decode as the API server would.
enum SpecConstraints {
    static func check(_ value: JSONValue, _ constraints: [String: JSONValue], path: String) throws(SpecError) {
        if let minimum = constraints["minimum"]?.double, let number = value.double, number < minimum {
            throw SpecError(field: path, message: "must be at least \(format(minimum)), got \(format(number))")
        }
        if let maximum = constraints["maximum"]?.double, let number = value.double, number > maximum {
            throw SpecError(field: path, message: "must be at most \(format(maximum)), got \(format(number))")
        }
        if let exclusive = constraints["exclusiveMinimum"]?.bool, exclusive, let minimum = constraints["minimum"]?.double,
           let number = value.double, number <= minimum {
            throw SpecError(field: path, message: "must be greater than \(format(minimum))")
        }
        if let minLength = constraints["minLength"]?.int, let text = value.string, text.count < minLength {
            throw SpecError(field: path, message: minLength == 1 ? "must not be empty" : "must be at least \(minLength) characters")
        }
        if let maxLength = constraints["maxLength"]?.int, let text = value.string, text.count > maxLength {
            throw SpecError(field: path, message: "must be at most \(maxLength) characters")
        }
        if let minItems = constraints["minItems"]?.int, let items = value.array, items.count < minItems {
            throw SpecError(field: path, message: "must have at least \(minItems) item\(minItems == 1 ? "" : "s")")
        }
        if let maxItems = constraints["maxItems"]?.int, let items = value.array, items.count > maxItems {
            throw SpecError(field: path, message: "must have at most \(maxItems) items")
        }
        if let pattern = constraints["pattern"]?.string, let text = value.string, pattern == SpecPatterns.dnsLabel,
           !SpecPatterns.isDNSLabel(text) {
            throw SpecError(field: path, message: "'\(text)' is not a DNS label (lower-case letters, digits and '-', starting and ending alphanumeric, at most 63)")
        }
    }

    static func format(_ number: Double) -> String {
        number.rounded() == number && abs(number) < 1e15 ? String(Int(number)) : String(number)
    }
}

/// Patterns the spec uses, each with a Swift check so that decoding does not need a regex engine.
public enum SpecPatterns {
    /// RFC 1123 label, as Kubernetes names of Services and Deployments need.
    public static let dnsLabel = "^[a-z0-9]([-a-z0-9]*[a-z0-9])?$"

    public static func isDNSLabel(_ text: String) -> Bool {
        let bytes = Array(text.utf8)
        guard (1...63).contains(bytes.count) else { return false }
        func alnum(_ b: UInt8) -> Bool { (b >= 0x61 && b <= 0x7A) || (b >= 0x30 && b <= 0x39) }
        return alnum(bytes.first!) && alnum(bytes.last!) && bytes.allSatisfy { alnum($0) || $0 == 0x2D }
    }
}

// MARK: - Conformances of the value types fields use

extension Int: SpecValue {
    public static var openAPISchema: JSONValue { ["type": "integer"] }
    public init(specJSON: JSONValue, path: String) throws(SpecError) {
        guard case .int(let value) = specJSON else {
            if let value = specJSON.int, case .double = specJSON { self = value; return }
            throw SpecError(field: path, message: "must be an integer, got \(specJSON.compact)")
        }
        self = value
    }
    public var specJSON: JSONValue { .int(self) }
}

extension Double: SpecValue {
    public static var openAPISchema: JSONValue { ["type": "number"] }
    public init(specJSON: JSONValue, path: String) throws(SpecError) {
        switch specJSON {
        case .int(let value): self = Double(value)
        case .double(let value) where value.isFinite: self = value
        default: throw SpecError(field: path, message: "must be a number, got \(specJSON.compact)")
        }
    }
    public var specJSON: JSONValue { rounded() == self && abs(self) < 1e15 ? .int(Int(self)) : .double(self) }
}

extension String: SpecValue {
    public static var openAPISchema: JSONValue { ["type": "string"] }
    public init(specJSON: JSONValue, path: String) throws(SpecError) {
        guard case .string(let value) = specJSON else { throw SpecError(field: path, message: "must be a string, got \(specJSON.compact)") }
        self = value
    }
    public var specJSON: JSONValue { .string(self) }
}

extension Bool: SpecValue {
    public static var openAPISchema: JSONValue { ["type": "boolean"] }
    public init(specJSON: JSONValue, path: String) throws(SpecError) {
        guard case .bool(let value) = specJSON else { throw SpecError(field: path, message: "must be true or false, got \(specJSON.compact)") }
        self = value
    }
    public var specJSON: JSONValue { .bool(self) }
}

extension Array: SpecValue where Element: SpecValue {
    public static var openAPISchema: JSONValue { ["type": "array", "items": Element.openAPISchema] }
    public init(specJSON: JSONValue, path: String) throws(SpecError) {
        guard case .array(let items) = specJSON else { throw SpecError(field: path, message: "must be a list, got \(specJSON.compact)") }
        var values: [Element] = []
        for (index, item) in items.enumerated() { values.append(try Element(specJSON: item, path: "\(path)[\(index)]")) }
        self = values
    }
    public var specJSON: JSONValue { .array(map(\.specJSON)) }
}

extension Dictionary: SpecValue where Key == String, Value == String {
    public static var openAPISchema: JSONValue { ["type": "object", "additionalProperties": ["type": "string"]] }
    public init(specJSON: JSONValue, path: String) throws(SpecError) {
        guard case .object(let members) = specJSON else { throw SpecError(field: path, message: "must be a map of strings, got \(specJSON.compact)") }
        var values: [String: String] = [:]
        for (key, value) in members {
            guard case .string(let text) = value else { throw SpecError(field: "\(path).\(key)", message: "must be a string, got \(value.compact)") }
            values[key] = text
        }
        self = values
    }
    public var specJSON: JSONValue { .object(mapValues { .string($0) }) }
}

/// A Kubernetes object embedded as is (a Volume, ResourceRequirements, Affinity…): the API server
/// validates it when it lands in a pod template; here it is kept whole.
public struct EmbeddedObject: SpecValue {
    public var json: JSONValue
    public init(_ json: JSONValue = .object([:])) { self.json = json }
    public static var openAPISchema: JSONValue { ["type": "object", "x-kubernetes-preserve-unknown-fields": true] }
    public init(specJSON: JSONValue, path: String) throws(SpecError) {
        guard case .object = specJSON else { throw SpecError(field: path, message: "must be an object, got \(specJSON.compact)") }
        json = specJSON
    }
    public var specJSON: JSONValue { json }
}

/// A string enum in a spec: its cases become the schema's `enum`.
public protocol SpecEnum: SpecValue, RawRepresentable<String>, CaseIterable {}

extension SpecEnum {
    public static var openAPISchema: JSONValue { ["type": "string", "enum": .array(allCases.map { .string($0.rawValue) })] }
    public init(specJSON: JSONValue, path: String) throws(SpecError) {
        guard case .string(let text) = specJSON, let value = Self(rawValue: text) else {
            throw SpecError(field: path, message: "must be one of \(Self.allCases.map(\.rawValue).joined(separator: ", ")), got \(specJSON.compact)")
        }
        self = value
    }
    public var specJSON: JSONValue { .string(rawValue) }
}
