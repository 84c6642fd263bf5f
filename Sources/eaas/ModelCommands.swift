import ArgumentParser
import Foundation
import GGUF
import JSON
import MoE
import Text

/// `eaas model init`: writes a seeded random checkpoint of a supported architecture.
struct ModelInitCommand: ParsableCommand {
    static let configuration = CommandConfiguration(
        commandName: "init",
        abstract: "Write a seeded random checkpoint (config.json + safetensors) of an MoE architecture.",
        discussion: "Architectures: \(Architecture.allCases.map(\.cliName).joined(separator: ", ")). The same options and seed give the same files."
    )

    @Option(help: "Architecture: \(Architecture.allCases.map(\.cliName).joined(separator: ", ")).")
    var arch: String
    @Option(help: "Decoder layers.") var layers: Int
    @Option(help: "Routed experts per MoE layer.") var experts: Int
    @Option(name: .customLong("top-k"), help: "Experts per token.") var topK: Int
    @Option(help: "Hidden size.") var hidden: Int
    @Option(help: "Routed expert FFN size (default: hidden/2, a multiple of 8).") var ffn: Int?
    @Option(name: .customLong("shared-experts"), help: "Shared experts (default: 2 DeepSeek-V2, 1 DeepSeek-V3, 4 Qwen2-MoE, else none).")
    var sharedExperts: Int?
    @Option(name: .customLong("dense-layers"), help: "Leading dense layers (DeepSeek, Qwen).") var denseLayers: Int = 0
    @Option(help: "Vocabulary size.") var vocab: Int = 1024
    @Option(help: "Attention heads (default: hidden/64).") var heads: Int?
    @Option(name: .customLong("kv-heads"), help: "Key/value heads (default: heads/4).") var kvHeads: Int?
    @Option(help: "Expert groups for group-limited routing (DeepSeek).") var groups: Int?
    @Option(help: "Weight dtype: f32, f16 or bf16.") var dtype: String = "bf16"
    @Option(help: "Random seed.") var seed: UInt64 = 0
    @Option(help: "Topics: the vocabulary in N ranges whose tokens the router sends to experts e ≡ topic (mod N) in every MoE layer, and whose decoding stays in the topic, so skewed traffic comes through the gate (0: none).")
    var topics: Int = 0
    @Option(name: .customLong("expert-layout"), help: "How routed experts are stored: per-expert (as save_pretrained writes) or fused (3-D tensors).")
    var expertLayout: String = "per-expert"
    @Option(name: .customLong("max-shard-size"), help: "Split the weights into shards of at most this size (e.g. 4GB, 500MB, 40KB).")
    var maxShardSize: String = "4GB"
    @Option(help: "Directory to write (created if needed).") var out: String
    @Flag(help: "Overwrite a checkpoint already in the output directory.") var force = false

    func validate() throws {
        guard Architecture(cliName: arch) != nil else {
            throw ValidationError("unknown --arch '\(arch)'; supported: \(Architecture.allCases.map(\.cliName).joined(separator: ", "))")
        }
        guard DType(userSpelling: dtype) != nil else { throw ValidationError("--dtype '\(dtype)' is not f32, f16 or bf16") }
        guard CheckpointLayout.ExpertStorage(rawValue: expertLayout) != nil else {
            throw ValidationError("--expert-layout '\(expertLayout)' is not per-expert or fused")
        }
        guard (try? ByteSize.parse(maxShardSize)) != nil else { throw ValidationError("--max-shard-size '\(maxShardSize)' is not a size like 4GB or 500MB") }
        let existing = Checkpoint.weightFiles(in: out) + (FileManager.default.fileExists(atPath: out + "/config.json") ? ["config.json"] : [])
        if !force, !existing.isEmpty {
            throw ValidationError("\(out) already holds a checkpoint (\(existing.joined(separator: ", "))); pass --force to replace it")
        }
    }

    func run() throws {
        var spec = RandomModelSpec(architecture: Architecture(cliName: arch)!, layers: layers, experts: experts, topK: topK, hidden: hidden)
        spec.expertFFN = ffn
        spec.sharedExperts = sharedExperts
        spec.denseLayers = denseLayers
        spec.vocab = vocab
        spec.heads = heads
        spec.keyValueHeads = kvHeads
        spec.groups = groups
        spec.dtype = DType(userSpelling: dtype)!
        spec.seed = seed
        spec.topics = topics
        // --force: the old weight files go first, so that no stale shard or index outlives the new
        // checkpoint. They are unlinked, never truncated: a process that has them mapped keeps them.
        for name in Checkpoint.weightFiles(in: out) { try FileManager.default.removeItem(atPath: out + "/" + name) }
        let config = try RandomModel.write(spec, to: out, experts: CheckpointLayout.ExpertStorage(rawValue: expertLayout)!,
                                           maxShardBytes: try ByteSize.parse(maxShardSize))
        let checkpoint = try Checkpoint(directory: out)
        print("wrote \(config.architecture.rawValue) to \(out): \(config.layerCount) layers (\(config.moeLayers.count) MoE), \(config.expertCount) experts, top-\(config.router.topK), hidden \(config.hiddenSize), expert FFN \(config.expertFFNSize), \(spec.dtype.rawValue), \(ByteSize.format(checkpoint.totalBytes)) in \(checkpoint.files.count) file(s)"
              + (topics > 0 ? ", \(topics) topics" : ""))
    }
}

/// `eaas model inspect`: what a checkpoint's config and tensors say, and whether they agree.
struct ModelInspectCommand: ParsableCommand {
    static let configuration = CommandConfiguration(
        commandName: "inspect",
        abstract: "Print what a checkpoint's config.json and safetensors say, and check every MoE layer's tensors."
    )

    @Argument(help: "Checkpoint directory.") var directory: String
    @Flag(help: "List every tensor.") var tensors = false

    func run() throws {
        let config = try ModelConfig.load(directory: directory)
        let checkpoint = try Checkpoint(directory: directory)
        let report = ModelReport(config: config, checkpoint: checkpoint).render(listTensors: tensors)
        print(report.text)
        // The check is this command's own: a checkpoint that fails it exits non-zero, saying why last.
        guard report.problems.isEmpty else {
            print("eaas model inspect: \(directory) failed the check: \(report.problems.count) problem(s), first: \(report.problems[0])")
            throw ExitCode(1)
        }
    }
}

/// The text `eaas model inspect` prints.
struct ModelReport {
    let config: ModelConfig
    let checkpoint: Checkpoint

    /// The text, and the problems the check found (empty when it passed).
    func render(listTensors: Bool) -> (text: String, problems: [String]) {
        var lines: [String] = []
        let r = config.router
        lines.append("architecture   \(config.architecture.rawValue) (\(config.architecture.cliName))")
        lines.append("hidden         \(config.hiddenSize), vocab \(config.vocabSize), layers \(config.layerCount)")
        let a = config.attention
        if let latent = a.latent {
            lines.append("attention      latent (MLA): \(a.heads) heads, q rank \(latent.queryRank.map(String.init) ?? "none"), kv rank \(latent.keyValueRank), qk \(latent.qkNopeHeadDim)+\(latent.qkRopeHeadDim) rope, v \(latent.valueHeadDim)")
        } else {
            lines.append("attention      \(a.heads) heads, \(a.keyValueHeads) kv heads, head dim \(a.headDim)\(a.qkvBias ? ", qkv bias" : "")\(a.qkNorm == .none ? "" : ", q/k norm \(a.qkNorm.rawValue)"), rope theta \(a.ropeTheta)")
        }
        lines.append("moe layers     \(IntegerRanges.format(config.moeLayers)) of 0-\(config.layerCount - 1); dense FFN \(config.denseFFNSize)")
        lines.append("experts        \(r.experts) routed × FFN \(config.expertFFNSize), top-\(r.topK), activation \(config.activation.rawValue)")
        if config.sharedFFNSize > 0 {
            lines.append("shared         FFN \(config.sharedFFNSize)\(config.sharedExpertGated ? ", sigmoid-gated" : "")")
        }
        var gating = "\(r.scoring.rawValue) scores"
        if r.usesCorrectionBias { gating += " + correction bias" }
        if r.groupRanking != .none { gating += ", \(r.groupsPerToken) of \(r.groups) groups by \(r.groupRanking == .maxScore ? "max score" : "sum of top two")" }
        gating += r.renormalize ? ", renormalised" : ", not renormalised"
        if r.scalingFactor != 1 { gating += ", scaled ×\(r.scalingFactor)" }
        lines.append("gating         \(gating)")

        var byType: [DType: Int] = [:]
        for name in checkpoint.tensorNames { if let info = checkpoint.info(name) { byType[info.dtype, default: 0] += info.dataOffsets.count } }
        let types = byType.sorted { $0.value > $1.value }.map { "\($0.key.rawValue) \(ByteSize.format($0.value))" }.joined(separator: ", ")
        lines.append("tensors        \(checkpoint.tensorNames.count) in \(checkpoint.files.count) file(s), \(ByteSize.format(checkpoint.totalBytes)) (\(types))")

        let loader = ExpertLoader(checkpoint: checkpoint, config: config)
        var problems: [String] = []
        var namings = Set<String>()
        var expertBytes = 0
        for layer in config.moeLayers {
            do {
                namings.insert(try loader.naming(layer: layer).rawValue)
                _ = try loader.router(layer: layer)
                _ = try loader.sharedExpert(layer: layer)
                for e in 0..<config.expertCount { expertBytes += try loader.expert(layer: layer, expert: e).byteCount }
            } catch {
                problems.append("layer \(layer): \(error)")
            }
        }
        lines.append("expert naming  \(namings.sorted().joined(separator: "; "))")
        lines.append("expert weights \(ByteSize.format(expertBytes)) (\(ByteSize.format(expertBytes / max(1, config.expertCount))) per expert shard across all MoE layers)")
        if problems.isEmpty {
            lines.append("check          every MoE layer's router, experts and shared experts are present with the right shapes")
        } else {
            lines.append("check          \(problems.count) problem(s):")
            lines += problems.map { "  " + $0 }
        }
        if listTensors {
            for name in checkpoint.tensorNames {
                if let info = checkpoint.info(name) { lines.append("  \(name) \(info.dtype.rawValue) \(info.shape)") }
            }
        }
        return (lines.joined(separator: "\n"), problems)
    }
}

/// Byte sizes as people write them.
enum ByteSize {
    struct Invalid: Error {}

    /// `4GB`, `500MB`, `40KB`, `123` (bytes); powers of 1024.
    static func parse(_ text: String) throws -> Int {
        let upper = text.uppercased().trimmingCharacters(in: .whitespaces)
        for (suffix, factor) in [("GIB", 1 << 30), ("MIB", 1 << 20), ("KIB", 1 << 10), ("GB", 1 << 30), ("MB", 1 << 20), ("KB", 1 << 10), ("B", 1)] where upper.hasSuffix(suffix) {
            guard let value = Double(upper.dropLast(suffix.count)), value > 0, value * Double(factor) < 0x1p62 else { throw Invalid() }
            return Int(value * Double(factor))
        }
        guard let value = Int(upper), value > 0 else { throw Invalid() }
        return value
    }

    static func format(_ bytes: Int) -> String {
        let b = Double(bytes)
        if b >= Double(1 << 30) { return String(format: "%.2f GiB", b / Double(1 << 30)) }
        if b >= Double(1 << 20) { return String(format: "%.1f MiB", b / Double(1 << 20)) }
        if b >= Double(1 << 10) { return String(format: "%.1f KiB", b / Double(1 << 10)) }
        return "\(bytes) B"
    }
}

/// `eaas model import`: a dense GGUF model upcycled into a Mixtral-format checkpoint (see `GGUFUpcycle`),
/// with its tokenizer and chat template written as Hugging Face files beside it.
struct ModelImportCommand: ParsableCommand {
    static let configuration = CommandConfiguration(
        commandName: "import",
        abstract: "Upcycle a dense llama GGUF model into a Mixtral checkpoint whose experts are copies of its MLP.",
        discussion: """
            Writes config.json, safetensors, tokenizer.json and tokenizer_config.json (with the chat template) into --out.
            GGUF tensors F32, F16, BF16, Q8_0, Q4_0 and Q4_1 are dequantized; other types are refused by name. With identical
            experts and renormalised top-k weights each MoE layer equals the dense MLP, so the model answers as the original.
            """
    )

    @Option(help: "The GGUF model file.") var gguf: String
    @Option(name: .customLong("upcycle-experts"), help: "Experts per layer (copies of the dense MLP).") var experts: Int = 4
    @Option(name: .customLong("top-k"), help: "Experts per token.") var topK: Int = 2
    @Option(help: "Weight dtype written: f32, f16 or bf16.") var dtype: String = "bf16"
    @Option(help: "Seed of the router's weights.") var seed: UInt64 = 0
    @Option(help: "Directory to write (created if needed).") var out: String
    @Flag(help: "Overwrite a checkpoint already in the output directory.") var force = false

    func validate() throws {
        guard DType(userSpelling: dtype) != nil else { throw ValidationError("--dtype '\(dtype)' is not f32, f16 or bf16") }
        guard experts >= 1, experts <= 256 else { throw ValidationError("--upcycle-experts must be between 1 and 256") }
        guard topK >= 1, topK <= experts else { throw ValidationError("--top-k must be between 1 and --upcycle-experts (\(experts))") }
        let existing = Checkpoint.weightFiles(in: out) + (FileManager.default.fileExists(atPath: out + "/config.json") ? ["config.json"] : [])
        if !force, !existing.isEmpty {
            throw ValidationError("\(out) already holds a checkpoint (\(existing.joined(separator: ", "))); pass --force to replace it")
        }
    }

    func run() throws {
        let file: GGUFFile
        do { file = try GGUFFile(path: gguf) } catch { throw CommandFailure("--gguf: \(error)") }
        // The tokenizer first: a file whose tokenizer cannot be served is refused before gigabytes are written.
        let tokenizerJSON: JSONValue
        do {
            tokenizerJSON = try Tokenizer.tokenizerJSON(gguf: file)
            _ = try Tokenizer(json: tokenizerJSON)
        } catch { throw CommandFailure("--gguf: \(error)") }
        var options = GGUFUpcycle.Options(experts: experts, topK: topK)
        options.dtype = DType(userSpelling: dtype)!
        options.seed = seed
        let started = Date()
        let plan: GGUFUpcycle.Plan
        do {
            plan = try GGUFUpcycle.write(file, to: out, options: options) { step in
                FileHandle.standardError.write(Data("\r\(step)   ".utf8))
            }
        } catch { throw CommandFailure("\(error)") }
        FileHandle.standardError.write(Data("\n".utf8))
        try tokenizerJSON.compactData.write(to: URL(fileURLWithPath: out + "/tokenizer.json"), options: .atomic)
        try Tokenizer.tokenizerConfigJSON(gguf: file).serialized(indent: 2).data(using: .utf8)!
            .write(to: URL(fileURLWithPath: out + "/tokenizer_config.json"), options: .atomic)
        print("wrote MixtralForCausalLM to \(out): \(plan.layers) layers, \(experts) experts (copies of the MLP), top-\(topK), hidden \(plan.hidden), "
              + "FFN \(plan.ffn), vocabulary \(plan.vocab)\(plan.tied ? " (tied)" : ""), \(dtype), in \(String(format: "%.1f", Date().timeIntervalSince(started))) s")
    }
}
