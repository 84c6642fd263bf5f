import JSON

/// A tokenizer.json `decoder`: turns the tokens of a list of ids back into text, as tokenizers'
/// `decode_chain` does (each step maps the list of token strings to a new list, then they are
/// joined). Refused at load by name: WordPiece, BPEDecoder, CTC.
indirect enum TokenDecoder: Sendable {
    case byteLevel
    case byteFallback
    case fuse
    case strip(content: String, start: Int, stop: Int)
    case replace(pattern: String, content: String)
    case metaspace(replacement: String, prependScheme: PreTokenizer.MetaspacePrepend)
    case sequence([TokenDecoder])

    init(json: JSONValue, path: String = "decoder") throws(TokenizerError) {
        guard let type = json["type"]?.string else { throw .invalid("\(path): no \"type\"") }
        switch type {
        case "ByteLevel": self = .byteLevel
        case "ByteFallback": self = .byteFallback
        case "Fuse": self = .fuse
        case "Strip":
            guard let content = json["content"]?.string, content.unicodeScalars.count == 1 else { throw .invalid("\(path).content: not one character") }
            self = .strip(content: content, start: json["start"]?.int ?? 0, stop: json["stop"]?.int ?? 0)
        case "Replace":
            guard let content = json["content"]?.string else { throw .invalid("\(path).content: not a string") }
            guard let pattern = json["pattern"]?["String"]?.string, !pattern.isEmpty else {
                throw .unsupported("\(path): Replace with a Regex pattern (only {\"String\": …} patterns)")
            }
            self = .replace(pattern: pattern, content: content)
        case "Metaspace":
            guard let r = json["replacement"]?.string, r.unicodeScalars.count == 1 else { throw .invalid("\(path).replacement: not one character") }
            var scheme = PreTokenizer.MetaspacePrepend.always
            if let s = json["prepend_scheme"]?.string {
                guard let parsed = PreTokenizer.MetaspacePrepend(rawValue: s) else { throw .unsupported("\(path).prepend_scheme \"\(s)\"") }
                scheme = parsed
            } else if json["add_prefix_space"]?.bool == false {
                scheme = .never
            }
            self = .metaspace(replacement: r, prependScheme: scheme)
        case "Sequence":
            guard let items = json["decoders"]?.array else { throw .invalid("\(path).decoders: not a list") }
            var parts: [TokenDecoder] = []
            for (i, item) in items.enumerated() { parts.append(try TokenDecoder(json: item, path: "\(path).decoders[\(i)]")) }
            self = .sequence(parts)
        default:
            throw .unsupported("\(path): decoder \"\(type)\"")
        }
    }

    func decodeChain(_ tokens: [String]) -> [String] {
        switch self {
        case .sequence(let parts):
            var t = tokens
            for part in parts { t = part.decodeChain(t) }
            return t
        case .byteLevel:
            // Every character back to its byte; a token with a character outside the alphabet
            // (an added token such as "<｜end▁of▁sentence｜>") keeps its own UTF-8 bytes.
            var bytes: [UInt8] = []
            for token in tokens {
                let start = bytes.count
                var ok = true
                for s in token.unicodeScalars {
                    guard let b = ByteLevelAlphabet.byte(for: s.value) else { ok = false; break }
                    bytes.append(b)
                }
                if !ok {
                    bytes.removeSubrange(start...)
                    bytes += Array(token.utf8)
                }
            }
            return [String(decoding: bytes, as: UTF8.self)]
        case .byteFallback:
            var out: [String] = []
            var pending: [UInt8] = []
            func flush() {
                guard !pending.isEmpty else { return }
                if let s = String(validating: pending, as: UTF8.self) {
                    out.append(s)
                } else {
                    out += Array(repeating: "\u{FFFD}", count: pending.count)
                }
                pending.removeAll()
            }
            for token in tokens {
                if let b = TokenDecoder.fallbackByte(token) {
                    pending.append(b)
                } else {
                    flush()
                    out.append(token)
                }
            }
            flush()
            return out
        case .fuse:
            return [tokens.joined()]
        case .strip(let content, let start, let stop):
            // By scalars, as Rust's chars: a leading space stays separate from a combining mark after it.
            let c = content.unicodeScalars.first!
            return tokens.map { token in
                var scalars = Array(token.unicodeScalars)
                var head = 0
                while head < start && head < scalars.count && scalars[head] == c { head += 1 }
                var tail = 0
                while tail < stop && tail < scalars.count - head && scalars[scalars.count - 1 - tail] == c { tail += 1 }
                scalars = Array(scalars[head..<(scalars.count - tail)])
                var out = String.UnicodeScalarView()
                out.append(contentsOf: scalars)
                return String(out)
            }
        case .replace(let pattern, let content):
            return tokens.map { $0.replacingAll(pattern, with: content) }
        case .metaspace(let replacement, let scheme):
            return tokens.enumerated().map { n, token in
                var t = token.replacingAll(replacement, with: " ").unicodeScalars
                if n == 0 && scheme != .never && t.first == " " { t.removeFirst() }
                return String(t)
            }
        }
    }

    /// The byte of a `<0xAB>` token, else nil.
    static func fallbackByte(_ token: String) -> UInt8? {
        let u = Array(token.utf8)
        guard u.count == 6, u[0] == 0x3c, u[1] == 0x30, u[2] == 0x78, u[5] == 0x3e else { return nil }
        return UInt8(String(decoding: u[3..<5], as: UTF8.self), radix: 16)
    }
}

extension String {
    /// Every occurrence of `pattern` (non-empty, non-overlapping, left to right) replaced.
    func replacingAll(_ pattern: String, with content: String) -> String {
        let text = Array(unicodeScalars.map(\.value))
        let out = Normalizer.replacing(pattern.unicodeScalars.map(\.value), with: content.unicodeScalars.map(\.value), in: text)
        return Normalizer.string(out)
    }
}
