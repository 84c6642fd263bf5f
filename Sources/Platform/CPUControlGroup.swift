import Foundation

#if canImport(Glibc)
import Glibc
#endif

/// How a pod's `resources.limits.cpu` is enforced on this machine.
public enum CPUEnforcement: String, Sendable, CustomStringConvertible {
    /// CFS quota in a cgroup v1 `cpu` hierarchy (`cpu.cfs_quota_us` / `cpu.cfs_period_us`).
    case cgroupV1 = "cgroup-v1"
    /// CFS bandwidth in the unified hierarchy (`cpu.max`).
    case cgroupV2 = "cgroup-v2"
    /// No writable CPU controller: the pod paces its own compute (`EAAS_CPU_RATE_LIMIT`).
    case rateLimit = "rate-limit"

    public var description: String { rawValue }
}

/// Why the kernel's CPU controller cannot be used, or a write to it failed: the file and the errno.
public struct CgroupError: Error, CustomStringConvertible, Sendable {
    public let description: String
    public init(_ description: String) { self.description = description }

    /// The one place an errno from a cgroup file becomes an error.
    static func errno(_ what: String, _ path: String, _ code: Int32 = Glibc.errno) -> CgroupError {
        CgroupError("\(what) \(path): \(String(cString: strerror(code)))")
    }
}

/// The kernel's CPU controller as a kubelet uses it: a directory of this process's own under which
/// each pod gets a group with a CFS quota, found once from `/proc/self/mountinfo` and
/// `/proc/self/cgroup`. The unified hierarchy (v2) is preferred where its `cpu` controller is
/// available and can be delegated; otherwise the v1 `cpu` hierarchy (with `cpuacct` for usage where
/// it is mounted apart).
public final class CPUControllerRoot: Sendable {
    public let enforcement: CPUEnforcement
    /// The directories this runtime's groups go under (v1: the `cpu` one, then `cpuacct` if apart).
    public let directories: [String]
    /// Interface files are created when missing: only for a test's fake tree (the kernel makes them).
    let createFiles: Bool

    /// CFS period, as kubelet sets it.
    public static let periodMicroseconds = 100_000

    init(enforcement: CPUEnforcement, directories: [String], createFiles: Bool) {
        self.enforcement = enforcement
        self.directories = directories
        self.createFiles = createFiles
    }

    /// Finds a writable CPU controller and makes `name`'s directory in it (groups left there by an
    /// earlier run whose processes are gone are removed). `procSelf`, `fileRoot` and `createFiles` exist
    /// for tests: a fake `/proc/self`, a directory the cgroup paths are read under, and interface
    /// files made on first write as the kernel would have made them.
    public static func discover(name: String, procSelf: String = "/proc/self", fileRoot: String = "",
                                createFiles: Bool = false) throws(CgroupError) -> CPUControllerRoot {
        guard let mountInfo = try? String(contentsOfFile: procSelf + "/mountinfo", encoding: .utf8),
              let membership = try? String(contentsOfFile: procSelf + "/cgroup", encoding: .utf8) else {
            throw CgroupError("cannot read \(procSelf)/mountinfo or \(procSelf)/cgroup")
        }
        let mounts = CgroupMount.parse(mountInfo: mountInfo)
        let paths = CgroupMount.membership(membership)
        var problems: [String] = []
        if let unified = mounts.first(where: { $0.isUnified }), let own = paths[""] {
            do { return try v2(mount: unified, own: own, name: name, fileRoot: fileRoot, createFiles: createFiles) } catch { problems.append("cgroup v2: \(error)") }
        }
        if let cpu = mounts.first(where: { $0.controllers.contains("cpu") }), let own = paths["cpu"] {
            do {
                var directories = [try makeDirectory(fileRoot + cpu.directory(for: own) + "/" + name)]
                if !cpu.controllers.contains("cpuacct"), let acct = mounts.first(where: { $0.controllers.contains("cpuacct") }), let accountPath = paths["cpuacct"] {
                    // Usage only; no limit depends on it, so a failure here is not fatal.
                    if let directory = try? makeDirectory(fileRoot + acct.directory(for: accountPath) + "/" + name) { directories.append(directory) }
                }
                let root = CPUControllerRoot(enforcement: .cgroupV1, directories: directories, createFiles: createFiles)
                root.removeStaleGroups()
                return root
            } catch { problems.append("cgroup v1: \(error)") }
        } else {
            problems.append("no cgroup v1 cpu hierarchy is mounted")
        }
        throw CgroupError(problems.joined(separator: "; "))
    }

    /// v2: the `cpu` controller must be in our group's `cgroup.controllers` and enabled for
    /// children; a non-root group that holds processes cannot enable it (the kernel's no-internal-
    /// process rule, EBUSY), which is reported rather than worked around by moving this process.
    private static func v2(mount: CgroupMount, own: String, name: String, fileRoot: String, createFiles: Bool) throws(CgroupError) -> CPUControllerRoot {
        let base = fileRoot + mount.directory(for: own)
        let available = (try? String(contentsOfFile: base + "/cgroup.controllers", encoding: .utf8)) ?? ""
        guard available.split(whereSeparator: \.isWhitespace).contains("cpu") else {
            throw CgroupError("the cpu controller is not available in \(base) (cgroup.controllers: \(available.trimmingCharacters(in: .whitespacesAndNewlines)))")
        }
        try write("+cpu", to: base + "/cgroup.subtree_control", create: createFiles)
        let directory = try makeDirectory(base + "/" + name)
        try write("+cpu", to: directory + "/cgroup.subtree_control", create: createFiles)
        let root = CPUControllerRoot(enforcement: .cgroupV2, directories: [directory], createFiles: createFiles)
        root.removeStaleGroups()
        return root
    }

    /// A group for one pod limited to `cores` CPUs (nil: accounted, not limited).
    public func makeGroup(_ name: String, cores: Double?) throws(CgroupError) -> CPUControlGroup {
        guard !name.isEmpty, !name.contains("/"), name != ".", name != ".." else { throw CgroupError("'\(name)' is not a cgroup name") }
        let groups = try directories.map { (parent) throws(CgroupError) in try Self.makeDirectory(parent + "/" + name) }
        let group = CPUControlGroup(enforcement: enforcement, directories: groups, cores: cores, createFiles: createFiles)
        do { try group.applyLimit() } catch {
            group.remove()
            throw error
        }
        return group
    }

    /// Removes this runtime's directory (its groups must be empty: pods stopped first).
    public func remove() {
        removeStaleGroups()
        for directory in directories { rmdir(directory) }
    }

    /// Groups whose processes are all gone: a pod's whose removal failed, and the directories of
    /// earlier runtimes (`eaas-PID-…`) whose process no longer exists.
    func removeStaleGroups() {
        for directory in directories {
            Self.removeEmptyChildren(of: directory)
            let parent = (directory as NSString).deletingLastPathComponent
            for sibling in (try? FileManager.default.contentsOfDirectory(atPath: parent)) ?? [] where sibling.hasPrefix("eaas-") {
                let parts = sibling.split(separator: "-")
                guard parts.count >= 3, let pid = Int32(parts[1]), pid != getpid(), kill(pid, 0) != 0, errno == ESRCH else { continue }
                Self.removeEmptyChildren(of: parent + "/" + sibling)
                rmdir(parent + "/" + sibling)
            }
        }
    }

    private static func removeEmptyChildren(of directory: String) {
        for child in (try? FileManager.default.contentsOfDirectory(atPath: directory)) ?? [] {
            let path = directory + "/" + child
            var isDirectory: ObjCBool = false
            guard FileManager.default.fileExists(atPath: path, isDirectory: &isDirectory), isDirectory.boolValue else { continue }
            if CPUControlGroup.processes(in: path).isEmpty { rmdir(path) }
        }
    }

    static func makeDirectory(_ path: String) throws(CgroupError) -> String {
        if mkdir(path, 0o755) != 0, errno != EEXIST { throw CgroupError.errno("cannot create", path) }
        return path
    }

    static func write(_ text: String, to path: String, create: Bool = false) throws(CgroupError) {
        let fd = create ? open(path, O_WRONLY | O_CLOEXEC | O_CREAT | O_TRUNC, 0o644) : open(path, O_WRONLY | O_CLOEXEC)
        guard fd >= 0 else { throw CgroupError.errno("cannot open", path) }
        defer { close(fd) }
        let written = text.utf8CString.withUnsafeBufferPointer { Glibc.write(fd, $0.baseAddress, $0.count - 1) }
        guard written == text.utf8.count else { throw CgroupError.errno("cannot write '\(text)' to", path) }
    }
}

/// One pod's CPU group: its limit, the processes in it, the CPU time they used.
public final class CPUControlGroup: Sendable {
    public let enforcement: CPUEnforcement
    /// The group's directory in each hierarchy (v1 with cpuacct apart: two).
    public let directories: [String]
    /// The limit in CPUs; nil when only accounted.
    public let cores: Double?
    private let createFiles: Bool

    init(enforcement: CPUEnforcement, directories: [String], cores: Double?, createFiles: Bool = false) {
        self.enforcement = enforcement
        self.directories = directories
        self.cores = cores
        self.createFiles = createFiles
    }

    /// The CFS quota for `cores` per period, as kubelet computes it (at least 1 ms).
    public static func quotaMicroseconds(cores: Double, period: Int = CPUControllerRoot.periodMicroseconds) -> Int {
        max(1000, Int((cores * Double(period)).rounded()))
    }

    func applyLimit() throws(CgroupError) {
        let period = CPUControllerRoot.periodMicroseconds
        let quota = cores.map { Self.quotaMicroseconds(cores: $0) }
        switch enforcement {
        case .cgroupV1:
            try CPUControllerRoot.write("\(period)", to: directories[0] + "/cpu.cfs_period_us", create: createFiles)
            try CPUControllerRoot.write(quota.map(String.init) ?? "-1", to: directories[0] + "/cpu.cfs_quota_us", create: createFiles)
        case .cgroupV2:
            try CPUControllerRoot.write("\(quota.map(String.init) ?? "max") \(period)", to: directories[0] + "/cpu.max", create: createFiles)
        case .rateLimit:
            break
        }
    }

    /// Descriptors open for writing on each hierarchy's `cgroup.procs`, for a child to write "0" to
    /// between fork and exec (so it runs in the group from its first instruction). The caller closes them.
    public func openProcessFiles() throws(CgroupError) -> [Int32] {
        var descriptors: [Int32] = []
        for directory in directories {
            let fd = open(directory + "/cgroup.procs", O_WRONLY | O_CLOEXEC)
            guard fd >= 0 else {
                let code = errno
                descriptors.forEach { close($0) }
                throw CgroupError.errno("cannot open", directory + "/cgroup.procs", code)
            }
            descriptors.append(fd)
        }
        return descriptors
    }

    /// Moves a running process into the group.
    public func add(pid: Int32) throws(CgroupError) {
        for directory in directories { try CPUControllerRoot.write("\(pid)", to: directory + "/cgroup.procs") }
    }

    /// CPU seconds used by the group's processes so far (v1: `cpuacct.usage`; v2: `cpu.stat`'s
    /// `usage_usec`); nil where the kernel does not account it.
    public var cpuSeconds: Double? {
        switch enforcement {
        case .cgroupV2:
            return Self.statField(directories[0] + "/cpu.stat", "usage_usec").map { Double($0) / 1e6 }
        default:
            for directory in directories {
                if let text = try? String(contentsOfFile: directory + "/cpuacct.usage", encoding: .utf8),
                   let nanoseconds = Int(text.trimmingCharacters(in: .whitespacesAndNewlines)) {
                    return Double(nanoseconds) / 1e9
                }
            }
            return nil
        }
    }

    /// CFS periods run and periods in which the group was throttled.
    public var throttling: (periods: Int, throttled: Int)? {
        let stat = directories[0] + "/cpu.stat"
        guard let periods = Self.statField(stat, "nr_periods"), let throttled = Self.statField(stat, "nr_throttled") else { return nil }
        return (periods, throttled)
    }

    /// The processes in the group.
    public var processes: [Int32] { Self.processes(in: directories[0]) }

    static func processes(in directory: String) -> [Int32] {
        ((try? String(contentsOfFile: directory + "/cgroup.procs", encoding: .utf8)) ?? "").split(separator: "\n").compactMap { Int32($0) }
    }

    static func statField(_ path: String, _ key: String) -> Int? {
        guard let text = try? String(contentsOfFile: path, encoding: .utf8) else { return nil }
        for line in text.split(separator: "\n") {
            let words = line.split(separator: " ")
            if words.count == 2, words[0] == key { return Int(words[1]) }
        }
        return nil
    }

    /// Removes the group once its processes are gone (the kernel refuses while any remain; a
    /// process just killed may take a moment to leave).
    @discardableResult
    public func remove(waiting: Duration = .seconds(2)) -> Bool {
        let deadline = ContinuousClock.now + waiting
        var removed = true
        for directory in directories.reversed() {
            while rmdir(directory) != 0, errno == EBUSY, ContinuousClock.now < deadline { usleep(10_000) }
            removed = removed && !FileManager.default.fileExists(atPath: directory)
        }
        return removed
    }
}

/// A cgroup filesystem from `/proc/self/mountinfo`.
struct CgroupMount: Equatable {
    /// Where it is mounted.
    var mountPoint: String
    /// The hierarchy path mounted there (not `/` inside some containers).
    var root: String
    /// v1 controllers (`cpu`, `cpuacct`); empty for the unified hierarchy.
    var controllers: [String]
    var isUnified: Bool

    /// The directory of the group whose hierarchy path is `path`.
    func directory(for path: String) -> String {
        var relative = path
        if root != "/", relative.hasPrefix(root) { relative = String(relative.dropFirst(root.count)) }
        if relative == "/" { relative = "" }
        return mountPoint + relative
    }

    /// `ID PARENT MAJ:MIN ROOT MOUNTPOINT OPTIONS [OPTIONAL…] - FSTYPE SOURCE SUPEROPTIONS`.
    static func parse(mountInfo: String) -> [CgroupMount] {
        mountInfo.split(separator: "\n").compactMap { line in
            let fields = line.split(separator: " ").map(String.init)
            guard let dash = fields.firstIndex(of: "-"), dash >= 6, fields.count >= dash + 4 else { return nil }
            let type = fields[dash + 1]
            let root = unescape(fields[3]), point = unescape(fields[4])
            switch type {
            case "cgroup2": return CgroupMount(mountPoint: point, root: root, controllers: [], isUnified: true)
            case "cgroup":
                let options = fields[dash + 3].split(separator: ",").map(String.init)
                return CgroupMount(mountPoint: point, root: root, controllers: options.filter { ["cpu", "cpuacct", "cpuset", "memory", "pids"].contains($0) },
                                   isUnified: false)
            default: return nil
            }
        }
    }

    /// `/proc/self/cgroup` as controller → path (`""` is the unified hierarchy's `0::/path`).
    static func membership(_ text: String) -> [String: String] {
        var paths: [String: String] = [:]
        for line in text.split(separator: "\n") {
            let parts = line.split(separator: ":", maxSplits: 2, omittingEmptySubsequences: false).map(String.init)
            guard parts.count == 3 else { continue }
            if parts[1].isEmpty {
                paths[""] = parts[2]
            } else {
                for controller in parts[1].split(separator: ",") { paths[String(controller)] = parts[2] }
            }
        }
        return paths
    }

    /// mountinfo escapes space, tab, newline and backslash as octal.
    static func unescape(_ field: String) -> String {
        guard field.contains("\\") else { return field }
        var bytes: [UInt8] = []
        var utf8 = Array(field.utf8)[...]
        while let byte = utf8.popFirst() {
            if byte == UInt8(ascii: "\\"), utf8.count >= 3, let value = UInt8(String(decoding: utf8.prefix(3), as: UTF8.self), radix: 8) {
                bytes.append(value)
                utf8 = utf8.dropFirst(3)
            } else {
                bytes.append(byte)
            }
        }
        return String(decoding: bytes, as: UTF8.self)
    }
}

/// CPU time of any process, from `/proc/PID/stat` (user + system), for pods without a group.
public enum ProcessCPUTime {
    public static func seconds(pid: Int32) -> Double? {
        guard let text = try? String(contentsOfFile: "/proc/\(pid)/stat", encoding: .utf8),
              let close = text.lastIndex(of: ")") else { return nil }
        // After "pid (comm) ": state is field 3; utime and stime are fields 14 and 15.
        let fields = text[text.index(after: close)...].split(separator: " ")
        guard fields.count > 13, let user = Double(fields[11]), let system = Double(fields[12]) else { return nil }
        return (user + system) / Double(sysconf(Int32(_SC_CLK_TCK)))
    }

    /// A pod's CPU seconds: its group's usage when it has one (children included), else its
    /// process's own from /proc; nil when neither can be read.
    public static func seconds(group: CPUControlGroup?, pid: Int32?) -> Double? {
        group?.cpuSeconds ?? pid.flatMap { seconds(pid: $0) }
    }
}
