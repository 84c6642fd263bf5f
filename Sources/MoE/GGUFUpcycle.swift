import Foundation
import GGUF
import JSON

/// Turns a dense llama-architecture GGUF model into a Mixtral-format Hugging Face checkpoint whose
/// `experts` experts are each a copy of the dense MLP, behind a seeded router: with identical
/// experts and top-k weights renormalised to 1 (Mixtral's gating), each MoE layer computes what the
/// dense MLP did, so the model answers as the original, and its experts can run on expert pods.
///
/// Weights are dequantized (F32, F16, BF16, Q8_0, Q4_0, Q4_1) and written in `dtype`; q/k
/// projections are un-permuted from GGUF's interleaved-pair RoPE layout back to the half-split one
/// transformers' llama and Mixtral use.
public enum GGUFUpcycle {
    public struct Options: Sendable {
        public var experts: Int
        public var topK: Int
        public var dtype: DType = .bf16
        public var seed: UInt64 = 0
        /// Largest safetensors shard.
        public var maxShardBytes: Int = 2 << 30

        public init(experts: Int, topK: Int) {
            self.experts = experts
            self.topK = topK
        }
    }

    public struct Failure: Error, CustomStringConvertible {
        public let description: String
    }

    /// The Mixtral `config.json` and the tensors of the upcycled model (names, shapes), in writing order.
    public struct Plan {
        public let config: [String: JSONValue]
        public let layers: Int
        public let hidden: Int
        public let ffn: Int
        public let heads: Int
        public let kvHeads: Int
        public let vocab: Int
        public let tied: Bool
    }

    public static func plan(_ file: GGUFFile, options: Options) throws -> Plan {
        guard let arch = file.string("general.architecture") else { throw Failure(description: "\(file.path): no general.architecture") }
        guard arch == "llama" else { throw Failure(description: "\(file.path): architecture \"\(arch)\" (only dense \"llama\" models are upcycled)") }
        func int(_ key: String) throws -> Int {
            guard let v = file.int("llama." + key), v > 0 else { throw Failure(description: "\(file.path): llama.\(key) is missing or not a positive integer") }
            return v
        }
        let layers = try int("block_count"), hidden = try int("embedding_length"), ffn = try int("feed_forward_length")
        let heads = try int("attention.head_count")
        let kvHeads = file.int("llama.attention.head_count_kv") ?? heads
        guard hidden % heads == 0, kvHeads > 0, heads % kvHeads == 0 else {
            throw Failure(description: "\(file.path): \(heads) heads, \(kvHeads) key/value heads and hidden \(hidden) do not divide")
        }
        let headDim = hidden / heads
        if let rope = file.int("llama.rope.dimension_count"), rope != headDim {
            throw Failure(description: "\(file.path): rotary dimension \(rope) of a head of \(headDim) (partial rotary) is not supported")
        }
        if let scaling = file.string("llama.rope.scaling.type"), scaling != "none" {
            throw Failure(description: "\(file.path): llama.rope.scaling.type \"\(scaling)\" is not supported")
        }
        if file.metadata["llama.expert_count"] != nil { throw Failure(description: "\(file.path): already a mixture of experts (llama.expert_count)") }
        guard options.experts >= 1, options.topK >= 1, options.topK <= options.experts else {
            throw Failure(description: "--top-k \(options.topK) must be between 1 and --upcycle-experts \(options.experts)")
        }
        guard let embedding = file.tensor("token_embd.weight"), embedding.shape.count == 2, embedding.shape[0] == hidden else {
            throw Failure(description: "\(file.path): token_embd.weight is missing or not [\(hidden), vocab]")
        }
        let vocab = embedding.shape[1]
        let tied = file.tensor("output.weight") == nil
        let config: [String: JSONValue] = [
            "architectures": ["MixtralForCausalLM"], "model_type": "mixtral",
            "hidden_size": .int(hidden), "intermediate_size": .int(ffn), "num_hidden_layers": .int(layers),
            "num_attention_heads": .int(heads), "num_key_value_heads": .int(kvHeads), "head_dim": .int(headDim),
            "num_local_experts": .int(options.experts), "num_experts_per_tok": .int(options.topK),
            "hidden_act": "silu", "rms_norm_eps": .double(file.metadata["llama.attention.layer_norm_rms_epsilon"]?.double ?? 1e-5),
            "rope_theta": .double(file.metadata["llama.rope.freq_base"]?.double ?? 10000),
            "max_position_embeddings": .int(file.int("llama.context_length") ?? 4096), "vocab_size": .int(vocab),
            "tie_word_embeddings": .bool(tied), "sliding_window": .null, "attention_dropout": 0.0,
            "router_aux_loss_coef": 0.0, "output_router_logits": false,
            "bos_token_id": file.int("tokenizer.ggml.bos_token_id").map { .int($0) } ?? .null,
            "eos_token_id": file.int("tokenizer.ggml.eos_token_id").map { .int($0) } ?? .null,
            "torch_dtype": .string(options.dtype.torchName),
            "eaas_upcycled_from": .string((file.path as NSString).lastPathComponent),
        ]
        return Plan(config: config, layers: layers, hidden: hidden, ffn: ffn, heads: heads, kvHeads: kvHeads, vocab: vocab, tied: tied)
    }

    /// Rows of a q or k projection back from GGUF's order: within each head llama.cpp's converter
    /// put row (half, j) at 2j + half; transformers keeps half·(d/2) + j.
    static func unpermute(_ w: [Float], heads: Int, rows: Int, columns: Int) -> [Float] {
        let headRows = rows / heads, half = headRows / 2
        var out = [Float](repeating: 0, count: w.count)
        for h in 0..<heads {
            for j in 0..<half {
                for part in 0..<2 {
                    let from = (h * headRows + 2 * j + part) * columns
                    let to = (h * headRows + part * half + j) * columns
                    out.withUnsafeMutableBufferPointer { o in
                        w.withUnsafeBufferPointer { i in
                            (o.baseAddress! + to).update(from: i.baseAddress! + from, count: columns)
                        }
                    }
                }
            }
        }
        return out
    }

    /// Writes config.json and the safetensors of the upcycled model into `directory`.
    public static func write(_ file: GGUFFile, to directory: String, options: Options, progress: (String) -> Void = { _ in }) throws -> Plan {
        let plan = try plan(file, options: options)
        let dtype = options.dtype
        let (h, f, e) = (plan.hidden, plan.ffn, options.experts)
        let headDim = h / plan.heads
        var entries: [TensorEntry] = [TensorEntry(name: "model.embed_tokens.weight", dtype: dtype, shape: [plan.vocab, h])]
        for l in 0..<plan.layers {
            let p = "model.layers.\(l)."
            entries += [
                TensorEntry(name: p + "input_layernorm.weight", dtype: dtype, shape: [h]),
                TensorEntry(name: p + "self_attn.q_proj.weight", dtype: dtype, shape: [plan.heads * headDim, h]),
                TensorEntry(name: p + "self_attn.k_proj.weight", dtype: dtype, shape: [plan.kvHeads * headDim, h]),
                TensorEntry(name: p + "self_attn.v_proj.weight", dtype: dtype, shape: [plan.kvHeads * headDim, h]),
                TensorEntry(name: p + "self_attn.o_proj.weight", dtype: dtype, shape: [h, plan.heads * headDim]),
                TensorEntry(name: p + "post_attention_layernorm.weight", dtype: dtype, shape: [h]),
                TensorEntry(name: p + "block_sparse_moe.gate.weight", dtype: dtype, shape: [e, h]),
            ]
            for x in 0..<e {
                let q = p + "block_sparse_moe.experts.\(x)."
                entries += [TensorEntry(name: q + "w1.weight", dtype: dtype, shape: [f, h]), TensorEntry(name: q + "w2.weight", dtype: dtype, shape: [h, f]),
                            TensorEntry(name: q + "w3.weight", dtype: dtype, shape: [f, h])]
            }
        }
        entries.append(TensorEntry(name: "model.norm.weight", dtype: dtype, shape: [h]))
        if !plan.tied { entries.append(TensorEntry(name: "lm_head.weight", dtype: dtype, shape: [plan.vocab, h])) }

        try FileManager.default.createDirectory(atPath: directory, withIntermediateDirectories: true)
        let writer = try CheckpointWriter(directory: directory, entries: entries, maxShardBytes: options.maxShardBytes,
                                          metadata: ["format": "pt", "eaas_upcycled_from": (file.path as NSString).lastPathComponent])
        func tensor(_ name: String, _ shape: [Int]) throws -> [Float] {
            guard let info = file.tensor(name) else { throw Failure(description: "\(file.path): tensor \(name) is missing") }
            guard info.shape == shape else { throw Failure(description: "\(file.path): tensor \(name) is \(info.shape), expected \(shape) (GGUF order)") }
            do { return try file.floats(info) } catch { throw Failure(description: "\(error)") }
        }
        try writer.append("model.embed_tokens.weight", floats: try tensor("token_embd.weight", [h, plan.vocab]))
        var router = SeededNormal(seed: options.seed)
        for l in 0..<plan.layers {
            progress("layer \(l + 1) of \(plan.layers)")
            let p = "model.layers.\(l).", g = "blk.\(l)."
            try writer.append(p + "input_layernorm.weight", floats: try tensor(g + "attn_norm.weight", [h]))
            try writer.append(p + "self_attn.q_proj.weight", floats: unpermute(try tensor(g + "attn_q.weight", [h, plan.heads * headDim]),
                                                                             heads: plan.heads, rows: plan.heads * headDim, columns: h))
            try writer.append(p + "self_attn.k_proj.weight", floats: unpermute(try tensor(g + "attn_k.weight", [h, plan.kvHeads * headDim]),
                                                                             heads: plan.kvHeads, rows: plan.kvHeads * headDim, columns: h))
            try writer.append(p + "self_attn.v_proj.weight", floats: try tensor(g + "attn_v.weight", [h, plan.kvHeads * headDim]))
            try writer.append(p + "self_attn.o_proj.weight", floats: try tensor(g + "attn_output.weight", [plan.heads * headDim, h]))
            try writer.append(p + "post_attention_layernorm.weight", floats: try tensor(g + "ffn_norm.weight", [h]))
            try writer.append(p + "block_sparse_moe.gate.weight", floats: (0..<(e * h)).map { _ in Float(router.next() * 0.02) })
            let gate = try tensor(g + "ffn_gate.weight", [h, f]), up = try tensor(g + "ffn_up.weight", [h, f]), down = try tensor(g + "ffn_down.weight", [f, h])
            for x in 0..<e {
                let q = p + "block_sparse_moe.experts.\(x)."
                try writer.append(q + "w1.weight", floats: gate)
                try writer.append(q + "w2.weight", floats: down)
                try writer.append(q + "w3.weight", floats: up)
            }
        }
        try writer.append("model.norm.weight", floats: try tensor("output_norm.weight", [h]))
        if !plan.tied { try writer.append("lm_head.weight", floats: try tensor("output.weight", [h, plan.vocab])) }
        try writer.finish()
        let data = try JSONValue.object(plan.config).serialized(indent: 2).data(using: .utf8)!
        try data.write(to: URL(fileURLWithPath: directory + "/config.json"), options: .atomic)
        return plan
    }
}

/// Normal deviates from a seed (Box–Muller over SplitMix64), for the router's weights.
struct SeededNormal {
    var state: UInt64
    init(seed: UInt64) { state = seed &+ 0x9E37_79B9_7F4A_7C15 }

    mutating func uniform() -> Double {
        state &+= 0x9E37_79B9_7F4A_7C15
        var z = state
        z = (z ^ (z >> 30)) &* 0xBF58_476D_1CE4_E5B9
        z = (z ^ (z >> 27)) &* 0x94D0_49BB_1331_11EB
        z ^= z >> 31
        return (Double(z >> 11) + 0.5) / Double(1 << 53)
    }

    mutating func next() -> Double {
        let u1 = uniform(), u2 = uniform()
        return (-2 * log(u1)).squareRoot() * cos(2 * .pi * u2)
    }
}
