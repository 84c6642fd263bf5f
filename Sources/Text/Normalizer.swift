import JSON

/// A tokenizer.json `normalizer`: rewrites each piece of text that is not an added token before it
/// is split. Refused at load by name: NFD, NFKC, NFKD, BertNormalizer, StripAccents, Precompiled,
/// NMT, Strip.
indirect enum Normalizer: Sendable {
    case nfc
    case lowercase
    case prepend([UInt32])
    case replace(pattern: [UInt32], content: [UInt32])
    case sequence([Normalizer])

    init(json: JSONValue, path: String = "normalizer") throws(TokenizerError) {
        guard let type = json["type"]?.string else { throw .invalid("\(path): no \"type\"") }
        switch type {
        case "NFC": self = .nfc
        case "Lowercase": self = .lowercase
        case "Prepend":
            guard let s = json["prepend"]?.string else { throw .invalid("\(path).prepend: not a string") }
            self = .prepend(s.unicodeScalars.map(\.value))
        case "Replace":
            guard let content = json["content"]?.string else { throw .invalid("\(path).content: not a string") }
            guard let pattern = json["pattern"]?["String"]?.string else {
                throw .unsupported("\(path): Replace with a Regex pattern (only {\"String\": …} patterns)")
            }
            guard !pattern.isEmpty else { throw .invalid("\(path).pattern: empty") }
            self = .replace(pattern: pattern.unicodeScalars.map(\.value), content: content.unicodeScalars.map(\.value))
        case "Sequence":
            guard let items = json["normalizers"]?.array else { throw .invalid("\(path).normalizers: not a list") }
            var parts: [Normalizer] = []
            for (i, item) in items.enumerated() { parts.append(try Normalizer(json: item, path: "\(path).normalizers[\(i)]")) }
            self = .sequence(parts)
        default:
            throw .unsupported("\(path): normalizer \"\(type)\"")
        }
    }

    func apply(_ text: inout [UInt32]) {
        switch self {
        case .nfc:
            // Every scalar below U+0300 is its own normal form and composes with nothing before it.
            guard text.contains(where: { $0 >= 0x300 }) else { return }
            // The standard library's NFC (the one String comparison uses). Foundation's
            // precomposedStringWithCanonicalMapping is not used: on Linux it composes an astral
            // scalar's low 16 bits (U+10058 + U+0307 became U+1E8A).
            text = String(decoding: Normalizer.string(text)._nfcCodeUnits, as: UTF8.self).unicodeScalars.map(\.value)
        case .lowercase:
            if text.allSatisfy({ $0 < 0x80 }) {
                for i in text.indices where text[i] >= 0x41 && text[i] <= 0x5a { text[i] += 0x20 }
            } else {
                text = Normalizer.string(text).lowercased().unicodeScalars.map(\.value)
            }
        case .prepend(let prefix):
            if !text.isEmpty { text.insert(contentsOf: prefix, at: 0) }
        case .replace(let pattern, let content):
            text = Normalizer.replacing(pattern, with: content, in: text)
        case .sequence(let parts):
            for part in parts { part.apply(&text) }
        }
    }

    static func string(_ scalars: [UInt32]) -> String {
        var s = String.UnicodeScalarView()
        for c in scalars { s.append(Unicode.Scalar(c)!) }
        return String(s)
    }

    static func replacing(_ pattern: [UInt32], with content: [UInt32], in text: [UInt32]) -> [UInt32] {
        guard text.count >= pattern.count else { return text }
        if pattern.count == 1 && content.count == 1 {
            var out = text
            for i in out.indices where out[i] == pattern[0] { out[i] = content[0] }
            return out
        }
        var out: [UInt32] = []
        out.reserveCapacity(text.count)
        var i = 0
        while i < text.count {
            if i + pattern.count <= text.count && text[i..<i + pattern.count].elementsEqual(pattern) {
                out += content
                i += pattern.count
            } else {
                out.append(text[i])
                i += 1
            }
        }
        return out
    }
}
