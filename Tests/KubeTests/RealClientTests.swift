import Foundation
import Platform
import JSON
import Kube
import KubeTestServer
import Testing

/// kubectl, if installed.
let kubectlPath = ClientProcess.find("kubectl")

/// A Python with the official `kubernetes` client: `$EAAS_KUBE_PYTHON`, else the repository's
/// `.venv` that `scripts/install-test-clients` makes.
let kubernetesPython: String? = {
    let candidates = [ProcessInfo.processInfo.environment["EAAS_KUBE_PYTHON"], packageRoot + "/.venv/bin/python"].compactMap { $0 }
    for python in candidates where FileManager.default.isExecutableFile(atPath: python) {
        guard let process = try? ChildProcess(executable: python, arguments: ["-c", "import kubernetes"],
                                              standardOutput: .null, standardError: .null) else { continue }
        if process.waitUntilExit() == 0 { return python }
    }
    return nil
}()

/// A scratch directory with a kubeconfig for the server (and a HOME, so kubectl's discovery cache
/// starts empty and stays out of the user's).
struct ClientWorkspace {
    let directory: String
    var kubeconfig: String { directory + "/kubeconfig" }
    var environment: [String: String] { ["KUBECONFIG": kubeconfig, "HOME": directory] }

    init(server: TestAPIServer) throws {
        directory = FileManager.default.temporaryDirectory.appendingPathComponent("kube-clients-\(UUID().uuidString)").path
        try FileManager.default.createDirectory(atPath: directory, withIntermediateDirectories: true)
        try server.kubeconfig().write(toFile: kubeconfig, atomically: true, encoding: .utf8)
    }

    func write(_ name: String, _ text: String) throws -> String {
        let path = directory + "/" + name
        try text.write(toFile: path, atomically: true, encoding: .utf8)
        return path
    }

    func remove() { try? FileManager.default.removeItem(atPath: directory) }
}

@Suite("kubectl against the test API server", .serialized,
       .enabled(if: kubectlPath != nil, "kubectl is not installed: skipped (CI installs it; see scripts/install-test-clients)"))
struct KubectlTests {
    static let crd = """
        apiVersion: apiextensions.k8s.io/v1
        kind: CustomResourceDefinition
        metadata:
          name: widgets.example.com
        spec:
          group: example.com
          scope: Namespaced
          names: {plural: widgets, singular: widget, kind: Widget, shortNames: [wd]}
          versions:
          - name: v1
            served: true
            storage: true
            subresources:
              status: {}
              scale: {specReplicasPath: .spec.replicas, statusReplicasPath: .status.replicas}
            schema:
              openAPIV3Schema: {type: object, x-kubernetes-preserve-unknown-fields: true}
        """

    static func deployment(image: String, replicas: Int, env: String) -> String {
        """
        apiVersion: apps/v1
        kind: Deployment
        metadata:
          name: web
          labels: {app: web}
        spec:
          replicas: \(replicas)
          selector: {matchLabels: {app: web}}
          template:
            metadata: {labels: {app: web}}
            spec:
              containers:
              - name: web
                image: \(image)
                env: [{name: MODE, value: \(env)}]
        """
    }

    static func widget(color: String, printerShape: String = "round") -> String {
        """
        apiVersion: example.com/v1
        kind: Widget
        metadata: {name: w1}
        spec: {replicas: 1, color: \(color), shape: \(printerShape)}
        """
    }

    @Test("apply (create, then change), get -o json, scale, get -w, delete")
    func kubectlLifecycle() async throws {
        let api = try await APIFixture.start { $0.bookmarkInterval = .milliseconds(200) }
        defer { Task { await api.close() } }
        let workspace = try ClientWorkspace(server: api.server)
        defer { workspace.remove() }
        let kubectl = kubectlPath!
        func run(_ arguments: String...) async throws -> ClientProcess.Output {
            let output = try await ClientProcess.run(kubectl, arguments, environment: workspace.environment)
            #expect(output.status == 0, "kubectl \(arguments.joined(separator: " ")): \(output.combined)")
            return output
        }

        let crdFile = try workspace.write("crd.yaml", Self.crd)
        let deploymentFile = try workspace.write("deployment.yaml", Self.deployment(image: "nginx:1.25", replicas: 2, env: "a"))
        let widgetFile = try workspace.write("widget.yaml", Self.widget(color: "blue"))
        #expect(try await run("apply", "-f", crdFile).stdout.contains("customresourcedefinition.apiextensions.k8s.io/widgets.example.com created"))
        #expect(try await run("apply", "-f", deploymentFile).stdout.contains("deployment.apps/web created"))
        #expect(try await run("apply", "-f", widgetFile).stdout.contains("widget.example.com/w1 created"))

        // A second apply of changed files: kubectl computes strategic (built-in) and merge (custom) patches.
        _ = try workspace.write("deployment.yaml", Self.deployment(image: "nginx:1.26", replicas: 3, env: "b"))
        _ = try workspace.write("widget.yaml", Self.widget(color: "red"))
        #expect(try await run("apply", "-f", deploymentFile).stdout.contains("deployment.apps/web configured"))
        #expect(try await run("apply", "-f", widgetFile).stdout.contains("widget.example.com/w1 configured"))
        #expect(try await run("apply", "-f", crdFile).stdout.contains("unchanged"))

        let json = try JSONValue.parse(try await run("get", "deployment", "web", "-o", "json").stdout)
        #expect(json[path: ["spec", "replicas"]]?.int == 3)
        let container = json[path: ["spec", "template", "spec", "containers"]]?.array?.first
        #expect(container?["image"]?.string == "nginx:1.26")
        #expect(container?["env"]?.array?.first?["value"]?.string == "b")
        #expect(json[path: ["metadata", "generation"]]?.int == 2)
        #expect(json[path: ["metadata", "annotations", "kubectl.kubernetes.io/last-applied-configuration"]] != nil)
        let widgetJSON = try JSONValue.parse(try await run("get", "wd", "w1", "-o", "json").stdout)
        #expect(widgetJSON[path: ["spec", "color"]]?.string == "red")

        #expect(try await run("scale", "deployment", "web", "--replicas=5").stdout.contains("scaled"))
        #expect(try await api.client.scale(.deployments, "web").replicas == 5)
        #expect(try await run("scale", "widget", "w1", "--replicas=4").stdout.contains("scaled"))
        #expect(try await api.client.get(widgets, "w1")[path: "spec", "replicas"]?.int == 4)

        // get -w: the initial object, then each change made through our client, as they happen.
        let watcher = try StreamingProcess(kubectl, ["get", "configmaps", "-w", "-o", "jsonpath={.metadata.name} {.data.step}{\"\\n\"}"],
                                           environment: workspace.environment)
        defer { watcher.terminate() }
        _ = try await api.client.create(.configMaps, configMap("watched", data: ["step": "one"]))
        #expect(await eventually { watcher.output.contains("watched one") })
        _ = try await api.client.patch(.configMaps, "watched", .merge(["data": ["step": "two"]]))
        #expect(await eventually { watcher.output.contains("watched two") }, "kubectl get -w printed: \(watcher.output)")
        await watcher.stop()

        #expect(try await run("delete", "-f", widgetFile).stdout.contains("deleted"))
        #expect(try await run("delete", "deployment", "web").stdout.contains("deleted"))
        await #expect { try await api.client.get(.deployments, "web") } throws: { ($0 as? KubeAPIError)?.reason == .notFound }
        let missing = try await ClientProcess.run(kubectl, ["get", "deployment", "web"], environment: workspace.environment)
        #expect(missing.status != 0)
        #expect(missing.stderr.contains("NotFound") || missing.stderr.contains("not found"))
    }
}

@Suite("The official Python client against the test API server", .serialized,
       .enabled(if: kubernetesPython != nil, "no Python with the kubernetes client (run scripts/install-test-clients, or set EAAS_KUBE_PYTHON): skipped"))
struct PythonClientTests {
    static let script = packageRoot + "/Tests/KubeTests/python_client_check.py"

    @Test("list, create, selectors, CRD and custom object, status patches of a custom object and a Deployment")
    func basics() async throws {
        let api = try await APIFixture.start()
        defer { Task { await api.close() } }
        let workspace = try ClientWorkspace(server: api.server)
        defer { workspace.remove() }
        let output = try await ClientProcess.run(kubernetesPython!, [Self.script, workspace.kubeconfig, "basics"])
        #expect(output.status == 0, "\(output.combined)")
        #expect(output.stdout.contains("deployment status patch ok"))
    }

    @Test("A watch with bookmarks is cut after compaction, meets a 410, and recovers by re-listing")
    func watchThrough410() async throws {
        let api = try await APIFixture.start { $0.bookmarkInterval = .milliseconds(300) }
        defer { Task { await api.close() } }
        let workspace = try ClientWorkspace(server: api.server)
        defer { workspace.remove() }
        let output = try await ClientProcess.run(kubernetesPython!, [Self.script, workspace.kubeconfig, "watch-through-410"])
        #expect(output.status == 0, "\(output.combined)")
        #expect(output.stdout.contains("watch got 410"))
        #expect(output.stdout.contains("watch through 410 ok"))
    }

    @Test("Lease election between the Python client's LeaseLock and our elector: never both lead")
    func leaseElection() async throws {
        let api = try await APIFixture.start()
        defer { Task { await api.close() } }
        let workspace = try ClientWorkspace(server: api.server)
        defer { workspace.remove() }
        var configuration = LeaderElector.Configuration(leaseName: "eaas-controller", namespace: "default", identity: "swift")
        configuration.leaseDuration = .seconds(3)
        configuration.renewDeadline = .seconds(2)
        configuration.retryPeriod = .milliseconds(500)
        let leadership = Leadership()

        // Python leads first, then dies without releasing: we take over once its lease runs out.
        let python = try StreamingProcess(kubernetesPython!, [Self.script, workspace.kubeconfig, "lease", "python-1", "2"])
        defer { python.terminate() }
        #expect(await eventually { python.output.contains("LEADING python-1") }, "\(python.output)")
        leadership.begin("python-1")
        let elector = LeaderElector(client: api.client, configuration: configuration)
        let run = Task { try await elector.run(leadership.work("swift")) }
        #expect(await eventually(timeout: .seconds(5)) { python.output.contains("DYING python-1") })
        leadership.end("python-1")
        #expect(await eventually(timeout: .seconds(6)) { elector.isLeader })

        // A second Python candidate waits while we lead, and takes over once we release on shutdown.
        let second = try StreamingProcess(kubernetesPython!, [Self.script, workspace.kubeconfig, "lease", "python-2", "30"])
        defer { second.terminate() }
        try await Task.sleep(for: .seconds(4))
        #expect(!second.output.contains("LEADING"), "python-2 led while we held the lease: \(second.output)")
        run.cancel()
        _ = await run.result
        #expect(await eventually(timeout: .seconds(8)) { second.output.contains("LEADING python-2") }, "\(second.output)")
        #expect(leadership.snapshot.overlaps.isEmpty)
        let lease = try await api.client.get(.leases, "eaas-controller")
        #expect(lease[path: "spec", "holderIdentity"]?.string == "python-2")
    }
}
