import GGUF

extension Tokenizer {
    /// The pre-tokenizer llama.cpp runs for each `tokenizer.ggml.pre` name this reads, written as
    /// the tokenizer.json its model ships with would write it.
    static func ggufPreTokenizer(_ name: String) throws(TokenizerError) -> PreTokenizer {
        let byteLevel = PreTokenizer.byteLevel(addPrefixSpace: false, regex: try SplitPattern(PreTokenizer.gpt2Pattern))
        switch name {
        case "gpt2", "default", "olmo", "mpt":
            return byteLevel
        case "smollm", "starcoder", "refact", "codeshell":
            return .sequence([.digits(individual: true), byteLevel])
        case "qwen2":
            let qwen = #"(?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}| ?[^\s\p{L}\p{N}]+[\r\n]*|\s*[\r\n]+|\s+(?!\S)|\s+"#
            return .sequence([.split(try SplitPattern(qwen), .isolated, invert: false),
                              .byteLevel(addPrefixSpace: false, regex: nil)])
        default:
            throw .unsupported("GGUF tokenizer.ggml.pre \"\(name)\"")
        }
    }

    /// Loads the tokenizer a GGUF file carries in its metadata (`tokenizer.ggml.*`): byte-level BPE
    /// (`tokenizer.ggml.model` "gpt2"); control tokens (type 3) become special added tokens,
    /// user-defined ones (type 4) plain added tokens; a BOS is added when `add_bos_token` says so.
    convenience init(gguf path: String) throws(TokenizerError) {
        let file: GGUFFile
        do { file = try GGUFFile(path: path) } catch { throw .invalid(error.description) }
        try self.init(gguf: file)
    }

    /// The tokenizer of an already read GGUF file.
    public convenience init(gguf file: GGUFFile) throws(TokenizerError) {
        let where_ = "GGUF \(file.path)"
        guard let kind = file.string("tokenizer.ggml.model") else { throw .invalid("\(where_): no tokenizer.ggml.model") }
        guard kind == "gpt2" else { throw .unsupported("\(where_): tokenizer.ggml.model \"\(kind)\" (only \"gpt2\" byte-level BPE)") }
        guard let tokens = file.strings("tokenizer.ggml.tokens") else { throw .invalid("\(where_): tokenizer.ggml.tokens is not a list of strings") }
        guard let mergeLines = file.strings("tokenizer.ggml.merges") else { throw .invalid("\(where_): tokenizer.ggml.merges is not a list of strings") }
        let types = file.metadata["tokenizer.ggml.token_type"]?.array?.map { $0.int ?? 1 } ?? []
        guard types.isEmpty || types.count == tokens.count else {
            throw .invalid("\(where_): \(types.count) token types for \(tokens.count) tokens")
        }
        var vocab: [String: Int32] = [:]
        vocab.reserveCapacity(tokens.count)
        for (i, t) in tokens.enumerated() where vocab[t] == nil { vocab[t] = Int32(i) }
        var merges: [(String, String)] = []
        merges.reserveCapacity(mergeLines.count)
        for (i, line) in mergeLines.enumerated() {
            guard let space = line.firstIndex(of: " ") else { throw .invalid("\(where_): merge \(i) \"\(line)\" has no space") }
            merges.append((String(line[..<space]), String(line[line.index(after: space)...])))
        }
        let model = try BytePairModel(vocab: vocab, merges: merges, unknownToken: nil, byteFallback: false,
                                      fuseUnknown: false, ignoreMerges: false)
        var added: [AddedToken] = []
        for (i, type) in types.enumerated() where type == 3 || type == 4 {
            added.append(AddedToken(id: Int32(i), content: tokens[i], special: type == 3, normalized: false,
                                    leftStrip: false, rightStrip: false))
        }
        let pre = try Tokenizer.ggufPreTokenizer(file.string("tokenizer.ggml.pre") ?? "default")
        var prefix: [Int32] = []
        if file.metadata["tokenizer.ggml.add_bos_token"]?.bool == true, let bos = file.int("tokenizer.ggml.bos_token_id") {
            guard bos >= 0, bos < tokens.count else { throw .invalid("\(where_): bos_token_id \(bos) outside the vocabulary") }
            prefix = [Int32(bos)]
        }
        try self.init(model: model, normalizer: nil, preTokenizer: pre, decoder: .byteLevel, added: added,
                      prefix: prefix, suffix: [])
    }
}
