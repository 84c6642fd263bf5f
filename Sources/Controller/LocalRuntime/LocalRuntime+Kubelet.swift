import Foundation
import JSON
import Kube
import Platform

/// The kubelet of the local runtime: each pod a process on a loopback address of its own, Secret
/// volumes as files, readiness probes, preStop + SIGTERM + grace on deletion, failed pods replaced.
extension LocalRuntime {

    func syncKubelet(pods: InformerStore) async {
        let present = pods.list().filter { $0.deletionTimestamp == nil }
        let presentUIDs = Set(present.compactMap(\.uid))
        // Pods deleted from the API: preStop, then SIGTERM with the grace period, in the background.
        let gone: [Container] = lock.withLock {
            let gone = containers.filter { !presentUIDs.contains($0.key) }
            for key in gone.keys { containers[key] = nil }
            return Array(gone.values)
        }
        for container in gone { stop(container) }

        for pod in present {
            guard let uid = pod.uid else { continue }
            let phase = pod.json[path: ["status", "phase"]]?.string
            if phase == "Failed" || phase == "Succeeded" {
                // Finished pods run nothing (a failed pod whose delete did not go through included).
                if let container = lock.withLock({ containers.removeValue(forKey: uid) }) { stop(container) }
                continue
            }
            if let container = lock.withLock({ containers[uid] }) {
                await watch(container, pod: pod)
            } else if phase == nil || phase == "Pending" {
                await start(pod)
            }
        }
    }

    func start(_ pod: KubeObject) async {
        guard let uid = pod.uid, let name = pod.name else { return }
        let ip = allocateAddress(ports: Self.containerPorts(pod))
        let directory = "\(configuration.directory)/\(name)"
        do {
            try FileManager.default.createDirectory(atPath: directory, withIntermediateDirectories: true)
            var local = try await localPod(pod, ip: ip, directory: directory)
            let capacity = try cpu.prepare(pod)
            local.cpuGroup = capacity.group
            local.cpuLimit = capacity.cores
            local.environment.merge(capacity.environment) { $1 }
            let launched: any LaunchedContainer
            do { launched = try launcher.launch(local) } catch {
                cpu.retire(group: capacity.group, lastSeconds: nil)
                throw error
            }
            lock.withLock { containers[uid] = Container(pod: pod, ip: ip, launched: launched, local: local) }
            logger.info("pod started", metadata: ["pod": "\(name)", "ip": "\(ip)"])
            try await patchPodStatus(pod, phase: "Running", ip: ip, ready: false, message: nil)
        } catch {
            logger.warning("pod failed to start", metadata: ["pod": "\(name)", "error": "\(error)"])
            try? await patchPodStatus(pod, phase: "Failed", ip: ip, ready: false, message: "\(error)")
            await failed(pod)
        }
    }

    func watch(_ container: Container, pod: KubeObject) async {
        if let status = container.launched.exitStatus {
            lock.withLock { containers[pod.uid ?? ""] = nil }
            container.launched.cleanUp()
            cpu.retire(group: container.local.cpuGroup, lastSeconds: container.cpuSeconds)
            for directory in container.local.scratchDirectories { try? FileManager.default.removeItem(atPath: directory) }
            logger.warning("pod's container exited; replacing the pod", metadata: ["pod": "\(pod.name ?? "")", "status": "\(status)"])
            try? await patchPodStatus(pod, phase: "Failed", ip: container.ip, ready: false, message: "container exited with status \(status)")
            await failed(pod)
            return
        }
        guard ContinuousClock.now - container.lastProbe >= configuration.probePeriod else { return }
        container.lastProbe = ContinuousClock.now
        _ = container.currentCPUSeconds()
        guard let probe = Self.httpGet(pod, path: ["readinessProbe", "httpGet"]) else { return }
        let thresholds = ProbeThresholds(pod: pod, probe: "readinessProbe")
        let passed = (try? await PlainHTTP.get("http://\(container.ip):\(probe.port)\(probe.path)", timeout: thresholds.timeout))?.status == 200
        if container.readiness.record(passed: passed, thresholds: thresholds) {
            try? await patchPodStatus(pod, phase: "Running", ip: container.ip, ready: container.ready, message: nil)
        }
    }

    /// A failed pod is deleted so its Deployment replaces it, with a growing pause before the next
    /// creation (a crash loop does not spin).
    func failed(_ pod: KubeObject) async {
        if let owner = pod.ownerReferences.first?["uid"]?.string {
            lock.withLock {
                let failures = (creationBackoff[owner]?.failures ?? 0) + 1
                creationBackoff[owner] = (failures, ContinuousClock.now + .milliseconds(min(30_000, 250 << min(failures, 7))))
            }
        }
        _ = try? await client.delete(.pods, pod.name ?? "", namespace: pod.namespace)
    }

    func stop(_ container: Container) {
        let pod = container.pod
        let grace = Duration.seconds(pod.json[path: ["spec", "terminationGracePeriodSeconds"]]?.int ?? 30)
        let preStop = Self.httpGet(pod, path: ["lifecycle", "preStop", "httpGet"])
        let ip = container.ip
        let launcher = self.launcher
        let logger = self.logger
        let cpu = self.cpu
        logger.info("pod stopping", metadata: ["pod": "\(pod.name ?? "")"])
        let task = Task {
            let start = ContinuousClock.now
            if let preStop, container.launched.exitStatus == nil {
                _ = try? await PlainHTTP.get("http://\(ip):\(preStop.port)\(preStop.path)", timeout: grace)
            }
            if let command = container.local.preStopCommand, container.launched.exitStatus == nil {
                // As a kubelet does: the hook runs inside the container (here: as the pod's user,
                // with the pod's paths), and the grace period counts from its start.
                let status = await launcher.runHook(container.local, command: command, timeout: grace)
                if status != 0 {
                    logger.warning("preStop hook failed", metadata: ["pod": "\(pod.name ?? "")", "status": "\(status.map(String.init) ?? "timed out")"])
                }
            }
            _ = container.currentCPUSeconds()
            await container.launched.terminate(grace: max(.seconds(1), grace - (ContinuousClock.now - start)))
            container.launched.cleanUp()
            cpu.retire(group: container.local.cpuGroup, lastSeconds: container.cpuSeconds)
            for directory in container.local.scratchDirectories { try? FileManager.default.removeItem(atPath: directory) }
        }
        lock.withLock {
            draining.removeAll { $0.isCancelled }
            draining.append(task)
        }
        Task { [weak self] in
            await task.value
            self?.lock.withLock { self?.draining.removeAll { $0 == task } }
        }
    }

    func stopAll() async {
        let all: [Container] = lock.withLock {
            let all = Array(containers.values)
            containers = [:]
            return all
        }
        for container in all { stop(container) }
        let tasks = lock.withLock { draining }
        for task in tasks { await task.value }
    }

    /// A loopback address (the whole of 127/8 is loopback on Linux) on which `ports` are free.
    func allocateAddress(ports: [Int]) -> String {
        lock.withLock {
            for _ in 0..<256 {
                // 127.1.0.1 to 127.64.255.254, skipping .0 and .255.
                repeat { nextAddress = (nextAddress + 1) % (1 << 22) } while nextAddress % 256 == 0 || nextAddress % 256 == 255
                let ip = "127.\(1 + nextAddress / 65_536).\((nextAddress / 256) % 256).\(nextAddress % 256)"
                if ports.allSatisfy({ LoopbackPorts.isFree(ip: ip, port: $0) }) { return ip }
            }
            return "127.0.0.1"
        }
    }

    static func containerPorts(_ pod: KubeObject) -> [Int] {
        (pod.json[path: ["spec", "containers"]]?.array ?? []).flatMap { $0["ports"]?.array ?? [] }.compactMap { $0["containerPort"]?.int }
    }

    /// The container's command line with the pod's view of the world made local: volume mount paths
    /// become local directories (Secret volumes written out, hostPath used as is) and the wildcard
    /// address becomes the pod's own.
    func localPod(_ pod: KubeObject, ip: String, directory: String) async throws -> LocalPod {
        guard let container = pod.json[path: ["spec", "containers"]]?.array?.first else { throw LocalRuntimeError("pod \(pod.key) has no container") }
        var volumes: [String: String] = [:]
        var scratch: [String] = []
        for volume in pod.json[path: ["spec", "volumes"]]?.array ?? [] {
            guard let name = volume["name"]?.string else { continue }
            if let secretName = volume[path: ["secret", "secretName"]]?.string {
                let secret = try await client.get(.secrets, secretName, namespace: pod.namespace)
                let local = "\(directory)/volumes/\(name)"
                try FileManager.default.createDirectory(atPath: local, withIntermediateDirectories: true)
                let data = secret.json["data"]?.object ?? [:]
                let items = volume[path: ["secret", "items"]]?.array?.compactMap { item -> (String, String)? in
                    guard let key = item["key"]?.string, let path = item["path"]?.string else { return nil }
                    return (key, path)
                } ?? data.keys.map { ($0, $0) }
                for (key, path) in items {
                    guard let encoded = data[key]?.string, let bytes = Data(base64Encoded: encoded) else {
                        throw LocalRuntimeError("Secret \(secretName) has no key '\(key)'")
                    }
                    guard FileManager.default.createFile(atPath: "\(local)/\(path)", contents: bytes, attributes: [.posixPermissions: 0o600]) else {
                        throw LocalRuntimeError("cannot write Secret \(secretName) key '\(key)' to \(local)/\(path)")
                    }
                }
                volumes[name] = local
            } else if let path = volume[path: ["hostPath", "path"]]?.string {
                volumes[name] = path
            } else if volume["emptyDir"] != nil {
                // Short and private (a Unix socket path holds at most 107 bytes; the pod's own
                // directory may be deep): /tmp/eaas-<pod uid>-<volume>, mode 0700, removed with the pod.
                let local = NSTemporaryDirectory().replacingOccurrences(of: "//", with: "/") + "eaas-\((pod.uid ?? name).prefix(13))-\(name)"
                try? FileManager.default.removeItem(atPath: local)
                try FileManager.default.createDirectory(atPath: local, withIntermediateDirectories: true, attributes: [.posixPermissions: 0o700])
                volumes[name] = local
                scratch.append(local)
            } else {
                throw LocalRuntimeError("volume '\(name)' of pod \(pod.key): only secret, hostPath and emptyDir volumes run locally")
            }
        }
        var mounts: [(String, String)] = []
        for mount in container["volumeMounts"]?.array ?? [] {
            guard let name = mount["name"]?.string, let path = mount["mountPath"]?.string, let local = volumes[name] else { continue }
            mounts.append((path, local))
        }
        mounts.sort { $0.0.count > $1.0.count }  // the deepest mount wins
        func localized(_ arg: String) -> String {
            var arg = arg.replacingOccurrences(of: "0.0.0.0", with: ip)
            if let (path, local) = mounts.first(where: { arg == $0.0 || arg.hasPrefix($0.0 + "/") }) { arg = local + arg.dropFirst(path.count) }
            return arg
        }
        let args = (container["args"]?.array ?? []).compactMap(\.string).map(localized)
        let preStop = container[path: ["lifecycle", "preStop", "exec", "command"]]?.array?.compactMap(\.string).map(localized)
        var environment: [String: String] = ["POD_NAME": pod.name ?? "", "POD_NAMESPACE": pod.namespace ?? "", "POD_IP": ip]
        for variable in container["env"]?.array ?? [] {
            if let name = variable["name"]?.string, let value = variable["value"]?.string { environment[name] = value }
        }
        return LocalPod(name: pod.name ?? "", namespace: pod.namespace ?? "", ip: ip, args: args, environment: environment, directory: directory,
                        preStopCommand: preStop, scratchDirectories: scratch)
    }

    /// The port (resolved by name from the container's ports) and path of an httpGet handler.
    static func httpGet(_ pod: KubeObject, path: [String]) -> (port: Int, path: String)? {
        guard let container = pod.json[path: ["spec", "containers"]]?.array?.first, let get = container[path: path] else { return nil }
        let port: Int?
        switch get["port"] {
        case .int(let number)?: port = number
        case .string(let name)?: port = container["ports"]?.array?.first { $0["name"]?.string == name }?["containerPort"]?.int ?? Int(name)
        default: port = nil
        }
        guard let port else { return nil }
        return (port, get["path"]?.string ?? "/")
    }

    func patchPodStatus(_ pod: KubeObject, phase: String, ip: String, ready: Bool, message: String?) async throws {
        let timestamp = PoolReconciler.timestamp()
        var status: JSONValue = [
            "phase": .string(phase), "podIP": .string(ip), "podIPs": [["ip": .string(ip)]], "hostIP": "127.0.0.1",
            "conditions": [["type": "Ready", "status": ready ? "True" : "False", "lastTransitionTime": .string(timestamp)],
                           ["type": "ContainersReady", "status": ready ? "True" : "False", "lastTransitionTime": .string(timestamp)]],
        ]
        if let message { status["message"] = .string(message) }
        _ = try await client.patchStatus(.pods, pod.name ?? "", namespace: pod.namespace, .merge(["status": status]))
    }
}

extension LocalRuntime.Container {
    /// The pod's CPU seconds now (its cgroup's usage, or its process's from /proc), remembered
    /// so that a pod whose process is gone is still counted.
    func currentCPUSeconds() -> Double? {
        if let seconds = ProcessCPUTime.seconds(group: local.cpuGroup, pid: launched.pid) {
            cpuSeconds = max(cpuSeconds ?? 0, seconds)
        }
        return cpuSeconds
    }
}
