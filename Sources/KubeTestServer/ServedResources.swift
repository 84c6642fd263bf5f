import JSON
import Kube

/// A resource the test server serves: its type, short names, and subresources, as discovery
/// announces it. Built-ins come from `Kube.ResourceType`; custom resources from their CRDs.
struct ServedResource: Sendable {
    /// Where a `scale` subresource reads and writes the object (`.spec.replicas` …).
    struct ScalePaths: Sendable {
        var specReplicas: [String]
        var statusReplicas: [String]
        var labelSelector: [String]?
    }
    /// An `additionalPrinterColumns` entry of a CRD version (shown by `kubectl get`).
    struct PrinterColumn: Sendable {
        var name: String
        var type: String
        var jsonPath: String
    }

    var type: ResourceType
    var shortNames: [String] = []
    var singular: String
    var hasStatus: Bool
    var scale: ScalePaths?
    var printerColumns: [PrinterColumn] = []
    /// Custom resources: served from a CRD, no strategic merge patch, generation on every spec change.
    var isCustom = false
    var categories: [String] = []
    /// Custom resources: the version's `openAPIV3Schema` (pruning, defaults, validation).
    var schema: JSONValue?

    /// Built-in kinds whose strategies track metadata.generation.
    var tracksGeneration: Bool { isCustom || hasStatus }

    static let builtIn: [ServedResource] = [
        ServedResource(type: .pods, shortNames: ["po"], singular: "pod", hasStatus: true, categories: ["all"]),
        ServedResource(type: .services, shortNames: ["svc"], singular: "service", hasStatus: true, categories: ["all"]),
        ServedResource(type: .configMaps, shortNames: ["cm"], singular: "configmap", hasStatus: false),
        ServedResource(type: .secrets, singular: "secret", hasStatus: false),
        ServedResource(type: .events, shortNames: ["ev"], singular: "event", hasStatus: false),
        ServedResource(type: .namespaces, shortNames: ["ns"], singular: "namespace", hasStatus: true),
        ServedResource(type: .deployments, shortNames: ["deploy"], singular: "deployment", hasStatus: true,
                       scale: ScalePaths(specReplicas: ["spec", "replicas"], statusReplicas: ["status", "replicas"], labelSelector: nil),
                       printerColumns: [], categories: ["all"]),
        ServedResource(type: .leases, singular: "lease", hasStatus: false),
        ServedResource(type: .endpointSlices, singular: "endpointslice", hasStatus: false),
        ServedResource(type: .customResourceDefinitions, shortNames: ["crd", "crds"], singular: "customresourcedefinition", hasStatus: true),
        // Stored as written: this server authorizes nothing, so roles are only kept for clients to read.
        ServedResource(type: .serviceAccounts, shortNames: ["sa"], singular: "serviceaccount", hasStatus: false),
        ServedResource(type: .clusterRoles, singular: "clusterrole", hasStatus: false),
        ServedResource(type: .clusterRoleBindings, singular: "clusterrolebinding", hasStatus: false),
        ServedResource(type: .roles, singular: "role", hasStatus: false),
        ServedResource(type: .roleBindings, singular: "rolebinding", hasStatus: false),
    ]

    /// The resources a CRD defines, one per served version; nil if the CRD is malformed (the
    /// server validates it before this is called).
    static func fromCRD(_ crd: JSONValue) -> [ServedResource] {
        guard let spec = crd["spec"], let group = spec["group"]?.string, let names = spec["names"],
              let plural = names["plural"]?.string, let kind = names["kind"]?.string else { return [] }
        let namespaced = spec["scope"]?.string != "Cluster"
        return (spec["versions"]?.array ?? []).compactMap { version in
            guard let name = version["name"]?.string, version["served"]?.bool ?? true else { return nil }
            let subresources = version["subresources"]
            let scale = subresources?["scale"].map { scale in
                ScalePaths(specReplicas: jsonPath(scale["specReplicasPath"]?.string ?? ".spec.replicas"),
                           statusReplicas: jsonPath(scale["statusReplicasPath"]?.string ?? ".status.replicas"),
                           labelSelector: scale["labelSelectorPath"]?.string.map(jsonPath))
            }
            let columns = (version["additionalPrinterColumns"]?.array ?? []).compactMap { column -> PrinterColumn? in
                guard let name = column["name"]?.string, let path = column["jsonPath"]?.string else { return nil }
                return PrinterColumn(name: name, type: column["type"]?.string ?? "string", jsonPath: path)
            }
            return ServedResource(
                type: ResourceType(group: group, version: name, plural: plural, kind: kind, namespaced: namespaced),
                shortNames: (names["shortNames"]?.array ?? []).compactMap(\.string),
                singular: names["singular"]?.string ?? kind.lowercased(),
                hasStatus: subresources?["status"] != nil, scale: scale, printerColumns: columns, isCustom: true,
                categories: (names["categories"]?.array ?? []).compactMap(\.string),
                schema: version[path: ["schema", "openAPIV3Schema"]])
        }
    }

    /// `.spec.replicas` → ["spec", "replicas"] (the simple paths CRD scale subresources allow).
    static func jsonPath(_ path: String) -> [String] {
        path.split(separator: ".").map(String.init)
    }

    /// This resource's entry in an `APIResourceList`, with its subresources after it.
    var discoveryEntries: [JSONValue] {
        // No deletecollection: this server does not serve DELETE on a collection.
        let verbs: [JSONValue] = ["create", "delete", "get", "list", "patch", "update", "watch"]
        var main: JSONValue = [
            "name": .string(type.plural), "singularName": .string(singular), "namespaced": .bool(type.namespaced),
            "kind": .string(type.kind), "verbs": .array(verbs),
        ]
        if !shortNames.isEmpty { main["shortNames"] = .array(shortNames.map { .string($0) }) }
        if !categories.isEmpty { main["categories"] = .array(categories.map { .string($0) }) }
        var entries = [main]
        if hasStatus {
            entries.append(["name": .string(type.plural + "/status"), "singularName": "", "namespaced": .bool(type.namespaced),
                            "kind": .string(type.kind), "verbs": ["get", "patch", "update"]])
        }
        if scale != nil {
            entries.append(["name": .string(type.plural + "/scale"), "singularName": "", "namespaced": .bool(type.namespaced),
                            "group": "autoscaling", "version": "v1", "kind": "Scale", "verbs": ["get", "patch", "update"]])
        }
        return entries
    }
}
