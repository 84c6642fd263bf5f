import JSON
import Testing
@testable import Text

/// The regex subset matches as Oniguruma does (leftmost-first alternation, greedy runs given back
/// for a lookahead), and refuses what it does not implement by name.
struct SplitPatternTests {
    static func pieces(_ pattern: String, _ text: String) throws -> [String] {
        let compiled = try SplitPattern(pattern)
        let scalars = text.unicodeScalars.map(\.value)
        var found: [Range<Int>] = []
        scalars.withUnsafeBufferPointer { compiled.matches(in: $0, 0..<scalars.count, into: &found) }
        return found.map { r in Normalizer.string(Array(scalars[r])) }
    }

    @Test(arguments: [
        // GPT-2: contractions first, a space joins the word after it, whitespace before a word is left for it.
        (PreTokenizer.gpt2Pattern, "I'll go  now", ["I", "'ll", " go", " ", " now"]),
        (PreTokenizer.gpt2Pattern, "x   \n", ["x", "   \n"]),
        (PreTokenizer.gpt2Pattern, "a1234 b", ["a", "1234", " b"]),
        (PreTokenizer.gpt2Pattern, "héllo wörld!!", ["héllo", " wörld", "!!"]),
        // Qwen2: case-insensitive contractions, digits one by one, newlines kept with punctuation.
        (#"(?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}| ?[^\s\p{L}\p{N}]+[\r\n]*|\s*[\r\n]+|\s+(?!\S)|\s+"#,
         "IT'S 42.\n\nok", ["IT", "'S", " ", "4", "2", ".\n\n", "ok"]),
        (#"\p{N}{1,3}"#, "1234567", ["123", "456", "7"]),
        (#"[\u4e00-\u9fa5]+"#, "ab中文cd字", ["中文", "字"]),
        (#"\s+(?!\S)|\s+"#, "a  b", [" ", " "]),  // the run gives back its last space to the lookahead
        (#"(?=b)b|a"#, "ab", ["a", "b"]),
        (#"a*?b"#, "aab", ["aab"]),
        (#"[^\s\p{L}]+"#, "a,.; b", [",.;"]),
        (#"\w+"#, "snake_case 12", ["snake_case", "12"]),
    ])
    func matchesAsOniguruma(_ pattern: String, _ text: String, _ expected: [String]) throws {
        #expect(try Self.pieces(pattern, text) == expected)
    }

    @Test(arguments: [
        ("^a", "anchors"), ("a$", "anchors"), (#"(?<name>a)"#, "group kind"), (#"\p{Greek}"#, "Unicode property"),
        ("(a", "unterminated group"), ("a)", "unbalanced"), ("[a", "unterminated '['"), (#"[\S]"#, "negated escape"),
        ("a++", "possessive"), ("(a*)*", "can match nothing"), (#"\1"#, "escape"), ("*a", "nothing to repeat"),
        ("a{3,1}", "quantifier"),
    ])
    func refusesByName(_ pattern: String, _ named: String) {
        #expect {
            _ = try SplitPattern(pattern)
        } throws: { error in
            "\(error)".contains(named)
        }
    }
}

/// What the loader refuses, and that it says what.
struct TokenizerLoadTests {
    static func minimal(_ overrides: [String: String]) -> String {
        var parts: [String: String] = [
            "model": #"{"type": "BPE", "vocab": {"a": 0, "b": 1, "ab": 2}, "merges": ["a b"]}"#,
            "normalizer": "null", "pre_tokenizer": "null", "decoder": "null", "post_processor": "null", "added_tokens": "[]",
        ]
        for (k, v) in overrides { parts[k] = v }
        return "{" + parts.map { "\"\($0.key)\": \($0.value)" }.joined(separator: ", ") + "}"
    }

    static func load(_ overrides: [String: String]) throws -> Tokenizer {
        try Tokenizer(json: try JSONValue.parse(minimal(overrides)))
    }

    @Test func mergesAndAddedTokens() throws {
        let tok = try Self.load(["added_tokens": #"[{"id": 3, "content": "<x>", "special": true, "normalized": false}]"#])
        #expect(tok.encode("abba") == [2, 1, 0])
        #expect(tok.encode("a<x>b") == [0, 3, 1])
        #expect(tok.decode([0, 3, 1], skipSpecialTokens: true) == "a b")
        #expect(tok.vocabularySize == 4)
    }

    @Test(arguments: [
        (["model": #"{"type": "WordPiece", "vocab": {}}"#], "model type \"WordPiece\""),
        (["model": #"{"type": "Unigram", "vocab": []}"#], "model type \"Unigram\""),
        (["normalizer": #"{"type": "BertNormalizer"}"#], "normalizer \"BertNormalizer\""),
        (["normalizer": #"{"type": "NFKC"}"#], "normalizer \"NFKC\""),
        (["pre_tokenizer": #"{"type": "Whitespace"}"#], "pre-tokenizer \"Whitespace\""),
        (["pre_tokenizer": #"{"type": "Split", "pattern": {"Regex": "^x"}, "behavior": "Isolated"}"#], "anchors"),
        (["pre_tokenizer": #"{"type": "Sequence", "pretokenizers": [{"type": "ByteLevel"}, {"type": "Digits"}]}"#], "must come last"),
        (["decoder": #"{"type": "WordPiece"}"#], "decoder \"WordPiece\""),
        (["post_processor": #"{"type": "RobertaProcessing"}"#], "post-processor \"RobertaProcessing\""),
        (["model": #"{"type": "BPE", "vocab": {"a": 0}, "merges": ["a b"]}"#], "not in the vocabulary"),
        (["model": #"{"type": "BPE", "vocab": {"a": 0}, "merges": ["ab"]}"#], "has no space"),
        (["model": #"{"type": "BPE", "vocab": {"a": 0}, "merges": [], "continuing_subword_prefix": "@@"}"#], "continuing_subword_prefix"),
        (["added_tokens": #"[{"id": 5, "content": "x", "single_word": true}]"#], "single_word"),
        (["post_processor": #"{"type": "TemplateProcessing", "single": [{"SpecialToken": {"id": "<s>"}}, {"Sequence": {"id": "A"}}], "special_tokens": {}}"#], "not in special_tokens"),
    ])
    func refusesByName(_ overrides: [String: String], _ named: String) {
        #expect {
            _ = try Self.load(overrides)
        } throws: { error in
            "\(error)".contains(named)
        }
    }

    @Test func byteFallbackAndFusedUnknown() throws {
        var vocab = #"{"<unk>": 0, "a": 1"#
        for b in 0..<256 { vocab += ", \"\(ByteLevelAlphabet.fallbackToken(UInt8(b)))\": \(b + 2)" }
        vocab += "}"
        let model = #"{"type": "BPE", "vocab": "# + vocab + #", "merges": [], "unk_token": "<unk>", "byte_fallback": true}"#
        let fallback = try Self.load(["model": model,
                                      "decoder": #"{"type": "Sequence", "decoders": [{"type": "ByteFallback"}, {"type": "Fuse"}]}"#])
        #expect(fallback.encode("aé") == [1, 0xc3 + 2, 0xa9 + 2])
        #expect(fallback.decode(fallback.encode("aé€")) == "aé€")
        #expect(fallback.decode([0xc3 + 2]) == "\u{FFFD}")  // a lone lead byte: one replacement per byte
        let fused = try Self.load(["model": #"{"type": "BPE", "vocab": {"<unk>": 0, "a": 1}, "merges": [], "unk_token": "<unk>", "fuse_unk": true}"#])
        #expect(fused.encode("xyaz") == [0, 1, 0])
    }
}
