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

    @Test("values change the render: watch namespace, no Namespace object, node selector")
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
        for file in ["Manifests/rbac/cluster-role.yaml", "Manifests/rbac/leader-election-role.yaml", "Manifests/samples/worker-rbac.yaml"] {
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
    }

    @Test("the sample pool is a valid spec with a valid plan")
    func samplePool() throws {
        let pool = try #require(try manifestObjects(["Manifests/samples"]).first { $0["kind"] == "ExpertPool" })
        let spec = try ExpertPoolSpec(pool: pool)
        let plan = try spec.plan(poolName: pool[path: ["metadata", "name"]]?.string ?? "").get()
        #expect(plan.shards.count == 4)
    }
}
