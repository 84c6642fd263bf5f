import Platform
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

    struct Streamed: Sendable {
        let text: String
        let pieces: [String]
        let decoded: String
    }

    /// Every text streamed id by id (off the concurrency pool: loading a vocabulary takes a while).
    static func stream(_ name: String) throws -> (results: [Streamed], heldBack: Int) {
        guard let entry = TokenizerReferences.value.entries.first(where: { $0.name == name }) else { throw TokenizerError.invalid("no entry \(name)") }
        let tokenizer = try Tokenizer(contentsOf: entry.load)
        var heldBack = 0
        var results: [Streamed] = []
        for text in texts {
            let ids = tokenizer.encode(text, addSpecialTokens: false)
            var decoder = IncrementalDecoder(tokenizer: tokenizer)
            var pieces: [String] = []
            for id in ids {
                let piece = decoder.append(id)
                if piece.isEmpty { heldBack += 1 }
                pieces.append(piece)
            }
            pieces.append(decoder.finish())
            results.append(Streamed(text: text, pieces: pieces, decoded: tokenizer.decode(ids)))
        }
        return (results, heldBack)
    }

    @Test(arguments: ["qwen2", "deepseek-v3", "olmoe", "mistral", "smollm2"])
    func piecesJoinToTheFullDecode(_ name: String) async throws {
        let (results, heldBack) = try await offPool { try Self.stream(name) }
        for r in results {
            #expect(!r.pieces.contains { $0.unicodeScalars.contains("\u{FFFD}") }, "\(name): a piece with a broken character in \(r.text)")
            #expect(r.pieces.joined() == r.decoded, "\(name): \(r.pieces) for \(r.text.debugDescription)")
            #expect(r.pieces.joined() == r.text, "\(name): \(r.text.debugDescription) streams as \(r.pieces.joined().debugDescription)")
        }
        // Byte-level tokenizers split emoji over tokens; the decoder must have held some back.
        #expect(heldBack > 0, "\(name): no token was ever held back")
    }

    @Test func anIncompleteEndComesOutAsDecodeWritesIt() async throws {
        let (first, finished, whole) = try await offPool { () throws -> (String, String, String) in
            guard let entry = TokenizerReferences.value.entries.first(where: { $0.name == "qwen2" }) else { throw TokenizerError.invalid("no qwen2") }
            let tokenizer = try Tokenizer(contentsOf: entry.load)
            // A character the vocabulary has no token for comes as several byte tokens.
            guard let ids = ["\u{20000}", "\u{1D518}", "\u{1FAE8}", "\u{E0041}"].lazy
                .map({ tokenizer.encode($0, addSpecialTokens: false) }).first(where: { $0.count > 1 }) else {
                throw TokenizerError.invalid("every candidate is one token")
            }
            var decoder = IncrementalDecoder(tokenizer: tokenizer)
            let first = decoder.append(ids[0])
            return (first, decoder.finish(), tokenizer.decode([ids[0]]))
        }
        #expect(first == "")
        #expect(finished == whole)
    }
}
