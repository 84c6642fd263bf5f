import JSON

// JSON merge patch (RFC 7386) and JSON patch (RFC 6902), the two patch types that Kubernetes takes
// for every kind. Strategic merge patch, which needs to know the kind, is in StrategicMergePatch.swift.

/// Why a patch could not be applied. The server answers these as 422 Invalid (or 400 BadRequest for
/// a patch document of the wrong shape).
public enum PatchError: Error, Sendable, CustomStringConvertible {
    /// The message names the operation or field that was wrong, and why.
    case invalid(String)

    public var description: String {
        switch self {
        case .invalid(let message): message
        }
    }
}

/// Applies a JSON merge patch (RFC 7386): `null` deletes a member, objects merge recursively, and any
/// other value (arrays included) replaces what was there. A patch that is not an object replaces the
/// whole target.
public func applyMergePatch(_ target: JSONValue, _ patch: JSONValue) -> JSONValue {
    guard case .object(let patchMembers) = patch else { return patch }
    var result = target.object ?? [:]
    for (name, value) in patchMembers {
        if value.isNull {
            result[name] = nil
        } else {
            result[name] = applyMergePatch(result[name] ?? .null, value)
        }
    }
    return .object(result)
}

/// Applies a JSON patch (RFC 6902): an array of `add`, `remove`, `replace`, `move`, `copy` and `test`
/// operations whose `path`/`from` are JSON Pointers (RFC 6901). The patch is atomic: if any operation
/// fails, the error says which (counting from 1) and nothing is applied.
public func applyJSONPatch(_ target: JSONValue, _ operations: JSONValue) throws(PatchError) -> JSONValue {
    guard case .array(let list) = operations else {
        throw .invalid("a JSON patch must be an array of operations, not \(jsonTypeName(operations))")
    }
    // `document` is a copy (value semantics), so a failure part-way leaves the caller's target as it was.
    var document = target
    for (index, operation) in list.enumerated() {
        do throws(PatchError) {
            try applyOperation(operation, to: &document)
        } catch {
            throw .invalid("JSON patch operation \(index + 1): \(error.description)")
        }
    }
    return document
}

/// Equality as JSON means it: numbers compare by value (`1` equals `1.0`), objects by members.
/// `JSONValue`'s own `==` keeps `.int(1)` and `.double(1)` apart, which RFC 6902's `test` must not.
func jsonValuesEqual(_ left: JSONValue, _ right: JSONValue) -> Bool {
    switch (left, right) {
    case (.int(let a), .int(let b)): return a == b
    case (.int, .double), (.double, .int), (.double, .double): return left.double == right.double
    case (.array(let a), .array(let b)):
        return a.count == b.count && zip(a, b).allSatisfy { jsonValuesEqual($0, $1) }
    case (.object(let a), .object(let b)):
        guard a.count == b.count else { return false }
        for (key, value) in a {
            guard let other = b[key], jsonValuesEqual(value, other) else { return false }
        }
        return true
    default: return left == right
    }
}

/// "object", "array", "string"… for error messages.
func jsonTypeName(_ value: JSONValue) -> String {
    switch value {
    case .null: "null"
    case .bool: "a boolean"
    case .int, .double: "a number"
    case .string: "a string"
    case .array: "an array"
    case .object: "an object"
    }
}

// MARK: - JSON patch operations

private func applyOperation(_ operation: JSONValue, to document: inout JSONValue) throws(PatchError) {
    guard case .object(let members) = operation else {
        throw .invalid("an operation must be an object, not \(jsonTypeName(operation))")
    }
    guard let op = members["op"]?.string else { throw .invalid("the operation has no \"op\" string") }
    let path = try pointerMember("path", of: members)
    switch op {
    case "add":
        _ = try perform(.add(try valueMember(of: members, op: op)), at: path, in: &document)
    case "remove":
        _ = try perform(.remove, at: path, in: &document)
    case "replace":
        _ = try perform(.replace(try valueMember(of: members, op: op)), at: path, in: &document)
    case "move":
        let from = try pointerMember("from", of: members)
        if from.tokens == path.tokens { return }
        if path.tokens.starts(with: from.tokens) {
            throw .invalid("cannot move \(from) into its own child \(path)")
        }
        let moved = try perform(.remove, at: from, in: &document)
        _ = try perform(.add(moved), at: path, in: &document)
    case "copy":
        let from = try pointerMember("from", of: members)
        guard let copied = value(at: from, in: document) else { throw .invalid("from path \(from) does not exist") }
        _ = try perform(.add(copied), at: path, in: &document)
    case "test":
        let expected = try valueMember(of: members, op: op)
        guard let actual = value(at: path, in: document) else { throw .invalid("test failed: path \(path) does not exist") }
        guard jsonValuesEqual(actual, expected) else {
            throw .invalid("test failed: value at \(path) is \(actual.compact), not \(expected.compact)")
        }
    default:
        throw .invalid("unknown op \"\(op)\" (expected add, remove, replace, move, copy or test)")
    }
}

private func pointerMember(_ name: String, of members: [String: JSONValue]) throws(PatchError) -> JSONPointer {
    guard let text = members[name]?.string else { throw .invalid("the operation has no \"\(name)\" string") }
    return try JSONPointer(text)
}

/// The operation's `value`, which may be `null` but must be present.
private func valueMember(of members: [String: JSONValue], op: String) throws(PatchError) -> JSONValue {
    guard let value = members["value"] else { throw .invalid("\(op) needs a \"value\"") }
    return value
}

/// A JSON Pointer (RFC 6901): `/a/b~1c/0` names a value by the member names and array indexes that
/// lead to it; `~1` stands for `/` and `~0` for `~`. The empty pointer names the whole document.
private struct JSONPointer: CustomStringConvertible {
    let tokens: [String]
    let description: String

    init(_ text: String) throws(PatchError) {
        description = text
        if text.isEmpty { tokens = []; return }
        guard text.hasPrefix("/") else { throw .invalid("path \"\(text)\" is not a JSON pointer (it must start with /)") }
        var tokens: [String] = []
        for raw in text.dropFirst().split(separator: "/", omittingEmptySubsequences: false) {
            tokens.append(try JSONPointer.unescape(raw, in: text))
        }
        self.tokens = tokens
    }

    /// The pointer text of the first `count` tokens, for naming a missing parent.
    func prefix(_ count: Int) -> String {
        var text = ""
        for token in tokens.prefix(count) {
            text += "/"
            for character in token {
                switch character {
                case "~": text += "~0"
                case "/": text += "~1"
                default: text.append(character)
                }
            }
        }
        return text
    }

    private static func unescape(_ raw: Substring, in text: String) throws(PatchError) -> String {
        guard raw.contains("~") else { return String(raw) }
        var out = ""
        var characters = raw.makeIterator()
        while let character = characters.next() {
            guard character == "~" else { out.append(character); continue }
            switch characters.next() {
            case "0": out.append("~")
            case "1": out.append("/")
            default: throw .invalid("path \(text) has a ~ that is not ~0 or ~1")
            }
        }
        return out
    }
}

/// The value a pointer names, or nil when any step of it is missing.
private func value(at pointer: JSONPointer, in document: JSONValue) -> JSONValue? {
    var current = document
    for token in pointer.tokens {
        switch current {
        case .object(let members):
            guard let next = members[token] else { return nil }
            current = next
        case .array(let items):
            guard let index = arrayIndex(token), index < items.count else { return nil }
            current = items[index]
        default:
            return nil
        }
    }
    return current
}

/// RFC 6901 array indexes are `0` or digits without a leading zero.
private func arrayIndex(_ token: String) -> Int? {
    guard !token.isEmpty, token.allSatisfy(\.isASCII), token.allSatisfy(\.isNumber) else { return nil }
    guard token == "0" || !token.hasPrefix("0") else { return nil }
    return Int(token)
}

private enum Edit {
    case add(JSONValue)
    case remove
    case replace(JSONValue)
}

/// Applies `change` at `pointer` and returns the value that was there (`null` for a new member).
private func perform(_ change: Edit, at pointer: JSONPointer, in document: inout JSONValue) throws(PatchError) -> JSONValue {
    guard !pointer.tokens.isEmpty else {
        switch change {
        case .add(let value), .replace(let value):
            defer { document = value }
            return document
        case .remove:
            throw .invalid("cannot remove the whole document")
        }
    }
    return try perform(change, depth: 0, of: pointer, in: &document)
}

/// Walks down to the container that holds the pointer's last token and edits it there.
private func perform(_ change: Edit, depth: Int, of pointer: JSONPointer, in container: inout JSONValue) throws(PatchError) -> JSONValue {
    let token = pointer.tokens[depth]
    let isLast = depth == pointer.tokens.count - 1
    switch container {
    case .object(var members):
        container = .null  // drop the second reference so the members are edited in place
        defer { container = .object(members) }
        if isLast {
            let old = members[token]
            switch change {
            case .add(let value): members[token] = value
            case .remove, .replace:
                guard old != nil else { throw .invalid("path \(pointer) does not exist") }
                if case .replace(let value) = change { members[token] = value } else { members[token] = nil }
            }
            return old ?? .null
        }
        guard var child = members[token] else { throw missingParent(of: pointer, depth: depth) }
        members[token] = nil
        defer { members[token] = child }
        return try perform(change, depth: depth + 1, of: pointer, in: &child)
    case .array(var items):
        container = .null
        defer { container = .array(items) }
        if isLast, case .add(let value) = change {
            if token == "-" { items.append(value); return .null }
            guard let index = arrayIndex(token), index <= items.count else {
                throw .invalid("path \(pointer): index \(token) is out of bounds for an array of \(items.count)")
            }
            items.insert(value, at: index)
            return .null
        }
        guard let index = arrayIndex(token), index < items.count else {
            if isLast { throw .invalid("path \(pointer) does not exist: index \(token) is out of bounds for an array of \(items.count)") }
            throw missingParent(of: pointer, depth: depth)
        }
        if isLast {
            let old = items[index]
            if case .replace(let value) = change { items[index] = value } else { items.remove(at: index) }
            return old
        }
        return try perform(change, depth: depth + 1, of: pointer, in: &items[index])
    default:
        throw .invalid("path \(pointer) does not exist: \(pointer.prefix(depth).isEmpty ? "the document" : pointer.prefix(depth)) is \(jsonTypeName(container)), not an object or array")
    }
}

private func missingParent(of pointer: JSONPointer, depth: Int) -> PatchError {
    .invalid("path \(pointer) does not exist (no \(pointer.prefix(depth + 1)))")
}
