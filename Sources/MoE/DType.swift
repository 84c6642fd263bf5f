import CBLAS

/// Element types a safetensors file can declare. Only the floating types `f32`, `f16` and `bf16`
/// can feed the MoE math; the others are recognised so that a checkpoint holding them still opens
/// and a request for one of them gets an error naming the tensor.
public enum DType: String, Sendable, CaseIterable, Codable {
    case f64 = "F64", f32 = "F32", f16 = "F16", bf16 = "BF16"
    case f8e4m3 = "F8_E4M3", f8e5m2 = "F8_E5M2"
    case i64 = "I64", i32 = "I32", i16 = "I16", i8 = "I8"
    case u64 = "U64", u32 = "U32", u16 = "U16", u8 = "U8", bool = "BOOL"

    /// Bytes per element.
    public var byteSize: Int {
        switch self {
        case .f64, .i64, .u64: 8
        case .f32, .i32, .u32: 4
        case .f16, .bf16, .i16, .u16: 2
        case .f8e4m3, .f8e5m2, .i8, .u8, .bool: 1
        }
    }

    /// Whether tensors of this type can be used as weights (widened to f32 for compute).
    public var isComputeType: Bool { self == .f32 || self == .f16 || self == .bf16 }

    /// Parses the spelling used on the command line and in configs (`f32`, `bf16`, `float16`, …).
    public init?(userSpelling: String) {
        switch userSpelling.lowercased() {
        case "f32", "fp32", "float32", "float": self = .f32
        case "f16", "fp16", "float16", "half": self = .f16
        case "bf16", "bfloat16": self = .bf16
        default: return nil
        }
    }

    /// The name Hugging Face writes in `config.json` (`torch_dtype` / `dtype`).
    public var torchName: String {
        switch self {
        case .f32: "float32"
        case .f16: "float16"
        case .bf16: "bfloat16"
        default: rawValue.lowercased()
        }
    }
}

/// Conversions between f32 and the 16-bit float types, over raw bits. They run the vectorised C
/// kernels (AVX-512 / AVX2 chosen at run time).
public enum FloatConversion {
    /// Widens `count` elements of `dtype` at `source` into `destination` as f32.
    /// `dtype` must be a compute type (checked by the caller, which can name the tensor).
    @inline(__always)
    public static func widen(
        _ dtype: DType, from source: UnsafeRawPointer, to destination: UnsafeMutablePointer<Float>, count: Int
    ) {
        switch dtype {
        case .f32:
            destination.update(from: source.assumingMemoryBound(to: Float.self), count: count)
        case .bf16:
            eaas_widen_bf16(source.assumingMemoryBound(to: UInt16.self), destination, count)
        case .f16:
            eaas_widen_f16(source.assumingMemoryBound(to: UInt16.self), destination, count)
        default:
            preconditionFailure("widen(\(dtype)): not a compute type")
        }
    }

    /// Encodes f32 values as little-endian bytes of `dtype` (rounding to nearest even for 16-bit types).
    public static func encode(_ values: UnsafeBufferPointer<Float>, as dtype: DType) -> [UInt8] {
        precondition(dtype.isComputeType, "encode(as: \(dtype)): not a compute type")
        var bytes = [UInt8](repeating: 0, count: values.count * dtype.byteSize)
        guard let base = values.baseAddress, !values.isEmpty else { return bytes }
        bytes.withUnsafeMutableBytes { raw in
            switch dtype {
            case .f32: raw.copyMemory(from: UnsafeRawBufferPointer(values))
            case .bf16: eaas_narrow_bf16(base, raw.baseAddress!.assumingMemoryBound(to: UInt16.self), values.count)
            case .f16: eaas_narrow_f16(base, raw.baseAddress!.assumingMemoryBound(to: UInt16.self), values.count)
            default: break
            }
        }
        return bytes
    }
}
