import JSON

/// A tiny CEL evaluator for the rules CRDs commonly carry: `self.a <= self.b`, `self.a != self.b`,
/// `has(self.a)`, `!`, `&&`, `||`, parentheses, integer/double/string/bool literals. Anything else
/// throws, and the rule is not enforced.
enum CELRule {
    struct Unsupported: Error {}

    static func evaluate(_ text: String, self value: JSONValue) throws -> Bool {
        var parser = Parser(tokens: try tokenize(text), root: value)
        let result = try parser.expression()
        guard parser.index == parser.tokens.count, case .bool(let holds) = result else { throw Unsupported() }
        return holds
    }

    static func tokenize(_ text: String) throws -> [String] {
        var tokens: [String] = []
        var index = text.startIndex
        while index < text.endIndex {
            let character = text[index]
            if character.isWhitespace { index = text.index(after: index); continue }
            let rest = text[index...]
            if let op = ["&&", "||", "<=", ">=", "==", "!="].first(where: { rest.hasPrefix($0) }) {
                tokens.append(op)
                index = text.index(index, offsetBy: 2)
            } else if "()<>!.".contains(character) {
                tokens.append(String(character))
                index = text.index(after: index)
            } else if character.isLetter || character.isNumber || character == "_" {
                var end = index
                while end < text.endIndex, text[end].isLetter || text[end].isNumber || text[end] == "_" { end = text.index(after: end) }
                tokens.append(String(text[index..<end]))
                index = end
            } else if character == "'" || character == "\"" {
                guard let close = text[text.index(after: index)...].firstIndex(of: character) else { throw Unsupported() }
                tokens.append(String(text[index...close]))
                index = text.index(after: close)
            } else {
                throw Unsupported()
            }
        }
        return tokens
    }

    struct Parser {
        let tokens: [String]
        let root: JSONValue
        var index = 0

        var peek: String? { index < tokens.count ? tokens[index] : nil }
        mutating func take() -> String? {
            defer { index += 1 }
            return peek
        }
        mutating func expect(_ token: String) throws { guard take() == token else { throw Unsupported() } }

        mutating func expression() throws -> JSONValue {
            var left = try conjunction()
            while peek == "||" {
                index += 1
                let right = try conjunction()
                guard case .bool(let a) = left, case .bool(let b) = right else { throw Unsupported() }
                left = .bool(a || b)
            }
            return left
        }

        mutating func conjunction() throws -> JSONValue {
            var left = try comparison()
            while peek == "&&" {
                index += 1
                let right = try comparison()
                guard case .bool(let a) = left, case .bool(let b) = right else { throw Unsupported() }
                left = .bool(a && b)
            }
            return left
        }

        mutating func comparison() throws -> JSONValue {
            let left = try unary()
            guard let op = peek, ["<", "<=", ">", ">=", "==", "!="].contains(op) else { return left }
            index += 1
            let right = try unary()
            switch op {
            case "==": return .bool(left == right)
            case "!=": return .bool(left != right)
            default:
                guard let a = left.double, let b = right.double else { throw Unsupported() }
                switch op {
                case "<": return .bool(a < b)
                case "<=": return .bool(a <= b)
                case ">": return .bool(a > b)
                default: return .bool(a >= b)
                }
            }
        }

        mutating func unary() throws -> JSONValue {
            if peek == "!" {
                index += 1
                guard case .bool(let value) = try unary() else { throw Unsupported() }
                return .bool(!value)
            }
            return try primary()
        }

        mutating func primary() throws -> JSONValue {
            guard let token = take() else { throw Unsupported() }
            switch token {
            case "(":
                let value = try expression()
                try expect(")")
                return value
            case "has":
                try expect("(")
                let path = try selection()
                try expect(")")
                return .bool(lookup(path) != nil)
            case "self":
                index -= 1
                guard let value = lookup(try selection()) else { throw Unsupported() }  // no such field: CEL errors
                return value
            case "true": return true
            case "false": return false
            default:
                if let number = Int(token) { return .int(number) }
                if let number = Double(token) { return .double(number) }
                if token.hasPrefix("'") || token.hasPrefix("\"") { return .string(String(token.dropFirst().dropLast())) }
                throw Unsupported()
            }
        }

        /// `self.a.b` → ["a", "b"].
        mutating func selection() throws -> [String] {
            try expect("self")
            var path: [String] = []
            while peek == "." {
                index += 1
                guard let name = take() else { throw Unsupported() }
                path.append(name)
            }
            return path
        }

        func lookup(_ path: [String]) -> JSONValue? {
            let value = root[path: path]
            return value == .null ? nil : value
        }
    }
}
