import Foundation
import JSON
import Kube
import Logging
import Platform

/// How the local kubelet gives each pod the CPU its spec asks for: `resources.limits.cpu` as a CFS
/// quota in a cgroup of the pod's own (v2 or v1, whichever this machine lets us write), or where
/// neither can be written, `EAAS_CPU_RATE_LIMIT` for the pod to pace itself (`CPUPacer`). Found
/// once per runtime and said once in the log. Every pod's CPU time is accounted either way.
final class PodCPU: @unchecked Sendable {
    let enforcement: CPUEnforcement
    /// Why cgroups are not used (nil when they are).
    let unavailable: String?
    private let root: CPUControllerRoot?
    private let lock = NSLock()
    private var retiredSeconds = 0.0

    init(enabled: Bool, logger: Logger) {
        guard enabled else {
            root = nil
            enforcement = .rateLimit
            unavailable = "cgroups disabled in the runtime's configuration"
            return
        }
        let name = "eaas-\(getpid())-\(String(UInt32.random(in: 0...UInt32.max), radix: 16))"
        do {
            let root = try CPUControllerRoot.discover(name: name)
            self.root = root
            enforcement = root.enforcement
            unavailable = nil
            logger.info("pod CPU limits enforced by the kernel", metadata: ["enforcement": "\(root.enforcement)", "cgroup": "\(root.directories.joined(separator: ", "))"])
        } catch {
            root = nil
            enforcement = .rateLimit
            unavailable = error.description
            logger.warning("cannot write a CPU cgroup; pods pace their own compute to their CPU limit instead (EAAS_CPU_RATE_LIMIT)",
                           metadata: ["reason": "\(error)"])
        }
    }

    /// The pod's limit in CPUs, from its first container's `resources.limits.cpu` (nil: none).
    static func limit(_ pod: KubeObject) throws -> Double? {
        guard let container = pod.json[path: ["spec", "containers"]]?.array?.first,
              let value = container[path: ["resources", "limits", "cpu"]] else { return nil }
        switch value {
        case .int(let cores): return try CPUQuantity.cores("\(cores)")
        case .double(let cores): return try CPUQuantity.cores("\(cores)")
        case .string(let text): return try CPUQuantity.cores(text)
        default: throw LocalRuntimeError("resources.limits.cpu of pod \(pod.key) is not a quantity")
        }
    }

    /// The group (cgroups) or environment (rate limit) that holds `pod` to its limit.
    func prepare(_ pod: KubeObject) throws -> (group: CPUControlGroup?, environment: [String: String], cores: Double?) {
        let cores = try Self.limit(pod)
        guard let root else {
            return (nil, cores.map { ["EAAS_CPU_RATE_LIMIT": "\($0)"] } ?? [:], cores)
        }
        do {
            return (try root.makeGroup(pod.uid ?? pod.name ?? "pod", cores: cores), [:], cores)
        } catch {
            throw LocalRuntimeError("cannot create the CPU cgroup of pod \(pod.key): \(error)")
        }
    }

    /// Counts a finished pod's CPU time and removes its group.
    func retire(group: CPUControlGroup?, lastSeconds: Double?) {
        let used = group?.cpuSeconds ?? lastSeconds ?? 0
        lock.withLock { retiredSeconds += used }
        group?.remove()
    }

    /// CPU seconds of pods that have finished.
    var retired: Double { lock.withLock { retiredSeconds } }

    /// Removes this runtime's cgroup directory (after every pod stopped).
    func close() { root?.remove() }
}

/// A Kubernetes CPU quantity: `250m`, `0.5`, `2`.
enum CPUQuantity {
    static func cores(_ text: String) throws -> Double {
        let trimmed = text.trimmingCharacters(in: .whitespaces)
        let value: Double?
        if trimmed.hasSuffix("m") {
            value = Double(trimmed.dropLast()).map { $0 / 1000 }
        } else {
            value = Double(trimmed)
        }
        guard let value, value.isFinite, value > 0, value <= 1_000_000 else {
            throw LocalRuntimeError("CPU quantity '\(text)' is not a positive number of CPUs (e.g. 250m, 0.5, 2)")
        }
        // Kubernetes keeps millicores; so does the quota.
        return max(0.001, (value * 1000).rounded() / 1000)
    }
}
