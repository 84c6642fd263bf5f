import Testing
@testable import MoE

/// llama.cpp's converter permutes q/k rows for interleaved RoPE; the importer undoes exactly that.
struct GGUFUpcycleTests {
    /// convert_hf_to_gguf.py's `permute`: reshape(heads, 2, d/2, in).swapaxes(1, 2).
    static func permute(_ w: [Float], heads: Int, rows: Int, columns: Int) -> [Float] {
        let headRows = rows / heads, half = headRows / 2
        var out = [Float](repeating: 0, count: w.count)
        for h in 0..<heads {
            for part in 0..<2 {
                for j in 0..<half {
                    for c in 0..<columns {
                        out[(h * headRows + 2 * j + part) * columns + c] = w[(h * headRows + part * half + j) * columns + c]
                    }
                }
            }
        }
        return out
    }

    @Test(arguments: [(1, 4, 3), (3, 8, 5), (9, 64, 2)])
    func unpermuteUndoesTheConvertersPermute(_ heads: Int, _ headDim: Int, _ columns: Int) {
        let rows = heads * headDim
        let w = (0..<(rows * columns)).map { Float($0) }
        let permuted = Self.permute(w, heads: heads, rows: rows, columns: columns)
        #expect(permuted != w || headDim <= 2)
        #expect(GGUFUpcycle.unpermute(permuted, heads: heads, rows: rows, columns: columns) == w)
    }
}
