import Foundation
import JSON
import Kube

/// The subresource a write goes to.
enum Subresource: String, Sendable {
    case status, scale
}

/// How a PATCH body is to be read (by its Content-Type).
enum PatchType: Sendable {
    case merge, json, strategic, apply

    init?(contentType: String) {
        let mediaType = contentType.split(separator: ";").first.map { $0.trimmingCharacters(in: .whitespaces).lowercased() } ?? ""
        switch mediaType {
        case "application/merge-patch+json": self = .merge
        case "application/json-patch+json": self = .json
        case "application/strategic-merge-patch+json": self = .strategic
        case "application/apply-patch+yaml", "application/apply-patch+json": self = .apply
        default: return nil
        }
    }
}

/// Options every write takes from its query string.
struct WriteRequest: Sendable {
    var manager: String
    var dryRun = false
    var force = false
}

extension APIState {
    // MARK: Create

    func create(_ resource: ServedResource, namespace: String?, body: JSONValue, manager: String, dryRun: Bool) throws(APIError) -> JSONValue {
        try locked { () throws(APIError) -> JSONValue in
            var object = try checkedBody(resource, body, namespace: namespace, name: nil)
            if object[path: ["metadata", "name"]]?.string?.isEmpty ?? true, let prefix = object[path: ["metadata", "generateName"]]?.string {
                object[path: ["metadata", "name"]] = .string(prefix + Self.randomSuffix())
            }
            guard let name = object[path: ["metadata", "name"]]?.string, !name.isEmpty else {
                throw .invalid(kind: resource.type.kind, name: "", group: resource.type.group,
                               causes: [("metadata.name", "Required value: name or generateName is required")])
            }
            try validateName(resource, name)
            if resource.type.namespaced { try checkNamespaceAcceptsContent(namespace ?? "") }
            let key = KubeObject.key(namespace: resource.type.namespaced ? namespace : nil, name: name)
            guard collection(resource.type).objects[key] == nil else {
                throw .alreadyExists(resource.type.plural, name, group: resource.type.group)
            }
            if resource.type == .customResourceDefinitions { object = try acceptCRD(object) }
            object["metadata"]?["uid"] = .string(UUID().uuidString.lowercased())
            object["metadata"]?["creationTimestamp"] = .string(now())
            for managed in ["deletionTimestamp", "deletionGracePeriodSeconds", "resourceVersion"] { object["metadata"]?[managed] = nil }
            if resource.tracksGeneration { object["metadata"]?["generation"] = 1 } else { object["metadata"]?["generation"] = nil }
            if resource.hasStatus && resource.type != .customResourceDefinitions && resource.type != .namespaces { object["status"] = nil }
            if resource.type == .pods { object["status"] = ["phase": "Pending"] }
            if resource.type == .namespaces { object["status"] = ["phase": "Active"] }
            object = try checkedAgainstSchema(resource, object)
            if object["metadata"]?["managedFields"] == nil {
                object = recordUpdate(old: nil, new: object, manager: manager, apiVersion: resource.type.apiVersion, now: now(),
                                      schema: StrategicMergeSchema.forKind(resource.type.kind))
            }
            if dryRun { return withAPIVersion(object, resource.type.apiVersion) }
            let stored = commit(resource.type, key: key, old: nil, new: object)!
            if resource.type == .customResourceDefinitions {
                for served in ServedResource.fromCRD(stored) { register(served) }
            }
            return withAPIVersion(stored, resource.type.apiVersion)
        }
    }

    /// A custom resource pruned, defaulted and validated by its CRD's structural schema.
    func checkedAgainstSchema(_ resource: ServedResource, _ object: JSONValue) throws(APIError) -> JSONValue {
        guard resource.isCustom, let schema = resource.schema else { return object }
        let (checked, causes) = StructuralSchema.apply(schema, to: object)
        guard causes.isEmpty else {
            throw .invalid(kind: resource.type.kind, name: object[path: ["metadata", "name"]]?.string ?? "", group: resource.type.group,
                           causes: causes.map { ($0.field, $0.message) })
        }
        return checked
    }

    /// The body of a create or update, checked against the URL: kind, apiVersion, name, namespace.
    func checkedBody(_ resource: ServedResource, _ body: JSONValue, namespace: String?, name: String?) throws(APIError) -> JSONValue {
        guard case .object = body else { throw .badRequest("the body of the request is not a JSON object") }
        var object = body
        if let kind = object["kind"]?.string, !kind.isEmpty, kind != resource.type.kind {
            throw .badRequest("the kind in the body (\(kind)) does not match the kind of the URL (\(resource.type.kind))")
        }
        if let apiVersion = object["apiVersion"]?.string, !apiVersion.isEmpty, apiVersion != resource.type.apiVersion {
            // Another served version of the same group is accepted (no conversion is needed here).
            let group = apiVersion.contains("/") ? String(apiVersion.split(separator: "/")[0]) : ""
            guard group == resource.type.group else {
                throw .badRequest("the API version in the data (\(apiVersion)) does not match the expected API version (\(resource.type.apiVersion))")
            }
        }
        object["kind"] = .string(resource.type.kind)
        object["apiVersion"] = .string(resource.type.apiVersion)
        if object["metadata"] == nil || object["metadata"]?.object == nil { object["metadata"] = [:] }
        if let name, let bodyName = object[path: ["metadata", "name"]]?.string, !bodyName.isEmpty, bodyName != name {
            throw .badRequest("the name of the object (\(bodyName)) does not match the name on the URL (\(name))")
        }
        if let name { object["metadata"]?["name"] = .string(name) }
        if resource.type.namespaced {
            if let bodyNamespace = object[path: ["metadata", "namespace"]]?.string, !bodyNamespace.isEmpty, bodyNamespace != namespace {
                throw .badRequest("the namespace of the provided object does not match the namespace sent on the request")
            }
            object["metadata"]?["namespace"] = namespace.map { .string($0) }
        } else {
            object["metadata"]?["namespace"] = nil
        }
        if let labels = object[path: ["metadata", "labels"]]?.object {
            var causes: [(String, String)] = []
            for (key, value) in labels {
                if !LabelSelector.isLabelKey(key) { causes.append(("metadata.labels", "Invalid value: \"\(key)\": name part must consist of alphanumeric characters, '-', '_' or '.'")) }
                if value.string.map(LabelSelector.isLabelValue) != true { causes.append(("metadata.labels", "Invalid value: \(value.compact): a valid label must be an empty string or consist of alphanumeric characters, '-', '_' or '.'")) }
            }
            if !causes.isEmpty { throw .invalid(kind: resource.type.kind, name: object[path: ["metadata", "name"]]?.string ?? "", group: resource.type.group, causes: causes) }
        }
        return object
    }

    func validateName(_ resource: ServedResource, _ name: String) throws(APIError) {
        let label = resource.type == .namespaces
        let valid = name.count <= (label ? 63 : 253) && !name.isEmpty
            && name.allSatisfy { ($0.isASCII && ($0.isLowercase || $0.isNumber)) || $0 == "-" || (!label && $0 == ".") }
            && name.first!.isASCII && (name.first!.isLowercase || name.first!.isNumber)
            && (name.last!.isLowercase || name.last!.isNumber)
        guard valid else {
            throw .invalid(kind: resource.type.kind, name: name, group: resource.type.group, causes: [(
                "metadata.name",
                "Invalid value: \"\(name)\": a lowercase RFC 1123 \(label ? "label" : "subdomain") must consist of lower case alphanumeric characters, '-'\(label ? "" : " or '.'"), and must start and end with an alphanumeric character")])
        }
    }

    private func checkNamespaceAcceptsContent(_ namespace: String) throws(APIError) {
        guard let object = collection(.namespaces).objects[namespace] else { throw .notFound("namespaces", namespace) }
        if KubeObject(object).deletionTimestamp != nil {
            throw APIError(code: 403, reason: "Forbidden",
                           message: "unable to create new content in namespace \(namespace) because it is being terminated")
        }
    }

    static func randomSuffix() -> String {
        let alphabet = Array("bcdfghjklmnpqrstvwxz2456789")
        return String((0..<5).map { _ in alphabet.randomElement()! })
    }

    // MARK: Update

    /// A PUT of the object, or of its status or scale.
    func update(_ resource: ServedResource, namespace: String?, name: String, body: JSONValue, subresource: Subresource?,
                request: WriteRequest) throws(APIError) -> JSONValue {
        try locked { () throws(APIError) -> JSONValue in
            let key = KubeObject.key(namespace: resource.type.namespaced ? namespace : nil, name: name)
            guard let old = collection(resource.type).objects[key] else { throw .notFound(resource.type.plural, name, group: resource.type.group) }
            switch subresource {
            case .scale?:
                guard let paths = resource.scale else { throw .pathNotFound() }
                try checkVersion(resource, name, old: old, given: body[path: ["metadata", "resourceVersion"]]?.string)
                guard let replicas = body[path: ["spec", "replicas"]]?.int, replicas >= 0 else {
                    throw .invalid(kind: "Scale", name: name, group: "autoscaling", causes: [("spec.replicas", "Invalid value: must be a non-negative integer")])
                }
                var new = old
                new[path: paths.specReplicas] = .int(replicas)
                let written = try write(resource, key: key, old: old, new: new, request: request, recordManager: true)
                return scaleView(resource, written)
            case .status?:
                guard resource.hasStatus else { throw .pathNotFound() }
                let checked = try checkedBody(resource, body, namespace: namespace, name: name)
                try checkVersion(resource, name, old: old, given: checked[path: ["metadata", "resourceVersion"]]?.string)
                var new = old
                new["status"] = checked["status"]
                return withAPIVersion(try write(resource, key: key, old: old, new: new, request: request, recordManager: true), resource.type.apiVersion)
            case nil:
                var new = try checkedBody(resource, body, namespace: namespace, name: name)
                try checkVersion(resource, name, old: old, given: new[path: ["metadata", "resourceVersion"]]?.string,
                                 required: resource.isCustom)
                if resource.hasStatus { new["status"] = old["status"] }
                return withAPIVersion(try write(resource, key: key, old: old, new: new, request: request, recordManager: true), resource.type.apiVersion)
            }
        }
    }

    /// 409 when the client's resourceVersion is not the stored one (optimistic concurrency).
    func checkVersion(_ resource: ServedResource, _ name: String, old: JSONValue, given: String?, required: Bool = false) throws(APIError) {
        guard let given, !given.isEmpty else {
            if required {
                throw .invalid(kind: resource.type.kind, name: name, group: resource.type.group,
                               causes: [("metadata.resourceVersion", "Invalid value: 0x0: must be specified for an update")])
            }
            return
        }
        if given != KubeObject(old).resourceVersion { throw .conflict(resource.type.plural, name, group: resource.type.group) }
    }

    /// Stores an update of `old` to `new`: server-managed metadata kept, generation bumped by spec
    /// changes only, finalizer rules, no-op writes not stored, and the object removed when it was
    /// being deleted and lost its last finalizer.
    func write(_ resource: ServedResource, key: String, old: JSONValue, new: JSONValue, request: WriteRequest,
               recordManager: Bool) throws(APIError) -> JSONValue {
        var new = new
        let name = KubeObject(old).name ?? ""
        for kept in ["uid", "creationTimestamp", "deletionTimestamp", "deletionGracePeriodSeconds", "generation", "namespace", "name"] {
            new["metadata"]?[kept] = old["metadata"]?[kept]
        }
        new["metadata"]?["resourceVersion"] = old["metadata"]?["resourceVersion"]
        if KubeObject(old).deletionTimestamp != nil {
            let added = Set(KubeObject(new).finalizers).subtracting(KubeObject(old).finalizers)
            if !added.isEmpty {
                throw .invalid(kind: resource.type.kind, name: name, group: resource.type.group,
                               causes: [("metadata.finalizers", "Forbidden: no new finalizers can be added if the object is being deleted, found new finalizers \(added.sorted())")])
            }
        }
        if resource.type == .customResourceDefinitions { new = try acceptCRD(new) }
        new = try checkedAgainstSchema(resource, new)
        if resource.tracksGeneration, Self.specChanged(old, new) {
            new["metadata"]?["generation"] = .int((KubeObject(old).generation ?? 0) + 1)
        }
        if recordManager {
            new = recordUpdate(old: old, new: new, manager: request.manager, apiVersion: resource.type.apiVersion, now: now(),
                               schema: StrategicMergeSchema.forKind(resource.type.kind))
        }
        if Self.sameIgnoringManagedFields(old, new) { return old }  // a no-op write changes nothing, not even the version
        if request.dryRun { return new }
        if KubeObject(new).deletionTimestamp != nil, KubeObject(new).finalizers.isEmpty {
            commit(resource.type, key: key, old: old, new: nil)
            didRemove(old)
            return new
        }
        let stored = commit(resource.type, key: key, old: old, new: new)!
        if resource.type == .customResourceDefinitions {
            if let group = stored[path: ["spec", "group"]]?.string, let plural = stored[path: ["spec", "names", "plural"]]?.string {
                unregister(group: group, plural: plural)
            }
            for served in ServedResource.fromCRD(stored) { register(served) }
        }
        return stored
    }

    /// Whether anything but metadata and status changed: what bumps metadata.generation.
    static func specChanged(_ old: JSONValue, _ new: JSONValue) -> Bool {
        var a = old, b = new
        for ignored in ["metadata", "status", "apiVersion", "kind"] { a[ignored] = nil; b[ignored] = nil }
        return a != b
    }

    static func sameIgnoringManagedFields(_ old: JSONValue, _ new: JSONValue) -> Bool {
        var a = old, b = new
        a["metadata"]?["managedFields"] = nil
        b["metadata"]?["managedFields"] = nil
        return a == b
    }

    // MARK: Patch

    func patch(_ resource: ServedResource, namespace: String?, name: String, type: PatchType, body: JSONValue,
               subresource: Subresource?, request: WriteRequest) throws(APIError) -> JSONValue {
        try locked { () throws(APIError) -> JSONValue in
            let key = KubeObject.key(namespace: resource.type.namespaced ? namespace : nil, name: name)
            let existing = collection(resource.type).objects[key]
            if subresource == .scale && resource.scale == nil || subresource == .status && !resource.hasStatus { throw .pathNotFound() }
            if type == .strategic && StrategicMergeSchema.forKind(resource.type.kind) == nil || type == .strategic && resource.isCustom {
                throw .unsupportedMediaType("the body of the request was in an unknown format - accepted media types include: application/json-patch+json, application/merge-patch+json, application/apply-patch+yaml")
            }
            if type == .apply {
                return try apply(resource, namespace: namespace, name: name, key: key, existing: existing, body: body,
                                 subresource: subresource, request: request)
            }
            guard let old = existing else { throw .notFound(resource.type.plural, name, group: resource.type.group) }
            let target = subresource == .scale ? scaleView(resource, old) : withAPIVersion(old, resource.type.apiVersion)
            let patched: JSONValue
            do {
                switch type {
                case .merge: patched = applyMergePatch(target, body)
                case .json: patched = try applyJSONPatch(target, body)
                case .strategic: patched = try applyStrategicMergePatch(target, body, schema: StrategicMergeSchema.forKind(resource.type.kind)!)
                case .apply: fatalError("handled above")
                }
            } catch let error {
                throw APIError(code: 422, reason: "Invalid", message: "the patch could not be applied: \(error)")
            }
            return try update(resource, namespace: namespace, name: name, body: patched, subresource: subresource, request: request)
        }
    }

    /// Server-side apply: creates the object if absent; otherwise merges the applied configuration
    /// with field ownership (409 naming the fields another manager owns, unless forced).
    private func apply(_ resource: ServedResource, namespace: String?, name: String, key: String, existing: JSONValue?,
                       body: JSONValue, subresource: Subresource?, request: WriteRequest) throws(APIError) -> JSONValue {
        guard !request.manager.isEmpty, request.manager != "unknown" else {
            throw .badRequest("PATCH requests with apply content type must supply a fieldManager")
        }
        let applied = try checkedBody(resource, body, namespace: namespace, name: name)
        let schema = resource.isCustom ? nil : StrategicMergeSchema.forKind(resource.type.kind)
        let result: JSONValue
        do {
            result = try serverSideApply(existing: existing, applied: applied, manager: request.manager, force: request.force,
                                         apiVersion: resource.type.apiVersion, now: now(), schema: schema)
        } catch {
            let causes: [JSONValue] = error.conflicts.map {
                ["reason": "FieldManagerConflict", "message": .string("conflict with \"\($0.manager)\""), "field": .string($0.field)]
            }
            let listed = error.conflicts.map { "conflict with \"\($0.manager)\": \($0.field)" }.joined(separator: ", ")
            throw APIError(code: 409, reason: "Conflict", message: "Apply failed with \(error.conflicts.count) conflict\(error.conflicts.count == 1 ? "" : "s"): \(listed)",
                           details: ["name": .string(name), "group": .string(resource.type.group), "kind": .string(resource.type.plural), "causes": .array(causes)])
        }
        guard let old = existing else {
            return try create(resource, namespace: namespace, body: result, manager: request.manager, dryRun: request.dryRun)
        }
        var new = result
        if subresource == .status { new = old; new["status"] = result["status"]; new["metadata"]?["managedFields"] = result["metadata"]?["managedFields"] }
        else if resource.hasStatus && subresource == nil { new["status"] = old["status"] }
        return withAPIVersion(try write(resource, key: key, old: old, new: new, request: request, recordManager: false), resource.type.apiVersion)
    }

    /// The `autoscaling/v1` Scale of an object.
    func scaleView(_ resource: ServedResource, _ object: JSONValue) -> JSONValue {
        let paths = resource.scale!
        var selector: JSONValue = .null
        if let path = paths.labelSelector {
            selector = object[path: path] ?? .null
        } else if let labels = object[path: ["spec", "selector", "matchLabels"]]?.object {
            selector = .string(labels.keys.sorted().map { "\($0)=\(labels[$0]?.string ?? "")" }.joined(separator: ","))
        }
        var scale: JSONValue = [
            "kind": "Scale", "apiVersion": "autoscaling/v1",
            "metadata": ["name": object[path: ["metadata", "name"]] ?? .null, "uid": object[path: ["metadata", "uid"]] ?? .null,
                         "resourceVersion": object[path: ["metadata", "resourceVersion"]] ?? .null,
                         "creationTimestamp": object[path: ["metadata", "creationTimestamp"]] ?? .null],
            "spec": ["replicas": .int(object[path: paths.specReplicas]?.int ?? 0)],
            "status": ["replicas": .int(object[path: paths.statusReplicas]?.int ?? 0)],
        ]
        if let namespace = object[path: ["metadata", "namespace"]] { scale["metadata"]?["namespace"] = namespace }
        if case .string = selector { scale["status"]?["selector"] = selector }
        return scale
    }
}
