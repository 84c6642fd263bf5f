import JSON

/// The regular expressions tokenizer files split text with (GPT-2's, Qwen2's, DeepSeek's …), compiled
/// for a small backtracking machine over Unicode scalars with Oniguruma's leftmost-first semantics,
/// which is what Hugging Face `tokenizers` runs them with.
///
/// The subset: alternation, groups (`(…)`, `(?:…)`, `(?i:…)`), negative and positive lookahead
/// (`(?!…)`, `(?=…)`), classes (`[…]`, `[^…]`, ranges, `\s \S \d \D \w \W \p{…} \P{…}`, `.`), the
/// quantifiers `? * + {m} {m,} {m,n}` (greedy or lazy) and escaped literals. Anything else (anchors,
/// backreferences, possessive quantifiers …) is refused at compile time by name.
public struct SplitPattern: Sendable {
    enum Op: Sendable {
        case scalar(Int)  // one scalar of class k
        case span(Int, min: Int, max: Int)  // a greedy run of class k, given back one at a time
        case split(Int, Int)  // try the first, then the second
        case jump(Int)
        case look(negative: Bool, next: Int)  // the sub-program follows this op, ends in .match
        case match
    }

    let ops: [Op]
    let classes: [ScalarClass]
    /// The pattern as written, for messages.
    public let source: String

    public init(_ source: String) throws(TokenizerError) {
        var parser = PatternParser(source: source)
        let node = try parser.parseAll()
        var compiler = PatternCompiler()
        compiler.emit(node)
        compiler.ops.append(.match)
        ops = compiler.ops
        classes = compiler.classes
        self.source = source
    }

    /// The non-empty, non-overlapping matches in `text[range]`, leftmost first, as Oniguruma's
    /// `find_iter` gives them (empty matches are skipped, as the split drops empty pieces).
    func matches(in text: UnsafeBufferPointer<UInt32>, _ range: Range<Int>, into out: inout [Range<Int>]) {
        var stack: [Frame] = []
        stack.reserveCapacity(32)
        var start = range.lowerBound
        while start < range.upperBound {
            if let end = run(text, limit: range.upperBound, at: start, pc: 0, stack: &stack), end > start {
                out.append(start..<end)
                start = end
            } else {
                start += 1
            }
        }
    }

    struct Frame {
        var pc: Int
        var pos: Int
        var low: Int  // for a span: the least position still to try; -1 for a plain alternative
    }

    /// The end of the match that starts at `pos`, or nil.
    private func run(_ text: UnsafeBufferPointer<UInt32>, limit: Int, at start: Int, pc startPC: Int,
                     stack: inout [Frame]) -> Int? {
        let base = stack.count
        defer { stack.removeSubrange(base...) }
        var pc = startPC
        var pos = start
        while true {
            var fail = false
            switch ops[pc] {
            case .scalar(let k):
                if pos < limit && classes[k].contains(text[pos]) { pos += 1; pc += 1 } else { fail = true }
            case .span(let k, let least, let most):
                let cls = classes[k]
                var end = pos
                while end < limit && end - pos < most && cls.contains(text[end]) { end += 1 }
                if end - pos < least {
                    fail = true
                } else {
                    if end - pos > least { stack.append(Frame(pc: pc + 1, pos: end - 1, low: pos + least)) }
                    pos = end
                    pc += 1
                }
            case .split(let first, let second):
                stack.append(Frame(pc: second, pos: pos, low: -1))
                pc = first
            case .jump(let target):
                pc = target
            case .look(let negative, let next):
                let matched = run(text, limit: limit, at: pos, pc: pc + 1, stack: &stack) != nil
                if matched == negative { fail = true } else { pc = next }
            case .match:
                return pos
            }
            if fail {
                guard stack.count > base else { return nil }
                let frame = stack.removeLast()
                if frame.low >= 0 && frame.pos > frame.low {
                    stack.append(Frame(pc: frame.pc, pos: frame.pos - 1, low: frame.low))
                }
                pc = frame.pc
                pos = frame.pos
            }
        }
    }
}

indirect enum PatternNode {
    case cls(ScalarClass)
    case sequence([PatternNode])
    case alternation([PatternNode])
    case repeated(PatternNode, min: Int, max: Int?, greedy: Bool)
    case lookahead(PatternNode, negative: Bool)
}

extension PatternNode {
    var canMatchEmpty: Bool {
        switch self {
        case .cls: return false
        case .sequence(let items): return items.allSatisfy(\.canMatchEmpty)
        case .alternation(let branches): return branches.contains(where: \.canMatchEmpty)
        case .repeated(let inner, let least, _, _): return least == 0 || inner.canMatchEmpty
        case .lookahead: return true
        }
    }
}

struct PatternParser {
    let scalars: [UInt32]
    let source: String
    var i = 0
    var caseInsensitive = false

    init(source: String) {
        self.source = source
        scalars = source.unicodeScalars.map(\.value)
    }

    func error(_ what: String) -> TokenizerError {
        .unsupported("regex \(JSONValue.quoted(source)): \(what) at offset \(i)")
    }

    var peek: UInt32? { i < scalars.count ? scalars[i] : nil }

    mutating func parseAll() throws(TokenizerError) -> PatternNode {
        let node = try parseAlternation()
        if i < scalars.count { throw error("unbalanced ')'") }
        return node
    }

    mutating func parseAlternation() throws(TokenizerError) -> PatternNode {
        var branches = [try parseSequence()]
        while peek == 0x7c {  // |
            i += 1
            branches.append(try parseSequence())
        }
        return branches.count == 1 ? branches[0] : .alternation(branches)
    }

    mutating func parseSequence() throws(TokenizerError) -> PatternNode {
        var items: [PatternNode] = []
        while let c = peek, c != 0x7c, c != 0x29 {  // | )
            var atom = try parseAtom()
            atom = try parseQuantifier(atom)
            items.append(atom)
        }
        return items.count == 1 ? items[0] : .sequence(items)
    }

    mutating func parseQuantifier(_ atom: PatternNode) throws(TokenizerError) -> PatternNode {
        guard let c = peek else { return atom }
        var least = 0
        var most: Int? = nil
        switch c {
        case 0x3f: least = 0; most = 1; i += 1  // ?
        case 0x2a: least = 0; most = nil; i += 1  // *
        case 0x2b: least = 1; most = nil; i += 1  // +
        case 0x7b:  // {m}, {m,}, {m,n}
            let save = i
            i += 1
            guard let m = readNumber() else { i = save; throw error("'{' that is not a quantifier") }
            least = m
            if peek == 0x2c {
                i += 1
                most = readNumber()
            } else {
                most = m
            }
            guard peek == 0x7d else { throw error("unterminated quantifier") }
            i += 1
            if let most, most < least { throw error("quantifier {\(least),\(most)}") }
        default: return atom
        }
        var greedy = true
        if peek == 0x3f { greedy = false; i += 1 }  // lazy
        if peek == 0x2b { throw error("possessive quantifier") }
        if case .lookahead = atom { throw error("quantified lookahead") }
        if most == nil && atom.canMatchEmpty { throw error("an unbounded repetition of something that can match nothing") }
        return .repeated(atom, min: least, max: most, greedy: greedy)
    }

    mutating func readNumber() -> Int? {
        var value: Int? = nil
        while let c = peek, c >= 0x30, c <= 0x39 {
            value = (value ?? 0) * 10 + Int(c - 0x30)
            i += 1
        }
        return value
    }

    mutating func parseAtom() throws(TokenizerError) -> PatternNode {
        let c = scalars[i]
        switch c {
        case 0x28:  // (
            i += 1
            let saved = caseInsensitive
            defer { caseInsensitive = saved }
            if peek == 0x3f {  // ?
                i += 1
                switch peek {
                case 0x3a: i += 1  // (?:
                case 0x21, 0x3d:  // (?! (?=
                    let negative = peek == 0x21
                    i += 1
                    let inner = try parseAlternation()
                    guard peek == 0x29 else { throw error("unterminated group") }
                    i += 1
                    return .lookahead(inner, negative: negative)
                case 0x69:  // (?i: or (?i)
                    i += 1
                    guard peek == 0x3a else { throw error("inline flags other than (?i:…)") }
                    i += 1
                    caseInsensitive = true
                default:
                    throw error("group kind '(?\(peek.map { String(Character(Unicode.Scalar($0)!)) } ?? "")'")
                }
            }
            let inner = try parseAlternation()
            guard peek == 0x29 else { throw error("unterminated group") }
            i += 1
            return inner
        case 0x5b:  // [
            return .cls(try parseClass())
        case 0x2e:  // .
            i += 1
            var cls = ScalarClass()
            cls.add(0x0a...0x0a)
            cls.negated = true
            cls.finish()
            return .cls(cls)
        case 0x5e, 0x24: throw error("anchors (^, $)")
        case 0x29: throw error("unbalanced ')'")
        case 0x2a, 0x2b, 0x3f, 0x7b: throw error("quantifier with nothing to repeat")
        case 0x5c:  // backslash
            i += 1
            guard let e = peek else { throw error("trailing backslash") }
            if let cls = try escapedClass(e) { return .cls(cls) }
            return literal(try escapedLiteral(e))
        default:
            i += 1
            return literal(c)
        }
    }

    func literal(_ c: UInt32) -> PatternNode {
        var cls = ScalarClass()
        cls.add(c...c)
        if caseInsensitive, let s = Unicode.Scalar(c), s.isASCII {
            let ch = Character(s)
            for other in [ch.lowercased(), ch.uppercased()] { if let u = other.unicodeScalars.first { cls.add(u.value...u.value) } }
        }
        cls.finish()
        return .cls(cls)
    }

    /// `\s \S \d \D \w \W \p{…} \P{…}` after the backslash (consumed), or nil for a literal escape.
    mutating func escapedClass(_ e: UInt32) throws(TokenizerError) -> ScalarClass? {
        var cls = ScalarClass()
        switch e {
        case 0x73, 0x53: cls.whitespace = true; cls.negated = e == 0x53; i += 1  // s S
        case 0x64, 0x44: cls.categories = UnicodeTable.categoryMask(named: "Nd")!; cls.negated = e == 0x44; i += 1
        case 0x77, 0x57:  // w W: letters, marks, numbers, connector punctuation (Oniguruma's Unicode \w)
            cls.categories = UnicodeTable.categoryMask(named: "L")! | UnicodeTable.categoryMask(named: "M")!
                | UnicodeTable.categoryMask(named: "N")! | UnicodeTable.categoryMask(named: "Pc")!
            cls.negated = e == 0x57
            i += 1
        case 0x70, 0x50:  // p{…} P{…}
            i += 1
            guard peek == 0x7b else { throw error("\\p without {…}") }
            i += 1
            var name = ""
            while let c = peek, c != 0x7d { name.unicodeScalars.append(Unicode.Scalar(c)!); i += 1 }
            guard peek == 0x7d else { throw error("unterminated \\p{") }
            i += 1
            var negated = e == 0x50
            if name.hasPrefix("^") { negated.toggle(); name.removeFirst() }
            guard let mask = UnicodeTable.categoryMask(named: name) else {
                throw error("Unicode property \\p{\(name)} (general categories only)")
            }
            cls.categories = mask
            cls.negated = negated
        default:
            return nil
        }
        cls.finish()
        return cls
    }

    /// The scalar an escape stands for; the backslash is consumed, `e` is at `i`.
    mutating func escapedLiteral(_ e: UInt32) throws(TokenizerError) -> UInt32 {
        i += 1
        switch e {
        case 0x6e: return 0x0a  // n
        case 0x72: return 0x0d  // r
        case 0x74: return 0x09  // t
        case 0x66: return 0x0c  // f
        case 0x76: return 0x0b  // v
        case 0x61: return 0x07  // a
        case 0x65: return 0x1b  // e
        case 0x78, 0x75:  // x.. x{…} u....
            var digits = 0
            var value: UInt32 = 0
            let braced = peek == 0x7b
            if braced { i += 1 }
            let most = braced ? 8 : (e == 0x78 ? 2 : 4)
            while digits < most, let c = peek, let d = Character(Unicode.Scalar(c)!).hexDigitValue {
                value = value * 16 + UInt32(d)
                digits += 1
                i += 1
            }
            if braced { guard peek == 0x7d else { throw error("unterminated \\x{") }; i += 1 }
            guard digits > 0, Unicode.Scalar(value) != nil else { throw error("bad hex escape") }
            return value
        default:
            if let s = Unicode.Scalar(e), s.isASCII, Character(s).isLetter || Character(s).isNumber {
                throw error("escape \\\(Character(s))")
            }
            return e  // an escaped punctuation or symbol stands for itself
        }
    }

    mutating func parseClass() throws(TokenizerError) -> ScalarClass {
        i += 1  // [
        var cls = ScalarClass()
        if peek == 0x5e { cls.negated = true; i += 1 }
        var first = true
        while true {
            guard let c = peek else { throw error("unterminated '['") }
            if c == 0x5d && !first { i += 1; break }  // ]
            first = false
            var low: UInt32
            if c == 0x5c {
                i += 1
                guard let e = peek else { throw error("trailing backslash") }
                if let inner = try escapedClass(e) {
                    if inner.negated { throw error("a negated escape (\\S, \\P{…}) inside […]") }
                    cls.add(inner)
                    continue
                }
                low = try escapedLiteral(e)
            } else if c == 0x5b {
                throw error("nested '[' (set operations)")
            } else {
                low = c
                i += 1
            }
            var high = low
            if peek == 0x2d, i + 1 < scalars.count, scalars[i + 1] != 0x5d {  // a-b
                i += 1
                let h = scalars[i]
                if h == 0x5c {
                    i += 1
                    guard let e = peek else { throw error("trailing backslash") }
                    high = try escapedLiteral(e)
                } else {
                    high = h
                    i += 1
                }
                guard high >= low else { throw error("class range out of order") }
            }
            cls.add(low...high)
            if caseInsensitive {
                for v in low...min(high, 127) {
                    let ch = Character(Unicode.Scalar(v)!)
                    for other in [ch.lowercased(), ch.uppercased()] { if let u = other.unicodeScalars.first, u.isASCII { cls.add(u.value...u.value) } }
                }
            }
        }
        cls.finish()
        return cls
    }
}

struct PatternCompiler {
    var ops: [SplitPattern.Op] = []
    var classes: [ScalarClass] = []

    mutating func classIndex(_ cls: ScalarClass) -> Int {
        if let k = classes.firstIndex(of: cls) { return k }
        classes.append(cls)
        return classes.count - 1
    }

    mutating func emit(_ node: PatternNode) {
        switch node {
        case .cls(let cls):
            ops.append(.scalar(classIndex(cls)))
        case .sequence(let items):
            for item in items { emit(item) }
        case .alternation(let branches):
            var jumps: [Int] = []
            for (n, branch) in branches.enumerated() {
                if n < branches.count - 1 {
                    let split = ops.count
                    ops.append(.split(split + 1, -1))
                    emit(branch)
                    jumps.append(ops.count)
                    ops.append(.jump(-1))
                    ops[split] = .split(split + 1, ops.count)
                } else {
                    emit(branch)
                }
            }
            for j in jumps { ops[j] = .jump(ops.count) }
        case .lookahead(let inner, let negative):
            let look = ops.count
            ops.append(.look(negative: negative, next: -1))
            emit(inner)
            ops.append(.match)
            ops[look] = .look(negative: negative, next: ops.count)
        case .repeated(let inner, let least, let most, let greedy):
            if greedy, case .cls(let cls) = inner {
                ops.append(.span(classIndex(cls), min: least, max: most ?? Int.max))
                return
            }
            for _ in 0..<least { emit(inner) }
            if let most {
                var exits: [Int] = []
                for _ in least..<most {
                    exits.append(ops.count)
                    ops.append(.split(-1, -1))
                    emit(inner)
                }
                for e in exits { ops[e] = greedy ? .split(e + 1, ops.count) : .split(ops.count, e + 1) }
            } else {
                let loop = ops.count
                ops.append(.split(-1, -1))
                emit(inner)
                ops.append(.jump(loop))
                ops[loop] = greedy ? .split(loop + 1, ops.count) : .split(ops.count, loop + 1)
            }
        }
    }
}
