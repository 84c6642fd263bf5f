import JSON

/// Text split into pieces for the model: the (normalized) scalars and the ranges of its pieces.
/// Pre-tokenizers refine the pieces; only Metaspace and a prefix space rewrite the text.
struct Pieces {
    var text: [UInt32]
    var ranges: [Range<Int>]
}

/// How a Split keeps what its pattern matched (tokenizers' `SplitDelimiterBehavior`).
enum SplitBehavior: String, Sendable {
    case removed = "Removed"
    case isolated = "Isolated"
    case mergedWithPrevious = "MergedWithPrevious"
    case mergedWithNext = "MergedWithNext"
    case contiguous = "Contiguous"
}

/// A tokenizer.json `pre_tokenizer`. ByteLevel must come last (it turns pieces into bytes for the
/// model); refused at load by name: Whitespace, WhitespaceSplit, BertPreTokenizer, Punctuation,
/// CharDelimiterSplit, UnicodeScripts.
indirect enum PreTokenizer: Sendable {
    case split(SplitPattern, SplitBehavior, invert: Bool)
    case digits(individual: Bool)
    case byteLevel(addPrefixSpace: Bool, regex: SplitPattern?)
    case metaspace(replacement: UInt32, prepend: MetaspacePrepend, split: Bool)
    case sequence([PreTokenizer])

    enum MetaspacePrepend: String, Sendable { case always, never, first }

    /// GPT-2's pattern, which ByteLevel splits with when `use_regex` is true.
    static let gpt2Pattern = #"'s|'t|'re|'ve|'m|'ll|'d| ?\p{L}+| ?\p{N}+| ?[^\s\p{L}\p{N}]+|\s+(?!\S)|\s+"#

    init(json: JSONValue, path: String = "pre_tokenizer") throws(TokenizerError) {
        guard let type = json["type"]?.string else { throw .invalid("\(path): no \"type\"") }
        switch type {
        case "Split":
            let pattern: SplitPattern
            if let regex = json["pattern"]?["Regex"]?.string {
                pattern = try SplitPattern(regex)
            } else if let literal = json["pattern"]?["String"]?.string {
                pattern = try SplitPattern(literal.unicodeScalars.map { "\\x{" + String($0.value, radix: 16) + "}" }.joined())
            } else {
                throw .invalid("\(path).pattern: neither {\"Regex\": …} nor {\"String\": …}")
            }
            guard let name = json["behavior"]?.string, let behavior = SplitBehavior(rawValue: name) else {
                throw .unsupported("\(path).behavior \(json["behavior"]?.compact ?? "missing")")
            }
            self = .split(pattern, behavior, invert: json["invert"]?.bool ?? false)
        case "Digits":
            self = .digits(individual: json["individual_digits"]?.bool ?? false)
        case "ByteLevel":
            let useRegex = json["use_regex"]?.bool ?? true
            self = .byteLevel(addPrefixSpace: json["add_prefix_space"]?.bool ?? true,
                              regex: useRegex ? try SplitPattern(PreTokenizer.gpt2Pattern) : nil)
        case "Metaspace":
            guard let r = json["replacement"]?.string?.unicodeScalars, r.count == 1 else {
                throw .invalid("\(path).replacement: not one character")
            }
            var scheme = MetaspacePrepend.always
            if let s = json["prepend_scheme"]?.string {
                guard let parsed = MetaspacePrepend(rawValue: s) else { throw .unsupported("\(path).prepend_scheme \"\(s)\"") }
                scheme = parsed
            } else if json["add_prefix_space"]?.bool == false {
                scheme = .never
            }
            self = .metaspace(replacement: r.first!.value, prepend: scheme, split: json["split"]?.bool ?? true)
        case "Sequence":
            guard let items = json["pretokenizers"]?.array else { throw .invalid("\(path).pretokenizers: not a list") }
            var parts: [PreTokenizer] = []
            for (i, item) in items.enumerated() {
                let part = try PreTokenizer(json: item, path: "\(path).pretokenizers[\(i)]")
                if i < items.count - 1, case .byteLevel = part {
                    throw .unsupported("\(path): ByteLevel before other pre-tokenizers (it must come last)")
                }
                parts.append(part)
            }
            self = .sequence(parts)
        default:
            throw .unsupported("\(path): pre-tokenizer \"\(type)\"")
        }
    }

    /// True when the pieces leave as bytes (the last step is ByteLevel).
    var isByteLevel: Bool {
        switch self {
        case .byteLevel: return true
        case .sequence(let parts): return parts.last?.isByteLevel ?? false
        default: return false
        }
    }

    func apply(_ pieces: inout Pieces, scratch: inout [Range<Int>]) {
        switch self {
        case .sequence(let parts):
            for part in parts { part.apply(&pieces, scratch: &scratch) }
        case .split(let pattern, let behavior, let invert):
            PreTokenizer.split(&pieces, pattern: pattern, behavior: behavior, invert: invert, scratch: &scratch)
        case .digits(let individual):
            scratch.removeAll(keepingCapacity: true)
            for range in pieces.ranges {
                var start = range.lowerBound
                var i = range.lowerBound
                while i < range.upperBound {
                    if UnicodeTable.isNumeric(pieces.text[i]) {
                        var end = i + 1
                        if !individual { while end < range.upperBound && UnicodeTable.isNumeric(pieces.text[end]) { end += 1 } }
                        if start < i { scratch.append(start..<i) }
                        scratch.append(i..<end)
                        start = end
                        i = end
                    } else {
                        i += 1
                    }
                }
                if start < range.upperBound { scratch.append(start..<range.upperBound) }
            }
            swap(&pieces.ranges, &scratch)
        case .byteLevel(let addPrefixSpace, let regex):
            if addPrefixSpace { PreTokenizer.prefix(&pieces, with: 0x20, onlyFirst: false, unlessStartsWith: 0x20) }
            if let regex {
                PreTokenizer.split(&pieces, pattern: regex, behavior: .isolated, invert: false, scratch: &scratch)
            }
        case .metaspace(let replacement, let prepend, let split):
            for i in pieces.text.indices where pieces.text[i] == 0x20 { pieces.text[i] = replacement }
            switch prepend {
            case .always: PreTokenizer.prefix(&pieces, with: replacement, onlyFirst: false, unlessStartsWith: replacement)
            case .first: PreTokenizer.prefix(&pieces, with: replacement, onlyFirst: true, unlessStartsWith: replacement)
            case .never: break
            }
            if split {
                scratch.removeAll(keepingCapacity: true)
                for range in pieces.ranges {
                    var start = range.lowerBound
                    for i in range where pieces.text[i] == replacement && i > start {
                        scratch.append(start..<i)
                        start = i
                    }
                    if start < range.upperBound { scratch.append(start..<range.upperBound) }
                }
                swap(&pieces.ranges, &scratch)
            }
        }
    }

    /// Every piece split around `pattern`'s matches.
    private static func split(_ pieces: inout Pieces, pattern: SplitPattern, behavior: SplitBehavior, invert: Bool,
                              scratch: inout [Range<Int>]) {
        scratch.removeAll(keepingCapacity: true)
        pieces.text.withUnsafeBufferPointer { text in
            var found: [Range<Int>] = []
            for range in pieces.ranges {
                found.removeAll(keepingCapacity: true)
                pattern.matches(in: text, range, into: &found)
                split(range, matches: found, behavior: behavior, invert: invert, into: &scratch)
            }
        }
        swap(&pieces.ranges, &scratch)
    }

    /// Splits `range` around `matches` (sorted, disjoint) as `behavior` says, dropping empty pieces.
    static func split(_ range: Range<Int>, matches: [Range<Int>], behavior: SplitBehavior, invert: Bool,
                      into out: inout [Range<Int>]) {
        // (range, is a delimiter) in order, covering `range`.
        var parts: [(Range<Int>, Bool)] = []
        var cursor = range.lowerBound
        for m in matches {
            if cursor < m.lowerBound { parts.append((cursor..<m.lowerBound, invert)) }
            parts.append((m, !invert))
            cursor = m.upperBound
        }
        if cursor < range.upperBound { parts.append((cursor..<range.upperBound, invert)) }
        switch behavior {
        case .isolated:
            for (r, _) in parts { out.append(r) }
        case .removed:
            for (r, delimiter) in parts where !delimiter { out.append(r) }
        case .mergedWithPrevious:
            // A delimiter joins the piece before it, unless that one was a delimiter too.
            let first = out.count
            var previousWasDelimiter = false
            for (r, delimiter) in parts {
                if delimiter && !previousWasDelimiter && out.count > first {
                    out[out.count - 1] = out[out.count - 1].lowerBound..<r.upperBound
                } else {
                    out.append(r)
                }
                previousWasDelimiter = delimiter
            }
        case .mergedWithNext:
            // A delimiter joins the piece after it, unless that one is a delimiter too.
            var reversed: [Range<Int>] = []
            var nextWasDelimiter = false
            for (r, delimiter) in parts.reversed() {
                if delimiter && !nextWasDelimiter && !reversed.isEmpty {
                    reversed[reversed.count - 1] = r.lowerBound..<reversed[reversed.count - 1].upperBound
                } else {
                    reversed.append(r)
                }
                nextWasDelimiter = delimiter
            }
            out += reversed.reversed()
        case .contiguous:
            // Runs of delimiters become one piece.
            var pending: (Range<Int>, Bool)? = nil
            for (r, delimiter) in parts {
                if delimiter, let p = pending, p.1 {
                    pending = (p.0.lowerBound..<r.upperBound, true)
                } else {
                    if let p = pending { out.append(p.0) }
                    pending = (r, delimiter)
                }
            }
            if let p = pending { out.append(p.0) }
        }
    }

    /// Puts `scalar` before every piece (or only the first) that does not already start with `guardScalar`.
    private static func prefix(_ pieces: inout Pieces, with scalar: UInt32, onlyFirst: Bool, unlessStartsWith guardScalar: UInt32) {
        var text: [UInt32] = []
        text.reserveCapacity(pieces.text.count + pieces.ranges.count)
        var ranges: [Range<Int>] = []
        ranges.reserveCapacity(pieces.ranges.count)
        for (n, r) in pieces.ranges.enumerated() {
            let start = text.count
            if (!onlyFirst || n == 0) && (r.isEmpty || pieces.text[r.lowerBound] != guardScalar) { text.append(scalar) }
            text += pieces.text[r]
            ranges.append(start..<text.count)
        }
        pieces = Pieces(text: text, ranges: ranges)
    }
}
