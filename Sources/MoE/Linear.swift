/// Dense projections on weights kept in their checkpoint dtype: the attention worker's q/k/v/o,
/// dense MLPs and LM head run through the same two paths as the experts (`ExpertFFN`): a skinny
/// kernel for a few rows, tiled `sgemm` (or bf16 dot products, `MatmulPrecision`) for more.
public enum Linear {
    /// `output[tokens, W.rows] = input[tokens, W.cols] · Wᵀ`, rows `lda` and `ldc` floats apart.
    public static func apply(
        _ weight: WeightMatrix, input: UnsafePointer<Float>, lda: Int, tokens: Int,
        output: UnsafeMutablePointer<Float>, ldc: Int, scratch: ExpertScratch
    ) {
        guard tokens > 0 else { return }
        // Up to `skinnyPassRows` rows: one pass over the weights (a decode step reads the LM head
        // and attention projections once, whatever the batch); sgemm or bf16 dot products beyond.
        ExpertFFN.multiply(input, lda: lda, tokens: tokens, by: weight, into: output, ldc: ldc, scratch: scratch)
    }
}
