/// The syntax tree of a chat template: the subset of Jinja that real chat templates use.
indirect enum TemplateNode: Sendable {
    case text(String)
    case output(TemplateExpression)
    case forLoop(targets: [String], iterable: TemplateExpression, filter: TemplateExpression?, body: [TemplateNode], otherwise: [TemplateNode])
    case conditional(branches: [(TemplateExpression, [TemplateNode])], otherwise: [TemplateNode])
    case assign(target: AssignTarget, value: TemplateExpression)
    case assignBlock(name: String, body: [TemplateNode])
    case macro(name: String, parameters: [(String, TemplateExpression?)], body: [TemplateNode])
    case loopBreak
    case loopContinue
    /// transformers' `{% generation %}` marks the assistant's part; it renders its body.
    case generation([TemplateNode])

    enum AssignTarget: Sendable {
        case names([String])
        case attribute(String, String)
    }
}

indirect enum TemplateExpression: Sendable {
    case literal(TemplateLiteral)
    case name(String)
    case list([TemplateExpression])
    case dict([(TemplateExpression, TemplateExpression)])
    case attribute(TemplateExpression, String)
    case subscript_(TemplateExpression, TemplateExpression)
    case slice(TemplateExpression, TemplateExpression?, TemplateExpression?, TemplateExpression?)
    case call(TemplateExpression, [TemplateExpression], [(String, TemplateExpression)])
    case filter(TemplateExpression, String, [TemplateExpression], [(String, TemplateExpression)])
    case test(TemplateExpression, String, [TemplateExpression], negated: Bool)
    case unary(String, TemplateExpression)
    case binary(String, TemplateExpression, TemplateExpression)
    case conditional(TemplateExpression, condition: TemplateExpression, otherwise: TemplateExpression?)
}

enum TemplateLiteral: Sendable {
    case string(String)
    case integer(Int)
    case number(Double)
    case bool(Bool)
    case none
}

struct TemplateParser {
    var chunks: [TemplateChunk]
    var position = 0

    static func parse(_ source: String) throws(TemplateError) -> [TemplateNode] {
        var parser = TemplateParser(chunks: try TemplateLexer.chunks(source))
        let (nodes, end) = try parser.block(until: [])
        if let end { throw TemplateError("unexpected {% \(end) %}") }
        return nodes
    }

    /// Nodes up to one of the `until` statements (returned with its tokens consumed into `pendingTokens`).
    var pendingTokens: [TemplateToken] = []

    mutating func block(until ends: Set<String>) throws(TemplateError) -> ([TemplateNode], String?) {
        var nodes: [TemplateNode] = []
        while position < chunks.count {
            let chunk = chunks[position]
            position += 1
            switch chunk {
            case .text(let t): nodes.append(.text(t))
            case .output(let tokens):
                var e = ExpressionParser(tokens: tokens)
                nodes.append(.output(try e.parseAll()))
            case .statement(let tokens):
                guard case .name(let keyword) = tokens.first else { throw TemplateError("a statement must start with a keyword: {% \(tokens.map(\.description).joined(separator: " ")) %}") }
                if ends.contains(keyword) {
                    pendingTokens = tokens
                    return (nodes, keyword)
                }
                nodes.append(try statement(keyword, Array(tokens.dropFirst())))
            }
        }
        if let end = ends.first(where: { $0.hasPrefix("end") }) ?? ends.first {
            throw TemplateError("missing {% \(end) %} at the end of the template")
        }
        return (nodes, nil)
    }

    mutating func statement(_ keyword: String, _ rest: [TemplateToken]) throws(TemplateError) -> TemplateNode {
        switch keyword {
        case "for":
            var e = ExpressionParser(tokens: rest)
            var targets = [try e.expectName()]
            while e.accept(.op(",")) { targets.append(try e.expectName()) }
            try e.expect(.name("in"))
            let iterable = try e.parseCondition(allowConditional: false)
            var filter: TemplateExpression? = nil
            if e.accept(.name("if")) { filter = try e.parseCondition(allowConditional: false) }
            if e.accept(.name("recursive")) { throw TemplateError("recursive for loops are not supported") }
            try e.expectEnd("for")
            var (body, end) = try block(until: ["else", "endfor"])
            var otherwise: [TemplateNode] = []
            if end == "else" {
                (otherwise, end) = try block(until: ["endfor"])
            }
            _ = end
            return .forLoop(targets: targets, iterable: iterable, filter: filter, body: body, otherwise: otherwise)
        case "if":
            var branches: [(TemplateExpression, [TemplateNode])] = []
            var e = ExpressionParser(tokens: rest)
            var condition = try e.parseAll()
            var otherwise: [TemplateNode] = []
            while true {
                let (body, end) = try block(until: ["elif", "else", "endif"])
                branches.append((condition, body))
                if end == "elif" {
                    var next = ExpressionParser(tokens: Array(pendingTokens.dropFirst()))
                    condition = try next.parseAll()
                    continue
                }
                if end == "else" {
                    (otherwise, _) = try block(until: ["endif"])
                }
                break
            }
            return .conditional(branches: branches, otherwise: otherwise)
        case "set":
            var e = ExpressionParser(tokens: rest)
            let first = try e.expectName()
            if e.accept(.op(".")) {
                let attribute = try e.expectName()
                try e.expect(.op("="))
                let value = try e.parseAll()
                return .assign(target: .attribute(first, attribute), value: value)
            }
            var names = [first]
            while e.accept(.op(",")) { names.append(try e.expectName()) }
            if e.atEnd {
                guard names.count == 1 else { throw TemplateError("{% set a, b %} blocks are not supported") }
                let (body, _) = try block(until: ["endset"])
                return .assignBlock(name: first, body: body)
            }
            try e.expect(.op("="))
            return .assign(target: .names(names), value: try e.parseAll())
        case "macro":
            var e = ExpressionParser(tokens: rest)
            let name = try e.expectName()
            try e.expect(.op("("))
            var parameters: [(String, TemplateExpression?)] = []
            if !e.accept(.op(")")) {
                repeat {
                    let p = try e.expectName()
                    var d: TemplateExpression? = nil
                    if e.accept(.op("=")) { d = try e.parseCondition(allowConditional: true) }
                    parameters.append((p, d))
                } while e.accept(.op(","))
                try e.expect(.op(")"))
            }
            try e.expectEnd("macro")
            let (body, _) = try block(until: ["endmacro"])
            return .macro(name: name, parameters: parameters, body: body)
        case "break":
            guard rest.isEmpty else { throw TemplateError("{% break %} takes nothing") }
            return .loopBreak
        case "continue":
            guard rest.isEmpty else { throw TemplateError("{% continue %} takes nothing") }
            return .loopContinue
        case "generation":
            let (body, _) = try block(until: ["endgeneration"])
            return .generation(body)
        default:
            throw TemplateError("the statement {% \(keyword) %} is not supported")
        }
    }
}

/// Jinja's expression grammar, precedence lowest first: conditional, or, and, not, comparisons
/// (== != < > <= >= in, not in), + -, ~, * / // %, **, unary - +, then primaries with their
/// postfixes (.attr, [key], [a:b], (args)) and filters (| f) and tests (is [not] t).
struct ExpressionParser {
    let tokens: [TemplateToken]
    var i = 0

    init(tokens: [TemplateToken]) { self.tokens = tokens }

    var atEnd: Bool { i >= tokens.count }
    var peek: TemplateToken? { i < tokens.count ? tokens[i] : nil }

    mutating func accept(_ t: TemplateToken) -> Bool {
        if peek == t { i += 1; return true }
        return false
    }

    mutating func expect(_ t: TemplateToken) throws(TemplateError) {
        guard accept(t) else { throw TemplateError("expected '\(t)' but found \(peek.map { "'\($0)'" } ?? "the end") in '\(text)'") }
    }

    mutating func expectName() throws(TemplateError) -> String {
        guard case .name(let n) = peek else { throw TemplateError("expected a name but found \(peek.map { "'\($0)'" } ?? "the end") in '\(text)'") }
        i += 1
        return n
    }

    func expectEnd(_ statement: String) throws(TemplateError) {
        guard atEnd else { throw TemplateError("unexpected '\(tokens[i])' in {% \(statement) … %}: '\(text)'") }
    }

    var text: String { tokens.map(\.description).joined(separator: " ") }

    mutating func parseAll() throws(TemplateError) -> TemplateExpression {
        let e = try parseCondition(allowConditional: true)
        guard atEnd else { throw TemplateError("unexpected '\(tokens[i])' in '\(text)'") }
        return e
    }

    mutating func parseCondition(allowConditional: Bool) throws(TemplateError) -> TemplateExpression {
        let value = try parseOr()
        if allowConditional, accept(.name("if")) {
            let condition = try parseOr()
            var otherwise: TemplateExpression? = nil
            if accept(.name("else")) { otherwise = try parseCondition(allowConditional: true) }
            return .conditional(value, condition: condition, otherwise: otherwise)
        }
        return value
    }

    mutating func parseOr() throws(TemplateError) -> TemplateExpression {
        var left = try parseAnd()
        while accept(.name("or")) { left = .binary("or", left, try parseAnd()) }
        return left
    }

    mutating func parseAnd() throws(TemplateError) -> TemplateExpression {
        var left = try parseNot()
        while accept(.name("and")) { left = .binary("and", left, try parseNot()) }
        return left
    }

    mutating func parseNot() throws(TemplateError) -> TemplateExpression {
        if accept(.name("not")) { return .unary("not", try parseNot()) }
        return try parseCompare()
    }

    mutating func parseCompare() throws(TemplateError) -> TemplateExpression {
        var left = try parseMath1()
        while true {
            if case .op(let o) = peek, ["==", "!=", "<", ">", "<=", ">="].contains(o) {
                i += 1
                left = .binary(o, left, try parseMath1())
            } else if accept(.name("in")) {
                left = .binary("in", left, try parseMath1())
            } else if peek == .name("not"), i + 1 < tokens.count, tokens[i + 1] == .name("in") {
                i += 2
                left = .binary("not in", left, try parseMath1())
            } else {
                return left
            }
        }
    }

    mutating func parseMath1() throws(TemplateError) -> TemplateExpression {
        var left = try parseConcat()
        while case .op(let o) = peek, o == "+" || o == "-" {
            i += 1
            left = .binary(o, left, try parseConcat())
        }
        return left
    }

    mutating func parseConcat() throws(TemplateError) -> TemplateExpression {
        var left = try parseMath2()
        while accept(.op("~")) { left = .binary("~", left, try parseMath2()) }
        return left
    }

    mutating func parseMath2() throws(TemplateError) -> TemplateExpression {
        var left = try parsePow()
        while case .op(let o) = peek, ["*", "/", "//", "%"].contains(o) {
            i += 1
            left = .binary(o, left, try parsePow())
        }
        return left
    }

    mutating func parsePow() throws(TemplateError) -> TemplateExpression {
        var left = try parseUnary()
        while accept(.op("**")) { left = .binary("**", left, try parseUnary()) }
        return left
    }

    mutating func parseUnary() throws(TemplateError) -> TemplateExpression {
        if accept(.op("-")) { return try filters(.unary("-", try parseUnary())) }
        if accept(.op("+")) { return try filters(.unary("+", try parseUnary())) }
        var e = try parsePrimary()
        e = try postfix(e)
        return try filters(e)
    }

    mutating func filters(_ base: TemplateExpression) throws(TemplateError) -> TemplateExpression {
        var e = base
        while true {
            if accept(.op("|")) {
                let name = try dottedName()
                var args: [TemplateExpression] = []
                var kwargs: [(String, TemplateExpression)] = []
                if accept(.op("(")) { (args, kwargs) = try arguments() }
                e = .filter(e, name, args, kwargs)
                e = try postfix(e)
            } else if accept(.name("is")) {
                let negated = accept(.name("not"))
                let name = try expectName()
                var args: [TemplateExpression] = []
                if accept(.op("(")) {
                    let (a, k) = try arguments()
                    guard k.isEmpty else { throw TemplateError("keyword arguments to the test '\(name)'") }
                    args = a
                } else if let next = peek, startsPrimary(next) {
                    args = [try parsePrimaryWithPostfix()]
                }
                e = .test(e, name, args, negated: negated)
            } else {
                return e
            }
        }
    }

    mutating func dottedName() throws(TemplateError) -> String {
        var name = try expectName()
        while peek == .op("."), case .name(let n)? = (i + 1 < tokens.count ? tokens[i + 1] : nil) {
            i += 2
            name += "." + n
        }
        return name
    }

    func startsPrimary(_ t: TemplateToken) -> Bool {
        switch t {
        case .string, .integer, .number: return true
        case .name(let n): return !["and", "or", "not", "in", "is", "if", "else"].contains(n)
        default: return false
        }
    }

    mutating func parsePrimaryWithPostfix() throws(TemplateError) -> TemplateExpression {
        try postfix(try parsePrimary())
    }

    mutating func postfix(_ base: TemplateExpression) throws(TemplateError) -> TemplateExpression {
        var e = base
        while true {
            if accept(.op(".")) {
                guard case .name(let n)? = peek else {
                    if case .integer(let k)? = peek { i += 1; e = .subscript_(e, .literal(.integer(k))); continue }
                    throw TemplateError("expected an attribute name after '.' in '\(text)'")
                }
                i += 1
                e = .attribute(e, n)
            } else if accept(.op("[")) {
                var start: TemplateExpression? = nil
                if peek != .op(":") { start = try parseCondition(allowConditional: true) }
                if accept(.op(":")) {
                    var stop: TemplateExpression? = nil
                    var step: TemplateExpression? = nil
                    if peek != .op("]") && peek != .op(":") { stop = try parseCondition(allowConditional: true) }
                    if accept(.op(":")), peek != .op("]") { step = try parseCondition(allowConditional: true) }
                    try expect(.op("]"))
                    e = .slice(e, start, stop, step)
                } else {
                    try expect(.op("]"))
                    e = .subscript_(e, start!)
                }
            } else if accept(.op("(")) {
                let (args, kwargs) = try arguments()
                e = .call(e, args, kwargs)
            } else {
                return e
            }
        }
    }

    /// Arguments after '(' up to and including ')'.
    mutating func arguments() throws(TemplateError) -> ([TemplateExpression], [(String, TemplateExpression)]) {
        var args: [TemplateExpression] = []
        var kwargs: [(String, TemplateExpression)] = []
        if accept(.op(")")) { return (args, kwargs) }
        repeat {
            if case .name(let n)? = peek, i + 1 < tokens.count, tokens[i + 1] == .op("=") {
                i += 2
                kwargs.append((n, try parseCondition(allowConditional: true)))
            } else {
                guard kwargs.isEmpty else { throw TemplateError("a positional argument after a keyword argument in '\(text)'") }
                args.append(try parseCondition(allowConditional: true))
            }
        } while accept(.op(","))
        try expect(.op(")"))
        return (args, kwargs)
    }

    mutating func parsePrimary() throws(TemplateError) -> TemplateExpression {
        guard let t = peek else { throw TemplateError("an expression is missing in '\(text)'") }
        i += 1
        switch t {
        case .string(var s):
            // Adjacent string literals join, as in Python.
            while case .string(let more)? = peek { s += more; i += 1 }
            return .literal(.string(s))
        case .integer(let n): return .literal(.integer(n))
        case .number(let d): return .literal(.number(d))
        case .name(let n):
            switch n {
            case "true", "True": return .literal(.bool(true))
            case "false", "False": return .literal(.bool(false))
            case "none", "None": return .literal(.none)
            default: return .name(n)
            }
        case .op("("):
            let first = try parseCondition(allowConditional: true)
            if accept(.op(",")) {
                var items = [first]
                while peek != .op(")") {
                    items.append(try parseCondition(allowConditional: true))
                    if !accept(.op(",")) { break }
                }
                try expect(.op(")"))
                return .list(items)  // a tuple behaves as a list here
            }
            try expect(.op(")"))
            return first
        case .op("["):
            var items: [TemplateExpression] = []
            while !accept(.op("]")) {
                items.append(try parseCondition(allowConditional: true))
                if !accept(.op(",")) { try expect(.op("]")); break }
            }
            return .list(items)
        case .op("{"):
            var pairs: [(TemplateExpression, TemplateExpression)] = []
            while !accept(.op("}")) {
                let key = try parseCondition(allowConditional: true)
                try expect(.op(":"))
                pairs.append((key, try parseCondition(allowConditional: true)))
                if !accept(.op(",")) { try expect(.op("}")); break }
            }
            return .dict(pairs)
        default:
            throw TemplateError("unexpected '\(t)' in '\(text)'")
        }
    }
}
