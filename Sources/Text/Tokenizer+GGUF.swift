import GGUF
import JSON

extension Tokenizer {
    /// The pre-tokenizer llama.cpp runs for each `tokenizer.ggml.pre` name this reads, written as
    /// the tokenizer.json its model ships with writes it.
    static func ggufPreTokenizerJSON(_ name: String) throws(TokenizerError) -> JSONValue {
        let byteLevel: JSONValue = ["type": "ByteLevel", "add_prefix_space": false, "trim_offsets": true, "use_regex": true]
        switch name {
        case "gpt2", "default", "olmo", "mpt":
            return byteLevel
        case "smollm", "starcoder", "refact", "codeshell":
            return ["type": "Sequence", "pretokenizers": [["type": "Digits", "individual_digits": true], byteLevel]]
        case "qwen2":
            let qwen = #"(?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}| ?[^\s\p{L}\p{N}]+[\r\n]*|\s*[\r\n]+|\s+(?!\S)|\s+"#
            return ["type": "Sequence", "pretokenizers": [
                ["type": "Split", "pattern": ["Regex": .string(qwen)], "behavior": "Isolated", "invert": false],
                ["type": "ByteLevel", "add_prefix_space": false, "trim_offsets": false, "use_regex": false]]]
        default:
            throw .unsupported("GGUF tokenizer.ggml.pre \"\(name)\"")
        }
    }

    /// The tokenizer.json a GGUF file's tokenizer is (byte-level BPE: vocabulary, merges, control
    /// tokens as special added tokens, the pre-tokenizer its `tokenizer.ggml.pre` names, a BOS
    /// template when `add_bos_token` says so), for a Hugging Face checkpoint made from the file.
    public static func tokenizerJSON(gguf file: GGUFFile) throws(TokenizerError) -> JSONValue {
        let where_ = "GGUF \(file.path)"
        guard let kind = file.string("tokenizer.ggml.model") else { throw .invalid("\(where_): no tokenizer.ggml.model") }
        guard kind == "gpt2" else { throw .unsupported("\(where_): tokenizer.ggml.model \"\(kind)\" (only \"gpt2\" byte-level BPE)") }
        guard let tokens = file.strings("tokenizer.ggml.tokens") else { throw .invalid("\(where_): tokenizer.ggml.tokens is not a list of strings") }
        guard let merges = file.strings("tokenizer.ggml.merges") else { throw .invalid("\(where_): tokenizer.ggml.merges is not a list of strings") }
        let types = file.metadata["tokenizer.ggml.token_type"]?.array?.map { $0.int ?? 1 } ?? []
        guard types.isEmpty || types.count == tokens.count else {
            throw .invalid("\(where_): \(types.count) token types for \(tokens.count) tokens")
        }
        var vocab: [String: JSONValue] = [:]
        for (i, t) in tokens.enumerated() where vocab[t] == nil { vocab[t] = .int(i) }
        var added: [JSONValue] = []
        for (i, type) in types.enumerated() where type == 3 || type == 4 {
            added.append(["id": .int(i), "content": .string(tokens[i]), "single_word": false, "lstrip": false, "rstrip": false,
                          "normalized": false, "special": .bool(type == 3)])
        }
        var post: JSONValue = .null
        if file.metadata["tokenizer.ggml.add_bos_token"]?.bool == true, let bos = file.int("tokenizer.ggml.bos_token_id") {
            guard bos >= 0, bos < tokens.count else { throw .invalid("\(where_): bos_token_id \(bos) outside the vocabulary") }
            let name = JSONValue.string(tokens[bos])
            post = ["type": "TemplateProcessing", "single": [["SpecialToken": ["id": name, "type_id": 0]], ["Sequence": ["id": "A", "type_id": 0]]],
                    "pair": [["SpecialToken": ["id": name, "type_id": 0]], ["Sequence": ["id": "A", "type_id": 0]], ["Sequence": ["id": "B", "type_id": 1]]],
                    "special_tokens": .object([tokens[bos]: ["id": name, "ids": [.int(bos)], "tokens": [name]]])]
        }
        return [
            "version": "1.0", "truncation": .null, "padding": .null, "added_tokens": .array(added), "normalizer": .null,
            "pre_tokenizer": try ggufPreTokenizerJSON(file.string("tokenizer.ggml.pre") ?? "default"),
            "post_processor": post,
            "decoder": ["type": "ByteLevel", "add_prefix_space": true, "trim_offsets": true, "use_regex": true],
            "model": ["type": "BPE", "dropout": .null, "unk_token": .null, "continuing_subword_prefix": .null, "end_of_word_suffix": .null,
                      "fuse_unk": false, "byte_fallback": false, "ignore_merges": false,
                      "vocab": .object(vocab), "merges": .array(merges.map { .string($0) })],
        ]
    }

    /// tokenizer_config.json for the same checkpoint: the chat template, BOS/EOS by name.
    public static func tokenizerConfigJSON(gguf file: GGUFFile) -> JSONValue {
        let tokens = file.strings("tokenizer.ggml.tokens") ?? []
        func name(_ key: String) -> JSONValue {
            guard let id = file.int(key), id >= 0, id < tokens.count else { return .null }
            return .string(tokens[id])
        }
        var config: [String: JSONValue] = [
            "tokenizer_class": "PreTrainedTokenizerFast", "clean_up_tokenization_spaces": false,
            "bos_token": name("tokenizer.ggml.bos_token_id"), "eos_token": name("tokenizer.ggml.eos_token_id"),
            "pad_token": name("tokenizer.ggml.padding_token_id"), "unk_token": name("tokenizer.ggml.unknown_token_id"),
            "add_bos_token": .bool(file.metadata["tokenizer.ggml.add_bos_token"]?.bool ?? false),
        ]
        if let template = file.string("tokenizer.chat_template") { config["chat_template"] = .string(template) }
        if let context = file.int((file.string("general.architecture") ?? "llama") + ".context_length") { config["model_max_length"] = .int(context) }
        return .object(config)
    }

    /// Loads the tokenizer a GGUF file carries in its metadata (`tokenizer.ggml.*`): byte-level BPE
    /// (`tokenizer.ggml.model` "gpt2"); control tokens (type 3) become special added tokens,
    /// user-defined ones (type 4) plain added tokens; a BOS is added when `add_bos_token` says so.
    convenience init(gguf path: String) throws(TokenizerError) {
        let file: GGUFFile
        do { file = try GGUFFile(path: path) } catch { throw .invalid(error.description) }
        try self.init(gguf: file)
    }

    /// The tokenizer of an already read GGUF file: the tokenizer.json `tokenizerJSON(gguf:)` writes
    /// for it, loaded as any other, so what `eaas model import` writes is what is served here.
    public convenience init(gguf file: GGUFFile) throws(TokenizerError) {
        try self.init(json: try Tokenizer.tokenizerJSON(gguf: file))
    }
}
