import JSON
import Kube

extension APIState {
    /// Validates a CustomResourceDefinition as the apiextensions server does (the parts clients rely
    /// on) and gives it the status a real server reaches at once here: names accepted, Established.
    func acceptCRD(_ crd: JSONValue) throws(APIError) -> JSONValue {
        let name = crd[path: ["metadata", "name"]]?.string ?? ""
        var causes: [(field: String, message: String)] = []
        let spec = crd["spec"]
        let group = spec?["group"]?.string ?? ""
        let plural = spec?[path: ["names", "plural"]]?.string ?? ""
        let kind = spec?[path: ["names", "kind"]]?.string ?? ""
        if group.isEmpty { causes.append(("spec.group", "Required value")) } else if !group.contains(".") {
            causes.append(("spec.group", "Invalid value: \"\(group)\": should be a domain with at least one dot"))
        }
        if plural.isEmpty { causes.append(("spec.names.plural", "Required value")) }
        if kind.isEmpty { causes.append(("spec.names.kind", "Required value")) }
        if !plural.isEmpty, !group.isEmpty, name != "\(plural).\(group)" {
            causes.append(("metadata.name", "Invalid value: \"\(name)\": must be spec.names.plural+\".\"+spec.group"))
        }
        let scope = spec?["scope"]?.string ?? ""
        if scope != "Namespaced" && scope != "Cluster" { causes.append(("spec.scope", "Unsupported value: \"\(scope)\": supported values: \"Cluster\", \"Namespaced\"")) }
        let versions = spec?["versions"]?.array ?? []
        if versions.isEmpty { causes.append(("spec.versions", "Invalid value: must have exactly one version marked as storage version")) }
        if versions.filter({ $0["storage"]?.bool == true }).count != 1 {
            causes.append(("spec.versions", "Invalid value: must have exactly one version marked as storage version"))
        }
        for (index, version) in versions.enumerated() {
            if version["name"]?.string?.isEmpty ?? true { causes.append(("spec.versions[\(index)].name", "Required value")) }
            if version[path: ["schema", "openAPIV3Schema"]] == nil {
                causes.append(("spec.versions[\(index)].schema.openAPIV3Schema", "Required value: schemas are required"))
            }
        }
        if !causes.isEmpty { throw .invalid(kind: "CustomResourceDefinition", name: name, group: "apiextensions.k8s.io", causes: causes) }

        var accepted = crd
        let conditionTime = now()
        accepted["status"] = [
            "acceptedNames": spec?["names"] ?? [:],
            "storedVersions": .array(versions.filter { $0["storage"]?.bool == true }.compactMap { $0["name"] }),
            "conditions": [
                ["type": "NamesAccepted", "status": "True", "reason": "NoConflicts", "message": "no conflicts found",
                 "lastTransitionTime": .string(conditionTime)],
                ["type": "Established", "status": "True", "reason": "InitialNamesAccepted",
                 "message": "the initial names have been accepted", "lastTransitionTime": .string(conditionTime)],
            ],
        ]
        return accepted
    }
}
