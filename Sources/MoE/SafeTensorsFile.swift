import JSON
import Foundation

/// What a safetensors header says about one tensor.
public struct TensorInfo: Sendable, Equatable {
    /// The tensor's name in the checkpoint (`model.layers.0.mlp.gate.weight`).
    public let name: String
    public let dtype: DType
    /// Dimensions, outermost first.
    public let shape: [Int]
    /// Where its bytes are, relative to the start of the data section.
    public let dataOffsets: Range<Int>

    /// The number of elements (product of the shape; 1 for a scalar).
    public var elementCount: Int { shape.reduce(1, *) }
}

/// A bad checkpoint file or a request it cannot serve. The message names the file and, where there
/// is one, the tensor.
public struct SafeTensorsError: Error, CustomStringConvertible, Sendable, Equatable {
    public let file: String
    public let tensor: String?
    public let reason: String

    public init(file: String, tensor: String? = nil, _ reason: String) {
        self.file = file
        self.tensor = tensor
        self.reason = reason
    }

    public var description: String {
        if let tensor { return "\(file): tensor '\(tensor)': \(reason)" }
        return "\(file): \(reason)"
    }
}

/// One `.safetensors` file, memory-mapped, with its header fully validated on open: offsets in
/// bounds, shape × dtype size equal to the byte length, tensors neither overlapping nor leaving
/// holes (the format's rule). Opening reads only the header; tensor bytes are paged in when used.
public final class SafeTensorsFile: Sendable {
    /// The format's own cap on the header size (the reference implementation's): 100 MB.
    public static let maxHeaderBytes = 100_000_000

    public let path: String
    /// Every tensor the header declares, by name.
    public let tensors: [String: TensorInfo]
    /// The free-form `__metadata__` string map.
    public let metadata: [String: String]
    private let file: MappedFile
    private let dataStart: Int

    /// Maps `path` and validates its whole header; the error names what is wrong.
    public init(path: String) throws {
        self.path = path
        let file = try MappedFile(path: path)
        self.file = file
        guard file.count >= 8 else {
            throw SafeTensorsError(file: path, "file is \(file.count) bytes; a safetensors file starts with an 8-byte header length")
        }
        let lengthBytes = file.bytes(0..<8)
        var headerLength: UInt64 = 0
        for i in 0..<8 { headerLength |= UInt64(lengthBytes[i]) << (8 * UInt64(i)) }
        guard headerLength <= UInt64(Self.maxHeaderBytes) else {
            throw SafeTensorsError(file: path, "header length \(headerLength) exceeds the format's limit of \(Self.maxHeaderBytes) bytes")
        }
        guard Int(headerLength) <= file.count - 8 else {
            throw SafeTensorsError(file: path, "header length \(headerLength) runs past the end of the \(file.count)-byte file")
        }
        dataStart = 8 + Int(headerLength)
        let parsed = try Self.parseHeader(file.bytes(8..<dataStart), path: path, dataLength: file.count - dataStart)
        tensors = parsed.tensors
        metadata = parsed.metadata
    }

    /// The named tensor, pointing into the map (no copy).
    public func tensor(_ name: String) throws -> Tensor {
        guard let info = tensors[name] else {
            throw SafeTensorsError(file: path, tensor: name, "not in this file")
        }
        let range = (dataStart + info.dataOffsets.lowerBound)..<(dataStart + info.dataOffsets.upperBound)
        return Tensor(info: info, file: path, bytes: file.bytes(range), owner: file)
    }

    // MARK: header

    private static func parseHeader(
        _ bytes: UnsafeRawBufferPointer, path: String, dataLength: Int
    ) throws -> (tensors: [String: TensorInfo], metadata: [String: String]) {
        let json: JSONValue
        do {
            json = try JSONValue.parse(Data(bytes))
        } catch {
            throw SafeTensorsError(file: path, "header is not valid JSON")
        }
        guard let object = json.object else {
            throw SafeTensorsError(file: path, "header is not a JSON object")
        }
        var tensors: [String: TensorInfo] = [:]
        var metadata: [String: String] = [:]
        for (name, value) in object {
            if name == "__metadata__" {
                guard let map = value.object else {
                    throw SafeTensorsError(file: path, "__metadata__ is not an object of strings")
                }
                for (key, item) in map {
                    guard let string = item.string else {
                        throw SafeTensorsError(file: path, "__metadata__ value '\(key)' is not a string")
                    }
                    metadata[key] = string
                }
                continue
            }
            tensors[name] = try parseEntry(name: name, value: value, path: path, dataLength: dataLength)
        }
        // The format's rule: sorted by offset, the tensors tile the data section exactly.
        var end = 0
        var previous: String?
        for info in tensors.values.sorted(by: { ($0.dataOffsets.lowerBound, $0.dataOffsets.upperBound, $0.name) < ($1.dataOffsets.lowerBound, $1.dataOffsets.upperBound, $1.name) }) {
            if info.dataOffsets.lowerBound < end {
                throw SafeTensorsError(file: path, tensor: info.name,
                    "bytes \(info.dataOffsets.lowerBound)..<\(info.dataOffsets.upperBound) overlap tensor '\(previous ?? "")'")
            }
            if info.dataOffsets.lowerBound > end {
                throw SafeTensorsError(file: path, tensor: info.name,
                    "starts at byte \(info.dataOffsets.lowerBound) but the previous tensor ends at \(end): holes are not allowed")
            }
            end = info.dataOffsets.upperBound
            previous = info.name
        }
        guard end == dataLength else {
            throw SafeTensorsError(file: path, "tensors cover \(end) bytes but the data section holds \(dataLength)")
        }
        return (tensors, metadata)
    }

    private static func parseEntry(name: String, value: JSONValue, path: String, dataLength: Int) throws -> TensorInfo {
        func fail(_ reason: String) -> SafeTensorsError { SafeTensorsError(file: path, tensor: name, reason) }
        guard let entry = value.object else { throw fail("entry is not a JSON object") }
        guard let dtypeName = entry["dtype"]?.string else { throw fail("missing string field 'dtype'") }
        guard let dtype = DType(rawValue: dtypeName) else { throw fail("unknown dtype '\(dtypeName)'") }
        guard let shapeArray = entry["shape"]?.array else { throw fail("missing array field 'shape'") }
        let shape = try shapeArray.map { item -> Int in
            guard case .int(let dim) = item, dim >= 0 else { throw fail("shape \(JSONValue.array(shapeArray)) has a dimension that is not a non-negative integer") }
            return dim
        }
        guard let offsets = entry["data_offsets"]?.array, offsets.count == 2,
              case .int(let begin) = offsets[0], case .int(let end) = offsets[1] else {
            throw fail("missing field 'data_offsets' as [begin, end]")
        }
        guard begin >= 0, begin <= end else { throw fail("data_offsets [\(begin), \(end)] are not an ordered pair of non-negative integers") }
        guard end <= dataLength else { throw fail("data_offsets end \(end) is past the \(dataLength)-byte data section") }
        var bytes = dtype.byteSize
        for dim in shape {
            let (product, overflow) = bytes.multipliedReportingOverflow(by: dim)
            guard !overflow else { throw fail("shape \(shape) is too large") }
            bytes = product
        }
        guard bytes == end - begin else {
            throw fail("shape \(shape) of \(dtype.rawValue) needs \(bytes) bytes but data_offsets span \(end - begin)")
        }
        return TensorInfo(name: name, dtype: dtype, shape: shape, dataOffsets: begin..<end)
    }
}

/// A tensor's bytes inside a mapped checkpoint file, with what the header says about them.
/// It keeps the file mapped for as long as it lives.
public struct Tensor: @unchecked Sendable {
    public let info: TensorInfo
    /// The file it came from, for error messages.
    public let file: String
    /// Its raw little-endian bytes.
    public let bytes: UnsafeRawBufferPointer
    let owner: AnyObject

    public var name: String { info.name }
    public var dtype: DType { info.dtype }
    public var shape: [Int] { info.shape }

    /// An error about this tensor.
    public func error(_ reason: String) -> SafeTensorsError { SafeTensorsError(file: file, tensor: name, reason) }

    /// Checks the tensor has `expected` shape; the error names the tensor and both shapes.
    public func expectShape(_ expected: [Int]) throws {
        guard shape == expected else { throw error("shape \(shape), expected \(expected)") }
    }

    /// Checks the tensor's dtype can feed the math (F32, F16 or BF16).
    public func expectComputeType() throws {
        guard dtype.isComputeType else { throw error("dtype \(dtype.rawValue) is not supported here (F32, F16 or BF16)") }
    }

    /// All elements widened to f32.
    public func floats() throws -> [Float] {
        try expectComputeType()
        let count = info.elementCount
        return [Float](unsafeUninitializedCapacity: count) { buffer, initialized in
            if count > 0 { FloatConversion.widen(dtype, from: bytes.baseAddress!, to: buffer.baseAddress!, count: count) }
            initialized = count
        }
    }

    /// All elements as Int64, for integer tensors (I8…I64, U8…U32, BOOL).
    public func integers() throws -> [Int64] {
        let count = info.elementCount
        switch dtype {
        case .i64: return (0..<count).map { bytes.loadUnaligned(fromByteOffset: $0 * 8, as: Int64.self) }
        case .i32: return (0..<count).map { Int64(bytes.loadUnaligned(fromByteOffset: $0 * 4, as: Int32.self)) }
        case .i16: return (0..<count).map { Int64(bytes.loadUnaligned(fromByteOffset: $0 * 2, as: Int16.self)) }
        case .i8: return (0..<count).map { Int64(bytes.load(fromByteOffset: $0, as: Int8.self)) }
        case .u32: return (0..<count).map { Int64(bytes.loadUnaligned(fromByteOffset: $0 * 4, as: UInt32.self)) }
        case .u16: return (0..<count).map { Int64(bytes.loadUnaligned(fromByteOffset: $0 * 2, as: UInt16.self)) }
        case .u8, .bool: return (0..<count).map { Int64(bytes[$0]) }
        default: throw error("dtype \(dtype.rawValue) cannot be read as integers here (I8…I64, U8…U32, BOOL)")
        }
    }
}
