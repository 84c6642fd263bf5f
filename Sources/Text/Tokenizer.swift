import Foundation
import JSON

/// A tokenizer as Hugging Face's `tokenizer.json` defines one, for the byte-level and
/// SentencePiece-style BPE families (Qwen2, DeepSeek, GPT-NeoX/OLMo, Mistral, Llama-style GGUF):
/// added tokens, normalizer, pre-tokenizer, BPE model, post-processor and decoder. It gives the
/// same ids as the `tokenizers` library on the same file; components it lacks are refused at load
/// by name, never approximated.
///
/// Thread-safe: encoding keeps no state between calls.
public final class Tokenizer: Sendable {
    let model: BytePairModel
    let normalizer: Normalizer?
    let preTokenizer: PreTokenizer?
    let decoder: TokenDecoder?
    /// Token ids placed before and after the text when special tokens are added (TemplateProcessing).
    let prefixIDs: [Int32]
    let suffixIDs: [Int32]
    /// Added tokens matched in the raw text, and those matched after normalization.
    let rawMatcher: AddedTokenMatcher
    let normalizedMatcher: AddedTokenMatcher
    /// id → added token (content, special flag), for decoding.
    let addedByID: [Int32: AddedToken]
    let byteLevel: Bool

    /// The number of ids (model vocabulary and added tokens).
    public let vocabularySize: Int

    /// Loads `tokenizer.json`, a GGUF model file, or a model directory holding `tokenizer.json`.
    public convenience init(contentsOf path: String) throws(TokenizerError) {
        var isDirectory: ObjCBool = false
        guard FileManager.default.fileExists(atPath: path, isDirectory: &isDirectory) else {
            throw .unreadable("\(path): no such file or directory")
        }
        if isDirectory.boolValue {
            try self.init(contentsOf: (path as NSString).appendingPathComponent("tokenizer.json"))
            return
        }
        if path.hasSuffix(".gguf") {
            try self.init(gguf: path)
            return
        }
        let data: Data
        do { data = try Data(contentsOf: URL(fileURLWithPath: path), options: .mappedIfSafe) } catch {
            throw .unreadable("\(path): \(error.localizedDescription)")
        }
        let json: JSONValue
        do { json = try JSONValue.parse(data) } catch { throw .invalid("\(path): \(error)") }
        try self.init(json: json)
    }

    /// Builds a tokenizer from a parsed `tokenizer.json`.
    public convenience init(json: JSONValue) throws(TokenizerError) {
        guard let modelJSON = json["model"] else { throw .invalid("no \"model\"") }
        let type = modelJSON["type"]?.string ?? "BPE"
        guard type == "BPE" else { throw .unsupported("model type \"\(type)\" (only BPE)") }
        if let dropout = modelJSON["dropout"]?.double, dropout > 0 { throw .unsupported("model.dropout \(dropout)") }
        for key in ["continuing_subword_prefix", "end_of_word_suffix"] {
            if let s = modelJSON[key]?.string, !s.isEmpty { throw .unsupported("model.\(key) \"\(s)\"") }
        }
        guard let vocabJSON = modelJSON["vocab"]?.object else { throw .invalid("model.vocab: not an object") }
        var vocab: [String: Int32] = [:]
        vocab.reserveCapacity(vocabJSON.count)
        for (token, value) in vocabJSON {
            guard let id = value.int, id >= 0, id < Int(Int32.max) else { throw .invalid("model.vocab[\(token)]: not an id") }
            vocab[token] = Int32(id)
        }
        guard let mergesJSON = modelJSON["merges"]?.array else { throw .invalid("model.merges: not a list") }
        var merges: [(String, String)] = []
        merges.reserveCapacity(mergesJSON.count)
        for (i, m) in mergesJSON.enumerated() {
            if let s = m.string {
                guard let space = s.firstIndex(of: " ") else { throw .invalid("model.merges[\(i)]: \"\(s)\" has no space") }
                merges.append((String(s[..<space]), String(s[s.index(after: space)...])))
            } else if let pair = m.array, pair.count == 2, let l = pair[0].string, let r = pair[1].string {
                merges.append((l, r))
            } else {
                throw .invalid("model.merges[\(i)]: neither \"a b\" nor [a, b]")
            }
        }
        let model = try BytePairModel(
            vocab: vocab, merges: merges, unknownToken: modelJSON["unk_token"]?.string,
            byteFallback: modelJSON["byte_fallback"]?.bool ?? false, fuseUnknown: modelJSON["fuse_unk"]?.bool ?? false,
            ignoreMerges: modelJSON["ignore_merges"]?.bool ?? false)

        var added: [AddedToken] = []
        for (i, t) in (json["added_tokens"]?.array ?? []).enumerated() {
            guard let id = t["id"]?.int, id >= 0, id < Int(Int32.max), let content = t["content"]?.string else {
                throw .invalid("added_tokens[\(i)]: needs an id and a content")
            }
            if t["single_word"]?.bool == true { throw .unsupported("added_tokens[\(i)] (\(content)): single_word") }
            added.append(AddedToken(
                id: Int32(id), content: content, special: t["special"]?.bool ?? false,
                normalized: t["normalized"]?.bool ?? !(t["special"]?.bool ?? false),
                leftStrip: t["lstrip"]?.bool ?? false, rightStrip: t["rstrip"]?.bool ?? false))
        }

        let normalizer = try json["normalizer"].flatMap { $0.isNull ? nil : $0 }.map { j throws(TokenizerError) in try Normalizer(json: j) }
        let preTokenizer = try json["pre_tokenizer"].flatMap { $0.isNull ? nil : $0 }.map { j throws(TokenizerError) in try PreTokenizer(json: j) }
        let decoder = try json["decoder"].flatMap { $0.isNull ? nil : $0 }.map { j throws(TokenizerError) in try TokenDecoder(json: j) }
        var prefix: [Int32] = []
        var suffix: [Int32] = []
        if let post = json["post_processor"], !post.isNull {
            try Tokenizer.postProcessor(post, path: "post_processor", prefix: &prefix, suffix: &suffix)
        }
        try self.init(model: model, normalizer: normalizer, preTokenizer: preTokenizer, decoder: decoder,
                      added: added, prefix: prefix, suffix: suffix)
    }

    init(model: BytePairModel, normalizer: Normalizer?, preTokenizer: PreTokenizer?, decoder: TokenDecoder?,
         added: [AddedToken], prefix: [Int32], suffix: [Int32]) throws(TokenizerError) {
        self.model = model
        self.normalizer = normalizer
        self.preTokenizer = preTokenizer
        self.decoder = decoder
        self.prefixIDs = prefix
        self.suffixIDs = suffix
        rawMatcher = AddedTokenMatcher(added.filter { !$0.normalized })
        normalizedMatcher = AddedTokenMatcher(added.filter { $0.normalized })
        addedByID = Dictionary(added.map { ($0.id, $0) }, uniquingKeysWith: { first, _ in first })
        byteLevel = preTokenizer?.isByteLevel ?? false
        vocabularySize = max(model.tokens.count, Int(added.map(\.id).max() ?? -1) + 1)
        for id in prefix + suffix where Int(id) >= vocabularySize {
            throw .invalid("post_processor: special token id \(id) is outside the vocabulary (\(vocabularySize))")
        }
    }

    /// TemplateProcessing (its `single` template), ByteLevel (changes no id) and Sequence of them.
    private static func postProcessor(_ json: JSONValue, path: String, prefix: inout [Int32], suffix: inout [Int32]) throws(TokenizerError) {
        guard let type = json["type"]?.string else { throw .invalid("\(path): no \"type\"") }
        switch type {
        case "ByteLevel":
            return
        case "Sequence":
            for (i, p) in (json["processors"]?.array ?? []).enumerated() {
                try postProcessor(p, path: "\(path).processors[\(i)]", prefix: &prefix, suffix: &suffix)
            }
        case "TemplateProcessing":
            guard let single = json["single"]?.array else { throw .invalid("\(path).single: not a list") }
            let specials = json["special_tokens"]?.object ?? [:]
            var seenSequence = false
            for (i, piece) in single.enumerated() {
                if piece["Sequence"] != nil {
                    guard !seenSequence else { throw .unsupported("\(path).single: the sequence twice") }
                    seenSequence = true
                } else if let name = piece["SpecialToken"]?["id"]?.string {
                    guard let ids = specials[name]?["ids"]?.array?.compactMap(\.int), !ids.isEmpty else {
                        throw .invalid("\(path).single[\(i)]: special token \(name) is not in special_tokens")
                    }
                    let converted = ids.map { Int32($0) }
                    if seenSequence { suffix += converted } else { prefix += converted }
                } else {
                    throw .invalid("\(path).single[\(i)]: neither Sequence nor SpecialToken")
                }
            }
        default:
            throw .unsupported("\(path): post-processor \"\(type)\"")
        }
    }

    // MARK: - Encoding

    /// The ids of `text`; with `addSpecialTokens` the post-processor's tokens (a BOS) are added.
    public func encode(_ text: String, addSpecialTokens: Bool = true) -> [Int] {
        encodeIDs(text, addSpecialTokens: addSpecialTokens).map { Int($0) }
    }

    /// The ids of `text` as 32-bit values (the hot path; `encode` widens them).
    public func encodeIDs(_ text: String, addSpecialTokens: Bool = true) -> [Int32] {
        var ids: [Int32] = []
        ids.reserveCapacity(text.utf8.count / 3 + 4)
        if addSpecialTokens { ids += prefixIDs }
        let scalars = text.unicodeScalars.map(\.value)
        var scratch = EncodeScratch()
        for segment in rawMatcher.split(scalars, 0..<scalars.count) {
            if let token = segment.token { ids.append(token.id); continue }
            var normal = Array(scalars[segment.range])
            normalizer?.apply(&normal)
            for part in normalizedMatcher.split(normal, 0..<normal.count) {
                if let token = part.token { ids.append(token.id); continue }
                encodeText(Array(normal[part.range]), into: &ids, scratch: &scratch)
            }
        }
        if addSpecialTokens { ids += suffixIDs }
        return ids
    }

    struct EncodeScratch {
        var ranges: [Range<Int>] = []
        var symbols: [Int32] = []
        var bytes: [UInt8] = []
    }

    private func encodeText(_ text: [UInt32], into ids: inout [Int32], scratch: inout EncodeScratch) {
        guard !text.isEmpty else { return }
        var pieces = Pieces(text: text, ranges: [0..<text.count])
        preTokenizer?.apply(&pieces, scratch: &scratch.ranges)
        for range in pieces.ranges where !range.isEmpty {
            if byteLevel {
                scratch.bytes.removeAll(keepingCapacity: true)
                for c in pieces.text[range] {
                    if c < 0x80 {
                        scratch.bytes.append(UInt8(c))
                    } else {
                        UTF8.encode(Unicode.Scalar(c)!) { scratch.bytes.append($0) }
                    }
                }
                scratch.bytes.withUnsafeBufferPointer { model.encode(bytes: $0, into: &ids, symbols: &scratch.symbols) }
            } else {
                model.encode(scalars: pieces.text[range], into: &ids, symbols: &scratch.symbols)
            }
        }
    }

    // MARK: - Decoding

    /// The token string of `id` (an added token's content, else the model's token), nil if unknown.
    public func token(for id: Int) -> String? {
        guard id >= 0, id < Int(Int32.max) else { return nil }
        if let added = addedByID[Int32(id)] { return added.content }
        guard id < model.tokens.count, !model.tokens[id].isEmpty else { return nil }
        return model.tokens[id]
    }

    /// The id of a token string (an added token's content or a vocabulary entry), nil if none.
    public func id(for token: String) -> Int? {
        if let t = rawMatcher.tokens.first(where: { $0.content == token }) ?? normalizedMatcher.tokens.first(where: { $0.content == token }) {
            return Int(t.id)
        }
        return model.vocab[token].map { Int($0) }
    }

    /// True for added tokens marked special (`<|im_end|>`, `<s>` …).
    public func isSpecial(_ id: Int) -> Bool {
        guard id >= 0, id < Int(Int32.max) else { return false }
        return addedByID[Int32(id)]?.special ?? false
    }

    /// The text of `ids`, as tokenizers' `decode` gives it. Ids outside the vocabulary are skipped.
    public func decode(_ ids: [Int], skipSpecialTokens: Bool = false) -> String {
        var tokens: [String] = []
        tokens.reserveCapacity(ids.count)
        for id in ids {
            if skipSpecialTokens && isSpecial(id) { continue }
            if let t = token(for: id) { tokens.append(t) }
        }
        guard let decoder else { return tokens.joined(separator: " ") }
        return decoder.decodeChain(tokens).joined()
    }
}
