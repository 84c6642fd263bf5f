/// The pieces of a Jinja template: literal text, `{{ expression }}`, `{% statement %}`, with the
/// whitespace control transformers renders chat templates with applied here: `-` on a tag strips
/// the whitespace beside it, `trim_blocks` drops the newline after a block tag, `lstrip_blocks`
/// drops the indentation before one. Comments are dropped.
enum TemplateChunk: Equatable {
    case text(String)
    case output([TemplateToken])
    case statement([TemplateToken])
}

enum TemplateToken: Equatable, CustomStringConvertible {
    case name(String)
    case string(String)
    case integer(Int)
    case number(Double)
    case op(String)

    var description: String {
        switch self {
        case .name(let n): return n
        case .string(let s): return "'\(s)'"
        case .integer(let i): return "\(i)"
        case .number(let d): return "\(d)"
        case .op(let o): return o
        }
    }
}

/// A template that could not be compiled or rendered, with where and why.
public struct TemplateError: Error, CustomStringConvertible, Sendable, Equatable {
    public let message: String
    public var description: String { "chat template: \(message)" }
    public init(_ message: String) { self.message = message }
}

struct TemplateLexer {
    let source: [Character]
    var i = 0

    init(_ source: String) { self.source = Array(source) }

    static func chunks(_ source: String) throws(TemplateError) -> [TemplateChunk] {
        var lexer = TemplateLexer(source)
        return try lexer.run()
    }

    func starts(_ s: String, at index: Int) -> Bool {
        var j = index
        for c in s {
            guard j < source.count, source[j] == c else { return false }
            j += 1
        }
        return true
    }

    /// The 1-based line of `index`, for messages.
    func line(_ index: Int) -> Int { 1 + source[..<min(index, source.count)].filter { $0 == "\n" }.count }

    mutating func run() throws(TemplateError) -> [TemplateChunk] {
        var chunks: [TemplateChunk] = []
        var text = ""
        var stripNextLeading = false
        var trimNextNewline = false
        var lineStarting = true  // the text being gathered began a line (template start, or after a trimmed newline)
        func flush(stripTrailing: Bool, lstrip: Bool) {
            if stripTrailing {
                while let last = text.last, last.isWhitespace { text.removeLast() }
            } else if lstrip {
                // Only the indentation on the tag's own line, and only if nothing else is on it
                // (Jinja's lstrip_blocks: text without a newline counts only where a line starts).
                var j = text.endIndex
                while j > text.startIndex, text[text.index(before: j)] == " " || text[text.index(before: j)] == "\t" {
                    j = text.index(before: j)
                }
                if (j == text.startIndex && lineStarting) || (j > text.startIndex && text[text.index(before: j)] == "\n") {
                    text.removeSubrange(j...)
                }
            }
            if !text.isEmpty { chunks.append(.text(text)) }
            text = ""
        }
        while i < source.count {
            let opener: Character? = starts("{{", at: i) ? "{" : starts("{%", at: i) ? "%" : starts("{#", at: i) ? "#" : nil
            guard let kind = opener else {
                let c = source[i]
                i += 1
                if stripNextLeading && c.isWhitespace { continue }
                stripNextLeading = false
                if trimNextNewline {
                    trimNextNewline = false
                    if c == "\n" || c == "\r\n" { lineStarting = true; continue }
                }
                text.append(c)
                continue
            }
            stripNextLeading = false
            trimNextNewline = false
            let tagStart = i
            i += 2
            var stripBefore = false
            var keepIndent = false
            if i < source.count, source[i] == "-" { stripBefore = true; i += 1 } else if i < source.count, source[i] == "+" { keepIndent = true; i += 1 }
            let closer = kind == "{" ? "}}" : kind == "%" ? "%}" : "#}"
            // Find the closing delimiter outside string literals.
            var j = i
            var quote: Character? = nil
            while j < source.count {
                let c = source[j]
                if let q = quote {
                    if c == "\\" { j += 2; continue }
                    if c == q { quote = nil }
                } else if kind != "#" && (c == "'" || c == "\"") {
                    quote = c
                } else if starts(closer, at: j) || (source[j] == "-" && starts(closer, at: j + 1)) {
                    break
                }
                j += 1
            }
            guard j < source.count else { throw TemplateError("line \(line(tagStart)): unclosed '{\(kind)'") }
            let stripAfter = source[j] == "-"
            let inner = String(source[i..<j])
            i = j + (stripAfter ? 1 : 0) + 2
            flush(stripTrailing: stripBefore, lstrip: kind != "{" && !keepIndent)
            switch kind {
            case "#": break
            case "{": chunks.append(.output(try Self.tokens(inner, line: line(tagStart))))
            default:
                let tokens = try Self.tokens(inner, line: line(tagStart))
                if tokens.first == .name("raw") { throw TemplateError("line \(line(tagStart)): {% raw %} blocks are not supported") }
                chunks.append(.statement(tokens))
            }
            lineStarting = false
            if stripAfter { stripNextLeading = true } else if kind != "{" { trimNextNewline = true }
        }
        flush(stripTrailing: false, lstrip: false)
        return chunks
    }

    static let operators = ["**", "//", "==", "!=", "<=", ">=", "+", "-", "*", "/", "%", "~", "<", ">", "(", ")", "[", "]", "{", "}", ",", ".", ":", "|", "="]

    static func tokens(_ text: String, line: Int) throws(TemplateError) -> [TemplateToken] {
        let s = Array(text)
        var out: [TemplateToken] = []
        var i = 0
        while i < s.count {
            let c = s[i]
            if c.isWhitespace { i += 1; continue }
            if c.isLetter || c == "_" {
                var j = i
                while j < s.count, s[j].isLetter || s[j].isNumber || s[j] == "_" { j += 1 }
                out.append(.name(String(s[i..<j])))
                i = j
                continue
            }
            if c.isASCII && c.isNumber {
                var j = i
                while j < s.count, s[j].isASCII && (s[j].isNumber || s[j] == "_") { j += 1 }
                var isFloat = false
                if j + 1 < s.count, s[j] == ".", s[j + 1].isASCII && s[j + 1].isNumber {
                    isFloat = true
                    j += 1
                    while j < s.count, s[j].isASCII && s[j].isNumber { j += 1 }
                }
                let literal = String(s[i..<j]).replacingAll("_", with: "")
                if isFloat, let d = Double(literal) { out.append(.number(d)) } else if let n = Int(literal) { out.append(.integer(n)) } else {
                    throw TemplateError("line \(line): bad number \(literal)")
                }
                i = j
                continue
            }
            if c == "'" || c == "\"" {
                var value = ""
                var j = i + 1
                var closed = false
                while j < s.count {
                    let d = s[j]
                    if d == c { closed = true; j += 1; break }
                    if d == "\\", j + 1 < s.count {
                        let e = s[j + 1]
                        switch e {
                        case "n": value.append("\n")
                        case "t": value.append("\t")
                        case "r": value.append("\r")
                        case "\\": value.append("\\")
                        case "'": value.append("'")
                        case "\"": value.append("\"")
                        case "0": value.append("\0")
                        default: value.append("\\"); value.append(e)
                        }
                        j += 2
                        continue
                    }
                    value.append(d)
                    j += 1
                }
                guard closed else { throw TemplateError("line \(line): unterminated string") }
                out.append(.string(value))
                i = j
                continue
            }
            guard let op = operators.first(where: { op in
                op.count <= s.count - i && String(s[i..<i + op.count]) == op
            }) else {
                throw TemplateError("line \(line): unexpected character '\(c)'")
            }
            out.append(.op(op))
            i += op.count
        }
        return out
    }
}
