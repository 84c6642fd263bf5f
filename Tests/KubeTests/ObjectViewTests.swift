import JSON
import Kube
import Testing

/// Typed views of built-in objects: each field with the meaning the API gives its absence.
@Suite("Typed views: Pod, Deployment status, EndpointSlice")
struct ObjectViewTests {
    static func pod(phase: String?, ready: String?, deleting: Bool = false, ip: String? = "10.0.0.7") -> PodView {
        var json: JSONValue = ["apiVersion": "v1", "kind": "Pod", "metadata": ["name": "p", "namespace": "default"],
                               "spec": ["containers": [["name": "c", "image": "i", "args": ["expert-pod", "--model", "/models/a", "--shard"],
                                                        "ports": [["name": "metrics", "containerPort": 9090], ["name": "data", "containerPort": 7070]]]]]]
        if deleting { json[path: ["metadata", "deletionTimestamp"]] = "2026-01-01T00:00:00Z" }
        var status: JSONValue = [:]
        if let phase { status["phase"] = .string(phase) }
        if let ip { status["podIP"] = .string(ip) }
        if let ready { status["conditions"] = [["type": "Initialized", "status": "True"], ["type": "Ready", "status": .string(ready)]] }
        json["status"] = status
        return PodView(KubeObject(json))
    }

    @Test("Pod: phase (Pending when unreported), readiness (Running, not terminating, Ready True), finished, IP", arguments: [
        // (phase, Ready condition, deleting) → (phase, isReady, hasFinished, isPending)
        (String?.none, String?.none, false, "Pending", false, false, true),
        ("Running", "True", false, "Running", true, false, false),
        ("Running", "False", false, "Running", false, false, false),
        ("Running", "Unknown", false, "Running", false, false, false),
        ("Running", nil, false, "Running", false, false, false),
        ("Running", "True", true, "Running", false, false, false),
        ("Pending", "True", false, "Pending", false, false, true),
        ("Succeeded", nil, false, "Succeeded", false, true, false),
        ("Failed", "True", false, "Failed", false, true, false),
    ] as [(String?, String?, Bool, String, Bool, Bool, Bool)])
    func podFields(phase: String?, ready: String?, deleting: Bool, expectedPhase: String, isReady: Bool, finished: Bool, pending: Bool) {
        let pod = Self.pod(phase: phase, ready: ready, deleting: deleting)
        #expect(pod.phase == expectedPhase && pod.isReady == isReady && pod.hasFinished == finished && pod.isPending == pending)
        #expect(pod.isTerminating == deleting)
        #expect(pod.hasReadyCondition == (ready == "True"))
    }

    @Test("Pod: IP (none when empty or absent), arguments, ports by name")
    func podSpec() {
        #expect(Self.pod(phase: "Running", ready: "True").podIP == "10.0.0.7")
        #expect(Self.pod(phase: "Running", ready: "True", ip: nil).podIP == nil)
        #expect(Self.pod(phase: "Running", ready: "True", ip: "").podIP == nil)
        let pod = Self.pod(phase: nil, ready: nil)
        #expect(pod.argument(after: "--model") == "/models/a")
        #expect(pod.argument(after: "--shard") == nil, "a flag with nothing after it")
        #expect(pod.argument(after: "--absent") == nil)
        #expect(pod.containerPort(named: "data") == 7070 && pod.containerPort(named: "metrics") == 9090 && pod.containerPort(named: "http") == nil)
        #expect(PodView(KubeObject(.pods, name: "bare", namespace: "default")).arguments.isEmpty)
    }

    static func deployment(replicas: Int?, generation: Int, status: JSONValue?) -> DeploymentView {
        var json: JSONValue = ["apiVersion": "apps/v1", "kind": "Deployment", "metadata": ["name": "d", "namespace": "default", "generation": .int(generation)], "spec": [:]]
        if let replicas { json[path: ["spec", "replicas"]] = .int(replicas) }
        if let status { json["status"] = status }
        return DeploymentView(KubeObject(json))
    }

    @Test("Deployment: observed replicas (zero before the first report) and rolled out only at the current spec and count", arguments: [
        // (spec.replicas, generation, status) → (observed replicas, rolled out to 2)
        (2, 3, JSONValue?.none, 0, false),
        (2, 3, ["replicas": 2, "readyReplicas": 2, "updatedReplicas": 2, "observedGeneration": 3], 2, true),
        (2, 3, ["replicas": 2, "readyReplicas": 2, "updatedReplicas": 2, "observedGeneration": 2], 2, false),  // spec not yet seen
        (2, 3, ["replicas": 3, "readyReplicas": 3, "updatedReplicas": 2, "observedGeneration": 3], 3, false),  // an old pod still there
        (2, 3, ["replicas": 2, "readyReplicas": 1, "updatedReplicas": 2, "observedGeneration": 3], 2, false),  // one not ready
        (2, 3, ["replicas": 2, "readyReplicas": 2, "updatedReplicas": 1, "observedGeneration": 3], 2, false),  // one not updated
        (3, 3, ["replicas": 2, "readyReplicas": 2, "updatedReplicas": 2, "observedGeneration": 3], 2, false),  // asks for another count
        (nil, 1, ["replicas": 2, "readyReplicas": 2, "updatedReplicas": 2, "observedGeneration": 1], 2, false), // replicas unset
    ] as [(Int?, Int, JSONValue?, Int, Bool)])
    func deploymentFields(replicas: Int?, generation: Int, status: JSONValue?, observedReplicas: Int, rolledOut: Bool) {
        let view = Self.deployment(replicas: replicas, generation: generation, status: status)
        #expect(view.specReplicas == replicas)
        #expect(view.observed.replicas == observedReplicas)
        #expect(view.isRolledOut(to: 2) == rolledOut)
    }

    @Test("EndpointSlice: absent ready means ready, absent serving follows ready, absent terminating is false; ports by name; pod targets only")
    func endpointSlice() {
        let slice = EndpointSliceView(KubeObject([
            "apiVersion": "discovery.k8s.io/v1", "kind": "EndpointSlice",
            "metadata": ["name": "pool-abc", "namespace": "default", "labels": ["kubernetes.io/service-name": "pool"]],
            "addressType": "IPv4",
            "ports": [["name": "metrics", "port": 9090], ["name": "data", "port": 7070]],
            "endpoints": [
                ["addresses": ["10.0.0.1"], "targetRef": ["kind": "Pod", "name": "a"]],
                ["addresses": ["10.0.0.2"], "conditions": ["ready": false], "targetRef": ["kind": "Pod", "name": "b"]],
                ["addresses": ["10.0.0.3"], "conditions": ["ready": false, "serving": true, "terminating": true], "targetRef": ["kind": "Pod", "name": "c"]],
                ["addresses": ["10.0.0.4"], "targetRef": ["kind": "Node", "name": "n"]],
                ["addresses": []],
            ],
        ]))
        #expect(slice.serviceName == "pool")
        #expect(slice.port(named: "data") == 7070 && slice.port(named: "metrics") == 9090 && slice.port(named: "grpc") == nil)
        let endpoints = slice.endpoints
        #expect(endpoints.map(\.podName) == ["a", "b", "c", nil, nil])
        #expect(endpoints.map(\.ready) == [true, false, false, true, true])
        #expect(endpoints.map(\.serving) == [true, false, true, true, true])
        #expect(endpoints.map(\.terminating) == [false, false, true, false, false])
        #expect(endpoints[0].addresses == ["10.0.0.1"] && endpoints[4].addresses.isEmpty)
        #expect(EndpointSliceView(KubeObject(.endpointSlices, name: "empty", namespace: "default")).endpoints.isEmpty)
    }
}
