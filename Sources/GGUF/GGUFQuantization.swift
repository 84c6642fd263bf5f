/// The ggml tensor types this reader dequantizes, with their block layouts (ggml-common.h): a block
/// of 32 values is one or two f16 scales and the packed quants.
public enum GGUFQuantization: UInt32, Sendable {
    case f32 = 0
    case f16 = 1
    case q4_0 = 2
    case q4_1 = 3
    case q8_0 = 8
    case bf16 = 30

    /// Values per block.
    var blockValues: Int {
        switch self {
        case .f32, .f16, .bf16: return 1
        case .q4_0, .q4_1, .q8_0: return 32
        }
    }

    /// Bytes per block.
    var blockBytes: Int {
        switch self {
        case .f32: return 4
        case .f16, .bf16: return 2
        case .q4_0: return 18  // f16 d, 16 bytes of 4-bit quants
        case .q4_1: return 20  // f16 d, f16 m, 16 bytes of 4-bit quants
        case .q8_0: return 34  // f16 d, 32 int8 quants
        }
    }

    static let names: [UInt32: String] = [
        0: "F32", 1: "F16", 2: "Q4_0", 3: "Q4_1", 6: "Q5_0", 7: "Q5_1", 8: "Q8_0", 9: "Q8_1", 10: "Q2_K", 11: "Q3_K", 12: "Q4_K",
        13: "Q5_K", 14: "Q6_K", 15: "Q8_K", 16: "IQ2_XXS", 17: "IQ2_XS", 18: "IQ3_XXS", 19: "IQ1_S", 20: "IQ4_NL", 21: "IQ3_S",
        22: "IQ2_S", 23: "IQ4_XS", 24: "I8", 25: "I16", 26: "I32", 27: "I64", 28: "F64", 29: "IQ1_M", 30: "BF16",
    ]

    /// The ggml name of a type number ("Q4_K"), or the number.
    public static func name(_ type: UInt32) -> String { names[type] ?? "#\(type)" }

    @inline(__always)
    static func half(_ raw: UnsafeRawBufferPointer, _ offset: Int) -> Float {
        Float(Float16(bitPattern: UInt16(raw[offset]) | UInt16(raw[offset + 1]) << 8))
    }

    func dequantize(_ raw: UnsafeRawBufferPointer, count: Int) -> [Float] {
        [Float](unsafeUninitializedCapacity: count) { out, initialized in
            switch self {
            case .f32:
                for i in 0..<count { out[i] = Float(bitPattern: raw.loadUnaligned(fromByteOffset: 4 * i, as: UInt32.self).littleEndian) }
            case .f16:
                for i in 0..<count { out[i] = Self.half(raw, 2 * i) }
            case .bf16:
                for i in 0..<count { out[i] = Float(bitPattern: UInt32(raw.loadUnaligned(fromByteOffset: 2 * i, as: UInt16.self).littleEndian) << 16) }
            case .q8_0:
                for b in 0..<count / 32 {
                    let base = b * 34
                    let d = Self.half(raw, base)
                    for j in 0..<32 { out[b * 32 + j] = Float(Int8(bitPattern: raw[base + 2 + j])) * d }
                }
            case .q4_0:
                for b in 0..<count / 32 {
                    let base = b * 18
                    let d = Self.half(raw, base)
                    for j in 0..<16 {
                        let q = raw[base + 2 + j]
                        out[b * 32 + j] = Float(Int(q & 0x0f) - 8) * d
                        out[b * 32 + j + 16] = Float(Int(q >> 4) - 8) * d
                    }
                }
            case .q4_1:
                for b in 0..<count / 32 {
                    let base = b * 20
                    let d = Self.half(raw, base)
                    let m = Self.half(raw, base + 2)
                    for j in 0..<16 {
                        let q = raw[base + 4 + j]
                        out[b * 32 + j] = Float(q & 0x0f) * d + m
                        out[b * 32 + j + 16] = Float(q >> 4) * d + m
                    }
                }
            }
            initialized = count
        }
    }
}
