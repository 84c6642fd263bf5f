import Testing
@testable import Text

/// Streaming detokenization on the real tokenizers: every piece is whole characters, and the pieces
/// joined are the full decode, for emoji and CJK split across byte-level tokens.
@Suite(.enabled(if: TokenizerReferences.available, Comment(rawValue: TokenizerReferences.skipMessage)))
struct IncrementalDecoderTests {
    static let texts = [
        "Hello, world! 😀👍🏽 👨‍👩‍👧‍👦 🇫🇷", "你好，世界！我们今天学习自然语言处理。", "日本語のテキスト、ひらがなとカタカナ",
        "emoji at the end 🤖", " leading space and  two spaces", "\u{1d518}\u{1d52b} math letters, 𠀀 rare CJK",
        "mixed: café 北京 🧠 done.\n\nNew paragraph.",
    ]

    @Test(arguments: ["qwen2", "deepseek-v3", "olmoe", "mistral", "smollm2"])
    func piecesJoinToTheFullDecode(_ name: String) throws {
        let entry = try #require(TokenizerReferences.value.entries.first { $0.name == name })
        let tokenizer = try Tokenizer(contentsOf: entry.load)
        var heldBack = 0
        for text in Self.texts {
            let ids = tokenizer.encode(text, addSpecialTokens: false)
            var decoder = IncrementalDecoder(tokenizer: tokenizer)
            var pieces: [String] = []
            for id in ids {
                let piece = decoder.append(id)
                if piece.isEmpty { heldBack += 1 }
                #expect(!piece.unicodeScalars.contains("\u{FFFD}"), "\(name): a piece with a broken character in \(text)")
                pieces.append(piece)
            }
            pieces.append(decoder.finish())
            #expect(pieces.joined() == tokenizer.decode(ids), "\(name): \(pieces) for \(text.debugDescription)")
            #expect(pieces.joined() == text, "\(name): \(text.debugDescription) streams as \(pieces.joined().debugDescription)")
        }
        // Byte-level tokenizers split emoji over tokens; the decoder must have held some back.
        #expect(heldBack > 0, "\(name): no token was ever held back")
    }

    @Test func anIncompleteEndComesOutAsDecodeWritesIt() throws {
        let entry = try #require(TokenizerReferences.value.entries.first { $0.name == "qwen2" })
        let tokenizer = try Tokenizer(contentsOf: entry.load)
        // A character the vocabulary has no token for comes as several byte tokens.
        let ids = try #require(["\u{20000}", "\u{1D518}", "\u{1FAE8}", "\u{E0041}"].lazy
            .map { tokenizer.encode($0, addSpecialTokens: false) }.first { $0.count > 1 })
        var decoder = IncrementalDecoder(tokenizer: tokenizer)
        #expect(decoder.append(ids[0]) == "")
        #expect(decoder.finish() == tokenizer.decode([ids[0]]))
    }
}
