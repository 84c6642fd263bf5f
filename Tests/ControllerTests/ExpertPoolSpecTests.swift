import Controller
import Foundation
import JSON
import Kube
import Testing
import Transport

/// The package root, from this file's path.
let packageRoot = URL(fileURLWithPath: #filePath).deletingLastPathComponent().deletingLastPathComponent().deletingLastPathComponent().path

func poolJSON(_ spec: JSONValue, name: String = "tiny") -> JSONValue {
    ["apiVersion": "eaas.dev/v1alpha1", "kind": "ExpertPool", "metadata": ["name": .string(name), "namespace": "default", "uid": "u-1"], "spec": spec]
}

let minimalSpec: JSONValue = ["model": ["path": "/models/tiny", "experts": 8], "poolTokenSecret": ["name": "token"]]

@Suite("ExpertPool spec")
struct ExpertPoolSpecTests {
    @Test("the committed CRD (and the chart's copy) is what the Swift types generate")
    func committedCRDMatchesTypes() throws {
        let generated = ExpertPoolCRD.yaml
        for path in ["Manifests/crd/expertpools.yaml", "charts/eaas/crds/expertpools.yaml"] {
            let committed = try String(contentsOfFile: "\(packageRoot)/\(path)", encoding: .utf8)
            #expect(committed == generated, "\(path) differs from the types: run `eaas generate crd -o \(path)`")
        }
        // And it parses back to the same object.
        #expect(try YAML.parse(generated) == ExpertPoolCRD.definition)
    }

    @Test("the schema carries types, defaults, enums, bounds and the CEL rules")
    func schemaShape() {
        let spec = ExpertPoolCRD.definition[path: ["spec", "versions"]]?.array?.first?[path: ["schema", "openAPIV3Schema", "properties", "spec"]]
        #expect(spec?["required"] == ["model", "poolTokenSecret"])
        let replicas = spec?[path: ["properties", "replicas"]]
        #expect(replicas?[path: ["properties", "min", "default"]] == 1)
        #expect(replicas?[path: ["properties", "min", "minimum"]] == 1)
        #expect(replicas?["x-kubernetes-validations"]?.array?.first?["rule"] == "self.min <= self.max")
        #expect(spec?[path: ["properties", "transport", "properties", "backend", "enum"]] == ["verbs", "shm", "tcp"])
        #expect(spec?[path: ["properties", "transport", "properties", "backend", "default"]] == "verbs")
        #expect(spec?[path: ["properties", "template", "properties", "resources", "x-kubernetes-preserve-unknown-fields"]] == true)
        let scale = ExpertPoolCRD.definition[path: ["spec", "versions"]]?.array?.first?[path: ["subresources", "scale", "specReplicasPath"]]
        #expect(scale == ".spec.replicas.min")
    }

    @Test("a minimal spec decodes with every default, and encodes back")
    func defaults() throws {
        let spec = try ExpertPoolSpec(pool: poolJSON(minimalSpec))
        #expect(spec.model.path == "/models/tiny")
        #expect(spec.replicas == ReplicaBounds(min: 1, max: 4))
        #expect(spec.transport.backend == .verbs)
        #expect(spec.autoscaling.behavior.resolved.up == .defaultScaleUp)
        #expect(spec.autoscaling.behavior.resolved.down == .defaultScaleDown)
        #expect(try ExpertPoolSpec(specJSON: spec.specJSON, path: "spec") == spec)
    }

    @Test("spec mistakes are named by their field", arguments: [
        (["model": ["path": "/m", "experts": 8]] as JSONValue, "spec.poolTokenSecret: is required"),
        (["model": ["path": "/m", "experts": 0], "poolTokenSecret": ["name": "t"]], "spec.model.experts: must be at least 1, got 0"),
        (["model": ["path": "/m", "experts": 8], "poolTokenSecret": ["name": "t"], "transport": ["backend": "udp"]],
         "spec.transport.backend: must be one of verbs, shm, tcp, got \"udp\""),
        (["model": ["path": "/m", "experts": 8], "poolTokenSecret": ["name": "t"], "replicas": ["mni": 1]],
         "spec.replicas.mni: unknown field (known: min, max)"),
        (["model": ["path": "/m", "experts": 8], "poolTokenSecret": ["name": "t"], "shards": ["explicit": [["name": "A", "experts": [0]]]]],
         "spec.shards.explicit[0].name: 'A' is not a DNS label (lower-case letters, digits and '-', starting and ending alphanumeric, at most 63)"),
        (["model": ["path": "/m", "experts": 8], "poolTokenSecret": ["name": "t"], "autoscaling": ["target": 0]],
         "spec.autoscaling.target: must be greater than 0"),
    ] as [(JSONValue, String)])
    func specErrors(spec: JSONValue, message: String) {
        #expect(throws: SpecError.self) { try ExpertPoolSpec(pool: poolJSON(spec)) }
        do { _ = try ExpertPoolSpec(pool: poolJSON(spec)) } catch { #expect(error.description == message) }
    }

    @Test("shard plans: per-shard counts, explicit shards, and what the schema cannot catch", arguments: [
        (["expertsPerShard": 3] as JSONValue, ReplicaBounds(min: 1, max: 2), "s0:0-2 s1:3-5 s2:6-7"),
        ([:], ReplicaBounds(min: 1, max: 2), "s0:0 s1:1 s2:2 s3:3 s4:4 s5:5 s6:6 s7:7"),
        (["explicit": [["name": "hot", "experts": [7, 0]], ["name": "rest", "experts": [1, 2, 3, 4, 5, 6]]]], ReplicaBounds(min: 1, max: 2), "hot:0,7 rest:1-6"),
        (["expertsPerShard": 2], ReplicaBounds(min: 3, max: 2), "InvalidReplicaBounds: replicas.min (3) exceeds replicas.max (2)"),
        (["explicit": [["name": "a", "experts": [0, 1, 2]], ["name": "b", "experts": [2, 3, 4, 5, 6, 7]]]], ReplicaBounds(min: 1, max: 2),
         "InvalidShardPlan: expert 2 is in shards 'a' and 'b'"),
        (["explicit": [["name": "a", "experts": [0, 1, 2]], ["name": "b", "experts": [3, 4]]]], ReplicaBounds(min: 1, max: 2),
         "InvalidShardPlan: no shard serves experts 5-7"),
        (["explicit": [["name": "a", "experts": [0, 9]]]], ReplicaBounds(min: 1, max: 2),
         "InvalidShardPlan: shard 'a' names expert 9, but the model has experts 0-7"),
        (["explicit": [["name": "a", "experts": [0, 1, 2, 3]], ["name": "a", "experts": [4, 5, 6, 7]]]], ReplicaBounds(min: 1, max: 2),
         "InvalidShardPlan: shard name 'a' appears twice"),
        (["expertsPerShard": 2, "explicit": [["name": "a", "experts": [0]]]], ReplicaBounds(min: 1, max: 2),
         "InvalidShardPlan: shards gives both expertsPerShard and explicit shards; give one"),
    ] as [(JSONValue, ReplicaBounds, String)])
    func plans(shards: JSONValue, replicas: ReplicaBounds, expected: String) throws {
        var spec = try ExpertPoolSpec(pool: poolJSON(minimalSpec))
        spec.shards = try ShardPlanSpec(specJSON: shards, path: "spec.shards")
        spec.replicas = replicas
        switch spec.plan(poolName: "tiny") {
        case .success(let plan): #expect(plan.shards.map { "\($0.name):\($0.expertRanges)" }.joined(separator: " ") == expected)
        case .failure(let problem): #expect(problem.description == expected)
        }
    }

    @Test("loadAware placement needs the scraped token rates it plans from", arguments: [
        (["mode": "loadAware"] as JSONValue, ["metric": "busyFraction", "target": 0.7] as JSONValue,
         "InvalidPlacement: placement.mode loadAware plans from tokens per second; autoscaling.metric is busyFraction"),
        (["mode": "loadAware"], ["enabled": false], "InvalidPlacement: placement.mode loadAware plans from scraped load; autoscaling.enabled is false"),
        (["mode": "loadAware"], [:], "ok"),
        (["mode": "static"], ["metric": "busyFraction", "target": 0.7], "ok"),
    ] as [(JSONValue, JSONValue, String)])
    func placementProblems(placement: JSONValue, autoscaling: JSONValue, expected: String) throws {
        var spec = try ExpertPoolSpec(pool: poolJSON(minimalSpec))
        spec.placement = try PlacementSpec(specJSON: placement, path: "spec.placement")
        spec.autoscaling = try AutoscalingSpec(specJSON: autoscaling, path: "spec.autoscaling")
        switch spec.plan(poolName: "tiny") {
        case .success: #expect(expected == "ok")
        case .failure(let problem): #expect(problem.description == expected)
        }
    }

    @Test("a shard's Deployment: owner, labels, anti-affinity, probes, preStop drain, grace beyond the drain, hardening")
    func deploymentShape() throws {
        var specJSON = minimalSpec
        specJSON["shards"] = ["expertsPerShard": 4]
        specJSON["transport"] = ["backend": "verbs", "port": 7000, "metricsPort": 9000]
        specJSON["model"] = ["path": "tiny", "experts": 8, "volume": ["persistentVolumeClaim": ["claimName": "models"]], "mountPath": "/models"]
        specJSON["template"] = ["image": "example/eaas:1", "resources": ["limits": ["rdma/hca": 1]], "nodeSelector": ["gpu": "h100"]]
        let pool = KubeObject(poolJSON(specJSON))
        let spec = try ExpertPoolSpec(pool: pool.json)
        let plan = try spec.plan(poolName: "tiny").get()
        let children = PoolChildren(pool: pool, spec: spec, plan: plan, defaultImage: "default:1")
        let deployment = children.deployment(for: plan.shards[1], replicas: 3)
        #expect(deployment[path: ["metadata", "name"]] == "tiny-s1")
        #expect(deployment[path: ["metadata", "ownerReferences"]]?.array?.first?["uid"] == "u-1")
        #expect(deployment[path: ["metadata", "ownerReferences"]]?.array?.first?["controller"] == true)
        #expect(deployment[path: ["spec", "replicas"]] == 3)
        #expect(deployment[path: ["spec", "selector", "matchLabels"]] == ["eaas.dev/pool": "tiny", "eaas.dev/shard": "s1"])
        let pod = deployment[path: ["spec", "template", "spec"]]
        let container = pod?["containers"]?.array?.first
        #expect(container?["image"] == "example/eaas:1")
        #expect(container?["args"]?.array?.compactMap(\.string).joined(separator: " ")
            == "expert-pod --model /models/tiny --shard 4-7 --listen 0.0.0.0:7000 --transport verbs --metrics-host 0.0.0.0 --metrics-port 9000 --pool-token-file /var/run/eaas/pool-token/token --grace-seconds 30 --drain-socket /run/eaas/drain.sock")
        #expect(container?[path: ["readinessProbe", "httpGet", "path"]] == "/readyz")
        // The drain is local: an exec of `eaas drain` on the pod's socket, never an HTTP request.
        #expect(container?[path: ["lifecycle", "preStop", "httpGet"]] == nil)
        #expect(container?[path: ["lifecycle", "preStop", "exec", "command"]]?.array?.compactMap(\.string).prefix(4)
            == ["eaas", "drain", "--socket", "/run/eaas/drain.sock"])
        #expect(container?["args"]?.array?.compactMap(\.string).contains("/run/eaas/drain.sock") == true)
        #expect(container?[path: ["resources", "limits", "rdma/hca"]] == 1)
        #expect(container?[path: ["securityContext", "readOnlyRootFilesystem"]] == true)
        #expect(container?[path: ["securityContext", "capabilities", "add"]] == ["IPC_LOCK"])
        #expect(pod?["terminationGracePeriodSeconds"] == 45)
        #expect(pod?["nodeSelector"] == ["gpu": "h100"])
        let term = pod?[path: ["affinity", "podAntiAffinity", "preferredDuringSchedulingIgnoredDuringExecution"]]?.array?.first
        #expect(term?[path: ["podAffinityTerm", "labelSelector", "matchLabels"]] == ["eaas.dev/pool": "tiny", "eaas.dev/shard": "s1"])
        #expect(pod?["volumes"]?.array?.contains { $0["name"] == "model" && $0[path: ["persistentVolumeClaim", "claimName"]] == "models" } == true)

        #expect(children.service[path: ["spec", "clusterIP"]] == "None")
        let document = try ShardPlanDocument(json: JSONValue.parse(children.planConfigMap[path: ["data", "plan.json"]]?.string ?? ""))
        #expect(document.shards.map(\.deployment) == ["tiny-s0", "tiny-s1"])
        #expect(document.shards[1].experts == [4, 5, 6, 7])
    }

    @Test("EndpointSlice endpoints become servers of their shard's experts; not-ready ones stay out of the replicas")
    func membershipFromSlices() {
        let plan = ShardPlanDocument(pool: "tiny", experts: 4, port: 7070, backend: "tcp", shards: [
            .init(name: "s0", deployment: "tiny-s0", experts: [0, 1]), .init(name: "s1", deployment: "tiny-s1", experts: [2, 3]),
        ])
        let slice = KubeObject([
            "metadata": ["name": "tiny-abc", "namespace": "default"],
            "ports": [["name": "data", "port": 7070], ["name": "metrics", "port": 9090]],
            "endpoints": [
                ["addresses": ["10.0.0.1"], "conditions": ["ready": true], "targetRef": ["kind": "Pod", "name": "tiny-s0-5d8f9c7b6a-x2x4z"]],
                ["addresses": ["10.0.0.2"], "conditions": ["ready": false], "targetRef": ["kind": "Pod", "name": "tiny-s1-5d8f9c7b6a-q9w8e"]],
                ["addresses": ["10.0.0.3"], "targetRef": ["kind": "Pod", "name": "other-7f7f7f7f7f-aaaaa"]],
            ],
        ])
        let servers = KubernetesMembership.servers(slices: [slice], plan: plan, layers: [1, 3]).sorted { $0.id < $1.id }
        #expect(servers.map(\.address) == ["10.0.0.1:7070", "10.0.0.2:7070"])
        #expect(servers[0].experts.count == 4)
        #expect(servers[0].experts.contains(.init(layer: 3, expert: 1)))
        #expect(servers.map(\.ready) == [true, false])
        let view = MembershipView(servers: servers)
        #expect(view.replicas(of: .init(layer: 1, expert: 0)).count == 1)
        #expect(view.replicas(of: .init(layer: 1, expert: 2)).isEmpty)
        #expect(KubernetesMembership.deployment(ofPod: "my-pool-s-1-5d8f9c7b6a-x2x4z") == "my-pool-s-1")
    }

    @Test("Prometheus counters become per-pod rates; a counter reset counts from zero")
    func podLoad() throws {
        let text = """
        # TYPE eaas_expert_tokens_total counter
        eaas_expert_tokens_total{layer="1",expert="0"} 100
        eaas_expert_tokens_total{layer="1",expert="1"} 50
        eaas_busy_seconds_total 2.5
        eaas_requests_total 7
        """
        let counters = try #require(PodCounters(prometheusText: text))
        #expect(counters.tokens == 150)
        #expect(counters.busySeconds == 2.5)
        #expect(PodCounters(prometheusText: "eaas_requests_total 3\n") == nil)
        let tracker = LoadTracker()
        #expect(tracker.record(pod: "p", counters: counters, now: 10) == nil)
        let load = try #require(tracker.record(pod: "p", counters: PodCounters(tokens: 350, busySeconds: 3.5), now: 12))
        #expect(load.tokensPerSecond == 100)
        #expect(load.busyFraction == 0.5)
        #expect(tracker.record(pod: "p", counters: PodCounters(tokens: 40, busySeconds: 0.2), now: 14)?.tokensPerSecond == 20)
    }

    @Test("Per-expert counters are summed over layers by expert; their rates come per expert, a reset from zero")
    func perExpertLoad() throws {
        let text = """
        eaas_expert_tokens_total{layer="0",expert="3"} 100
        eaas_expert_tokens_total{layer="1",expert="3"} 60
        eaas_expert_tokens_total{layer="1",expert="7"} 40
        eaas_expert_tokens_total{layer="1",expert="x"} 5
        eaas_expert_tokens_total{layer="1",expert="99999999"} 5
        eaas_busy_seconds_total 0
        """
        let counters = try #require(PodCounters(prometheusText: text))
        #expect(counters.expertTokens == [3: 160, 7: 40], "unreadable or out-of-range expert labels count in the total only")
        #expect(counters.tokens == 210)
        let tracker = LoadTracker()
        tracker.record(pod: "p", counters: counters, now: 0)
        let load = try #require(tracker.record(pod: "p", counters: PodCounters(tokens: 0, busySeconds: 0, expertTokens: [3: 360, 7: 10]), now: 2))
        #expect(load.expertTokensPerSecond == [3: 100, 7: 5])
    }

    @Test("The placement window averages per-expert rates over time and forgets what is older than its length")
    func expertLoadWindow() {
        var window = ExpertLoadWindow()
        #expect(window.mean(experts: 2) == [0, 0])
        window.add(at: 0, rates: [100, 0], seconds: 10)
        #expect(window.mean(experts: 2) == [100, 0])
        window.add(at: 1, rates: [100, 0], seconds: 10)
        window.add(at: 4, rates: [0, 40], seconds: 10)   // 100 held for 1 s + 3 s, then 40 for 3 s
        #expect(window.mean(experts: 2) == [400.0 / 7, 120.0 / 7])
        #expect(window.span == 4)
        window.add(at: 13, rates: [10, 10], seconds: 10)  // 0 and 1 fall out
        #expect(window.count == 2)
        #expect(window.span == 9)
        window.add(at: 13, rates: [20, 20], seconds: 10)  // the same instant again replaces it
        #expect(window.count == 2)
    }
}
