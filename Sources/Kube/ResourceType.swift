/// A kind of API object and where it is served: group, version, plural resource name, scope.
/// Built-in kinds the project uses are listed below; custom resources are described the same way.
public struct ResourceType: Hashable, Sendable, CustomStringConvertible {
    /// API group; empty for the core group (`v1` Pods, Services …).
    public let group: String
    public let version: String
    /// The lower-case plural in URLs (`deployments`).
    public let plural: String
    public let kind: String
    public let namespaced: Bool

    public init(group: String, version: String, plural: String, kind: String, namespaced: Bool) {
        self.group = group
        self.version = version
        self.plural = plural
        self.kind = kind
        self.namespaced = namespaced
    }

    /// `apps/v1`, or `v1` for the core group.
    public var apiVersion: String { group.isEmpty ? version : "\(group)/\(version)" }
    public var description: String { group.isEmpty ? plural : "\(plural).\(group)" }

    /// The URL path of the collection (`namespace` nil: across all namespaces) or of one object.
    public func path(namespace: String?, name: String? = nil, subresource: String? = nil) -> String {
        var path = group.isEmpty ? "/api/\(version)" : "/apis/\(group)/\(version)"
        if namespaced, let namespace { path += "/namespaces/\(Self.escape(namespace))" }
        path += "/\(plural)"
        if let name { path += "/\(Self.escape(name))" }
        if let subresource { path += "/\(subresource)" }
        return path
    }

    /// Names are DNS labels in practice, but a bad one must not change the path's meaning.
    static func escape(_ segment: String) -> String {
        segment.addingPercentEncodingForPath()
    }

    public static let pods = ResourceType(group: "", version: "v1", plural: "pods", kind: "Pod", namespaced: true)
    public static let services = ResourceType(group: "", version: "v1", plural: "services", kind: "Service", namespaced: true)
    public static let configMaps = ResourceType(group: "", version: "v1", plural: "configmaps", kind: "ConfigMap", namespaced: true)
    public static let secrets = ResourceType(group: "", version: "v1", plural: "secrets", kind: "Secret", namespaced: true)
    public static let events = ResourceType(group: "", version: "v1", plural: "events", kind: "Event", namespaced: true)
    public static let namespaces = ResourceType(group: "", version: "v1", plural: "namespaces", kind: "Namespace", namespaced: false)
    public static let deployments = ResourceType(group: "apps", version: "v1", plural: "deployments", kind: "Deployment", namespaced: true)
    public static let leases = ResourceType(group: "coordination.k8s.io", version: "v1", plural: "leases", kind: "Lease", namespaced: true)
    public static let endpointSlices = ResourceType(group: "discovery.k8s.io", version: "v1", plural: "endpointslices", kind: "EndpointSlice", namespaced: true)
    public static let customResourceDefinitions = ResourceType(
        group: "apiextensions.k8s.io", version: "v1", plural: "customresourcedefinitions", kind: "CustomResourceDefinition", namespaced: false)
    public static let serviceAccounts = ResourceType(group: "", version: "v1", plural: "serviceaccounts", kind: "ServiceAccount", namespaced: true)
    public static let clusterRoles = ResourceType(group: "rbac.authorization.k8s.io", version: "v1", plural: "clusterroles", kind: "ClusterRole", namespaced: false)
    public static let clusterRoleBindings = ResourceType(
        group: "rbac.authorization.k8s.io", version: "v1", plural: "clusterrolebindings", kind: "ClusterRoleBinding", namespaced: false)
    public static let roles = ResourceType(group: "rbac.authorization.k8s.io", version: "v1", plural: "roles", kind: "Role", namespaced: true)
    public static let roleBindings = ResourceType(group: "rbac.authorization.k8s.io", version: "v1", plural: "rolebindings", kind: "RoleBinding", namespaced: true)

    /// The built-in kinds above, in the order discovery lists them.
    public static let builtIn: [ResourceType] = [
        .pods, .services, .configMaps, .secrets, .events, .namespaces, .serviceAccounts, .deployments, .leases, .endpointSlices,
        .customResourceDefinitions, .clusterRoles, .clusterRoleBindings, .roles, .roleBindings,
    ]
}

extension String {
    /// Percent-encodes everything but RFC 3986's unreserved characters, for one path segment or query value.
    func addingPercentEncodingForPath() -> String {
        var out = ""
        for byte in utf8 {
            switch byte {
            case UInt8(ascii: "a")...UInt8(ascii: "z"), UInt8(ascii: "A")...UInt8(ascii: "Z"),
                 UInt8(ascii: "0")...UInt8(ascii: "9"), UInt8(ascii: "-"), UInt8(ascii: "."), UInt8(ascii: "_"), UInt8(ascii: "~"):
                out.unicodeScalars.append(Unicode.Scalar(byte))
            default:
                let hex = String(byte, radix: 16, uppercase: true)
                out += "%" + (hex.count == 1 ? "0" + hex : hex)
            }
        }
        return out
    }
}
