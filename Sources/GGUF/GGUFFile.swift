import Foundation

/// A GGUF file (llama.cpp's model format, versions 2 and 3): its metadata and the table of its
/// tensors, read from a memory map. Every length and offset is checked against the file, so a
/// truncated or hostile file is refused with the field that was wrong, never read out of bounds.
public struct GGUFFile: Sendable {
    /// A metadata value.
    public enum Value: Sendable, Equatable {
        case uint(UInt64)
        case int(Int64)
        case float(Double)
        case bool(Bool)
        case string(String)
        case array([Value])

        public var string: String? { if case .string(let s) = self { s } else { nil } }
        public var bool: Bool? { if case .bool(let b) = self { b } else { nil } }
        public var array: [Value]? { if case .array(let a) = self { a } else { nil } }
        public var int: Int? {
            switch self {
            case .uint(let u): return u <= UInt64(Int.max) ? Int(u) : nil
            case .int(let i): return Int(exactly: i)
            default: return nil
            }
        }
        public var double: Double? {
            switch self {
            case .float(let f): return f
            case .uint(let u): return Double(u)
            case .int(let i): return Double(i)
            default: return nil
            }
        }
    }

    /// One tensor's entry: its name, shape (GGUF order: the fastest-varying dimension first),
    /// ggml type number, and where its data starts, relative to `dataOffset`.
    public struct TensorInfo: Sendable, Equatable {
        public let name: String
        public let shape: [Int]
        public let type: UInt32
        public let offset: Int
    }

    public let path: String
    /// The file's bytes (memory-mapped when read from a path).
    public let data: Data
    public let version: UInt32
    public let metadata: [String: Value]
    public let tensors: [TensorInfo]
    /// The byte offset of the tensor data section (aligned to `general.alignment`, default 32).
    public let dataOffset: Int

    /// Limits that keep a hostile header from asking for unbounded memory.
    static let maxEntries = 1 << 24
    static let maxArray = 1 << 26
    static let maxDimensions = 8

    public init(path: String) throws(GGUFError) {
        let data: Data
        do { data = try Data(contentsOf: URL(fileURLWithPath: path), options: .alwaysMapped) } catch {
            throw GGUFError(path: path, message: "cannot read: \(error.localizedDescription)")
        }
        try self.init(data: data, path: path)
    }

    public init(data: Data, path: String = "<memory>") throws(GGUFError) {
        self.path = path
        self.data = data
        var reader = GGUFReader(data: data, path: path)
        guard try reader.bytes(4) == Array("GGUF".utf8) else { throw reader.error("not a GGUF file (bad magic)") }
        version = try reader.u32()
        guard version == 2 || version == 3 else { throw reader.error("GGUF version \(version) (2 and 3 are read)") }
        let tensorCount = try reader.u64()
        let kvCount = try reader.u64()
        guard tensorCount <= UInt64(GGUFFile.maxEntries), kvCount <= UInt64(GGUFFile.maxEntries) else {
            throw reader.error("\(tensorCount) tensors and \(kvCount) metadata entries: too many")
        }
        var metadata: [String: Value] = [:]
        for _ in 0..<kvCount {
            let key = try reader.string()
            let type = try reader.u32()
            metadata[key] = try reader.value(type: type, key: key)
        }
        var tensors: [TensorInfo] = []
        tensors.reserveCapacity(Int(tensorCount))
        for _ in 0..<tensorCount {
            let name = try reader.string()
            let dims = try reader.u32()
            guard dims <= UInt32(GGUFFile.maxDimensions) else { throw reader.error("tensor \(name): \(dims) dimensions") }
            var shape: [Int] = []
            for _ in 0..<dims {
                let d = try reader.u64()
                guard d <= UInt64(Int32.max) else { throw reader.error("tensor \(name): dimension \(d)") }
                shape.append(Int(d))
            }
            let type = try reader.u32()
            let offset = try reader.u64()
            guard offset <= UInt64(data.count) else { throw reader.error("tensor \(name): offset \(offset) past the end") }
            tensors.append(TensorInfo(name: name, shape: shape, type: type, offset: Int(offset)))
        }
        let alignment = metadata["general.alignment"]?.int ?? 32
        guard alignment > 0, alignment & (alignment - 1) == 0 else { throw reader.error("general.alignment \(alignment)") }
        dataOffset = (reader.position + alignment - 1) / alignment * alignment
        self.metadata = metadata
        self.tensors = tensors
    }

    /// The tensor named `name`, or nil.
    public func tensor(_ name: String) -> TensorInfo? { tensors.first { $0.name == name } }

    /// A tensor's values as f32, dequantized (F32, F16, BF16, Q8_0, Q4_0, Q4_1; any other type is
    /// refused by name), in GGUF order: the first dimension fastest.
    public func floats(_ info: TensorInfo) throws(GGUFError) -> [Float] {
        let count = info.shape.reduce(1, *)
        guard let layout = GGUFQuantization(rawValue: info.type) else {
            throw GGUFError(path: path, message: "tensor \(info.name): ggml type \(GGUFQuantization.name(info.type)) is not read (F32, F16, BF16, Q8_0, Q4_0, Q4_1 are)")
        }
        guard count % layout.blockValues == 0 else { throw GGUFError(path: path, message: "tensor \(info.name): \(count) values is not whole blocks of \(layout.blockValues)") }
        let bytes = count / layout.blockValues * layout.blockBytes
        let start = dataOffset + info.offset
        guard start >= 0, bytes <= data.count - start else {
            throw GGUFError(path: path, message: "tensor \(info.name): its \(bytes) bytes at \(start) run past the end of the file (\(data.count))")
        }
        return data.withUnsafeBytes { raw in
            layout.dequantize(UnsafeRawBufferPointer(rebasing: raw[start..<start + bytes]), count: count)
        }
    }

    /// A metadata string, or nil.
    public func string(_ key: String) -> String? { metadata[key]?.string }
    /// A metadata integer, or nil.
    public func int(_ key: String) -> Int? { metadata[key]?.int }
    /// A metadata array of strings, or nil when absent or not all strings.
    public func strings(_ key: String) -> [String]? {
        guard let a = metadata[key]?.array else { return nil }
        var out: [String] = []
        out.reserveCapacity(a.count)
        for v in a { guard let s = v.string else { return nil }; out.append(s) }
        return out
    }
}

/// Why a GGUF file could not be read: the file and what was wrong.
public struct GGUFError: Error, CustomStringConvertible, Sendable, Equatable {
    public let path: String
    public let message: String
    public var description: String { "GGUF \(path): \(message)" }
}

struct GGUFReader {
    let data: Data
    let path: String
    var position = 0

    func error(_ message: String) -> GGUFError { GGUFError(path: path, message: "\(message) (at byte \(position))") }

    mutating func bytes(_ n: Int) throws(GGUFError) -> [UInt8] {
        guard n >= 0, n <= data.count - position else { throw error("truncated: \(n) bytes wanted, \(data.count - position) left") }
        let start = data.startIndex + position
        position += n
        return [UInt8](data[start..<start + n])
    }

    mutating func integer<T: FixedWidthInteger>(_: T.Type) throws(GGUFError) -> T {
        let size = MemoryLayout<T>.size
        guard size <= data.count - position else { throw error("truncated") }
        var value: T = 0
        let start = data.startIndex + position
        withUnsafeMutableBytes(of: &value) { raw in data.copyBytes(to: raw.bindMemory(to: UInt8.self), from: start..<start + size) }
        position += size
        return T(littleEndian: value)
    }

    mutating func u32() throws(GGUFError) -> UInt32 { try integer(UInt32.self) }
    mutating func u64() throws(GGUFError) -> UInt64 { try integer(UInt64.self) }

    mutating func string() throws(GGUFError) -> String {
        let n = try u64()
        guard n <= UInt64(data.count - position) else { throw error("string of \(n) bytes past the end") }
        let raw = try bytes(Int(n))
        guard let s = String(validating: raw, as: UTF8.self) else { throw error("a string that is not UTF-8") }
        return s
    }

    mutating func value(type: UInt32, key: String) throws(GGUFError) -> GGUFFile.Value {
        switch type {
        case 0: return .uint(UInt64(try integer(UInt8.self)))
        case 1: return .int(Int64(try integer(Int8.self)))
        case 2: return .uint(UInt64(try integer(UInt16.self)))
        case 3: return .int(Int64(try integer(Int16.self)))
        case 4: return .uint(UInt64(try integer(UInt32.self)))
        case 5: return .int(Int64(try integer(Int32.self)))
        case 6: return .float(Double(Float(bitPattern: try integer(UInt32.self))))
        case 7:
            let b = try integer(UInt8.self)
            guard b <= 1 else { throw error("\(key): bool \(b)") }
            return .bool(b == 1)
        case 8: return .string(try string())
        case 9:
            let elementType = try u32()
            let count = try u64()
            guard count <= UInt64(GGUFFile.maxArray), count <= UInt64(data.count - position) else {
                throw error("\(key): array of \(count) elements")
            }
            guard elementType != 9 else { throw error("\(key): nested arrays") }
            var items: [GGUFFile.Value] = []
            items.reserveCapacity(Int(count))
            for _ in 0..<count { items.append(try value(type: elementType, key: key)) }
            return .array(items)
        case 10: return .uint(try integer(UInt64.self))
        case 11: return .int(try integer(Int64.self))
        case 12: return .float(Double(bitPattern: try integer(UInt64.self)))
        default: throw error("\(key): value type \(type)")
        }
    }
}
