import MoE

/// The attention side of EaaS (the paper's "attention client"): embeddings, attention with its KV
/// cache, norms and the gate, sending each MoE step's tokens to the expert pods. Its serving code
/// arrives with the attention-worker issue; for now it names the architectures it will run, which
/// are the ones the MoE module reads.
public enum AttentionWorker {
    /// Architectures the worker is built for.
    public static let architectures: [Architecture] = Architecture.allCases
}
