import Foundation
import JSON
import Kube
import KubeTestServer

/// A test API server and a client of it, shut down by `close()`.
struct APIFixture {
    let server: TestAPIServer
    let client: KubeClient

    static func start(_ configure: (inout TestAPIServer.Configuration) -> Void = { _ in },
                      client clientConfiguration: KubeClient.Configuration = .testing) async throws -> APIFixture {
        var configuration = TestAPIServer.Configuration()
        configure(&configuration)
        let server = try await TestAPIServer(configuration: configuration)
        return APIFixture(server: server, client: KubeClient(connection: server.connection, configuration: clientConfiguration))
    }

    func close() async { await server.shutdown() }
}

extension KubeClient.Configuration {
    /// No rate limit and quick retries, so tests spend their time on behaviour.
    static var testing: KubeClient.Configuration {
        var configuration = KubeClient.Configuration()
        configuration.qps = 0
        configuration.retryDelay = .milliseconds(5)
        configuration.maxRetryDelay = .milliseconds(50)
        configuration.requestTimeout = .seconds(20)
        return configuration
    }
}

func configMap(_ name: String, namespace: String = "default", labels: [String: String] = [:], data: [String: String] = [:]) -> KubeObject {
    KubeObject(.configMaps, name: name, namespace: namespace, labels: labels, fields: ["data": .object(data.mapValues { .string($0) })])
}

func deployment(_ name: String, replicas: Int = 1, image: String = "nginx:1.25") -> KubeObject {
    KubeObject(.deployments, name: name, namespace: "default", labels: ["app": name], fields: [
        "spec": [
            "replicas": .int(replicas),
            "selector": ["matchLabels": ["app": .string(name)]],
            "template": [
                "metadata": ["labels": ["app": .string(name)]],
                "spec": ["containers": [["name": "web", "image": .string(image)]]],
            ],
        ],
    ])
}

/// A CRD for `widgets.example.com/v1` with status and scale subresources.
let widgetCRD = KubeObject([
    "apiVersion": "apiextensions.k8s.io/v1", "kind": "CustomResourceDefinition",
    "metadata": ["name": "widgets.example.com"],
    "spec": [
        "group": "example.com", "scope": "Namespaced",
        "names": ["plural": "widgets", "singular": "widget", "kind": "Widget", "shortNames": ["wd"]],
        "versions": [[
            "name": "v1", "served": true, "storage": true,
            "subresources": ["status": [:], "scale": ["specReplicasPath": ".spec.replicas", "statusReplicasPath": ".status.replicas"]],
            "schema": ["openAPIV3Schema": ["type": "object", "x-kubernetes-preserve-unknown-fields": true]],
        ]],
    ],
])
let widgets = ResourceType(group: "example.com", version: "v1", plural: "widgets", kind: "Widget", namespaced: true)

func widget(_ name: String, replicas: Int = 1) -> KubeObject {
    KubeObject(widgets, name: name, namespace: "default", fields: ["spec": ["replicas": .int(replicas), "color": "blue"]])
}

/// Polls `condition` until it holds or `timeout` passes. The default is long on purpose: the
/// whole suite shares two cores, and CPU-bound tests can keep this task from running for tens of
/// seconds; a condition that holds returns at once however long the timeout.
func eventually(timeout: Duration = .seconds(60), _ condition: () async throws -> Bool) async rethrows -> Bool {
    let deadline = ContinuousClock.now + timeout
    while ContinuousClock.now < deadline {
        if try await condition() { return true }
        try? await Task.sleep(for: .milliseconds(10))
    }
    return try await condition()
}

/// The package root (for fixtures and the Python venv).
let packageRoot: String = {
    var url = URL(fileURLWithPath: #filePath)
    for _ in 0..<3 { url.deleteLastPathComponent() }
    return url.path
}()
