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

/// E4M3FN as OCP and torch's float8_e4m3fn define it.
struct FP8BlocksTests {
    @Test func e4m3Values() {
        #expect(FP8Blocks.values[0x38] == 1)
        #expect(FP8Blocks.values[0x7e] == 448)  // the largest
        #expect(FP8Blocks.values[0xfe] == -448)
        #expect(FP8Blocks.values[0x01] == Float(sign: .plus, exponent: -9, significand: 1))  // the smallest subnormal
        #expect(FP8Blocks.values[0x08] == Float(sign: .plus, exponent: -6, significand: 1))  // the smallest normal
        #expect(FP8Blocks.values[0x7f].isNaN && FP8Blocks.values[0xff].isNaN)
        #expect(FP8Blocks.values[0x00] == 0)
    }
}
