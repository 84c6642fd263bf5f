/// Dense projections on weights kept in their checkpoint dtype: the attention worker's q/k/v/o,
/// dense MLPs and LM head run through the same two paths as the experts (`ExpertFFN`): a skinny
/// kernel for a few rows, tiled `sgemm` for more.
public enum Linear {
    /// `output[tokens, W.rows] = input[tokens, W.cols] · Wᵀ`, rows `lda` and `ldc` floats apart.
    public static func apply(
        _ weight: WeightMatrix, input: UnsafePointer<Float>, lda: Int, tokens: Int,
        output: UnsafeMutablePointer<Float>, ldc: Int, scratch: ExpertScratch
    ) {
        guard tokens > 0 else { return }
        var row = 0
        // The skinny kernel takes up to `skinnyRows` rows at once; sgemm beyond a few of those.
        if tokens <= 4 * ExpertFFN.skinnyRows {
            while row < tokens {
                let rows = min(ExpertFFN.skinnyRows, tokens - row)
                ExpertFFN.multiply(input + row * lda, lda: lda, tokens: rows, by: weight, into: output + row * ldc, ldc: ldc, scratch: scratch)
                row += rows
            }
            return
        }
        ExpertFFN.multiply(input, lda: lda, tokens: tokens, by: weight, into: output, ldc: ldc, scratch: scratch)
    }
}
