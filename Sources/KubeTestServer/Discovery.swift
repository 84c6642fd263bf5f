import JSON

/// The discovery documents (`/api`, `/apis`, `/apis/{group}`, resource lists, `/version`) built
/// from what is served now, so a CRD shows up the moment it is created.
enum Discovery {
    static let version: JSONValue = [
        "major": "1", "minor": "32", "gitVersion": "v1.32.0-eaas-test", "gitCommit": "0000000000000000000000000000000000000000",
        "gitTreeState": "clean", "buildDate": "2026-01-01T00:00:00Z", "goVersion": "go1.23.0", "compiler": "gc",
        "platform": "linux/amd64",
    ]

    static func coreVersions(port: Int) -> JSONValue {
        ["kind": "APIVersions", "versions": ["v1"],
         "serverAddressByClientCIDRs": [["clientCIDR": "0.0.0.0/0", "serverAddress": .string("127.0.0.1:\(port)")]]]
    }

    /// Versions of a group, the storage (first registered built-in, else highest) preferred.
    private static func versions(of group: String, _ served: [ServedResource]) -> [String] {
        Array(Set(served.filter { $0.type.group == group }.map(\.type.version))).sorted { priority($0) > priority($1) }
    }

    /// Kubernetes version priority: GA > beta > alpha, then by number.
    static func priority(_ version: String) -> Int {
        let digits = version.dropFirst().prefix { $0.isNumber }
        let major = Int(digits) ?? 0
        let rest = version.dropFirst(1 + digits.count)
        let stability = rest.hasPrefix("beta") ? 1 : rest.hasPrefix("alpha") ? 0 : (rest.isEmpty ? 2 : -1)
        let minor = Int(rest.drop { !$0.isNumber }) ?? 0
        return stability * 1_000_000 + major * 1000 + minor
    }

    private static func groupDocument(_ group: String, _ served: [ServedResource]) -> JSONValue {
        let list = versions(of: group, served).map { version -> JSONValue in
            ["groupVersion": .string("\(group)/\(version)"), "version": .string(version)]
        }
        return ["name": .string(group), "versions": .array(list), "preferredVersion": list.first ?? .null]
    }

    static func groupList(_ served: [ServedResource]) -> JSONValue {
        let groups = Set(served.map(\.type.group)).filter { !$0.isEmpty }.sorted()
        return ["kind": "APIGroupList", "apiVersion": "v1", "groups": .array(groups.map { groupDocument($0, served) })]
    }

    static func group(_ group: String, _ served: [ServedResource]) -> JSONValue? {
        guard served.contains(where: { $0.type.group == group }) else { return nil }
        var document = groupDocument(group, served)
        document["kind"] = "APIGroup"
        document["apiVersion"] = "v1"
        return document
    }

    static func resourceList(group: String, version: String, _ served: [ServedResource]) -> JSONValue {
        let resources = served.filter { $0.type.group == group && $0.type.version == version }.sorted { $0.type.plural < $1.type.plural }
        return ["kind": "APIResourceList", "apiVersion": "v1",
                "groupVersion": .string(group.isEmpty ? version : "\(group)/\(version)"),
                "resources": .array(resources.flatMap(\.discoveryEntries))]
    }
}

/// The OpenAPI v3 documents kubectl reads before it writes: per group version, the PATCH operation
/// of each built-in kind with its `x-kubernetes-group-version-kind` and the `fieldValidation`
/// parameter, so that kubectl validates on the server (`fieldValidation=Strict`) instead of
/// downloading full schemas. Operations announce no strategic-merge body schema, so kubectl builds
/// strategic patches from its compiled-in types, and merge patches for custom resources.
enum OpenAPIDocuments {
    static func groupVersionPath(group: String, version: String) -> String {
        group.isEmpty ? "api/\(version)" : "apis/\(group)/\(version)"
    }

    /// `/openapi/v3`: where each built-in group version's document is.
    static func root(_ served: [ServedResource]) -> JSONValue {
        var paths: [String: JSONValue] = [:]
        for resource in served where !resource.isCustom {
            let path = groupVersionPath(group: resource.type.group, version: resource.type.version)
            paths[path] = ["serverRelativeURL": .string("/openapi/v3/\(path)?hash=\(Discovery.version["gitVersion"]!.string!)")]
        }
        return ["paths": .object(paths)]
    }

    static func document(group: String, version: String, _ served: [ServedResource]) -> JSONValue? {
        let resources = served.filter { !$0.isCustom && $0.type.group == group && $0.type.version == version }
        guard !resources.isEmpty else { return nil }
        var paths: [String: JSONValue] = [:]
        for resource in resources {
            let gvk: JSONValue = ["group": .string(group), "version": .string(version), "kind": .string(resource.type.kind)]
            let parameters: JSONValue = [
                ["name": "fieldValidation", "in": "query", "schema": ["type": "string", "uniqueItems": true]],
                ["name": "fieldManager", "in": "query", "schema": ["type": "string", "uniqueItems": true]],
                ["name": "dryRun", "in": "query", "schema": ["type": "string", "uniqueItems": true]],
                ["name": "force", "in": "query", "schema": ["type": "boolean", "uniqueItems": true]],
            ]
            let operation: JSONValue = ["operationId": .string("patch\(resource.type.kind)"), "parameters": parameters,
                                        "responses": ["200": ["description": "OK"]],
                                        "x-kubernetes-action": "patch", "x-kubernetes-group-version-kind": gvk]
            let namespacePart = resource.type.namespaced ? "/namespaces/{namespace}" : ""
            paths["/\(groupVersionPath(group: group, version: version))\(namespacePart)/\(resource.type.plural)/{name}"] = ["patch": operation]
        }
        return ["openapi": "3.0.0", "info": ["title": "Kubernetes", "version": .string(Discovery.version["gitVersion"]!.string!)],
                "paths": .object(paths), "components": ["schemas": [:]]]
    }
}
