import JSON

/// Types YAML scalars the way go-yaml v2 (under sigs.k8s.io/yaml, so kubectl) does: YAML 1.1
/// rules for plain scalars, where `yes`, `on` and `y` are booleans and `017` is octal. Quoted and
/// block scalars are strings unless an explicit tag (`!!int "12"`) says otherwise.
enum YAMLScalarResolver {
    static let mergeTag = "tag:yaml.org,2002:merge"

    /// What the text of a plain scalar stands for.
    enum PlainType {
        case null
        case bool(Bool)
        case int(Int)
        /// Integer syntax past `Int`'s range; kept as the nearest double.
        case integerOutOfRange(Double)
        case float(Double)
        case string

        var isString: Bool { if case .string = self { true } else { false } }
    }

    /// The value of a scalar event, honouring `!!str`, `!!int`, `!!float`, `!!bool` and `!!null`.
    static func value(of scalar: YAMLScalar) throws(YAMLError) -> JSONValue {
        let text = scalar.text
        guard let tag = scalar.tag else {
            return scalar.isPlain ? value(resolvePlain(text), text: text) : .string(text)
        }
        let resolved = resolvePlain(text)
        switch tag {
        case "tag:yaml.org,2002:int":
            switch resolved {
            case .int, .integerOutOfRange: return value(resolved, text: text)
            default: break
            }
        case "tag:yaml.org,2002:float":
            switch resolved {
            case .int(let integer): return .double(Double(integer))
            case .integerOutOfRange(let number), .float(let number): return .double(number)
            default: break
            }
        case "tag:yaml.org,2002:bool":
            if case .bool = resolved { return value(resolved, text: text) }
        case "tag:yaml.org,2002:null":
            if case .null = resolved { return .null }
        default:
            // `!!str`, the non-specific `!`, and tags go-yaml v2 cannot resolve (`!!timestamp`,
            // `!!binary`, local `!foo`) all give the text as it is.
            return .string(text)
        }
        let shortTag = "!!" + tag.dropFirst("tag:yaml.org,2002:".count)
        throw YAMLError("cannot read \(JSONValue.quoted(text)) as \(shortTag)", at: scalar.mark)
    }

    static func value(_ type: PlainType, text: String) -> JSONValue {
        switch type {
        case .null: .null
        case .bool(let flag): .bool(flag)
        case .int(let integer): .int(integer)
        case .integerOutOfRange(let number), .float(let number): .double(number)
        case .string: .string(text)
        }
    }

    /// YAML 1.1 resolution of a plain scalar, following go-yaml v2's `resolve`: a fixed table of
    /// words, then (for text starting with a digit or sign) Go's `ParseInt(text, 0, 64)` with
    /// underscores removed, then its float pattern; anything else is a string.
    static func resolvePlain(_ text: String) -> PlainType {
        switch text {
        case "", "~", "null", "Null", "NULL": return .null
        case "y", "Y", "yes", "Yes", "YES", "on", "On", "ON", "true", "True", "TRUE": return .bool(true)
        case "n", "N", "no", "No", "NO", "off", "Off", "OFF", "false", "False", "FALSE": return .bool(false)
        case ".nan", ".NaN", ".NAN": return .float(.nan)
        case ".inf", ".Inf", ".INF", "+.inf", "+.Inf", "+.INF": return .float(.infinity)
        case "-.inf", "-.Inf", "-.INF": return .float(-.infinity)
        default: break
        }
        let bytes = Array(text.utf8)
        switch bytes[0] {
        case UInt8(ascii: "."):
            // Go's ParseFloat on the text as written: no underscores here.
            return float(bytes) ?? .string
        case UInt8(ascii: "0")...UInt8(ascii: "9"), UInt8(ascii: "+"), UInt8(ascii: "-"):
            let digits = bytes.filter { $0 != UInt8(ascii: "_") }
            return integer(digits) ?? float(digits) ?? .string
        default:
            return .string
        }
    }

    /// Go's `ParseInt(s, 0, 64)` syntax: a sign, then `0x`/`0o`/`0b` or a leading `0` (octal) or
    /// decimal digits. `08` is not an integer here (bad octal); the float pattern then takes it.
    private static func integer(_ bytes: [UInt8]) -> PlainType? {
        var index = 0
        var negative = false
        if bytes[0] == UInt8(ascii: "+") || bytes[0] == UInt8(ascii: "-") {
            negative = bytes[0] == UInt8(ascii: "-")
            index = 1
        }
        var radix: UInt64 = 10
        if index + 1 < bytes.count, bytes[index] == UInt8(ascii: "0") {
            switch bytes[index + 1] | 0x20 {  // lower-cased letter
            case UInt8(ascii: "x"): radix = 16; index += 2
            case UInt8(ascii: "o"): radix = 8; index += 2
            case UInt8(ascii: "b"): radix = 2; index += 2
            default: radix = 8; index += 1
            }
        }
        guard index < bytes.count else { return nil }
        var magnitude: UInt64 = 0
        var overflowed = false
        var approximate = 0.0
        for byte in bytes[index...] {
            guard let digit = digitValue(byte), digit < radix else { return nil }
            approximate = approximate * Double(radix) + Double(digit)
            let (shifted, overflow1) = magnitude.multipliedReportingOverflow(by: radix)
            let (sum, overflow2) = shifted.addingReportingOverflow(digit)
            magnitude = sum
            overflowed = overflowed || overflow1 || overflow2
        }
        if !overflowed {
            if !negative, magnitude <= UInt64(Int.max) { return .int(Int(magnitude)) }
            if negative, magnitude <= UInt64(Int.max) + 1 { return .int(Int(truncatingIfNeeded: 0 &- magnitude)) }
        }
        if radix == 10, let exact = Double(String(decoding: bytes, as: UTF8.self)) { return .integerOutOfRange(exact) }
        return .integerOutOfRange(negative ? -approximate : approximate)
    }

    private static func digitValue(_ byte: UInt8) -> UInt64? {
        switch byte {
        case UInt8(ascii: "0")...UInt8(ascii: "9"): UInt64(byte - UInt8(ascii: "0"))
        case UInt8(ascii: "a")...UInt8(ascii: "f"): UInt64(byte - UInt8(ascii: "a") + 10)
        case UInt8(ascii: "A")...UInt8(ascii: "F"): UInt64(byte - UInt8(ascii: "A") + 10)
        default: nil
        }
    }

    /// go-yaml v2's float pattern `^[-+]?(\.[0-9]+|[0-9]+(\.[0-9]*)?)([eE][-+]?[0-9]+)?$`. Like Go's
    /// ParseFloat, a value past Double's range (`1e400`) is no float, so it stays a string.
    private static func float(_ bytes: [UInt8]) -> PlainType? {
        func isDigit(_ byte: UInt8) -> Bool { byte >= UInt8(ascii: "0") && byte <= UInt8(ascii: "9") }
        var index = 0
        if index < bytes.count, bytes[index] == UInt8(ascii: "+") || bytes[index] == UInt8(ascii: "-") { index += 1 }
        let integerStart = index
        while index < bytes.count, isDigit(bytes[index]) { index += 1 }
        let hasIntegerDigits = index > integerStart
        if index < bytes.count, bytes[index] == UInt8(ascii: ".") {
            index += 1
            let fractionStart = index
            while index < bytes.count, isDigit(bytes[index]) { index += 1 }
            if !hasIntegerDigits && index == fractionStart { return nil }
        } else if !hasIntegerDigits {
            return nil
        }
        if index < bytes.count, bytes[index] | 0x20 == UInt8(ascii: "e") {
            index += 1
            if index < bytes.count, bytes[index] == UInt8(ascii: "+") || bytes[index] == UInt8(ascii: "-") { index += 1 }
            let exponentStart = index
            while index < bytes.count, isDigit(bytes[index]) { index += 1 }
            if index == exponentStart { return nil }
        }
        guard index == bytes.count, let number = Double(String(decoding: bytes, as: UTF8.self)), number.isFinite else { return nil }
        return .float(number)
    }
}
