import JSON

/// Options of a list or watch (`metav1.ListOptions`).
public struct ListOptions: Sendable {
    /// e.g. `app=web,tier!=cache`, `env in (a,b)`, `!canary`.
    public var labelSelector: String?
    /// e.g. `metadata.name=web-0`.
    public var fieldSelector: String?
    /// Page size; the answer's `continueToken` fetches the next page.
    public var limit: Int?
    public var continueToken: String?
    /// For a list: "0" lets the server answer from its cache; nil means the latest.
    public var resourceVersion: String?
    public init(labelSelector: String? = nil, fieldSelector: String? = nil, limit: Int? = nil,
                continueToken: String? = nil, resourceVersion: String? = nil) {
        self.labelSelector = labelSelector
        self.fieldSelector = fieldSelector
        self.limit = limit
        self.continueToken = continueToken
        self.resourceVersion = resourceVersion
    }

    var query: [(String, String)] {
        var query: [(String, String)] = []
        if let labelSelector { query.append(("labelSelector", labelSelector)) }
        if let fieldSelector { query.append(("fieldSelector", fieldSelector)) }
        if let limit { query.append(("limit", String(limit))) }
        if let continueToken { query.append(("continue", continueToken)) }
        if let resourceVersion { query.append(("resourceVersion", resourceVersion)) }
        return query
    }
}

/// Options of a create, update or patch.
public struct WriteOptions: Sendable {
    /// The name the server records as owner of the fields written (`managedFields`).
    public var fieldManager: String?
    /// Validate and answer without storing anything.
    public var dryRun = false
    public init(fieldManager: String? = nil, dryRun: Bool = false) {
        self.fieldManager = fieldManager
        self.dryRun = dryRun
    }
    var query: [(String, String)] {
        var query: [(String, String)] = []
        if let fieldManager { query.append(("fieldManager", fieldManager)) }
        if dryRun { query.append(("dryRun", "All")) }
        return query
    }
}

/// A patch, in one of the four forms the API accepts.
public enum Patch: Sendable {
    /// RFC 7386 JSON merge patch: objects merge, `null` deletes, lists replace.
    case merge(JSONValue)
    /// RFC 6902 JSON patch: a list of operations (`{"op": "replace", "path": "/spec/replicas", "value": 3}`).
    case json([JSONValue])
    /// Strategic merge patch, for built-in kinds only: lists merge by their key (containers by name).
    case strategic(JSONValue)
    /// Server-side apply of a whole intended configuration, owned by `fieldManager`; `force` takes
    /// over fields other managers own instead of failing with a conflict.
    case apply(JSONValue, fieldManager: String, force: Bool = false)

    var contentType: String {
        switch self {
        case .merge: "application/merge-patch+json"
        case .json: "application/json-patch+json"
        case .strategic: "application/strategic-merge-patch+json"
        case .apply: "application/apply-patch+yaml"
        }
    }
    var body: JSONValue {
        switch self {
        case .merge(let value), .strategic(let value), .apply(let value, _, _): value
        case .json(let operations): .array(operations)
        }
    }
}

/// Options of a delete (`metav1.DeleteOptions`).
public struct DeleteOptions: Sendable {
    /// What happens to the object's dependents.
    public enum Propagation: String, Sendable {
        /// Delete the object now; the garbage collector deletes dependents afterwards.
        case background = "Background"
        /// Keep the object (with `foregroundDeletion`) until every blocking dependent is gone.
        case foreground = "Foreground"
        /// Leave dependents, removing their ownerReferences to the object.
        case orphan = "Orphan"
    }
    public var propagationPolicy: Propagation?
    public var gracePeriodSeconds: Int?
    /// Delete only if the object still has this uid / resourceVersion (409 otherwise).
    public var preconditionUID: String?
    public var preconditionResourceVersion: String?
    public var dryRun = false
    public init(propagationPolicy: Propagation? = nil, gracePeriodSeconds: Int? = nil,
                preconditionUID: String? = nil, preconditionResourceVersion: String? = nil, dryRun: Bool = false) {
        self.propagationPolicy = propagationPolicy
        self.gracePeriodSeconds = gracePeriodSeconds
        self.preconditionUID = preconditionUID
        self.preconditionResourceVersion = preconditionResourceVersion
        self.dryRun = dryRun
    }

    var body: JSONValue {
        var body: JSONValue = ["kind": "DeleteOptions", "apiVersion": "v1"]
        if let propagationPolicy { body["propagationPolicy"] = .string(propagationPolicy.rawValue) }
        if let gracePeriodSeconds { body["gracePeriodSeconds"] = .int(gracePeriodSeconds) }
        if preconditionUID != nil || preconditionResourceVersion != nil {
            var preconditions: JSONValue = [:]
            if let preconditionUID { preconditions["uid"] = .string(preconditionUID) }
            if let preconditionResourceVersion { preconditions["resourceVersion"] = .string(preconditionResourceVersion) }
            body["preconditions"] = preconditions
        }
        if dryRun { body["dryRun"] = ["All"] }
        return body
    }
}

/// What a delete did.
public enum DeleteResult: Sendable {
    /// The object is gone (its last state when the server returned it).
    case deleted(KubeObject?)
    /// The object has a deletionTimestamp and waits for finalizers, foreground deletion or (a Pod)
    /// its grace period.
    case pending(KubeObject)
}

extension KubeClient {
    /// Reads one object (or its `subresource`, e.g. "status").
    public func get(_ type: ResourceType, _ name: String, namespace: String? = nil, subresource: String? = nil) async throws -> KubeObject {
        try await callObject(HTTPRequest(method: "GET", path: type.path(namespace: self.namespace(for: type, namespace), name: name, subresource: subresource)))
    }

    /// One page of objects (`namespace` nil: across all namespaces).
    public func list(_ type: ResourceType, namespace: String? = nil, options: ListOptions = ListOptions()) async throws -> ObjectList {
        let request = HTTPRequest(method: "GET", path: type.path(namespace: type.namespaced ? namespace : nil), query: options.query)
        let json = try await callJSON(request)
        guard let items = json["items"]?.array else { throw KubeClientError.decoding("list \(type): no items") }
        let metadata = json["metadata"]
        let token = metadata?["continue"]?.string
        return ObjectList(items: items.map(KubeObject.init), resourceVersion: metadata?["resourceVersion"]?.string ?? "",
                          continueToken: token?.isEmpty == false ? token : nil,
                          remainingItemCount: metadata?["remainingItemCount"]?.int)
    }

    /// Every object, following continue tokens page by page; the resourceVersion is the first page's
    /// (the snapshot all pages come from).
    public func listAll(_ type: ResourceType, namespace: String? = nil, options: ListOptions = ListOptions(), pageSize: Int = 500) async throws -> ObjectList {
        var options = options
        options.limit = pageSize
        var page = try await list(type, namespace: namespace, options: options)
        var all = page
        while let token = page.continueToken {
            options.continueToken = token
            options.resourceVersion = nil
            page = try await list(type, namespace: namespace, options: options)
            all.items += page.items
        }
        all.continueToken = nil
        all.remainingItemCount = nil
        return all
    }

    /// Creates `object`; the answer carries the uid and resourceVersion the server gave it.
    public func create(_ type: ResourceType, _ object: KubeObject, namespace: String? = nil, options: WriteOptions = WriteOptions()) async throws -> KubeObject {
        try await callObject(HTTPRequest(method: "POST", path: type.path(namespace: self.namespace(for: type, namespace ?? object.namespace)),
                                         query: options.query, body: Array(object.json.compact.utf8), contentType: "application/json"))
    }

    /// Replaces `object` (or its `subresource`); its resourceVersion makes this fail with a conflict
    /// if the object changed since it was read.
    public func update(_ type: ResourceType, _ object: KubeObject, namespace: String? = nil, subresource: String? = nil,
                       options: WriteOptions = WriteOptions()) async throws -> KubeObject {
        guard let name = object.name else { throw KubeClientError.invalidRequest("update of a \(type.kind) without metadata.name") }
        return try await callObject(HTTPRequest(
            method: "PUT", path: type.path(namespace: self.namespace(for: type, namespace ?? object.namespace), name: name, subresource: subresource),
            query: options.query, body: Array(object.json.compact.utf8), contentType: "application/json"))
    }

    /// Patches an object (or its `subresource`).
    public func patch(_ type: ResourceType, _ name: String, namespace: String? = nil, _ patch: Patch, subresource: String? = nil,
                      options: WriteOptions = WriteOptions()) async throws -> KubeObject {
        var query = options.query
        if case .apply(_, let manager, let force) = patch {
            query.removeAll { $0.0 == "fieldManager" }
            query.append(("fieldManager", manager))
            if force { query.append(("force", "true")) }
        }
        return try await callObject(HTTPRequest(
            method: "PATCH", path: type.path(namespace: self.namespace(for: type, namespace), name: name, subresource: subresource),
            query: query, body: Array(patch.body.compact.utf8), contentType: patch.contentType))
    }

    /// Deletes an object.
    @discardableResult
    public func delete(_ type: ResourceType, _ name: String, namespace: String? = nil, options: DeleteOptions = DeleteOptions()) async throws -> DeleteResult {
        let json = try await callJSON(HTTPRequest(
            method: "DELETE", path: type.path(namespace: self.namespace(for: type, namespace), name: name),
            body: Array(options.body.compact.utf8), contentType: "application/json"))
        if json["kind"]?.string == "Status" { return .deleted(nil) }
        let object = KubeObject(json)
        // Still there while finalizers run or a pod's grace period lasts.
        if object.deletionTimestamp != nil, !object.finalizers.isEmpty || object.kind == "Pod" { return .pending(object) }
        return .deleted(object)
    }

    // MARK: Subresources

    /// Replaces the `status` of `object`; the rest of it is ignored by the server.
    public func updateStatus(_ type: ResourceType, _ object: KubeObject, options: WriteOptions = WriteOptions()) async throws -> KubeObject {
        try await update(type, object, subresource: "status", options: options)
    }

    /// Patches the `status` of an object.
    public func patchStatus(_ type: ResourceType, _ name: String, namespace: String? = nil, _ patch: Patch,
                            options: WriteOptions = WriteOptions()) async throws -> KubeObject {
        try await self.patch(type, name, namespace: namespace, patch, subresource: "status", options: options)
    }

    /// Reads the `scale` subresource.
    public func scale(_ type: ResourceType, _ name: String, namespace: String? = nil) async throws -> Scale {
        try Self.scale(from: await get(type, name, namespace: namespace, subresource: "scale"))
    }

    /// Sets the desired replicas through the `scale` subresource (a merge patch, as `kubectl scale`).
    @discardableResult
    public func setScale(_ type: ResourceType, _ name: String, namespace: String? = nil, replicas: Int,
                         options: WriteOptions = WriteOptions()) async throws -> Scale {
        try Self.scale(from: await patch(type, name, namespace: namespace, .merge(["spec": ["replicas": .int(replicas)]]),
                                         subresource: "scale", options: options))
    }

    /// Replaces the `scale` subresource; `scale.resourceVersion` guards against a concurrent change.
    @discardableResult
    public func updateScale(_ type: ResourceType, _ name: String, namespace: String? = nil, _ scale: Scale) async throws -> Scale {
        var object = KubeObject(["apiVersion": "autoscaling/v1", "kind": "Scale",
                                 "metadata": ["name": .string(name)], "spec": ["replicas": .int(scale.replicas)]])
        object.namespace = self.namespace(for: type, namespace)
        object.resourceVersion = scale.resourceVersion
        return try Self.scale(from: await update(type, object, namespace: namespace, subresource: "scale"))
    }

    static func scale(from object: KubeObject) throws -> Scale {
        guard let replicas = object[path: "spec", "replicas"]?.int ?? Optional(0), object.kind == "Scale" else {
            throw KubeClientError.decoding("the scale subresource answered a \(object.kind ?? "non-object")")
        }
        return Scale(replicas: replicas, statusReplicas: object[path: "status", "replicas"]?.int ?? 0,
                     selector: object[path: "status", "selector"]?.string, resourceVersion: object.resourceVersion)
    }

    /// The server's `/version` document (`gitVersion`, `major`, `minor` …).
    public func version() async throws -> JSONValue {
        try await callJSON(HTTPRequest(method: "GET", path: "/version"))
    }
}
