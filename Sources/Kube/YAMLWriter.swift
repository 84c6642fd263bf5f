import JSON

extension JSONValue {
    /// This value as block-style YAML text, ending in a newline, the way kubectl prints objects:
    /// keys sorted, lists of mappings as `- key: value`, sequences under a key not indented
    /// further, `{}` and `[]` for empty collections. A string is written plain unless it would
    /// read back as something else (`"yes"`, `"123"`, `""`) or holds characters that mean something
    /// to YAML; then it is double-quoted with JSON-style escapes. `YAML.parse(value.yaml)` gives
    /// `value` back for any value without NaN.
    public var yaml: String {
        var out = ""
        switch self {
        case .object(let fields) where !fields.isEmpty: YAMLWriter.appendMapping(fields, indent: 0, into: &out)
        case .array(let items) where !items.isEmpty: YAMLWriter.appendSequence(items, indent: 0, into: &out)
        default: out += YAMLWriter.inline(self) + "\n"
        }
        return out
    }
}

/// The pieces of `JSONValue.yaml`. Each `append` starts where a node begins (at the indentation,
/// or right after "- ") and ends after a newline.
enum YAMLWriter {
    /// libyaml only reads a key as a "simple key" (`key: value`) when it is at most 1024
    /// characters long; longer keys are written in the explicit `? key` form.
    private static let longestSimpleKey = 1000

    static func appendMapping(_ fields: [String: JSONValue], indent: Int, into out: inout String, startsLine: Bool = true) {
        let padding = String(repeating: " ", count: indent)
        for (index, key) in fields.keys.sorted().enumerated() {
            if startsLine || index > 0 { out += padding }
            let keyText = scalar(key)
            if keyText.utf8.count > longestSimpleKey {
                out += "? " + keyText + "\n" + padding + ":"
            } else {
                out += keyText + ":"
            }
            appendValue(fields[key]!, indent: indent, into: &out)
        }
    }

    /// Writes a mapping's value after its "key:": nested mappings indented by two on the next
    /// lines, sequences on the next lines at the key's own indentation (as kubectl writes them).
    private static func appendValue(_ value: JSONValue, indent: Int, into out: inout String) {
        switch value {
        case .object(let fields) where !fields.isEmpty:
            out += "\n"
            appendMapping(fields, indent: indent + 2, into: &out)
        case .array(let items) where !items.isEmpty:
            out += "\n"
            appendSequence(items, indent: indent, into: &out)
        default:
            out += " " + inline(value) + "\n"
        }
    }

    static func appendSequence(_ items: [JSONValue], indent: Int, into out: inout String, startsLine: Bool = true) {
        let padding = String(repeating: " ", count: indent)
        for (index, item) in items.enumerated() {
            if startsLine || index > 0 { out += padding }
            out += "- "
            switch item {
            case .object(let fields) where !fields.isEmpty:
                appendMapping(fields, indent: indent + 2, into: &out, startsLine: false)
            case .array(let nested) where !nested.isEmpty:
                appendSequence(nested, indent: indent + 2, into: &out, startsLine: false)
            default:
                out += inline(item) + "\n"
            }
        }
    }

    /// A scalar or an empty collection on one line.
    static func inline(_ value: JSONValue) -> String {
        switch value {
        case .null: "null"
        case .bool(let flag): flag ? "true" : "false"
        case .int(let integer): String(integer)
        case .double(let number): float(number)
        case .string(let text): scalar(text)
        case .array: "[]"
        case .object: "{}"
        }
    }

    /// Swift's shortest round-trip form, which keeps a "." or an exponent ("1.0", "1e-05") so
    /// that it reads back as a float, not an int; with a ".0" put before a bare exponent
    /// ("1.0e-05"), which YAML 1.1's float pattern (PyYAML's) requires.
    static func float(_ number: Double) -> String {
        if number.isNaN { return ".nan" }
        if number.isInfinite { return number < 0 ? "-.inf" : ".inf" }
        let text = number.description
        guard !text.contains("."), let exponent = text.firstIndex(of: "e") else { return text }
        return text[..<exponent] + ".0" + text[exponent...]
    }

    /// `text` plain when that reads back as the same string, else double-quoted.
    static func scalar(_ text: String) -> String {
        canBePlain(text) ? text : doubleQuoted(text)
    }

    /// Whether `text` can be written without quotes: it must resolve to a string under YAML 1.1
    /// (so not `yes`, `~`, `0x1F`), and hold nothing a YAML reader would take as syntax: no
    /// leading indicator character, no ": " or " #", no surrounding spaces, no line breaks or
    /// other special characters. Number- and date-like text ("1:20", "2024-01-02") is quoted
    /// too, for YAML 1.1 readers (PyYAML) that read those as sexagesimal numbers or timestamps.
    static func canBePlain(_ text: String) -> Bool {
        guard let first = text.unicodeScalars.first, let last = text.unicodeScalars.last else { return false }
        // "<<" is the merge key, and "=" YAML 1.1's value key (PyYAML refuses it plain).
        guard YAMLScalarResolver.resolvePlain(text).isString, text != "<<", text != "=" else { return false }
        if "?:,[]{}#&*!|>'\"%@` ".unicodeScalars.contains(first) || last == " " || last == ":" { return false }
        // "-" starts a sequence entry only when a space follows, so "--flag" can stay plain.
        if text == "-" || text.hasPrefix("- ") || text.hasPrefix("---") || text.hasPrefix("...") { return false }
        if text.contains(": ") || text.contains(" #") { return false }
        if looksNumeric(text) { return false }
        return text.unicodeScalars.allSatisfy { scalar in
            switch scalar.value {
            case 0x20...0x7E: true
            case 0xA0...0xD7FF, 0xE000...0xFFFD: scalar.value != 0x2028 && scalar.value != 0x2029 && scalar.value != 0xFEFF
            case 0x10000...0x10FFFF: true
            default: false  // controls, tab, line breaks (NEL too), DEL, C1
            }
        }
    }

    /// Text made of digits and the punctuation of numbers, times and dates only.
    private static func looksNumeric(_ text: String) -> Bool {
        guard let first = text.utf8.first, first == UInt8(ascii: ".") || first == UInt8(ascii: "+") || first == UInt8(ascii: "-")
            || (UInt8(ascii: "0")...UInt8(ascii: "9")).contains(first) else { return false }
        return text.utf8.allSatisfy { "0123456789.+-:_ eEtTzZxXoObBaAcCdDfF".utf8.contains($0) }
    }

    /// A double-quoted YAML scalar: JSON's quoting, which also escapes the characters libyaml
    /// refuses in a stream or reads as line breaks (DEL, C1 controls, U+2028, U+2029, BOM).
    static func doubleQuoted(_ text: String) -> String { JSONValue.quoted(text) }
}
