import Controller
import Foundation
import JSON
import Kube
import Testing

/// RBAC rules of a manifest as `group/resource:verb` strings.
enum RBACRules {
    static func granted(file: String) throws -> Set<String> {
        let documents = try YAML.parseDocuments(String(contentsOfFile: "\(packageRoot)/\(file)", encoding: .utf8))
        var granted = Set<String>()
        for document in documents where ["ClusterRole", "Role"].contains(document["kind"]?.string ?? "") {
            for rule in document["rules"]?.array ?? [] {
                for group in rule["apiGroups"]?.array?.compactMap(\.string) ?? [] {
                    for resource in rule["resources"]?.array?.compactMap(\.string) ?? [] {
                        for verb in rule["verbs"]?.array?.compactMap(\.string) ?? [] { granted.insert("\(group)/\(resource):\(verb)") }
                    }
                }
            }
        }
        return granted
    }
}

/// The subset of Helm's template language the chart is kept to (so that `helm template` renders
/// it plainly): `{{ .Values.x.y }}`, `{{ .Release.Namespace }}`, `{{ .Chart.Name }}`,
/// `{{ .Chart.AppVersion }}`, `| quote`, whole-line `{{- if X }}` / `{{- end }}` and
/// `{{- toYaml X | nindent N }}`. Anything else is an error, so the chart cannot drift into
/// constructs this test does not render.
struct ChartRenderer {
    let values: JSONValue
    let chart: JSONValue
    let namespace: String

    struct Unsupported: Error, CustomStringConvertible {
        let description: String
    }

    func value(_ expression: String) throws -> JSONValue {
        let path = expression.trimmingCharacters(in: .whitespaces)
        if path == ".Release.Namespace" { return .string(namespace) }
        if path == ".Chart.Name" { return chart["name"] ?? .null }
        if path == ".Chart.AppVersion" { return chart["appVersion"] ?? .null }
        guard path.hasPrefix(".Values.") else { throw Unsupported(description: "unsupported expression '\(expression)'") }
        return values[path: path.dropFirst(".Values.".count).split(separator: ".").map(String.init)] ?? .null
    }

    /// Go templates' truth: false, 0, "", nil, empty lists and maps are false.
    static func truthy(_ value: JSONValue) -> Bool {
        switch value {
        case .null: false
        case .bool(let flag): flag
        case .int(let number): number != 0
        case .double(let number): number != 0
        case .string(let text): !text.isEmpty
        case .array(let items): !items.isEmpty
        case .object(let members): !members.isEmpty
        }
    }

    static func scalar(_ value: JSONValue) -> String {
        switch value {
        case .string(let text): text
        case .null: ""
        default: value.compact
        }
    }

    func render(_ template: String) throws -> String {
        var output: [String] = []
        var active: [Bool] = []
        let action = try NSRegularExpression(pattern: #"\{\{-? *(.*?) *-?\}\}"#)
        for line in template.split(separator: "\n", omittingEmptySubsequences: false).map(String.init) {
            let trimmed = line.trimmingCharacters(in: .whitespaces)
            if trimmed.hasPrefix("{{- if "), trimmed.hasSuffix("}}") {
                active.append(Self.truthy(try value(String(trimmed.dropFirst(7).dropLast(2)))))
                continue
            }
            if trimmed == "{{- end }}" {
                guard active.popLast() != nil else { throw Unsupported(description: "'end' without 'if'") }
                continue
            }
            if active.contains(false) { continue }
            if trimmed.hasPrefix("{{- toYaml "), trimmed.hasSuffix("}}") {
                let parts = trimmed.dropFirst(11).dropLast(2).split(separator: "|").map { $0.trimmingCharacters(in: .whitespaces) }
                guard parts.count == 2, parts[1].hasPrefix("nindent "), let indent = Int(parts[1].dropFirst(8)) else {
                    throw Unsupported(description: "unsupported toYaml line '\(trimmed)'")
                }
                let yaml = try value(parts[0]).yaml
                output += yaml.split(separator: "\n").map { String(repeating: " ", count: indent) + $0 }
                continue
            }
            var rendered = line
            let matches = action.matches(in: line, range: NSRange(line.startIndex..., in: line)).reversed()
            for match in matches {
                let range = Range(match.range, in: line)!
                let inner = String(line[Range(match.range(at: 1), in: line)!])
                let pipeline = inner.split(separator: "|").map { $0.trimmingCharacters(in: .whitespaces) }
                var text = Self.scalar(try value(pipeline[0]))
                if pipeline.count == 2, pipeline[1] == "quote" {
                    text = JSONValue.quoted(text)
                } else if pipeline.count != 1 {
                    throw Unsupported(description: "unsupported pipeline '\(inner)'")
                }
                rendered.replaceSubrange(range, with: text)
            }
            output.append(rendered)
        }
        guard active.isEmpty else { throw Unsupported(description: "'if' without 'end'") }
        return output.joined(separator: "\n")
    }

    /// Every object of `templates/*.yaml`, rendered.
    func objects(templates: String) throws -> [JSONValue] {
        let files = try FileManager.default.contentsOfDirectory(atPath: templates).filter { $0.hasSuffix(".yaml") }.sorted()
        var objects: [JSONValue] = []
        for file in files {
            let text = try render(String(contentsOfFile: "\(templates)/\(file)", encoding: .utf8))
            objects += try YAML.parseDocuments(text).filter { $0 != .null }
        }
        return objects
    }
}

func manifestObjects(_ directories: [String]) throws -> [JSONValue] {
    var objects: [JSONValue] = []
    for directory in directories {
        let path = "\(packageRoot)/\(directory)"
        for file in try FileManager.default.contentsOfDirectory(atPath: path).filter({ $0.hasSuffix(".yaml") }).sorted() {
            objects += try YAML.parseDocuments(String(contentsOfFile: "\(path)/\(file)", encoding: .utf8)).filter { $0 != .null }
        }
    }
    return objects
}

func identity(_ object: JSONValue) -> String {
    "\(object["kind"]?.string ?? "?")/\(object[path: ["metadata", "namespace"]]?.string ?? "")/\(object[path: ["metadata", "name"]]?.string ?? "?")"
}

/// Whether a label selector (matchLabels only) selects an object with `labels`.
func selects(_ selector: JSONValue?, _ labels: JSONValue?) -> Bool {
    guard let wanted = selector?["matchLabels"]?.object, !wanted.isEmpty, selector?["matchExpressions"] == nil else { return false }
    return wanted.allSatisfy { labels?[$0.key] == $0.value }
}

enum SampleObjects {
    struct Missing: Error, CustomStringConvertible {
        let description: String
    }

    /// The Deployments the controller writes for the sample pool (Manifests/samples/expertpool.yaml)
    /// when it runs as Manifests/controller runs it (its --expert-image).
    static func expertDeployments() throws -> [JSONValue] {
        guard var pool = try manifestObjects(["Manifests/samples"]).first(where: { $0["kind"] == "ExpertPool" }) else {
            throw Missing(description: "no ExpertPool in Manifests/samples")
        }
        pool[path: ["metadata", "uid"]] = "sample-pool-uid"
        let controller = try manifestObjects(["Manifests/controller"]).first { $0["kind"] == "Deployment" }
        let args = controller?[path: ["spec", "template", "spec", "containers"]]?.array?.first?["args"]?.array?.compactMap(\.string) ?? []
        guard let index = args.firstIndex(of: "--expert-image"), index + 1 < args.count else {
            throw Missing(description: "no --expert-image in Manifests/controller/deployment.yaml")
        }
        let spec = try ExpertPoolSpec(pool: pool)
        let plan = try spec.plan(poolName: pool[path: ["metadata", "name"]]?.string ?? "").get()
        let children = PoolChildren(pool: KubeObject(pool), spec: spec, plan: plan, defaultImage: args[index + 1])
        return plan.shards.map { children.deployment(for: $0, replicas: spec.replicas.min) }
    }
}

@Suite("Manifests and Helm chart")
struct ShippingTests {
    static func renderer(values override: (inout JSONValue) -> Void = { _ in }) throws -> ChartRenderer {
        var values = try YAML.parse(String(contentsOfFile: "\(packageRoot)/charts/eaas/values.yaml", encoding: .utf8))
        override(&values)
        let chart = try YAML.parse(String(contentsOfFile: "\(packageRoot)/charts/eaas/Chart.yaml", encoding: .utf8))
        return ChartRenderer(values: values, chart: chart, namespace: "eaas-system")
    }

    @Test("the chart's default render is the objects of Manifests/rbac and Manifests/controller, field for field")
    func chartRendersManifests() throws {
        let rendered = try Self.renderer().objects(templates: "\(packageRoot)/charts/eaas/templates")
        let manifests = try manifestObjects(["Manifests/rbac", "Manifests/controller"])
        #expect(rendered.map(identity).sorted() == manifests.map(identity).sorted())
        let byIdentity = Dictionary(uniqueKeysWithValues: rendered.map { (identity($0), $0) })
        for object in manifests {
            #expect(byIdentity[identity(object)] == object, "\(identity(object)) differs between chart and Manifests")
        }
    }

    @Test("values change the render: watch namespace (and its pool-token Role), no Namespace object, node selector")
    func chartValues() throws {
        let renderer = try Self.renderer { values in
            values[path: ["controller", "watchNamespace"]] = "team-a"
            values["createNamespace"] = false
            values["nodeSelector"] = ["pool": "cpu"]
        }
        let objects = try renderer.objects(templates: "\(packageRoot)/charts/eaas/templates")
        #expect(!objects.contains { $0["kind"] == "Namespace" })
        let deployment = try #require(objects.first { $0["kind"] == "Deployment" })
        let args = deployment[path: ["spec", "template", "spec", "containers"]]?.array?.first?["args"]?.array?.compactMap(\.string) ?? []
        #expect(args.suffix(2) == ["--namespace", "team-a"])
        #expect(deployment[path: ["spec", "template", "spec", "nodeSelector"]] == ["pool": "cpu"])
        // The watched namespace gets the Role to read its pools' token Secrets; no names given: any, by name.
        let role = try #require(objects.first { $0["kind"] == "Role" && $0[path: ["metadata", "name"]] == "eaas-controller-pool-token" })
        #expect(role[path: ["metadata", "namespace"]] == "team-a")
        #expect(role["rules"]?.array?.first?["resourceNames"] == nil)
        let binding = try #require(objects.first { $0["kind"] == "RoleBinding" && $0[path: ["metadata", "name"]] == "eaas-controller-pool-token" })
        #expect(binding[path: ["metadata", "namespace"]] == "team-a")
        #expect(binding["subjects"]?.array?.first?["namespace"] == "eaas-system")
    }

    @Test("the chart's NetworkPolicies are off by default; on, they are those of Manifests/network-policies, and the pool-token Role that of Manifests/samples")
    func chartNetworkPolicies() throws {
        let templates = "\(packageRoot)/charts/eaas/templates"
        let defaults = try Self.renderer().objects(templates: templates)
        #expect(!defaults.contains { $0["kind"] == "NetworkPolicy" })
        #expect(!defaults.contains { $0[path: ["metadata", "name"]] == "eaas-controller-pool-token" })

        // On, watching all namespaces: the controller's own policy only (pools may be anywhere).
        let allNamespaces = try Self.renderer { $0[path: ["networkPolicy", "enabled"]] = true }.objects(templates: templates)
        #expect(allNamespaces.filter { $0["kind"] == "NetworkPolicy" }.map(identity) == ["NetworkPolicy/eaas-system/eaas-controller"])

        // On, watching the samples' namespace: the same objects as Manifests, field for field.
        let enabled = try Self.renderer { values in
            values[path: ["networkPolicy", "enabled"]] = true
            values[path: ["controller", "watchNamespace"]] = "eaas-samples"
            values[path: ["controller", "poolTokenSecrets"]] = ["tiny-pool-token"]
        }.objects(templates: templates)
        let rendered = enabled.filter { $0["kind"] == "NetworkPolicy" || $0[path: ["metadata", "name"]] == "eaas-controller-pool-token" }
        let shipped = try manifestObjects(["Manifests/network-policies"]).filter { $0[path: ["metadata", "name"]] != "tiny-worker" }
            + manifestObjects(["Manifests/samples"]).filter { $0[path: ["metadata", "name"]] == "eaas-controller-pool-token" }
        #expect(rendered.map(identity).sorted() == shipped.map(identity).sorted())
        let byIdentity = Dictionary(uniqueKeysWithValues: rendered.map { (identity($0), $0) })
        for object in shipped {
            #expect(byIdentity[identity(object)] == object, "\(identity(object)) differs between chart and Manifests")
        }

        // The Prometheus namespace and the workers' labels come from the values.
        let custom = try Self.renderer { values in
            values[path: ["networkPolicy", "enabled"]] = true
            values[path: ["networkPolicy", "prometheusNamespace"]] = "prom"
            values[path: ["networkPolicy", "workerLabels"]] = ["role": "attention"]
            values[path: ["controller", "watchNamespace"]] = "team-a"
        }.objects(templates: templates)
        let experts = try #require(custom.first { $0[path: ["metadata", "name"]] == "eaas-expert-pods" })
        #expect(experts[path: ["metadata", "namespace"]] == "team-a")
        let rules = experts[path: ["spec", "ingress"]]?.array ?? []
        #expect(rules.first?["from"]?.array?.first?[path: ["podSelector", "matchLabels"]] == ["role": "attention"])
        #expect(rules.last?["from"]?.array?.last?[path: ["namespaceSelector", "matchLabels", "kubernetes.io/metadata.name"]] == "prom")
        let controllerPolicy = try #require(custom.first { $0["kind"] == "NetworkPolicy" && $0[path: ["metadata", "name"]] == "eaas-controller" })
        #expect(controllerPolicy[path: ["spec", "ingress"]]?.array?.first?["from"]?.array?.first?[path: ["namespaceSelector", "matchLabels", "kubernetes.io/metadata.name"]] == "prom")
    }

    @Test("the NetworkPolicies select the pods they are about (expert pods as the controller labels them, the sample worker, the controller), by port names those pods have")
    func networkPolicySelectors() throws {
        let policies = try manifestObjects(["Manifests/network-policies"])
        func named(_ name: String) throws -> JSONValue { try #require(policies.first { $0[path: ["metadata", "name"]]?.string == name }) }
        struct Pods {
            let labels: JSONValue?
            let namespace: String?
            let ports: Set<String>
            init(_ deployment: JSONValue?) {
                labels = deployment?[path: ["spec", "template", "metadata", "labels"]]
                namespace = deployment?[path: ["metadata", "namespace"]]?.string
                ports = Set((deployment?[path: ["spec", "template", "spec", "containers"]]?.array ?? [])
                    .flatMap { $0["ports"]?.array ?? [] }.compactMap { $0["name"]?.string })
            }
        }
        let experts = Pods(try SampleObjects.expertDeployments().first)
        let worker = Pods(try manifestObjects(["Manifests/samples"]).first { $0["kind"] == "Deployment" })
        let controller = Pods(try manifestObjects(["Manifests/controller"]).first { $0["kind"] == "Deployment" })
        #expect(experts.ports == ["data", "metrics"])
        for policy in policies {
            #expect(policy[path: ["spec", "policyTypes"]] == ["Ingress"], "\(identity(policy)) restricts ingress")
            for rule in policy[path: ["spec", "ingress"]]?.array ?? [] {
                let opened = rule["ports"]?.array ?? []
                #expect(opened.count > 0, "\(identity(policy)): a rule that opens every port")
            }
        }
        func ports(_ rule: JSONValue) -> Set<String> { Set((rule["ports"]?.array ?? []).compactMap { $0["port"]?.string }) }

        // Expert pods: data from the namespace's workers only; metrics from the controller and Prometheus only.
        let expertPolicy = try named("eaas-expert-pods")
        #expect(selects(expertPolicy[path: ["spec", "podSelector"]], experts.labels))
        #expect(expertPolicy[path: ["metadata", "namespace"]]?.string == experts.namespace)
        let rules = expertPolicy[path: ["spec", "ingress"]]?.array ?? []
        #expect(rules.map(ports) == [["data"], ["metrics"]])
        let dataFrom = rules.first?["from"]?.array ?? []
        #expect(dataFrom.count == 1)
        #expect(dataFrom.first?["namespaceSelector"] == nil)
        #expect(selects(dataFrom.first?["podSelector"], worker.labels))
        #expect(!selects(dataFrom.first?["podSelector"], controller.labels) && !selects(dataFrom.first?["podSelector"], experts.labels))
        let metricsFrom = rules.last?["from"]?.array ?? []
        #expect(metricsFrom.count == 2)
        #expect(metricsFrom.contains {
            $0[path: ["namespaceSelector", "matchLabels", "kubernetes.io/metadata.name"]]?.string == controller.namespace && selects($0["podSelector"], controller.labels)
        })
        #expect(metricsFrom.contains { $0[path: ["namespaceSelector", "matchLabels", "kubernetes.io/metadata.name"]] == "monitoring" && $0["podSelector"] == nil })

        // The worker: its API port; the controller: its health port (/metrics) from Prometheus.
        let workerPolicy = try named("tiny-worker")
        #expect(selects(workerPolicy[path: ["spec", "podSelector"]], worker.labels))
        #expect(workerPolicy[path: ["metadata", "namespace"]]?.string == worker.namespace)
        #expect((workerPolicy[path: ["spec", "ingress"]]?.array ?? []).map(ports) == [["http"]])
        #expect(worker.ports.contains("http"))
        let controllerPolicy = try named("eaas-controller")
        #expect(selects(controllerPolicy[path: ["spec", "podSelector"]], controller.labels))
        #expect(controllerPolicy[path: ["metadata", "namespace"]]?.string == controller.namespace)
        #expect((controllerPolicy[path: ["spec", "ingress"]]?.array ?? []).map(ports) == [["health"]])
        #expect(controller.ports.contains("health"))
    }

    @Test("pods: expert pods mount no service-account token; the sample worker keeps its own (membership reads the API), is ready on /readyz, live on /healthz; the samples have their own namespace")
    func podHardening() throws {
        for deployment in try SampleObjects.expertDeployments() {
            #expect(deployment[path: ["spec", "template", "spec", "automountServiceAccountToken"]] == false)
        }
        let samples = try manifestObjects(["Manifests/samples"])
        let worker = try #require(samples.first { $0["kind"] == "Deployment" })
        let container = worker[path: ["spec", "template", "spec", "containers"]]?.array?.first
        // During SIGTERM /healthz stays 200 while /readyz is 503: readiness must be /readyz.
        #expect(container?[path: ["readinessProbe", "httpGet", "path"]] == "/readyz")
        #expect(container?[path: ["livenessProbe", "httpGet", "path"]] == "/healthz")
        #expect(container?[path: ["resources", "limits", "cpu"]] != nil)
        #expect(container?[path: ["resources", "limits", "memory"]] != nil)
        // --pool lists and watches EndpointSlices and ConfigMaps with the pod's token (worker-rbac.yaml).
        #expect(container?["args"]?.array?.contains("--pool") == true)
        #expect(worker[path: ["spec", "template", "spec", "automountServiceAccountToken"]] != false)
        #expect(worker[path: ["spec", "template", "spec", "serviceAccountName"]] == "eaas-worker")
        #expect(samples.contains { $0["kind"] == "Namespace" && $0[path: ["metadata", "name"]] == "eaas-samples" })
        for object in samples where object["kind"] != "Namespace" {
            #expect(object[path: ["metadata", "namespace"]] == "eaas-samples", "\(identity(object)) is not in eaas-samples")
        }
    }

    @Test("Chart.yaml is a Helm 3 application chart; its CRD is the generated one")
    func chartMetadata() throws {
        let chart = try YAML.parse(String(contentsOfFile: "\(packageRoot)/charts/eaas/Chart.yaml", encoding: .utf8))
        #expect(chart["apiVersion"] == "v2")
        #expect(chart["name"] == "eaas")
        #expect(chart["type"] == "application")
        let version = chart["version"]?.string ?? ""
        #expect(version.split(separator: ".").count == 3 && version.split(separator: ".").allSatisfy { Int($0) != nil })
        let crd = try YAML.parse(String(contentsOfFile: "\(packageRoot)/charts/eaas/crds/expertpools.yaml", encoding: .utf8))
        #expect(crd == ExpertPoolCRD.definition)
    }

    @Test("the controller Deployment is hardened: non-root, read-only root, no capabilities, requests, probes; args the CLI accepts")
    func controllerDeployment() throws {
        let deployment = try #require(try manifestObjects(["Manifests/controller"]).first { $0["kind"] == "Deployment" })
        let pod = deployment[path: ["spec", "template", "spec"]]
        let container = pod?["containers"]?.array?.first
        #expect(pod?[path: ["securityContext", "runAsNonRoot"]] == true)
        #expect(container?[path: ["securityContext", "readOnlyRootFilesystem"]] == true)
        #expect(container?[path: ["securityContext", "allowPrivilegeEscalation"]] == false)
        #expect(container?[path: ["securityContext", "capabilities", "drop"]] == ["ALL"])
        #expect(container?[path: ["resources", "requests", "cpu"]] != nil)
        #expect(container?[path: ["resources", "requests", "memory"]] != nil)
        #expect(container?[path: ["readinessProbe", "httpGet", "path"]] == "/readyz")
        #expect(pod?["serviceAccountName"] == "eaas-controller")
        let args = container?["args"]?.array?.compactMap(\.string) ?? []
        #expect(args.first == "controller")
        #expect(args.contains("--leader-elect"))
    }

    @Test("every RBAC rule says why, verb by verb")
    func rbacJustified() throws {
        for file in ["Manifests/rbac/cluster-role.yaml", "Manifests/rbac/leader-election-role.yaml", "Manifests/samples/worker-rbac.yaml",
                     "Manifests/samples/controller-rbac.yaml", "charts/eaas/templates/pool-token-role.yaml"] {
            let text = try String(contentsOfFile: "\(packageRoot)/\(file)", encoding: .utf8)
            var inVerbs = false
            for line in text.split(separator: "\n") {
                let trimmed = line.trimmingCharacters(in: .whitespaces)
                if trimmed == "verbs:" { inVerbs = true; continue }
                guard inVerbs else { continue }
                guard trimmed.hasPrefix("- ") else { inVerbs = false; continue }
                #expect(trimmed.contains("#"), "\(file): '\(trimmed)' has no justification")
            }
        }
        #expect(try RBACRules.granted(file: "Manifests/rbac/leader-election-role.yaml") == [
            "coordination.k8s.io/leases:get", "coordination.k8s.io/leases:create", "coordination.k8s.io/leases:update",
        ])
        #expect(try RBACRules.granted(file: "Manifests/samples/worker-rbac.yaml") == [
            "discovery.k8s.io/endpointslices:list", "discovery.k8s.io/endpointslices:watch",
            "/configmaps:list", "/configmaps:watch",
        ])
        // Secrets: not through the ClusterRole, only through a Role in the pools' namespace, for
        // the pool's own token Secret by name.
        let clusterRole = try RBACRules.granted(file: "Manifests/rbac/cluster-role.yaml")
        #expect(!clusterRole.contains { $0.hasPrefix("/secrets:") })
        #expect(try RBACRules.granted(file: "Manifests/samples/controller-rbac.yaml") == ["/secrets:get"])
        let samples = try manifestObjects(["Manifests/samples"])
        let role = try #require(samples.first { $0["kind"] == "Role" && $0[path: ["metadata", "name"]] == "eaas-controller-pool-token" })
        let pool = try #require(samples.first { $0["kind"] == "ExpertPool" })
        #expect(role["rules"]?.array?.first?["resourceNames"]?.array?.compactMap(\.string) == [pool[path: ["spec", "poolTokenSecret", "name"]]?.string ?? "?"])
        #expect(role[path: ["metadata", "namespace"]] == pool[path: ["metadata", "namespace"]])
    }

    @Test("the sample pool is a valid spec with a valid plan")
    func samplePool() throws {
        let pool = try #require(try manifestObjects(["Manifests/samples"]).first { $0["kind"] == "ExpertPool" })
        let spec = try ExpertPoolSpec(pool: pool)
        let plan = try spec.plan(poolName: pool[path: ["metadata", "name"]]?.string ?? "").get()
        #expect(plan.shards.count == 4)
    }
}
