import JSON
import Foundation
import SystemPackage

#if canImport(Glibc)
import Glibc
#endif

/// A tensor to be written: its name, element type and shape.
public struct TensorEntry: Sendable, Equatable {
    public let name: String
    public let dtype: DType
    public let shape: [Int]

    public init(name: String, dtype: DType, shape: [Int]) {
        self.name = name
        self.dtype = dtype
        self.shape = shape
    }

    /// Bytes of data this tensor takes.
    public var byteCount: Int { shape.reduce(dtype.byteSize, *) }
}

/// Writes one safetensors file as a stream: the header for all `entries` first, then each tensor's
/// bytes in the same order, so that a model larger than memory can be written tensor by tensor.
/// The header is padded with spaces to a multiple of 8 bytes (the reference writer's alignment).
///
/// The bytes go to `PATH.partial` and are renamed to `PATH` by `finish()`: a reader never sees a
/// half-written file, and a process that has the old file mapped keeps its pages (the old file is
/// replaced, not truncated under it). A writer dropped before `finish()` removes its partial file.
public final class SafeTensorsWriter {
    public let path: String
    private let partialPath: String
    private let entries: [TensorEntry]
    private var next = 0
    private var fd: FileDescriptor?

    /// Starts the file: checks the entries and writes the header.
    public init(path: String, entries: [TensorEntry], metadata: [String: String] = [:]) throws {
        self.path = path
        partialPath = path + ".partial"
        self.entries = entries
        var seen = Set<String>()
        for entry in entries {
            guard seen.insert(entry.name).inserted else {
                throw SafeTensorsError(file: path, tensor: entry.name, "written twice")
            }
            guard entry.name != "__metadata__", entry.shape.allSatisfy({ $0 >= 0 }) else {
                throw SafeTensorsError(file: path, tensor: entry.name, "not a valid tensor name and shape")
            }
        }
        var header = Self.headerJSON(entries: entries, metadata: metadata)
        while header.count % 8 != 0 { header.append(UInt8(ascii: " ")) }
        var length = UInt64(header.count).littleEndian
        let fd = try SystemError.wrap("open", partialPath) {
            try FileDescriptor.open(FilePath(partialPath), .writeOnly, options: [.create, .truncate], permissions: [.ownerReadWrite, .groupRead, .otherRead])
        }
        self.fd = fd
        try withUnsafeBytes(of: &length) { try write($0) }
        try header.withUnsafeBytes { try write($0) }
    }

    /// Appends the bytes of the next tensor in `entries` order; `name` must be that tensor's.
    public func append(_ name: String, bytes: UnsafeRawBufferPointer) throws {
        guard next < entries.count, entries[next].name == name else {
            throw SafeTensorsError(file: path, tensor: name, "written out of order (expected '\(next < entries.count ? entries[next].name : "nothing more")')")
        }
        guard bytes.count == entries[next].byteCount else {
            throw SafeTensorsError(file: path, tensor: name, "got \(bytes.count) bytes for shape \(entries[next].shape) of \(entries[next].dtype.rawValue) (\(entries[next].byteCount))")
        }
        try write(bytes)
        next += 1
    }

    /// Appends f32 values as the next tensor, converted to its dtype.
    public func append(_ name: String, floats: [Float]) throws {
        guard next < entries.count else { throw SafeTensorsError(file: path, tensor: name, "not declared") }
        let encoded = floats.withUnsafeBufferPointer { FloatConversion.encode($0, as: entries[next].dtype) }
        try encoded.withUnsafeBytes { try append(name, bytes: $0) }
    }

    /// Checks every declared tensor was written, closes the file and moves it into place.
    public func finish() throws {
        guard let fd else { return }
        self.fd = nil
        try SystemError.wrap("close", partialPath) { try fd.close() }
        guard next == entries.count else {
            unlink(partialPath)
            throw SafeTensorsError(file: path, tensor: entries[next].name, "declared but never written")
        }
        guard rename(partialPath, path) == 0 else {
            let code = Errno(rawValue: errno)
            unlink(partialPath)
            throw SystemError(operation: "rename", path: path, errno: code)
        }
    }

    /// Writes a whole file from tensors held in memory.
    public static func write(path: String, tensors: [(TensorEntry, [UInt8])], metadata: [String: String] = [:]) throws {
        let writer = try SafeTensorsWriter(path: path, entries: tensors.map(\.0), metadata: metadata)
        for (entry, bytes) in tensors { try bytes.withUnsafeBytes { try writer.append(entry.name, bytes: $0) } }
        try writer.finish()
    }

    private func write(_ bytes: UnsafeRawBufferPointer) throws {
        guard let fd else { throw SafeTensorsError(file: path, "already finished") }
        _ = try SystemError.wrap("write", partialPath) { try fd.writeAll(bytes) }
    }

    deinit {
        // Dropped before finish(): nothing complete was written, so nothing is left behind.
        if let fd {
            try? fd.close()
            unlink(partialPath)
        }
    }

    static func headerJSON(entries: [TensorEntry], metadata: [String: String]) -> [UInt8] {
        var parts: [String] = []
        if !metadata.isEmpty {
            let items = metadata.sorted { $0.key < $1.key }.map { "\(jsonString($0.key)):\(jsonString($0.value))" }
            parts.append("\"__metadata__\":{\(items.joined(separator: ","))}")
        }
        var offset = 0
        for entry in entries {
            let end = offset + entry.byteCount
            let shape = entry.shape.map(String.init).joined(separator: ",")
            parts.append("\(jsonString(entry.name)):{\"dtype\":\"\(entry.dtype.rawValue)\",\"shape\":[\(shape)],\"data_offsets\":[\(offset),\(end)]}")
            offset = end
        }
        return Array(("{" + parts.joined(separator: ",") + "}").utf8)
    }

    static func jsonString(_ string: String) -> String { JSONValue.quoted(string) }
}

/// Writes a checkpoint directory's weights, split into shards of at most `maxShardBytes` (one file
/// `model.safetensors` when everything fits, else `model-0000i-of-0000n.safetensors` and
/// `model.safetensors.index.json`, as `save_pretrained` does). Tensors are appended in `entries` order.
public final class CheckpointWriter {
    public let directory: String
    private let shards: [[TensorEntry]]
    private let shardNames: [String]
    private let metadata: [String: String]
    private var shard = 0
    private var inShard = 0
    private var writer: SafeTensorsWriter?

    /// Plans the shards (in `entries` order, each at most `maxShardBytes` unless one tensor is larger)
    /// and creates `directory` if needed.
    public init(directory: String, entries: [TensorEntry], maxShardBytes: Int = .max, metadata: [String: String] = ["format": "pt"]) throws {
        self.directory = directory
        self.metadata = metadata
        var shards: [[TensorEntry]] = [[]]
        var size = 0
        for entry in entries {
            if size > 0, size + entry.byteCount > maxShardBytes {
                shards.append([])
                size = 0
            }
            shards[shards.count - 1].append(entry)
            size += entry.byteCount
        }
        self.shards = shards
        let n = shards.count
        shardNames = n == 1 ? [Checkpoint.singleFileName]
            : (1...n).map { "model-\(Self.pad5($0))-of-\(Self.pad5(n)).safetensors" }
        try FileManager.default.createDirectory(atPath: directory, withIntermediateDirectories: true)
    }

    /// Appends the next tensor's bytes.
    public func append(_ name: String, bytes: UnsafeRawBufferPointer) throws {
        try currentWriter().append(name, bytes: bytes)
        try advance()
    }

    /// Appends the next tensor from f32 values, converted to its dtype.
    public func append(_ name: String, floats: [Float]) throws {
        try currentWriter().append(name, floats: floats)
        try advance()
    }

    /// Checks everything was written, moves the last shard into place and, for several shards,
    /// writes the index last, so that a checkpoint is never announced before its shards exist.
    public func finish() throws {
        if writer == nil, shards.count == 1 { _ = try currentWriter() }  // an empty checkpoint still gets its file
        if let writer { try writer.finish() }
        writer = nil
        guard shard >= shards.count || (shard == shards.count - 1 && inShard == shards[shard].count) else {
            throw SafeTensorsError(file: directory, "checkpoint finished before all tensors were written")
        }
        if shards.count > 1 { try writeIndex() }
    }

    private func currentWriter() throws -> SafeTensorsWriter {
        if let writer { return writer }
        guard shard < shards.count else { throw SafeTensorsError(file: directory, "more tensors than declared") }
        let writer = try SafeTensorsWriter(path: directory + "/" + shardNames[shard], entries: shards[shard], metadata: metadata)
        self.writer = writer
        return writer
    }

    private func advance() throws {
        inShard += 1
        if inShard == shards[shard].count, shard < shards.count - 1 {
            try writer?.finish()
            writer = nil
            shard += 1
            inShard = 0
        }
    }

    private func writeIndex() throws {
        let total = shards.joined().reduce(0) { $0 + $1.byteCount }
        var lines: [String] = []
        for (i, entries) in shards.enumerated() {
            for entry in entries { lines.append("    \(SafeTensorsWriter.jsonString(entry.name)): \(SafeTensorsWriter.jsonString(shardNames[i]))") }
        }
        let text = "{\n  \"metadata\": {\n    \"total_size\": \(total)\n  },\n  \"weight_map\": {\n\(lines.joined(separator: ",\n"))\n  }\n}\n"
        try Data(text.utf8).write(to: URL(fileURLWithPath: directory + "/" + Checkpoint.indexFileName), options: .atomic)
    }

    private static func pad5(_ n: Int) -> String {
        let s = String(n)
        return String(repeating: "0", count: max(0, 5 - s.count)) + s
    }
}
