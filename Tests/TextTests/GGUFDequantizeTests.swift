import Foundation
import Testing
@testable import GGUF

/// Dequantization by ggml's block layouts, on blocks written here byte by byte.
struct GGUFDequantizeTests {
    static func half(_ f: Float) -> [UInt8] {
        let bits = Float16(f).bitPattern
        return [UInt8(bits & 0xff), UInt8(bits >> 8)]
    }

    @Test func quantizedBlocks() {
        // Q8_0: d = 0.5, quants -16 … 15.
        var q8 = Self.half(0.5)
        q8 += (0..<32).map { UInt8(bitPattern: Int8($0 - 16)) }
        #expect(q8.withUnsafeBytes { GGUFQuantization.q8_0.dequantize($0, count: 32) } == (0..<32).map { Float($0 - 16) * 0.5 })
        // Q4_1: d = 0.25, m = -1; byte j holds value j (low nibble) and 15 - j (high nibble).
        var q41 = Self.half(0.25) + Self.half(-1)
        q41 += (0..<16).map { UInt8($0) | UInt8(15 - $0) << 4 }
        let low41: [Float] = (0..<16).map { (j: Int) -> Float in Float(j) * 0.25 - 1 }
        let high41: [Float] = (0..<16).map { (j: Int) -> Float in Float(15 - j) * 0.25 - 1 }
        let expected41 = low41 + high41
        #expect(q41.withUnsafeBytes { GGUFQuantization.q4_1.dequantize($0, count: 32) } == expected41)
        // Q4_0: d = 2, values centred on 8.
        var q40 = Self.half(2)
        q40 += (0..<16).map { UInt8($0) | UInt8($0) << 4 }
        let half40: [Float] = (0..<16).map { (j: Int) -> Float in Float(j - 8) * 2 }
        let expected40 = half40 + half40
        #expect(q40.withUnsafeBytes { GGUFQuantization.q4_0.dequantize($0, count: 32) } == expected40)
        // BF16 and F16.
        let bf16: [UInt8] = [0x80, 0x3f, 0x00, 0xc0]
        #expect(bf16.withUnsafeBytes { GGUFQuantization.bf16.dequantize($0, count: 2) } == [1, -2])
        #expect((Self.half(1.5) + Self.half(-0.25)).withUnsafeBytes { GGUFQuantization.f16.dequantize($0, count: 2) } == [1.5, -0.25])
    }

    @Test func otherTypesAreRefusedByName() throws {
        var w = GGUFTests.Writer()
        w.bytes += Array("GGUF".utf8)
        w.u32(3); w.u64(1); w.u64(0)
        w.string("blk.0.ffn_down.weight"); w.u32(1); w.u64(256); w.u32(12); w.u64(0)  // Q4_K
        w.bytes += [UInt8](repeating: 0, count: 64 + 256)
        let file = try GGUFFile(data: Data(w.bytes))
        #expect { _ = try file.floats(file.tensors[0]) } throws: { "\($0)".contains("Q4_K") }
        var short = GGUFTests.Writer()
        short.bytes += Array("GGUF".utf8)
        short.u32(3); short.u64(1); short.u64(0)
        short.string("t"); short.u32(1); short.u64(1 << 20); short.u32(0); short.u64(0)  // 4 MiB of F32 that is not there
        let truncated = try GGUFFile(data: Data(short.bytes))
        #expect { _ = try truncated.floats(truncated.tensors[0]) } throws: { "\($0)".contains("past the end") }
    }
}
