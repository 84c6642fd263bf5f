@testable import Controller
import Foundation
import JSON
import Kube
import KubeTestServer
import Logging
import Platform
import Testing

/// The local kubelet holds each pod to its `resources.limits.cpu`, as a kubelet does.
@Suite("Local runtime: pods' CPU limits")
struct LocalRuntimeCPUTests {
    static let namespace = "default"

    static func deployment(replicas: Int, args: [String], cpu: String) -> KubeObject {
        KubeObject(.deployments, name: "busy", namespace: namespace, fields: ["spec": [
            "replicas": .int(replicas),
            "selector": ["matchLabels": ["app": "busy"]],
            "template": [
                "metadata": ["labels": ["app": "busy"]],
                "spec": ["containers": [[
                    "name": "main", "image": "eaas",
                    "args": .array(args.map { .string($0) }),
                    "resources": ["limits": ["cpu": .string(cpu)]],
                ]]],
            ],
        ]])
    }

    static func start(cgroups: Bool) async throws -> (TestAPIServer, KubeClient, LocalRuntime, Task<Void, Never>) {
        let server = try await TestAPIServer()
        var configuration = KubeClient.Configuration()
        configuration.qps = 0
        configuration.retryDelay = .milliseconds(5)
        let client = KubeClient(connection: server.connection, configuration: configuration)
        var runtimeConfiguration = LocalRuntime.Configuration(namespace: namespace, directory: NSTemporaryDirectory() + "eaas-cpu-test-\(UUID().uuidString)")
        runtimeConfiguration.cgroups = cgroups
        var logger = Logger(label: "runtime")
        logger.logLevel = .error
        let runtime = LocalRuntime(client: client, launcher: ProcessLauncher(executable: "/bin/sh"), configuration: runtimeConfiguration, logger: logger)
        let task = Task { do { try await runtime.run() } catch {} }
        return (server, client, runtime, task)
    }

    @Test("A busy pod limited to 250m uses about a quarter of a CPU in its own cgroup, and the group goes when the pod does")
    func cgroupHoldsPodToItsLimit() async throws {
        let (server, client, runtime, task) = try await Self.start(cgroups: true)
        defer { task.cancel() }
        guard runtime.cpuEnforcement != .rateLimit else {
            // Not root, or no writable CPU controller: the rate-limit case below covers this machine.
            print("skipped: no writable CPU cgroup here (\(runtime.cgroupUnavailableReason ?? "?"))")
            await server.shutdown()
            return
        }
        _ = try await client.create(.deployments, Self.deployment(replicas: 1, args: ["-c", "while :; do :; done"], cpu: "250m"))
        try await OperatorScenarioTests.until("the pod runs in a group") { !runtime.cpuGroupDirectories().isEmpty }
        let directories = runtime.cpuGroupDirectories().values.first ?? []
        #expect(directories.allSatisfy { FileManager.default.fileExists(atPath: $0) })
        let before = runtime.cpuSeconds(), start = ContinuousClock.now
        try await Task.sleep(for: .seconds(2))
        let used = runtime.cpuSeconds() - before, wall = (ContinuousClock.now - start).seconds
        #expect(used <= 0.25 * wall + 0.12, "a 250m pod used \(used) CPU-s in \(wall) s")
        #expect(used >= 0.05, "the busy loop ran (\(used) CPU-s)")
        var scaled = try await client.get(.deployments, "busy", namespace: Self.namespace)
        scaled.json[path: ["spec", "replicas"]] = 0
        _ = try await client.update(.deployments, scaled, namespace: Self.namespace)
        try await OperatorScenarioTests.until("the pod's group is removed", timeout: .seconds(45)) {
            runtime.cpuGroupDirectories().isEmpty && directories.allSatisfy { !FileManager.default.fileExists(atPath: $0) }
        }
        #expect(runtime.cpuSeconds() >= before + used, "a finished pod's CPU time still counts")
        task.cancel()
        await task.value
        await server.shutdown()
    }

    @Test("Without cgroups the pod is told its limit (EAAS_CPU_RATE_LIMIT) to pace itself, and no group is made")
    func rateLimitFallbackTellsThePod() async throws {
        let (server, client, runtime, task) = try await Self.start(cgroups: false)
        defer { task.cancel() }
        #expect(runtime.cpuEnforcement == .rateLimit)
        let out = NSTemporaryDirectory() + "eaas-cpu-env-\(UUID().uuidString)"
        defer { try? FileManager.default.removeItem(atPath: out) }
        _ = try await client.create(.deployments, Self.deployment(replicas: 1, args: ["-c", "echo \"$EAAS_CPU_RATE_LIMIT\" > \(out); exec sleep 60"], cpu: "1500m"))
        try await OperatorScenarioTests.until("the pod wrote its limit") {
            (try? String(contentsOfFile: out, encoding: .utf8))?.trimmingCharacters(in: .whitespacesAndNewlines).isEmpty == false
        }
        #expect(try String(contentsOfFile: out, encoding: .utf8).trimmingCharacters(in: .whitespacesAndNewlines) == "1.5")
        #expect(runtime.cpuGroupDirectories().isEmpty)
        task.cancel()
        await task.value
        await server.shutdown()
    }

    @Test("CPU quantities as Kubernetes writes them; anything else is refused, naming the value", arguments: [
        ("250m", 0.25 as Double?), ("0.5", 0.5), ("2", 2), (" 1500m ", 1.5), ("0.0004", 0.001),
        ("lots", nil), ("0", nil), ("-1", nil), ("m", nil), ("1e400", nil), ("nan", nil),
    ])
    func quantities(text: String, cores: Double?) throws {
        if let cores {
            #expect(try CPUQuantity.cores(text) == cores)
        } else {
            #expect { try CPUQuantity.cores(text) } throws: { "\($0)".contains("'\(text)'") }
        }
    }
}
