import SystemPackage

#if canImport(Glibc)
import Glibc
#endif

/// Memory shared between processes on one host: a file in `/dev/shm` mapped `MAP_SHARED`.
/// The creator removes the file when it closes the region. `close()` must be called; `deinit`
/// asserts it.
public final class SharedRegion: @unchecked Sendable {
    public let path: String
    public let base: UnsafeMutableRawPointer
    public let count: Int
    private let removesFile: Bool
    private var closed = false

    private init(path: String, base: UnsafeMutableRawPointer, count: Int, removesFile: Bool) {
        self.path = path
        self.base = base
        self.count = count
        self.removesFile = removesFile
    }

    /// Creates a new zero-filled region of `size` bytes at `path` (which must not exist), lets
    /// `prepare` write its header, and only then makes it visible under `path`, so that no client
    /// can map a region whose header is not written yet.
    public static func create(path: String, size: Int, prepare: (UnsafeMutableRawPointer) -> Void = { _ in }) throws -> SharedRegion {
        let staging = path + ".creating-\(getpid())"
        let region = try createFile(path: staging, size: size)
        prepare(region.base)
        // link(2), unlike rename(2), refuses an existing name: two servers never share a region.
        guard link(staging, path) == 0 else {
            let code = Errno(rawValue: errno)
            region.close()
            throw TransportError.system(operation: "create", path: path, errno: code)
        }
        unlink(staging)
        return SharedRegion(path: path, base: region.takeMapping(), count: size, removesFile: true)
    }

    /// Hands the mapping to another owner: this object will neither unmap it nor remove its file.
    private func takeMapping() -> UnsafeMutableRawPointer {
        closed = true
        return base
    }

    private static func createFile(path: String, size: Int) throws -> SharedRegion {
        precondition(size > 0, "a shared region needs a size")
        let fd = try TransportError.wrap("create", path) {
            try FileDescriptor.open(FilePath(path), .readWrite, options: [.create, .exclusiveCreate], permissions: [.ownerReadWrite])
        }
        defer { try? fd.close() }
        guard ftruncate(fd.rawValue, off_t(size)) == 0 else {
            let code = Errno(rawValue: errno)
            unlink(path)
            throw TransportError.system(operation: "ftruncate", path: path, errno: code)
        }
        do {
            return SharedRegion(path: path, base: try map(fd, size: size, path: path), count: size, removesFile: true)
        } catch {
            unlink(path)
            throw error
        }
    }

    /// Maps an existing region created by another process.
    public static func open(path: String) throws -> SharedRegion {
        let fd = try TransportError.wrap("open", path) { try FileDescriptor.open(FilePath(path), .readWrite) }
        defer { try? fd.close() }
        let size = Int(try TransportError.wrap("seek", path) { try fd.seek(offset: 0, from: .end) })
        guard size > 0 else { throw TransportError.badRegion(path: path, reason: "is empty") }
        return SharedRegion(path: path, base: try map(fd, size: size, path: path), count: size, removesFile: false)
    }

    private static func map(_ fd: FileDescriptor, size: Int, path: String) throws -> UnsafeMutableRawPointer {
        let address = mmap(nil, size, PROT_READ | PROT_WRITE, MAP_SHARED, fd.rawValue, 0)
        guard let address, address != MAP_FAILED else {
            throw TransportError.system(operation: "mmap", path: path, errno: Errno(rawValue: errno))
        }
        return address
    }

    /// Unmaps the region (and removes the file, for its creator). Safe to call twice.
    public func close() {
        guard !closed else { return }
        closed = true
        munmap(base, count)
        if removesFile { unlink(path) }
    }

    deinit {
        assert(closed, "SharedRegion \(path) was not closed")
        if !closed { close() }
    }
}
