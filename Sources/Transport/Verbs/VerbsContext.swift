import CVerbs
import SystemPackage

#if canImport(Glibc)
import Glibc
#endif

/// One opened RDMA device: the context, its protection domain, and what its port says about
/// addressing. It owns every verbs object made from it (memory registrations, queue pairs), as
/// rdma-core's pingpong examples do; `close()` must be called after those are closed, and
/// `deinit` asserts it.
public final class VerbsContext: @unchecked Sendable {
    /// Which device, port and GID entry to use.
    public struct Options: Sendable {
        /// Device name (e.g. `mlx5_0`); nil takes the first one found.
        public var device: String?
        public var port: UInt8 = 1
        /// GID table entry: 0 on InfiniBand; on RoCE the RoCE v2 entry of the interface's address.
        public var gidIndex: Int32 = 0

        public init(device: String? = nil) { self.device = device }
    }

    public let name: String
    public let options: Options
    let context: UnsafeMutablePointer<ibv_context>
    let protectionDomain: UnsafeMutablePointer<ibv_pd>
    let lid: UInt16
    let gid: [UInt8]
    let mtu: ibv_mtu
    /// Whether packets need a global route header (RoCE, or a GID on InfiniBand).
    let usesGlobalRoute: Bool
    private var closed = false

    /// Opens the device. Without one, fails with `RDMADevices.Unavailable` saying why.
    public init(options: Options = Options()) throws {
        self.options = options
        let names = try RDMADevices.names()
        var count: Int32 = 0
        guard let list = ibv_get_device_list(&count) else { throw RDMADevices.Unavailable(reason: "ibv_get_device_list failed") }
        defer { ibv_free_device_list(list) }
        var chosen: UnsafeMutablePointer<ibv_device>?
        for i in 0..<Int(count) {
            guard let device = list[i], let deviceName = ibv_get_device_name(device) else { continue }
            if options.device == nil || options.device == String(cString: deviceName) {
                chosen = device
                break
            }
        }
        guard let chosen else {
            throw RDMADevices.Unavailable(reason: "no device named \(options.device ?? "?") (found \(names.joined(separator: ", ")))")
        }
        name = String(cString: ibv_get_device_name(chosen))
        guard let context = ibv_open_device(chosen) else { throw Verbs.failure("ibv_open_device", name) }
        self.context = context
        var port = ibv_port_attr()
        let status = eaas_ibv_query_port(context, options.port, &port)
        guard status == 0 else {
            ibv_close_device(context)
            throw Verbs.failure("ibv_query_port \(options.port)", name, code: status)
        }
        guard port.state == IBV_PORT_ACTIVE else {
            ibv_close_device(context)
            throw RDMADevices.Unavailable(reason: "port \(options.port) of \(name) is not active (state \(port.state.rawValue))")
        }
        var raw = ibv_gid()
        guard ibv_query_gid(context, options.port, options.gidIndex, &raw) == 0 else {
            ibv_close_device(context)
            throw Verbs.failure("ibv_query_gid \(options.gidIndex)", name)
        }
        gid = withUnsafeBytes(of: raw.raw) { Array($0) }
        lid = port.lid
        mtu = port.active_mtu
        usesGlobalRoute = port.link_layer == UInt8(IBV_LINK_LAYER_ETHERNET) || gid.contains { $0 != 0 } && port.lid == 0
        guard let domain = ibv_alloc_pd(context) else {
            ibv_close_device(context)
            throw Verbs.failure("ibv_alloc_pd", name)
        }
        protectionDomain = domain
    }

    /// Registers `count` bytes at `base` for local use and remote writes by the peer.
    public func register(_ base: UnsafeMutableRawPointer, count: Int) throws -> VerbsMemory {
        let access = Int32(IBV_ACCESS_LOCAL_WRITE.rawValue | IBV_ACCESS_REMOTE_WRITE.rawValue)
        guard let region = eaas_ibv_reg_mr(protectionDomain, base, count, access) else { throw Verbs.failure("ibv_reg_mr (\(count) bytes)", name) }
        return VerbsMemory(region: region, base: base, count: count)
    }

    /// Releases the protection domain and closes the device.
    public func close() {
        guard !closed else { return }
        closed = true
        ibv_dealloc_pd(protectionDomain)
        ibv_close_device(context)
    }

    deinit {
        assert(closed, "VerbsContext \(name) was not closed")
        if !closed { close() }
    }
}

/// Memory registered with a device: the NIC reads it for our writes and the peer writes into it.
public final class VerbsMemory: @unchecked Sendable {
    let region: UnsafeMutablePointer<ibv_mr>
    public let base: UnsafeMutableRawPointer
    public let count: Int
    private var closed = false

    init(region: UnsafeMutablePointer<ibv_mr>, base: UnsafeMutableRawPointer, count: Int) {
        self.region = region
        self.base = base
        self.count = count
    }

    var localKey: UInt32 { region.pointee.lkey }
    var remoteKey: UInt32 { region.pointee.rkey }

    /// Deregisters the memory (it stays allocated: its owner frees it).
    public func close() {
        guard !closed else { return }
        closed = true
        ibv_dereg_mr(region)
    }

    deinit {
        assert(closed, "VerbsMemory was not deregistered")
        if !closed { close() }
    }
}

/// The one place a verbs failure becomes a Swift error. Calls that return NULL set errno; calls
/// that return an int return the errno value itself.
enum Verbs {
    static func failure(_ operation: String, _ device: String, code: Int32? = nil) -> TransportError {
        TransportError.system(operation: operation, path: device, errno: Errno(rawValue: code ?? errno))
    }

    static func check(_ status: Int32, _ operation: String, _ device: String) throws {
        guard status == 0 else { throw failure(operation, device, code: status) }
    }
}
