import Platform
import Foundation
import Testing
@testable import Text

/// Every tokenizer gives `tokenizers`' ids on every corpus string, and decodes them to its text.
@Suite(.enabled(if: TokenizerReferences.available, Comment(rawValue: TokenizerReferences.skipMessage)))
struct TokenizerReferenceTests {
    struct Comparison: Sendable {
        var strings = 0, corpus = 0, idMismatches = 0, decodeMismatches = 0, lossless = 0, qualifying = 0
        var messages: [String] = []
    }

    /// The whole comparison, off the concurrency pool (seconds of CPU in a debug build).
    static func compare(_ name: String) throws -> Comparison {
        let references = TokenizerReferences.value
        guard let entry = references.entries.first(where: { $0.name == name }) else { throw TokenizerError.invalid("no reference entry \(name)") }
        let tokenizer = try Tokenizer(contentsOf: entry.load)
        let rows = try references.rows(entry)
        var c = Comparison()
        c.strings = rows.count
        c.corpus = references.corpus.count
        let addedContents = tokenizer.addedByID.values.map(\.content)
        let usesMetaspace = tokenizer.id(for: "\u{2581}") != nil
        for (text, row) in zip(references.corpus, rows) {
            let ids = tokenizer.encode(text)
            if ids != row.ids {
                c.idMismatches += 1
                if c.idMismatches <= 3 { c.messages.append("\(name): ids of \(text.debugDescription)\n ours \(ids)\n tokenizers \(row.ids)") }
            }
            let decoded = tokenizer.decode(row.ids)
            if decoded != row.decoded {
                c.decodeMismatches += 1
                if c.decodeMismatches <= 3 { c.messages.append("\(name): decode of \(row.ids)\n ours \(decoded.debugDescription)\n tokenizers \(row.decoded.debugDescription)") }
            }
            // Lossless where the tokenizer can be: no added token's text inside, no literal "▁" for
            // a metaspace vocabulary, and already NFC where the normalizer makes it NFC.
            let nfc = String(decoding: text._nfcCodeUnits, as: UTF8.self)
            let bytes = Array(text.utf8)
            if !addedContents.contains(where: { bytes.containsBytes(of: $0) }) && !(usesMetaspace && bytes.containsBytes(of: "\u{2581}"))
                && (tokenizer.normalizer == nil || Array(nfc.unicodeScalars) == Array(text.unicodeScalars)) {
                c.qualifying += 1
                if tokenizer.decode(ids, skipSpecialTokens: true) == text {
                    c.lossless += 1
                } else if c.qualifying - c.lossless <= 3 {
                    c.messages.append("\(name): \(text.debugDescription) decodes to \(tokenizer.decode(ids, skipSpecialTokens: true).debugDescription)")
                }
            }
        }
        return c
    }

    @Test(arguments: ["qwen2", "deepseek-v3", "olmoe", "mistral", "smollm2"])
    func idsAndDecodesEqualTokenizers(_ name: String) async throws {
        let c = try await offPool { try Self.compare(name) }
        for message in c.messages { Issue.record(Comment(rawValue: message)) }
        #expect(c.strings == c.corpus)
        #expect(c.corpus >= 10_000)
        #expect(c.idMismatches == 0, "\(name): \(c.idMismatches) of \(c.strings) strings encode differently")
        #expect(c.decodeMismatches == 0, "\(name): \(c.decodeMismatches) of \(c.strings) decodes differ")
        #expect(c.lossless == c.qualifying, "\(name): \(c.qualifying - c.lossless) of \(c.qualifying) strings do not decode to themselves")
        #expect(c.qualifying >= 3_000, "\(name): only \(c.qualifying) strings could be checked for a lossless round trip")
    }
}

extension [UInt8] {
    /// Byte-wise substring search (Swift's String.contains matches whole grapheme clusters only).
    func containsBytes(of needle: String) -> Bool {
        let n = Array(needle.utf8)
        guard !n.isEmpty, n.count <= count else { return n.isEmpty }
        for i in 0...(count - n.count) where self[i] == n[0] && self[i..<i + n.count].elementsEqual(n) { return true }
        return false
    }
}
