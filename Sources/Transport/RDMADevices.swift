import CVerbs

#if canImport(Glibc)
import Glibc
#endif

/// The RDMA devices libibverbs can see on this host. The `verbs` backend is chosen only when this
/// finds one; asked for without one, it fails with the error below.
public enum RDMADevices {
    /// Why no RDMA device can be used.
    public struct Unavailable: Error, CustomStringConvertible, Sendable {
        public let reason: String
        public var description: String { "RDMA verbs transport unavailable: \(reason)" }
    }

    /// Names of the RDMA devices present (e.g. `mlx5_0`), or an error saying why there are none.
    public static func names() throws -> [String] {
        var count: Int32 = 0
        guard let list = ibv_get_device_list(&count) else {
            // With no RDMA subsystem at all, libibverbs returns NULL with errno ENOSYS.
            let code = errno
            throw Unavailable(reason: "ibv_get_device_list failed: \(String(cString: strerror(code))) (errno \(code)); no RDMA device or driver on this host")
        }
        defer { ibv_free_device_list(list) }
        var names: [String] = []
        for i in 0..<Int(count) {
            if let device = list[i], let name = ibv_get_device_name(device) { names.append(String(cString: name)) }
        }
        guard !names.isEmpty else { throw Unavailable(reason: "libibverbs found no RDMA device on this host") }
        return names
    }
}
