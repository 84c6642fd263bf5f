import Foundation
import Testing
@testable import Text

/// Every tokenizer gives `tokenizers`' ids on every corpus string, and decodes them to its text.
@Suite(.enabled(if: TokenizerReferences.available, Comment(rawValue: TokenizerReferences.skipMessage)))
struct TokenizerReferenceTests {
    @Test(arguments: ["qwen2", "deepseek-v3", "olmoe", "mistral", "smollm2"])
    func idsAndDecodesEqualTokenizers(_ name: String) throws {
        let references = TokenizerReferences.value
        let entry = try #require(references.entries.first { $0.name == name })
        let tokenizer = try Tokenizer(contentsOf: entry.load)
        let rows = try references.rows(entry)
        #expect(rows.count == references.corpus.count)
        #expect(references.corpus.count >= 10_000)
        var idMismatches = 0
        var decodeMismatches = 0
        var lossless = 0
        var qualifying = 0
        let addedContents = tokenizer.addedByID.values.map(\.content)
        let usesMetaspace = tokenizer.id(for: "\u{2581}") != nil
        for (text, row) in zip(references.corpus, rows) {
            let ids = tokenizer.encode(text)
            if ids != row.ids {
                idMismatches += 1
                if idMismatches <= 3 { Issue.record("\(name): ids of \(text.debugDescription)\n ours \(ids)\n tokenizers \(row.ids)") }
            }
            let decoded = tokenizer.decode(row.ids)
            if decoded != row.decoded {
                decodeMismatches += 1
                if decodeMismatches <= 3 { Issue.record("\(name): decode of \(row.ids)\n ours \(decoded.debugDescription)\n tokenizers \(row.decoded.debugDescription)") }
            }
            // Lossless where the tokenizer can be: no added token's text inside, no literal "▁" for
            // a metaspace vocabulary, and already NFC where the normalizer makes it NFC.
            let nfc = String(decoding: text._nfcCodeUnits, as: UTF8.self)
            let bytes = Array(text.utf8)
            if !addedContents.contains(where: { bytes.containsBytes(of: $0) }) && !(usesMetaspace && bytes.containsBytes(of: "\u{2581}"))
                && (tokenizer.normalizer == nil || Array(nfc.unicodeScalars) == Array(text.unicodeScalars)) {
                qualifying += 1
                if tokenizer.decode(ids, skipSpecialTokens: true) == text {
                    lossless += 1
                } else if qualifying - lossless <= 3 {
                    Issue.record("\(name): \(text.debugDescription) decodes to \(tokenizer.decode(ids, skipSpecialTokens: true).debugDescription)")
                }
            }
        }
        #expect(idMismatches == 0, "\(name): \(idMismatches) of \(rows.count) strings encode differently")
        #expect(decodeMismatches == 0, "\(name): \(decodeMismatches) of \(rows.count) decodes differ")
        #expect(lossless == qualifying, "\(name): \(qualifying - lossless) of \(qualifying) strings do not decode to themselves")
        #expect(qualifying >= 3_000, "\(name): only \(qualifying) strings could be checked for a lossless round trip")
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
