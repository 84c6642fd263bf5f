import Controller
import Foundation
import Platform
import JSON
import Kube
import KubeTestServer
import Testing

/// Child processes for these tests, with output in files and waits that sleep, so that no Swift
/// concurrency thread blocks on a pipe or on `waitUntilExit`.
final class ToolProcess: @unchecked Sendable {
    private(set) var process: ChildProcess!
    let outputPath: String

    init(_ executable: String, _ arguments: [String], environment: [String: String] = [:], directory: String) throws {
        outputPath = "\(directory)/\(URL(fileURLWithPath: executable).lastPathComponent)-\(UUID().uuidString.prefix(8)).log"
        _ = FileManager.default.createFile(atPath: outputPath, contents: nil)
        let handle = try FileHandle(forWritingTo: URL(fileURLWithPath: outputPath))
        defer { try? handle.close() }
        process = try ChildProcess(executable: executable, arguments: arguments,
                                   environment: ProcessInfo.processInfo.environment.merging(environment) { $1 },
                                   standardOutput: .handle(handle), standardError: .handle(handle))
    }

    var output: String { (try? String(contentsOfFile: outputPath, encoding: .utf8)) ?? "" }

    /// Waits for the exit (killing it after `timeout`) and returns the status.
    func exit(timeout: Duration = .seconds(60)) async -> Int32 {
        let deadline = ContinuousClock.now + timeout
        while process.isRunning, ContinuousClock.now < deadline { try? await Task.sleep(for: .milliseconds(20)) }
        if process.isRunning {
            kill(process.processIdentifier, SIGKILL)
            while process.isRunning { try? await Task.sleep(for: .milliseconds(20)) }
        }
        return process.terminationStatus
    }

    static func run(_ executable: String, _ arguments: [String], directory: String) async throws -> (status: Int32, output: String) {
        let tool = try ToolProcess(executable, arguments, directory: directory)
        let status = await tool.exit()
        return (status, tool.output)
    }
}

/// The `eaas` binary built beside the tests.
let eaasBinary: String = {
    var directory = URL(fileURLWithPath: CommandLine.arguments[0]).deletingLastPathComponent()
    if directory.lastPathComponent.hasSuffix(".xctest") { directory = directory.deletingLastPathComponent() }
    for candidate in [directory, directory.deletingLastPathComponent()] {
        let path = candidate.appendingPathComponent("eaas").path
        if FileManager.default.isExecutableFile(atPath: path) { return path }
    }
    return directory.appendingPathComponent("eaas").path
}()

/// kubectl on PATH, if any.
let kubectl: String? = (ProcessInfo.processInfo.environment["PATH"] ?? "/usr/bin").split(separator: ":")
    .map { "\($0)/kubectl" }.first { FileManager.default.isExecutableFile(atPath: $0) }

/// What a user does: `kubectl apply` the CRD, RBAC and controller manifests, run the controller
/// (two `eaas controller` processes electing a leader, as the Deployment runs them), apply the
/// sample, and use kubectl on the pool; the leader SIGKILLed and replaced.
@Suite("kubectl, Manifests and eaas controller", .serialized)
struct KubectlOperatorTests {
    @Test("kubectl applies Manifests/crd, rbac, controller and the sample; two eaas controllers reconcile it; the leader is killed and replaced",
          .enabled(if: kubectl != nil, "kubectl is not installed (scripts/install-test-clients says how to get it)"))
    func manifestsWithKubectl() async throws {
        let kubectl = try #require(kubectl)
        let server = try await TestAPIServer()
        let directory = NSTemporaryDirectory() + "eaas-kubectl-\(UUID().uuidString)"
        try FileManager.default.createDirectory(atPath: directory, withIntermediateDirectories: true)
        let kubeconfig = directory + "/kubeconfig"
        // The samples' own namespace (Manifests/samples/00-namespace.yaml): kubectl's default here.
        let samples = "eaas-samples"
        try server.kubeconfig(namespace: samples).write(toFile: kubeconfig, atomically: true, encoding: .utf8)
        var controllers: [String: ToolProcess] = [:]
        // Earlier runs' output (a controller restarted by the "kubelet" below), for failure reports.
        var history: [String: String] = [:]
        // Controllers this test stopped on purpose: not restarted.
        var stopped: Set<String> = []
        func startController(_ identity: String) throws -> ToolProcess {
            try ToolProcess(eaasBinary, [
                "controller", "--kubeconfig", kubeconfig, "--lease-namespace", "eaas-system", "--lease-duration-seconds", "3",
                "--health-host", "127.0.0.1", "--health-port", "0", "--log-level", "info",
            ], environment: ["POD_NAME": identity], directory: directory)
        }
        // The Deployment's restartPolicy Always: a controller that could not renew its 3 s lease in
        // time (a busy machine) exits 1, as it should, and its kubelet starts it again.
        func restartExited() throws {
            for (identity, tool) in controllers where !tool.process.isRunning && !stopped.contains(identity) {
                history[identity, default: ""] += tool.output + "(exited with status \(tool.process.terminationStatus); restarted)\n"
                controllers[identity] = try startController(identity)
            }
        }
        func kubectlRun(_ arguments: String...) async throws -> String {
            let (status, output) = try await ToolProcess.run(kubectl, ["--kubeconfig", kubeconfig] + arguments, directory: directory)
            #expect(status == 0, "kubectl \(arguments.joined(separator: " ")) failed: \(output)")
            return output
        }
        func until(_ what: String, timeout: Duration = .seconds(30), _ condition: () throws -> Bool) async throws {
            let deadline = ContinuousClock.now + timeout
            while ContinuousClock.now < deadline {
                try restartExited()
                if try condition() { return }
                try await Task.sleep(for: .milliseconds(50))
            }
            if try condition() { return }
            let logs = controllers.map { "\($0.key):\n\((history[$0.key, default: ""] + $0.value.output).suffix(3000))" }.joined(separator: "\n")
            Issue.record("timed out waiting for: \(what)\n\(logs)")
            throw CancellationError()
        }
        func replicas(_ name: String) -> Int? { server.object(.deployments, name, namespace: samples)?.json[path: ["spec", "replicas"]]?.int }
        func holder() -> String? { server.object(.leases, "eaas-controller", namespace: "eaas-system")?.json[path: ["spec", "holderIdentity"]]?.string }

        do {
            let root = packageRoot
            let applied = try await kubectlRun("apply", "-f", "\(root)/Manifests/crd", "-f", "\(root)/Manifests/rbac", "-f", "\(root)/Manifests/controller")
            #expect(applied.contains("customresourcedefinition.apiextensions.k8s.io/expertpools.eaas.dev created"))
            #expect(applied.contains("clusterrole.rbac.authorization.k8s.io/eaas-controller created"))
            #expect(applied.contains("deployment.apps/eaas-controller created"))

            // The controller Deployment's two replicas, as processes (the test server runs no pods).
            for identity in ["controller-a", "controller-b"] { controllers[identity] = try startController(identity) }
            try await until("a controller leads") { holder() != nil }

            let sample = try await kubectlRun("apply", "-f", "\(root)/Manifests/samples")
            #expect(sample.contains("namespace/eaas-samples created"))
            #expect(sample.contains("expertpool.eaas.dev/tiny created"))
            #expect(sample.contains("role.rbac.authorization.k8s.io/eaas-controller-pool-token created"))
            try await until("the sample pool's four shards exist") {
                (0..<4).allSatisfy { replicas("tiny-s\($0)") == 1 } && server.object(.services, "tiny", namespace: samples) != nil
                    && server.object(.configMaps, "tiny-shard-plan", namespace: samples) != nil
            }
            try await until("status published") {
                let status = server.object(ExpertPoolCRD.resource, "tiny", namespace: samples)?.json["status"]
                return status?["shardCount"] == 4 && status?["observedGeneration"] == 1
            }

            // The leader's /metrics says it leads and has reconciled. A controller that missed a
            // renewal on a busy machine has exited and been started again (restartExited), and
            // the lease may still name it while the new process has not yet printed where it
            // listens or won the lease back: ask whoever holds the lease until one answers as leader.
            var metrics = ""
            let metricsDeadline = ContinuousClock.now + .seconds(30)
            while ContinuousClock.now < metricsDeadline {
                try restartExited()
                if let leaderName = holder(),
                   let healthLine = controllers[leaderName]?.output.split(separator: "\n").first(where: { $0.hasPrefix("health ") }),
                   let text = try? await PlainHTTP.get("http://\(healthLine.dropFirst("health ".count))/metrics", timeout: .seconds(5)).text {
                    metrics = text
                    if metrics.contains("eaas_controller_leader 1") && metrics.contains(#"eaas_controller_reconciles_total{result="success"}"#) { break }
                }
                try await Task.sleep(for: .milliseconds(200))
            }
            #expect(metrics.contains("eaas_controller_leader 1"), "\(metrics)")
            #expect(metrics.contains(#"eaas_controller_reconciles_total{result="success"}"#), "\(metrics)")

            // kubectl prints the printer columns, and scales through the scale subresource.
            let table = try await kubectlRun("get", "expertpools")
            let header = table.split(separator: "\n").first.map { $0.split(separator: " ").joined(separator: " ") }
            #expect(header == "NAME SHARDS READY DESIRED LOAD AGE")
            #expect(table.split(separator: "\n").dropFirst().first?.split(separator: " ").prefix(4).joined(separator: " ") == "tiny 4 0 4")
            _ = try await kubectlRun("scale", "expertpool", "tiny", "--replicas=2")
            try await until("every shard at the new minimum of 2") { (0..<4).allSatisfy { replicas("tiny-s\($0)") == 2 } }

            // A spec the schema refuses, through kubectl: the error names the field.
            let invalid = try await ToolProcess.run(kubectl, ["--kubeconfig", kubeconfig, "patch", "expertpool", "tiny", "--type", "merge",
                                                              "-p", #"{"spec":{"transport":{"backend":"udp"}}}"#], directory: directory)
            #expect(invalid.status != 0)
            #expect(invalid.output.contains("spec.transport.backend"))

            // The leader is killed (no release): the other takes over within the lease and reconciles.
            let leader = try #require(holder())
            let standby = leader == "controller-a" ? "controller-b" : "controller-a"
            stopped.insert(leader)
            kill(controllers[leader]!.process.processIdentifier, SIGKILL)
            let killed = ContinuousClock.now
            try await until("the standby takes the lease", timeout: .seconds(20)) { holder() == standby }
            let takeover = ContinuousClock.now - killed
            #expect(takeover < .seconds(3 + 3), "took \(takeover) with a 3 s lease")
            // (A lower minimum would wait out the 300 s scale-down window, as an HPA does; a higher one acts at once.)
            _ = try await kubectlRun("patch", "expertpool", "tiny", "--type", "merge", "-p", #"{"spec":{"replicas":{"min":3}}}"#)
            try await until("the new leader scales the shards up to 3") { (0..<4).allSatisfy { replicas("tiny-s\($0)") == 3 } }

            // Deleting the pool removes its children through their owner references.
            _ = try await kubectlRun("delete", "-f", "\(root)/Manifests/samples/expertpool.yaml")
            try await until("the shards are collected") { (0..<4).allSatisfy { replicas("tiny-s\($0)") == nil } }

            // The standby, now leader, stops cleanly on SIGTERM and releases the lease.
            stopped.insert(standby)
            controllers[standby]!.process.terminate()
            #expect(await controllers[standby]!.exit(timeout: .seconds(30)) == 0)
            try await until("the lease is released") { holder() == nil || holder() == "" }
        } catch {
            for tool in controllers.values where tool.process.isRunning { kill(tool.process.processIdentifier, SIGKILL) }
            await server.shutdown()
            throw error
        }
        for tool in controllers.values where tool.process.isRunning { kill(tool.process.processIdentifier, SIGKILL) }
        await server.shutdown()
    }
}
