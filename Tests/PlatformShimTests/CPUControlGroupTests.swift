import Foundation
@testable import Platform
import Testing

/// The kernel's CPU controller as the local kubelet uses it: finding it, writing a pod's quota,
/// spawning into the group, and the limit holding.
@Suite("CPU control groups")
struct CPUControlGroupTests {
    static let thisMachine = """
        25 30 0:22 / /sys/fs/cgroup rw,relatime - tmpfs tmpfs rw,mode=755
        26 25 0:23 / /sys/fs/cgroup/cpu rw,relatime - cgroup cgroup rw,cpu
        27 25 0:24 / /sys/fs/cgroup/cpuacct rw,relatime - cgroup cgroup rw,cpuacct
        35 25 0:32 / /sys/fs/cgroup/unified rw,relatime - cgroup2 cgroup2 rw
        """

    @Test("mountinfo lines become cgroup mounts: v1 controllers apart or together, v2, escaped paths, other filesystems skipped")
    func mounts() {
        #expect(CgroupMount.parse(mountInfo: Self.thisMachine) == [
            CgroupMount(mountPoint: "/sys/fs/cgroup/cpu", root: "/", controllers: ["cpu"], isUnified: false),
            CgroupMount(mountPoint: "/sys/fs/cgroup/cpuacct", root: "/", controllers: ["cpuacct"], isUnified: false),
            CgroupMount(mountPoint: "/sys/fs/cgroup/unified", root: "/", controllers: [], isUnified: true),
        ])
        let cases: [(String, CgroupMount?)] = [
            ("30 25 0:26 / /sys/fs/cgroup/cpu,cpuacct rw,nosuid shared:10 - cgroup cgroup rw,cpu,cpuacct",
             CgroupMount(mountPoint: "/sys/fs/cgroup/cpu,cpuacct", root: "/", controllers: ["cpu", "cpuacct"], isUnified: false)),
            ("31 1 0:27 /kubepods/pod1 /sys/fs/cgroup rw - cgroup2 cgroup2 rw,nsdelegate",
             CgroupMount(mountPoint: "/sys/fs/cgroup", root: "/kubepods/pod1", controllers: [], isUnified: true)),
            ("32 1 0:28 / /mnt/my\\040cgroups rw - cgroup2 none rw", CgroupMount(mountPoint: "/mnt/my cgroups", root: "/", controllers: [], isUnified: true)),
            ("33 1 8:1 / / rw,relatime - ext4 /dev/sda1 rw", nil),
            ("garbage", nil),
        ]
        for (line, expected) in cases { #expect(CgroupMount.parse(mountInfo: line).first == expected, "\(line)") }
    }

    @Test("/proc/self/cgroup gives each controller's path; a mount's root is taken off the path")
    func membership() {
        let paths = CgroupMount.membership("12:cpu,cpuacct:/user.slice\n4:memory:/x\n0::/system.slice/eaas.service\n")
        #expect(paths["cpu"] == "/user.slice" && paths["cpuacct"] == "/user.slice" && paths["memory"] == "/x")
        #expect(paths[""] == "/system.slice/eaas.service")
        let nested = CgroupMount(mountPoint: "/sys/fs/cgroup", root: "/kubepods/pod1", controllers: [], isUnified: true)
        #expect(nested.directory(for: "/kubepods/pod1/runtime") == "/sys/fs/cgroup/runtime")
        #expect(nested.directory(for: "/kubepods/pod1") == "/sys/fs/cgroup")
        #expect(CgroupMount(mountPoint: "/sys/fs/cgroup/cpu", root: "/", controllers: ["cpu"], isUnified: false).directory(for: "/") == "/sys/fs/cgroup/cpu")
    }

    @Test("Quota per CFS period as kubelet computes it: millicores × period, at least 1 ms")
    func quota() {
        let cases: [(Double, Int)] = [(0.25, 25_000), (1, 100_000), (2.5, 250_000), (0.001, 1000), (0.0001, 1000)]
        for (cores, quota) in cases { #expect(CPUControlGroup.quotaMicroseconds(cores: cores) == quota, "\(cores)") }
    }

    /// A fake /proc/self and cgroup tree: what discovery reads and writes, without the kernel.
    static func fakeTree(mountInfo: String, cgroup: String, files: [String: String]) throws -> String {
        let root = NSTemporaryDirectory() + "eaas-cgroup-fake-\(UUID().uuidString)"
        try FileManager.default.createDirectory(atPath: root + "/proc", withIntermediateDirectories: true)
        try mountInfo.write(toFile: root + "/proc/mountinfo", atomically: true, encoding: .utf8)
        try cgroup.write(toFile: root + "/proc/cgroup", atomically: true, encoding: .utf8)
        for (path, text) in files {
            try FileManager.default.createDirectory(atPath: root + (path as NSString).deletingLastPathComponent, withIntermediateDirectories: true)
            try text.write(toFile: root + path, atomically: true, encoding: .utf8)
        }
        return root
    }

    @Test("Where v2's cpu controller is available it is delegated and a pod's limit is written to cpu.max")
    func unifiedHierarchy() throws {
        let root = try Self.fakeTree(mountInfo: "1 0 0:1 / /cg rw - cgroup2 cgroup2 rw", cgroup: "0::/\n",
                                     files: ["/cg/cgroup.controllers": "cpuset cpu io memory pids\n", "/cg/cgroup.subtree_control": ""])
        defer { try? FileManager.default.removeItem(atPath: root) }
        // A fake tree has no kernel to make the interface files: pre-create the ones written.
        let controller = try CPUControllerRoot.discover(name: "eaas-test", procSelf: root + "/proc", fileRoot: root, createFiles: true)
        #expect(controller.enforcement == .cgroupV2)
        #expect(controller.directories == [root + "/cg/eaas-test"])
        #expect(try String(contentsOfFile: root + "/cg/cgroup.subtree_control", encoding: .utf8) == "+cpu")
        let group = try controller.makeGroup("pod-a", cores: 0.5)
        #expect(try String(contentsOfFile: root + "/cg/eaas-test/pod-a/cpu.max", encoding: .utf8) == "50000 100000")
        try "usage_usec 1500000\nuser_usec 1000000\nnr_periods 20\nnr_throttled 5\n".write(toFile: root + "/cg/eaas-test/pod-a/cpu.stat", atomically: true, encoding: .utf8)
        #expect(group.cpuSeconds == 1.5)
        #expect(group.throttling.map { [$0.periods, $0.throttled] } == [20, 5])
        let unlimited = try controller.makeGroup("pod-b", cores: nil)
        #expect(try String(contentsOfFile: unlimited.directories[0] + "/cpu.max", encoding: .utf8) == "max 100000")
        #expect(throws: CgroupError.self) { try controller.makeGroup("../escape", cores: 1) }
    }

    @Test("Without v2's cpu controller the v1 cpu hierarchy is used (cpuacct apart for usage); with neither, the error says why")
    func legacyHierarchy() throws {
        let root = try Self.fakeTree(mountInfo: Self.thisMachine, cgroup: "2:cpuacct:/\n1:cpu:/\n0::/\n",
                                     files: ["/sys/fs/cgroup/unified/cgroup.controllers": "hugetlb\n", "/sys/fs/cgroup/cpu/tasks": "",
                                             "/sys/fs/cgroup/cpuacct/tasks": ""])
        defer { try? FileManager.default.removeItem(atPath: root) }
        let controller = try CPUControllerRoot.discover(name: "eaas-test", procSelf: root + "/proc", fileRoot: root, createFiles: true)
        #expect(controller.enforcement == .cgroupV1)
        #expect(controller.directories == [root + "/sys/fs/cgroup/cpu/eaas-test", root + "/sys/fs/cgroup/cpuacct/eaas-test"])
        let group = try controller.makeGroup("pod-a", cores: 0.25)
        #expect(try String(contentsOfFile: group.directories[0] + "/cpu.cfs_quota_us", encoding: .utf8) == "25000")
        #expect(try String(contentsOfFile: group.directories[0] + "/cpu.cfs_period_us", encoding: .utf8) == "100000")
        try "2500000000\n".write(toFile: group.directories[1] + "/cpuacct.usage", atomically: true, encoding: .utf8)
        #expect(group.cpuSeconds == 2.5)

        let none = try Self.fakeTree(mountInfo: "1 0 0:1 / /cg rw - cgroup2 cgroup2 rw", cgroup: "0::/\n", files: ["/cg/cgroup.controllers": "memory\n"])
        defer { try? FileManager.default.removeItem(atPath: none) }
        do {
            _ = try CPUControllerRoot.discover(name: "eaas-test", procSelf: none + "/proc", fileRoot: none)
            Issue.record("discovery succeeded without a cpu controller")
        } catch {
            #expect(error.description.contains("the cpu controller is not available"))
            #expect(error.description.contains("no cgroup v1 cpu hierarchy"))
        }
    }

    @Test("On this machine: a child joins its group before exec, cannot use more than its quota, and the group goes once it exits")
    func realKernel() throws {
        let controller: CPUControllerRoot
        do { controller = try CPUControllerRoot.discover(name: "eaas-\(getpid())-test-\(UInt16.random(in: 0...UInt16.max))") } catch {
            print("skipped: no writable CPU cgroup here (\(error)); the rate-limit fallback is tested instead")
            return
        }
        defer { controller.remove() }
        let group = try controller.makeGroup("spin", cores: 0.25)
        // `cat` reads its own membership as its first act: it was in the group before it ran.
        let out = Pipe()
        let cat = try ChildProcess(executable: "/bin/cat", arguments: ["/proc/self/cgroup"], standardOutput: .pipe(out), cpuGroup: group)
        let membership = String(decoding: out.fileHandleForReading.readDataToEndOfFile(), as: UTF8.self)
        #expect(cat.waitUntilExit() == 0)
        #expect(membership.contains("/spin"), "\(membership)")

        let spin = try ChildProcess(executable: "/bin/sh", arguments: ["-c", "while :; do :; done"], cpuGroup: group)
        let start = ContinuousClock.now
        let before = group.cpuSeconds ?? 0
        Thread.sleep(forTimeInterval: 1.5)
        let used = (group.cpuSeconds ?? 0) - before
        let wall = (ContinuousClock.now - start).seconds
        #expect(group.processes == [spin.pid])
        spin.kill()
        spin.waitUntilExit()
        // The quota is a ceiling (one period's slack); the floor only says it ran at all.
        #expect(used <= 0.25 * wall + 0.1, "used \(used) CPU s in \(wall) s under a 0.25 CPU limit")
        #expect(used > 0.02, "used \(used) CPU s")
        #expect(group.remove())
        #expect(!FileManager.default.fileExists(atPath: group.directories[0]))
    }
}

extension Duration {
    fileprivate var seconds: Double { Double(components.seconds) + Double(components.attoseconds) / 1e18 }
}
