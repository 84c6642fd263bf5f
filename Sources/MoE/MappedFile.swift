import SystemPackage

#if canImport(Glibc)
import Glibc
#elseif canImport(Darwin)
import Darwin
#endif

/// A read-only memory map of a whole file. Pages are read from the page cache only when touched,
/// so mapping a checkpoint costs nothing until a tensor is used, and only the tensors used become
/// resident.
///
/// The map lives as long as this object; tensors that point into it keep it alive.
public final class MappedFile: @unchecked Sendable {
    /// The file's path, for error messages.
    public let path: String
    /// Start of the mapping (nil for an empty file).
    public let base: UnsafeRawPointer?
    /// The file's size in bytes.
    public let count: Int

    /// Maps `path` read-only. Throws `SystemError` (with the path and the errno) when the file
    /// cannot be opened or mapped.
    public init(path: String) throws {
        self.path = path
        let fd = try SystemError.wrap("open", path) { try FileDescriptor.open(FilePath(path), .readOnly) }
        defer { try? fd.close() }
        let size = try SystemError.wrap("seek", path) { try fd.seek(offset: 0, from: .end) }
        count = Int(size)
        if count == 0 {
            base = nil
            return
        }
        let address = mmap(nil, count, PROT_READ, MAP_PRIVATE, fd.rawValue, 0)
        guard let address, address != MAP_FAILED else {
            throw SystemError(operation: "mmap", path: path, errno: Errno(rawValue: errno))
        }
        base = UnsafeRawPointer(address)
    }

    /// The bytes `range` of the file; the caller has checked that it lies inside the file.
    public func bytes(_ range: Range<Int>) -> UnsafeRawBufferPointer {
        precondition(range.lowerBound >= 0 && range.upperBound <= count, "range outside \(path)")
        guard let base else { return UnsafeRawBufferPointer(start: nil, count: 0) }
        return UnsafeRawBufferPointer(start: base + range.lowerBound, count: range.count)
    }

    deinit {
        if let base { munmap(UnsafeMutableRawPointer(mutating: base), count) }
    }
}

/// An operating-system call that failed: the one place where an errno becomes a Swift error.
public struct SystemError: Error, CustomStringConvertible, Sendable {
    /// What was being done (`open`, `mmap`, `write`, …).
    public let operation: String
    /// The file concerned.
    public let path: String
    /// The error number the call returned.
    public let errno: Errno

    public var description: String { "\(operation) \(path): \(errno.description) (errno \(errno.rawValue))" }

    /// Runs a swift-system call and turns its `Errno` into a `SystemError` naming the file.
    static func wrap<T>(_ operation: String, _ path: String, _ body: () throws -> T) throws -> T {
        do {
            return try body()
        } catch let error as Errno {
            throw SystemError(operation: operation, path: path, errno: error)
        }
    }
}
