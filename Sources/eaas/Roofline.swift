import Foundation
import MoE

/// What one decode step of a checkpoint must read and compute, from its tensors: the bound a
/// benchmark's decode rate is compared against.
///
/// A decode step of `batch` sequences reads every non-expert weight once (attention, norms,
/// routers, shared experts, the LM head), one embedding row per sequence, the routed experts the
/// step's routing touched (measured, not assumed), and each sequence's KV cache; it computes two
/// FLOPs per weight a token uses (its top-k experts, not all that were read) plus attention over
/// its context. The roofline time is the larger of bytes ÷ read bandwidth and FLOPs ÷ peak.
struct StepCost {
    /// Bytes of one routed expert (gate, up and down), averaged over the checkpoint's experts.
    let expertBytes: Double
    /// Parameters of one routed expert.
    let expertParameters: Double
    /// Bytes and parameters of everything else a step reads whole (not the embedding table).
    let denseBytes: Double
    let denseParameters: Double
    /// One embedding row.
    let embeddingRowBytes: Double
    let config: ModelConfig
    /// Whether the checkpoint's weights are 16-bit floats (bf16 peak applies when bf16).
    let bf16: Bool

    init(directory: String) throws {
        config = try ModelConfig.load(directory: directory)
        let checkpoint = try Checkpoint(directory: directory)
        var routedBytes = 0.0, routedParameters = 0.0, totalBytes = 0.0, totalParameters = 0.0
        var embedding: TensorInfo?
        var lmHead = false
        var sawBF16 = false
        for file in checkpoint.files.values {
            for info in file.tensors.values {
                let parameters = Double(info.elementCount), bytes = parameters * Double(info.dtype.byteSize)
                totalBytes += bytes
                totalParameters += parameters
                if info.dtype == .bf16 { sawBF16 = true }
                if info.name.contains(".experts.") && !info.name.contains("shared_expert") {
                    routedBytes += bytes
                    routedParameters += parameters
                }
                if info.name.hasSuffix("embed_tokens.weight") { embedding = info }
                if info.name == "lm_head.weight" { lmHead = true }
            }
        }
        let experts = Double(max(1, config.expertCount * config.moeLayers.count))
        expertBytes = routedBytes / experts
        expertParameters = routedParameters / experts
        let embeddingBytes = embedding.map { Double($0.elementCount * $0.dtype.byteSize) } ?? 0
        let embeddingParameters = embedding.map { Double($0.elementCount) } ?? 0
        // A tied LM head reads the embedding table whole every step.
        denseBytes = totalBytes - routedBytes - (lmHead ? embeddingBytes : 0)
        denseParameters = totalParameters - routedParameters - (lmHead ? embeddingParameters : 0)
        embeddingRowBytes = embedding.map { Double($0.shape.last ?? 0) * Double($0.dtype.byteSize) } ?? 0
        bf16 = sawBF16
    }

    /// Bytes read by one decode step of `batch` sequences at average context `context`, with
    /// `expertsTouched` distinct routed experts run over all its layers.
    func bytes(batch: Int, context: Double, expertsTouched: Double) -> Double {
        let kv = Double(batch) * context * Double(config.layerCount) * Double(config.attention.keyValueHeads * config.attention.headDim * 2 * 4)
        return expertsTouched * expertBytes + denseBytes + Double(batch) * embeddingRowBytes + kv
    }

    /// FLOPs of one decode step.
    func flops(batch: Int, context: Double) -> Double {
        let perToken = 2 * (Double(config.router.topK * config.moeLayers.count) * expertParameters + denseParameters)
        let attention = 4 * context * Double(config.attention.heads * config.attention.headDim * config.layerCount)
        return Double(batch) * (perToken + attention)
    }

    /// The fastest this machine could decode: tokens/s of `batch` sequences.
    func rooflineTokensPerSecond(batch: Int, context: Double, expertsTouched: Double, limits: MachineLimits) -> Double {
        let peak = (bf16 ? limits.bf16GFlops : nil) ?? limits.f32GFlops
        let memory = bytes(batch: batch, context: context, expertsTouched: expertsTouched) / (limits.readGBps * 1e9)
        let compute = peak > 0 ? flops(batch: batch, context: context) / (peak * 1e9) : 0
        return Double(batch) / max(memory, compute)
    }
}
