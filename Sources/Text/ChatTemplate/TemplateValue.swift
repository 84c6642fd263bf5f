import JSON

/// A value while a template renders, with Python's semantics where Jinja borrows them (truthiness,
/// `str()`, equality, `+`): chat templates are written against Jinja2 in Python.
indirect enum TemplateValue {
    case undefined(String)
    case none
    case bool(Bool)
    case integer(Int)
    case number(Double)
    case string(String)
    case list([TemplateValue])
    /// Insertion-ordered, as Python dicts are.
    case dict([(String, TemplateValue)])
    case namespace(TemplateNamespace)
    case loop(TemplateLoop)
    case function(TemplateFunction)

    init(json: JSONValue) {
        switch json {
        case .null: self = .none
        case .bool(let b): self = .bool(b)
        case .int(let i): self = .integer(i)
        case .double(let d): self = .number(d)
        case .string(let s): self = .string(s)
        case .array(let a): self = .list(a.map(TemplateValue.init(json:)))
        case .object(let o): self = .dict(o.keys.sorted().map { ($0, TemplateValue(json: o[$0]!)) })
        }
    }

    var isUndefined: Bool { if case .undefined = self { true } else { false } }

    var truthy: Bool {
        switch self {
        case .undefined, .none: return false
        case .bool(let b): return b
        case .integer(let i): return i != 0
        case .number(let d): return d != 0
        case .string(let s): return !s.isEmpty
        case .list(let l): return !l.isEmpty
        case .dict(let d): return !d.isEmpty
        case .namespace, .loop, .function: return true
        }
    }

    var typeName: String {
        switch self {
        case .undefined: return "undefined"
        case .none: return "NoneType"
        case .bool: return "bool"
        case .integer: return "int"
        case .number: return "float"
        case .string: return "str"
        case .list: return "list"
        case .dict: return "dict"
        case .namespace: return "Namespace"
        case .loop: return "LoopContext"
        case .function: return "function"
        }
    }

    /// Python's `str()`: what `{{ value }}` prints.
    var rendered: String {
        switch self {
        case .undefined: return ""
        case .string(let s): return s
        default: return repr
        }
    }

    /// Python's `repr()`, which lists and dicts print their items with.
    var repr: String {
        switch self {
        case .undefined: return ""
        case .none: return "None"
        case .bool(let b): return b ? "True" : "False"
        case .integer(let i): return String(i)
        case .number(let d): return TemplateValue.pythonFloat(d)
        case .string(let s): return TemplateValue.pythonRepr(s)
        case .list(let l): return "[" + l.map(\.repr).joined(separator: ", ") + "]"
        case .dict(let d): return "{" + d.map { TemplateValue.pythonRepr($0.0) + ": " + $0.1.repr }.joined(separator: ", ") + "}"
        case .namespace: return "<Namespace>"
        case .loop: return "<LoopContext>"
        case .function(let f): return "<function \(f.name)>"
        }
    }

    static func pythonFloat(_ d: Double) -> String {
        if d.isNaN { return "nan" }
        if d.isInfinite { return d < 0 ? "-inf" : "inf" }
        if d == d.rounded(), abs(d) < 1e16 { return String(format: "%.1f", d) }
        return "\(d)"
    }

    static func pythonRepr(_ s: String) -> String {
        let quote: Character = s.contains("'") && !s.contains("\"") ? "\"" : "'"
        var out = String(quote)
        for u in s.unicodeScalars {
            switch u {
            case "\\": out += "\\\\"
            case "\n": out += "\\n"
            case "\r": out += "\\r"
            case "\t": out += "\\t"
            default:
                if Character(u) == quote { out += "\\" + String(quote) } else if u.value < 0x20 || u.value == 0x7f {
                    out += "\\x" + (u.value < 16 ? "0" : "") + String(u.value, radix: 16)
                } else {
                    out.unicodeScalars.append(u)
                }
            }
        }
        out.append(quote)
        return out
    }

    /// Python's `==` (1 == 1.0 == True; no other cross-type equality).
    static func equal(_ a: TemplateValue, _ b: TemplateValue) -> Bool {
        switch (a, b) {
        case (.undefined, .undefined), (.none, .none): return true
        case (.string(let x), .string(let y)): return Array(x.unicodeScalars) == Array(y.unicodeScalars)
        case (.list(let x), .list(let y)): return x.count == y.count && zip(x, y).allSatisfy { equal($0, $1) }
        case (.dict(let x), .dict(let y)):
            return x.count == y.count && x.allSatisfy { pair in y.contains { $0.0 == pair.0 && equal($0.1, pair.1) } }
        default:
            if let x = a.numeric, let y = b.numeric { return x == y }
            return false
        }
    }

    /// The number a bool, int or float stands for.
    var numeric: Double? {
        switch self {
        case .bool(let b): return b ? 1 : 0
        case .integer(let i): return Double(i)
        case .number(let d): return d
        default: return nil
        }
    }

    /// A dict's item, or a namespace's attribute.
    func member(_ key: String) -> TemplateValue? {
        switch self {
        case .dict(let d): return d.first { $0.0 == key }?.1
        case .namespace(let n): return n.values[key]
        default: return nil
        }
    }

    /// JSON as transformers' `tojson` writes it: `json.dumps(x, ensure_ascii=False)`, with
    /// `indent` giving newlines and that many spaces per level.
    func json(indent: Int?, sortKeys: Bool, level: Int = 0) throws(TemplateError) -> String {
        switch self {
        case .undefined: throw TemplateError("tojson of an undefined value")
        case .none: return "null"
        case .bool(let b): return b ? "true" : "false"
        case .integer(let i): return String(i)
        case .number(let d):
            if d.isNaN { return "NaN" }
            if d.isInfinite { return d < 0 ? "-Infinity" : "Infinity" }
            return TemplateValue.pythonFloat(d)
        case .string(let s): return TemplateValue.jsonString(s)
        case .list(let l):
            if l.isEmpty { return "[]" }
            let items = try l.map { v throws(TemplateError) in try v.json(indent: indent, sortKeys: sortKeys, level: level + 1) }
            return wrap("[", items, "]", indent: indent, level: level)
        case .dict(let d):
            if d.isEmpty { return "{}" }
            let pairs = sortKeys ? d.sorted { $0.0 < $1.0 } : d
            let items = try pairs.map { p throws(TemplateError) in
                TemplateValue.jsonString(p.0) + ": " + (try p.1.json(indent: indent, sortKeys: sortKeys, level: level + 1))
            }
            return wrap("{", items, "}", indent: indent, level: level)
        case .namespace, .loop, .function: throw TemplateError("tojson of a \(typeName)")
        }
    }

    private func wrap(_ open: String, _ items: [String], _ close: String, indent: Int?, level: Int) -> String {
        guard let indent else { return open + items.joined(separator: ", ") + close }
        let inner = "\n" + String(repeating: " ", count: indent * (level + 1))
        let outer = "\n" + String(repeating: " ", count: indent * level)
        return open + inner + items.joined(separator: "," + inner) + outer + close
    }

    /// Python's `json.dumps` of a string with `ensure_ascii=False`, byte for byte: not
    /// `JSONValue.quoted`, which also escapes DEL, C1 and U+2028/2029 (for YAML) and writes
    /// `\b`/`\f` as `\u0008`/`\u000C`, where transformers' `tojson` does neither.
    static func jsonString(_ s: String) -> String {
        var out = "\""
        for u in s.unicodeScalars {
            switch u {
            case "\"": out += "\\\""
            case "\\": out += "\\\\"
            case "\n": out += "\\n"
            case "\r": out += "\\r"
            case "\t": out += "\\t"
            case "\u{08}": out += "\\b"
            case "\u{0C}": out += "\\f"
            default:
                if u.value < 0x20 {
                    let hex = String(u.value, radix: 16)
                    out += "\\u" + String(repeating: "0", count: 4 - hex.count) + hex
                } else {
                    out.unicodeScalars.append(u)
                }
            }
        }
        return out + "\""
    }
}

/// `namespace(…)`: the one mutable object templates have, so a loop can carry state out.
final class TemplateNamespace {
    var values: [String: TemplateValue]
    init(_ values: [String: TemplateValue]) { self.values = values }
}

/// The `loop` variable inside a for loop.
struct TemplateLoop {
    let index0: Int
    let length: Int
    let previous: TemplateValue?
    let next: TemplateValue?

    func attribute(_ name: String) -> TemplateValue? {
        switch name {
        case "index": return .integer(index0 + 1)
        case "index0": return .integer(index0)
        case "revindex": return .integer(length - index0)
        case "revindex0": return .integer(length - index0 - 1)
        case "first": return .bool(index0 == 0)
        case "last": return .bool(index0 == length - 1)
        case "length": return .integer(length)
        case "previtem": return previous ?? .undefined("loop.previtem")
        case "nextitem": return next ?? .undefined("loop.nextitem")
        default: return nil
        }
    }
}

/// A callable value: a macro, a bound string or dict method, or a global such as `raise_exception`.
struct TemplateFunction {
    let name: String
    let call: ([TemplateValue], [(String, TemplateValue)]) throws(TemplateError) -> TemplateValue
}
